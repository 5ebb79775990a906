//! Topic access control: Mosquitto's `acl_file` syntax, and the rule type
//! that JWT ACL claims are turned into, behind one [`AclCheck`] trait.
//!
//! # File syntax (Mosquitto's)
//!
//! Blank lines and lines whose first non-blank character is `#` are ignored;
//! every line is trimmed. Three keywords:
//!
//! * `user <name>`: the rest of the line is a user name; the `topic` lines
//!   after it (up to the next `user`) apply to that user only. Two sections
//!   for one user are merged.
//! * `topic [read|write|readwrite|deny] <topic>`: with a single word after
//!   `topic`, that word is the topic and the access is `readwrite`. With more
//!   words the first must be an access word and the rest of the line is the
//!   topic (which may contain spaces). Mosquitto does the same: a misspelt
//!   `deny` must not silently become a `readwrite` grant. `topic` lines before
//!   the first `user` line apply to anonymous clients (no user name) only.
//! * `pattern [access] <topic>`: like `topic`, but `%c` (client id) and `%u`
//!   (user name) are replaced, and only when they form a whole level (`a/%c`,
//!   not `a/x%c`, as in Mosquitto 2.x). Patterns apply to every client,
//!   whatever `user` section they appear in.
//!
//! Unknown keywords, unknown access words and invalid topics (`a/#/b`, `a+`)
//! are errors that name the line; all of them are reported at once.
//!
//! # Semantics
//!
//! The rules that apply to a client are its own section's (the anonymous
//! section if it has no user name; none if its user has no section) plus all
//! patterns. No applicable rule means everything is denied.
//!
//! * [`Access::Write`] (a PUBLISH, or a will, to topic T) is allowed when a
//!   `write` or `readwrite` rule matches T and no `deny` rule matches T.
//! * [`Access::Read`] (delivering a message on T to a subscriber) is the
//!   same with `read` or `readwrite`.
//! * [`Access::Subscribe`] (filter F) is allowed when a `read`/`readwrite`
//!   rule's filter intersects F (some topic matches both) and no `deny` rule
//!   covers F entirely. A `#` subscriber is therefore accepted by a
//!   `sensors/#` rule, and every delivery is then checked with `Read`, so it
//!   only receives what it may read. `$share/<group>/F` is checked as F.
//! * `deny` always wins over any grant.
//! * A rule or filter whose first level is a wildcard never reaches topics
//!   starting with `$` (MQTT §4.7.2): `#` does not grant `$SYS/...`.
//! * A pattern using `%u` never applies to an anonymous client. If the value
//!   substituted is empty, contains `/`, `+` or `#`, or starts with `$` in the
//!   first level, the pattern grants nothing (a client id of `#` must not turn
//!   `pattern read %c/#` into `#/#`); a `deny` pattern still denies, reading
//!   the value as Mosquitto would (as filter text), which can only widen what
//!   it denies.
//! * A topic to check that is not a valid name (Read, Write) or filter
//!   (Subscribe) is denied.
//!
//! Checks run on every PUBLISH and every delivery, so they never allocate:
//! pattern levels are compared with topic levels as `str::split` yields
//! them, placeholders being replaced on the fly.
//!
//! This module must never grant anything on an input it cannot parse, never
//! panic on hostile rules, topics, client ids or user names, and never let a
//! substituted value act as a wildcard in a grant.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::quote;
use super::topic::{self, Atom, TopicError};

/// What a client wants to do with a topic or filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Receive a message published on a topic.
    Read,
    /// Publish (or leave a will) on a topic.
    Write,
    /// Subscribe with a filter.
    Subscribe,
}

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    /// `None` for an anonymous client.
    pub username: Option<&'a str>,
    pub client_id: &'a str,
}

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Permission {
    fn from_word(word: &str) -> Option<Self> {
        match word {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "readwrite" => Some(Self::ReadWrite),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }

    fn grants(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Self::ReadWrite, _)
                | (Self::Read, Access::Read | Access::Subscribe)
                | (Self::Write, Access::Write)
        )
    }
}

/// How placeholders in a rule's filter are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholders {
    /// Plain `topic` lines: `%c` is literal text.
    None,
    /// `pattern` lines: `%c` and `%u` as whole levels; elsewhere in a level
    /// they are literal text, as in Mosquitto 2.x.
    Mosquitto,
    /// JWT ACL claims: `%c`, `%u`, `${clientid}`, `${username}` as whole
    /// levels. Inside a level they are refused, because an EMQX user would
    /// expect them replaced there and a silent literal is a trap.
    Token,
}

