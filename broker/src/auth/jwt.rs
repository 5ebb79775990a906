//! JSON Web Tokens carried in the MQTT password field: configuration,
//! signature and claim verification, and the token's own ACL claim.
//!
//! Exactly one algorithm is accepted per configuration, and the key type is
//! tied to it, so a token whose header names another algorithm (the classic
//! "HS256 signed with the RSA public key" confusion, or `none`) is refused
//! before any signature check. `exp` is required unless configured
//! otherwise, `nbf` is enforced when present, and a malformed `exp`/`nbf`
//! is refused rather than ignored.
//!
//! The ACL claim follows EMQX's format:
//! `"acl": {"pub": ["a/#"], "sub": ["b/+"], "all": ["c/#"]}` (`publish` and
//! `subscribe` are accepted as long names). `pub` grants write, `sub` grants
//! read and subscribe, `all` grants both. Filters may use `%c`/`%u`
//! (Mosquitto) or `${clientid}`/`${username}` (EMQX) as whole levels; they
//! are replaced with the connecting client's id and user name exactly as
//! `pattern` lines of an ACL file are (see the `acl` module).
//!
//! This module must never put a token, a secret or key material in an error,
//! a log label or `Debug` output, and never accept a token it could not
//! fully verify.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;

use super::acl::{Access, AclCheck, Permission, Placeholders, Rule, RuleError, RuleSet, Subject};

/// An MQTT password field cannot be longer; anything longer is not ours.
const MAX_TOKEN_LEN: usize = 65_535;

/// A token's ACL is checked on every PUBLISH and delivery; a signed but
/// absurd claim must not make each check scan thousands of rules.
const MAX_TOKEN_RULES: usize = 256;

/// Configuration fields that say where the key comes from.
const KEY_FIELDS: [&str; 3] = ["secret", "secret_file", "public_key_file"];

/// Larger leeways let expired tokens live on for a long time.
const MAX_LEEWAY_SECS: u64 = 300;

/// Signature algorithms a configuration can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum JwtAlgorithm {
    #[serde(rename = "HS256", alias = "hs256")]
    Hs256,
    #[serde(rename = "HS384", alias = "hs384")]
    Hs384,
    #[serde(rename = "HS512", alias = "hs512")]
    Hs512,
    #[serde(rename = "RS256", alias = "rs256")]
    Rs256,
    #[serde(rename = "RS384", alias = "rs384")]
    Rs384,
    #[serde(rename = "RS512", alias = "rs512")]
    Rs512,
    #[serde(rename = "ES256", alias = "es256")]
    Es256,
    #[serde(rename = "ES384", alias = "es384")]
    Es384,
}

