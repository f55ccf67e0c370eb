//! `resilience edge`: the SIP relay in front of the Main and the Standby
//! (XiVO's automatic and manual failover pages, "Edge deployment"; the per-phone rules of IP Office's "Phone Resilience" and "When Does Failback Occur").
//!
//! One task owns the relay ([`resilience_sip::Relay`], sans-IO) and the
//! per-phone router ([`resilience_core::edge::phones::Router`], sans-IO); it reads
//! the SIP socket, the probes' reports and the router's deadline, and does
//! what they decide. It runs on a thread of its own (a current-thread
//! runtime that owns the UDP socket): a datagram is received, relayed and
//! sent by the thread the kernel wakes, with no hand-over to another
//! thread. Probes, the TCP/TLS intake and the web proxy run beside it on
//! the main runtime ([`probe`], [`tcp`], [`http`]); the HTTP API runs on a
//! third thread at a lower scheduling priority and reads a copy of the
//! phones table ([`table`]) that the relay task feeds with each phone's
//! changes, and counts the router keeps: nothing the API does walks the
//! relay's table, holds its lock, or takes its CPU first.

mod driver;
pub mod flood;
pub mod http;
pub mod key;
pub mod probe;
pub mod rowrate;
pub mod table;
pub mod tcp;
pub mod tls;

use crate::status::{EdgePbx, EdgeStatus, EdgeTable, PhoneMove};
use anyhow::Context;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use driver::EdgeDriver;
use metrics_exporter_prometheus::PrometheusHandle;
use resilience_core::config::edge::EdgeConfig;
use resilience_core::edge::phones::{Counts, PhoneRow, RegisterSent, Router};
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
    moves: VecDeque<PhoneMove>,
    relayed: u64,
    dropped: HashMap<&'static str, u64>,
    /// The router's counts as of its last event.
    counts: Counts,
}

#[derive(Clone)]
struct ApiState {
    view: Arc<Mutex<View>>,
    pbx_up: Arc<Mutex<Vec<bool>>>,
    table: table::Table,
    token: Option<Arc<str>>,
    conns: tcp::Conns,
    names: Arc<Vec<String>>,
    metrics: PrometheusHandle,
    rows: Arc<rowrate::RowRate>,
}

fn reason_label(d: &Dropped) -> &'static str {
    match d {
        Dropped::Malformed(_) => "malformed",
        Dropped::BadVia => "bad_via",
        Dropped::NotOurs => "not_ours",
        Dropped::NoRoute => "no_route",
        Dropped::NoPbx => "no_pbx",
        Dropped::StrayAck => "stray_ack",
        Dropped::ForgedBranch => "forged_branch",
        Dropped::ForgedFlow => "forged_flow",
        Dropped::UnsignedFlow => "unsigned_flow",
        _ => "other",
    }
}

fn phone_json(aor: &str, p: &PhoneRow, names: &[String], now: Instant) -> serde_json::Value {
    json!({
        "aor": aor,
        "contact": &*p.contact,
        "home": names.get(p.home),
        "serving": names.get(p.serving),
        "guest": p.serving != p.home,
        "since_s": now.saturating_duration_since(p.since).as_secs(),
        "calls": p.calls,
        "last_register_s_ago": now.saturating_duration_since(p.last_register).as_secs(),
        "expires_in_s": p.expires_at.saturating_duration_since(now).as_secs(),
    })
}

/// A flow as the router and the API name it (`udp:1.2.3.4:5060`).
fn flow_text(f: &Flow) -> String {
    format!("{}:{}", f.transport.as_str().to_ascii_lowercase(), f.addr)
}

/// What the relay task holds besides the relay and the router.
struct Ctx<'a> {
    relay: &'a Relay,
    pbx_addrs: &'a [SocketAddr],
    sock: &'a UdpSocket,
    /// The edge's own REGISTERs, sent at a bounded pace.
    paced: &'a mpsc::UnboundedSender<(SocketAddr, Vec<u8>)>,
    conns: &'a tcp::Conns,
    view: &'a Mutex<View>,
    changes: &'a tokio::sync::mpsc::UnboundedSender<table::Changes>,
    /// The per-message counters, looked up once (a lookup by labels per
    /// message is a hash and a lock in the recorder).
    relayed: metrics::Counter,
    generated: metrics::Counter,
    /// When the API's copy of the table was last fed ([`TABLE_FLUSH`]).
    flushed: std::cell::Cell<Instant>,
    /// The current window of [`TABLE_FLUSH`] and the events in it.
    window: std::cell::Cell<(Instant, u32)>,
    names: &'a [String],
}

