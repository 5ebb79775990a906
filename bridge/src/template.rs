//! Templates for a route's Kafka topic and key: text with placeholders filled
//! from each publish.
//!
//! `{topic}` is the MQTT topic name, `{topic.N}` its N-th level (from 1),
//! `{client_id}` the publisher's client id, `{username}` the user name it
//! authenticated as, and `{payload.a.b}` a field of a JSON payload (a
//! number segment indexes an array). `{{` and `}}` are literal braces.
//!
//! A template is checked once, when the configuration is read; filling it
//! can still fail for one publish (a topic with fewer levels, a payload
//! without the field), and that is that record's failure, never a panic.

use std::fmt::Write as _;

use serde_json::Value;
use thiserror::Error;

use crate::record::MqttPublish;

/// Deepest JSON path a `{payload.…}` placeholder may name.
const MAX_PATH_SEGMENTS: usize = 32;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Topic,
    /// 1-based level of the MQTT topic.
    TopicLevel(usize),
    ClientId,
    Username,
    /// Path into the JSON payload.
    Payload(Vec<String>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// Why a template could not be filled for one publish.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Unfilled {
    /// `{topic.N}` on a topic with fewer than N levels.
    #[error("the topic '{topic}' has no level {level}")]
    NoSuchLevel { topic: String, level: usize },
    /// `{username}` for a client that did not authenticate.
    #[error("the client has no user name")]
    Anonymous,
    /// `{payload.…}` on a payload that is not JSON.
    #[error("the payload is not JSON")]
    PayloadNotJson,
    /// `{payload.…}` naming a field the payload lacks, or one that is not a
    /// string, number or boolean.
    #[error("the payload has no string, number or boolean at '{0}'")]
    NoSuchField(String),
}

impl Unfilled {
    /// True when the payload is what failed (not the topic or the client).
    pub fn is_payload(&self) -> bool {
        matches!(self, Unfilled::PayloadNotJson | Unfilled::NoSuchField(_))
    }
}

/// A publish's JSON payload, parsed at most once however many placeholders
/// (and routes) read it.
#[derive(Default)]
pub struct PayloadJson {
    parsed: Option<Option<Value>>,
}

impl PayloadJson {
    pub fn get(&mut self, payload: &[u8]) -> Option<&Value> {
        self.parsed
            .get_or_insert_with(|| serde_json::from_slice(payload).ok())
            .as_ref()
    }
}

impl Template {
    /// Parses `source`; the error says what is wrong, for the operator.
    pub fn parse(source: &str) -> Result<Template, String> {
        Ok(Template {
            source: source.to_owned(),
            parts: scan(source, Part::Literal, placeholder)?,
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text, when the template has no placeholder.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(text)] => Some(text),
            _ => None,
        }
    }

