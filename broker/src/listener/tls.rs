//! TLS for the `tls` and `wss` listeners: the server certificate, client
//! certificates (mutual TLS) and the identity they carry, and reloading the
//! files without a restart.
//!
//! A reload that fails (a half-written file, a key that does not match its
//! certificate) is refused with a log line and the configuration that was
//! serving keeps serving: rotating a certificate must never take a listener
//! down. Key material never reaches a log line or an error message; only file
//! paths and what is wrong with them do.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::config::ListenerConfig;

/// Why a TLS configuration could not be built from its files.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
    #[error("the certificate in {cert} and the key in {key} do not go together: {problem}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        problem: String,
    },
}

/// The files one TLS listener is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: bool,
}

impl TlsFiles {
    /// The TLS files of a `tls` or `wss` listener; `None` for the others (and
    /// for one whose config was not validated).
    pub fn of(listener: &ListenerConfig) -> Option<TlsFiles> {
        if !listener.transport.is_tls() {
            return None;
        }
        Some(TlsFiles {
            cert: listener.cert_file.clone()?,
            key: listener.key_file.clone()?,
            client_ca: listener.client_ca_file.clone(),
            require_client_cert: listener.require_client_cert,
        })
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    /// Reads and checks every file and builds the server's configuration.
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs = read_certs(&self.cert)?;
        let key = read_key(&self.key)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|error| TlsError::Invalid {
                path: self.cert.clone(),
                problem: error.to_string(),
            })?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(path)? {
                    roots.add(cert).map_err(|error| TlsError::Invalid {
                        path: path.clone(),
                        problem: format!("not a usable CA certificate: {error}"),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if self.require_client_cert {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier.build().map_err(|error| TlsError::Invalid {
                    path: path.clone(),
                    problem: error.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        builder
            .with_single_cert(certs, key)
            .map_err(|error| TlsError::Mismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
                problem: error.to_string(),
            })
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Invalid {
            path: path.to_owned(),
            problem: format!("not PEM certificates: {error}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            path: path.to_owned(),
            problem: "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    // The parser's error names the PEM section, never its contents.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| TlsError::Invalid {
        path: path.to_owned(),
        problem: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {error}"),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// What identifies a file's version: a rotation changes one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// No file changed.
    Unchanged,
    /// New connections now get the new configuration.
    Replaced,
    /// A file changed but could not be used; the old configuration serves on.
    Refused,
}

/// A TLS listener's current configuration: handshakes take it as it is when
/// they start, so a reload never disturbs a connection already made.
pub struct TlsConfig {
    listener: String,
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
    stamps: Mutex<Vec<Option<Stamp>>>,
}

impl TlsConfig {
    /// Loads the files once; the listener does not start without them.
    pub fn load(listener: &str, files: TlsFiles) -> Result<TlsConfig, TlsError> {
        let stamps = files.paths().map(stamp).collect();
        let config = files.load()?;
        Ok(TlsConfig {
            listener: listener.to_owned(),
            files,
            current: ArcSwap::from_pointee(config),
            stamps: Mutex::new(stamps),
        })
    }

    /// Loads the files again if any changed (or if `force`, on SIGHUP).
    pub fn reload(&self, force: bool) -> Reloaded {
        let now: Vec<_> = self.files.paths().map(stamp).collect();
        let mut stamps = match self.stamps.lock() {
            Ok(stamps) => stamps,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !force && *stamps == now {
            return Reloaded::Unchanged;
        }
        // Whatever happens, this version of the files has been looked at: a
        // broken file is reported once, not at every poll.
        *stamps = now;
        match self.files.load() {
            Ok(config) => {
                self.current.store(Arc::new(config));
                crate::events::TlsReloaded {
                    listener: &self.listener,
                    error: None,
                }
                .emit();
                Reloaded::Replaced
            }
            Err(error) => {
                crate::events::TlsReloaded {
                    listener: &self.listener,
                    error: Some(&error),
                }
                .emit();
                Reloaded::Refused
            }
        }
    }

    /// Runs the TLS handshake with the configuration current now.
    pub async fn accept<S>(&self, stream: S) -> std::io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        TlsAcceptor::from(self.current.load_full())
            .accept(stream)
            .await
    }
}

/// Who a verified client certificate says the device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject's common name, or the first subject alternative name
    /// (DNS name, e-mail address or URI) of a certificate without one.
    pub name: String,
}

/// The identity in the certificate a TLS client presented (and the handshake
/// verified), if any.
pub fn peer_identity<S>(stream: &TlsStream<S>) -> Option<CertIdentity> {
    let (_, connection) = stream.get_ref();
    let leaf = connection.peer_certificates()?.first()?;
    identity_of(leaf.as_ref())
}

fn identity_of(der: &[u8]) -> Option<CertIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty());
    let name = match common_name {
        Some(cn) => cn.to_owned(),
        None => {
            let sans = cert.subject_alternative_name().ok()??;
            sans.value
                .general_names
                .iter()
                .find_map(|name| match name {
                    GeneralName::DNSName(name)
                    | GeneralName::RFC822Name(name)
                    | GeneralName::URI(name) => Some((*name).to_owned()),
                    _ => None,
                })?
        }
    };
    Some(CertIdentity { name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_is_the_common_name_else_the_first_alternative_name() {
        let mut params = rcgen::CertificateParams::new(vec!["device-7.example".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sensor-42");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            identity_of(cert.der()).map(|id| id.name),
            Some("sensor-42".to_owned())
        );

        let mut params = rcgen::CertificateParams::new(vec!["device-7.example".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            identity_of(cert.der()).map(|id| id.name),
            Some("device-7.example".to_owned())
        );
    }

    #[test]
    fn a_broken_file_is_named_and_its_contents_are_not_printed() {
        let dir = tempdir();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.join("server.pem");
        let key_path = dir.join("server.key");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        // Another key: the pair does not match.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&key_path, other.serialize_pem()).unwrap();
        let files = TlsFiles {
            cert: cert_path.clone(),
            key: key_path.clone(),
            client_ca: None,
            require_client_cert: false,
        };
        let error = files.load().unwrap_err().to_string();
        assert!(error.contains("server.pem"), "{error}");
        let secret_line = other.serialize_pem().lines().nth(1).unwrap().to_owned();
        assert!(!error.contains(&secret_line), "{error}");

        std::fs::write(&key_path, "-----BEGIN PRIVATE KEY-----\nnot base64!\n").unwrap();
        let error = files.load().unwrap_err().to_string();
        assert!(error.contains("server.key"), "{error}");
        assert!(!error.contains("not base64"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_reload_keeps_the_old_configuration_and_a_good_one_replaces_it() {
        let dir = tempdir();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let files = TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: None,
            require_client_cert: false,
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        let tls = TlsConfig::load("test", files.clone()).unwrap();
        let before = tls.current.load_full();
        assert_eq!(tls.reload(false), Reloaded::Unchanged);

        std::fs::write(
            &files.cert,
            "garbage, longer than before to change the length",
        )
        .unwrap();
        assert_eq!(tls.reload(false), Reloaded::Refused);
        assert!(Arc::ptr_eq(&before, &tls.current.load_full()));
        // Reported once, not at every poll.
        assert_eq!(tls.reload(false), Reloaded::Unchanged);

        std::fs::write(&files.cert, cert.pem()).unwrap();
        assert_eq!(tls.reload(true), Reloaded::Replaced);
        assert!(!Arc::ptr_eq(&before, &tls.current.load_full()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tributary-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
