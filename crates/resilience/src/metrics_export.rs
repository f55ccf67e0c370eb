//! The process-wide Prometheus recorder and its `/metrics` page, shared by
//! the node, the edge and the follower; and the node's state as series.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use resilience_core::node::Snapshot;
use std::sync::OnceLock;

/// `/metrics` of any role: the recorder's series in Prometheus text format.
pub fn prometheus_text(handle: &PrometheusHandle) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// The process-wide Prometheus recorder (installed once).
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be set (tests): keep ours for rendering.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Export the node's state as Prometheus series.
pub fn update_metrics(s: &Snapshot, sent: u64, received: u64) {
    metrics::gauge!("resilience_active").set(if s.active { 1.0 } else { 0.0 });
    metrics::gauge!("resilience_epoch").set(s.epoch as f64);
    metrics::gauge!("resilience_faulted").set(if s.faulted { 1.0 } else { 0.0 });
    metrics::gauge!("resilience_pbx_up").set(match s.pbx {
        resilience_core::PbxHealth::Up => 1.0,
        _ => 0.0,
    });
    if let Some(p) = &s.peer {
        metrics::gauge!("resilience_peer_heard").set(if p.heard { 1.0 } else { 0.0 });
        if let Some(ago) = p.last_heard_ago {
            metrics::gauge!("resilience_peer_last_heard_seconds").set(ago.as_secs_f64());
        }
        metrics::gauge!("resilience_peer_active").set(if p.status.is_some_and(|x| x.is_active()) {
            1.0
        } else {
            0.0
        });
    }
    metrics::counter!("resilience_heartbeats_sent_total").absolute(sent);
    metrics::counter!("resilience_heartbeats_received_total").absolute(received);
    for (reason, n) in &s.rejected {
        metrics::counter!("resilience_heartbeats_rejected_total", "reason" => *reason).absolute(*n);
    }
}
