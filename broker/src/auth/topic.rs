//! MQTT topic-name and topic-filter syntax, matching and filter intersection,
//! as the access-control code needs them.
//!
//! Everything here walks topics level by level with `str::split`, so a check
//! never allocates: these functions run on every PUBLISH and every delivery.
//!
//! The `$` rule of MQTT (§4.7.2) is applied everywhere: a filter whose first
//! level is a wildcard never matches, intersects or covers a topic whose first
//! level starts with `$` (so `#` does not reach `$SYS/...`).
//!
//! This module must never panic on any input, and never treat an invalid
//! topic or filter as matching anything.

use thiserror::Error;

/// The longest topic MQTT can carry: its strings have a two-byte length.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or filter is not valid MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    #[error("topic contains a NUL character")]
    Nul,
    #[error("'#' must be a whole level and the last one")]
    MisplacedHash,
    #[error("'+' must be a whole level")]
    MisplacedPlus,
    #[error("a topic name must not contain '+' or '#'")]
    WildcardInName,
    #[error("a shared subscription must be $share/<group>/<filter> with a group free of '+', '#' and '/'")]
    BadShare,
}

/// One level of a filter, after any placeholder has been replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atom<'a> {
    Lit(&'a str),
    Plus,
    Hash,
}

impl<'a> Atom<'a> {
    /// Reads one level of a filter that has already been validated; an
    /// unvalidated level like `a#` reads as a literal and so matches nothing
    /// a client can publish.
    pub fn of_level(level: &'a str) -> Self {
        match level {
            "+" => Atom::Plus,
            "#" => Atom::Hash,
            other => Atom::Lit(other),
        }
    }
}

/// The levels of a topic or filter, like `split('/')` but a byte scan,
/// which is markedly cheaper on the short levels topics are made of.
#[derive(Debug, Clone)]
pub struct Levels<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Levels<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.bytes().position(|b| b == b'/') {
            Some(slash) => {
                // `/` is ASCII, so both cuts fall on character boundaries.
                self.rest = rest.get(slash.saturating_add(1)..);
                rest.get(..slash)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

pub fn levels(topic: &str) -> Levels<'_> {
    Levels { rest: Some(topic) }
}

/// The levels of a (validated) filter as atoms.
pub fn filter_atoms(filter: &str) -> impl Iterator<Item = Atom<'_>> + Clone {
    levels(filter).map(Atom::of_level)
}

fn check_common(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Checks a topic name as a PUBLISH (or a will) carries it.
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter as a SUBSCRIBE carries it (after any `$share`
/// prefix has been removed).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = levels(filter).peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedHash);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedPlus);
        }
    }
    Ok(())
}

/// Removes a `$share/<group>/` prefix (MQTT 5 shared subscriptions, also
/// accepted by many 3.1.1 brokers), returning the filter the subscription
/// really matches on. Other filters are returned unchanged.
pub fn strip_shared(filter: &str) -> Result<&str, TopicError> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Ok(filter);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(TopicError::BadShare);
    };
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(TopicError::BadShare);
    }
    Ok(inner)
}

fn starts_with_dollar(atom: Option<Atom<'_>>) -> bool {
    matches!(atom, Some(Atom::Lit(l)) if l.starts_with('$'))
}

/// Does the filter given as atoms match the topic name? The caller has
/// validated `topic` as a name.
pub fn atoms_match_topic<'a>(mut filter: impl Iterator<Item = Atom<'a>>, topic: &str) -> bool {
    let dollar = topic.starts_with('$');
    let mut levels = levels(topic);
    let mut first = true;
    loop {
        match (filter.next(), levels.next()) {
            (None, None) => return true,
            // `a/#` also matches `a` itself (MQTT §4.7.1.2).
            (Some(Atom::Hash), _) => return !(first && dollar),
            (Some(Atom::Plus), Some(_)) => {
                if first && dollar {
                    return false;
                }
            }
            (Some(Atom::Lit(want)), Some(got)) => {
                if want != got {
                    return false;
                }
            }
            _ => return false,
        }
        first = false;
    }
}

/// Is there at least one topic name that both filters match?
pub fn atoms_intersect<'a, 'b>(
    mut a: impl Iterator<Item = Atom<'a>>,
    mut b: impl Iterator<Item = Atom<'b>>,
) -> bool {
    let mut first = true;
    loop {
        let (x, y) = (a.next(), b.next());
        match (x, y) {
            (None, None) => return true,
            (Some(Atom::Hash), other) | (other, Some(Atom::Hash)) => {
                // A wildcard first level never reaches a `$` topic, so it
                // cannot meet a filter that names one.
                return !(first && starts_with_dollar(other));
            }
            (Some(Atom::Plus), Some(Atom::Plus)) => {}
            (Some(Atom::Plus), Some(Atom::Lit(l))) | (Some(Atom::Lit(l)), Some(Atom::Plus)) => {
                if first && l.starts_with('$') {
                    return false;
                }
            }
            (Some(Atom::Lit(p)), Some(Atom::Lit(q))) => {
                if p != q {
                    return false;
                }
            }
            _ => return false,
        }
        first = false;
    }
}

