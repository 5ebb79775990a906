//! The CONNECT handshake: the first packet, the protocol version, the client id
//! rules, and every refusal answered with a proper CONNACK where MQTT has one.
//!
//! Then [`open`] takes the registry and any stored session into account and
//! builds the connection's link, up to its CONNACK.
//!
//! It never lets the router see a client id it would drop silently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{ConnAck, ConnectProperties, ConnectReturnCode, Login, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::connection::{self, Connection, Transport};
use super::inbound::Inbound;
use super::outbound::Outbound;
use super::registry::Registration;
use super::session::Session;
use super::session_store::{Expiry, Parked};
use super::will::PendingWill;
use super::{Link, LinkContext, DEFAULT_CLIENT_WINDOW};
use crate::auth::{Access, Authenticator, Credentials, Identity, Refusal};
use crate::events;
use crate::link::codec::{next_frame, Version, CONNECT};
use crate::link::will::Will;
use crate::link::{valid_topic_name, LinkConfig};
use crate::listener::Arrival;
use crate::router::{Port, RESERVED_CLIENT_PREFIX};

/// What a valid CONNECT asked for.
pub struct Connect {
    pub version: Version,
    pub client_id: Arc<str>,
    /// The id was assigned by Tributary (the CONNECT's was empty).
    pub assigned: bool,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    pub properties: Option<ConnectProperties>,
    /// User name and password, if it sent any.
    pub login: Option<Login>,
}

/// Why a connection ended during the handshake.
#[derive(Debug)]
pub enum Refused {
    /// Refused with this CONNACK, which must be sent before closing.
    WithConnAck {
        version: Version,
        code: ConnectReturnCode,
        reason: &'static str,
    },
    /// Closed without a CONNACK (MQTT has none to give).
    Closed { reason: &'static str },
}

impl Refused {
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::WithConnAck { reason, .. } | Refused::Closed { reason } => reason,
        }
    }

    /// The CONNACK to send, if any.
    pub fn connack(&self) -> Option<(Version, Packet)> {
        match self {
            Refused::WithConnAck { version, code, .. } => Some((
                *version,
                Packet::ConnAck(
                    ConnAck {
                        session_present: false,
                        code: *code,
                    },
                    None,
                ),
            )),
            Refused::Closed { .. } => None,
        }
    }
}

