//! The MQTT accept loop: the connection limit lives here.
//!
//! It never reads MQTT itself; each accepted socket goes to its own task.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events;

/// Pause after a failed `accept()` (e.g. out of file descriptors) so the loop does
/// not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts until `shutdown`, running `serve` for each connection under `tasks`.
/// At `max_connections` further sockets are closed at once and counted.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    max_connections: usize,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
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
                reason: "connection_limit",
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
            1,
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
