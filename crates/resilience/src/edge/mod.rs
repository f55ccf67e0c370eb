//! `resilience edge`: the SIP relay in front of the Main and the Standby
//! (XiVO's automatic and manual failover pages, "Edge deployment"; the per-phone rules of IP Office's "Phone Resilience" and "When Does Failback Occur").
//!
//! One task owns the relay ([`resilience_sip::Relay`], sans-IO) and the
//! per-phone router ([`resilience_core::phones::Router`], sans-IO); it reads
//! the SIP socket, the probes' reports and the router's deadline, and does
//! what they decide. Probes run beside it ([`probe`]); the HTTP API reads a
//! copy of the phones table.

pub mod flood;
pub mod http;
pub mod probe;
pub mod tcp;
pub mod tls;

use anyhow::Context;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use metrics_exporter_prometheus::PrometheusHandle;
use resilience_core::edge_config::EdgeConfig;
use resilience_core::phones::{Phone, Router};
use resilience_sip::{Dropped, Flow, Note, Relay, Transport};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Connections the edge's status API holds at most.
const EDGE_API_CONNECTIONS: usize = 64;

pub fn load_config(path: &Path) -> anyhow::Result<EdgeConfig> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {shown}"))?;
    EdgeConfig::parse(&shown, &text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// What the API shows: a copy refreshed by the relay task.
#[derive(Default)]
struct View {
    moves: VecDeque<serde_json::Value>,
    relayed: u64,
    dropped: HashMap<&'static str, u64>,
}

#[derive(Clone)]
struct ApiState {
    view: Arc<Mutex<View>>,
    pbx_up: Arc<Mutex<Vec<bool>>>,
    router: Arc<Mutex<Router>>,
    conns: tcp::Conns,
    names: Arc<Vec<String>>,
    metrics: PrometheusHandle,
}

fn reason_label(d: &Dropped) -> &'static str {
    match d {
        Dropped::Malformed(_) => "malformed",
        Dropped::BadVia => "bad_via",
        Dropped::NotOurs => "not_ours",
        Dropped::NoRoute => "no_route",
        Dropped::NoPbx => "no_pbx",
        Dropped::StrayAck => "stray_ack",
        _ => "other",
    }
}

fn phone_json(p: &Phone, names: &[String], now: Instant) -> serde_json::Value {
    json!({
        "aor": p.aor,
        "contact": p.contact,
        "home": names.get(p.home),
        "serving": names.get(p.serving),
        "guest": p.is_guest(),
        "since_s": now.saturating_duration_since(p.since).as_secs(),
        "calls": p.calls,
        "last_register_s_ago": p.last_register.map(|t| now.saturating_duration_since(t).as_secs()),
    })
}

