//! Routes: which MQTT topics go to which Kafka topic, and with which key.
//!
//! The table is compiled once from config into a trie keyed by topic level, so a
//! lookup costs the depth of the topic (times the wildcards on the way), not the
//! number of filters. It answers only "which routes match"; it never decides whether
//! a message may be acknowledged.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use crate::avro::{AvroFormat, RegistryConfig};
use crate::events::RouteMetrics;
use crate::format::{Envelope, Format};
use crate::problems::{deserialize_one_of, Problems};
use crate::template::Template;

/// Longest MQTT topic filter or name, in bytes ([MQTT-1.5.3], a UTF-8 string's
/// two-byte length prefix).
pub const MAX_TOPIC_BYTES: usize = 65_535;
/// Longest Kafka topic name the brokers accept.
pub const MAX_KAFKA_TOPIC_CHARS: usize = 249;

/// One `[[routes]]` entry.
///
/// Every field has a default only so that a field of the wrong type can be left
/// out and the rest of the entry still checked; [`validate_routes`] reports the
/// required ones when missing.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Name of the route, unique; appears as the `route` label on metrics, so it
    /// may hold only ASCII letters, digits, `_` and `-`.
    pub name: String,
    /// MQTT topic filters (with `+` and `#` wildcards) whose publishes this route
    /// forwards. A publish matching several filters of one route is forwarded once.
    pub mqtt_filters: Vec<String>,
    /// Kafka topic the records are written to: a name, or a template
    /// (`telemetry.{topic.1}`, see `template`).
    pub kafka_topic: String,
    /// What the Kafka record key is: the MQTT `topic`, the publisher's `client_id`,
    /// its authenticated `username` (no key for an anonymous client), `none`
    /// (no key: the producer's partitioner spreads records), or a template
    /// (`{topic.2}`, `{payload.ship.mmsi}`).
    pub key: KeySource,
    /// Which of this route's records go through the spool when `[spool]` is
    /// enabled: `qos12` (default: QoS 1/2 ones), `all` (QoS 0 ones too), or
    /// `off` (none: acknowledged only once Kafka has the record).
    pub spool: RouteSpool,
    /// The record's value: `raw` (the payload) or `json_envelope`.
    pub format: FormatName,
    /// The JSON envelope's options (with `format = "json_envelope"`).
    pub envelope: Envelope,
    /// Whether records carry the MQTT facts as headers (default true).
    pub headers: bool,
    /// Put before each MQTT 5 user property's name to make its header's
    /// name (default: none, the header is named as the property).
    pub user_property_prefix: String,
    /// What a failure retrying cannot fix does (see [`OnFailure`]).
    pub on_failure: OnFailure,
    /// Where `on_failure = "dead_letter"` writes.
    pub dead_letter_topic: String,
    /// Whether an MQTT 5 device is told "success" when its publish went to
    /// the dead-letter topic (default false: it gets the failure's reason
    /// code, though the message is kept there).
    pub dead_letter_acknowledge: bool,
    /// With `format = "avro"`: the Avro schema file (`.avsc`).
    pub avro_schema: Option<PathBuf>,
    /// With `format = "avro"`: the schema registry to register the schema
    /// with (records then carry its id, Confluent's wire format).
    pub schema_registry: Option<RegistryConfig>,
}

/// What a route does with a publish that cannot be written to its topic for
/// a reason retrying cannot fix (an unfillable template, a payload the format
/// cannot take, a record Kafka refuses as too large, an unknown topic, no
/// authorization). Transient failures (Kafka unreachable) never go to the
/// dead-letter topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// The publish is refused (MQTT 5: a reason code; MQTT 3.1.1: the
    /// connection is closed).
    #[default]
    Refuse,
    /// The original payload, its MQTT facts and the reason are written to
    /// `dead_letter_topic`, and the device is answered once that write is in
    /// Kafka.
    DeadLetter,
}

