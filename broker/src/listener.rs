//! The MQTT accept loop: the connection limit lives here.
//!
//! It never reads MQTT itself; each accepted socket goes to its own task.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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
        events::ConnectionAccepted { peer }.emit();
        let connection = serve(stream, peer);
        tasks.spawn(async move {
            connection.await;
            events::ConnectionClosed.emit();
            drop(slot);
        });
    }
}
