//! The `avro` record format: a JSON payload checked against an Avro schema
//! and written as Avro binary, in the Confluent wire format (magic byte 0,
//! the schema's registry id as 4 bytes big-endian, the datum) when a schema
//! registry is configured, so Kafka's Avro consumers read the records as
//! they read their own.
//!
//! The schema is registered under the Kafka topic's subject
//! (`<topic>-value`, the registry's default naming) the first time a record
//! needs it; registering the same schema again returns the same id, so
//! several Tributary instances agree. A payload that is not JSON, or does
//! not fit the schema, fails that record (for good); a registry out of reach
//! fails it for now.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::Value as Json;
use tokio::sync::OnceCell;

use crate::record::RecordError;

/// How long one request to the schema registry may take.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);

/// The `[schema_registry]` of a route (`schema_registry = { url = … }`).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Base URL of a registry speaking the Confluent API, e.g.
    /// `http://127.0.0.1:8081` (Confluent, Karapace) or
    /// `http://127.0.0.1:8080/apis/ccompat/v7` (Apicurio).
    pub url: String,
    /// Basic authentication (both or neither).
    pub username: String,
    pub password: String,
    /// PEM file of the CA that signed an `https` registry's certificate
    /// (default: the usual public roots).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl RegistryConfig {
    /// What is wrong with it, for `--check-config`; never quotes the password.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            problems.push(("url", "must start with http:// or https://".to_owned()));
        } else if self.url.split("//").nth(1).is_some_and(|rest| {
            rest.split('/')
                .next()
                .is_some_and(|authority| authority.contains('@'))
        }) {
            problems.push((
                "url",
                "must not carry credentials: set username and password".to_owned(),
            ));
        }
        if self.username.is_empty() != self.password.is_empty() {
            problems.push(("password", "username and password go together".to_owned()));
        }
        if let Some(ca) = &self.ca_file {
            if let Err(error) = read_ca(ca) {
                problems.push(("ca_file", error));
            }
        }
        problems
    }
}

impl std::fmt::Debug for AvroFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroFormat")
            .field("schema", &self.schema_file)
            .field("registry", &self.registry.as_ref().map(|r| &r.url))
            .finish()
    }
}

fn read_ca(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// A route's Avro format: its schema, and where it is registered.
pub struct AvroFormat {
    schema_file: PathBuf,
    schema: Schema,
    registry: Option<RegistryConfig>,
    /// The id the registry gave the schema under the route's subject.
    id: OnceCell<u32>,
}

/// Why the schema could not be registered (for now: the record is not lost,
/// the device is told to try again).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("the schema registry: {0}")]
pub struct RegistryError(pub String);

impl AvroFormat {
    /// Reads and parses the schema file; the error says what is wrong.
    pub fn load(schema_file: &Path, registry: Option<RegistryConfig>) -> Result<Self, String> {
        let text = std::fs::read_to_string(schema_file)
            .map_err(|e| format!("cannot read {}: {e}", schema_file.display()))?;
        let schema = Schema::parse_str(&text)
            .map_err(|e| format!("{} is not an Avro schema: {e}", schema_file.display()))?;
        Ok(AvroFormat {
            schema_file: schema_file.to_path_buf(),
            schema,
            registry,
            id: OnceCell::new(),
        })
    }

    /// Whether records carry a registry id (and so need [`AvroFormat::register`] first).
    pub fn uses_registry(&self) -> bool {
        self.registry.is_some()
    }

    /// Registers the schema under `<topic>-value` unless done already; the
    /// id is kept for every later record.
    pub async fn register(self: &Arc<Self>, topic: &str) -> Result<u32, RegistryError> {
        let Some(registry) = self.registry.clone() else {
            return Ok(0);
        };
        let schema = self.schema.canonical_form();
        let subject = format!("{topic}-value");
        self.id
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || register(&registry, &subject, &schema))
                    .await
                    .map_err(|_| RegistryError("the registration was interrupted".into()))?
            })
            .await
            .copied()
    }

    /// The record value for `payload`: Avro binary, framed with the
    /// registry id when there is a registry (call [`AvroFormat::register`]
    /// first; without an id the record is not built).
    pub fn encode(&self, payload: &[u8]) -> Result<Bytes, RecordError> {
        let json: Json =
            serde_json::from_slice(payload).map_err(|_| RecordError::PayloadNotJson)?;
        if let Some(path) = unrepresentable_number(&json, &mut Vec::new()) {
            return Err(RecordError::NotInSchema(format!(
                "the number at '{path}' is larger than an Avro long"
            )));
        }
        let value = apache_avro::types::Value::from(json)
            .resolve(&self.schema)
            .map_err(|e| RecordError::NotInSchema(e.to_string()))?;
        let datum = apache_avro::to_avro_datum(&self.schema, value)
            .map_err(|e| RecordError::NotInSchema(e.to_string()))?;
        let Some(registry) = &self.registry else {
            return Ok(Bytes::from(datum));
        };
        let Some(id) = self.id.get() else {
            return Err(RecordError::NotRegistered(registry.url.clone()));
        };
        let mut framed = BytesMut::with_capacity(5 + datum.len());
        framed.put_u8(0);
        framed.put_u32(*id);
        framed.put_slice(&datum);
        Ok(framed.freeze())
    }
}