pub async fn run(path: &Path) -> anyhow::Result<()> {
    let cfg = load_config(path)?;
    let metrics = crate::api::install_metrics();
    let sock = UdpSocket::bind(cfg.edge.sip_listen)
        .await
        .with_context(|| format!("SIP socket {}", cfg.edge.sip_listen))?;
    let tcp_listener = tokio::net::TcpListener::bind(cfg.edge.sip_listen)
        .await
        .with_context(|| format!("SIP TCP socket {}", cfg.edge.sip_listen))?;
    let (tcp_tx, mut tcp_rx) = mpsc::channel::<(Flow, Vec<u8>)>(1024);
    let (tcp_drop_tx, mut tcp_drop_rx) = mpsc::channel::<&'static str>(64);
    let intake = intake(&cfg, tcp_tx, tcp_drop_tx)?;
    let conns = intake.conns.clone();
    if let Some(addr) = cfg.edge.sip_tls_listen {
        let certs = tls_certs(&cfg, path)?;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("SIP TLS socket {addr}"))?;
        tracing::info!("edge: SIP over TLS on {addr}");
        tokio::spawn(tcp::serve(l, Some(certs), intake.clone()));
    }
    tokio::spawn(tcp::serve(tcp_listener, None, intake));
    let names: Arc<Vec<String>> = Arc::new(cfg.pbxs.iter().map(|p| p.name.clone()).collect());
    let pbx_addrs: Vec<SocketAddr> = cfg.pbxs.iter().map(|p| p.sip).collect();
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let relay = Relay::new(cfg.edge.sip_listen, pbx_addrs.clone(), secret);
    let start = Instant::now();
    // Shared with the API, which reads the phones table on request; the
    // relay task holds the lock only while deciding, never across a send.
    let router = Arc::new(Mutex::new(Router::new(
        cfg.phones.policy(),
        cfg.pbxs.len(),
        cfg.home_rules(),
        start,
    )));

    let (health_tx, mut health_rx) = mpsc::channel(16);
    for (i, p) in cfg.pbxs.iter().enumerate() {
        tokio::spawn(probe::run(
            i,
            p.clone(),
            cfg.health.clone(),
            health_tx.clone(),
        ));
    }
    drop(health_tx);

    let view = Arc::new(Mutex::new(View::default()));
    // The probes' view of each PBX: the API shows it, the web proxy picks
    // its target from it.
    let pbx_up = Arc::new(Mutex::new(vec![false; cfg.pbxs.len()]));
    let api = ApiState {
        view: view.clone(),
        pbx_up: pbx_up.clone(),
        router: router.clone(),
        conns: conns.clone(),
        names: names.clone(),
        metrics,
    };
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/phones", get(phones))
        .route("/api/v1/status", get(status))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind(cfg.edge.api_listen)
        .await
        .with_context(|| format!("API socket {}", cfg.edge.api_listen))?;
    // The edge's own API, bounded like the node's (connection cap, header
    // and idle deadlines, Host check). The web proxy below keeps plain axum:
    // it carries WebSocket upgrades, which these bounds do not.
    let app = crate::api::server::guarded(app, crate::api::server::Hosts::new(&[]));
    let cap = crate::api::server::connection_cap(
        EDGE_API_CONNECTIONS,
        crate::api::server::nofile_limit(),
    );
    tokio::spawn(async move {
        let _ = crate::api::server::serve(listener, app, None, cap).await;
    });
    if let Some(addr) = cfg.edge.http_listen {
        let proxy = http::Proxy::new(cfg.pbxs.iter().map(|p| p.web).collect(), pbx_up.clone());
        let app = axum::Router::new()
            .fallback(http::forward)
            .with_state(proxy);
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("web proxy socket {addr}"))?;
        tracing::info!("edge: web applications on http://{addr}");
        tokio::spawn(async move {
            let _ = axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>()).await;
        });
    }
    tracing::info!(
        "edge {}: SIP on {} (UDP and TCP), API on http://{}, PBXs: {}",
        cfg.edge.name,
        cfg.edge.sip_listen,
        cfg.edge.api_listen,
        cfg.pbxs
            .iter()
            .map(|p| format!("{} {}", p.name, p.sip))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Which phone a flow belongs to, learnt from its REGISTERs.
    let mut flows: HashMap<Flow, String> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    let mut flood = flood::Flood::new(&cfg.limits, pbx_addrs.clone(), Instant::now());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let deadline = router
            .lock()
            .expect("router lock")
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + std::time::Duration::from_secs(3600));
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                match r {
                    Ok((_, from)) if !flood.admit(Instant::now(), from) => {
                        count_drop(&view, "over_rate");
                    }
                    Ok((len, from)) => {
                        let msg = buf[..len].to_vec();
                        relay_one(&relay, &router, &mut flows, &pbx_addrs, &sock, &conns, &view, Flow::udp(from), &msg).await;
                    }
                    Err(e) => tracing::debug!("recv: {e}"),
                }
            }
            Some((from, msg)) = tcp_rx.recv() => {
                if !flood.admit(Instant::now(), from.addr) {
                    count_drop(&view, "over_rate");
                    continue;
                }
                relay_one(&relay, &router, &mut flows, &pbx_addrs, &sock, &conns, &view, from, &msg).await;
            }
            Some(label) = tcp_drop_rx.recv() => {
                count_drop(&view, label);
            }
            Some((i, up)) = health_rx.recv() => {
                router.lock().expect("router lock").handle_health(Instant::now(), i, up);
                metrics::gauge!("resilience_edge_pbx_up", "pbx" => names[i].clone()).set(if up { 1.0 } else { 0.0 });
                pbx_up.lock().expect("up lock")[i] = up;
            }
            _ = tokio::time::sleep_until(deadline) => {
                router.lock().expect("router lock").handle_timeout(Instant::now());
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        let moves = router.lock().expect("router lock").poll_moves();
        for m in moves {
            let (from, to) = (&names[m.from], &names[m.to]);
            tracing::info!("phone {} moves from {from} to {to}: {}", m.aor, m.reason);
            let mut v = view.lock().expect("view lock");
            v.moves.push_front(json!({
                "at_ms": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
                "aor": m.aor, "from": from, "to": to, "reason": m.reason,
            }));
            v.moves.truncate(200);
        }
    }
    tracing::info!("edge stopping");
    Ok(())
}