/// Why a rule could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RuleError {
    #[error("{0}")]
    Topic(#[from] TopicError),
    #[error("a placeholder must be a whole topic level")]
    PartialPlaceholder,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Lit(Box<str>),
    Plus,
    Hash,
    ClientId,
    Username,
}

/// One rule: a permission on a filter that may hold `%c`/`%u` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    permission: Permission,
    levels: Box<[Level]>,
    /// The literal levels before the first wildcard or placeholder, joined
    /// with `/`: every topic the rule matches starts with it.
    literal_prefix: Box<str>,
    has_placeholder: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Grant,
    Deny,
}

impl Rule {
    /// Builds a rule from filter text.
    pub fn new(
        permission: Permission,
        filter: &str,
        placeholders: Placeholders,
    ) -> Result<Self, RuleError> {
        topic::validate_filter(filter)?;
        let mut has_placeholder = false;
        let mut levels = Vec::new();
        for text in topic::levels(filter) {
            let level = match (placeholders, text) {
                (_, "+") => Level::Plus,
                (_, "#") => Level::Hash,
                (Placeholders::Mosquitto | Placeholders::Token, "%c") => Level::ClientId,
                (Placeholders::Mosquitto | Placeholders::Token, "%u") => Level::Username,
                (Placeholders::Token, "${clientid}") => Level::ClientId,
                (Placeholders::Token, "${username}") => Level::Username,
                (Placeholders::Token, t)
                    if ["%c", "%u", "${clientid}", "${username}"]
                        .iter()
                        .any(|p| t.contains(p)) =>
                {
                    return Err(RuleError::PartialPlaceholder)
                }
                (_, t) => Level::Lit(t.into()),
            };
            has_placeholder |= matches!(level, Level::ClientId | Level::Username);
            levels.push(level);
        }
        let literal_prefix = levels
            .iter()
            .map_while(|level| match level {
                Level::Lit(text) => Some(&**text),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("/")
            .into_boxed_str();
        Ok(Self {
            permission,
            levels: levels.into_boxed_slice(),
            literal_prefix,
            has_placeholder,
        })
    }

    pub fn permission(&self) -> Permission {
        self.permission
    }

    /// Whether the rule takes part in a decision for this client at all.
    fn applies(&self, subject: &Subject<'_>, mode: Mode) -> bool {
        if !self.has_placeholder {
            return true;
        }
        let mut first = true;
        for level in self.levels.iter() {
            let value = match level {
                Level::ClientId => subject.client_id,
                Level::Username => match subject.username {
                    Some(name) => name,
                    None => return false,
                },
                _ => {
                    first = false;
                    continue;
                }
            };
            if mode == Mode::Grant && !safe_substitution(value, first) {
                return false;
            }
            first = false;
        }
        true
    }

    fn atoms<'a>(&'a self, subject: &Subject<'a>) -> RuleAtoms<'a> {
        RuleAtoms {
            levels: self.levels.iter(),
            client_id: subject.client_id,
            username: subject.username.unwrap_or(""),
            expanding: None,
        }
    }

    /// A cheap first test (one comparison) for Read and Write: most rules
    /// start with literal levels, and most topics fail here, so a check
    /// rarely walks a whole rule.
    fn may_match_topic(&self, topic: &str) -> bool {
        if self.literal_prefix.is_empty() && !matches!(self.levels.first(), Some(Level::Lit(_))) {
            return true;
        }
        topic
            .strip_prefix(&*self.literal_prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The same for Subscribe, on the first level only: a filter's later
    /// levels may be wildcards that meet anything.
    fn may_meet(&self, first_level: &str) -> bool {
        match self.levels.first() {
            Some(Level::Lit(text)) => **text == *first_level,
            _ => true,
        }
    }

    fn matches_topic(&self, subject: &Subject<'_>, mode: Mode, topic: &str) -> bool {
        self.applies(subject, mode) && topic::atoms_match_topic(self.atoms(subject), topic)
    }

    fn intersects(&self, subject: &Subject<'_>, filter: &str) -> bool {
        self.applies(subject, Mode::Grant)
            && topic::atoms_intersect(self.atoms(subject), topic::filter_atoms(filter))
    }

    fn covers(&self, subject: &Subject<'_>, filter: &str) -> bool {
        self.applies(subject, Mode::Deny)
            && topic::atoms_cover(self.atoms(subject), topic::filter_atoms(filter))
    }
}

/// A substituted value may stand for exactly one ordinary level and nothing
/// more: no wildcard, no extra level, no way into the `$` namespace.
fn safe_substitution(value: &str, first_level: bool) -> bool {
    let reserved = first_level && value.starts_with('$');
    !(value.is_empty() || value.contains(['/', '+', '#']) || reserved)
}

/// A rule's levels with placeholders replaced. A value is read as filter
/// text (split on `/`, `+` and `#` as wildcards): grants never get here with
/// such a value (see [`safe_substitution`]), and for a deny that reading is
/// Mosquitto's and only widens what is denied.
struct RuleAtoms<'a> {
    levels: std::slice::Iter<'a, Level>,
    client_id: &'a str,
    username: &'a str,
    expanding: Option<topic::Levels<'a>>,
}

impl<'a> RuleAtoms<'a> {
    fn start_value(&mut self, value: &'a str) -> Atom<'a> {
        let mut parts = topic::levels(value);
        let head = parts.next().unwrap_or("");
        self.expanding = Some(parts);
        Atom::of_level(head)
    }
}

impl<'a> Iterator for RuleAtoms<'a> {
    type Item = Atom<'a>;

    fn next(&mut self) -> Option<Atom<'a>> {
        if let Some(parts) = &mut self.expanding {
            if let Some(part) = parts.next() {
                return Some(Atom::of_level(part));
            }
            self.expanding = None;
        }
        Some(match self.levels.next()? {
            Level::Lit(text) => Atom::Lit(text),
            Level::Plus => Atom::Plus,
            Level::Hash => Atom::Hash,
            Level::ClientId => self.start_value(self.client_id),
            Level::Username => self.start_value(self.username),
        })
    }
}

/// An ordered collection of rules with the same audience: one user's
/// section, the anonymous section, the patterns, or one token's ACL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

impl RuleSet {
    pub const fn new() -> Self {
        Self {
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }

    pub fn push(&mut self, rule: Rule) {
        if rule.permission == Permission::Deny {
            self.deny.push(rule);
        } else {
            self.allow.push(rule);
        }
    }

    pub fn len(&self) -> usize {
        self.allow.len().saturating_add(self.deny.len())
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    fn extend(&mut self, other: RuleSet) {
        self.allow.extend(other.allow);
        self.deny.extend(other.deny);
    }
}

static NO_RULES: RuleSet = RuleSet::new();

/// Anything that can decide whether a client may do something with a topic.
pub trait AclCheck {
    /// `topic` is a topic name for Read and Write, a filter (possibly
    /// `$share/...`) for Subscribe.
    fn check(&self, subject: &Subject<'_>, access: Access, topic: &str) -> bool;
}

impl AclCheck for RuleSet {
    fn check(&self, subject: &Subject<'_>, access: Access, topic: &str) -> bool {
        decide(&[self], subject, access, topic)
    }
}

fn decide(sets: &[&RuleSet], subject: &Subject<'_>, access: Access, topic: &str) -> bool {
    let allows = || sets.iter().flat_map(|set| set.allow.iter());
    let denies = || sets.iter().flat_map(|set| set.deny.iter());
    match access {
        Access::Read | Access::Write => {
            if topic::validate_name(topic).is_err() {
                return false;
            }
            let hit =
                |r: &Rule, mode| r.may_match_topic(topic) && r.matches_topic(subject, mode, topic);
            allows().any(|r| r.permission.grants(access) && hit(r, Mode::Grant))
                && !denies().any(|r| hit(r, Mode::Deny))
        }
        Access::Subscribe => {
            let Ok(filter) = topic::strip_shared(topic) else {
                return false;
            };
            if topic::validate_filter(filter).is_err() {
                return false;
            }
            // A wildcard first level can meet any rule; only a literal one
            // lets rules be skipped cheaply.
            let head = match first_level(filter) {
                "+" | "#" => None,
                level => Some(level),
            };
            let may = |r: &Rule| head.is_none_or(|h| r.may_meet(h));
            allows().any(|r| r.permission.grants(access) && may(r) && r.intersects(subject, filter))
                && !denies().any(|r| may(r) && r.covers(subject, filter))
        }
    }
}

fn first_level(topic: &str) -> &str {
    topic.split_once('/').map_or(topic, |(head, _)| head)
}

/// A parsed Mosquitto `acl_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    anonymous: RuleSet,
    users: HashMap<Box<str>, RuleSet>,
    patterns: RuleSet,
}

/// Beyond this many errors a file is clearly not an ACL file; listing more
/// would only flood the log.
const MAX_REPORTED_ERRORS: usize = 100;

/// One problem in an ACL file. Topics and words from the file are quoted,
/// escaped and shortened, since the file may hold anything.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {kind}")]
pub struct AclFileError {
    pub line: usize,
    pub kind: AclErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AclErrorKind {
    #[error("unknown keyword {0}, expected user, topic or pattern")]
    UnknownKeyword(String),
    #[error("`user` needs a user name")]
    MissingUser,
    #[error("`{0}` needs a topic")]
    MissingTopic(&'static str),
    #[error("unknown access {0}, expected read, write, readwrite or deny before the topic")]
    UnknownAccess(String),
    #[error("invalid topic {topic}: {reason}")]
    InvalidTopic { topic: String, reason: RuleError },
    #[error("more than {MAX_REPORTED_ERRORS} errors, the rest are not listed")]
    TooManyErrors,
}

/// Why [`Acl::load`] failed.
#[derive(Debug, Error)]
pub enum AclLoadError {
    #[error("cannot read ACL file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid ACL file {path}: {}", join_errors(.errors))]
    Invalid {
        path: PathBuf,
        errors: Vec<AclFileError>,
    },
}

fn join_errors(errors: &[AclFileError]) -> String {
    let mut out = String::new();
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&e.to_string());
    }
    out
}

enum Section<'a> {
    Anonymous,
    User(&'a str),
}

impl Acl {
    /// Parses the text of an ACL file, reporting every error.
    pub fn parse(text: &str) -> Result<Self, Vec<AclFileError>> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut acl = Acl::default();
        let mut errors = Vec::new();
        let mut section = Section::Anonymous;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = match line.split_once(char::is_whitespace) {
                Some((k, r)) => (k, r.trim_start()),
                None => (line, ""),
            };
            let outcome = match keyword {
                "user" if rest.is_empty() => Err(AclErrorKind::MissingUser),
                "user" => {
                    section = Section::User(rest);
                    Ok(())
                }
                "topic" | "pattern" => {
                    let is_pattern = keyword == "pattern";
                    parse_rule(
                        if is_pattern { "pattern" } else { "topic" },
                        rest,
                        is_pattern,
                    )
                    .map(|rule| {
                        let set = if is_pattern {
                            &mut acl.patterns
                        } else {
                            match section {
                                Section::Anonymous => &mut acl.anonymous,
                                Section::User(name) => acl.users.entry(name.into()).or_default(),
                            }
                        };
                        set.push(rule);
                    })
                }
                other => Err(AclErrorKind::UnknownKeyword(quote(other))),
            };
            if let Err(kind) = outcome {
                if errors.len() == MAX_REPORTED_ERRORS {
                    errors.push(AclFileError {
                        line: index.saturating_add(1),
                        kind: AclErrorKind::TooManyErrors,
                    });
                    break;
                }
                errors.push(AclFileError {
                    line: index.saturating_add(1),
                    kind,
                });
            }
        }
        if errors.is_empty() {
            Ok(acl)
        } else {
            Err(errors)
        }
    }

    /// Reads and parses an ACL file.
    pub fn load(path: &Path) -> Result<Self, AclLoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclLoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|errors| AclLoadError::Invalid {
            path: path.to_path_buf(),
            errors,
        })
    }

    /// May this client do this? See the module documentation.
    pub fn check(&self, subject: &Subject<'_>, access: Access, topic: &str) -> bool {
        let own = match subject.username {
            None => &self.anonymous,
            Some(name) => self.users.get(name).unwrap_or(&NO_RULES),
        };
        decide(&[own, &self.patterns], subject, access, topic)
    }

    /// Number of user sections (for a startup log line).
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Number of rules of every kind (for a startup log line).
    pub fn rule_count(&self) -> usize {
        self.users.values().fold(
            self.anonymous.len().saturating_add(self.patterns.len()),
            |n, s| n.saturating_add(s.len()),
        )
    }

    /// Adds rules that apply to every client, e.g. from the broker's own
    /// configuration.
    pub fn add_patterns(&mut self, rules: RuleSet) {
        self.patterns.extend(rules);
    }
}

impl AclCheck for Acl {
    fn check(&self, subject: &Subject<'_>, access: Access, topic: &str) -> bool {
        Acl::check(self, subject, access, topic)
    }
}

fn parse_rule(keyword: &'static str, rest: &str, is_pattern: bool) -> Result<Rule, AclErrorKind> {
    if rest.is_empty() {
        return Err(AclErrorKind::MissingTopic(keyword));
    }
    let (permission, filter) = match rest.split_once(char::is_whitespace) {
        None => (Permission::ReadWrite, rest),
        Some((word, filter)) => match Permission::from_word(word) {
            Some(p) => (p, filter.trim_start()),
            None => return Err(AclErrorKind::UnknownAccess(quote(word))),
        },
    };
    let placeholders = if is_pattern {
        Placeholders::Mosquitto
    } else {
        Placeholders::None
    };
    Rule::new(permission, filter, placeholders).map_err(|reason| AclErrorKind::InvalidTopic {
        topic: quote(filter),
        reason,
    })
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Subscribe => "subscribe",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user<'a>(name: &'a str, client_id: &'a str) -> Subject<'a> {
        Subject {
            username: Some(name),
            client_id,
        }
    }

    fn anon(client_id: &str) -> Subject<'_> {
        Subject {
            username: None,
            client_id,
        }
    }