/// A JSON integer Avro cannot hold (above `i64::MAX`), which the conversion
/// would otherwise wrap around silently; its path when there is one.
fn unrepresentable_number(json: &Json, path: &mut Vec<String>) -> Option<String> {
    match json {
        Json::Number(n) if n.as_i64().is_none() && n.as_u64().is_some() => Some(path.join(".")),
        Json::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            path.push(i.to_string());
            let found = unrepresentable_number(item, path);
            path.pop();
            found
        }),
        Json::Object(fields) => fields.iter().find_map(|(name, item)| {
            path.push(name.clone());
            let found = unrepresentable_number(item, path);
            path.pop();
            found
        }),
        _ => None,
    }
}

/// `POST {url}/subjects/{subject}/versions`: the registry's id for `schema`.
fn register(registry: &RegistryConfig, subject: &str, schema: &str) -> Result<u32, RegistryError> {
    let mut config = ureq::Agent::config_builder()
        .timeout_global(Some(REGISTRY_TIMEOUT))
        .http_status_as_error(false);
    if let Some(ca) = &registry.ca_file {
        let certs = read_ca(ca).map_err(RegistryError)?;
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    let agent: ureq::Agent = config.build().into();
    let url = format!(
        "{}/subjects/{subject}/versions",
        registry.url.trim_end_matches('/')
    );
    let mut request = agent
        .post(&url)
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .header(
            "Accept",
            "application/vnd.schemaregistry.v1+json, application/json",
        );
    if !registry.username.is_empty() {
        let credentials = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", registry.username, registry.password));
        request = request.header("Authorization", format!("Basic {credentials}"));
    }
    let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" });
    // Errors name the URL and the status, never the credentials.
    let mut response = request
        .send_json(&body)
        .map_err(|e| RegistryError(format!("{url}: {e}")))?;
    let status = response.status();
    let answer: Json = response.body_mut().read_json().map_err(|e| {
        RegistryError(format!(
            "{url}: HTTP {status}, an answer that is not JSON: {e}"
        ))
    })?;
    if !status.is_success() {
        let message = answer.get("message").and_then(Json::as_str).unwrap_or("");
        return Err(RegistryError(format!("{url}: HTTP {status} {message}")));
    }
    answer
        .get("id")
        .and_then(Json::as_u64)
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| RegistryError(format!("{url}: no schema id in the answer")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{
        "type": "record", "name": "Position", "namespace": "ais",
        "fields": [
            {"name": "mmsi", "type": "long"},
            {"name": "lat", "type": "double"},
            {"name": "name", "type": ["null", "string"], "default": null}
        ]
    }"#;

    fn format(registry: Option<RegistryConfig>) -> AvroFormat {
        // One file per call: tests run in parallel, and a file rewritten while
        // another test reads it would read back empty.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tributary-avro-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("position-{call}.avsc"));
        std::fs::write(&path, SCHEMA).unwrap();
        let format = AvroFormat::load(&path, registry).unwrap();
        let _ = std::fs::remove_file(&path);
        format
    }

    #[test]
    fn json_that_fits_the_schema_is_encoded_and_decodes_back() {
        let avro = format(None);
        let bytes = avro
            .encode(br#"{"mmsi": 235001234, "lat": 51.5, "name": "Ever Given"}"#)
            .unwrap();
        let decoded = apache_avro::from_avro_datum(&avro.schema, &mut &bytes[..], None).unwrap();
        let json: Json = decoded.try_into().unwrap();
        assert_eq!(json["mmsi"], 235001234);
        assert_eq!(json["lat"], 51.5);
    }

    #[test]
    fn what_does_not_fit_is_the_payloads_failure() {
        let avro = format(None);
        for bad in [
            &br#"{"lat": 51.5}"#[..],
            br#"{"mmsi": "x", "lat": 1.0}"#,
            br#"{"mmsi": 18446744073709551615, "lat": 1.0}"#,
            b"not json",
        ] {
            let error = avro.encode(bad).unwrap_err();
            assert!(error.is_payload(), "{error}");
        }
    }

    #[test]
    fn with_a_registry_nothing_is_written_before_the_schema_has_an_id() {
        let avro = format(Some(RegistryConfig {
            url: "http://127.0.0.1:9".into(),
            ..RegistryConfig::default()
        }));
        let error = avro.encode(br#"{"mmsi": 1, "lat": 1.0}"#).unwrap_err();
        assert!(matches!(error, RecordError::NotRegistered(_)), "{error}");
        let _ = avro.id.set(7);
        let framed = avro.encode(br#"{"mmsi": 1, "lat": 1.0}"#).unwrap();
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 7], "magic byte and id");
    }

    #[test]
    fn registry_settings_are_checked_without_quoting_the_password() {
        let config = RegistryConfig {
            url: "http://user:hunter2@registry:8081".into(),
            username: "u".into(),
            password: String::new(),
            ca_file: None,
        };
        let problems = config.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().all(|(_, m)| !m.contains("hunter2")));
    }
}
