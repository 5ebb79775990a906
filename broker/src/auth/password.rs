//! Mosquitto-compatible password files: parsing, verifying a CONNECT's
//! user name and password, and writing or deleting entries (for the
//! `tributary passwd` subcommand).
//!
//! One `username:hash` per line; blank lines and lines starting with `#` are
//! ignored; the user name is everything before the first `:`, and both parts
//! are trimmed (as Mosquitto does). Accepted hash forms are the two that
//! `mosquitto_passwd` writes:
//!
//! * `$7$<iterations>$<base64 salt>$<base64 hash>`: PBKDF2-HMAC-SHA512,
//!   64-byte output (Mosquitto 2.x);
//! * `$6$<base64 salt>$<base64 hash>`: SHA-512 of the password bytes followed
//!   by the salt bytes (Mosquitto 1.x).
//!
//! This module must never put a hash, a salt, a password or anything after a
//! line's `:` in an error message or `Debug` output, never compare secrets in
//! variable time, never let a hostile file make one verification arbitrarily
//! expensive, and never rewrite lines of a file other than the one edited.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest as _, Sha512};
use subtle::ConstantTimeEq as _;
use thiserror::Error;

use super::quote;

/// Iterations for hashes this module writes. `mosquitto_passwd` uses 101,
/// which an attacker holding the file can try at millions of guesses per
/// second; 1,000 costs about 1 ms per CONNECT on one core, which a broker
/// can afford, and Mosquitto verifies it unchanged.
pub const DEFAULT_ITERATIONS: u32 = 1_000;

/// A line asking for more iterations is refused, so a hostile or mistaken
/// file cannot make each CONNECT cost seconds of CPU.
pub const MAX_ITERATIONS: u32 = 10_000_000;

/// Salt length `mosquitto_passwd` uses, and so do we.
const SALT_LEN: usize = 12;

/// SHA-512 (and our PBKDF2) output length.
const HASH_LEN: usize = 64;

/// A salt is hashed on every attempt; a multi-megabyte one would be a cheap
/// way to slow every CONNECT.
const MAX_SALT_LEN: usize = 1_024;

/// MQTT strings, user names included, have a two-byte length.
const MAX_USERNAME_LEN: usize = 65_535;

/// Beyond this many errors the file is clearly not a password file.
const MAX_REPORTED_ERRORS: usize = 100;

#[derive(Clone)]
enum Hash {
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
    Sha512 {
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
}

impl Hash {
    fn parse(text: &str) -> Result<Self, Problem> {
        if text.is_empty() {
            return Err(Problem::EmptyHash);
        }
        if let Some(rest) = text.strip_prefix("$7$") {
            let mut fields = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(Problem::FieldCount("$7$<iterations>$<salt>$<hash>"));
            };
            Ok(Hash::Pbkdf2 {
                iterations: parse_iterations(iterations)?,
                salt: decode_salt(salt)?,
                hash: decode_hash(hash)?,
            })
        } else if let Some(rest) = text.strip_prefix("$6$") {
            let mut fields = rest.split('$');
            let (Some(salt), Some(hash), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(Problem::FieldCount("$6$<salt>$<hash>"));
            };
            Ok(Hash::Sha512 {
                salt: decode_salt(salt)?,
                hash: decode_hash(hash)?,
            })
        } else {
            Err(Problem::UnknownForm)
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => pbkdf2_sha512(password, salt, *iterations)
                .ct_eq(hash)
                .into(),
            Hash::Sha512 { salt, hash } => {
                let digest = Sha512::new()
                    .chain_update(password)
                    .chain_update(salt)
                    .finalize();
                digest.as_slice().ct_eq(hash.as_slice()).into()
            }
        }
    }

    /// What one verification costs: `None` for plain SHA-512.
    fn cost(&self) -> Option<u32> {
        match self {
            Hash::Pbkdf2 { iterations, .. } => Some(*iterations),
            Hash::Sha512 { .. } => None,
        }
    }