impl<'de> Deserialize<'de> for OnFailure {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_one_of(
            deserializer,
            &[
                ("refuse", OnFailure::Refuse),
                ("dead_letter", OnFailure::DeadLetter),
            ],
        )
    }
}

/// A compiled route's dead-letter settings.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: Arc<str>,
    /// MQTT 5 devices are told "success" for a dead-lettered publish.
    pub acknowledge: bool,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            name: String::new(),
            mqtt_filters: Vec::new(),
            kafka_topic: String::new(),
            key: KeySource::default(),
            spool: RouteSpool::default(),
            format: FormatName::default(),
            envelope: Envelope::default(),
            headers: true,
            user_property_prefix: String::new(),
            on_failure: OnFailure::default(),
            dead_letter_topic: String::new(),
            dead_letter_acknowledge: false,
            avro_schema: None,
            schema_registry: None,
        }
    }
}

/// The `format` a route writes records in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FormatName {
    #[default]
    Raw,
    JsonEnvelope,
    Avro,
}

impl<'de> Deserialize<'de> for FormatName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_one_of(
            deserializer,
            &[
                ("raw", FormatName::Raw),
                ("json_envelope", FormatName::JsonEnvelope),
                ("avro", FormatName::Avro),
            ],
        )
    }
}

/// Which records of a route are written ahead to the spool (when it is on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RouteSpool {
    /// QoS 1/2 records: what devices are promised delivery of.
    #[default]
    Qos12,
    /// QoS 0 records as well: kept through an outage, though never promised.
    All,
    /// None: straight to Kafka, acknowledged only once Kafka has them.
    Off,
}

impl RouteSpool {
    /// Whether a record of a publish at `qos` goes through the spool.
    pub fn takes(self, qos: u8) -> bool {
        match self {
            RouteSpool::Qos12 => qos > 0,
            RouteSpool::All => true,
            RouteSpool::Off => false,
        }
    }
}

impl<'de> Deserialize<'de> for RouteSpool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_one_of(
            deserializer,
            &[
                ("qos12", RouteSpool::Qos12),
                ("all", RouteSpool::All),
                ("off", RouteSpool::Off),
            ],
        )
    }
}

/// Where a record's Kafka key comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeySource {
    /// The MQTT topic name: one topic's messages stay in order in one partition.
    #[default]
    Topic,
    /// The publishing client's id: one device's messages stay in order.
    ClientId,
    /// The user name the client authenticated as: one user's messages stay
    /// in order (none for an anonymous client).
    Username,
    /// No key.
    None,
    /// A template (see `template`), as written; checked by [`validate_routes`].
    Template(String),
}

impl<'de> Deserialize<'de> for KeySource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.as_str() {
            "topic" => KeySource::Topic,
            "client_id" => KeySource::ClientId,
            "username" => KeySource::Username,
            "none" => KeySource::None,
            _ if text.contains('{') => KeySource::Template(text),
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "unknown value `{text}`, expected one of `topic`, `client_id`, `username`, \
                     `none`, or a template such as `{{topic.2}}`"
                )))
            }
        })
    }
}

/// A compiled route's Kafka topic.
#[derive(Debug, Clone)]
pub enum KafkaTopic {
    Fixed(Arc<str>),
    Template(Template),
}

/// A compiled route's record key.
#[derive(Debug, Clone)]
pub enum RecordKey {
    Topic,
    ClientId,
    Username,
    None,
    Template(Template),
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    pub kafka_topic: KafkaTopic,
    pub key: RecordKey,
    pub spool: RouteSpool,
    pub format: Format,
    pub headers: bool,
    pub user_property_prefix: String,
    /// Where failures retrying cannot fix go; `None`: they are refused.
    pub dead_letter: Option<DeadLetter>,
    pub metrics: RouteMetrics,
}

