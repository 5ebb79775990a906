//! Collects every configuration problem before anything is reported.
//!
//! Validation never stops at the first mistake: an operator fixing a config file
//! wants the whole list at once, each entry naming the field by its path
//! (`routes[2].mqtt_filters[0]`).

use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _};

/// One invalid field: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path of the field, e.g. `kafka.bootstrap_servers` or `routes[1].name`.
    pub path: String,
    /// What is wrong, phrased for the operator.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl Problem {
    /// True when this problem is about the field at `path` or something inside it
    /// (`routes[1].mqtt_filters[0]` is under `routes[1].mqtt_filters`).
    pub fn is_under(&self, path: &str) -> bool {
        self.path
            .strip_prefix(path)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    }
}

/// An ordered list of [`Problem`]s, filled by each section's `validate`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the field at `path` is invalid.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }

    /// Keeps only the problems for which `keep` is true.
    pub fn retain(&mut self, keep: impl FnMut(&Problem) -> bool) {
        self.0.retain(keep);
    }

    /// Sorts the problems by `key`, keeping the order of equal ones.
    pub fn sort_by_key<K: Ord>(&mut self, key: impl FnMut(&Problem) -> K) {
        self.0.sort_by_key(key);
    }

    /// Moves every problem of `other` to the end of this list.
    pub fn append(&mut self, other: Problems) {
        self.0.extend(other.0);
    }

    /// `Ok(())` when nothing was recorded, else every problem.
    pub fn into_result(self) -> Result<(), Problems> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Deserialises a setting that takes one of a few names, such as `key = "topic"`.
///
/// A derived enum would do, but the `config` crate reports a wrong name as "enum
/// KeySource does not have variant constructor …", naming a Rust type the operator
/// never wrote; this says which names are allowed instead.
pub fn deserialize_one_of<'de, D, T>(deserializer: D, choices: &[(&str, T)]) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Copy,
{
    let name = String::deserialize(deserializer)?;
    if let Some((_, value)) = choices.iter().find(|(choice, _)| *choice == name) {
        return Ok(*value);
    }
    let expected: Vec<String> = choices
        .iter()
        .map(|(choice, _)| format!("`{choice}`"))
        .collect();
    Err(D::Error::custom(format!(
        "unknown value `{name}`, expected one of {}",
        expected.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_under_its_own_path_and_the_paths_inside_it() {
        let problem = Problem {
            path: "routes[1].mqtt_filters[0]".into(),
            message: String::new(),
        };
        assert!(problem.is_under("routes[1].mqtt_filters[0]"));
        assert!(problem.is_under("routes[1].mqtt_filters"));
        assert!(problem.is_under("routes[1]"));
        assert!(!problem.is_under("routes[1].mqtt"));
        assert!(!problem.is_under("routes[10]"));
        assert!(!problem.is_under("routes[1].mqtt_filters[0"));
    }
}
