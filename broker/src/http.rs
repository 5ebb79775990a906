//! The operators' HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.
//!
//! Read-only: nothing here changes how messages flow.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tributary_bridge::spool::SpoolHandle;
use tributary_bridge::KafkaHealth;

/// What `/readyz` looks at.
#[derive(Clone)]
pub struct Readiness {
    /// True while the MQTT listener accepts connections.
    pub mqtt_listening: Arc<AtomicBool>,
    pub kafka: KafkaHealth,
    /// The spool and its `max_bytes`, when on: while it accepts, devices are
    /// served with Kafka out of reach.
    pub spool: Option<(SpoolHandle, u64)>,
}

#[derive(Clone)]
struct AppState {
    prometheus: PrometheusHandle,
    readiness: Readiness,
}

/// Serves the endpoints on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(handle_metrics))
        .route("/healthz", get(handle_healthz))
        .route("/readyz", get(handle_readyz))
        .with_state(AppState {
            prometheus,
            readiness,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn handle_metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.prometheus.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.prometheus.render(),
    )
}

async fn handle_healthz() -> &'static str {
    "ok\n"
}

async fn handle_readyz(State(state): State<AppState>) -> impl IntoResponse {
    let readiness = &state.readiness;
    let mut reasons = Vec::new();
    if !readiness.mqtt_listening.load(Ordering::Acquire) {
        reasons.push("the MQTT listener is not accepting connections".to_owned());
    }
    let mut spooling = None;
    if let Err(kafka) = readiness.kafka.readiness() {
        match &readiness.spool {
            // Devices are still acknowledged: ready, and saying why.
            Some((spool, max_bytes)) => match spool.stats().await {
                Ok((stats, _)) if stats.bytes_on_disk < *max_bytes => {
                    let oldest = stats.oldest_pending_age().as_secs();
                    spooling = Some(format!(
                        "{kafka}, spooling ({} records, oldest {oldest} s)",
                        stats.records_pending
                    ));
                }
                Ok(_) => reasons.push(format!("{kafka}, and the spool is full")),
                Err(error) => reasons.push(format!("{kafka}, and the spool failed: {error}")),
            },
            None => reasons.push(kafka.to_string()),
        }
    }
    if reasons.is_empty() {
        match spooling {
            Some(spooling) => (StatusCode::OK, format!("ready: {spooling}\n")),
            None => (StatusCode::OK, "ready\n".to_owned()),
        }
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        )
    }
}
