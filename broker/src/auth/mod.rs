//! Client authentication and topic authorization for the broker: Mosquitto
//! password files, JWTs carried in the MQTT password field, and Mosquitto ACL
//! files (or a token's own ACL) checked on every SUBSCRIBE, PUBLISH and
//! delivery.
//!
//! Nothing in this tree does I/O on the hot path: files are read once at
//! startup (or on reload) and checks are pure functions of parsed data.
//!
//! This module must never panic on hostile input (files, passwords, tokens,
//! topics, user names, client ids), never grant access on input it could not
//! parse, and never put a secret (password, hash, token, key) in an error
//! message or `Debug` output.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]

pub mod acl;
pub mod authenticator;
pub mod config;
pub mod jwt;
pub mod password;
pub mod topic;

pub use acl::{Access, Acl, AclCheck, RuleSet, Subject};
pub use authenticator::{Authenticator, Credentials, Identity, Refusal};
pub use config::AuthConfig;
pub use jwt::{JwtConfig, JwtRefusal, JwtVerifier, TokenAcl, TokenIdentity};
pub use password::PasswordFile;

/// Quotes text taken from a file or a client for an error message: escaped,
/// so control characters cannot forge log lines, and shortened, so a huge
/// line cannot flood the log. Never call it on a secret.
pub(crate) fn quote(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut out = String::from("\"");
    for (i, c) in text.chars().enumerate() {
        if i == MAX_CHARS {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}