    fn acl(text: &str) -> Acl {
        match Acl::parse(text) {
            Ok(acl) => acl,
            Err(e) => panic!("parse failed: {e:?}"),
        }
    }

    #[test]
    fn write_and_read_follow_the_access_word() {
        let a = acl(
            "user alice\ntopic read r/#\ntopic write w/#\ntopic readwrite rw/#\ntopic both/#\n",
        );
        let s = user("alice", "c1");
        assert!(a.check(&s, Access::Read, "r/x"));
        assert!(!a.check(&s, Access::Write, "r/x"));
        assert!(a.check(&s, Access::Write, "w/x"));
        assert!(!a.check(&s, Access::Read, "w/x"));
        assert!(!a.check(&s, Access::Subscribe, "w/x"));
        assert!(a.check(&s, Access::Read, "rw/x"));
        assert!(a.check(&s, Access::Write, "rw/x"));
        assert!(a.check(&s, Access::Write, "both/x"));
        assert!(a.check(&s, Access::Read, "both"));
        assert!(!a.check(&s, Access::Read, "other"));
    }

    #[test]
    fn sections_apply_to_their_audience_only() {
        let a = acl("# anonymous first\ntopic read public/#\n\nuser alice\ntopic alice/#\nuser bob\ntopic bob/#\n");
        assert!(a.check(&anon("x"), Access::Read, "public/news"));
        assert!(!a.check(&anon("x"), Access::Read, "alice/x"));
        assert!(!a.check(&user("alice", "x"), Access::Read, "public/news"));
        assert!(a.check(&user("alice", "x"), Access::Write, "alice/x"));
        assert!(!a.check(&user("alice", "x"), Access::Write, "bob/x"));
        assert!(a.check(&user("bob", "x"), Access::Write, "bob/x"));
        assert!(!a.check(&user("carol", "x"), Access::Read, "public/news"));
        assert!(!a.check(&user("carol", "x"), Access::Read, "alice/x"));
    }