impl Route {
    /// A raw-format route with MQTT headers. A topic or key template that
    /// does not parse is taken as literal text: [`validate_routes`] refuses
    /// such a configuration before any route is built.
    pub fn new(name: &str, kafka_topic: &str, key: KeySource) -> Route {
        let kafka_topic = match Template::parse(kafka_topic) {
            Ok(template) => match template.literal() {
                Some(topic) => KafkaTopic::Fixed(topic.into()),
                None => KafkaTopic::Template(template),
            },
            Err(_) => KafkaTopic::Fixed(kafka_topic.into()),
        };
        let key = match key {
            KeySource::Topic => RecordKey::Topic,
            KeySource::ClientId => RecordKey::ClientId,
            KeySource::Username => RecordKey::Username,
            KeySource::None => RecordKey::None,
            KeySource::Template(text) => match Template::parse(&text) {
                Ok(template) => RecordKey::Template(template),
                Err(_) => RecordKey::None,
            },
        };
        Route {
            name: name.into(),
            kafka_topic,
            key,
            spool: RouteSpool::default(),
            format: Format::Raw,
            headers: true,
            user_property_prefix: String::new(),
            dead_letter: None,
            metrics: RouteMetrics::register(name),
        }
    }

    /// The route a validated `config` describes; the error is a schema file
    /// that could not be read after all.
    pub fn from_config(config: &RouteConfig) -> Result<Route, String> {
        let format = match config.format {
            FormatName::Raw => Format::Raw,
            FormatName::JsonEnvelope => Format::JsonEnvelope(config.envelope.clone()),
            FormatName::Avro => {
                let schema = config
                    .avro_schema
                    .as_deref()
                    .ok_or("format = \"avro\" needs avro_schema")?;
                Format::Avro(Arc::new(AvroFormat::load(
                    schema,
                    config.schema_registry.clone(),
                )?))
            }
        };
        if config.on_failure == OnFailure::DeadLetter {
            crate::events::register_dead_letters(&config.name);
        }
        Ok(Route {
            spool: config.spool,
            format,
            headers: config.headers,
            user_property_prefix: config.user_property_prefix.clone(),
            dead_letter: (config.on_failure == OnFailure::DeadLetter).then(|| DeadLetter {
                topic: config.dead_letter_topic.as_str().into(),
                acknowledge: config.dead_letter_acknowledge,
            }),
            ..Route::new(&config.name, &config.kafka_topic, config.key.clone())
        })
    }

    /// The same route with `spool` as its spool setting.
    pub fn with_spool(self, spool: RouteSpool) -> Route {
        Route { spool, ..self }
    }
}

/// Checks one MQTT topic filter's syntax ([MQTT-4.7.1]); `None` when valid.
pub fn filter_problem(filter: &str) -> Option<String> {
    if filter.is_empty() {
        return Some("a topic filter must not be empty [MQTT-4.7.3-1]".into());
    }
    if filter.len() > MAX_TOPIC_BYTES {
        return Some(format!("longer than {MAX_TOPIC_BYTES} bytes"));
    }
    if filter.contains('\0') {
        return Some("must not contain the null character [MQTT-4.7.3-2]".into());
    }
    if filter.starts_with("$share/") {
        return Some(
            "shared subscriptions are for subscribers; a route matches published topic names"
                .into(),
        );
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Some("'#' must be the last level and alone in it [MQTT-4.7.1-2]".into());
        }
        if level.contains('+') && *level != "+" {
            return Some("'+' must occupy a whole level [MQTT-4.7.1-3]".into());
        }
    }
    None
}

/// Checks a Kafka topic name the way the brokers do; `None` when valid.
pub fn kafka_topic_problem(topic: &str) -> Option<String> {
    if topic.is_empty() {
        return Some("must not be empty".into());
    }
    if topic == "." || topic == ".." {
        return Some("'.' and '..' are not valid Kafka topic names".into());
    }
    if topic.chars().count() > MAX_KAFKA_TOPIC_CHARS {
        return Some(format!("longer than {MAX_KAFKA_TOPIC_CHARS} characters"));
    }
    if let Some(bad) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "'{bad}' is not allowed in a Kafka topic name (only ASCII letters, digits, '.', '_', '-')"
        ));
    }
    None
}

