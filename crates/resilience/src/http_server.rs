//! The API's listener, bounded against strangers.
//!
//! Anyone who reaches the port can connect, so nothing a connection can do
//! may grow without bound or hold a resource for ever:
//!
//! - **Connection cap.** At most `[api] max_connections` connections are
//!   served at once, lowered to the process's `RLIMIT_NOFILE` less
//!   [`FD_HEADROOM`]: the node's own work (heartbeat sockets, the state
//!   database, replication, the pipes of the service commands it spawns on a
//!   failover) always has descriptors left. A connection over the cap is
//!   closed as soon as it is accepted, so it does not even wait in the
//!   kernel's queue. One address may hold at most an eighth of the cap
//!   (at least 8), so one stranger cannot take every slot from the
//!   followers, the edges and the dashboard.
//! - **Deadlines.** hyper's `header_read_timeout` bounds the wait for a
//!   request head, from the moment a connection opens or finishes its
//!   previous request: it is also the keep-alive idle timeout. A request
//!   body must arrive whole within [`BODY_TIMEOUT`] and fit in [`MAX_BODY`]
//!   (the API's bodies are a few bytes of JSON); a peer that stops reading
//!   a response is dropped after [`WRITE_TIMEOUT`]; a TLS handshake gets
//!   [`HEADER_TIMEOUT`].
//! - **Accept errors** (`EMFILE`, `ENFILE`, …) pause the accept loop, from
//!   50 ms doubling to 1 s, instead of spinning on a full table.
//! - **Host check** (DNS rebinding): a browser page from another site may
//!   resolve its own name to this node's address, but its requests still
//!   carry that name in `Host:`. The API answers only IP literals,
//!   `localhost`, the machine's hostname, the node's name (its
//!   certificate's) and the names in `[api] hosts`;
//!   any other name gets 421 with a body saying what to configure.
//! - **Logs** for what strangers cause are counters per reason, summarised
//!   at most once per [`SUMMARY_EVERY`], never a line per connection.
//!
//! Connections speak HTTP/1.1 only (every client of the API does; TLS
//! offers only `http/1.1` by ALPN). The edge's web proxy serves through the
//! same loop with its own [`Bounds`] and [`Refusals`], upgrades (WebSocket)
//! allowed: an upgraded connection keeps its slots until it closes.

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;

/// Descriptors kept out of the API's reach for the node's own work.
pub const FD_HEADROOM: usize = 256;
/// The cap never goes below this, however low the descriptor limit.
const MIN_CONNECTIONS: usize = 16;
/// Time to send a complete request head (also the keep-alive idle time).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send a complete request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a response may stay unread by the peer before the connection goes.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body (the API's bodies are small JSON documents).
pub const MAX_BODY: usize = 64 * 1024;
/// Largest request head hyper buffers.
const MAX_HEAD: usize = 32 * 1024;
/// How often the refusal counters may be logged.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// History and timeline reads served at once; others wait their turn.
const HEAVY_AT_ONCE: usize = 4;

/// What strangers were refused, by reason; logged as a summary. One per
/// listener kind: the API's ([`refusals`]), the edge's web proxy's.
pub struct Refusals {
    /// The metric counting them, by `reason`.
    metric: &'static str,
    over_cap: AtomicU64,
    over_peer_cap: AtomicU64,
    accept_errors: AtomicU64,
    foreign_host: AtomicU64,
    bad_body: AtomicU64,
    tls_failed: AtomicU64,
    busy: AtomicU64,
}

impl Refusals {
    pub const fn new(metric: &'static str) -> Refusals {
        Refusals {
            metric,
            over_cap: AtomicU64::new(0),
            over_peer_cap: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            foreign_host: AtomicU64::new(0),
            bad_body: AtomicU64::new(0),
            tls_failed: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    fn take(&self) -> Vec<(u64, &'static str)> {
        [
            (&self.over_cap, "connections over the cap"),
            (&self.over_peer_cap, "connections over the per-address cap"),
            (&self.accept_errors, "accept errors"),
            (&self.foreign_host, "requests for a foreign Host"),
            (&self.bad_body, "request bodies too slow or too large"),
            (&self.tls_failed, "failed TLS handshakes"),
            (&self.busy, "history reads refused as busy"),
        ]
        .into_iter()
        .map(|(c, what)| (c.swap(0, Ordering::Relaxed), what))
        .filter(|(n, _)| *n > 0)
        .collect()
    }

    /// A request body refused (too slow, too large): counted here, by a
    /// handler that reads bodies itself.
    pub fn bad_body(&self) {
        self.count(&self.bad_body, "bad_body");
    }

    fn count(&self, c: &AtomicU64, reason: &'static str) {
        c.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(self.metric, "reason" => reason).increment(1);
    }
}

/// The API's refusal counters (one API per process).
pub fn refusals() -> &'static Refusals {
    static R: Refusals = Refusals::new("resilience_api_refused_total");
    &R
}

fn count(c: &AtomicU64, reason: &'static str) {
    refusals().count(c, reason);
}

/// Wait for a turn at an expensive read (the history, the timeline): a
/// crowd of them cannot make the node hold many pages at once. `None`
/// after 5 s: answer 503.
pub async fn heavy_turn() -> Option<tokio::sync::SemaphorePermit<'static>> {
    static HEAVY: Semaphore = Semaphore::const_new(HEAVY_AT_ONCE);
    match tokio::time::timeout(Duration::from_secs(5), HEAVY.acquire()).await {
        Ok(Ok(p)) => Some(p),
        _ => {
            count(&refusals().busy, "busy");
            None
        }
    }
}

