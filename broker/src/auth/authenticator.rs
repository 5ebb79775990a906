//! Who a connecting client is, decided at CONNECT before a session is
//! touched, and what its identity may do afterwards.
//!
//! The order, per listener: a client certificate's identity when the
//! listener says to use it; else the user name and password (the password
//! file first, then a JWT in the password field); else anonymous, if the
//! listener allows it. A refusal is answered after a delay that grows with
//! each failure from the same address, so a brute force costs time.
//!
//! Never logs, counts or returns a password or token; refusals carry a fixed
//! label only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;

use super::acl::{Access, Acl, AclCheck, Subject};
use super::config::{AuthConfig, MAX_FAILURE_DELAY_MS};
use super::jwt::{JwtRefusal, JwtVerifier, TokenAcl};
use super::password::PasswordFile;
use crate::listener::tls::CertIdentity;
use crate::listener::ListenerAuth;

/// Addresses whose failures are remembered at most; past it the oldest half
/// is forgotten (a flood from many addresses must not grow memory).
const MAX_REMEMBERED_PEERS: usize = 65_536;
/// Failures older than this are forgotten.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// Why a client was refused at CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Credentials given and wrong: CONNACK 0x04 (3.1.1) / 0x86 (5).
    BadCredentials(&'static str),
    /// Not allowed in (anonymous where that is off, a client id the
    /// certificate or token does not allow): CONNACK 0x05 / 0x87.
    NotAuthorized(&'static str),
}

impl Refusal {
    /// The `reason` label of `tributary_connections_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::BadCredentials(label) | Refusal::NotAuthorized(label) => label,
        }
    }
}

/// Who an accepted client is.
#[derive(Debug)]
pub struct Identity {
    /// The user name it is known by (ACL `user` sections, `%u`, the
    /// `mqtt.username` Kafka header); `None` for an anonymous client.
    pub username: Option<Arc<str>>,
    /// Its verified client certificate's identity (the `mqtt.cert_cn` header).
    pub cert_cn: Option<Arc<str>>,
    /// When its token expires: the connection is closed then.
    pub expires_at: Option<Instant>,
    rules: Rules,
}

#[derive(Debug)]
enum Rules {
    /// No ACL configured: everything is allowed.
    Open,
    /// The ACL file, as it is at each check (reloads apply at once).
    File(Arc<ArcSwapOption<Acl>>),
    /// The token's own ACL, which replaces the file's for this client.
    Token(TokenAcl),
}

impl Identity {
    /// An identity allowed everything (in-process tools).
    pub fn unrestricted() -> Identity {
        Identity {
            username: None,
            cert_cn: None,
            expires_at: None,
            rules: Rules::Open,
        }
    }

    /// May this client (with `client_id`) do `access` on `topic` (a topic
    /// name for Read and Write, a filter for Subscribe)?
    pub fn allows(&self, client_id: &str, access: Access, topic: &str) -> bool {
        let subject = Subject {
            username: self.username.as_deref(),
            client_id,
        };
        match &self.rules {
            Rules::Open => true,
            Rules::File(acl) => match &*acl.load() {
                Some(acl) => acl.check(&subject, access, topic),
                // A file that never loaded (the server does not start then).
                None => false,
            },
            Rules::Token(acl) => acl.check(&subject, access, topic),
        }
    }

    /// Whether any check can say no (so callers may skip the work).
    pub fn is_restricted(&self) -> bool {
        !matches!(self.rules, Rules::Open)
    }
}

