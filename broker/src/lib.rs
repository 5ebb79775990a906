//! Tributary: an MQTT broker with a Kafka bridge built in.
//!
//! [`start`] binds every listener (port 0 works, for tests), starts the Kafka
//! producer and its health probe, and returns a [`Server`] whose
//! [`Server::shutdown`] is the designed way out: stop accepting, let in-flight
//! deliveries finish or time out, flush the producer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tributary_bridge::{spawn_metadata_probe, Producer, RouteTable};

pub mod auth;
pub mod config;
pub mod events;
pub mod healthcheck;
pub mod http;
pub mod link;
pub mod listener;
pub mod reload;
pub mod router;
pub mod source;
pub mod telemetry;

/// MQTT byte-level helpers (remaining length, varints, header peeking).
pub use tributary_wire as wire;

use config::{Config, ConfigSource};
use link::registry::Registry;
use link::session_store::SessionStore;
use link::will::Wills;
use link::LinkContext;
use router::EmbeddedRouter;

/// Where one listener is bound.
#[derive(Debug, Clone)]
pub struct ListenerAddr {
    pub name: String,
    pub transport: listener::config::TransportKind,
    pub addr: SocketAddr,
}

/// A running Tributary.
pub struct Server {
    listeners: Vec<ListenerAddr>,
    http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Stops the Kafka sources, before anything else (see [`Server::shutdown`]).
    stop_sources: CancellationToken,
    sources: TaskTracker,
    producer: Producer,
    config: Config,
    links: Arc<LinkContext>,
}

impl Server {
    /// Where devices connect over plain MQTT: the first `tcp` listener's bound
    /// address (also when port 0 was asked for), else the first listener's.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.listeners
            .iter()
            .find(|l| l.transport == listener::config::TransportKind::Tcp)
            .or(self.listeners.first())
            .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |l| l.addr)
    }

    /// Every listener's bound address, in configuration order.
    pub fn listeners(&self) -> &[ListenerAddr] {
        &self.listeners
    }

    /// The bound address of the listener named `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.addr)
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves one device connection that arrived by other means than a
    /// listener (in-process tools, the fuzz target) to its end, exactly as a
    /// listener's. An error says it panicked (logged and counted).
    pub fn serve_connection(
        &self,
        stream: impl link::Transport,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = Result<(), listener::Panicked>> {
        let arrival = listener::Arrival {
            peer,
            listener: listener::ListenerAuth::in_process(),
            cert: None,
        };
        listener::contain_panic(
            peer,
            link::serve(Box::new(stream), arrival, self.links.clone()),
        )
    }

    /// Stops the Kafka sources (each hands its last batch to the router and
    /// commits), then stops accepting, waits for connections and deliveries
    /// up to the shutdown timeout, then flushes the producer. Sources stop
    /// first so that what they handed over still reaches the connected
    /// subscribers.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        let timeout = self.config.shutdown_timeout();
        self.stop_sources.cancel();
        self.sources.close();
        if tokio::time::timeout(timeout, self.sources.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?timeout,
                "Kafka sources still closing at the shutdown timeout"
            );
        }
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(?timeout, "connections still open at the shutdown timeout");
        }
        match self.producer.flush(timeout).await {
            Ok(()) => tracing::info!("producer flushed"),
            Err(error) => tracing::warn!(
                %error,
                unreported = self.producer.in_flight(),
                "producer not fully flushed at shutdown"
            ),
        }
    }
}

/// Starts everything `config` describes and returns once all listeners are bound.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    start_from(config, ConfigSource::Defaults).await
}