/// Validates every route, recording each problem under `routes[i]…`.
pub fn validate_routes(routes: &[RouteConfig], problems: &mut Problems) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, route) in routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if route.name.is_empty() {
            problems.push(
                format!("{at}.name"),
                "missing or empty: every route needs a name",
            );
        } else if let Some(bad) = route
            .name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
        {
            problems.push(
                format!("{at}.name"),
                format!("'{bad}' is not allowed (only ASCII letters, digits, '_', '-')"),
            );
        } else if let Some(first) = seen.insert(&route.name, i) {
            problems.push(
                format!("{at}.name"),
                format!("'{}' is already the name of routes[{first}]", route.name),
            );
        }
        if route.mqtt_filters.is_empty() {
            problems.push(
                format!("{at}.mqtt_filters"),
                "missing or empty: needs at least one MQTT topic filter",
            );
        }
        for (j, filter) in route.mqtt_filters.iter().enumerate() {
            if let Some(message) = filter_problem(filter) {
                problems.push(format!("{at}.mqtt_filters[{j}]"), message);
            }
        }
        if route.kafka_topic.is_empty() {
            problems.push(format!("{at}.kafka_topic"), "missing or empty");
        } else {
            match Template::parse(&route.kafka_topic) {
                Err(message) => problems.push(format!("{at}.kafka_topic"), message),
                Ok(template) => match template.literal() {
                    Some(topic) => {
                        if let Some(message) = kafka_topic_problem(topic) {
                            problems.push(format!("{at}.kafka_topic"), message);
                        }
                    }
                    None => {
                        let bad = template
                            .literals()
                            .flat_map(str::chars)
                            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
                        if let Some(bad) = bad {
                            problems.push(
                                format!("{at}.kafka_topic"),
                                format!("'{bad}' is not allowed in a Kafka topic name (only ASCII letters, digits, '.', '_', '-')"),
                            );
                        }
                        check_levels(&template, route, &format!("{at}.kafka_topic"), problems);
                    }
                },
            }
        }
        if let KeySource::Template(text) = &route.key {
            match Template::parse(text) {
                Err(message) => problems.push(format!("{at}.key"), message),
                Ok(template) if template.literal().is_some() => problems.push(
                    format!("{at}.key"),
                    "a key template needs a placeholder (every record would have the same key)",
                ),
                Ok(template) => check_levels(&template, route, &format!("{at}.key"), problems),
            }
        }
        match (route.on_failure, route.dead_letter_topic.is_empty()) {
            (OnFailure::DeadLetter, true) => problems.push(
                format!("{at}.dead_letter_topic"),
                "missing: on_failure = \"dead_letter\" needs the topic to write to",
            ),
            (OnFailure::DeadLetter, false) => {
                if let Some(message) = kafka_topic_problem(&route.dead_letter_topic) {
                    problems.push(format!("{at}.dead_letter_topic"), message);
                }
            }
            (OnFailure::Refuse, false) => problems.push(
                format!("{at}.dead_letter_topic"),
                "set only with on_failure = \"dead_letter\"",
            ),
            (OnFailure::Refuse, true) => {}
        }
        match (&route.format, &route.avro_schema) {
            (FormatName::Avro, None) => problems.push(
                format!("{at}.avro_schema"),
                "missing: format = \"avro\" needs the schema file",
            ),
            (FormatName::Avro, Some(path)) => {
                if let Err(message) = AvroFormat::load(path, None) {
                    problems.push(format!("{at}.avro_schema"), message);
                }
            }
            (_, Some(_)) => problems.push(
                format!("{at}.avro_schema"),
                "set only with format = \"avro\"",
            ),
            (_, None) => {}
        }
        if let Some(registry) = &route.schema_registry {
            if route.format != FormatName::Avro {
                problems.push(
                    format!("{at}.schema_registry"),
                    "set only with format = \"avro\"",
                );
            }
            for (field, message) in registry.problems() {
                problems.push(format!("{at}.schema_registry.{field}"), message);
            }
            if route.kafka_topic.contains('{') {
                problems.push(
                    format!("{at}.schema_registry"),
                    "a schema is registered under its topic's subject: the route needs a fixed kafka_topic, not a template",
                );
            }
        }
        if route.format != FormatName::JsonEnvelope && route.envelope != Envelope::default() {
            problems.push(
                format!("{at}.envelope"),
                "set only with format = \"json_envelope\"",
            );
        }
    }
}