/// How stale the API's copy of the phones table (and the status counts)
/// may be under load: beyond [`TABLE_EAGER`] events in a window, changes go
/// over in batches, so a call's INVITE and BYE do not each wake the API's
/// task (a cross-thread wake-up per message cost the relay about a tenth of
/// its CPU). Below it, each change goes at once: what an admin (or a test)
/// reads right after a REGISTER is current.
const TABLE_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);
const TABLE_EAGER: u32 = 8;

/// Run the edge until SIGINT/SIGTERM or the relay's end.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    let (driver, handle) = EdgeDriver::new(path).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        handle.shutdown();
    });
    driver.run().await
}

/// Scheduling priority ("nice") of the API's thread: the relay's threads
/// stay at 0, so a listing waits for SIP, never the reverse.
const API_NICE: i32 = 10;

/// The edge's API on a thread of its own, a current-thread runtime at a
/// lower priority ([`API_NICE`]), with the tick that applies the relay's
/// changes to the phones table's copy (a read applies them first): what
/// the API does runs when the relay leaves a core free. It ends on `stop`
/// (the driver's shutdown joins it).
fn spawn_api(
    listener: std::net::TcpListener,
    app: axum::Router,
    cap: usize,
    table: table::Table,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("the API's runtime")?;
    std::thread::Builder::new()
        .name("edge-api".into())
        .spawn(move || {
            lower_priority(API_NICE);
            rt.block_on(async move {
                table.spawn_ticker();
                let l = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!("edge API: {e}"),
                };
                tokio::select! {
                    _ = crate::http_server::serve(l, app, None, cap) => {}
                    _ = stop => {}
                }
            });
            // The runtime goes with the thread, and its connections' tasks
            // with it.
        })
        .context("the API's thread")
}

