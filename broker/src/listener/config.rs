//! `[[listeners]]`: where devices connect, over which transport, and with
//! which authentication settings.
//!
//! Without any `[[listeners]]` Tributary listens for plain MQTT on
//! `mqtt.listen` alone (the built-in default, and every config written before
//! listeners existed). With them, they are the whole list: a plain listener is
//! one entry like the others, so each can have its own bind address and its
//! own authentication (e.g. 1883 on 127.0.0.1 for local tools, 8883 with client
//! certificates for devices).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use tributary_bridge::problems::deserialize_one_of;
use tributary_bridge::Problems;

/// The WebSocket path MQTT clients use by default (mqtt.js, Paho).
pub const DEFAULT_WS_PATH: &str = "/mqtt";

/// How devices reach one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// MQTT over TCP (default port 1883).
    Tcp,
    /// MQTT over TLS (default port 8883).
    Tls,
    /// MQTT over WebSocket (default port 8083).
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl TransportKind {
    pub fn label(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
            TransportKind::Ws => "ws",
            TransportKind::Wss => "wss",
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, TransportKind::Tls | TransportKind::Wss)
    }

    pub fn is_websocket(self) -> bool {
        matches!(self, TransportKind::Ws | TransportKind::Wss)
    }
}

impl<'de> Deserialize<'de> for TransportKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_one_of(
            deserializer,
            &[
                ("tcp", TransportKind::Tcp),
                ("tls", TransportKind::Tls),
                ("ws", TransportKind::Ws),
                ("wss", TransportKind::Wss),
            ],
        )
    }
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Names the listener in logs and in the `listener` label of metrics.
    /// Default: the transport and port, e.g. `tls-8883`.
    #[serde(default)]
    pub name: String,
    /// `tcp` (MQTT), `tls` (MQTT over TLS), `ws` (MQTT over WebSocket) or
    /// `wss` (MQTT over WebSocket over TLS).
    pub transport: TransportKind,
    /// Address to bind, e.g. `0.0.0.0:8883`.
    pub listen: String,
    /// (tls, wss) The server's certificate chain, PEM, leaf first. Reloaded
    /// when the file changes and on SIGHUP; new connections get the new one.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// (tls, wss) The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// (tls, wss) PEM bundle of the CAs whose client certificates are accepted.
    /// With it, a client certificate is verified when one is presented.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// (tls, wss) Refuse a TLS handshake without a valid client certificate
    /// (mutual TLS). Needs `client_ca_file`.
    #[serde(default)]
    pub require_client_cert: bool,
    /// (tls, wss) The client certificate's identity (its subject CN, or its
    /// first subject alternative name when it has no CN) is the connection's
    /// user name, as Mosquitto's `use_identity_as_username`: the password is
    /// not checked. A connection without a certificate is authenticated as the
    /// listener's other settings say. Needs `client_ca_file`.
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// (tls, wss) The client id a device connects with must equal its
    /// certificate's identity; otherwise it is refused (not authorized).
    /// Needs `require_client_cert`.
    #[serde(default)]
    pub require_client_id_match: bool,
    /// (ws, wss) The HTTP path of the WebSocket endpoint.
    #[serde(default = "default_ws_path")]
    pub ws_path: String,
    /// Accept clients that send no credentials on this listener. Default:
    /// `auth.allow_anonymous`.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
}

fn default_ws_path() -> String {
    DEFAULT_WS_PATH.into()
}

impl ListenerConfig {
    /// True when anyone who reaches this listener gets in without a checked
    /// credential: anonymous clients are allowed, or nothing checks the
    /// credentials given; a required client certificate closes it.
    pub fn takes_anyone(&self, auth: &crate::auth::AuthConfig) -> bool {
        let unchecked =
            self.allow_anonymous.unwrap_or(auth.anonymous_allowed()) || !auth.checks_credentials();
        unchecked && !self.require_client_cert
    }