/// Reads and checks the first packet, which must be a CONNECT arriving within
/// the connect timeout.
pub async fn read_connect<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    config: &LinkConfig,
) -> Result<Connect, Refused> {
    let frame = tokio::time::timeout(config.connect_timeout, async {
        loop {
            match next_frame(buf, config.max_packet_size) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(_) => {
                    return Err(Refused::Closed {
                        reason: "malformed",
                    })
                }
            }
            match reader.read_buf(buf).await {
                Ok(0) | Err(_) => {
                    return Err(Refused::Closed {
                        reason: "closed_before_connect",
                    })
                }
                Ok(_) => {}
            }
        }
    })
    .await
    .map_err(|_| Refused::Closed {
        reason: "connect_timeout",
    })??;

    if frame.packet_type() != CONNECT {
        // [MQTT-3.1.0-1]: the first packet must be CONNECT.
        return Err(Refused::Closed {
            reason: "not_connect",
        });
    }
    if frame.byte1() & 0x0f != 0 {
        // [MQTT-2.1.3-1]: CONNECT's flags are reserved, zero.
        return Err(Refused::Closed {
            reason: "malformed",
        });
    }
    let version = match frame.connect_protocol() {
        Some((b"MQTT", 4)) => Version::V4,
        Some((b"MQTT", 5)) => Version::V5,
        // [MQTT-3.1.2-2]: CONNACK 0x01 for a level we do not speak, in the
        // 3.1.1 shape even above 5: a client of a future version reads it.
        Some((b"MQTT", _)) | Some((b"MQIsdp", _)) => {
            return Err(Refused::WithConnAck {
                version: Version::V4,
                code: ConnectReturnCode::RefusedProtocolVersion,
                reason: "unsupported_protocol",
            });
        }
        _ => {
            return Err(Refused::Closed {
                reason: "malformed",
            })
        }
    };

    let flags = frame.connect_flags().unwrap_or(0);
    if flags & 0b0000_0001 != 0 {
        // [MQTT-3.1.2-3]: the reserved flag must be zero.
        return Err(Refused::Closed {
            reason: "malformed",
        });
    }
    if version == Version::V4 && flags & 0b0100_0000 != 0 && flags & 0b1000_0000 == 0 {
        // [MQTT-3.1.2-22]: no password without a user name in MQTT 3.1.1.
        return Err(Refused::Closed {
            reason: "malformed",
        });
    }

    let mut bytes = frame.bytes;
    let Ok(Packet::Connect(connect, properties, will, will_properties, login)) =
        version.decode(&mut bytes)
    else {
        return Err(Refused::Closed {
            reason: "malformed",
        });
    };

    let refuse_id = || Refused::WithConnAck {
        version,
        code: ConnectReturnCode::ClientIdentifierNotValid,
        reason: "client_id",
    };
    let (client_id, assigned) = if connect.client_id.is_empty() {
        if version == Version::V4 && !connect.clean_session {
            // [MQTT-3.1.3-8]: an empty id needs a clean session.
            return Err(refuse_id());
        }
        (assign_client_id(), true)
    } else {
        // The router drops these silently; answer the device instead.
        if connect.client_id.contains(['+', '$', '#', '/'])
            || connect.client_id.starts_with(RESERVED_CLIENT_PREFIX)
        {
            return Err(refuse_id());
        }
        (connect.client_id, false)
    };

    if properties.as_ref().and_then(|p| p.receive_maximum) == Some(0) {
        // [MQTT-3.1.4-1]: Receive Maximum 0 is a Protocol Error.
        return Err(Refused::WithConnAck {
            version,
            code: ConnectReturnCode::ProtocolError,
            reason: "receive_maximum_zero",
        });
    }

    let session_expiry = properties
        .as_ref()
        .and_then(|p| p.session_expiry_interval)
        .unwrap_or(0);
    let will = match will {
        Some(will) => {
            if !std::str::from_utf8(&will.topic).is_ok_and(valid_topic_name) {
                return Err(match version {
                    Version::V5 => Refused::WithConnAck {
                        version,
                        code: ConnectReturnCode::TopicNameInvalid,
                        reason: "will_topic",
                    },
                    Version::V4 => Refused::Closed {
                        reason: "will_topic",
                    },
                });
            }
            Some(Will::from_connect(will, will_properties, session_expiry))
        }
        None => None,
    };

    Ok(Connect {
        version,
        client_id: client_id.into(),
        assigned,
        clean_session: connect.clean_session,
        keep_alive: connect.keep_alive,
        will,
        properties,
        login,
    })
}

/// A client id unique within this process's lifetime and across restarts.
fn assign_client_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("tributary-{started:x}-{n:x}")
}

/// Who the client on `arrival` is, from the credentials it sent.
fn authenticate(
    auth: &Authenticator,
    arrival: &Arrival,
    client_id: &str,
    login: Option<&Login>,
) -> Result<Arc<Identity>, Refusal> {
    let credentials = Credentials {
        username: login.map(|l| l.username.as_str()),
        password: login.map(|l| l.password.as_bytes()),
    };
    auth.authenticate(
        &arrival.listener,
        arrival.cert.as_ref(),
        client_id,
        credentials,
    )
}

/// Answers a refused CONNECT where MQTT has a way, and counts it.
async fn refuse(stream: &mut Box<dyn Transport>, peer: std::net::SocketAddr, refused: Refused) {
    if let Some((version, connack)) = refused.connack() {
        let mut out = BytesMut::new();
        if version.encode(connack, &mut out).is_ok() && stream.write_all(&out).await.is_ok() {
            let _ = stream.flush().await;
        }
    }
    events::ConnectRefused {
        peer,
        reason: refused.reason(),
    }
    .emit();
}