    /// An entry nobody's password matches (its hash is all zeros, which
    /// neither form produces in practice) with a given cost.
    fn dummy(cost: Option<u32>) -> Self {
        let salt = vec![0; SALT_LEN];
        let hash = [0; HASH_LEN];
        match cost {
            Some(iterations) => Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            },
            None => Hash::Sha512 { salt, hash },
        }
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hash::Pbkdf2 { iterations, .. } => f
                .debug_struct("Pbkdf2Sha512")
                .field("iterations", iterations)
                .finish_non_exhaustive(),
            Hash::Sha512 { .. } => f.debug_struct("Sha512").finish_non_exhaustive(),
        }
    }
}

fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    let mut out = [0; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
    out
}

fn parse_iterations(text: &str) -> Result<u32, Problem> {
    // Digits only: `str::parse` would also take a leading `+`.
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Problem::BadIterations);
    }
    match text.parse::<u64>() {
        Ok(n) if (1..=u64::from(MAX_ITERATIONS)).contains(&n) => {
            u32::try_from(n).map_err(|_| Problem::BadIterations)
        }
        _ => Err(Problem::BadIterations),
    }
}

fn decode_salt(text: &str) -> Result<Vec<u8>, Problem> {
    match BASE64.decode(text) {
        Ok(salt) if !salt.is_empty() && salt.len() <= MAX_SALT_LEN => Ok(salt),
        _ => Err(Problem::BadSalt),
    }
}

fn decode_hash(text: &str) -> Result<[u8; HASH_LEN], Problem> {
    BASE64
        .decode(text)
        .ok()
        .and_then(|bytes| <[u8; HASH_LEN]>::try_from(bytes.as_slice()).ok())
        .ok_or(Problem::BadHash)
}

/// What is wrong with one line. None of these carries any text from after
/// the line's `:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Problem {
    #[error("no ':' between user name and hash")]
    MissingColon,
    #[error("empty user name")]
    EmptyUsername,
    #[error("empty hash")]
    EmptyHash,
    #[error("unknown hash form, expected $7$ (PBKDF2-SHA512) or $6$ (SHA-512)")]
    UnknownForm,
    #[error("wrong number of fields, expected {0}")]
    FieldCount(&'static str),
    #[error("iteration count must be a whole number from 1 to {MAX_ITERATIONS}")]
    BadIterations,
    #[error("salt is not valid base64 of 1 to {MAX_SALT_LEN} bytes")]
    BadSalt,
    #[error("hash is not valid base64 of {HASH_LEN} bytes")]
    BadHash,
    #[error("user already defined on line {0}")]
    Duplicate(usize),
    #[error("more than {MAX_REPORTED_ERRORS} errors, the rest are not listed")]
    TooManyErrors,
}

/// One problem in a password file: the line, the user name when the line
/// has one (quoted and escaped), and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordFileError {
    pub line: usize,
    pub user: Option<String>,
    pub problem: Problem,
}

impl fmt::Display for PasswordFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(user) => write!(f, "line {} (user {}): {}", self.line, user, self.problem),
            None => write!(f, "line {}: {}", self.line, self.problem),
        }
    }
}

impl std::error::Error for PasswordFileError {}

/// Why [`PasswordFile::load`] failed.
#[derive(Debug, Error)]
pub enum PasswordLoadError {
    #[error("cannot read password file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("invalid password file {path}: {}", join_errors(.errors))]
    Invalid {
        path: PathBuf,
        errors: Vec<PasswordFileError>,
    },
}

