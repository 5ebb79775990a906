//! The whole configuration, composed from each crate's section.
//!
//! Three steps: layer (file, then `TRIBUTARY__SECTION__KEY` environment variables),
//! deserialise strictly (unknown fields are errors), validate. Each section is
//! deserialised on its own so that one typo does not hide the next: every problem
//! is reported at once, each with its path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Environment, File, FileFormat, Value};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use thiserror::Error;
use tributary_bridge::problems::deserialize_one_of;
use tributary_bridge::source::{validate_sources, SourceConfig};
use tributary_bridge::{route::validate_routes, KafkaConfig, Problems, RouteConfig};

use crate::auth::AuthConfig;
use crate::listener::config::{validate_listeners, ListenerConfig};

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "conf/tributary.toml";
/// Prefix of environment overrides: `TRIBUTARY__KAFKA__BOOTSTRAP_SERVERS=…`.
pub const ENV_PREFIX: &str = "TRIBUTARY";
pub const ENV_SEPARATOR: &str = "__";
/// Sections that are arrays of tables (`[[routes]]`…). An environment
/// variable cannot spell one key by key, so `TRIBUTARY__ROUTES` (and the
/// others) hold the whole array as a TOML inline array, which replaces the
/// file's: `[{ name = "t", mqtt_filters = ["s/#"], kafka_topic = "s" }]`.
const TABLE_ARRAYS: &[&str] = &["listeners", "routes", "kafka_sources"];

/// Loopback by default, like Mosquitto 2 without a configuration: the defaults
/// let anyone connect without credentials, which is only safe on this machine.
/// Serving a network takes an explicit address (and `[auth]`); the container's
/// configuration says `0.0.0.0`.
pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1883";
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_PACKET_SIZE: usize = 1024 * 1024;
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = 128;
/// Most device connections one process is configured for: the embedded
/// router sizes its tables from it (twice over, for stored sessions).
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
/// Longest keep-alive a client may ask for, in seconds (MQTT's own maximum).
pub const DEFAULT_MAX_KEEP_ALIVE: u16 = u16::MAX;
/// The largest packet MQTT can frame (remaining length 268,435,455 plus header).
const MQTT_MAX_PACKET_SIZE: usize = 268_435_460;
/// Loopback by default, like [`DEFAULT_MQTT_LISTEN`]; a Prometheus on another
/// machine needs `http.listen = "0.0.0.0:9464"`.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_LOG_LEVEL: &str = "info,rumqttd=warn";
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;

/// Said at `--check-config` and at start when no route is configured: valid, but
/// seldom what was meant.
pub const NO_ROUTES_WARNING: &str =
    "no [[routes]] configured: nothing is forwarded to Kafka, Tributary runs as a plain MQTT broker";

/// Top-level section names, for the unknown-section check.
const SECTIONS: &[&str] = &[
    "mqtt",
    "listeners",
    "auth",
    "spool",
    "http",
    "log",
    "kafka",
    "routes",
    "kafka_sources",
    "shutdown_timeout_ms",
];

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub mqtt: MqttConfig,
    /// `[[listeners]]`; empty means one plain listener on `mqtt.listen`.
    pub listeners: Vec<ListenerConfig>,
    pub auth: AuthConfig,
    pub spool: tributary_bridge::spool::SpoolSettings,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub kafka: KafkaConfig,
    pub routes: Vec<RouteConfig>,
    /// `[[kafka_sources]]`: Kafka topics consumed and published into MQTT.
    pub kafka_sources: Vec<SourceConfig>,
    /// How long shutdown waits for in-flight Kafka deliveries, in milliseconds.
    pub shutdown_timeout_ms: u64,
}