/// The soft `RLIMIT_NOFILE` of this process (None: unlimited).
pub fn nofile_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// The connection cap in force: the configured one, lowered so that
/// [`FD_HEADROOM`] descriptors stay free under `limit`.
pub fn connection_cap(configured: usize, limit: Option<u64>) -> usize {
    match limit {
        Some(n) => {
            let room = usize::try_from(n)
                .unwrap_or(usize::MAX)
                .saturating_sub(FD_HEADROOM);
            configured.min(room.max(MIN_CONNECTIONS))
        }
        None => configured,
    }
}

/// Connections open per peer address, each at most `max`. Entries live
/// only while their connections do, so the table is bounded by the cap.
struct PerPeer {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PerPeer`], given back when dropped.
struct PeerSlot {
    table: Arc<PerPeer>,
    ip: IpAddr,
}

impl PerPeer {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Connections one address may hold under a cap of `cap`.
pub fn per_peer_cap(cap: usize) -> usize {
    (cap / 8).max(8).min(cap)
}

/// The names the API answers to (besides IP literals and `localhost`).
#[derive(Debug, Clone, Default)]
pub struct Hosts(HashSet<String>);

impl Hosts {
    /// The configured names and the machine's hostname (also its first
    /// label, `pbx1` of `pbx1.example.com`).
    pub fn new(configured: &[String]) -> Hosts {
        let mut names: HashSet<String> = configured.iter().map(|h| normalize(h)).collect();
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let h = normalize(h.trim());
            if !h.is_empty() {
                if let Some((short, _)) = h.split_once('.') {
                    names.insert(short.to_owned());
                }
                names.insert(h);
            }
        }
        Hosts(names)
    }

    /// Whether a `Host:` value (name or address, with or without a port)
    /// is one of this node's.
    pub fn allows(&self, host: &str) -> bool {
        let name = strip_port(host.trim());
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = normalize(name);
        name == "localhost" || self.0.contains(&name)
    }
}

fn normalize(h: &str) -> String {
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// `[::1]:80` → `::1`, `pbx1:7480` → `pbx1`, `::1` → `::1`.
fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.split_once(':') {
        Some((name, port)) if !port.contains(':') => name,
        _ => h,
    }
}

fn refuse(code: StatusCode, msg: String) -> Response {
    (code, axum::Json(json!({ "error": msg }))).into_response()
}

/// Every request: the Host check, then the body read whole within its
/// deadline and size (handlers never wait on a slow peer).
async fn guard(State(hosts): State<Arc<Hosts>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if let Some(h) = host.filter(|h| !hosts.allows(h)) {
        count(&refusals().foreign_host, "foreign_host");
        let mut shown: String = h.chars().take(100).collect();
        shown.retain(|c| !c.is_control());
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this node does not answer to the name {shown:?}: use its IP address, or add the name to `hosts` in the node's [api] section"
            ),
        );
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => {
            count(&refusals().bad_body, "bad_body");
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body unreadable or over {MAX_BODY} bytes"),
            )
        }
        Err(_) => {
            count(&refusals().bad_body, "bad_body");
            refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {BODY_TIMEOUT:?}"),
            )
        }
    }
}

/// `app` behind the Host check and the body deadline.
pub fn guarded(app: Router, hosts: Hosts) -> Router {
    app.layer(axum::middleware::from_fn_with_state(Arc::new(hosts), guard))
}

/// What one listener allows: the API's are [`Bounds::api`].
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The subject of the summary line ("API", "web").
    pub what: &'static str,
    /// Connections served at once.
    pub cap: usize,
    /// Connections one address may hold.
    pub per_peer: usize,
    /// Time to send a request head, from the connection's opening or the
    /// end of its previous response (hyper starts its timer when the
    /// connection waits for a head): also the keep-alive idle limit.
    pub header_timeout: Duration,
    /// Serve HTTP/1.1 upgrades (WebSocket). An upgraded connection keeps
    /// its slot until it closes; the handler bounds its idle time.
    pub upgrades: bool,
}

impl Bounds {
    /// The API's: `cap` connections, an eighth of them per address.
    pub fn api(cap: usize) -> Bounds {
        Bounds {
            what: "API",
            cap,
            per_peer: per_peer_cap(cap),
            header_timeout: HEADER_TIMEOUT,
            upgrades: false,
        }
    }
}

/// Serve `app` on `listener` with the bounds above: at most `cap`
/// connections, over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    cap: usize,
) -> io::Result<()> {
    let bounds = Bounds::api(cap);
    serve_with(listener, app, tls, bounds, Slots::new(&bounds), refusals()).await
}

/// The connection slots of one or more listeners (the edge's HTTP and
/// HTTPS listeners share theirs).
#[derive(Clone)]
pub struct Slots {
    total: Arc<Semaphore>,
    per_peer: Arc<PerPeer>,
}

impl Slots {
    pub fn new(bounds: &Bounds) -> Slots {
        Slots {
            total: Arc::new(Semaphore::new(bounds.cap)),
            per_peer: Arc::new(PerPeer {
                max: bounds.per_peer.min(bounds.cap),
                open: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// Serve `app` within `bounds`, taking connections' places in `slots`,
/// counting refusals in `refused`. Handlers
/// find the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    bounds: Bounds,
    slots: Slots,
    refused: &'static Refusals,
) -> io::Result<()> {
    let cap = bounds.cap;
    let Slots {
        total: slots,
        per_peer,
    } = slots;
    let mut summary = tokio::time::interval(SUMMARY_EVERY);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pause = Duration::from_millis(50);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = summary.tick() => {
                let taken = refused.take();
                if !taken.is_empty() {
                    let text: Vec<String> =
                        taken.iter().map(|(n, what)| format!("{n} {what}")).collect();
                    tracing::warn!(
                        "{} refused in the last {SUMMARY_EVERY:?}: {} (cap {cap} connections, {} per address)",
                        bounds.what,
                        text.join(", "),
                        per_peer.max
                    );
                }
                continue;
            }
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            // The peer gave up before we took it: nothing to wait for.
            Err(e) if is_connection_error(&e) => continue,
            Err(_) => {
                refused.count(&refused.accept_errors, "accept_error");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        pause = Duration::from_millis(50);
        let Some(peer_slot) = per_peer.take(peer.ip()) else {
            refused.count(&refused.over_peer_cap, "over_peer_cap");
            drop(stream);
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.count(&refused.over_cap, "over_cap");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            // The slots go with the stream: an upgraded connection (a
            // WebSocket) holds them until it closes.
            let io = Held {
                io: WriteDeadline::new(stream, WRITE_TIMEOUT),
                _slots: (slot, peer_slot),
            };
            match tls {
                None => serve_connection(io, app, peer, bounds).await,
                Some(acceptor) => {
                    match tokio::time::timeout(bounds.header_timeout, acceptor.accept(io)).await {
                        Ok(Ok(s)) => serve_connection(s, app, peer, bounds).await,
                        _ => refused.count(&refused.tls_failed, "tls_failed"),
                    }
                }
            }
        });
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection<I>(io: I, app: Router, peer: SocketAddr, bounds: Bounds)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let inner = hyper_util::service::TowerToHyperService::new(app);
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        hyper::service::Service::call(&inner, req)
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(bounds.header_timeout)
        .max_buf_size(MAX_HEAD);
    let conn = b.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    // Errors here are the peer's (reset, timeout, bad request): hyper has
    // already answered what could be answered.
    if bounds.upgrades {
        let _ = conn.with_upgrades().await;
    } else {
        let _ = conn.await;
    }
}

/// A stream and what it holds while open (its connection slots).
struct Held<S, G> {
    io: S,
    _slots: G,
}

impl<S: AsyncRead + Unpin, G: Unpin> AsyncRead for Held<S, G> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin, G: Unpin> AsyncWrite for Held<S, G> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A stream whose writes fail once the peer has not read for `limit`
/// (a response cannot pin a connection slot for ever).
pub struct WriteDeadline<S> {
    io: S,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub fn new(io: S, limit: Duration) -> Self {
        WriteDeadline {
            io,
            limit,
            stalled: None,
        }
    }

    /// After the inner write said Pending: Pending until the deadline, then an error.
    fn wait_stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn settle<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.wait_stall(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.settle(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.settle(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.settle(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.settle(r, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_check_allows_addresses_localhost_and_configured_names_only() {
        let h = Hosts::new(&["PBX1.example.com.".into()]);
        for ok in [
            "127.0.0.1",
            "127.0.0.1:7480",
            "[::1]:7480",
            "::1",
            "10.0.0.5",
            "localhost:7480",
            "LOCALHOST",
            "pbx1.example.com",
            "pbx1.example.com:443",
            "pbx1.EXAMPLE.com.",
        ] {
            assert!(h.allows(ok), "{ok} should be allowed");
        }
        for bad in [
            "evil.example",
            "evil.example:7480",
            "127.0.0.1.evil.example",
            "pbx1.example.com.evil",
            "",
        ] {
            assert!(!h.allows(bad), "{bad} should be refused");
        }
    }

    #[test]
    fn cap_leaves_headroom_under_the_descriptor_limit() {
        assert_eq!(connection_cap(512, Some(65_536)), 512);
        assert_eq!(connection_cap(512, Some(1024)), 512);
        assert_eq!(connection_cap(2000, Some(1024)), 1024 - FD_HEADROOM);
        assert_eq!(connection_cap(512, Some(100)), MIN_CONNECTIONS);
        assert_eq!(connection_cap(512, None), 512);
        assert_eq!(per_peer_cap(512), 64);
        assert_eq!(per_peer_cap(16), 8);
        assert_eq!(per_peer_cap(4), 4);
    }
}
