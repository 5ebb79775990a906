//! The `[auth]` section: who may connect, and what they may do.

use std::path::PathBuf;

use serde::Deserialize;
use tributary_bridge::Problems;

use super::jwt::JwtConfig;

/// Default first delay before refusing a client that failed authentication.
pub const DEFAULT_FAILURE_DELAY_MS: u64 = 500;
/// Longest delay before a refusal, however many failures came before.
pub const MAX_FAILURE_DELAY_MS: u64 = 10_000;

/// The `[auth]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept clients that send no user name (and no token). Default: true
    /// when neither `password_file` nor `jwt` is configured, false as soon as
    /// one is. Each listener may say otherwise (`allow_anonymous` there).
    pub allow_anonymous: Option<bool>,
    /// Mosquitto password file (`user:hash` lines, as `mosquitto_passwd` or
    /// `tributary passwd` write them; `$7$` PBKDF2-SHA512 and `$6$` SHA-512
    /// hashes). Reloaded when it changes and on SIGHUP.
    pub password_file: Option<PathBuf>,
    /// Mosquitto ACL file (`user`, `topic [read|write|readwrite|deny]`,
    /// `pattern` with `%c` and `%u`), checked on every SUBSCRIBE, PUBLISH,
    /// will and delivery. Without it every client may do everything (unless
    /// its token carries an ACL). Reloaded when it changes and on SIGHUP.
    pub acl_file: Option<PathBuf>,
    /// JWT in the MQTT password field: `[auth.jwt]`.
    pub jwt: Option<JwtConfig>,
    /// Delay before refusing a client whose credentials failed, in ms; it
    /// doubles with each further failure from the same address (up to 10 s)
    /// and is forgotten after a success or a quiet minute. A brute force then
    /// costs time.
    pub failure_delay_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            jwt: None,
            failure_delay_ms: DEFAULT_FAILURE_DELAY_MS,
        }
    }
}

impl AuthConfig {
    /// Whether any way of checking credentials is configured.
    pub fn checks_credentials(&self) -> bool {
        self.password_file.is_some() || self.jwt.is_some()
    }

    /// `allow_anonymous` as configured, or its default.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(!self.checks_credentials())
    }

    /// Records every problem, the files' included (they are read now, so a
    /// broken file is found by `--check-config`, not at the first CONNECT).
    /// Problems name lines and fields, never a secret.
    pub fn validate(&self, problems: &mut Problems) {
        if let Some(path) = &self.password_file {
            if let Err(error) = super::password::PasswordFile::load(path) {
                problems.push("auth.password_file", error.to_string());
            }
        }
        if let Some(path) = &self.acl_file {
            if let Err(error) = super::acl::Acl::load(path) {
                problems.push("auth.acl_file", error.to_string());
            }
        }
        if let Some(jwt) = &self.jwt {
            for (field, problem) in jwt.validate() {
                problems.push(format!("auth.jwt.{field}"), problem);
            }
        }
        if self.failure_delay_ms > MAX_FAILURE_DELAY_MS {
            problems.push(
                "auth.failure_delay_ms",
                format!("must be at most {MAX_FAILURE_DELAY_MS}"),
            );
        }
    }
}