/// The `[mqtt]` section: the device-facing listener.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Address the plain-TCP MQTT listener binds (MQTT 3.1.1 and 5 on one
    /// port) when no `[[listeners]]` are configured; with them, they say
    /// where to listen and this is not used.
    pub listen: String,
    /// Most device connections served at once; further connections are refused
    /// at accept and counted.
    pub max_connections: usize,
    /// How long a new connection may take to send its CONNECT, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Largest MQTT packet accepted from a device, in bytes (announced to MQTT 5
    /// clients); a larger one closes that connection.
    pub max_packet_size: usize,
    /// QoS 1/2 publishes a connection may have waiting for Kafka (announced to
    /// MQTT 5 clients as Receive Maximum). When the window is full Tributary stops
    /// reading that connection until Kafka catches up.
    pub receive_maximum: u16,
    /// Longest keep-alive interval a client may ask for, in seconds (like
    /// Mosquitto's `max_keepalive`). A client asking for more, or for 0 (no
    /// keep-alive), gets this one: MQTT 5 clients are told so in CONNACK
    /// (Server Keep Alive); MQTT 3.1.1 has no way to say it, so their
    /// connection is closed after 1.5 times this much silence.
    pub max_keep_alive: u16,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: DEFAULT_MQTT_LISTEN.into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            receive_maximum: DEFAULT_RECEIVE_MAXIMUM,
            max_keep_alive: DEFAULT_MAX_KEEP_ALIVE,
        }
    }
}

/// The `[http]` section: metrics and health endpoints.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address serving `/metrics` (Prometheus), `/healthz` and `/readyz`.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: DEFAULT_HTTP_LISTEN.into(),
        }
    }
}