fn join_errors(errors: &[PasswordFileError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a line could not be written.
#[derive(Debug, Error)]
pub enum HashLineError {
    #[error("invalid user name: {0}")]
    InvalidUsername(&'static str),
    #[error("no random source for a salt: {0}")]
    Random(getrandom::Error),
}

/// A parsed password file.
#[derive(Clone)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
    /// Verified against when the user is unknown, so that a miss costs the
    /// same time as a wrong password and does not reveal who exists.
    dummy: Hash,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl PasswordFile {
    /// Parses a password file's text, reporting every bad line.
    pub fn parse(text: &str) -> Result<Self, Vec<PasswordFileError>> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut users: HashMap<String, (usize, Hash)> = HashMap::new();
        let mut errors = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index.saturating_add(1);
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let outcome = match line.split_once(':') {
                None => Err((None, Problem::MissingColon)),
                Some((name, _)) if name.trim().is_empty() => Err((None, Problem::EmptyUsername)),
                Some((name, hash)) => {
                    let name = name.trim();
                    match (users.get(name), Hash::parse(hash.trim())) {
                        (Some((first, _)), _) => Err((Some(name), Problem::Duplicate(*first))),
                        (None, Err(problem)) => Err((Some(name), problem)),
                        (None, Ok(hash)) => {
                            users.insert(name.to_owned(), (line_no, hash));
                            Ok(())
                        }
                    }
                }
            };
            if let Err((user, problem)) = outcome {
                if errors.len() == MAX_REPORTED_ERRORS {
                    errors.push(PasswordFileError {
                        line: line_no,
                        user: None,
                        problem: Problem::TooManyErrors,
                    });
                    break;
                }
                errors.push(PasswordFileError {
                    line: line_no,
                    user: user.map(quote),
                    problem,
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let users: HashMap<String, Hash> = users.into_iter().map(|(k, (_, h))| (k, h)).collect();
        let dummy = Hash::dummy(typical_cost(users.values()));
        Ok(Self { users, dummy })
    }

    /// Reads and parses a password file.
    pub fn load(path: &Path) -> Result<Self, PasswordLoadError> {
        let text = fs::read_to_string(path).map_err(|source| PasswordLoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|errors| PasswordLoadError::Invalid {
            path: path.to_path_buf(),
            errors,
        })
    }

    /// Checks a user name and password in constant time with respect to the
    /// stored hash, and in the same time for unknown users as for a wrong
    /// password (when the file's entries share one cost, as they normally
    /// do).
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        match self.users.get(username) {
            Some(hash) => hash.verify(password),
            None => {
                std::hint::black_box(self.dummy.verify(password));
                false
            }
        }
    }

    pub fn contains_user(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The most common cost among the entries (the highest on a tie), so that
/// the dummy verification takes as long as a typical real one.
fn typical_cost<'a>(hashes: impl Iterator<Item = &'a Hash>) -> Option<u32> {
    let mut counts: HashMap<Option<u32>, usize> = HashMap::new();
    for hash in hashes {
        let n = counts.entry(hash.cost()).or_insert(0);
        *n = n.saturating_add(1);
    }
    counts
        .into_iter()
        .max_by_key(|&(cost, n)| (n, cost))
        .map_or(Some(DEFAULT_ITERATIONS), |(cost, _)| cost)
}

fn check_username(username: &str) -> Result<(), HashLineError> {
    let problem = if username.is_empty() {
        "it is empty"
    } else if username.len() > MAX_USERNAME_LEN {
        "it is longer than 65535 bytes"
    } else if username.contains(':') {
        "it contains ':'"
    } else if username.chars().any(char::is_control) {
        "it contains a control character"
    } else if username.trim() != username {
        "it begins or ends with white space, which the file format trims"
    } else if username.starts_with('#') {
        "it begins with '#', which would make the line a comment"
    } else {
        return Ok(());
    };
    Err(HashLineError::InvalidUsername(problem))
}

/// Builds a `username:$7$...` line (without a newline) with a fresh random
/// 12-byte salt and [`DEFAULT_ITERATIONS`].
pub fn hash_line(username: &str, password: &[u8]) -> Result<String, HashLineError> {
    check_username(username)?;
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(HashLineError::Random)?;
    let hash = pbkdf2_sha512(password, &salt, DEFAULT_ITERATIONS);
    Ok(format!(
        "{username}:$7${DEFAULT_ITERATIONS}${}${}",
        BASE64.encode(salt),
        BASE64.encode(hash)
    ))
}

/// Sets a user's password in a password file: replaces the user's line if
/// there is one (and drops any later duplicate of it), or appends one. Every
/// other line, comments and bad lines included, is kept byte for byte. The
/// file is replaced atomically; a new file gets mode 0600 on unix, an
/// existing one keeps its permissions (but not its owner, when run by
/// another user). Two concurrent edits may lose one of them.
pub fn update_file(path: &Path, username: &str, password: &[u8]) -> io::Result<()> {
    let line = hash_line(username, password).map_err(|e| match e {
        HashLineError::InvalidUsername(_) => io::Error::new(io::ErrorKind::InvalidInput, e),
        HashLineError::Random(_) => io::Error::other(e),
    })?;
    let target = resolve(path)?;
    let (original, permissions) = match fs::read(&target) {
        Ok(bytes) => (bytes, Some(fs::metadata(&target)?.permissions())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), None),
        Err(e) => return Err(e),
    };
    let (contents, _) = rewrite(&original, username, Some(&line));
    write_atomically(&target, &contents, permissions)
}

/// Removes a user from a password file, keeping every other line byte for
/// byte. Returns whether the user was there; the file is left untouched if
/// not.
pub fn delete_from_file(path: &Path, username: &str) -> io::Result<bool> {
    let target = resolve(path)?;
    let original = fs::read(&target)?;
    let permissions = fs::metadata(&target)?.permissions();
    let (contents, found) = rewrite(&original, username, None);
    if found {
        write_atomically(&target, &contents, Some(permissions))?;
    }
    Ok(found)
}

/// Follows a symlink so the rename replaces the real file, not the link.
fn resolve(path: &Path) -> io::Result<PathBuf> {
    match fs::canonicalize(path) {
        Ok(real) => Ok(real),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path.to_path_buf()),
        Err(e) => Err(e),
    }
}

/// The user name a raw line defines, if it is an entry at all.
fn line_user(body: &[u8]) -> Option<&[u8]> {
    let line = body.trim_ascii();
    if line.is_empty() || line.starts_with(b"#") {
        return None;
    }
    let colon = line.iter().position(|&b| b == b':')?;
    line.get(..colon).map(<[u8]>::trim_ascii)
}

/// Replaces (or, with `None`, removes) a user's entry in raw file bytes,
/// which need not be valid UTF-8 elsewhere.
fn rewrite(original: &[u8], username: &str, replacement: Option<&str>) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(original.len().saturating_add(256));
    let mut found = false;
    for chunk in original.split_inclusive(|&b| b == b'\n') {
        let (body, ending): (&[u8], &[u8]) = match chunk.strip_suffix(b"\r\n") {
            Some(body) => (body, b"\r\n"),
            None => match chunk.strip_suffix(b"\n") {
                Some(body) => (body, b"\n"),
                None => (chunk, b""),
            },
        };
        if line_user(body) != Some(username.as_bytes()) {
            out.extend_from_slice(chunk);
            continue;
        }
        if let (false, Some(line)) = (found, replacement) {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(ending);
        }
        found = true;
    }
    if let (false, Some(line)) = (found, replacement) {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    (out, found)
}

fn write_atomically(
    path: &Path,
    contents: &[u8],
    permissions: Option<Permissions>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "password file path has no file name",
        )
    })?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(io::Error::other)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:016x}",
        name.to_string_lossy(),
        std::process::id(),
        u64::from_le_bytes(nonce)
    ));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let written = (|| {
        let mut file = options.open(&tmp)?;
        if let Some(permissions) = permissions {
            file.set_permissions(permissions)?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        // Best effort: the original error is the one worth reporting.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // Makes the rename itself durable; some file systems refuse to sync a
    // directory, and the new file is in place either way.
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Written by `mosquitto_passwd -b -c FILE alice secret` (Mosquitto
    /// 2.0.11).
    const MOSQUITTO_7: &str = "alice:$7$101$hUovIw3AgeHx+uSY$2xx4sHBmVbWoU+eg6SrIROg36TdzmvMf23citeTOxXrZJ76tBufQZKWCQY59mdHUomVPulIT8+mR0FzgIBosPw==";
    /// Written by `mosquitto_passwd -b FILE bob 'p@ss:w ord'`.
    const MOSQUITTO_7_BOB: &str = "bob:$7$101$4M0S1P+62K4KC0gH$eUH1LU0K5N5Om7xumH88gK4Yp515OUx0wW72x6I7VPbqvDINUbmn63Lk8HDChWJnwEW4wfh1hZrAVEeMMCDzPQ==";
    /// Written by `mosquitto_passwd -H sha512 -b -c FILE carol hunter2`.
    const MOSQUITTO_6: &str = "carol:$6$FNwycx20v7qnoLwQ$9y4mPMGbOKdvCBEJhcIAfjKHCoRDC3bWGZRM4ZmRgjntt79C6Yd/15FpS0FlJzDji6MozBUA1wFAYViDn1HIHw==";

    fn parse(text: &str) -> PasswordFile {
        match PasswordFile::parse(text) {
            Ok(f) => f,
            Err(e) => panic!("parse failed: {e:?}"),
        }
    }

    fn errors(text: &str) -> Vec<PasswordFileError> {
        match PasswordFile::parse(text) {
            Ok(_) => panic!("parse should fail"),
            Err(e) => e,
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tributary-pw-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn verifies_fixed_mosquitto_lines() {
        let f = parse(&format!(
            "# made by mosquitto_passwd\n\n{MOSQUITTO_7}\n{MOSQUITTO_7_BOB}\n{MOSQUITTO_6}\n"
        ));
        assert_eq!(f.len(), 3);
        assert!(f.verify("alice", b"secret"));
        assert!(!f.verify("alice", b"Secret"));
        assert!(!f.verify("alice", b""));
        assert!(f.verify("bob", b"p@ss:w ord"));
        assert!(f.verify("carol", b"hunter2"));
        assert!(!f.verify("carol", b"hunter3"));
        assert!(!f.verify("dave", b"secret"));
        assert!(!f.verify("", b""));
    }

    #[test]
    fn verifies_lines_from_installed_mosquitto_passwd() {
        if Command::new("mosquitto_passwd").arg("-h").output().is_err() {
            eprintln!("mosquitto_passwd not installed; covered by the fixed lines only");
            return;
        }
        let dir = temp_dir("mosq");
        let path = dir.join("pw");
        let cases: [(&[&str], &str, &str); 3] = [
            (&["-b", "-c"], "user1", "pa ss"),
            (&["-b"], "user two", "ünïcödé"),
            (&["-H", "sha512", "-b"], "old", "legacy"),
        ];
        for (flags, user, pass) in cases {
            let status = Command::new("mosquitto_passwd")
                .args(flags)
                .arg(&path)
                .args([user, pass])
                .status()
                .unwrap();
            assert!(status.success());
        }
        let f = PasswordFile::load(&path).unwrap();
        for (_, user, pass) in cases {
            assert!(f.verify(user, pass.as_bytes()), "{user}");
            assert!(!f.verify(user, b"wrong"), "{user}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sha512_form_matches_an_independent_computation() {
        let salt = b"0123456789ab";
        let mut hasher = Sha512::new();
        hasher.update(b"pw");
        hasher.update(salt);
        let line = format!(
            "u:$6${}${}",
            BASE64.encode(salt),
            BASE64.encode(hasher.finalize())
        );
        let f = parse(&line);
        assert!(f.verify("u", b"pw"));
        assert!(!f.verify("u", b"pw0"));
    }

    #[test]
    fn hash_line_round_trips() {
        let line = hash_line("eve", b"correct horse").unwrap();
        assert!(line.starts_with("eve:$7$1000$"));
        let f = parse(&line);
        assert!(f.verify("eve", b"correct horse"));
        assert!(!f.verify("eve", b"correct horse "));
        let again = hash_line("eve", b"correct horse").unwrap();
        assert_ne!(line, again, "salts are fresh");
        // The salt is 12 bytes, as mosquitto_passwd writes it.
        let salt = line.split('$').nth(3).unwrap();
        assert_eq!(BASE64.decode(salt).unwrap().len(), SALT_LEN);
    }

    #[test]
    fn hash_line_refuses_bad_user_names() {
        for bad in ["", "a:b", "a\nb", "a\u{7f}", " lead", "trail ", "#comment"] {
            assert!(
                matches!(hash_line(bad, b"p"), Err(HashLineError::InvalidUsername(_))),
                "{bad:?}"
            );
        }
        assert!(hash_line("with space", b"p").is_ok());
    }

    #[test]
    fn malformed_lines_are_reported_without_secrets() {
        let secret = "S3CRETVALUE";
        let text = [
            format!("nocolon{secret}"),
            format!(":$7$101${secret}$x"),
            "empty:".to_string(),
            format!("plain:{secret}"),
            format!("toomany:$7$101${secret}$x$y"),
            format!("iters:$7$abc${secret}$x"),
            format!("zero:$7$0$AAAA${secret}"),
            format!("huge:$7$10000001$AAAA${secret}"),
            format!("salt:$7$101$!!{secret}$AAAA"),
            format!("hash:$7$101$AAAA${secret}"),
            format!("six:$6${secret}"),
            MOSQUITTO_7.to_string(),
            MOSQUITTO_7.replace("$7$101$hU", "$7$101$hu"),
        ]
        .join("\n");
        let errs = errors(&text);
        let got: Vec<(usize, Problem)> = errs.iter().map(|e| (e.line, e.problem)).collect();
        assert_eq!(
            got,
            vec![
                (1, Problem::MissingColon),
                (2, Problem::EmptyUsername),
                (3, Problem::EmptyHash),
                (4, Problem::UnknownForm),
                (5, Problem::FieldCount("$7$<iterations>$<salt>$<hash>")),
                (6, Problem::BadIterations),
                (7, Problem::BadIterations),
                (8, Problem::BadIterations),
                (9, Problem::BadSalt),
                (10, Problem::BadHash),
                (11, Problem::FieldCount("$6$<salt>$<hash>")),
                (13, Problem::Duplicate(12)),
            ]
        );
        for e in &errs {
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains(secret), "{shown}");
            assert!(!shown.contains("hUovIw3"), "{shown}");
            assert!(!shown.contains("2xx4sHBm"), "{shown}");
        }
        assert_eq!(
            errs[3].to_string(),
            "line 4 (user \"plain\"): unknown hash form, expected $7$ (PBKDF2-SHA512) or $6$ (SHA-512)"
        );
        assert_eq!(
            errs[11].to_string(),
            "line 13 (user \"alice\"): user already defined on line 12"
        );
    }

    #[test]
    fn iteration_bounds() {
        assert_eq!(parse_iterations("10000000"), Ok(10_000_000));
        assert_eq!(parse_iterations("1"), Ok(1));
        assert_eq!(parse_iterations("10000001"), Err(Problem::BadIterations));
        assert_eq!(
            parse_iterations("99999999999999999999"),
            Err(Problem::BadIterations)
        );
        assert_eq!(parse_iterations("+5"), Err(Problem::BadIterations));
        assert_eq!(parse_iterations(""), Err(Problem::BadIterations));
    }

    #[test]
    fn debug_output_holds_no_secrets() {
        let f = parse(MOSQUITTO_7);
        let shown = format!("{f:?} {:?}", f.users.get("alice"));
        assert!(
            !shown.contains("hUovIw3") && !shown.contains("2xx4sHBm"),
            "{shown}"
        );
        assert!(shown.contains("iterations: 101"), "{shown}");
    }

    #[test]
    fn dummy_cost_follows_the_file() {
        assert_eq!(parse(MOSQUITTO_7).dummy.cost(), Some(101));
        assert_eq!(parse(MOSQUITTO_6).dummy.cost(), None);
        assert_eq!(parse("").dummy.cost(), Some(DEFAULT_ITERATIONS));
        let mixed = format!("{MOSQUITTO_7}\n{MOSQUITTO_7_BOB}\n{MOSQUITTO_6}\n");
        assert_eq!(parse(&mixed).dummy.cost(), Some(101));
        assert!(!parse(&mixed).verify("nobody", b""));
    }

    #[test]
    fn error_flood_is_capped() {
        let errs = errors(&"x\n".repeat(500));
        assert_eq!(errs.len(), MAX_REPORTED_ERRORS + 1);
    }

    #[test]
    fn rewrite_keeps_other_lines_byte_for_byte() {
        let original =
            b"# comment \xff\r\nalice:old\r\n\n  bob : old2\ngarbage line\r\nalice:dup\ncarol:x";
        let (out, found) = rewrite(original, "bob", Some("bob:NEW"));
        assert!(found);
        assert_eq!(
            out,
            b"# comment \xff\r\nalice:old\r\n\nbob:NEW\ngarbage line\r\nalice:dup\ncarol:x"
                .to_vec()
        );
        let (out, found) = rewrite(original, "alice", Some("alice:NEW"));
        assert!(found);
        assert_eq!(
            out,
            b"# comment \xff\r\nalice:NEW\r\n\n  bob : old2\ngarbage line\r\ncarol:x".to_vec()
        );
        let (out, found) = rewrite(original, "dave", Some("dave:NEW"));
        assert!(!found);
        let mut expected = original.to_vec();
        expected.extend_from_slice(b"\ndave:NEW\n");
        assert_eq!(out, expected);
        let (out, found) = rewrite(original, "carol", None);
        assert!(found);
        assert_eq!(out, original.strip_suffix(b"carol:x").unwrap().to_vec());
        let (out, _) = rewrite(b"", "x", Some("x:h"));
        assert_eq!(out, b"x:h\n".to_vec());
    }

    #[test]
    fn update_and_delete_files() {
        let dir = temp_dir("edit");
        let path = dir.join("passwd");
        update_file(&path, "alice", b"one").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut text = fs::read_to_string(&path).unwrap();
        text.insert_str(0, "# keep me\n");
        text.push_str(MOSQUITTO_6);
        text.push('\n');
        fs::write(&path, &text).unwrap();
        update_file(&path, "alice", b"two").unwrap();
        update_file(&path, "bob", b"three").unwrap();
        let f = PasswordFile::load(&path).unwrap();
        assert!(f.verify("alice", b"two"));
        assert!(!f.verify("alice", b"one"));
        assert!(f.verify("bob", b"three"));
        assert!(f.verify("carol", b"hunter2"));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# keep me\nalice:$7$1000$"));
        assert!(text.contains(&format!("\n{MOSQUITTO_6}\nbob:")));

        assert!(delete_from_file(&path, "alice").unwrap());
        assert!(!delete_from_file(&path, "alice").unwrap());
        let f = PasswordFile::load(&path).unwrap();
        assert!(!f.contains_user("alice"));
        assert_eq!(f.len(), 2);

        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
        assert!(update_file(&path, "bad:name", b"x").is_err());
        assert!(delete_from_file(&dir.join("missing"), "x").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn update_keeps_mode_and_follows_symlinks() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir("mode");
        let real = dir.join("real");
        fs::write(&real, "# header\n").unwrap();
        fs::set_permissions(&real, Permissions::from_mode(0o640)).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        update_file(&link, "alice", b"pw").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::metadata(&real).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert!(PasswordFile::load(&link).unwrap().verify("alice", b"pw"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