    #[test]
    fn repeated_user_sections_merge() {
        let a = acl("user alice\ntopic a/#\nuser bob\ntopic b/#\nuser alice\ntopic c/#\n");
        assert!(a.check(&user("alice", "x"), Access::Write, "a/1"));
        assert!(a.check(&user("alice", "x"), Access::Write, "c/1"));
        assert_eq!(a.user_count(), 2);
        assert_eq!(a.rule_count(), 3);
    }

    #[test]
    fn patterns_apply_to_everyone_wherever_they_appear() {
        let a = acl(
            "user alice\ntopic a/#\npattern readwrite devices/%c/#\npattern read users/%u/inbox\n",
        );
        assert!(a.check(&user("bob", "dev1"), Access::Write, "devices/dev1/temp"));
        assert!(!a.check(&user("bob", "dev1"), Access::Write, "devices/dev2/temp"));
        assert!(a.check(&anon("dev2"), Access::Write, "devices/dev2/temp"));
        assert!(a.check(&user("bob", "c"), Access::Read, "users/bob/inbox"));
        assert!(!a.check(&user("bob", "c"), Access::Read, "users/alice/inbox"));
        assert!(!a.check(&user("bob", "c"), Access::Write, "users/bob/inbox"));
    }

    #[test]
    fn username_pattern_never_applies_to_anonymous() {
        let a = acl("pattern read users/%u/#\npattern deny secret/%u\ntopic read secret/#\n");
        assert!(!a.check(&anon("c"), Access::Read, "users//x"));
        assert!(!a.check(&anon("c"), Access::Read, "users/%u/x"));
        // The deny pattern does not apply either, so the anonymous grant stands.
        assert!(a.check(&anon("c"), Access::Read, "secret/x"));
    }

