//! The MQTT topic template of a Kafka source: `devices/{key}/commands`.
//!
//! Placeholders: `{key}` (the record's key), `{kafka_topic}`, `{partition}`,
//! `{header.NAME}` (the last header named NAME). The syntax is the routes'
//! (see `template::scan`). Filling never panics on any record: a missing or
//! non-UTF-8 value is a [`Skip`], and the filled topic is checked against
//! MQTT's topic name grammar by the caller.

use super::mapping::{KafkaRecord, Skip};
use crate::template::scan;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Key,
    KafkaTopic,
    Partition,
    Header(String),
}

/// A parsed MQTT topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

impl TopicTemplate {
    /// Parses `source`; the error says what is wrong, for the operator.
    pub fn parse(source: &str) -> Result<TopicTemplate, String> {
        let parts = scan(source, Part::Literal, placeholder)?;
        for part in &parts {
            if let Part::Literal(text) = part {
                for (c, what) in [('+', "'+'"), ('#', "'#'"), ('\0', "the null character")] {
                    if text.contains(c) {
                        return Err(format!(
                            "{what} can never be in a topic name [MQTT-3.3.2-2, MQTT-4.7.3-2]"
                        ));
                    }
                }
            }
        }
        if parts.is_empty() {
            return Err("an empty topic name is not allowed [MQTT-4.7.3-1]".into());
        }
        Ok(TopicTemplate { parts })
    }

    /// The MQTT topic for `record` (not yet checked as a topic name).
    pub fn fill(&self, record: &KafkaRecord<'_>) -> Result<String, Skip> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Key => {
                    let key = record.key.ok_or(Skip::MissingKey)?;
                    out.push_str(std::str::from_utf8(key).map_err(|_| Skip::NotUtf8)?);
                }
                Part::KafkaTopic => out.push_str(record.topic),
                Part::Partition => out.push_str(&record.partition.to_string()),
                Part::Header(name) => out.push_str(record.header_str(name)?),
            }
        }
        Ok(out)
    }
}

fn placeholder(name: &str) -> Result<Part, String> {
    match name {
        "key" => Ok(Part::Key),
        "kafka_topic" => Ok(Part::KafkaTopic),
        "partition" => Ok(Part::Partition),
        _ => match name.strip_prefix("header.") {
            Some("") => Err(format!("'{{{name}}}' names no header")),
            Some(header) => Ok(Part::Header(header.to_owned())),
            None => Err(format!(
                "unknown placeholder '{{{name}}}' (known: {{key}}, {{kafka_topic}}, \
                 {{partition}}, {{header.NAME}})"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(
        key: Option<&'a [u8]>,
        headers: Vec<(&'a str, Option<&'a [u8]>)>,
    ) -> KafkaRecord<'a> {
        KafkaRecord {
            topic: "commands",
            partition: 3,
            offset: 7,
            key,
            payload: None,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }
    }

    #[test]
    fn placeholders_are_filled_from_the_record() {
        let t =
            TopicTemplate::parse("{kafka_topic}/{partition}/{key}/{header.site}/{{x}}").unwrap();
        let r = record(
            Some(b"dev-7"),
            vec![("site", Some(b"old")), ("site", Some(b"lyon"))],
        );
        assert_eq!(t.fill(&r).unwrap(), "commands/3/dev-7/lyon/{x}");
    }

    #[test]
    fn what_a_record_lacks_is_a_skip_reason() {
        let t = TopicTemplate::parse("devices/{key}/{header.site}").unwrap();
        assert_eq!(t.fill(&record(None, vec![])), Err(Skip::MissingKey));
        assert_eq!(t.fill(&record(Some(b"\xff"), vec![])), Err(Skip::NotUtf8));
        assert_eq!(
            t.fill(&record(Some(b"k"), vec![])),
            Err(Skip::MissingHeader)
        );
        assert_eq!(
            t.fill(&record(Some(b"k"), vec![("site", None)])),
            Err(Skip::MissingHeader)
        );
        assert_eq!(
            t.fill(&record(Some(b"k"), vec![("site", Some(b"\xc3"))])),
            Err(Skip::NotUtf8)
        );
    }

    #[test]
    fn templates_that_can_never_make_a_topic_are_refused() {
        for (template, says) in [
            ("devices/+/{key}", "'+' can never"),
            ("devices/#", "'#' can never"),
            ("", "empty topic name"),
            ("{nope}", "unknown placeholder '{nope}'"),
            ("{header.}", "names no header"),
            ("a/{key", "is not closed"),
        ] {
            let error = TopicTemplate::parse(template).unwrap_err();
            assert!(error.contains(says), "{template}: {error}");
        }
    }
}