/// The `[log]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` (default) or `json` (one object per line, for log shippers).
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,tributary=debug`; the `RUST_LOG`
    /// environment variable wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: DEFAULT_LOG_LEVEL.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_one_of(
            deserializer,
            &[("human", LogFormat::Human), ("json", LogFormat::Json)],
        )
    }
}

/// Why a configuration could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: config::ConfigError,
    },
    #[error("invalid configuration:\n{0}")]
    Invalid(Problems),
}

/// Where the configuration comes from: a file, or nothing but the built-in
/// defaults (environment overrides apply to either).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    Defaults,
}

impl ConfigSource {
    /// `--config PATH` when given, else [`DEFAULT_CONFIG_PATH`] when it exists,
    /// else the built-in defaults.
    pub fn resolve(path: Option<&Path>) -> ConfigSource {
        match path {
            Some(path) => ConfigSource::File(path.to_path_buf()),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                ConfigSource::File(PathBuf::from(DEFAULT_CONFIG_PATH))
            }
            None => ConfigSource::Defaults,
        }
    }
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(path) => write!(f, "{}", path.display()),
            ConfigSource::Defaults => f.write_str("built-in defaults (no configuration file)"),
        }
    }
}

impl Config {
    /// Loads `source`, applies environment overrides, and validates.
    pub fn load(source: &ConfigSource) -> Result<Config, ConfigError> {
        let env = Environment::with_prefix(ENV_PREFIX)
            .separator(ENV_SEPARATOR)
            .try_parsing(true);
        Self::load_with(source, env)
    }

    fn load_with(source: &ConfigSource, env: Environment) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let ConfigSource::File(file) = source {
            builder = builder.add_source(File::from(file.as_path()).format(FileFormat::Toml));
        }
        let layered =
            builder
                .add_source(env)
                .build()
                .map_err(|source_error| ConfigError::Read {
                    path: match source {
                        ConfigSource::File(file) => file.clone(),
                        ConfigSource::Defaults => PathBuf::new(),
                    },
                    source: source_error,
                })?;
        Self::from_layered(&layered).map_err(ConfigError::Invalid)
    }

    /// Parses a TOML document (no environment), for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let layered = config::Config::builder()
            .add_source(File::from_str(text, FileFormat::Toml))
            .build()
            .map_err(|source| ConfigError::Read {
                path: PathBuf::from("<inline>"),
                source,
            })?;
        Self::from_layered(&layered).map_err(ConfigError::Invalid)
    }

    fn from_layered(layered: &config::Config) -> Result<Config, Problems> {
        let mut problems = Problems::new();
        if let Ok(table) = layered
            .clone()
            .try_deserialize::<config::Map<String, Value>>()
        {
            for key in table.keys() {
                if !SECTIONS.contains(&key.as_str()) {
                    problems.push(
                        key.clone(),
                        format!("unknown section, expected one of {}", SECTIONS.join(", ")),
                    );
                }
            }
        }
        let mut unreadable = Vec::new();
        let mut config = Config {
            mqtt: section(layered, "mqtt", &mut problems),
            listeners: entries(layered, "listeners", &mut problems),
            auth: section(layered, "auth", &mut problems),
            spool: section(layered, "spool", &mut problems),
            http: section(layered, "http", &mut problems),
            log: section(layered, "log", &mut problems),
            kafka: section(layered, "kafka", &mut problems),
            routes: routes(layered, &mut problems, &mut unreadable),
            kafka_sources: entries(layered, "kafka_sources", &mut problems),
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
        };
        match layered.get::<u64>("shutdown_timeout_ms") {
            Ok(ms) => config.shutdown_timeout_ms = ms,
            Err(config::ConfigError::NotFound(_)) => {}
            Err(err) => problems.push("shutdown_timeout_ms", strip_key_suffix(&err.to_string())),
        }
        // A route field that could not be read stands in as its default; its type
        // problem is already recorded, so "missing or empty" would only repeat it.
        let mut semantic = Problems::new();
        if !config.listeners.is_empty() && layered.get::<Value>("mqtt.listen").is_ok() {
            semantic.push(
                "mqtt.listen",
                "not used when [[listeners]] are configured: add a listener with transport = \"tcp\" instead",
            );
        }
        config.validate(&mut semantic);
        semantic.retain(|problem| !unreadable.iter().any(|path| problem.is_under(path)));
        problems.append(semantic);
        // Each route's problems together, routes in file order, so that a long
        // list reads route by route.
        problems.sort_by_key(|problem| route_index(&problem.path));
        problems.into_result().map(|()| config)
    }

    /// Records every semantic problem (types are already right).
    pub fn validate(&self, problems: &mut Problems) {
        validate_listeners(&self.listeners, problems);
        self.auth.validate(problems);
        self.spool.validate(problems);
        // A certificate that does not load is found now, not at start.
        for (i, listener) in self.listeners.iter().enumerate() {
            if let Some(files) = crate::listener::tls::TlsFiles::of(listener) {
                if let Err(error) = files.load() {
                    problems.push(format!("listeners[{i}]"), error.to_string());
                }
            }
        }
        if self.listeners.is_empty() && self.mqtt.listen.parse::<SocketAddr>().is_err() {
            problems.push(
                "mqtt.listen",
                format!("'{}' is not an address like 0.0.0.0:1883", self.mqtt.listen),
            );
        }
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(&self.mqtt.max_connections) {
            // The router preallocates its tables for this many links.
            problems.push(
                "mqtt.max_connections",
                format!("must be between 1 and {MAX_CONNECTIONS_LIMIT}"),
            );
        }
        if self.mqtt.connect_timeout_ms == 0 {
            problems.push("mqtt.connect_timeout_ms", "must be at least 1");
        }
        if !(64..=MQTT_MAX_PACKET_SIZE).contains(&self.mqtt.max_packet_size) {
            problems.push(
                "mqtt.max_packet_size",
                format!("must be between 64 and {MQTT_MAX_PACKET_SIZE}"),
            );
        }
        if self.mqtt.receive_maximum == 0 {
            problems.push(
                "mqtt.receive_maximum",
                "must be at least 1 [MQTT-3.2.2.3.3]",
            );
        }
        if self.mqtt.max_keep_alive == 0 {
            problems.push("mqtt.max_keep_alive", "must be at least 1 second");
        }
        match self.http.listen.parse::<SocketAddr>() {
            Err(_) => problems.push(
                "http.listen",
                format!("'{}' is not an address like 0.0.0.0:9464", self.http.listen),
            ),
            // Port 0 asks the OS for a free port each time, so it may repeat.
            Ok(http)
                if http.port() != 0
                    && self
                        .effective_listeners()
                        .iter()
                        .any(|listener| listener.listen == self.http.listen) =>
            {
                problems.push(
                    "http.listen",
                    "must differ from every MQTT listener's address",
                )
            }
            Ok(_) => {}
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push("log.level", format!("not a valid filter: {err}"));
        }
        self.kafka.validate(problems);
        validate_routes(&self.routes, problems);
        validate_sources(&self.kafka_sources, problems);
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub fn link_config(&self) -> crate::link::LinkConfig {
        crate::link::LinkConfig {
            connect_timeout: Duration::from_millis(self.mqtt.connect_timeout_ms),
            max_packet_size: self.mqtt.max_packet_size,
            receive_maximum: self.mqtt.receive_maximum,
            max_keep_alive: self.mqtt.max_keep_alive,
        }
    }

    /// The listeners to start: `[[listeners]]`, or the plain one on
    /// `mqtt.listen` when there are none.
    pub fn effective_listeners(&self) -> Vec<ListenerConfig> {
        if self.listeners.is_empty() {
            vec![ListenerConfig::plain(&self.mqtt.listen)]
        } else {
            self.listeners.clone()
        }
    }

    /// The HTTP listener's address (checked by `validate`; a config built
    /// in code may skip that, so it is an error here, never a panic).
    pub fn http_addr(&self) -> anyhow::Result<SocketAddr> {
        parse_addr("http.listen", &self.http.listen)
    }
}

fn parse_addr(field: &str, value: &str) -> anyhow::Result<SocketAddr> {
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("{field}: '{value}' is not an address like 0.0.0.0:1883"))
}

/// Deserialises one section, or its default when absent.
fn section<T: DeserializeOwned + Default>(
    layered: &config::Config,
    key: &str,
    problems: &mut Problems,
) -> T {
    match layered.get::<Value>(key) {
        Ok(value) => deserialize(value, key, problems).unwrap_or_default(),
        Err(config::ConfigError::NotFound(_)) => T::default(),
        Err(err) => {
            problems.push(key, err.to_string());
            T::default()
        }
    }
}

/// Deserialises `value` found at `at`, naming the exact field of any error.
fn deserialize<T: DeserializeOwned>(value: Value, at: &str, problems: &mut Problems) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(value) => Some(value),
        Err(err) => {
            let path = format!("{at}{}", path_suffix(err.path()));
            problems.push(path, strip_key_suffix(&err.into_inner().to_string()));
            None
        }
    }
}

/// The config crate appends " for key `…`" naming the section; the path already
/// says more.
fn strip_key_suffix(message: &str) -> String {
    match message.rfind(" for key `") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// Deserialises an array of tables (`[[key]]`) entry by entry, so each
