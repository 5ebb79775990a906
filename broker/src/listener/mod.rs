//! Where devices connect: one accept loop per `[[listeners]]` entry, the
//! connection limit they share, and each transport's handshake (TLS,
//! WebSocket) before the link sees a byte of MQTT.
//!
//! It never reads MQTT itself; each accepted socket goes to its own task, and
//! a slow or hostile handshake holds only that task, for at most the connect
//! timeout.

pub mod config;
pub mod tls;
pub mod websocket;

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use futures::FutureExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events;
use crate::link::{LinkContext, Transport};
use config::{ListenerConfig, TransportKind};
use tls::{CertIdentity, TlsConfig};
use websocket::WsSettings;

/// Pause after a failed `accept()` (e.g. out of file descriptors) so the loop does
/// not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// One configured listener, ready to turn accepted sockets into MQTT byte
/// streams.
pub struct Listener {
    pub name: Arc<str>,
    pub transport: TransportKind,
    tls: Option<Arc<TlsConfig>>,
    ws: Option<WsSettings>,
    auth: Arc<ListenerAuth>,
}

/// A listener's own authentication settings, which the link applies at
/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerAuth {
    pub name: Arc<str>,
    /// Overrides `auth.allow_anonymous` on this listener.
    pub allow_anonymous: Option<bool>,
    /// A verified client certificate's identity is the user name.
    pub use_identity_as_username: bool,
    /// The client id must equal the certificate's identity.
    pub require_client_id_match: bool,
}

impl ListenerAuth {
    /// For connections that come by no listener (in-process tools, the fuzz
    /// target): the `[auth]` section's settings, nothing of a listener's own.
    pub fn in_process() -> Arc<ListenerAuth> {
        Arc::new(ListenerAuth {
            name: "in-process".into(),
            allow_anonymous: None,
            use_identity_as_username: false,
            require_client_id_match: false,
        })
    }
}

/// What the link learns of how a connection arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub peer: SocketAddr,
    pub listener: Arc<ListenerAuth>,
    /// The identity of a client certificate the TLS handshake verified.
    pub cert: Option<CertIdentity>,
}

impl Listener {
    /// Builds a listener from its (validated) configuration; its TLS files are
    /// read now, so a listener with a broken certificate never starts.
    pub fn new(config: &ListenerConfig, max_packet_size: usize) -> anyhow::Result<Listener> {
        let name: Arc<str> = config.display_name().into();
        let tls = match tls::TlsFiles::of(config) {
            Some(files) => Some(Arc::new(TlsConfig::load(&name, files)?)),
            None if config.transport.is_tls() => {
                anyhow::bail!("listener {name}: cert_file and key_file are required")
            }
            None => None,
        };
        let ws = config.transport.is_websocket().then(|| WsSettings {
            path: config.ws_path.clone(),
            max_message_size: WsSettings::max_message_size_for(max_packet_size),
            ..WsSettings::default()
        });
        Ok(Listener {
            auth: Arc::new(ListenerAuth {
                name: name.clone(),
                allow_anonymous: config.allow_anonymous,
                use_identity_as_username: config.use_identity_as_username,
                require_client_id_match: config.require_client_id_match,
            }),
            name,
            transport: config.transport,
            tls,
            ws,
        })
    }

    /// Its TLS configuration, for reloading.
    pub fn tls(&self) -> Option<&Arc<TlsConfig>> {
        self.tls.as_ref()
    }