    /// The plain MQTT listener used when no `[[listeners]]` are configured.
    pub fn plain(listen: &str) -> ListenerConfig {
        ListenerConfig {
            name: "mqtt".into(),
            transport: TransportKind::Tcp,
            listen: listen.into(),
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            require_client_cert: false,
            use_identity_as_username: false,
            require_client_id_match: false,
            ws_path: default_ws_path(),
            allow_anonymous: None,
        }
    }

    /// Its name as configured, or made from its transport and port.
    pub fn display_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        match self.listen.parse::<SocketAddr>() {
            Ok(addr) => format!("{}-{}", self.transport.label(), addr.port()),
            Err(_) => self.transport.label().to_owned(),
        }
    }

    /// Records every problem of this entry, found at `at`.
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if self.listen.parse::<SocketAddr>().is_err() {
            problems.push(
                format!("{at}.listen"),
                format!("'{}' is not an address like 0.0.0.0:8883", self.listen),
            );
        }
        let tls_only = [
            ("cert_file", self.cert_file.is_some()),
            ("key_file", self.key_file.is_some()),
            ("client_ca_file", self.client_ca_file.is_some()),
            ("require_client_cert", self.require_client_cert),
            ("use_identity_as_username", self.use_identity_as_username),
            ("require_client_id_match", self.require_client_id_match),
        ];
        if self.transport.is_tls() {
            for (field, present) in [
                ("cert_file", self.cert_file.is_some()),
                ("key_file", self.key_file.is_some()),
            ] {
                if !present {
                    problems.push(
                        format!("{at}.{field}"),
                        format!("required for transport `{}`", self.transport.label()),
                    );
                }
            }
            let needs_ca = [
                ("require_client_cert", self.require_client_cert),
                ("use_identity_as_username", self.use_identity_as_username),
            ];
            for (field, set) in needs_ca {
                if set && self.client_ca_file.is_none() {
                    problems.push(
                        format!("{at}.{field}"),
                        "needs client_ca_file (the CAs client certificates are checked against)",
                    );
                }
            }
            if self.require_client_id_match && !self.require_client_cert {
                problems.push(
                    format!("{at}.require_client_id_match"),
                    "needs require_client_cert = true",
                );
            }
        } else {
            for (field, set) in tls_only {
                if set {
                    problems.push(
                        format!("{at}.{field}"),
                        format!(
                            "only for transport `tls` or `wss`, this listener is `{}`",
                            self.transport.label()
                        ),
                    );
                }
            }
        }
        if self.transport.is_websocket() {
            if !self.ws_path.starts_with('/') || self.ws_path.contains(['?', '#', ' ']) {
                problems.push(
                    format!("{at}.ws_path"),
                    format!("'{}' is not a path like /mqtt", self.ws_path),
                );
            }
        } else if self.ws_path != DEFAULT_WS_PATH {
            problems.push(
                format!("{at}.ws_path"),
                format!(
                    "only for transport `ws` or `wss`, this listener is `{}`",
                    self.transport.label()
                ),
            );
        }
    }
}