/// Lower the calling thread's scheduling priority (Linux: `setpriority`
/// on the thread's id applies to that thread alone).
fn lower_priority(nice: i32) {
    // SAFETY: gettid and setpriority take plain integers and touch no
    // memory of ours.
    let r = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if r != 0 {
        tracing::warn!(
            "edge API: could not lower its thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Datagrams read in a row while the socket has them, before the other
/// sources (TCP, probes, timers) get a turn.
const RECV_BATCH: usize = 64;

/// What the relay's thread owns.
struct RelayTask {
    sock: std::net::UdpSocket,
    relay: Relay,
    router: Router,
    flood: flood::Flood,
    pbx_addrs: Vec<SocketAddr>,
    conns: tcp::Conns,
    view: Arc<Mutex<View>>,
    changes: mpsc::UnboundedSender<table::Changes>,
    names: Arc<Vec<String>>,
    pbx_up: Arc<Mutex<Vec<bool>>>,
    tcp_rx: mpsc::Receiver<(Flow, Vec<u8>)>,
    tcp_drop_rx: mpsc::Receiver<&'static str>,
    health_rx: mpsc::Receiver<(usize, bool)>,
}

impl RelayTask {
    /// The relay's loop. Long because its one `select!` over the relay's
    /// sources (UDP batch, TCP, drops, probes, timer, flush) reads best whole;
    /// each branch is a line or a call.
    async fn run(self) -> anyhow::Result<()> {
        let RelayTask {
            sock,
            relay,
            mut router,
            mut flood,
            pbx_addrs,
            conns,
            view,
            changes,
            names,
            pbx_up,
            mut tcp_rx,
            mut tcp_drop_rx,
            mut health_rx,
        } = self;
        let sock = Arc::new(UdpSocket::from_std(sock).context("SIP socket")?);
        let (paced_tx, paced_rx) = mpsc::unbounded_channel();
        tokio::spawn(send_paced(sock.clone(), paced_rx));
        let ctx = Ctx {
            paced: &paced_tx,
            relay: &relay,
            pbx_addrs: &pbx_addrs,
            sock: &sock,
            conns: &conns,
            view: &view,
            changes: &changes,
            relayed: metrics::counter!("resilience_edge_messages_total", "kind" => "relayed"),
            generated: metrics::counter!("resilience_edge_messages_total", "kind" => "generated"),
            flushed: std::cell::Cell::new(Instant::now()),
            window: std::cell::Cell::new((Instant::now(), 0)),
            names: &names,
        };
        let mut flush_tick = tokio::time::interval(TABLE_FLUSH);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; 65_536];
        let far = || tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
        // One timer, moved when the router's deadline moves (not a new
        // one per message).
        let mut armed = far();
        let timer = tokio::time::sleep_until(armed);
        tokio::pin!(timer);
        loop {
            let deadline = router
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(far);
            if deadline != armed || timer.is_elapsed() {
                armed = deadline;
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                r = sock.readable() => {
                    if let Err(e) = r {
                        tracing::debug!("recv: {e}");
                        continue;
                    }
                    read_batch(&ctx, &mut router, &mut flood, &mut buf).await;
                    continue;
                }
                Some((from, msg)) = tcp_rx.recv() => {
                    if !flood.admit(Instant::now(), from.addr) {
                        count_drop(&view, "over_rate");
                        continue;
                    }
                    relay_one(&ctx, &mut router, from, &msg).await;
                }
                Some(label) = tcp_drop_rx.recv() => {
                    count_drop(&view, label);
                    drop_log().event(label, || format!("dropped a SIP TCP connection or message: {label}"));
                }
                Some((i, up)) = health_rx.recv() => {
                    router.handle_health(Instant::now(), i, up);
                    metrics::gauge!("resilience_edge_pbx_up", "pbx" => names[i].clone()).set(if up { 1.0 } else { 0.0 });
                    pbx_up.lock().expect("up lock")[i] = up;
                }
                _ = &mut timer => {
                    router.handle_timeout(Instant::now());
                }
                // Feeds the API's copy when no message does (after_event).
                _ = flush_tick.tick() => {}
                else => anyhow::bail!("the edge's channels closed"),
            }
            after_event(&ctx, &mut router).await;
        }
    }
}

/// Whatever the socket holds, up to a batch ([`RECV_BATCH`]), without
/// going back to wait for readiness.
async fn read_batch(ctx: &Ctx<'_>, router: &mut Router, flood: &mut flood::Flood, buf: &mut [u8]) {
    for _ in 0..RECV_BATCH {
        match ctx.sock.try_recv_from(buf) {
            Ok((_, from)) if !flood.admit(Instant::now(), from) => {
                count_drop(ctx.view, "over_rate");
            }
            Ok((len, from)) => {
                relay_one(ctx, router, Flow::udp(from), &buf[..len]).await;
                after_event(ctx, router).await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => {
                tracing::debug!("recv: {e}");
                break;
            }
        }
    }
}

/// One log line per drop reason and interval, whoever floods the edge.
fn drop_log() -> &'static Arc<crate::ratelog::RateLog> {
    static LOG: std::sync::OnceLock<Arc<crate::ratelog::RateLog>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        Arc::new(crate::ratelog::RateLog::new(
            "edge",
            "SIP messages dropped",
            std::time::Duration::from_secs(10),
        ))
    })
}

/// Most REGISTERs a second the edge sends for moved phones: a failover
/// moves every phone at once, and a burst of ten thousand datagrams would
/// overflow the PBX's socket buffer (and the PBX).
const REREGISTER_RATE: u32 = 2_000;

