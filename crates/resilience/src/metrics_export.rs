//! The process-wide Prometheus recorder and its `/metrics` page, shared by
//! the node, the edge and the follower; and the node's state as series.
//!
//! Names follow Prometheus's conventions: counters end in `_total`, times
//! are in seconds, each series has a `# HELP` line ([`describe_all`]), and
//! `resilience_info` carries what a label set should (role, type,
//! version). The alert rules in `packaging/prometheus/` read these names.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use resilience_core::node::Snapshot;
use std::sync::OnceLock;

/// `/metrics` of any role: the recorder's series in Prometheus text format.
pub fn prometheus_text(handle: &PrometheusHandle) -> Response {
    update_process_metrics();
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
            if metrics::set_global_recorder(recorder).is_ok() {
                describe_all();
            }
            handle
        })
        .clone()
}

/// `resilience_info{role, version, …} 1`: which program runs where, the
/// usual way to join a label set onto other series.
pub fn set_info(role: &'static str, labels: &[(&'static str, String)]) {
    let mut all = vec![
        metrics::Label::new("role", role),
        metrics::Label::new("version", env!("CARGO_PKG_VERSION")),
    ];
    all.extend(
        labels
            .iter()
            .map(|(k, v)| metrics::Label::new(*k, v.clone())),
    );
    metrics::gauge!("resilience_info", all).set(1.0);
}

/// Open and allowed file descriptors of this process (the names of
/// Prometheus's own process collector), read at each scrape: the node keeps
/// a reserve for a failover, an alert fires well before it is reached.
fn update_process_metrics() {
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(dir.count() as f64);
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        metrics::gauge!("process_max_fds").set(lim.rlim_cur as f64);
    }
}

/// Times the node's `active` flag changed, by the state it changed to.
static LAST_ACTIVE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 2;

/// Export the node's state as Prometheus series.
pub fn update_metrics(s: &Snapshot, sent: u64, received: u64) {
    let now = u8::from(s.active);
    let was = LAST_ACTIVE.swap(now, std::sync::atomic::Ordering::Relaxed);
    if was != UNKNOWN && was != now {
        let to = if s.active { "active" } else { "inactive" };
        metrics::counter!("resilience_transitions_total", "to" => to).increment(1);
    }
    metrics::gauge!("resilience_manual_mode").set(match s.mode {
        resilience_core::Mode::Manual => 1.0,
        _ => 0.0,
    });
    metrics::gauge!("resilience_active").set(if s.active { 1.0 } else { 0.0 });
    metrics::gauge!("resilience_takes_new_calls").set(if s.takes_new_calls { 1.0 } else { 0.0 });
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

/// What a series is, for its `# TYPE` and unit.
#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    /// A gauge in seconds.
    Seconds,
    Counter,
}