impl JwtAlgorithm {
    fn to_jwt(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Hs384 => Algorithm::HS384,
            Self::Hs512 => Algorithm::HS512,
            Self::Rs256 => Algorithm::RS256,
            Self::Rs384 => Algorithm::RS384,
            Self::Rs512 => Algorithm::RS512,
            Self::Es256 => Algorithm::ES256,
            Self::Es384 => Algorithm::ES384,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Hs384 => "HS384",
            Self::Hs512 => "HS512",
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
        }
    }

    /// RFC 7518 §3.2: an HMAC key must be at least as long as the hash.
    fn min_secret_len(self) -> Option<usize> {
        match self {
            Self::Hs256 => Some(32),
            Self::Hs384 => Some(48),
            Self::Hs512 => Some(64),
            _ => None,
        }
    }

    /// Length of an uncompressed EC public point on the algorithm's curve.
    fn ec_point_len(self) -> Option<usize> {
        match self {
            Self::Es256 => Some(65),
            Self::Es384 => Some(97),
            _ => None,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that is never shown: `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How clients authenticate with a JWT in the MQTT password field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Signature algorithm every token must use: `HS256`, `HS384`, `HS512`
    /// (shared secret), `RS256`, `RS384`, `RS512` (RSA public key) or
    /// `ES256`, `ES384` (EC P-256 / P-384 public key). Written as in the JWT
    /// header, upper case; lower case is accepted too. Tokens naming any
    /// other algorithm are refused.
    pub algorithm: JwtAlgorithm,
    /// Shared secret for the `HS*` algorithms, used as raw bytes (not
    /// base64-decoded). At least 32 bytes for HS256, 48 for HS384, 64 for
    /// HS512. Prefer `secret_file`, which keeps it out of the main config.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// File holding the shared secret for the `HS*` algorithms; one trailing
    /// line ending is removed. Set either this or `secret`, not both.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// PEM file holding the public key for the `RS*` and `ES*` algorithms
    /// (`-----BEGIN PUBLIC KEY-----`, or `RSA PUBLIC KEY` for RSA). A private
    /// key is refused: the broker only verifies.
    #[serde(default)]
    pub public_key_file: Option<PathBuf>,
    /// If set, tokens must carry this exact `iss` claim.
    #[serde(default)]
    pub issuer: Option<String>,
    /// If set, tokens must carry this value in their `aud` claim. If unset,
    /// `aud` is not checked.
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew allowed when checking `exp` and `nbf`, in seconds (default
    /// 5, at most 300).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Refuse tokens without an `exp` claim (default true). Turning this off
    /// lets a leaked token work forever.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    /// Claim holding the user name (default `sub`).
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// Claim holding the client id the token is issued to (default
    /// `client_id`).
    #[serde(default = "default_client_id_claim")]
    pub client_id_claim: String,
    /// Claim holding the client's ACL (default `acl`), in EMQX's format:
    /// `{"pub": [...], "sub": [...], "all": [...]}`.
    #[serde(default = "default_acl_claim")]
    pub acl_claim: String,
}

/// Enough for NTP-synchronised clocks on issuer and broker, too little to
/// matter for a token's lifetime.
fn default_leeway() -> u64 {
    5
}
fn default_true() -> bool {
    true
}
fn default_username_claim() -> String {
    "sub".to_owned()
}
fn default_client_id_claim() -> String {
    "client_id".to_owned()
}
fn default_acl_claim() -> String {
    "acl".to_owned()
}

impl JwtConfig {
    /// A configuration with every optional field at its default.
    pub fn new(algorithm: JwtAlgorithm) -> Self {
        Self {
            algorithm,
            secret: None,
            secret_file: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway_secs: default_leeway(),
            require_exp: true,
            username_claim: default_username_claim(),
            client_id_claim: default_client_id_claim(),
            acl_claim: default_acl_claim(),
        }
    }

    /// Every problem with this configuration, as (field, problem). Reads
    /// the key files to check them; never quotes their contents.
    pub fn validate(&self) -> Vec<(String, String)> {
        self.inspect().0
    }

    /// All problems, and the key when the key fields make sense.
    fn inspect(&self) -> (Vec<(String, String)>, Option<DecodingKey>) {
        let mut problems = Problems::default();
        self.check_fields(&mut problems);
        // The key can only be loaded once it is clear which field holds it;
        // other fields' problems do not stop it being checked too.
        let key_fields_ok = !problems
            .0
            .iter()
            .any(|(field, _)| KEY_FIELDS.contains(&field.as_str()));
        let mut key = None;
        if key_fields_ok {
            match self.decoding_key() {
                Ok(k) => key = Some(k),
                Err(more) => problems.0.extend(more.0),
            }
        }
        (problems.0, key)
    }

    fn check_fields(&self, p: &mut Problems) {
        let alg = self.algorithm;
        if alg.min_secret_len().is_some() {
            match (&self.secret, &self.secret_file) {
                (None, None) => p.add("secret", format!("{alg} needs `secret` or `secret_file`")),
                (Some(_), Some(_)) => p.add(
                    "secret_file",
                    "set either `secret` or `secret_file`, not both",
                ),
                _ => {}
            }
            if self.public_key_file.is_some() {
                p.add(
                    "public_key_file",
                    format!("not used by {alg}, which uses a shared secret"),
                );
            }
        } else {
            if self.public_key_file.is_none() {
                p.add("public_key_file", format!("{alg} needs a public key file"));
            }
            if self.secret.is_some() {
                p.add(
                    "secret",
                    format!("not used by {alg}, which uses a public key"),
                );
            }
            if self.secret_file.is_some() {
                p.add(
                    "secret_file",
                    format!("not used by {alg}, which uses a public key"),
                );
            }
        }
        if self.issuer.as_deref() == Some("") {
            p.add(
                "issuer",
                "must not be empty; leave it out to accept any issuer",
            );
        }
        if self.audience.as_deref() == Some("") {
            p.add(
                "audience",
                "must not be empty; leave it out to accept any audience",
            );
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            p.add("leeway_secs", format!("must be at most {MAX_LEEWAY_SECS}"));
        }
        for (field, value) in [
            ("username_claim", &self.username_claim),
            ("client_id_claim", &self.client_id_claim),
            ("acl_claim", &self.acl_claim),
        ] {
            if value.is_empty() {
                p.add(field, "must not be empty");
            }
        }
    }

    /// Loads the key, reporting problems without quoting key material.
    /// Assumes [`Self::check_fields`] found nothing.
    fn decoding_key(&self) -> Result<DecodingKey, Problems> {
        let alg = self.algorithm;
        let p = Problems::default();
        if let Some(min) = alg.min_secret_len() {
            let secret = match (&self.secret, &self.secret_file) {
                (Some(secret), _) => secret.expose().to_vec(),
                (None, Some(path)) => match read_secret_file(path) {
                    Ok(bytes) => bytes,
                    Err(problem) => return Err(p.with("secret_file", problem)),
                },
                (None, None) => return Err(p.with("secret", format!("{alg} needs a secret"))),
            };
            let field = if self.secret.is_some() {
                "secret"
            } else {
                "secret_file"
            };
            if secret.len() < min {
                return Err(p.with(
                    field,
                    format!("{alg} needs a secret of at least {min} bytes"),
                ));
            }
            return Ok(DecodingKey::from_secret(&secret));
        }
        let Some(path) = &self.public_key_file else {
            return Err(p.with("public_key_file", format!("{alg} needs a public key file")));
        };
        let pem = match std::fs::read(path) {
            Ok(pem) => pem,
            Err(e) => {
                return Err(p.with(
                    "public_key_file",
                    format!("cannot read {}: {e}", path.display()),
                ))
            }
        };
        if contains(&pem, b"PRIVATE KEY-----") {
            return Err(p.with(
                "public_key_file",
                format!(
                    "{} holds a private key; give the broker the public key only",
                    path.display()
                ),
            ));
        }
        let key = match alg.ec_point_len() {
            None => DecodingKey::from_rsa_pem(&pem),
            Some(_) => DecodingKey::from_ec_pem(&pem),
        };
        let kind = if alg.ec_point_len().is_some() {
            "EC"
        } else {
            "RSA"
        };
        let key = match key {
            Ok(key) => key,
            Err(_) => {
                return Err(p.with(
                    "public_key_file",
                    format!("{} is not a PEM {kind} public key", path.display()),
                ))
            }
        };
        if let (Some(want), DecodingKeyKind::SecretOrDer(point)) = (alg.ec_point_len(), key.kind())
        {
            if point.len() != want {
                return Err(p.with(
                    "public_key_file",
                    format!("{} is not a key on the curve {alg} uses", path.display()),
                ));
            }
        }
        Ok(key)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    // `windows(0)` panics.
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // Editors and `echo` add a newline nobody means as part of the secret.
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(bytes)
}

#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, field: &str, problem: impl Into<String>) {
        self.0.push((field.to_owned(), problem.into()));
    }

    fn with(mut self, field: &str, problem: impl Into<String>) -> Self {
        self.add(field, problem);
        self
    }
}

/// The configuration cannot be used; lists every problem found.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid JWT configuration: {}", describe(.problems))]
pub struct JwtConfigError {
    pub problems: Vec<(String, String)>,
}

fn describe(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(field, problem)| format!("{field}: {problem}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a token was refused. Carries nothing from the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum JwtRefusal {
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token uses an algorithm other than the configured one")]
    WrongAlgorithm,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token has no exp claim")]
    MissingExp,
    #[error("token issuer (iss) is missing or not the configured one")]
    WrongIssuer,
    #[error("token audience (aud) is missing or not the configured one")]
    WrongAudience,
    #[error("token claim {0} has the wrong type")]
    BadClaim(&'static str),
    #[error("token ACL claim is invalid: {0}")]
    BadAcl(&'static str),
}

impl JwtRefusal {
    /// A short, fixed label for metrics and structured logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::WrongAlgorithm => "wrong_algorithm",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::MissingExp => "missing_exp",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::BadClaim(_) => "bad_claim",
            Self::BadAcl(_) => "bad_acl",
        }
    }

    fn from_jwt(kind: &ErrorKind) -> Self {
        match kind {
            ErrorKind::InvalidSignature => Self::BadSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::MissingAlgorithm => Self::WrongAlgorithm,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                "exp" => Self::MissingExp,
                "iss" => Self::WrongIssuer,
                "aud" => Self::WrongAudience,
                _ => Self::Malformed,
            },
            ErrorKind::InvalidClaimFormat(claim) => match claim.as_str() {
                "exp" => Self::BadClaim("exp"),
                "nbf" => Self::BadClaim("nbf"),
                _ => Self::Malformed,
            },
            // A key the provider cannot use for this token is still a token
            // we cannot verify; anything else is a token we cannot read.
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => Self::BadSignature,
            _ => Self::Malformed,
        }
    }
}

/// A token's ACL claim, as rules of the same kind an ACL file yields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenAcl {
    rules: RuleSet,
}

impl TokenAcl {
    /// Parses an EMQX-style ACL claim value.
    pub fn from_claim(value: &Value) -> Result<Self, JwtRefusal> {
        let object = value
            .as_object()
            .ok_or(JwtRefusal::BadAcl("it must be an object"))?;
        let mut rules = RuleSet::new();
        for (key, list) in object {
            let permission = match key.as_str() {
                "pub" | "publish" => Permission::Write,
                "sub" | "subscribe" => Permission::Read,
                "all" => Permission::ReadWrite,
                _ => {
                    // Ignoring an unknown key could drop a restriction the
                    // issuer meant; refusing is the safe reading.
                    return Err(JwtRefusal::BadAcl(
                        "unknown key, expected pub, sub, publish, subscribe or all",
                    ));
                }
            };
            let filters = list.as_array().ok_or(JwtRefusal::BadAcl(
                "each key must hold a list of topic filters",
            ))?;
            for filter in filters {
                let filter = filter
                    .as_str()
                    .ok_or(JwtRefusal::BadAcl("each topic filter must be a string"))?;
                if rules.len() >= MAX_TOKEN_RULES {
                    return Err(JwtRefusal::BadAcl("too many topic filters"));
                }
                let rule =
                    Rule::new(permission, filter, Placeholders::Token).map_err(|e| match e {
                        RuleError::Topic(_) => {
                            JwtRefusal::BadAcl("a topic filter is not valid MQTT")
                        }
                        RuleError::PartialPlaceholder => {
                            JwtRefusal::BadAcl("a placeholder must be a whole topic level")
                        }
                    })?;
                rules.push(rule);
            }
        }
        Ok(Self { rules })
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    pub fn into_rules(self) -> RuleSet {
        self.rules
    }
}

impl From<TokenAcl> for RuleSet {
    fn from(acl: TokenAcl) -> Self {
        acl.rules
    }
}

impl AclCheck for TokenAcl {
    fn check(&self, subject: &Subject<'_>, access: Access, topic: &str) -> bool {
        self.rules.check(subject, access, topic)
    }
}

/// What a verified token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub username: Option<String>,
    pub client_id: Option<String>,
    /// When the token stops being valid; the broker may disconnect then.
    pub expires_at: Option<SystemTime>,
    pub acl: Option<TokenAcl>,
}

/// Verifies tokens against one configuration.
pub struct JwtVerifier {
    algorithm: JwtAlgorithm,
    key: DecodingKey,
    validation: Validation,
    username_claim: String,
    client_id_claim: String,
    acl_claim: String,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .field("leeway_secs", &self.validation.leeway)
            .field("username_claim", &self.username_claim)
            .field("client_id_claim", &self.client_id_claim)
            .field("acl_claim", &self.acl_claim)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    pub fn new(config: &JwtConfig) -> Result<Self, JwtConfigError> {
        let (problems, key) = config.inspect();
        let (true, Some(key)) = (problems.is_empty(), key) else {
            return Err(JwtConfigError { problems });
        };

        // jsonwebtoken picks its crypto backend from crate features and
        // panics at first use if another crate in the build enables its
        // second backend; choosing explicitly removes that trap. An error
        // only means a backend was already chosen, which is fine.
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        );

        let mut validation = Validation::new(config.algorithm.to_jwt());
        validation.leeway = config.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = Vec::new();
        if config.require_exp {
            required.push("exp");
        }
        match &config.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.validate_aud = true;
                required.push("aud");
            }
            // Unset means "not checked": many issuers always add an `aud`.
            None => validation.validate_aud = false,
        }
        validation.required_spec_claims = required.into_iter().map(str::to_owned).collect();

        Ok(Self {
            algorithm: config.algorithm,
            key,
            validation,
            username_claim: config.username_claim.clone(),
            client_id_claim: config.client_id_claim.clone(),
            acl_claim: config.acl_claim.clone(),
        })
    }

    /// Verifies a token taken from the MQTT password field.
    pub fn verify(&self, token: &[u8]) -> Result<TokenIdentity, JwtRefusal> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(JwtRefusal::Malformed);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| JwtRefusal::from_jwt(e.kind()))?;
        let claims = data.claims;
        Ok(TokenIdentity {
            username: string_claim(&claims, &self.username_claim, "username")?,
            client_id: string_claim(&claims, &self.client_id_claim, "client id")?,
            expires_at: expiry(&claims)?,
            acl: match claims.get(&self.acl_claim) {
                None | Some(Value::Null) => None,
                Some(value) => Some(TokenAcl::from_claim(value)?),
            },
        })
    }
}

fn string_claim(
    claims: &Map<String, Value>,
    name: &str,
    role: &'static str,
) -> Result<Option<String>, JwtRefusal> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JwtRefusal::BadClaim(role)),
    }
}

fn expiry(claims: &Map<String, Value>) -> Result<Option<SystemTime>, JwtRefusal> {
    let Some(exp) = claims.get("exp") else {
        return Ok(None);
    };
    // jsonwebtoken has already accepted the value as a number, possibly a
    // float, which it rounds; do the same.
    let secs = match (exp.as_u64(), exp.as_f64()) {
        (Some(secs), _) => secs,
        (None, Some(f)) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => f.round() as u64,
        _ => return Err(JwtRefusal::BadClaim("exp")),
    };
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .map(Some)
        .ok_or(JwtRefusal::BadClaim("exp"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const HS_SECRET: &str = "an-hs256-secret-that-is-32-bytes-or-more";

    const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDOZzFAUvqVxP2q
rD3IP+WdlRHVm+oWdP5iRkrc8CbgezRpuvM4cMpJCq/qNCq8iFYC8hpPbDL7tzAT
QfMju3B1b59V+OOU2066iOgrIOkB34jlmHlciBWN4vgjjUj84KUptL5Ey9D9lLFE
XI5w7qAbjwGED1biTzfqL3w7sHFRZSa2qitr0+N6LWQKqGt7OQshp9ObX1wNiICv
yGAVfT8xPDKZHfqtX6pJB8/oWSLz3vTNOFerK8glgxrgoEcuMMQja/X5aSaVE/NA
gDcKWAaNFvxirhqVlM15FeRroOArOQcMmOe1oljMpFuBHIuK+a1SZDASx18zUemO
oM2KjOxnAgMBAAECggEAFMwSCtyxkiC4vJdBXGmPzdqE4wSkSCH+tdFGXs+14x2W
8OZc9n1q7IQuqIccHUYRgJd7bjBFTNau+enFwX5z/OlD4UpESC3211XPKvVUdRNc
fGHqLJgrr9HEVfS4+335NmQXXeA5jSuL1wsKcTeiG1TD/tX616/KvwaM2ojTSjOc
KQWbsvEOpvOn5AnQU4hbaGwVv3DbzVwxUMB4hCYGOKSiQadqhkBMY1dscY2toHpS
HbBWHo1Feut+DABxgfZkkFckmA+9AWOs5unx1AYkVaE0/NkQDu1HC7RhNehtCrOR
N2Kgo+k46dNFM4gjOdrpiBYLbsXqvCBlBPz3yj6WzQKBgQDoQ9yKlzsEEr/gvRHk
gsQfNf6KzDb8zt1NKNHmTHHJMXQcs+xX/BIwlIg4yMI5/NHnKdMGMlbrnisWS9vq
YMMm9rNxWeoodNpZcsWQ8jOsxK+9iZKiDWrpzxrYBeXRFpW+nZqxZTw9+uRZbwTa
fSebawX3dnE2F5vdt5/Ihk/MWwKBgQDjfsWdPhetTAHhrLIYliezCb63VXaEfeEK
0tutV1un+62Ip5/r79xO5ojxC4rE0+4JKQdQn5phM9IY9B2awZumLdZGRvo2RoAv
TmxUVdJr5WFZK0DYnfoDQpJcThjC78kGr5/LGf6GeW5TBkZWjU0zB9A3ON2OHWR5
Yafh+2eN5QKBgDx0PVkNV90NjEfQrnGN38JH6YLy+HUA2vUUZN3Ok+dMKe62nhOg
lpNydapiBrvVJEVIy5ZXT+xv9MMO56SvntvrZnVgc+Qn1hVmHCpIAE89uohY4IOx
flxw/Ymwr0qm2D8PAo6dzPpM7Vah4N+Fp+N6DcmFWJ49suIYw0wMOYT1AoGAbyOS
xVP9WzNDxA2LYEmTEXuUSZqd8PJSS+hhW9jOtU1WJOnHTgt7dKxZgHEkFS54Hs+F
fFTMpeocHQa9o8osEU5ZXTH1sShWHUZR1A2tY/rGyTpBTtI2vvr559BbdniQnAyW
ozGK0AVo6XSqTkRvz5tklGXaj0A6wrX7v4IDwCUCgYEAulS0FvpGUBy4zzjzUHrC
ST03zZX1+iqGujwRqmFILajpubswp31nSEqnsdhzVkmznRYUuSjbmkOChi0cqC2+
LOLi4pSYPcj3veU1023x4io+U48s1JxE0QzC9WJHKysl5eQMAsCbClV/FDR2y0Wr
1kpbMheU2rDQcVCv+JRwAW4=
-----END PRIVATE KEY-----
";
    const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAzmcxQFL6lcT9qqw9yD/l
nZUR1ZvqFnT+YkZK3PAm4Hs0abrzOHDKSQqv6jQqvIhWAvIaT2wy+7cwE0HzI7tw
dW+fVfjjlNtOuojoKyDpAd+I5Zh5XIgVjeL4I41I/OClKbS+RMvQ/ZSxRFyOcO6g
G48BhA9W4k836i98O7BxUWUmtqora9Pjei1kCqhrezkLIafTm19cDYiAr8hgFX0/
MTwymR36rV+qSQfP6Fki8970zThXqyvIJYMa4KBHLjDEI2v1+WkmlRPzQIA3ClgG
jRb8Yq4alZTNeRXka6DgKzkHDJjntaJYzKRbgRyLivmtUmQwEsdfM1HpjqDNiozs
ZwIDAQAB
-----END PUBLIC KEY-----
";
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggq0t60ta2pSLLjEo
0mf0Tj95XZskya1MA3LbN3gyqFehRANCAASCZSop+aWMqk8jKs0Kun7viRFIS3DA
CPJ5N3an/bFOXSRL1SbFUkUAte4Zo+zekb7ybZttPd84x9sPAYqMlhHq
-----END PRIVATE KEY-----
";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEgmUqKfmljKpPIyrNCrp+74kRSEtw
wAjyeTd2p/2xTl0kS9UmxVJFALXuGaPs3pG+8m2bbT3fOMfbDwGKjJYR6g==
-----END PUBLIC KEY-----
";
    const EC384_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEhy9l2NQqtHW6QPKjsjqksYXf4BQ+hdAr
TefhedFA+GSOdYMLKbIMWsvm9XTZuaE7Cvkbozq2WB64OEaVnrzg2WCR8cD031z0
/YWxCpQXkyU+XHcXfbDscNxQZ1HlyIfI
-----END PUBLIC KEY-----
";

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("tributary-jwt-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn file(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs_config() -> JwtConfig {
        let mut c = JwtConfig::new(JwtAlgorithm::Hs256);
        c.secret = Some(Secret::new(HS_SECRET));
        c
    }

    fn hs_token(claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn verifier(config: &JwtConfig) -> JwtVerifier {
        JwtVerifier::new(config).unwrap()
    }

    #[test]
    fn hs256_token_yields_identity() {
        let v = verifier(&hs_config());
        let exp = now() + 600;
        let token = hs_token(&json!({"sub": "alice", "client_id": "dev1", "exp": exp}));
        let id = v.verify(token.as_bytes()).unwrap();
        assert_eq!(id.username.as_deref(), Some("alice"));
        assert_eq!(id.client_id.as_deref(), Some("dev1"));
        assert_eq!(id.expires_at, Some(UNIX_EPOCH + Duration::from_secs(exp)));
        assert_eq!(id.acl, None);
    }

    #[test]
    fn custom_claim_names() {
        let mut c = hs_config();
        c.username_claim = "preferred_username".into();
        c.client_id_claim = "cid".into();
        c.acl_claim = "mqtt_acl".into();
        let v = verifier(&c);
        let token = hs_token(&json!({
            "sub": "ignored", "preferred_username": "bob", "cid": "c9",
            "exp": now() + 60, "mqtt_acl": {"pub": ["x"]}
        }));
        let id = v.verify(token.as_bytes()).unwrap();
        assert_eq!(id.username.as_deref(), Some("bob"));
        assert_eq!(id.client_id.as_deref(), Some("c9"));
        assert!(id.acl.is_some());
        let bad = hs_token(&json!({"preferred_username": 7, "exp": now() + 60}));
        assert_eq!(
            v.verify(bad.as_bytes()),
            Err(JwtRefusal::BadClaim("username"))
        );
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let v = verifier(&hs_config());
        let old = hs_token(&json!({"sub": "a", "exp": now() - 3600}));
        assert_eq!(v.verify(old.as_bytes()), Err(JwtRefusal::Expired));
        let future = hs_token(&json!({"sub": "a", "exp": now() + 7200, "nbf": now() + 3600}));
        assert_eq!(v.verify(future.as_bytes()), Err(JwtRefusal::NotYetValid));
        // Within the leeway both pass.
        let edge = hs_token(&json!({"sub": "a", "exp": now() - 2, "nbf": now() + 2}));
        assert!(v.verify(edge.as_bytes()).is_ok());
        // A string nbf must not slip past the check (CVE-2026-25537).
        let sneaky = hs_token(&json!({"sub": "a", "exp": now() + 60, "nbf": "99999999999"}));
        assert_eq!(
            v.verify(sneaky.as_bytes()),
            Err(JwtRefusal::BadClaim("nbf"))
        );
    }

    #[test]
    fn missing_exp() {
        let token = hs_token(&json!({"sub": "a"}));
        assert_eq!(
            verifier(&hs_config()).verify(token.as_bytes()),
            Err(JwtRefusal::MissingExp)
        );
        let mut c = hs_config();
        c.require_exp = false;
        let id = verifier(&c).verify(token.as_bytes()).unwrap();
        assert_eq!(id.expires_at, None);
        let bad = hs_token(&json!({"sub": "a", "exp": "never"}));
        assert_eq!(
            verifier(&c).verify(bad.as_bytes()),
            Err(JwtRefusal::BadClaim("exp"))
        );
    }

    #[test]
    fn wrong_signature_and_garbage() {
        let v = verifier(&hs_config());
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "a", "exp": now() + 60}),
            &EncodingKey::from_secret(b"another-secret-another-secret-another"),
        )
        .unwrap();
        assert_eq!(v.verify(other.as_bytes()), Err(JwtRefusal::BadSignature));
        for garbage in [
            &b""[..],
            b"x",
            b"a.b.c",
            b"....",
            &[0xff; 40],
            &vec![b'a'; 70_000],
        ] {
            assert_eq!(
                v.verify(garbage),
                Err(JwtRefusal::Malformed),
                "{:?}",
                &garbage[..garbage.len().min(8)]
            );
        }
        // alg "none" with an empty signature.
        let none = format!(
            "{}.{}.",
            base64_url(br#"{"alg":"none","typ":"JWT"}"#),
            base64_url(format!(r#"{{"sub":"a","exp":{}}}"#, now() + 60).as_bytes())
        );
        assert!(v.verify(none.as_bytes()).is_err());
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa_config(dir: &TempDir) -> JwtConfig {
        let mut c = JwtConfig::new(JwtAlgorithm::Rs256);
        c.public_key_file = Some(dir.file("rsa.pub", RSA_PUBLIC));
        c
    }

    #[test]
    fn rs256_and_algorithm_confusion() {
        let dir = TempDir::new("rsa");
        let v = verifier(&rsa_config(&dir));
        let claims = json!({"sub": "r", "exp": now() + 60});
        let good = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v.verify(good.as_bytes()).unwrap().username.as_deref(),
            Some("r")
        );

        // The classic attack: HMAC-sign with the public key text.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            v.verify(confused.as_bytes()),
            Err(JwtRefusal::WrongAlgorithm)
        );
        // Same key, other RSA algorithm: still not the configured one.
        let rs512 = encode(
            &Header::new(Algorithm::RS512),
            &claims,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(rs512.as_bytes()), Err(JwtRefusal::WrongAlgorithm));

        let mut tampered = good.clone().into_bytes();
        let last = tampered.len() - 5;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(v.verify(&tampered), Err(JwtRefusal::BadSignature));
    }

    #[test]
    fn es256_tokens() {
        let dir = TempDir::new("ec");
        let mut c = JwtConfig::new(JwtAlgorithm::Es256);
        c.public_key_file = Some(dir.file("ec.pub", EC_PUBLIC));
        let v = verifier(&c);
        let token = encode(
            &Header::new(Algorithm::ES256),
            &json!({"sub": "e", "exp": now() + 60}),
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            v.verify(token.as_bytes()).unwrap().username.as_deref(),
            Some("e")
        );
        let hs = hs_token(&json!({"sub": "e", "exp": now() + 60}));
        assert_eq!(v.verify(hs.as_bytes()), Err(JwtRefusal::WrongAlgorithm));
    }

    /// Fresh keys from the openssl tool, when it is installed, so the test
    /// does not depend on the fixed keys above only.
    #[test]
    fn fresh_openssl_keys() {
        use std::process::Command;
        let dir = TempDir::new("openssl");
        let run = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(&dir.0)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        let generated = run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "k.pem",
        ]) && run(&["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub"])
            && run(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "r.pem",
            ])
            && run(&["pkey", "-in", "r.pem", "-pubout", "-out", "r.pub"]);
        if !generated {
            eprintln!("openssl not available; covered by the fixed keys only");
            return;
        }
        let read = |name: &str| std::fs::read(dir.0.join(name)).unwrap();
        let claims = json!({"sub": "fresh", "exp": now() + 60});

        let mut ec = JwtConfig::new(JwtAlgorithm::Es256);
        ec.public_key_file = Some(dir.0.join("k.pub"));
        let token = encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(&read("k.pem")).unwrap(),
        )
        .unwrap();
        assert!(verifier(&ec).verify(token.as_bytes()).is_ok());
        // A token from the fixed EC key must not verify with the fresh one.
        let foreign = encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            verifier(&ec).verify(foreign.as_bytes()),
            Err(JwtRefusal::BadSignature)
        );

        let mut rsa = JwtConfig::new(JwtAlgorithm::Rs256);
        rsa.public_key_file = Some(dir.0.join("r.pub"));
        let token = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(&read("r.pem")).unwrap(),
        )
        .unwrap();
        assert!(verifier(&rsa).verify(token.as_bytes()).is_ok());
        let foreign = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            verifier(&rsa).verify(foreign.as_bytes()),
            Err(JwtRefusal::BadSignature)
        );
    }

    #[test]
    fn issuer_and_audience() {
        let mut c = hs_config();
        c.issuer = Some("https://idp.example".into());
        c.audience = Some("tributary".into());
        let v = verifier(&c);
        let exp = now() + 60;
        let ok = hs_token(
            &json!({"sub": "a", "exp": exp, "iss": "https://idp.example", "aud": ["x", "tributary"]}),
        );
        assert!(v.verify(ok.as_bytes()).is_ok());
        let wrong_iss =
            hs_token(&json!({"sub": "a", "exp": exp, "iss": "evil", "aud": "tributary"}));
        assert_eq!(v.verify(wrong_iss.as_bytes()), Err(JwtRefusal::WrongIssuer));
        let no_iss = hs_token(&json!({"sub": "a", "exp": exp, "aud": "tributary"}));
        assert_eq!(v.verify(no_iss.as_bytes()), Err(JwtRefusal::WrongIssuer));
        let wrong_aud = hs_token(
            &json!({"sub": "a", "exp": exp, "iss": "https://idp.example", "aud": "other"}),
        );
        assert_eq!(
            v.verify(wrong_aud.as_bytes()),
            Err(JwtRefusal::WrongAudience)
        );
        let no_aud = hs_token(&json!({"sub": "a", "exp": exp, "iss": "https://idp.example"}));
        assert_eq!(v.verify(no_aud.as_bytes()), Err(JwtRefusal::WrongAudience));

        // Without configuration neither is checked.
        let plain = verifier(&hs_config());
        assert!(plain.verify(wrong_aud.as_bytes()).is_ok());
        assert!(plain.verify(wrong_iss.as_bytes()).is_ok());
    }

    #[test]
    fn acl_claim_is_parsed_and_checkable() {
        let v = verifier(&hs_config());
        let token = hs_token(&json!({
            "sub": "u1", "exp": now() + 60,
            "acl": {
                "pub": ["devices/%c/up"],
                "subscribe": ["devices/${clientid}/down/#"],
                "all": ["users/${username}/#"],
                "publish": ["shared/x"]
            }
        }));
        let acl = v.verify(token.as_bytes()).unwrap().acl.unwrap();
        assert_eq!(acl.rules().len(), 4);
        let s = Subject {
            username: Some("u1"),
            client_id: "d7",
        };
        assert!(acl.check(&s, Access::Write, "devices/d7/up"));
        assert!(!acl.check(&s, Access::Read, "devices/d7/up"));
        assert!(!acl.check(&s, Access::Write, "devices/d8/up"));
        assert!(acl.check(&s, Access::Subscribe, "devices/d7/down/+"));
        assert!(acl.check(&s, Access::Read, "devices/d7/down/cfg"));
        assert!(!acl.check(&s, Access::Write, "devices/d7/down/cfg"));
        assert!(acl.check(&s, Access::Write, "users/u1/a"));
        assert!(acl.check(&s, Access::Read, "users/u1/a"));
        assert!(acl.check(&s, Access::Write, "shared/x"));
        assert!(!acl.check(&s, Access::Read, "#"));
        let hostile = Subject {
            username: Some("#"),
            client_id: "+",
        };
        assert!(!acl.check(&hostile, Access::Write, "devices/x/up"));
        assert!(!acl.check(&hostile, Access::Subscribe, "users/#"));
        let rules: RuleSet = acl.into();
        assert_eq!(rules.len(), 4);
    }

    #[test]
    fn bad_acl_claims_refuse_the_token() {
        let v = verifier(&hs_config());
        for acl in [
            json!(["a/#"]),
            json!({"pub": "a/#"}),
            json!({"pub": [1]}),
            json!({"deny": ["a/#"]}),
            json!({"pub": ["a/#/b"]}),
            json!({"sub": ["dev/x${clientid}"]}),
            json!({"all": vec!["a"; MAX_TOKEN_RULES + 1]}),
        ] {
            let token = hs_token(&json!({"sub": "a", "exp": now() + 60, "acl": acl}));
            let refusal = v.verify(token.as_bytes()).unwrap_err();
            assert_eq!(refusal.label(), "bad_acl", "{acl}");
        }
        let empty = hs_token(&json!({"sub": "a", "exp": now() + 60, "acl": {}}));
        let acl = v.verify(empty.as_bytes()).unwrap().acl.unwrap();
        assert!(!acl.check(
            &Subject {
                username: Some("a"),
                client_id: "c"
            },
            Access::Read,
            "x"
        ));
        let null = hs_token(&json!({"sub": "a", "exp": now() + 60, "acl": null}));
        assert_eq!(v.verify(null.as_bytes()).unwrap().acl, None);
    }

    #[test]
    fn config_deserializes_with_defaults_and_redacts() {
        let c: JwtConfig =
            serde_json::from_value(json!({"algorithm": "HS256", "secret": HS_SECRET})).unwrap();
        assert_eq!(c.leeway_secs, 5);
        assert!(c.require_exp);
        assert_eq!(c.username_claim, "sub");
        assert_eq!(c.client_id_claim, "client_id");
        assert_eq!(c.acl_claim, "acl");
        let lower: JwtConfig =
            serde_json::from_value(json!({"algorithm": "es384", "public_key_file": "k"})).unwrap();
        assert_eq!(lower.algorithm, JwtAlgorithm::Es384);
        assert!(
            serde_json::from_value::<JwtConfig>(json!({"algorithm": "HS256", "secrte": "x"}))
                .is_err()
        );
        assert!(serde_json::from_value::<JwtConfig>(json!({"algorithm": "none"})).is_err());

        let shown = format!("{c:?} {:?}", verifier(&c));
        assert!(!shown.contains(HS_SECRET), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn validate_reports_every_problem() {
        let dir = TempDir::new("validate");
        let mut c = JwtConfig::new(JwtAlgorithm::Hs256);
        c.public_key_file = Some(dir.file("k", RSA_PUBLIC));
        c.issuer = Some(String::new());
        c.leeway_secs = 3600;
        c.username_claim = String::new();
        let fields: Vec<String> = c.validate().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "secret",
                "public_key_file",
                "issuer",
                "leeway_secs",
                "username_claim"
            ]
        );

        let mut unreadable = JwtConfig::new(JwtAlgorithm::Es256);
        unreadable.public_key_file = Some(dir.0.join("missing.pem"));
        unreadable.audience = Some(String::new());
        let fields: Vec<String> = unreadable.validate().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["audience", "public_key_file"]);

        let mut both = hs_config();
        both.secret_file = Some(dir.file("s", HS_SECRET));
        assert_eq!(both.validate()[0].0, "secret_file");

        let mut short = JwtConfig::new(JwtAlgorithm::Hs512);
        short.secret = Some(Secret::new("short-secret-value"));
        let problems = short.validate();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].1.contains("64 bytes"));
        assert!(!format!("{problems:?}").contains("short-secret-value"));

        let mut file = JwtConfig::new(JwtAlgorithm::Hs256);
        file.secret_file = Some(dir.file("secret", &format!("{HS_SECRET}\n")));
        assert!(file.validate().is_empty());
        let v = verifier(&file);
        let token = hs_token(&json!({"sub": "a", "exp": now() + 60}));
        assert!(
            v.verify(token.as_bytes()).is_ok(),
            "trailing newline is not part of the secret"
        );
        file.secret_file = Some(dir.0.join("missing"));
        assert_eq!(file.validate()[0].0, "secret_file");

        let mut rsa = JwtConfig::new(JwtAlgorithm::Rs256);
        rsa.secret = Some(Secret::new(HS_SECRET));
        let fields: Vec<String> = rsa.validate().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["public_key_file", "secret"]);

        rsa.secret = None;
        rsa.public_key_file = Some(dir.file("priv", RSA_PRIVATE));
        let problems = rsa.validate();
        assert!(problems[0].1.contains("private key"), "{problems:?}");
        assert!(!format!("{problems:?}").contains("MIIEvQIBADAN"));
        rsa.public_key_file = Some(dir.file("junk", "not a key"));
        assert!(rsa.validate()[0].1.contains("not a PEM RSA public key"));
        rsa.public_key_file = Some(dir.file("ecpub", EC_PUBLIC));
        assert_eq!(rsa.validate().len(), 1);

        let mut es = JwtConfig::new(JwtAlgorithm::Es256);
        es.public_key_file = Some(dir.file("ec384", EC384_PUBLIC));
        assert!(es.validate()[0].1.contains("curve"));
        es.algorithm = JwtAlgorithm::Es384;
        assert!(es.validate().is_empty());

        let err = JwtVerifier::new(&short).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("invalid JWT configuration: secret: HS512 needs"));
    }

    #[test]
    fn shared_types_are_send_and_sync() {
        fn assert_shareable<T: Send + Sync>() {}
        assert_shareable::<JwtVerifier>();
        assert_shareable::<super::super::acl::Acl>();
        assert_shareable::<super::super::password::PasswordFile>();
    }

    #[test]
    fn refusals_never_show_the_token() {
        let v = verifier(&hs_config());
        let tokens = [
            hs_token(&json!({"sub": "a", "exp": now() - 3600})),
            hs_token(&json!({"sub": "a"})),
            hs_token(&json!({"sub": 5, "exp": now() + 60})),
            hs_token(&json!({"sub": "a", "exp": now() + 60, "acl": {"pub": ["SECRETTOPIC/#/x"]}})),
            "eyJhbGciOiJIUzI1NiJ9.SECRETPAYLOAD.SIG".to_string(),
        ];
        for token in tokens {
            let refusal = v.verify(token.as_bytes()).unwrap_err();
            let shown = format!("{refusal} {refusal:?} {}", refusal.label());
            for part in token.split('.') {
                assert!(part.len() < 4 || !shown.contains(part), "{shown}");
            }
            assert!(!shown.contains("SECRETTOPIC") && !shown.contains(HS_SECRET));
        }
    }
}
