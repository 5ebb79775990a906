//! Reloading what may change under a running server: TLS certificates, the
//! password file, the ACL, and the routes of the configuration file. Files are
//! looked at every [`RELOAD_POLL`] and reloaded when they changed; SIGHUP
//! reloads everything at once.
//!
//! A reload never takes anything down: what cannot be loaded is reported and
//! what was serving serves on (each [`Reload`] keeps that promise itself).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tributary_bridge::{RouteConfig, RouteTable};

use crate::config::{Config, ConfigSource};
use crate::events;
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

/// Watches `items` until `shutdown`; `hangup` is the SIGHUP listener,
/// installed by [`hangup_signal`] as early as the server starts (until then
/// SIGHUP would end the process).
pub fn spawn(items: Vec<Arc<dyn Reload>>, shutdown: CancellationToken, hangup: Hangup) {
    let mut hangup = hangup;
    if items.is_empty() {
        // SIGHUP is still taken (and ignored) rather than ending the process.
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = async { loop { next_hangup(&mut hangup).await } } => {}
            }
        });
        return;
    }
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(RELOAD_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = poll.tick() => false,
                () = next_hangup(&mut hangup) => true,
            };
            if force {
                tracing::info!("SIGHUP: reloading routes, certificates, password file and ACL");
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

/// The routes in use, shared by every connection; swapped whole on reload.
pub type SharedRoutes = Arc<ArcSwap<RouteTable>>;

/// The routes of the configuration file, read again when it (or an Avro
/// schema file a route reads) changes.
///
/// The whole file is read and checked as at start (environment overrides
/// included): an invalid one changes nothing, and every problem is logged.
/// Only `[[routes]]` take effect; a change anywhere else is reported once as
/// waiting for a restart. Connections are untouched: a publish takes the
/// routes in use when it arrives, so one already on its way finishes under
/// the routes it started with.
pub struct RoutesReload {
    path: std::path::PathBuf,
    source: ConfigSource,
    routes: SharedRoutes,
    state: Mutex<RoutesState>,
}

struct RoutesState {
    /// The file's modification time and size when last read.
    seen: Option<(SystemTime, u64)>,
    /// The same of each Avro schema file the routes read.
    schemas: Vec<Option<(SystemTime, u64)>>,
    /// The routes in use.
    routes: Vec<RouteConfig>,
    /// Everything else, as the server started with it (routes emptied).
    running: Config,
    /// The last settings reported as waiting for a restart.
    reported: Option<Config>,
}

impl RoutesReload {
    /// Watches the file of `source` (`None` without one); `config` is what
    /// the server started with.
    pub fn new(source: ConfigSource, config: &Config, routes: SharedRoutes) -> Option<Self> {
        let ConfigSource::File(path) = &source else {
            return None;
        };
        Some(RoutesReload {
            path: path.clone(),
            state: Mutex::new(RoutesState {
                seen: file_stamp(path),
                schemas: schema_stamps(&config.routes),
                routes: config.routes.clone(),
                running: without_routes(config),
                reported: None,
            }),
            source,
            routes,
        })
    }
}

fn without_routes(config: &Config) -> Config {
    Config {
        routes: Vec::new(),
        ..config.clone()
    }
}

fn schema_stamps(routes: &[RouteConfig]) -> Vec<Option<(SystemTime, u64)>> {
    routes
        .iter()
        .filter_map(|route| route.avro_schema.as_deref())
        .map(file_stamp)
        .collect()
}

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

impl Reload for RoutesReload {
    fn reload(&self, force: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = file_stamp(&self.path);
        let schemas = schema_stamps(&state.routes);
        let schemas_changed = schemas != state.schemas;
        if !force && stamp == state.seen && !schemas_changed {
            return;
        }
        state.seen = stamp;
        state.schemas = schemas;
        let config = match Config::load(&self.source) {
            Ok(config) => config,
            Err(error) => {
                events::RoutesNotReloaded {
                    source: &self.source,
                    problems: &error.to_string(),
                }
                .emit();
                return;
            }
        };
        if config.routes != state.routes || schemas_changed {
            let table = match RouteTable::compile(&config.routes) {
                Ok(table) => table,
                Err(problems) => {
                    events::RoutesNotReloaded {
                        source: &self.source,
                        problems: &problems.to_string(),
                    }
                    .emit();
                    return;
                }
            };
            let (added, removed, changed) = route_changes(&state.routes, &config.routes);
            self.routes.store(Arc::new(table));
            events::RoutesReloaded {
                routes: config.routes.len(),
                added,
                removed,
                changed,
            }
            .emit();
            state.routes = config.routes.clone();
            state.schemas = schema_stamps(&state.routes);
        } else if force {
            events::RoutesUnchanged.emit();
        }
        let rest = without_routes(&config);
        if rest != state.running && state.reported.as_ref() != Some(&rest) {
            events::RestartNeeded {
                source: &self.source,
            }
            .emit();
            state.reported = Some(rest);
        }
    }
}

/// How many routes were added, removed, and kept with other settings.
fn route_changes(old: &[RouteConfig], new: &[RouteConfig]) -> (usize, usize, usize) {
    let named = |routes: &[RouteConfig], name: &str| routes.iter().position(|r| r.name == name);
    let added = new.iter().filter(|r| named(old, &r.name).is_none()).count();
    let removed = old.iter().filter(|r| named(new, &r.name).is_none()).count();
    let changed = new
        .iter()
        .filter(|r| named(old, &r.name).is_some_and(|i| old[i] != **r))
        .count();
    (added, removed, changed)
}

/// The SIGHUP listener (nothing where there is no SIGHUP).
#[cfg(unix)]
pub type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub type Hangup = ();

/// Takes SIGHUP over from its default action (ending the process).
#[cfg(unix)]
pub fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
pub fn hangup_signal() -> Hangup {}

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