/// Every series the binary writes, with its `# HELP` text (a test checks
/// the list against the source and the alert rules).
const SERIES: &[(&str, Kind, &str)] = &[
    (
        "resilience_info",
        Kind::Gauge,
        "Always 1: the role, version and node type of this process as labels.",
    ),
    (
        "resilience_active",
        Kind::Gauge,
        "1 while this node serves (its PBX services run as the Active node), else 0.",
    ),
    (
        "resilience_takes_new_calls",
        Kind::Gauge,
        "1 while this node takes new calls (0 while it drains: calls in progress end here, new ones go to the peer).",
    ),
    (
        "resilience_manual_mode",
        Kind::Gauge,
        "1 while this node is in manual mode (an admin starts and stops services).",
    ),
    (
        "resilience_transitions_total",
        Kind::Counter,
        "Changes of this node's active state, by the state it changed to.",
    ),
    (
        "resilience_epoch",
        Kind::Gauge,
        "The pair's epoch as this node knows it (raised by every takeover).",
    ),
    (
        "resilience_faulted",
        Kind::Gauge,
        "1 while this node holds off after its services failed to start.",
    ),
    (
        "resilience_pbx_up",
        Kind::Gauge,
        "1 while the local PBX health probe passes.",
    ),
    (
        "resilience_peer_heard",
        Kind::Gauge,
        "1 while the peer's heartbeats arrive within failover_after.",
    ),
    (
        "resilience_peer_active",
        Kind::Gauge,
        "1 when the peer last said it serves.",
    ),
    (
        "resilience_peer_last_heard_seconds",
        Kind::Seconds,
        "Time since the peer's last valid heartbeat.",
    ),
    (
        "resilience_heartbeats_sent_total",
        Kind::Counter,
        "Heartbeat frames sent to the peer.",
    ),
    (
        "resilience_heartbeats_received_total",
        Kind::Counter,
        "Valid heartbeat frames received from the peer.",
    ),
    (
        "resilience_heartbeats_rejected_total",
        Kind::Counter,
        "Heartbeat datagrams dropped, by reason (forged, replayed, malformed...).",
    ),
    (
        "resilience_api_refused_total",
        Kind::Counter,
        "API connections or requests refused, by reason.",
    ),
    (
        "resilience_replication_refused_total",
        Kind::Counter,
        "Replication connections refused, by reason.",
    ),
    (
        "resilience_replication_sessions_total",
        Kind::Counter,
        "Replication sessions ended, by job, role and result (ok or failed).",
    ),
    (
        "resilience_replication_failing",
        Kind::Gauge,
        "1 while the last session of a replication job failed.",
    ),
    (
        "resilience_replication_last_success_timestamp_seconds",
        Kind::Seconds,
        "Unix time of the last successful session of a replication job.",
    ),
    (
        "process_open_fds",
        Kind::Gauge,
        "Open file descriptors of this process.",
    ),
    (
        "process_max_fds",
        Kind::Gauge,
        "The process's limit on open file descriptors (RLIMIT_NOFILE).",
    ),
    (
        "resilience_follow_node_active",
        Kind::Gauge,
        "1 when the linked node said it serves at the last poll.",
    ),
    (
        "resilience_follow_reachable",
        Kind::Gauge,
        "1 while the linked node's API answers.",
    ),
    (
        "resilience_follow_wanted_active",
        Kind::Gauge,
        "1 while the follower wants its services running.",
    ),
    (
        "resilience_follow_applied_active",
        Kind::Gauge,
        "1 when the follower's services were last started (0: stopped).",
    ),
    (
        "resilience_follow_polls_total",
        Kind::Counter,
        "Polls of the linked node, by result.",
    ),
    (
        "resilience_follow_actions_total",
        Kind::Counter,
        "Service commands run by the follower, by result.",
    ),
    (
        "resilience_edge_pbx_up",
        Kind::Gauge,
        "1 while the edge's probe of a PBX passes, by PBX.",
    ),
    (
        "resilience_edge_phones",
        Kind::Gauge,
        "Phones the edge tracks.",
    ),
    (
        "resilience_edge_phones_away",
        Kind::Gauge,
        "Phones served by the PBX that is not their home.",
    ),
    (
        "resilience_edge_flows",
        Kind::Gauge,
        "Open SIP flows (UDP addresses and TCP/TLS connections) the edge relays.",
    ),
    (
        "resilience_edge_calls",
        Kind::Gauge,
        "Calls in progress through the edge.",
    ),
    (
        "resilience_edge_registers_pending",
        Kind::Gauge,
        "REGISTERs relayed and not yet answered.",
    ),
    (
        "resilience_edge_tcp_connections",
        Kind::Gauge,
        "Open SIP TCP and TLS connections.",
    ),
    (
        "resilience_edge_websockets",
        Kind::Gauge,
        "Open WebSocket connections through the web proxy.",
    ),
    (
        "resilience_edge_web_upstream_available",
        Kind::Gauge,
        "1 while a PBX's web upstream takes requests, by PBX.",
    ),
    (
        "resilience_edge_messages_total",
        Kind::Counter,
        "SIP messages the edge relayed or generated, by kind.",
    ),
    (
        "resilience_edge_dropped_total",
        Kind::Counter,
        "SIP messages dropped, by reason.",
    ),
    (
        "resilience_edge_connections_refused_total",
        Kind::Counter,
        "SIP TCP/TLS connections refused, by reason.",
    ),
    (
        "resilience_edge_phones_total",
        Kind::Counter,
        "Phone table events (moved, returned, expired...), by event.",
    ),
    (
        "resilience_edge_probe_unknown_total",
        Kind::Counter,
        "PBX probes without a clear answer, by PBX.",
    ),
    (
        "resilience_edge_register_timeouts_total",
        Kind::Counter,
        "REGISTERs the PBX did not answer in time.",
    ),
    (
        "resilience_edge_registers_pending_dropped_total",
        Kind::Counter,
        "Pending REGISTERs forgotten because the table was full.",
    ),
    (
        "resilience_edge_reregisters_total",
        Kind::Counter,
        "REGISTERs the edge sent for a moved phone.",
    ),
    (
        "resilience_edge_reregisters_ok_total",
        Kind::Counter,
        "REGISTERs the edge sent for a moved phone that the PBX accepted.",
    ),
    (
        "resilience_edge_api_pages_refused_total",
        Kind::Counter,
        "Pages of the phones list refused for pacing (429).",
    ),
    (
        "resilience_edge_web_requests_total",
        Kind::Counter,
        "HTTP requests proxied, by PBX.",
    ),
    (
        "resilience_edge_web_retried_total",
        Kind::Counter,
        "HTTP requests retried on the other PBX, by PBX.",
    ),
    (
        "resilience_edge_web_upstream_disabled_total",
        Kind::Counter,
        "Times a PBX's web upstream was taken out of rotation, by PBX.",
    ),
    (
        "resilience_edge_websockets_idle_closed_total",
        Kind::Counter,
        "WebSocket connections closed for idleness.",
    ),
    (
        "resilience_edge_web_refused_total",
        Kind::Counter,
        "Web proxy connections refused, by reason.",
    ),
];

/// `# HELP` lines and units: what each series means, for whoever reads
/// `/metrics` or a dashboard without the source.
pub fn describe_all() {
    for &(name, kind, help) in SERIES {
        match kind {
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Seconds => metrics::describe_gauge!(name, metrics::Unit::Seconds, help),
            Kind::Counter => metrics::describe_counter!(name, help),
        }
    }
}