/// The credentials a CONNECT carried (empty strings are absent).
pub struct Credentials<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// The broker's authentication and authorization, shared by every link.
pub struct Authenticator {
    config: AuthConfig,
    /// The identity every anonymous client without a certificate shares:
    /// one allocation, not one per connection.
    anonymous: Arc<Identity>,
    passwords: Watched<PasswordFile>,
    acl: Watched<Acl>,
    jwt: Option<JwtVerifier>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Authenticator {
    /// Loads the configured files; a file that does not load is an error
    /// (the server does not start without what it was told to enforce).
    pub fn new(config: &AuthConfig) -> anyhow::Result<Authenticator> {
        let jwt = match &config.jwt {
            Some(jwt) => Some(JwtVerifier::new(jwt).map_err(|e| anyhow::anyhow!("auth.jwt: {e}"))?),
            None => None,
        };
        let passwords = Watched::new("password file", config.password_file.clone(), |path| {
            PasswordFile::load(path).map_err(|e| e.to_string())
        })?;
        let acl = Watched::new("ACL", config.acl_file.clone(), |path| {
            Acl::load(path).map_err(|e| e.to_string())
        })?;
        let anonymous = Arc::new(Identity {
            username: None,
            cert_cn: None,
            expires_at: None,
            rules: match &acl.current {
                Some(file) => Rules::File(file.clone()),
                None => Rules::Open,
            },
        });
        Ok(Authenticator {
            config: config.clone(),
            anonymous,
            passwords,
            acl,
            jwt,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Decides who a client connecting on `listener` is.
    pub fn authenticate(
        &self,
        listener: &ListenerAuth,
        cert: Option<&CertIdentity>,
        client_id: &str,
        credentials: Credentials<'_>,
    ) -> Result<Arc<Identity>, Refusal> {
        let cert_cn: Option<Arc<str>> = cert.map(|c| c.name.as_str().into());
        if listener.require_client_id_match && cert_cn.as_deref() != Some(client_id) {
            return Err(Refusal::NotAuthorized("client_id_not_certificate"));
        }
        let identity = |username: Option<Arc<str>>, expires_at, token_acl: Option<TokenAcl>| {
            if username.is_none() && cert_cn.is_none() && token_acl.is_none() {
                return self.anonymous.clone();
            }
            let rules = match (token_acl, &self.acl.current) {
                (Some(acl), _) => Rules::Token(acl),
                (None, Some(file)) => Rules::File(file.clone()),
                (None, None) => Rules::Open,
            };
            Arc::new(Identity {
                username,
                cert_cn: cert_cn.clone(),
                expires_at,
                rules,
            })
        };
        if listener.use_identity_as_username {
            if let Some(cn) = &cert_cn {
                return Ok(identity(Some(cn.clone()), None, None));
            }
        }
        let username = credentials.username.filter(|u| !u.is_empty());
        let password = credentials.password.filter(|p| !p.is_empty());
        if username.is_none() && password.is_none() {
            let allowed = listener
                .allow_anonymous
                .unwrap_or(self.config.anonymous_allowed());
            return if allowed {
                Ok(identity(None, None, None))
            } else {
                Err(Refusal::NotAuthorized("anonymous"))
            };
        }
        if !self.config.checks_credentials() {
            // Nothing to check them against: the user name is taken as
            // given (for the ACL and the Kafka header), as Mosquitto does
            // without a password file.
            return Ok(identity(username.map(Arc::from), None, None));
        }
        if let (Some(user), Some(passwords)) = (username, self.passwords.get()) {
            if passwords.contains_user(user) {
                return match password {
                    Some(password) if passwords.verify(user, password) => {
                        Ok(identity(Some(user.into()), None, None))
                    }
                    _ => Err(Refusal::BadCredentials("bad_password")),
                };
            }
        }
        let (Some(jwt), Some(token)) = (&self.jwt, password) else {
            return Err(Refusal::BadCredentials("unknown_user"));
        };
        let token = jwt.verify(token).map_err(|refusal| {
            tracing::debug!(reason = refusal.label(), "token refused");
            Refusal::BadCredentials(match refusal {
                JwtRefusal::Expired => "token_expired",
                _ => "token_invalid",
            })
        })?;
        if token.client_id.as_deref().is_some_and(|id| id != client_id) {
            return Err(Refusal::NotAuthorized("client_id_not_token"));
        }
        let username = token.username.map(Arc::from).or(username.map(Arc::from));
        let expires_at = token.expires_at.map(instant_of);
        Ok(identity(username, expires_at, token.acl))
    }

    /// Whether authenticating may take real CPU (a password hash), so it is
    /// better done off the async workers.
    pub fn is_costly(&self) -> bool {
        self.config.password_file.is_some()
    }

    /// How long to wait before refusing a client from `ip`, counting this
    /// failure.
    pub fn failure_delay(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_REMEMBERED_PEERS {
            failures.retain(|_, (_, at)| now.duration_since(*at) < FAILURE_MEMORY);
            if failures.len() >= MAX_REMEMBERED_PEERS {
                failures.clear();
            }
        }
        let entry = failures.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_MEMORY {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let doublings = entry.0.saturating_sub(1).min(16);
        let ms = self
            .config
            .failure_delay_ms
            .saturating_mul(1u64 << doublings)
            .min(MAX_FAILURE_DELAY_MS);
        Duration::from_millis(ms)
    }

    /// A client from `ip` authenticated: its earlier failures are forgotten.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&ip);
    }

    /// Loads the password file and the ACL again if they changed (or if
    /// `force`); a file that does not load is reported and the old one
    /// serves on.
    pub fn reload(&self, force: bool) {
        self.passwords.reload(force);
        self.acl.reload(force);
    }
}

/// A file loaded at start and again when it changes, swapped atomically:
/// a check sees the old version or the new one, never a mix.
struct Watched<T> {
    what: &'static str,
    path: Option<PathBuf>,
    current: Option<Arc<ArcSwapOption<T>>>,
    stamp: Mutex<Option<(Option<SystemTime>, u64)>>,
    load: fn(&Path) -> Result<T, String>,
}

impl<T> Watched<T> {
    fn new(
        what: &'static str,
        path: Option<PathBuf>,
        load: fn(&Path) -> Result<T, String>,
    ) -> anyhow::Result<Watched<T>> {
        let current = match &path {
            Some(path) => {
                let loaded = load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
                Some(Arc::new(ArcSwapOption::from_pointee(loaded)))
            }
            None => None,
        };
        Ok(Watched {
            what,
            stamp: Mutex::new(path.as_deref().and_then(stamp)),
            path,
            current,
            load,
        })
    }

    fn get(&self) -> Option<Arc<T>> {
        self.current
            .as_ref()
            .and_then(|current| current.load_full())
    }

    fn reload(&self, force: bool) {
        let (Some(path), Some(current)) = (&self.path, &self.current) else {
            return;
        };
        let now = stamp(path);
        {
            let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if !force && *last == now {
                return;
            }
            *last = now;
        }
        match (self.load)(path) {
            Ok(loaded) => {
                current.store(Some(Arc::new(loaded)));
                crate::events::AuthFileReloaded {
                    what: self.what,
                    error: None,
                }
                .emit();
            }
            Err(error) => crate::events::AuthFileReloaded {
                what: self.what,
                error: Some(&error),
            }
            .emit(),
        }
    }
}

/// The monotonic instant of a wall-clock time (now, if it has passed; far
/// away, if the clock cannot reach it).
fn instant_of(at: SystemTime) -> Instant {
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let now = Instant::now();
    now.checked_add(left)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

fn stamp(path: &Path) -> Option<(Option<SystemTime>, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok(), meta.len()))
}

impl crate::reload::Reload for Authenticator {
    fn reload(&self, force: bool) {
        Authenticator::reload(self, force);
    }
}