    #[test]
    fn placeholder_only_as_whole_level() {
        let a = acl("pattern write a/x%c/b\npattern write q/%c\n");
        assert!(a.check(&anon("dev"), Access::Write, "a/x%c/b"));
        assert!(!a.check(&anon("dev"), Access::Write, "a/xdev/b"));
        assert!(a.check(&anon("dev"), Access::Write, "q/dev"));
        let t = acl("topic write plain/%c\n");
        assert!(t.check(&anon("dev"), Access::Write, "plain/%c"));
        assert!(!t.check(&anon("dev"), Access::Write, "plain/dev"));
    }

    #[test]
    fn deny_wins() {
        let a = acl("topic read #\ntopic deny secret/#\nuser u\ntopic readwrite #\npattern deny private/%c/#\n");
        assert!(a.check(&anon("c"), Access::Read, "news"));
        assert!(!a.check(&anon("c"), Access::Read, "secret/x"));
        assert!(!a.check(&anon("c"), Access::Subscribe, "secret/#"));
        assert!(
            a.check(&anon("c"), Access::Subscribe, "#"),
            "partially denied filter is accepted"
        );
        assert!(
            a.check(&user("u", "c"), Access::Write, "secret/x"),
            "anonymous deny is not u's"
        );
        assert!(!a.check(&user("u", "c"), Access::Write, "private/c/x"));
        assert!(a.check(&user("u", "c"), Access::Write, "private/d/x"));
        assert!(!a.check(&user("u", "c"), Access::Subscribe, "private/c/+"));
        assert!(a.check(&user("u", "c"), Access::Subscribe, "private/+/x"));
    }

