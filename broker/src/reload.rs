//! Reloading what may change under a running server: TLS certificates, the
//! password file, the ACL. Files are looked at every [`RELOAD_POLL`] and
//! reloaded when they changed; SIGHUP reloads everything at once.
//!
//! A reload never takes anything down: what cannot be loaded is reported and
//! what was serving serves on (each [`Reload`] keeps that promise itself).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::listener::tls::TlsConfig;

/// How often files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// Something loaded from files that can be loaded again.
pub trait Reload: Send + Sync {
    /// Loads again if a file changed, or whatever changed if `force`.
    fn reload(&self, force: bool);
}

impl Reload for TlsConfig {
    fn reload(&self, force: bool) {
        TlsConfig::reload(self, force);
    }
}

/// Watches `items` until `shutdown`.
pub fn spawn(items: Vec<Arc<dyn Reload>>, shutdown: CancellationToken) {
    if items.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut hangup = hangup_signal();
        let mut poll = tokio::time::interval(RELOAD_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = poll.tick() => false,
                () = next_hangup(&mut hangup) => true,
            };
            if force {
                tracing::info!("SIGHUP: reloading certificates, password file and ACL");
            }
            // File reads and key parsing: off the async workers.
            let items = items.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for item in &items {
                    item.reload(force);
                }
            })
            .await;
        }
    });
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn next_hangup(hangup: &mut Hangup) {
    match hangup {
        Some(signal) => {
            if signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) {
    std::future::pending().await
}