/// Send the edge's own REGISTERs at [`REREGISTER_RATE`] at most, beside the
/// relay task so it never waits for them.
async fn send_paced(sock: Arc<UdpSocket>, mut rx: mpsc::UnboundedReceiver<(SocketAddr, Vec<u8>)>) {
    const BATCH: u32 = 20;
    let pause = std::time::Duration::from_secs(1) * BATCH / REREGISTER_RATE;
    let mut n = 0;
    while let Some((addr, bytes)) = rx.recv().await {
        let _ = sock.send_to(&bytes, addr).await;
        n += 1;
        if n % BATCH == 0 && !rx.is_empty() {
            tokio::time::sleep(pause).await;
        }
    }
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

/// What the router decided besides relaying: moves to log, phones to
/// register at their new PBX, changes for the API's copy, counts.
async fn after_event(ctx: &Ctx<'_>, router: &mut Router) {
    let moves = router.poll_moves();
    if !moves.is_empty() {
        let mut v = ctx.view.lock().expect("view lock");
        for m in moves {
            let (from, to) = (&ctx.names[m.from], &ctx.names[m.to]);
            tracing::info!("phone {} moves from {from} to {to}: {}", m.aor, m.reason);
            v.moves.push_front(PhoneMove {
                at_ms: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                aor: m.aor.to_string(),
                from: from.to_string(),
                to: to.to_string(),
                reason: m.reason.to_string(),
            });
        }
        v.moves.truncate(200);
    }
    for r in router.poll_reregister() {
        let Some(addr) = ctx.pbx_addrs.get(r.to).copied() else {
            continue;
        };
        match ctx.relay.register(&r.template, &r.call_id, r.expires) {
            Some(bytes) => {
                tracing::debug!(
                    "registering {} at {} for {} s",
                    r.aor,
                    ctx.names[r.to],
                    r.expires
                );
                let _ = ctx.paced.send((addr, bytes));
                metrics::counter!("resilience_edge_reregisters_total").increment(1);
            }
            None => count_drop(ctx.view, "bad_template"),
        }
    }
    let now = Instant::now();
    let (mut start, mut events) = ctx.window.get();
    if now.saturating_duration_since(start) >= TABLE_FLUSH {
        (start, events) = (now, 0);
    }
    events = events.saturating_add(1);
    ctx.window.set((start, events));
    if events <= TABLE_EAGER || now.saturating_duration_since(ctx.flushed.get()) >= TABLE_FLUSH {
        ctx.flushed.set(now);
        let changes = router.poll_changes();
        if !changes.is_empty() {
            let _ = ctx.changes.send(changes);
        }
        ctx.view.lock().expect("view lock").counts = router.counts();
    }
}

/// Relay one message and feed what it tells to the router.
async fn relay_one(ctx: &Ctx<'_>, router: &mut Router, from: Flow, msg: &[u8]) {
    let now = Instant::now();
    // The answer to a REGISTER the edge sent itself: the edge's, not a
    // phone's.
    if let Some(a) = ctx.relay.own_answer(from, msg) {
        router.handle_register_answer(now, &a.call_id, &a.aor, a.code, None);
        // Counted (reregisters sent against ok); a line per phone would be
        // a flood when a PBX refuses them all after a failover.
        if !(200..300).contains(&a.code) {
            tracing::debug!(
                "the PBX at {} refused to register {}: {}",
                from.addr,
                a.aor,
                a.code
            );
        }
        return;
    }
    let pbx_addrs = ctx.pbx_addrs;
    let decided = ctx
        .relay
        .handle(from, msg, |req| {
            router
                .route(now, &req.aor)
                .and_then(|s| pbx_addrs.get(s).copied())
        })
        .map(|mut send| {
            let mut cap = None;
            for note in std::mem::take(&mut send.notes) {
                if let Some(c) = apply_note(router, pbx_addrs, note, now) {
                    cap = Some(c);
                }
            }
            // A guest phone is told to re-register sooner (XiVO "Resilience Administration"'s
            // short expiry, per phone).
            if let Some(c) = cap {
                if let Some(b) = resilience_sip::proxy::cap_expires(&send.bytes, c) {
                    send.bytes = b;
                }
            }
            send
        });
    match decided {
        Ok(send) => {
            let sent = match send.to.transport {
                Transport::Udp => ctx.sock.send_to(&send.bytes, send.to.addr).await.is_ok(),
                Transport::Tcp | Transport::Tls => ctx.conns.send(send.to, send.bytes),
            };
            if !sent {
                count_drop(ctx.view, "unreachable");
                drop_log().event("unreachable", || format!("could not send to {:?}", send.to));
            }
            if send.generated {
                ctx.generated.increment(1);
            } else {
                ctx.relayed.increment(1);
            }
            ctx.view.lock().expect("view lock").relayed += 1;
        }
        Err(d) => {
            let label = reason_label(&d);
            count_drop(ctx.view, label);
            drop_log().event(label, || {
                format!("dropped a message from {}: {d}", from.addr)
            });
        }
    }
}

/// Feed what the relay saw to the router; Some(expiry) when a REGISTER's
/// 2xx must grant less than the PBX did.
fn apply_note(router: &mut Router, pbxs: &[SocketAddr], note: Note, now: Instant) -> Option<u32> {
    match note {
        Note::Register {
            aor,
            from,
            to,
            call_id,
            requested,
            template,
        } => {
            if let Some(s) = pbxs.iter().position(|a| *a == to.addr) {
                router.handle_register_sent(
                    now,
                    RegisterSent {
                        call_id: &call_id,
                        aor: &aor,
                        contact: &flow_text(&from),
                        to: s,
                        requested,
                        template: template.map(String::into_boxed_str),
                    },
                );
            }
            None
        }
        Note::Registered {
            aor,
            code,
            call_id,
            expires,
        } => router.handle_register_answer(now, &call_id, &aor, code, expires),
        Note::Invite { call_id, phone } => {
            if let Some(aor) = router.phone_of_flow(&flow_text(&phone)).cloned() {
                router.handle_call(now, &call_id, &aor);
            }
            None
        }
        Note::DialogDown { call_id } => {
            router.handle_call_end(now, &call_id);
            None
        }
        Note::DialogUp { call_id } => {
            router.handle_call_answered(now, &call_id);
            None
        }
    }
}

async fn metrics_text(State(s): State<ApiState>) -> impl IntoResponse {
    let c = s.view.lock().expect("view lock").counts;
    metrics::gauge!("resilience_edge_phones").set(c.phones as f64);
    metrics::gauge!("resilience_edge_phones_away").set(c.away as f64);
    metrics::gauge!("resilience_edge_flows").set(c.flows as f64);
    metrics::gauge!("resilience_edge_registers_pending").set(c.pending as f64);
    metrics::gauge!("resilience_edge_calls").set(c.calls as f64);
    for (what, n) in [
        ("expired", c.expired),
        ("evicted", c.evicted),
        ("over_cap", c.over_cap),
        ("unregistered", c.unregistered),
    ] {
        metrics::counter!("resilience_edge_phones_total", "event" => what).absolute(n);
    }
    metrics::counter!("resilience_edge_register_timeouts_total").absolute(c.register_timeouts);
    metrics::counter!("resilience_edge_registers_pending_dropped_total")
        .absolute(c.pending_dropped);
    metrics::counter!("resilience_edge_reregisters_ok_total").absolute(c.reregisters_ok);
    metrics::gauge!("resilience_edge_tcp_connections").set(s.conns.count() as f64);
    crate::metrics_export::prometheus_text(&s.metrics)
}

#[derive(serde::Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

fn refuse(code: StatusCode, msg: &str) -> Response {
    (code, Json(json!({ "error": msg }))).into_response()
}

/// The phones, a page at a time, for the holder of the edge's token: the
/// list names every user.
async fn phones(
    State(s): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    let Some(token) = &s.token else {
        return refuse(
            StatusCode::FORBIDDEN,
            "the phones list needs an API token: set [edge] token_file",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    use subtle::ConstantTimeEq;
    match given {
        Some(t) if bool::from(t.as_bytes().ct_eq(token.as_bytes())) => {}
        Some(_) => return refuse(StatusCode::UNAUTHORIZED, "invalid API token"),
        None => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "send Authorization: Bearer <token> (the edge's token_file)",
            )
        }
    }
    // The token's holder, at the configured pace (rowrate).
    if let Err(wait) = s.rows.admit(peer.ip(), Instant::now()) {
        metrics::counter!("resilience_edge_api_pages_refused_total").increment(1);
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut r = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "over [edge] api_rows_per_second for this address: try again after Retry-After",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        return r;
    }
    let limit = q.limit.unwrap_or(table::PAGE_MAX);
    let (rows, more) = s.table.page(q.after.as_deref(), limit);
    s.rows.charge(peer.ip(), rows.len());
    let now = Instant::now();
    let next = more
        .then(|| rows.last().map(|(a, _)| a.to_string()))
        .flatten();
    let list: Vec<_> = rows
        .iter()
        .map(|(a, p)| phone_json(a, p, &s.names, now))
        .collect();
    Json(json!({ "phones": list, "next": next })).into_response()
}

async fn status(State(s): State<ApiState>) -> Json<EdgeStatus> {
    let v = s.view.lock().expect("view lock");
    let pbxs = s
        .names
        .iter()
        .zip(s.pbx_up.lock().expect("up lock").iter())
        .map(|(n, up)| EdgePbx {
            name: n.clone(),
            up: *up,
        })
        .collect();
    let c = v.counts;
    Json(EdgeStatus {
        pbxs,
        relayed: v.relayed,
        dropped: v.dropped.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
        phones: c.phones,
        table: EdgeTable {
            phones: c.phones,
            away: c.away,
            flows: c.flows,
            registers_pending: c.pending,
            calls: c.calls,
            expired: c.expired,
            evicted: c.evicted,
            over_cap: c.over_cap,
            unregistered: c.unregistered,
            register_timeouts: c.register_timeouts,
            registers_pending_dropped: c.pending_dropped,
            reregisters_sent: c.reregisters_sent,
            reregisters_ok: c.reregisters_ok,
        },
        connections: s.conns.status(),
        moves: v.moves.iter().cloned().collect(),
    })
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
        crate::http_server::nofile_limit().map(|n| n.saturating_sub(EDGE_API_CONNECTIONS as u64));
    let limits = tcp::Limits {
        max_connections: crate::http_server::connection_cap(l.max_connections, nofile),
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