/// problem names its entry's index; an entry with a problem is left out.
fn entries<T: DeserializeOwned>(
    layered: &config::Config,
    key: &str,
    problems: &mut Problems,
) -> Vec<T> {
    match table_array(layered, key) {
        Ok(entries) => entries
            .into_iter()
            .enumerate()
            .filter_map(|(i, entry)| deserialize(entry, &format!("{key}[{i}]"), problems))
            .collect(),
        Err(problem) => {
            problems.push(key, problem);
            Vec::new()
        }
    }
}

/// The entries of an array of tables (none when absent). From the file it is
/// an array already; from the environment (`TRIBUTARY__ROUTES`) it is a
/// string holding a TOML inline array, read here. Nothing of the value is
/// repeated in an error: it may hold a password (a schema registry's, SASL's).
fn table_array(layered: &config::Config, key: &str) -> Result<Vec<Value>, String> {
    let value = match layered.get::<Value>(key) {
        Ok(value) => value,
        Err(config::ConfigError::NotFound(_)) => return Ok(Vec::new()),
        Err(err) => return Err(strip_key_suffix(&err.to_string())),
    };
    let variable = format!("{ENV_PREFIX}{ENV_SEPARATOR}{}", key.to_uppercase());
    let example = match key {
        "routes" => {
            "[{ name = \"telemetry\", mqtt_filters = [\"sensors/#\"], kafka_topic = \"sensors\" }]"
        }
        _ => "[{ name = \"…\", … }, { name = \"…\", … }]",
    };
    let wanted = format!(
        "must be an array of tables: [[{key}]] in the file, or from the environment \
         {variable} holding a TOML inline array, e.g. {variable}='{example}'"
    );
    let text = match value.kind {
        config::ValueKind::Array(_) => {
            return value
                .into_array()
                .map_err(|err| strip_key_suffix(&err.to_string()))
        }
        config::ValueKind::String(ref text) if TABLE_ARRAYS.contains(&key) => text.clone(),
        _ => return Err(format!("{wanted}; got a single value or table")),
    };
    if !text.trim_start().starts_with('[') {
        return Err(format!("{wanted}; got a string not starting with '['"));
    }
    config::Config::builder()
        .add_source(File::from_str(&format!("{key} = {text}"), FileFormat::Toml))
        .build()
        .and_then(|parsed| parsed.get::<Vec<Value>>(key))
        .map_err(|_| {
            format!(
                "{wanted}; {variable} does not read as one (check its brackets, quotes, commas, \
                 and that each {{ … }} table is on one line)"
            )
        })
}