    #[test]
    fn dollar_topics_need_explicit_rules() {
        let a = acl("topic readwrite #\ntopic read +/broker/#\nuser admin\ntopic read $SYS/#\n");
        let s = anon("c");
        assert!(!a.check(&s, Access::Read, "$SYS/broker/load"));
        assert!(!a.check(&s, Access::Write, "$SYS/x"));
        assert!(!a.check(&s, Access::Subscribe, "$SYS/#"));
        assert!(!a.check(&s, Access::Subscribe, "$SYS/broker/+"));
        let admin = user("admin", "c");
        assert!(a.check(&admin, Access::Read, "$SYS/broker/load"));
        assert!(a.check(&admin, Access::Subscribe, "$SYS/#"));
        assert!(!a.check(&admin, Access::Subscribe, "#"));
        assert!(!a.check(&admin, Access::Write, "$SYS/x"));
    }

    #[test]
    fn hostile_substitutions_grant_nothing() {
        let a = acl("pattern readwrite devices/%c/#\npattern readwrite %u/#\n");
        for id in ["#", "+", "a/b", "", "x+", "y#"] {
            let s = anon(id);
            assert!(!a.check(&s, Access::Write, "devices/a/b"), "{id:?}");
            assert!(!a.check(&s, Access::Subscribe, "devices/#"), "{id:?}");
            assert!(!a.check(&s, Access::Read, "devices/x"), "{id:?}");
        }
        assert!(!a.check(&user("$SYS", "c"), Access::Read, "$SYS/broker/load"));
        assert!(!a.check(&user("#", "c"), Access::Subscribe, "other/#"));
        assert!(!a.check(&user("#", "c"), Access::Read, "other/x"));
        assert!(!a.check(&user("a/b", "c"), Access::Write, "a/b/c"));
        assert!(a.check(&user("ok", "c"), Access::Write, "ok/c"));
        // A `$` in a later level is harmless: it cannot reach `$SYS`.
        assert!(a.check(&anon("$dev"), Access::Write, "devices/$dev/x"));
    }