/// Does `outer` match every topic name that `inner` matches?
pub fn atoms_cover<'a, 'b>(
    mut outer: impl Iterator<Item = Atom<'a>>,
    mut inner: impl Iterator<Item = Atom<'b>>,
) -> bool {
    let mut first = true;
    loop {
        let (o, i) = (outer.next(), inner.next());
        match (o, i) {
            (None, None) => return true,
            (Some(Atom::Hash), rest) => return !(first && starts_with_dollar(rest)),
            (Some(Atom::Plus), Some(Atom::Lit(l))) => {
                if first && l.starts_with('$') {
                    return false;
                }
            }
            (Some(Atom::Plus), Some(Atom::Plus)) => {}
            // `+/#` matches every topic `#` matches (each has at least one
            // level), but `+` alone or `+/x/#` does not.
            (Some(Atom::Plus), Some(Atom::Hash)) => return outer.next() == Some(Atom::Hash),
            (Some(Atom::Lit(p)), Some(Atom::Lit(q))) => {
                if p != q {
                    return false;
                }
            }
            _ => return false,
        }
        first = false;
    }
}

/// Does `filter` match `topic`? False for an invalid filter or name.
pub fn matches(filter: &str, topic: &str) -> bool {
    validate_filter(filter).is_ok()
        && validate_name(topic).is_ok()
        && atoms_match_topic(filter_atoms(filter), topic)
}

/// Do two filters share at least one topic? False if either is invalid.
pub fn intersects(a: &str, b: &str) -> bool {
    validate_filter(a).is_ok()
        && validate_filter(b).is_ok()
        && atoms_intersect(filter_atoms(a), filter_atoms(b))
}

/// Does `outer` match every topic that `inner` matches? False if either is
/// invalid.
pub fn covers(outer: &str, inner: &str) -> bool {
    validate_filter(outer).is_ok()
        && validate_filter(inner).is_ok()
        && atoms_cover(filter_atoms(outer), filter_atoms(inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_filters_are_validated() {
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a\0b"), Err(TopicError::Nul));
        assert_eq!(validate_name(&"a".repeat(65_536)), Err(TopicError::TooLong));
        assert!(validate_name("/").is_ok());
        assert!(validate_name("a b/c").is_ok());

        for good in ["#", "+", "a/#", "+/+", "/+/", "a//b", "$SYS/#", "+/#"] {
            assert!(validate_filter(good).is_ok(), "{good}");
        }
        assert_eq!(validate_filter("a/#/b"), Err(TopicError::MisplacedHash));
        assert_eq!(validate_filter("a#"), Err(TopicError::MisplacedHash));
        assert_eq!(validate_filter("a/b#"), Err(TopicError::MisplacedHash));
        assert_eq!(validate_filter("a+/b"), Err(TopicError::MisplacedPlus));
        assert_eq!(validate_filter("a/+b"), Err(TopicError::MisplacedPlus));
    }

    #[test]
    fn levels_split_like_str_split() {
        for t in ["", "/", "a", "a/b", "/a/", "a//b", "ü/ß/€", "//"] {
            assert_eq!(
                levels(t).collect::<Vec<_>>(),
                t.split('/').collect::<Vec<_>>(),
                "{t:?}"
            );
        }
    }

    #[test]
    fn shared_prefix_is_removed() {
        assert_eq!(strip_shared("$share/g/a/b"), Ok("a/b"));
        assert_eq!(strip_shared("$share/g/#"), Ok("#"));
        assert_eq!(strip_shared("a/b"), Ok("a/b"));
        assert_eq!(strip_shared("$share/g"), Err(TopicError::BadShare));
        assert_eq!(strip_shared("$share//a"), Err(TopicError::BadShare));
        assert_eq!(strip_shared("$share/g/"), Err(TopicError::BadShare));
        assert_eq!(strip_shared("$share/+/a"), Err(TopicError::BadShare));
        assert_eq!(strip_shared("$shared/g/a"), Ok("$shared/g/a"));
    }

    #[test]
    fn matching() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/c"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/+", "a"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b/c"));
        assert!(matches("+/+", "/x"));
        assert!(matches("+", "x"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("a/#/b", "a/x/b"), "invalid filter matches nothing");
    }

    #[test]
    fn dollar_topics_are_not_reached_by_leading_wildcards() {
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(matches("$SYS/+", "$SYS/x"));
        assert!(matches("a/+", "a/$x"), "only the first level is special");
        assert!(!intersects("#", "$SYS/#"));
        assert!(!intersects("+/x", "$SYS/x"));
        assert!(intersects("$SYS/#", "$SYS/+"));
        assert!(!covers("#", "$SYS/x"));
        assert!(!covers("+/#", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn intersection() {
        assert!(intersects("+/b", "a/+"));
        assert!(intersects("a/#", "a"));
        assert!(intersects("a", "a/#"));
        assert!(intersects("#", "a/b/c"));
        assert!(intersects("sensors/#", "#"));
        assert!(!intersects("sensors/#", "secret/x"));
        assert!(!intersects("a/b", "a/c"));
        assert!(!intersects("a/+", "a"));
        assert!(!intersects("a/+/c", "a/b"));
        assert!(intersects("+/#", "a"));
        assert!(intersects("a/+/c", "+/b/#"));
    }

    #[test]
    fn coverage() {
        assert!(covers("#", "a/b"));
        assert!(covers("#", "#"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/+/c"));
        assert!(covers("+/#", "#"));
        assert!(!covers("+", "#"));
        assert!(!covers("+/x/#", "#"));
        assert!(!covers("a", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/+", "a"));
    }
}