/// The handshake up to CONNACK: a link, or `None` when the connection was
/// refused (and told so where MQTT has a way).
pub(super) async fn open(
    mut stream: Box<dyn Transport>,
    arrival: Arrival,
    ctx: Arc<LinkContext>,
) -> Option<(Link, Registration)> {
    let peer = arrival.peer;
    let mut rbuf = BytesMut::with_capacity(connection::INITIAL_READ_BUFFER);
    let connect = match read_connect(&mut stream, &mut rbuf, &ctx.config).await {
        Ok(connect) => connect,
        Err(refused) => {
            refuse(&mut stream, peer, refused).await;
            return None;
        }
    };

    // Who it is, before any session is touched.
    let mut connect = connect;
    let login = connect.login.take();
    let decided = if ctx.auth.is_costly() {
        // Password hashing takes a millisecond or so of CPU: not on the
        // workers that serve every connection's packets.
        let (auth, arrival, client_id) =
            (ctx.auth.clone(), arrival.clone(), connect.client_id.clone());
        tokio::task::spawn_blocking(move || {
            authenticate(&auth, &arrival, &client_id, login.as_ref())
        })
        .await
        .unwrap_or(Err(Refusal::NotAuthorized("internal_error")))
    } else {
        authenticate(&ctx.auth, &arrival, &connect.client_id, login.as_ref())
    };
    let identity = match decided {
        Ok(identity) => {
            ctx.auth.succeeded(peer.ip());
            identity
        }
        Err(refusal) => {
            // Each failure from this address waits longer: a brute force
            // costs time.
            tokio::time::sleep(ctx.auth.failure_delay(peer.ip())).await;
            let code = match refusal {
                Refusal::BadCredentials(_) => ConnectReturnCode::BadUserNamePassword,
                Refusal::NotAuthorized(_) => ConnectReturnCode::NotAuthorized,
            };
            let refused = Refused::WithConnAck {
                version: connect.version,
                code,
                reason: refusal.label(),
            };
            refuse(&mut stream, peer, refused).await;
            return None;
        }
    };
    if let Some(will) = &mut connect.will {
        will.username = identity.username.clone();
        will.cert_cn = identity.cert_cn.clone();
    }
    if let Some(will) = &connect.will {
        let allowed = std::str::from_utf8(&will.topic)
            .is_ok_and(|topic| identity.allows(&connect.client_id, Access::Write, topic));
        if !allowed {
            // A will the client may not publish is never published.
            events::PublishDenied { qos: will.qos }.emit();
            connect.will = None;
        }
    }

    let registration = ctx.registry.register(connect.client_id.clone()).await;
    if registration.took_over {
        events::SessionTakenOver.emit();
    }
    let expiry = Expiry::from_connect(
        connect.version,
        connect.clean_session,
        connect
            .properties
            .as_ref()
            .and_then(|p| p.session_expiry_interval),
    );
    // A stored session resumes unless Clean Start says otherwise; its outbox
    // was encoded for the protocol version it was made with.
    let (session, router, session_present) = match ctx.store.take(&connect.client_id).await {
        Some(Parked { session, router })
            if !connect.clean_session && session.version == connect.version =>
        {
            (session, router, true)
        }
        Some(Parked { router, .. }) => {
            drop(router);
            (
                Session::new(connect.client_id.clone(), connect.version, identity.clone()),
                None,
                false,
            )
        }
        None => (
            Session::new(connect.client_id.clone(), connect.version, identity.clone()),
            None,
            false,
        ),
    };
    let router_resumed = router.is_some();
    let properties = connect.properties.as_ref();
    let mut session = session;
    // A resumed session reads with the identity it reconnected as.
    session.identity = identity.clone();
    session.client_max_packet_size = properties
        .and_then(|p| p.max_packet_size)
        .map_or(usize::MAX, |size| size as usize);
    let client_window = match connect.version {
        Version::V4 => DEFAULT_CLIENT_WINDOW,
        Version::V5 => properties
            .and_then(|p| p.receive_maximum)
            .map_or(usize::from(u16::MAX), usize::from),
    };
    let awaiting_pubrel = std::mem::take(&mut session.awaiting_pubrel);
    let port = Port::new(ctx.router.clone(), registration.generation(), router);
    let mut link = Link {
        client_id: connect.client_id.clone(),
        identity,
        // [MQTT-3.1.2-24]: one and a half times the interval.
        keep_alive: match ctx.config.keep_alive(connect.keep_alive) {
            0 => None,
            seconds => Some(Duration::from_millis(u64::from(seconds) * 1500)),
        },
        will: PendingWill::new(
            ctx.wills.clone(),
            connect.client_id.clone(),
            connect.will.clone(),
            port.lane().clone(),
        ),
        conn: Connection::new(stream, rbuf, connect.version, ctx.config.max_packet_size),
        inbound: Inbound::new(awaiting_pubrel),
        outbound: Outbound::new(
            session,
            client_window,
            registration.generation(),
            properties.and_then(|p| p.topic_alias_max),
        ),
        port,
        expiry,
        disconnect_expiry: None,
        ctx: ctx.clone(),
    };
    link.send_connack(&connect, session_present);
    if session_present {
        link.outbound
            .resume(router_resumed, &link.ctx, &mut link.conn, &mut link.port);
    }
    events::Connected {
        version: connect.version.label(),
    }
    .emit();
    Some((link, registration))
}