    /// Serves one accepted socket: the transport's handshake, bounded by the
    /// connect timeout, then MQTT to the connection's end. Combinators, not
    /// an async fn: once the handshake is done the task holds the link's
    /// future alone, and the handshake's state (boxed, with its timer) is
    /// gone.
    pub fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        ctx: Arc<LinkContext>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let timeout = ctx.config.connect_timeout;
        let listener = self.clone();
        let handshake =
            Box::pin(async move { tokio::time::timeout(timeout, listener.upgrade(stream)).await });
        handshake.then(move |upgraded| {
            let upgraded = match upgraded {
                Ok(upgraded) => upgraded,
                Err(_) => Err("handshake_timeout"),
            };
            match upgraded {
                Ok((transport, cert)) => {
                    let arrival = Arrival {
                        peer,
                        listener: self.auth.clone(),
                        cert,
                    };
                    Either::Left(crate::link::serve(transport, arrival, ctx))
                }
                Err(reason) => {
                    events::HandshakeFailed {
                        peer,
                        listener: &self.name,
                        reason,
                    }
                    .emit();
                    Either::Right(std::future::ready(()))
                }
            }
        })
    }

    /// The transport's handshake; the reason label when it fails.
    async fn upgrade(
        &self,
        stream: TcpStream,
    ) -> Result<(Box<dyn Transport>, Option<CertIdentity>), &'static str> {
        match (self.transport, &self.tls, &self.ws) {
            (TransportKind::Tcp, _, _) => Ok((Box::new(stream), None)),
            (TransportKind::Tls, Some(tls), _) => {
                let stream = tls.accept(stream).await.map_err(|_| "tls_handshake")?;
                let cert = tls::peer_identity(&stream);
                Ok((Box::new(stream), cert))
            }
            (TransportKind::Ws, _, Some(ws)) => {
                let stream = websocket::accept(stream, ws)
                    .await
                    .map_err(|refused| refused.label())?;
                Ok((Box::new(stream), None))
            }
            (TransportKind::Wss, Some(tls), Some(ws)) => {
                let stream = tls.accept(stream).await.map_err(|_| "tls_handshake")?;
                let cert = tls::peer_identity(&stream);
                let stream = websocket::accept(stream, ws)
                    .await
                    .map_err(|refused| refused.label())?;
                Ok((Box::new(stream), cert))
            }
            // `Listener::new` builds the TLS and WebSocket parts its transport
            // needs; never reached.
            _ => Err("misconfigured"),
        }
    }
}

/// Accepts until `shutdown`, running `serve` for each connection under `tasks`.
/// When `slots` are all taken further sockets are closed at once and counted.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                events::AcceptFailed { error: &error }.emit();
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            events::ConnectionRefused {
                peer,
                reason: events::CONNECTION_LIMIT,
            }
            .emit();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let held = Held::accepted(peer, slot);
        let connection = serve(stream, peer);
        // A bug must cost one connection, never the count or the slot:
        // `held` is released however the task ends. (Combinators, not an
        // async block: an async block would hold the connection's future
        // twice over, and idle connections would cost twice the memory.)
        tasks.spawn(contain_panic(peer, connection).map(move |_| drop(held)));
    }
}

/// A connection's task panicked (a bug; already logged and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Panicked;

/// Runs one connection's future; a panic in it ends only that connection, is
/// logged and counted. A plain function returning a combinator: the
/// connection's future is held once, not copied into an async fn's state.
pub fn contain_panic(
    peer: SocketAddr,
    connection: impl Future<Output = ()>,
) -> impl Future<Output = Result<(), Panicked>> {
    AssertUnwindSafe(connection)
        .catch_unwind()
        .map(move |outcome| {
            if outcome.is_err() {
                events::ConnectionPanicked { peer }.emit();
            }
            outcome.map_err(|_| Panicked)
        })
}

/// What an accepted connection holds: its place under the connection limit and
/// in the connection count. Dropped on every path out of the connection's
/// task, a panic included.
struct Held {
    _slot: OwnedSemaphorePermit,
}

impl Held {
    fn accepted(peer: SocketAddr, slot: OwnedSemaphorePermit) -> Held {
        events::ConnectionAccepted { peer }.emit();
        Held { _slot: slot }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        events::ConnectionClosed.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_panicking_connection_gives_its_slot_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let accepting = tokio::spawn(accept_loop(
            listener,
            Arc::new(Semaphore::new(1)),
            tasks.clone(),
            shutdown.clone(),
            move |_stream, _peer| {
                counter.fetch_add(1, Ordering::SeqCst);
                async { panic!("a bug in a connection") }
            },
        ));
        // With one slot, each connection is served only if the one before,
        // which panicked, released it.
        for expected in 1..=3 {
            let _stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while served.load(Ordering::SeqCst) < expected {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "connection {expected} not served"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            while !tasks.is_empty() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "task {expected} still running"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        shutdown.cancel();
        accepting.await.unwrap();
    }
}