    /// The literal pieces, in order (what every filled value contains).
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Literal(text) => Some(text.as_str()),
            _ => None,
        })
    }

    /// The deepest topic level a placeholder names.
    pub fn deepest_level(&self) -> Option<usize> {
        self.parts
            .iter()
            .filter_map(|part| match part {
                Part::TopicLevel(level) => Some(*level),
                _ => None,
            })
            .max()
    }

    /// Whether filling it reads the payload as JSON.
    pub fn reads_payload(&self) -> bool {
        self.parts
            .iter()
            .any(|part| matches!(part, Part::Payload(_)))
    }

    /// Fills the template for `publish`.
    pub fn fill(&self, publish: &MqttPublish, json: &mut PayloadJson) -> Result<String, Unfilled> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Topic => out.push_str(&publish.topic),
                Part::TopicLevel(level) => {
                    let value = publish.topic.split('/').nth(level - 1).ok_or_else(|| {
                        Unfilled::NoSuchLevel {
                            topic: publish.topic.to_string(),
                            level: *level,
                        }
                    })?;
                    out.push_str(value);
                }
                Part::ClientId => out.push_str(&publish.client_id),
                Part::Username => {
                    out.push_str(publish.username.as_deref().ok_or(Unfilled::Anonymous)?)
                }
                Part::Payload(path) => {
                    let root = json.get(&publish.payload).ok_or(Unfilled::PayloadNotJson)?;
                    let missing = || Unfilled::NoSuchField(path.join("."));
                    let value = path
                        .iter()
                        .try_fold(root, |value, segment| match value {
                            Value::Object(fields) => fields.get(segment),
                            Value::Array(items) => {
                                segment.parse::<usize>().ok().and_then(|i| items.get(i))
                            }
                            _ => None,
                        })
                        .ok_or_else(missing)?;
                    match value {
                        Value::String(text) => out.push_str(text),
                        Value::Number(number) => {
                            let _ = write!(out, "{number}");
                        }
                        Value::Bool(flag) => {
                            let _ = write!(out, "{flag}");
                        }
                        Value::Null | Value::Array(_) | Value::Object(_) => return Err(missing()),
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Splits a template into its pieces: literal text (`{{` and `}}` read as one
/// brace) and placeholders, each read by `placeholder`. The one reader of the
/// template syntax, for routes and for Kafka sources alike.
pub(crate) fn scan<T>(
    source: &str,
    literal: impl Fn(String) -> T,
    placeholder: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = source.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                chars.next();
                text.push('}');
            }
            '}' => {
                return Err(format!(
                    "'}}' at byte {at} closes nothing (write '}}}}' for a literal brace)"
                ))
            }
            '{' => {
                let rest = &source[at + 1..];
                let Some(end) = rest.find('}') else {
                    return Err(format!(
                        "'{{' at byte {at} is not closed (write '{{{{' for a literal brace)"
                    ));
                };
                let name = &rest[..end];
                // Skip the placeholder's characters and its '}'.
                for _ in 0..name.chars().count() + 1 {
                    chars.next();
                }
                if !text.is_empty() {
                    parts.push(literal(std::mem::take(&mut text)));
                }
                parts.push(placeholder(name)?);
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        parts.push(literal(text));
    }
    Ok(parts)
}

fn placeholder(name: &str) -> Result<Part, String> {
    const KNOWN: &str =
        "known: {topic}, {topic.N}, {client_id}, {username}, {payload.<field>[.<field>…]}";
    match name {
        "topic" => return Ok(Part::Topic),
        "client_id" => return Ok(Part::ClientId),
        "username" => return Ok(Part::Username),
        _ => {}
    }
    if let Some(level) = name.strip_prefix("topic.") {
        return match level.parse::<usize>() {
            Ok(level) if (1..=crate::route::MAX_TOPIC_BYTES).contains(&level) => {
                Ok(Part::TopicLevel(level))
            }
            _ => Err(format!(
                "'{{{name}}}': a topic level is a number from 1 (the first level)"
            )),
        };
    }
    if let Some(path) = name.strip_prefix("payload.") {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!(
                "'{{{name}}}': a payload field path has an empty segment"
            ));
        }
        if segments.len() > MAX_PATH_SEGMENTS {
            return Err(format!(
                "'{{{name}}}': a payload field path has at most {MAX_PATH_SEGMENTS} segments"
            ));
        }
        return Ok(Part::Payload(segments));
    }
    Err(format!("unknown placeholder '{{{name}}}' ({KNOWN})"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    fn publish(topic: &str, payload: &'static [u8]) -> MqttPublish {
        MqttPublish {
            topic: topic.into(),
            client_id: "dev-7".into(),
            qos: 1,
            retain: false,
            payload: Bytes::from_static(payload),
            username: Some(Arc::from("alice")),
            cert_cn: None,
            properties: None,
            received_ms: 0,
        }
    }

    fn fill(template: &str, publish: &MqttPublish) -> Result<String, Unfilled> {
        Template::parse(template)
            .unwrap()
            .fill(publish, &mut PayloadJson::default())
    }

    #[test]
    fn placeholders_are_filled_from_the_publish() {
        let p = publish(
            "ships/eu/235001234/position",
            br#"{"ship":{"mmsi":235001234,"name":"Ever {Given}","moored":false,"tags":["a","b"]}}"#,
        );
        assert_eq!(fill("ais.{topic.2}", &p).unwrap(), "ais.eu");
        assert_eq!(fill("{topic}", &p).unwrap(), "ships/eu/235001234/position");
        assert_eq!(fill("{client_id}/{username}", &p).unwrap(), "dev-7/alice");
        assert_eq!(fill("{payload.ship.mmsi}", &p).unwrap(), "235001234");
        assert_eq!(fill("{payload.ship.name}", &p).unwrap(), "Ever {Given}");
        assert_eq!(fill("{payload.ship.moored}", &p).unwrap(), "false");
        assert_eq!(fill("{payload.ship.tags.1}", &p).unwrap(), "b");
        assert_eq!(
            fill("{{literal}} {topic.1}", &p).unwrap(),
            "{literal} ships"
        );
    }

    #[test]
    fn what_cannot_be_filled_is_an_error_not_a_guess() {
        let p = publish("a/b", br#"{"x":null,"o":{}}"#);
        assert_eq!(
            fill("{topic.3}", &p),
            Err(Unfilled::NoSuchLevel {
                topic: "a/b".into(),
                level: 3
            })
        );
        assert_eq!(
            fill("{payload.y}", &p),
            Err(Unfilled::NoSuchField("y".into()))
        );
        assert_eq!(
            fill("{payload.x}", &p),
            Err(Unfilled::NoSuchField("x".into()))
        );
        assert_eq!(
            fill("{payload.o}", &p),
            Err(Unfilled::NoSuchField("o".into()))
        );
        let not_json = publish("a/b", b"\xff\x00");
        assert_eq!(
            fill("{payload.x}", &not_json),
            Err(Unfilled::PayloadNotJson)
        );
        let mut anonymous = publish("a/b", b"");
        anonymous.username = None;
        assert_eq!(fill("{username}", &anonymous), Err(Unfilled::Anonymous));
        // Empty levels are levels: "a//b" has an empty second level.
        assert_eq!(fill("[{topic.2}]", &publish("a//b", b"")).unwrap(), "[]");
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        for (template, says) in [
            ("x.{nope}", "unknown placeholder '{nope}'"),
            ("x.{topic.0}", "a topic level is a number from 1"),
            ("x.{topic.two}", "a topic level is a number from 1"),
            ("x.{payload..a}", "empty segment"),
            ("x.{topic", "is not closed"),
            ("x.}", "closes nothing"),
        ] {
            let error = Template::parse(template).unwrap_err();
            assert!(error.contains(says), "{template}: {error}");
        }
    }

    #[test]
    fn a_template_knows_what_it_needs() {
        let t = Template::parse("t.{topic.3}.{topic.1}.{payload.a}").unwrap();
        assert_eq!(t.deepest_level(), Some(3));
        assert!(t.reads_payload());
        assert_eq!(t.literal(), None);
        assert_eq!(t.literals().collect::<Vec<_>>(), ["t.", ".", "."]);
        let plain = Template::parse("telemetry").unwrap();
        assert_eq!(plain.literal(), Some("telemetry"));
        assert_eq!(plain.deepest_level(), None);
        assert!(!plain.reads_payload());
    }
}