fn count_drop(view: &Mutex<View>, label: &'static str) {
    metrics::counter!("resilience_edge_dropped_total", "reason" => label).increment(1);
    *view
        .lock()
        .expect("view lock")
        .dropped
        .entry(label)
        .or_default() += 1;
}

/// Relay one message and feed what it tells to the router.
#[allow(clippy::too_many_arguments)]
async fn relay_one(
    relay: &Relay,
    router: &Mutex<Router>,
    flows: &mut HashMap<Flow, String>,
    pbx_addrs: &[SocketAddr],
    sock: &UdpSocket,
    conns: &tcp::Conns,
    view: &Mutex<View>,
    from: Flow,
    msg: &[u8],
) {
    let now = Instant::now();
    let decided = {
        let mut router = router.lock().expect("router lock");
        let out = relay.handle(from, msg, |req| {
            router
                .route(now, &req.aor)
                .and_then(|s| pbx_addrs.get(s).copied())
        });
        out.map(|mut send| {
            for note in &send.notes {
                apply_note(&mut router, flows, pbx_addrs, note, now);
            }
            // A guest phone is told to re-register sooner (XiVO "Resilience Administration"'s
            // short expiry, per phone).
            if let Some(Note::Registered {
                aor,
                code: 200..=299,
                expires: Some(granted),
                ..
            }) = send.notes.first()
            {
                let cap = router.expires_for(aor, *granted);
                if cap < *granted {
                    if let Some(b) = resilience_sip::proxy::cap_expires(&send.bytes, cap) {
                        send.bytes = b;
                    }
                }
            }
            send
        })
    };
    match decided {
        Ok(send) => {
            let sent = match send.to.transport {
                Transport::Udp => sock.send_to(&send.bytes, send.to.addr).await.is_ok(),
                Transport::Tcp | Transport::Tls => conns.send(send.to, send.bytes),
            };
            if !sent {
                count_drop(view, "unreachable");
                tracing::debug!("could not send to {:?}", send.to);
            }
            let kind = if send.generated {
                "generated"
            } else {
                "relayed"
            };
            metrics::counter!("resilience_edge_messages_total", "kind" => kind).increment(1);
            view.lock().expect("view lock").relayed += 1;
        }
        Err(d) => {
            count_drop(view, reason_label(&d));
            tracing::debug!("dropped a message from {}: {d}", from.addr);
        }
    }
}