    #[test]
    fn hostile_substitutions_still_deny() {
        let a = acl("topic readwrite #\npattern deny %c/private/#\npattern deny own/%c\n");
        assert!(!a.check(&anon("a/b"), Access::Write, "a/b/private/x"));
        assert!(a.check(&anon("a/b"), Access::Write, "a/c/private/x"));
        // `+` is read as a wildcard, so the deny widens rather than vanishes.
        assert!(!a.check(&anon("+"), Access::Write, "z/private/x"));
        assert!(!a.check(&anon("#"), Access::Write, "own/anything/at/all"));
        assert!(!a.check(&anon("#"), Access::Subscribe, "own/#"));
        assert!(a.check(&anon("+"), Access::Write, "public/x"));
    }

    #[test]
    fn empty_acl_denies_everything() {
        let a = acl("# nothing\n\n");
        for access in [Access::Read, Access::Write, Access::Subscribe] {
            assert!(!a.check(&anon("c"), access, "a"));
            assert!(!a.check(&user("u", "c"), access, "a"));
        }
        let only_deny = acl("topic deny a\n");
        assert!(!only_deny.check(&anon("c"), Access::Read, "b"));
    }

    #[test]
    fn subscribe_uses_intersection() {
        let a = acl("topic read sensors/#\ntopic read a/+\ntopic write w/#\ntopic read a/b/x\n");
        let s = anon("c");
        assert!(a.check(&s, Access::Subscribe, "#"));
        assert!(a.check(&s, Access::Subscribe, "+/b"));
        assert!(a.check(&s, Access::Subscribe, "sensors"));
        assert!(a.check(&s, Access::Subscribe, "a/b/x"));
        assert!(!a.check(&s, Access::Subscribe, "secret/x"));
        assert!(!a.check(&s, Access::Subscribe, "a/c/d"));
        assert!(
            !a.check(&s, Access::Subscribe, "w/#"),
            "write does not grant subscribe"
        );
        assert!(a.check(&s, Access::Subscribe, "$share/g/sensors/+"));
        assert!(!a.check(&s, Access::Subscribe, "$share/g/secret/x"));
        assert!(!a.check(&s, Access::Subscribe, "$share/g"));
        assert!(!a.check(&s, Access::Subscribe, "a/#/b"));
        // After a `#` subscription, deliveries are still checked one by one.
        assert!(a.check(&s, Access::Read, "sensors/t"));
        assert!(!a.check(&s, Access::Read, "secret/t"));
    }

    #[test]
    fn invalid_topics_to_check_are_denied() {
        let a = acl("topic readwrite #\n");
        let s = anon("c");
        assert!(!a.check(&s, Access::Write, "a/+"));
        assert!(!a.check(&s, Access::Read, "a/#"));
        assert!(!a.check(&s, Access::Write, ""));
        assert!(!a.check(&s, Access::Subscribe, ""));
        assert!(!a.check(&s, Access::Subscribe, "a+"));
    }

    #[test]
    fn topics_may_hold_spaces_after_an_access_word() {
        let a = acl("  topic   read   my topic/with spaces  \n\ttopic\tsingle\n");
        assert!(a.check(&anon("c"), Access::Read, "my topic/with spaces"));
        assert!(!a.check(&anon("c"), Access::Write, "my topic/with spaces"));
        assert!(a.check(&anon("c"), Access::Write, "single"));
        let b = acl("topic read\n");
        assert!(
            b.check(&anon("c"), Access::Write, "read"),
            "a lone word is the topic"
        );
    }