/// Deserialises `[[routes]]` one entry at a time, so that every entry keeps its
/// index in what is reported. Paths that could not be read at all are added to
/// `unreadable`.
fn routes(
    layered: &config::Config,
    problems: &mut Problems,
    unreadable: &mut Vec<String>,
) -> Vec<RouteConfig> {
    let entries = match table_array(layered, "routes") {
        Ok(entries) => entries,
        Err(problem) => {
            problems.push("routes", problem);
            return Vec::new();
        }
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| route(entry, &format!("routes[{i}]"), problems, unreadable))
        .collect()
}

/// Reads one route entry field by field: serde stops at the first field of the
/// wrong type, so each such field is reported, taken out, and the entry read
/// again, until what is left reads. The route comes back with the fields that
/// were taken out at their defaults.
fn route(
    entry: Value,
    at: &str,
    problems: &mut Problems,
    unreadable: &mut Vec<String>,
) -> RouteConfig {
    let mut fields = match entry.into_table() {
        Ok(fields) => fields,
        Err(err) => {
            problems.push(at, strip_key_suffix(&err.to_string()));
            unreadable.push(at.to_owned());
            return RouteConfig::default();
        }
    };
    loop {
        let err =
            match serde_path_to_error::deserialize::<_, RouteConfig>(Value::from(fields.clone())) {
                Ok(route) => return route,
                Err(err) => err,
            };
        let field = match err.path().iter().next() {
            Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
            _ => None,
        };
        let path = format!("{at}{}", path_suffix(err.path()));
        problems.push(path, strip_key_suffix(&err.into_inner().to_string()));
        match field {
            Some(field) if fields.shift_remove(&field).is_some() => {
                unreadable.push(format!("{at}.{field}"));
            }
            // Nothing left to take out: give up on this entry, not on the others.
            _ => {
                unreadable.push(at.to_owned());
                return RouteConfig::default();
            }
        }
    }
}

/// `Some(i)` for a problem of `routes[i]`; `None` (sorting first) for the other
/// sections.
fn route_index(path: &str) -> Option<usize> {
    path.strip_prefix("routes[")?
        .split_once(']')?
        .0
        .parse()
        .ok()
}