/// Records problems between listeners: names and addresses must differ.
pub fn validate_listeners(listeners: &[ListenerConfig], problems: &mut Problems) {
    for (i, listener) in listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        listener.validate(&at, problems);
        let earlier = &listeners[..i];
        let name = listener.display_name();
        if earlier.iter().any(|other| other.display_name() == name) {
            problems.push(
                format!("{at}.name"),
                format!("another listener is named '{name}'"),
            );
        }
        let port_zero = listener
            .listen
            .parse::<SocketAddr>()
            .is_ok_and(|addr| addr.port() == 0);
        if !port_zero && earlier.iter().any(|other| other.listen == listener.listen) {
            problems.push(
                format!("{at}.listen"),
                format!("another listener binds {}", listener.listen),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(listeners: &[ListenerConfig]) -> Vec<String> {
        let mut problems = Problems::new();
        validate_listeners(listeners, &mut problems);
        problems.iter().map(|p| p.to_string()).collect()
    }

    fn tls(listen: &str) -> ListenerConfig {
        ListenerConfig {
            transport: TransportKind::Tls,
            cert_file: Some("c.pem".into()),
            key_file: Some("k.pem".into()),
            ..ListenerConfig::plain(listen)
        }
    }

    #[test]
    fn a_listener_takes_anyone_unless_credentials_or_certificates_are_checked() {
        use crate::auth::AuthConfig;
        let open = AuthConfig::default();
        let passwords = AuthConfig {
            password_file: Some("passwd".into()),
            ..AuthConfig::default()
        };
        let plain = ListenerConfig::plain("127.0.0.1:1883");
        assert!(plain.takes_anyone(&open));
        assert!(!plain.takes_anyone(&passwords));
        // Anonymous clients allowed on this listener: open again.
        let anonymous = ListenerConfig {
            allow_anonymous: Some(true),
            ..plain.clone()
        };
        assert!(anonymous.takes_anyone(&passwords));
        // Anonymous refused, but nothing checks the user names given.
        let no_anonymous = ListenerConfig {
            allow_anonymous: Some(false),
            ..plain
        };
        assert!(no_anonymous.takes_anyone(&open));
        let mutual_tls = ListenerConfig {
            require_client_cert: true,
            client_ca_file: Some("ca.pem".into()),
            ..tls("0.0.0.0:8883")
        };
        assert!(!mutual_tls.takes_anyone(&open));
    }

    #[test]
    fn a_tls_listener_needs_its_certificate_and_key() {
        let listener = ListenerConfig {
            transport: TransportKind::Tls,
            ..ListenerConfig::plain("0.0.0.0:8883")
        };
        let problems = problems_of(&[listener]);
        assert_eq!(
            problems,
            [
                "listeners[0].cert_file: required for transport `tls`",
                "listeners[0].key_file: required for transport `tls`",
            ]
        );
    }

    #[test]
    fn client_certificate_options_need_a_ca_and_tls() {
        let listener = ListenerConfig {
            require_client_cert: false,
            use_identity_as_username: true,
            require_client_id_match: true,
            ..tls("0.0.0.0:8883")
        };
        let problems = problems_of(&[listener]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("listeners[0].use_identity_as_username: needs client_ca_file")
        );
        assert!(problems[1]
            .starts_with("listeners[0].require_client_id_match: needs require_client_cert"));

        let plain = ListenerConfig {
            client_ca_file: Some("ca.pem".into()),
            ..ListenerConfig::plain("0.0.0.0:1883")
        };
        assert_eq!(
            problems_of(&[plain]),
            ["listeners[0].client_ca_file: only for transport `tls` or `wss`, this listener is `tcp`"]
        );
    }

    #[test]
    fn two_listeners_cannot_share_a_name_or_an_address() {
        let a = ListenerConfig::plain("127.0.0.1:1883");
        let b = ListenerConfig {
            name: "other".into(),
            ..ListenerConfig::plain("127.0.0.1:1883")
        };
        let c = ListenerConfig::plain("127.0.0.1:1884");
        let problems = problems_of(&[a, b, c]);
        assert_eq!(
            problems,
            [
                "listeners[1].listen: another listener binds 127.0.0.1:1883",
                "listeners[2].name: another listener is named 'mqtt'",
            ]
        );
    }

    #[test]
    fn default_names_say_transport_and_port() {
        let listener = ListenerConfig {
            name: String::new(),
            ..tls("0.0.0.0:8883")
        };
        assert_eq!(listener.display_name(), "tls-8883");
    }

    #[test]
    fn a_websocket_path_is_a_path() {
        let listener = ListenerConfig {
            transport: TransportKind::Ws,
            ws_path: "mqtt".into(),
            ..ListenerConfig::plain("0.0.0.0:8083")
        };
        assert_eq!(
            problems_of(&[listener]),
            ["listeners[0].ws_path: 'mqtt' is not a path like /mqtt"]
        );
    }
}