/// Feed what the relay saw to the router.
fn apply_note(
    router: &mut Router,
    flows: &mut HashMap<Flow, String>,
    pbxs: &[SocketAddr],
    note: &Note,
    now: Instant,
) {
    match note {
        Note::Register { aor, from, to, .. } => {
            flows.insert(*from, aor.clone());
            if let Some(s) = pbxs.iter().position(|a| *a == to.addr) {
                let contact = format!(
                    "{}:{}",
                    from.transport.as_str().to_ascii_lowercase(),
                    from.addr
                );
                router.handle_register_sent(now, aor, &contact, s);
            }
        }
        Note::Registered { aor, code, .. } => router.handle_register_answer(now, aor, *code),
        Note::Invite { call_id, phone } => {
            if let Some(aor) = flows.get(phone) {
                router.handle_call(now, call_id, aor);
            }
        }
        Note::DialogDown { call_id } => router.handle_call_end(now, call_id),
        Note::DialogUp { call_id } => router.handle_call_answered(now, call_id),
    }
}

async fn metrics_text(State(s): State<ApiState>) -> impl IntoResponse {
    {
        let r = s.router.lock().expect("router lock");
        let (all, away) = r.phones().fold((0usize, 0usize), |(a, g), p| {
            (a + 1, g + p.is_guest() as usize)
        });
        metrics::gauge!("resilience_edge_phones").set(all as f64);
        metrics::gauge!("resilience_edge_phones_away").set(away as f64);
    }
    metrics::gauge!("resilience_edge_tcp_connections").set(s.conns.count() as f64);
    crate::api::prometheus_text(&s.metrics)
}

async fn phones(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let now = Instant::now();
    let r = s.router.lock().expect("router lock");
    let list: Vec<_> = r.phones().map(|p| phone_json(p, &s.names, now)).collect();
    Json(json!({ "phones": list }))
}

async fn status(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let v = s.view.lock().expect("view lock");
    let pbxs: Vec<_> = s
        .names
        .iter()
        .zip(s.pbx_up.lock().expect("up lock").iter())
        .map(|(n, up)| json!({"name": n, "up": up}))
        .collect();
    Json(json!({
        "pbxs": pbxs,
        "relayed": v.relayed,
        "dropped": v.dropped,
        "phones": s.router.lock().expect("router lock").phones().count(),
        "connections": s.conns.status_json(),
        "moves": v.moves,
    }))
}

/// The TCP/TLS intake: caps and deadlines from `[limits]`, the cap lowered
/// under the descriptor limit (room kept for the API's connections and the
/// edge's own sockets).
fn intake(
    cfg: &EdgeConfig,
    to_relay: mpsc::Sender<(Flow, Vec<u8>)>,
    dropped: mpsc::Sender<&'static str>,
) -> anyhow::Result<tcp::Intake> {
    let l = &cfg.limits;
    let nofile =
        crate::api::server::nofile_limit().map(|n| n.saturating_sub(EDGE_API_CONNECTIONS as u64));
    let limits = tcp::Limits {
        max_connections: crate::api::server::connection_cap(l.max_connections, nofile),
        per_source: l.max_connections_per_source,
        message_timeout: l.message_timeout,
        idle_timeout: l.idle_timeout,
    };
    tracing::info!(
        "edge: at most {} SIP TCP/TLS connections ({} per address), {} messages per {:?} per source",
        limits.max_connections,
        limits.per_source.min(limits.max_connections),
        l.max_per_window,
        l.window
    );
    Ok(tcp::Intake {
        conns: tcp::Conns::new(&limits),
        limits,
        to_relay,
        dropped,
    })
}

/// The TLS identity; relative paths are the config file's folder's.
fn tls_certs(cfg: &EdgeConfig, path: &Path) -> anyhow::Result<Arc<tls::Certs>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let (Some(cert), Some(key)) = (&cfg.edge.tls_cert, &cfg.edge.tls_key) else {
        anyhow::bail!("sip_tls_listen needs tls_cert and tls_key");
    };
    Ok(Arc::new(tls::Certs::load(&dir.join(cert), &dir.join(key))?))
}