/// `.field[0]` for a path inside a value, nothing for the value itself.
fn path_suffix(path: &serde_path_to_error::Path) -> String {
    let path = path.to_string();
    if path == "." {
        String::new()
    } else if path.starts_with('[') {
        path
    } else {
        format!(".{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_default_config_is_valid_and_documented() {
        let text = include_str!("../../conf/tributary.toml");
        let config = Config::from_toml(text).unwrap();
        // Anonymous access, so loopback only.
        assert_eq!(config.mqtt.listen, "127.0.0.1:1883");
        assert_eq!(config.http.listen, "127.0.0.1:9464");
        assert!(config.auth.anonymous_allowed());
        assert_eq!(config.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(config.routes.len(), 1);
        let route = &config.routes[0];
        assert_eq!(route.name, "telemetry");
        assert_eq!(route.mqtt_filters, ["sensors/#"]);
        assert_eq!(route.kafka_topic, "sensors");
        assert_eq!(route.key, tributary_bridge::KeySource::Topic);
    }

    #[test]
    fn empty_config_means_defaults() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(
            config,
            Config {
                shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
                ..Config::default()
            }
        );
    }

    #[test]
    fn a_connection_limit_the_router_cannot_size_is_refused() {
        let text = "[mqtt]\nmax_connections = 5000000\n";
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(text) else {
            panic!("expected an invalid config");
        };
        let text = problems.to_string();
        assert!(
            text.contains("mqtt.max_connections: must be between 1 and 1000000"),
            "{text}"
        );
    }

    #[test]
    fn three_mistakes_are_all_named() {
        let text = r##"
            [mqtt]
            listen = "0.0.0.0:1883"
            max_conections = 5

            [kafka]
            linger_ms = "soon"

            [[routes]]
            name = "ok"
            mqtt_filters = ["a/#"]
            kafka_topic = "a"

            [[routes]]
            name = "also_ok"
            mqtt_filters = ["b"]
            kafka_topic = "b"

            [[routes]]
            name = "bad"
            mqtt_filters = ["x/#/y"]
            kafka_topic = "x"
        "##;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(text) else {
            panic!("expected an invalid config");
        };
        let text = problems.to_string();
        assert!(
            text.contains("mqtt.max_conections: unknown field"),
            "{text}"
        );
        assert!(text.contains("kafka.linger_ms: invalid type"), "{text}");
        assert!(
            text.contains("routes[2].mqtt_filters[0]: '#' must be the last level"),
            "{text}"
        );
        assert_eq!(problems.len(), 3, "{text}");
    }

    #[test]
    fn unknown_sections_and_bad_route_fields_are_named() {
        let text = r##"
            [mqqt]
            listen = "x"

            [[routes]]
            name = "r"
            mqtt_filters = ["a"]
            kafka_topic = "a"
            key = "partition"
            spool = "sometimes"
        "##;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(text) else {
            panic!("expected an invalid config");
        };
        let text = problems.to_string();
        assert!(text.contains("mqqt: unknown section"), "{text}");
        assert!(
            text.contains("routes[0].key: ") && text.contains("partition"),
            "{text}"
        );
        assert!(
            text.contains("routes[0].spool: ")
                && text.contains("sometimes")
                && text.contains("qos12"),
            "{text}"
        );
    }

    #[test]
    fn templates_formats_and_envelopes_are_read_from_the_file() {
        let text = r##"
            [[routes]]
            name = "ais"
            mqtt_filters = ["ships/+/position"]
            kafka_topic = "ais.{topic.2}"
            key = "{payload.ship.mmsi}"
            format = "json_envelope"
            envelope = { payload = "json", fields = ["timestamp", "client_id"] }
            headers = false
            user_property_prefix = "mqtt.user."
        "##;
        let config = Config::from_toml(text).unwrap();
        let route = &config.routes[0];
        assert_eq!(route.format, tributary_bridge::FormatName::JsonEnvelope);
        assert_eq!(
            route.key,
            tributary_bridge::KeySource::Template("{payload.ship.mmsi}".into())
        );
        assert_eq!(
            route.envelope.fields,
            [
                tributary_bridge::format::EnvelopeField::Timestamp,
                tributary_bridge::format::EnvelopeField::ClientId
            ]
        );
        assert!(!route.headers);

        let bad = r##"
            [[routes]]
            name = "ais"
            mqtt_filters = ["ships/+/position"]
            kafka_topic = "ais.{topic.3}.{topic.9}"
            key = "{client}"
            format = "avro-ish"
            envelope = { payload = "hex", fields = ["colour"] }
        "##;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(bad) else {
            panic!("expected an invalid config");
        };
        let text = problems.to_string();
        for expected in [
            "routes[0].format: ",
            "routes[0].envelope.payload: ",
            "routes[0].kafka_topic: 'ais.{topic.3}.{topic.9}' names topic level 9",
            "routes[0].key: unknown placeholder '{client}'",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(
            &bad.replace("\"hex\"", "\"json\"")
                .replace("avro-ish", "raw"),
        ) else {
            panic!("expected an invalid config");
        };
        let text = problems.to_string();
        assert!(
            text.contains("routes[0].envelope.fields[0]: unknown value `colour`"),
            "{text}"
        );
    }

    #[test]
    fn a_route_field_of_the_wrong_type_hides_nothing_else() {
        let text = r##"
            [[routes]]
            name = "a"
            mqtt_filters = "a/#"
            kafka_topic = "bad topic"
            key = "bogus"

            [[routes]]
            name = "b"
            mqtt_filters = ["b/#/c"]
            kafka_topic = "b"

            [[routes]]
            key = "none"
        "##;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(text) else {
            panic!("expected an invalid config");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].mqtt_filters",
                "routes[0].key",
                "routes[0].kafka_topic",
                "routes[1].mqtt_filters[0]",
                "routes[2].name",
                "routes[2].mqtt_filters",
                "routes[2].kafka_topic",
            ],
            "{problems}"
        );
    }

    #[test]
    fn kafka_sources_are_read_and_every_bad_field_named() {
        let text = r##"
            [[kafka_sources]]
            name = "commands"
            topics = ["device-commands"]
            mqtt_topic = "devices/{key}/commands"
            auto_offset_reset = "earliest"

            [[kafka_sources]]
            name = "bad"
            topics = ["x"]
            mqtt_topic = "devices/+/{nope}"
            qos = 5

            [[kafka_sources]]
            name = "worse"
            auto_offset_reset = "yesterday"
        "##;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml(text) else {
            panic!("expected an invalid config");
        };
        let text = problems.to_string();
        for expected in [
            "kafka_sources[1].mqtt_topic: ",
            "kafka_sources[1].qos: must be 0, 1 or 2",
            "kafka_sources[2].auto_offset_reset: unknown value `yesterday`",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        let good = Config::from_toml(text_of_first_source()).unwrap();
        assert_eq!(good.kafka_sources[0].name, "commands");
        assert_eq!(
            good.kafka_sources[0].auto_offset_reset,
            tributary_bridge::source::OffsetReset::Earliest
        );
    }

    fn text_of_first_source() -> &'static str {
        r##"
            [[kafka_sources]]
            name = "commands"
            topics = ["device-commands"]
            mqtt_topic = "devices/{key}/commands"
            auto_offset_reset = "earliest"
        "##
    }

    fn env(vars: &[(&str, &str)]) -> Environment {
        Environment::with_prefix(ENV_PREFIX)
            .separator(ENV_SEPARATOR)
            .try_parsing(true)
            .source(Some(
                vars.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ))
    }

    #[test]
    fn routes_come_from_the_environment_as_a_toml_array() {
        let routes = r#"[{ name = "env", mqtt_filters = ["env/#"], kafka_topic = "from-env", key = "none" },
                         { name = "two", mqtt_filters = ["two"], kafka_topic = "two" }]"#;
        let config = Config::load_with(
            &ConfigSource::Defaults,
            env(&[("TRIBUTARY__ROUTES", routes)]),
        )
        .unwrap();
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.routes[0].name, "env");
        assert_eq!(config.routes[0].kafka_topic, "from-env");
        assert_eq!(config.routes[0].key, tributary_bridge::KeySource::None);
        assert_eq!(config.routes[1].mqtt_filters, ["two"]);

        // They replace the file's routes.
        let dir = tempfile_dir("env-routes");
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "[[routes]]\nname = \"file\"\nmqtt_filters = [\"f/#\"]\nkafka_topic = \"f\"\n",
        )
        .unwrap();
        let config = Config::load_with(
            &ConfigSource::File(path),
            env(&[("TRIBUTARY__ROUTES", routes)]),
        )
        .unwrap();
        assert_eq!(config.routes[0].name, "env");
        assert_eq!(config.routes.len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn routes_from_the_environment_that_do_not_read_are_named() {
        for (name, value, expected) in [
            (
                "TRIBUTARY__ROUTES",
                "telemetry",
                "got a string not starting with '['",
            ),
            (
                "TRIBUTARY__ROUTES",
                "[{ name = \"secret-looking\" ",
                "TRIBUTARY__ROUTES does not read as one",
            ),
            (
                "TRIBUTARY__ROUTES__0__NAME",
                "t",
                "got a single value or table",
            ),
        ] {
            let Err(ConfigError::Invalid(problems)) =
                Config::load_with(&ConfigSource::Defaults, env(&[(name, value)]))
            else {
                panic!("expected an invalid config for {name}={value:?}");
            };
            let text = problems.to_string();
            assert!(
                text.contains("routes: must be an array of tables: [[routes]] in the file, or from the environment TRIBUTARY__ROUTES holding a TOML inline array"),
                "{text}"
            );
            assert!(text.contains(expected), "{text}");
            assert!(
                !text.contains("secret-looking"),
                "the value is repeated: {text}"
            );
        }
        // A route read from the environment is checked like one from a file.
        let Err(ConfigError::Invalid(problems)) = Config::load_with(
            &ConfigSource::Defaults,
            env(&[(
                "TRIBUTARY__ROUTES",
                r#"[{ name = "bad", mqtt_filters = ["a/#/b"], kafka_topic = "a" }]"#,
            )]),
        ) else {
            panic!("expected an invalid config");
        };
        let text = problems.to_string();
        assert!(text.contains("routes[0].mqtt_filters[0]: '#'"), "{text}");
    }

    #[test]
    fn built_in_defaults_listen_on_loopback_only() {
        // Anyone may connect without [auth]: only this machine, unless told.
        let config = Config::from_toml("").unwrap();
        assert!(config.auth.anonymous_allowed());
        let mqtt: SocketAddr = config.mqtt.listen.parse().unwrap();
        let http = config.http_addr().unwrap();
        assert!(mqtt.ip().is_loopback(), "{mqtt}");
        assert!(http.ip().is_loopback(), "{http}");
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tributary-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("tributary-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(&path, "[kafka]\nbootstrap_servers = \"file:9092\"\n").unwrap();
        let env = Environment::with_prefix(ENV_PREFIX)
            .separator(ENV_SEPARATOR)
            .try_parsing(true)
            .source(Some(
                [
                    ("TRIBUTARY__KAFKA__BOOTSTRAP_SERVERS", "env:9093"),
                    ("TRIBUTARY__MQTT__MAX_CONNECTIONS", "7"),
                    ("TRIBUTARY__LOG__FORMAT", "json"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ));
        let config = Config::load_with(&ConfigSource::File(path.clone()), env).unwrap();
        assert_eq!(config.kafka.bootstrap_servers, "env:9093");
        assert_eq!(config.mqtt.max_connections, 7);
        assert_eq!(config.log.format, LogFormat::Json);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