/// A template naming a topic level that none of a route's filters' topics
/// can have is a mistake: every record would fail.
fn check_levels(template: &Template, route: &RouteConfig, at: &str, problems: &mut Problems) {
    let Some(level) = template.deepest_level() else {
        return;
    };
    for filter in &route.mqtt_filters {
        let levels = filter.split('/').count();
        if !filter.ends_with('#') && levels < level {
            problems.push(
                at,
                format!(
                    "'{}' names topic level {level}, but the filter '{filter}' matches topics of {levels} level{}",
                    template.source(),
                    if levels == 1 { "" } else { "s" }
                ),
            );
        }
    }
}

/// Index of a route in [`RouteTable::routes`].
type RouteId = usize;

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Routes whose filter ends here with `/#`: they match this level and below.
    hash: Vec<RouteId>,
    /// Routes whose filter ends exactly here.
    exact: Vec<RouteId>,
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    root: Node,
}

impl RouteTable {
    /// Compiles validated routes; on invalid input returns every problem.
    pub fn compile(configs: &[RouteConfig]) -> Result<Self, Problems> {
        let mut problems = Problems::new();
        validate_routes(configs, &mut problems);
        problems.into_result()?;

        let mut table = RouteTable::default();
        for (id, config) in configs.iter().enumerate() {
            let route = Route::from_config(config).map_err(|message| {
                let mut problems = Problems::new();
                problems.push(format!("routes[{id}].avro_schema"), message);
                problems
            })?;
            table.routes.push(route);
            for filter in &config.mqtt_filters {
                table.insert(filter, id);
            }
        }
        Ok(table)
    }

    fn insert(&mut self, filter: &str, id: RouteId) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            match level {
                "#" => {
                    push_unique(&mut node.hash, id);
                    return;
                }
                "+" => node = node.plus.get_or_insert_with(Box::default),
                _ => node = node.literal.entry(level.into()).or_default(),
            }
        }
        push_unique(&mut node.exact, id);
    }

    /// The dead-letter topic of the route named `name`, if it has one.
    pub fn dead_letter_topic(&self, name: &str) -> Option<Arc<str>> {
        self.routes
            .iter()
            .find(|route| &*route.name == name)
            .and_then(|route| route.dead_letter.as_ref())
            .map(|dead_letter| dead_letter.topic.clone())
    }

    /// All routes, in configuration order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The routes a publish to `topic` must be forwarded to, each once, in
    /// configuration order. A topic starting with `$` is not matched by a filter
    /// starting with a wildcard [MQTT-4.7.2-1].
    pub fn matches(&self, topic: &str) -> Vec<&Route> {
        let mut ids = HashSet::new();
        let levels: Vec<&str> = topic.split('/').collect();
        let system = topic.starts_with('$');
        collect(&self.root, &levels, system, &mut ids);
        let mut ids: Vec<RouteId> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.into_iter().map(|id| &self.routes[id]).collect()
    }
}

fn push_unique(ids: &mut Vec<RouteId>, id: RouteId) {
    if !ids.contains(&id) {
        ids.push(id);
    }
}