    #[test]
    fn parse_errors_name_every_line() {
        let text = "topic read ok\nfrobnicate x\nuser\ntopic\ntopic raed secret/#\ntopic a/#/b\npattern read a+\ntopic write x/#y\n";
        let errs = match Acl::parse(text) {
            Ok(_) => panic!("should fail"),
            Err(e) => e,
        };
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 8]);
        assert!(matches!(errs[0].kind, AclErrorKind::UnknownKeyword(_)));
        assert_eq!(errs[1].kind, AclErrorKind::MissingUser);
        assert_eq!(errs[2].kind, AclErrorKind::MissingTopic("topic"));
        assert!(matches!(errs[3].kind, AclErrorKind::UnknownAccess(_)));
        assert!(matches!(
            errs[4].kind,
            AclErrorKind::InvalidTopic {
                reason: RuleError::Topic(TopicError::MisplacedHash),
                ..
            }
        ));
        assert!(matches!(
            errs[5].kind,
            AclErrorKind::InvalidTopic {
                reason: RuleError::Topic(TopicError::MisplacedPlus),
                ..
            }
        ));
        assert_eq!(
            errs[0].to_string(),
            "line 2: unknown keyword \"frobnicate\", expected user, topic or pattern"
        );
        assert_eq!(
            errs[3].to_string(),
            "line 5: unknown access \"raed\", expected read, write, readwrite or deny before the topic"
        );
    }

    #[test]
    fn error_text_is_escaped_and_bounded() {
        let long = "x".repeat(10_000);
        let errs = match Acl::parse(&format!("bad\u{1b}[2J\ntopic a/#/{long}\n")) {
            Ok(_) => panic!("should fail"),
            Err(e) => e,
        };
        let text = errs[0].to_string();
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(errs[1].to_string().len() < 200);
    }

    #[test]
    fn error_flood_is_capped() {
        let text = "nonsense\n".repeat(1_000);
        let errs = match Acl::parse(&text) {
            Ok(_) => panic!("should fail"),
            Err(e) => e,
        };
        assert_eq!(errs.len(), MAX_REPORTED_ERRORS + 1);
        assert_eq!(
            errs.last().map(|e| &e.kind),
            Some(&AclErrorKind::TooManyErrors)
        );
    }

    #[test]
    fn crlf_and_bom_are_accepted() {
        let a = acl("\u{feff}user alice\r\ntopic read a/#\r\n");
        assert!(a.check(&user("alice", "c"), Access::Read, "a/b"));
    }

    #[test]
    fn load_reports_path_and_errors() {
        let dir = std::env::temp_dir().join(format!("tributary-acl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acl");
        std::fs::write(&path, "topic read a\nbogus\n").unwrap();
        let err = Acl::load(&path).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        std::fs::write(&path, "topic read a\n").unwrap();
        assert!(Acl::load(&path).is_ok());
        assert!(matches!(
            Acl::load(&dir.join("missing")),
            Err(AclLoadError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rule_sets_check_on_their_own() {
        let mut set = RuleSet::new();
        set.push(Rule::new(Permission::Write, "devices/%c/#", Placeholders::Token).unwrap());
        set.push(Rule::new(Permission::Read, "cmd/${username}", Placeholders::Token).unwrap());
        set.push(Rule::new(Permission::Deny, "devices/%c/secret", Placeholders::Token).unwrap());
        let s = user("bob", "d1");
        assert!(set.check(&s, Access::Write, "devices/d1/x"));
        assert!(!set.check(&s, Access::Write, "devices/d1/secret"));
        assert!(set.check(&s, Access::Read, "cmd/bob"));
        assert!(set.check(&s, Access::Subscribe, "cmd/+"));
        assert_eq!(
            Rule::new(Permission::Read, "a/x${clientid}", Placeholders::Token),
            Err(RuleError::PartialPlaceholder)
        );
    }

    /// Run with `cargo test --release -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement; prints ns per check"]
    fn bench_check_cost() {
        use std::hint::black_box;
        use std::time::Instant;

        let mut text = String::new();
        for i in 0..40 {
            text.push_str(&format!("pattern readwrite tenant{i}/%u/devices/%c/#\n"));
        }
        text.push_str("topic read public/#\n");
        for u in 0..6 {
            text.push_str(&format!("user user{u}\n"));
            for i in 0..9 {
                text.push_str(&format!("topic readwrite app{u}/area{i}/+/status\n"));
            }
            text.push_str(&format!("topic deny app{u}/area0/secret/#\n"));
        }
        let a = acl(&text);
        assert_eq!(a.rule_count(), 101);
        let s = user("user5", "sensor-0042");
        let cases = [
            (
                "last pattern",
                Access::Write,
                "tenant39/user5/devices/sensor-0042/temp",
            ),
            ("own rule", Access::Write, "app5/area8/x/status"),
            ("no match", Access::Write, "nowhere/at/all"),
            ("subscribe", Access::Subscribe, "app5/+/x/status"),
        ];
        for (name, access, topic) in cases {
            let n = 1_000_000u32;
            let start = Instant::now();
            for _ in 0..n {
                black_box(a.check(black_box(&s), access, black_box(topic)));
            }
            let ns = start.elapsed().as_nanos() / u128::from(n);
            println!("{name}: {ns} ns/check");
        }
    }
}