/// [`start`], with the routes of `source`'s file reloaded when it changes
/// (and on SIGHUP).
pub async fn start_from(config: Config, source: ConfigSource) -> anyhow::Result<Server> {
    // First: SIGHUP reloads, and must not end the process while starting.
    let hangup = reload::hangup_signal();
    let prometheus = telemetry::prometheus();
    let routes: reload::SharedRoutes = Arc::new(arc_swap::ArcSwap::from_pointee(
        RouteTable::compile(&config.routes)
            .map_err(|problems| anyhow::anyhow!("invalid routes:\n{problems}"))?,
    ));
    if routes.load().is_empty() {
        events::NoRoutes.emit();
    }
    let producer = Producer::new(&config.kafka).context("creating the Kafka producer")?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();

    let spool = if config.spool.enabled {
        let settings = config.spool.log_config();
        let (spool, _thread, recovery) = tokio::task::spawn_blocking(move || {
            tributary_bridge::spool::SpoolHandle::start(settings)
        })
        .await
        .context("opening the spool")?
        .with_context(|| format!("opening the spool in {}", config.spool.dir.display()))?;
        events::SpoolOpened {
            dir: &config.spool.dir,
            recovery: &recovery,
        }
        .emit();
        let in_use = routes.clone();
        let drain = tokio::spawn(tributary_bridge::spool::drain(
            spool.clone(),
            producer.clone(),
            Arc::new(move |route: &str| in_use.load().dead_letter_topic(route)),
        ));
        let stop_drain = shutdown.clone();
        tokio::spawn(async move {
            stop_drain.cancelled().await;
            drain.abort();
        });
        Some(spool)
    } else {
        None
    };
    let probe = spawn_metadata_probe(producer.clone(), config.kafka.metadata_probe_interval());
    let stop_probe = shutdown.clone();
    tokio::spawn(async move {
        stop_probe.cancelled().await;
        probe.abort();
    });

    let mut bound = Vec::new();
    for listener_config in config.effective_listeners() {
        let listener = listener::Listener::new(&listener_config, config.mqtt.max_packet_size)?;
        let addr: SocketAddr = listener_config.listen.parse().with_context(|| {
            format!(
                "listener {}: '{}' is not an address",
                listener.name, listener_config.listen
            )
        })?;
        let socket = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding listener {} on {addr}", listener.name))?;
        if listener_config.takes_anyone(&config.auth) && !addr.ip().is_loopback() {
            events::OpenToNetwork {
                listener: &listener.name,
                addr,
            }
            .emit();
        }
        bound.push((Arc::new(listener), socket));
    }
    let http = TcpListener::bind(config.http_addr()?)
        .await
        .with_context(|| format!("binding the HTTP listener on {}", config.http.listen))?;
    let http_addr = http.local_addr()?;

    let mqtt_listening = Arc::new(AtomicBool::new(true));
    let mut reloadable: Vec<Arc<dyn reload::Reload>> = Vec::new();
    let readiness = http::Readiness {
        mqtt_listening: mqtt_listening.clone(),
        kafka: producer.health().clone(),
        spool: spool.clone().map(|spool| (spool, config.spool.max_bytes)),
    };
    let http_shutdown = shutdown.clone();
    tokio::spawn(async move {
        if let Err(error) = http::serve(http, prometheus, readiness, http_shutdown).await {
            tracing::error!(%error, "HTTP endpoint failed");
        }
    });
    events::ListenerStarted {
        protocol: "http",
        name: "http",
        addr: http_addr,
    }
    .emit();

    // Stored sessions with subscriptions keep a router link too: as many
    // again; and each Kafka source has a lane of its own.
    let router = EmbeddedRouter::start(
        config
            .mqtt
            .max_connections
            .saturating_mul(2)
            .saturating_add(config.kafka_sources.len()),
    )
    .await
    .context("starting the router")?;
    let registry = Registry::default();
    let retained = Arc::new(link::retained::Retained::default());
    if let Some(watch) = reload::RoutesReload::new(source, &config, routes.clone()) {
        reloadable.push(Arc::new(watch) as Arc<dyn reload::Reload>);
    }
    let forwarder = link::forward::Forwarder::new(routes, producer.clone(), spool);
    let wills = Wills::new(forwarder.clone(), registry.clone(), retained.clone());
    let auth = Arc::new(auth::Authenticator::new(&config.auth)?);
    // Last of what can fail, so that no source runs for a server that did
    // not start.
    let stop_sources = CancellationToken::new();
    let sources = TaskTracker::new();
    let directory = Arc::new(link::directory::Directory::new(
        !config.kafka_sources.is_empty(),
    ));
    crate::source::start(
        &config.kafka_sources,
        &config.kafka,
        directory.clone(),
        retained.clone(),
        stop_sources.clone(),
        &sources,
    )?;
    reloadable.push(auth.clone() as Arc<dyn reload::Reload>);
    let context = Arc::new(LinkContext {
        config: config.link_config(),
        router,
        forwarder,
        registry,
        store: SessionStore::default(),
        wills,
        shutdown: shutdown.clone(),
        qos0_budget: Arc::new(tokio::sync::Semaphore::new(link::QOS0_BUDGET)),
        retained,
        shares: Arc::default(),
        auth,
        directory,
    });

    // One connection limit across every listener.
    let slots = Arc::new(tokio::sync::Semaphore::new(config.mqtt.max_connections));
    let mut listeners = Vec::new();
    for (listener, socket) in bound {
        let addr = socket.local_addr()?;
        listeners.push(ListenerAddr {
            name: listener.name.to_string(),
            transport: listener.transport,
            addr,
        });
        let context = context.clone();
        let serving = listener.clone();
        let accept_shutdown = shutdown.clone();
        let accept_tasks = tasks.clone();
        let slots = slots.clone();
        let mqtt_listening = mqtt_listening.clone();
        tokio::spawn(async move {
            listener::accept_loop(
                socket,
                slots,
                accept_tasks,
                accept_shutdown,
                move |stream, peer| serving.clone().serve(stream, peer, context.clone()),
            )
            .await;
            mqtt_listening.store(false, Ordering::Release);
        });
        events::ListenerStarted {
            protocol: listener.transport.label(),
            name: &listener.name,
            addr,
        }
        .emit();
        if let Some(tls) = listener.tls() {
            reloadable.push(tls.clone() as Arc<dyn reload::Reload>);
        }
    }
    reload::spawn(reloadable, shutdown.clone(), hangup);

    Ok(Server {
        listeners,
        http_addr,
        shutdown,
        tasks,
        stop_sources,
        sources,
        producer,
        config,
        links: context,
    })
}

/// Runs until SIGINT or SIGTERM, then shuts down gracefully. The signals are
/// taken over before anything starts: one that comes while starting (a long
/// spool recovery, say) ends the start at once, since nothing has been
/// acknowledged to any device yet. (As PID 1 in a container, a process that
/// has not taken SIGTERM over ignores it, and is killed after the grace
/// period.)
pub async fn run_until_signal(config: Config, source: ConfigSource) -> anyhow::Result<()> {
    let mut signals = StopSignals::install();
    let server = tokio::select! {
        server = start_from(config, source) => server?,
        () = signals.next() => {
            events::StoppedWhileStarting.emit();
            return Ok(());
        }
    };
    signals.next().await;
    server.shutdown().await;
    Ok(())
}

/// SIGINT and SIGTERM, taken over from their default action when installed.
struct StopSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> StopSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            StopSignals {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn one(signal: Option<&mut tokio::signal::unix::Signal>) {
                if let Some(signal) = signal {
                    if signal.recv().await.is_some() {
                        return;
                    }
                }
                std::future::pending().await
            }
            tokio::select! {
                () = one(self.interrupt.as_mut()) => {}
                () = one(self.terminate.as_mut()) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