/// Walks the trie for the remaining `levels`; `at_root_of_system` forbids wildcards
/// at the first level of a `$` topic.
fn collect(node: &Node, levels: &[&str], at_root_of_system: bool, out: &mut HashSet<RouteId>) {
    if !at_root_of_system {
        // `a/#` matches `a` itself as well as everything below it [MQTT-4.7.1-2].
        out.extend(node.hash.iter().copied());
    }
    let Some((level, rest)) = levels.split_first() else {
        out.extend(node.exact.iter().copied());
        return;
    };
    if let Some(child) = node.literal.get(*level) {
        collect(child, rest, false, out);
    }
    if !at_root_of_system {
        if let Some(child) = &node.plus {
            collect(child, rest, false, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, filters: &[&str], topic: &str) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            mqtt_filters: filters.iter().map(|f| f.to_string()).collect(),
            kafka_topic: topic.into(),
            key: KeySource::Topic,
            ..RouteConfig::default()
        }
    }

    fn names(table: &RouteTable, topic: &str) -> Vec<String> {
        table
            .matches(topic)
            .iter()
            .map(|r| r.name.to_string())
            .collect()
    }

    #[test]
    fn wildcards_match_as_mqtt_defines() {
        let table = RouteTable::compile(&[
            route("all_sensors", &["sensors/#"], "sensors"),
            route("temps", &["sensors/+/temp"], "temps"),
            route("exact", &["sensors/room1/temp"], "exact"),
            route("everything", &["#"], "all"),
        ])
        .unwrap();
        assert_eq!(
            names(&table, "sensors/room1/temp"),
            ["all_sensors", "temps", "exact", "everything"]
        );
        assert_eq!(
            names(&table, "sensors/room2/temp"),
            ["all_sensors", "temps", "everything"]
        );
        // `sensors/#` also matches the parent level itself.
        assert_eq!(names(&table, "sensors"), ["all_sensors", "everything"]);
        assert_eq!(
            names(&table, "sensors/room1/temp/extra"),
            ["all_sensors", "everything"]
        );
        // `+` matches exactly one level, including an empty one.
        assert_eq!(
            names(&table, "sensors//temp"),
            ["all_sensors", "temps", "everything"]
        );
        assert_eq!(names(&table, "other/x"), ["everything"]);
    }

    #[test]
    fn no_match_returns_nothing() {
        let table = RouteTable::compile(&[route("t", &["sensors/+"], "s")]).unwrap();
        assert!(table.matches("actuators/1").is_empty());
        assert!(table.matches("sensors").is_empty());
        assert!(table.matches("sensors/a/b").is_empty());
        assert!(
            table.matches("Sensors/a").is_empty(),
            "matching is case sensitive"
        );
    }

    #[test]
    fn system_topics_are_not_matched_by_leading_wildcards() {
        let table = RouteTable::compile(&[
            route("hash", &["#"], "a"),
            route("plus", &["+/info"], "b"),
            route("sys", &["$SYS/#"], "c"),
        ])
        .unwrap();
        assert_eq!(names(&table, "$SYS/info"), ["sys"]);
        assert_eq!(names(&table, "dev/info"), ["hash", "plus"]);
    }

    #[test]
    fn a_route_with_overlapping_filters_matches_once() {
        let table = RouteTable::compile(&[route("r", &["a/#", "a/+", "a/b", "a/b"], "t")]).unwrap();
        assert_eq!(names(&table, "a/b"), ["r"]);
    }

    #[test]
    fn large_tables_match_without_scanning() {
        let configs: Vec<RouteConfig> = (0..10_000)
            .map(|i| route(&format!("r{i}"), &[&format!("site/{i}/+/temp")], "t"))
            .collect();
        let table = RouteTable::compile(&configs).unwrap();
        assert_eq!(names(&table, "site/4242/dev7/temp"), ["r4242"]);
        assert!(table.matches("site/10001/dev/temp").is_empty());
    }

    #[test]
    fn invalid_filters_are_named() {
        for (filter, fragment) in [
            ("", "empty"),
            ("a/#/b", "'#' must be the last level"),
            ("a/b#", "'#' must be the last level"),
            ("a/b+/c", "'+' must occupy a whole level"),
            ("$share/g/a", "shared subscriptions"),
            ("a\0b", "null character"),
        ] {
            let message = filter_problem(filter).unwrap_or_default();
            assert!(message.contains(fragment), "{filter:?}: {message}");
        }
        for ok in ["#", "+", "a/+/b/#", "/", "a//b", "$SYS/#"] {
            assert_eq!(filter_problem(ok), None, "{ok:?}");
        }
    }

    #[test]
    fn every_route_problem_is_reported_with_its_path() {
        let err = RouteTable::compile(&[
            route("ok", &["a/#"], "fine"),
            route("ok", &["b"], "t"),
            route("bad name", &[], "x y"),
            route("r3", &["c/#/d", "e"], "t"),
        ])
        .unwrap_err();
        let text = err.to_string();
        for expected in [
            "routes[1].name: 'ok' is already the name of routes[0]",
            "routes[2].name: ' ' is not allowed",
            "routes[2].mqtt_filters: missing or empty",
            "routes[2].kafka_topic: ' ' is not allowed",
            "routes[3].mqtt_filters[0]: '#' must be the last level",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert_eq!(err.len(), 5, "{text}");
    }

    #[test]
    fn kafka_topic_names_follow_kafka_rules() {
        assert_eq!(kafka_topic_problem("sensors.v1_raw-2"), None);
        assert!(kafka_topic_problem("").is_some());
        assert!(kafka_topic_problem("..").is_some());
        assert!(kafka_topic_problem("a/b").is_some());
        assert!(kafka_topic_problem(&"x".repeat(250)).is_some());
    }

    #[test]
    fn templates_are_checked_against_the_filters() {
        let mut templated = route("t", &["ships/+/position", "ships/#"], "ais.{topic.2}");
        templated.key = KeySource::Template("{topic.3}/{payload.mmsi}".into());
        assert!(RouteTable::compile(&[templated.clone()]).is_ok());

        let mut deep = templated.clone();
        deep.kafka_topic = "ais.{topic.4}".into();
        deep.mqtt_filters = vec!["ships/+/position".into()];
        let text = RouteTable::compile(&[deep]).unwrap_err().to_string();
        assert!(
            text.contains("routes[0].kafka_topic: 'ais.{topic.4}' names topic level 4, but the filter 'ships/+/position' matches topics of 3 levels"),
            "{text}"
        );

        for (topic, key, says) in [
            (
                "ais {topic.1}",
                "{topic}",
                "routes[0].kafka_topic: ' ' is not allowed",
            ),
            (
                "ais.{nope}",
                "{topic}",
                "routes[0].kafka_topic: unknown placeholder '{nope}'",
            ),
            (
                "ais",
                "{topic.1",
                "routes[0].key: '{' at byte 0 is not closed",
            ),
            (
                "ais",
                "{{fixed}}",
                "routes[0].key: a key template needs a placeholder",
            ),
        ] {
            let mut bad = route("t", &["a/#"], topic);
            bad.key = KeySource::Template(key.into());
            let text = RouteTable::compile(&[bad]).unwrap_err().to_string();
            assert!(text.contains(says), "{topic} {key}: {text}");
        }
    }

    #[test]
    fn a_dead_letter_route_names_a_valid_topic() {
        let mut no_topic = route("a", &["a/#"], "t");
        no_topic.on_failure = OnFailure::DeadLetter;
        let mut bad_topic = no_topic.clone();
        bad_topic.name = "b".into();
        bad_topic.dead_letter_topic = "dead letters".into();
        let mut stray = route("c", &["c/#"], "t");
        stray.dead_letter_topic = "dead".into();
        let text = RouteTable::compile(&[no_topic, bad_topic, stray])
            .unwrap_err()
            .to_string();
        for expected in [
            "routes[0].dead_letter_topic: missing",
            "routes[1].dead_letter_topic: ' ' is not allowed",
            "routes[2].dead_letter_topic: set only with on_failure",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }
}
