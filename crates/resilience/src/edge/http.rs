//! The web applications' side of the edge (XiVO's failover-mode pages: "users only
//! refresh their page"): an HTTP reverse proxy, WebSocket included, to the
//! web server of the first PBX the probes call up — with `ha_url`, the
//! Active node's — whose web server is healthy. Each request picks its
//! target anew, so the next request after a failover reaches the other node
//! at the same address; an open WebSocket stays with the node it was opened
//! on until it closes.
//!
//! Served on `http_listen` and, over TLS, `https_listen`, by the bounded
//! listener of [`crate::http_server`] (connection caps, header and idle
//! deadlines, accept back-off); request bodies have a deadline and a size
//! limit here, answers a deadline, and an open WebSocket an idle limit.
//!
//! A request without a body whose connection is refused is sent once to
//! the next live web server (nothing reached the first; nginx's
//! `proxy_next_upstream error`); one with a body is not sent twice.
//!
//! Which web server is healthy is decided in
//! [`resilience_core::edge::web_upstreams`] (nginx's `max_fails`/`fail_timeout`,
//! and an optional health URL per PBX); this module feeds it the outcome
//! of every proxied request and of every check.

use crate::cert_reload::ReloadingCert;
use crate::http_server::{self as server, Bounds, Refusals};
use anyhow::Context as _;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use resilience_core::config::edge::{EdgeConfig, WebSection};
use resilience_core::edge::web_upstreams::{Change, Outcome, Upstreams};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the web listeners refused (both share one budget and one summary).
static REFUSED: Refusals = Refusals::new("resilience_edge_web_refused_total");

/// The proxy's shared state.
struct Web {
    /// Each PBX's web server, in the config's order (None: it has none).
    webs: Vec<Option<SocketAddr>>,
    names: Vec<String>,
    /// The probes' view of each PBX.
    up: Arc<Mutex<Vec<bool>>>,
    upstreams: Mutex<Upstreams>,
    client: Client<HttpConnector, Body>,
    cfg: WebSection,
}

/// One listener's handle on the proxy.
#[derive(Clone)]
pub struct Proxy {
    web: Arc<Web>,
    /// Requests came over TLS (`X-Forwarded-Proto: https`).
    https: bool,
}

impl Web {
    fn target(&self, now: Instant) -> Option<(usize, SocketAddr)> {
        let up = self.up.lock().expect("up lock").clone();
        let i = self
            .upstreams
            .lock()
            .expect("upstreams lock")
            .pick(now, &up)?;
        Some((i, self.webs[i]?))
    }

    /// Where a request goes after `tried` refused its connection.
    fn target_other(&self, now: Instant, tried: usize) -> Option<(usize, SocketAddr)> {
        let up = self.up.lock().expect("up lock").clone();
        let i = self
            .upstreams
            .lock()
            .expect("upstreams lock")
            .pick_other(now, &up, Some(tried))?;
        Some((i, self.webs[i]?))
    }

    /// Feed an outcome (or a check) to the health rules; log what changed.
    fn record(&self, f: impl FnOnce(&mut Upstreams)) {
        let changes = {
            let mut u = self.upstreams.lock().expect("upstreams lock");
            f(&mut u);
            u.poll_changes()
        };
        let ft = self.cfg.fail_timeout;
        for c in changes {
            match c {
                Change::Skipped { upstream, fails } => {
                    let name = &self.names[upstream];
                    tracing::warn!(
                        "web upstream {name} ({}) temporarily disabled for {ft:?} after {fails} failed request(s)",
                        show(self.webs[upstream])
                    );
                    metrics::counter!("resilience_edge_web_upstream_disabled_total", "pbx" => name.clone(), "why" => "max_fails").increment(1);
                    metrics::gauge!("resilience_edge_web_upstream_available", "pbx" => name.clone()).set(0.0);
                }
                Change::CheckDown { upstream } => {
                    let name = &self.names[upstream];
                    tracing::warn!(
                        "web upstream {name} ({}) disabled: its health check fails",
                        show(self.webs[upstream])
                    );
                    metrics::counter!("resilience_edge_web_upstream_disabled_total", "pbx" => name.clone(), "why" => "health_check").increment(1);
                    metrics::gauge!("resilience_edge_web_upstream_available", "pbx" => name.clone()).set(0.0);
                }
                Change::Back { upstream } => {
                    let name = &self.names[upstream];
                    tracing::warn!(
                        "web upstream {name} ({}) enabled again",
                        show(self.webs[upstream])
                    );
                    metrics::gauge!("resilience_edge_web_upstream_available", "pbx" => name.clone()).set(1.0);
                }
            }
        }
    }
}

fn show(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "-".into(), |a| a.to_string())
}

/// Bind `http_listen` and `https_listen` (when set), serve them, and
/// start the web servers' health checks.
pub async fn spawn(cfg: &EdgeConfig, up: Arc<Mutex<Vec<bool>>>) -> anyhow::Result<()> {
    if cfg.edge.http_listen.is_none() && cfg.edge.https_listen.is_none() {
        return Ok(());
    }
    let web = new_web(cfg, up);
    spawn_checks(&web, cfg);
    let bounds = web_bounds(cfg);
    // One budget for both listeners: HTTPS does not double the descriptors
    // strangers may hold.
    let slots = server::Slots::new(&bounds);
    let app = |https: bool| {
        axum::Router::new().fallback(forward).with_state(Proxy {
            web: web.clone(),
            https,
        })
    };
    if let Some(addr) = cfg.edge.http_listen {
        let l = crate::listen_fds::tokio_tcp(addr)
            .await
            .with_context(|| format!("web proxy socket {addr}"))?;
        tracing::info!("edge: web applications on http://{addr}");
        let (app, slots) = (app(false), slots.clone());
        tokio::spawn(async move {
            let _ = server::serve_with(l, app, None, bounds, slots, &REFUSED).await;
        });
    }
    if let Some(addr) = cfg.edge.https_listen {
        let (acceptor, cert) = tls_acceptor(cfg)?;
        let l = crate::listen_fds::tokio_tcp(addr)
            .await
            .with_context(|| format!("web proxy TLS socket {addr}"))?;
        tracing::info!(
            "edge: web applications on https://{addr} (certificate {}, reloaded when it changes)",
            cert.display()
        );
        let app = app(true);
        tokio::spawn(async move {
            let _ = server::serve_with(l, app, Some(acceptor), bounds, slots, &REFUSED).await;
        });
    }
    Ok(())
}

/// The proxy's state: each PBX's web server and a client to reach them.
fn new_web(cfg: &EdgeConfig, up: Arc<Mutex<Vec<bool>>>) -> Arc<Web> {
    let webs: Vec<Option<SocketAddr>> = cfg.pbxs.iter().map(|p| p.web).collect();
    let has_web: Vec<bool> = webs.iter().map(Option::is_some).collect();
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.web.upstream_timeout));
    connector.set_nodelay(true);
    Arc::new(Web {
        names: cfg.pbxs.iter().map(|p| p.name.clone()).collect(),
        webs,
        up,
        upstreams: Mutex::new(Upstreams::new(cfg.web_policy(), &has_web)),
        client: Client::builder(TokioExecutor::new()).build(connector),
        cfg: cfg.web.clone(),
    })
}

/// A health check loop per web server that has a health URL.
fn spawn_checks(web: &Arc<Web>, cfg: &EdgeConfig) {
    for (i, p) in cfg.pbxs.iter().enumerate() {
        if let (Some(addr), Some(path)) = (p.web, &p.web_health) {
            metrics::gauge!("resilience_edge_web_upstream_available", "pbx" => p.name.clone())
                .set(1.0);
            tokio::spawn(check_loop(
                web.clone(),
                i,
                format!("http://{addr}{path}"),
                cfg.health.interval,
                cfg.health.timeout,
            ));
        }
    }
}

/// The web listeners' bounds, from the config and the descriptor limit.
fn web_bounds(cfg: &EdgeConfig) -> Bounds {
    let limit = server::nofile_limit();
    let cap = server::connection_cap(cfg.web.max_connections, limit);
    let bounds = Bounds {
        what: "web proxy",
        cap,
        per_peer: cfg.web.max_per_source.min(cap),
        header_timeout: cfg.web.header_timeout,
        upgrades: true,
    };
    tracing::info!(
        "edge: the web proxy serves at most {cap} connections at once, {} per address (max_connections {}, descriptor limit {})",
        bounds.per_peer,
        cfg.web.max_connections,
        limit.map_or("unknown".into(), |n| n.to_string())
    );
    bounds
}

/// The HTTPS listener's TLS, with a certificate reloaded when it changes;
/// the certificate's path.
fn tls_acceptor(cfg: &EdgeConfig) -> anyhow::Result<(tokio_rustls::TlsAcceptor, &std::path::Path)> {
    let (Some(cert), Some(key)) = (&cfg.edge.tls_cert, &cfg.edge.tls_key) else {
        anyhow::bail!("https_listen needs tls_cert and tls_key");
    };
    let certs = ReloadingCert::load(cert, key).context("edge TLS certificate")?;
    certs.spawn_watch("edge");
    let tls = Arc::new(certs.server_config(&[b"http/1.1"]));
    Ok((tokio_rustls::TlsAcceptor::from(tls), cert))
}

/// Poll one web server's health URL (a 2xx or 3xx passes).
async fn check_loop(web: Arc<Web>, i: usize, url: String, every: Duration, timeout: Duration) {
    let Ok(uri) = url.parse::<Uri>() else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let req = axum::http::Request::get(uri.clone())
            .header(header::USER_AGENT, "resilience-edge")
            .body(Body::empty())
            .expect("a GET with a parsed URI");
        let ok = match tokio::time::timeout(timeout, web.client.request(req)).await {
            Ok(Ok(r)) => r.status().is_success() || r.status().is_redirection(),
            _ => false,
        };
        web.record(|u| u.handle_check(Instant::now(), i, ok));
    }
}

/// Headers that belong to one connection, not to the message (RFC 9110
/// §7.6.1), dropped both ways; an upgrade keeps Connection and Upgrade.
const HOP: [header::HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn json_error(code: StatusCode, text: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"error\":{text:?}}}"),
    )
        .into_response()
}

fn count(pbx: &str, outcome: &'static str) {
    metrics::counter!("resilience_edge_web_requests_total", "pbx" => pbx.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// Forward one web request (or WebSocket upgrade) to the PBX the probes
/// show up.
pub async fn forward(
    State(p): State<Proxy>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let web = &p.web;
    let Some((i, to)) = web.target(Instant::now()) else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no PBX node is up to serve the web applications",
        );
    };
    if let Some(refused) = refuse_declared_body(web, &req) {
        return refused;
    }
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let Ok(uri) = format!("http://{to}{path}").parse::<Uri>() else {
        return json_error(StatusCode::BAD_REQUEST, "bad request target");
    };
    *req.uri_mut() = uri;
    proxy_headers(req.headers_mut(), upgrade, client, p.https);
    let from_client = upgrade.then(|| hyper::upgrade::on(&mut req));
    // A request without a body can be sent again: to another web server
    // when this one refuses the connection (nothing reached it).
    let spare = (!upgrade && hyper::body::Body::is_end_stream(req.body()))
        .then(|| (req.method().clone(), req.version(), req.headers().clone()));
    let fault = Arc::new(AtomicU8::new(FAULT_NONE));
    let req = req.map(|b| {
        Body::new(Limited {
            inner: b,
            deadline: Box::pin(tokio::time::sleep(web.cfg.body_timeout)),
            left: web.cfg.max_body,
            fault: fault.clone(),
        })
    });
    match send(web, req, (i, to), &path, spare, &fault).await {
        Ok((i, resp)) => answer(web, i, resp, from_client),
        Err(refused) => refused,
    }
}

/// A request whose declared length is over the limit is refused before
/// anything is sent.
fn refuse_declared_body(web: &Web, req: &Request) -> Option<Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_none_or(|n| n <= web.cfg.max_body) {
        return None;
    }
    REFUSED.bad_body();
    Some(json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body over {} bytes", web.cfg.max_body),
    ))
}

/// Drop the client connection's own headers (kept for an upgrade) and say
/// who the client is and how it came.
fn proxy_headers(h: &mut HeaderMap, upgrade: bool, client: SocketAddr, https: bool) {
    if !upgrade {
        for name in HOP {
            h.remove(name);
        }
        h.remove(header::UPGRADE);
        h.remove("keep-alive");
    }
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {}", client.ip()),
        None => client.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    h.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
}

/// What a request without a body needs to be sent again.
type Spare = (Method, Version, HeaderMap);

/// Send `req` to web server `i` at `to`, and once more to another when its
/// connection is refused and `spare` allows it; the server that answered
/// and its answer, or the error answer for the client.
async fn send(
    web: &Web,
    mut req: axum::http::Request<Body>,
    (mut i, mut to): (usize, SocketAddr),
    path: &str,
    mut spare: Option<Spare>,
    fault: &AtomicU8,
) -> Result<(usize, hyper::Response<Incoming>), Response> {
    loop {
        let name = &web.names[i];
        let answer = tokio::time::timeout(web.cfg.upstream_timeout, web.client.request(req)).await;
        let e = match answer {
            Ok(Ok(r)) => return Ok((i, r)),
            Ok(Err(e)) => e,
            Err(_) => {
                count(name, "failed");
                web.record(|u| u.handle_outcome(Instant::now(), i, Outcome::Failed));
                return Err(json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "{name}'s web server did not answer within {:?}",
                        web.cfg.upstream_timeout
                    ),
                ));
            }
        };
        if let Some(refused) = client_fault(web, name, fault) {
            return Err(refused);
        }
        count(name, "failed");
        web.record(|u| u.handle_outcome(Instant::now(), i, Outcome::Failed));
        tracing::debug!("web proxy: {name} {to}: {e}");
        (i, to, req) = resend(web, (i, to), path, spare.take(), &e).map_err(|r| *r)?;
    }
}

/// The client's own body broke the request: not the server's fault.
fn client_fault(web: &Web, name: &str, fault: &AtomicU8) -> Option<Response> {
    let (code, text) = match fault.load(Ordering::Relaxed) {
        FAULT_SLOW => (
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {:?}",
                web.cfg.body_timeout
            ),
        ),
        FAULT_LARGE => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {} bytes", web.cfg.max_body),
        ),
        _ => return None,
    };
    count(name, "client_error");
    REFUSED.bad_body();
    Some(json_error(code, &text))
}

/// The request again, for another web server, when server `i` at `to`
/// refused the connection and the request has no body; else the error
/// answer for the client.
fn resend(
    web: &Web,
    (i, to): (usize, SocketAddr),
    path: &str,
    spare: Option<Spare>,
    e: &hyper_util::client::legacy::Error,
) -> Result<(usize, SocketAddr, axum::http::Request<Body>), Box<Response>> {
    let name = &web.names[i];
    let retry = match (e.is_connect(), spare) {
        (true, Some(parts)) => web.target_other(Instant::now(), i).map(|t| (t, parts)),
        _ => None,
    };
    let Some(((j, other), (method, version, headers))) = retry else {
        return Err(Box::new(json_error(
            StatusCode::BAD_GATEWAY,
            &format!("{name} {to}: {e}"),
        )));
    };
    let Ok(uri) = format!("http://{other}{path}").parse::<Uri>() else {
        return Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "bad request target",
        )));
    };
    let mut again = axum::http::Request::new(Body::empty());
    *again.method_mut() = method;
    *again.uri_mut() = uri;
    *again.version_mut() = version;
    *again.headers_mut() = headers;
    metrics::counter!("resilience_edge_web_retried_total", "pbx" => web.names[j].clone())
        .increment(1);
    Ok((j, other, again))
}

/// Count web server `i`'s answer, then hand it to the client: without the
/// server connection's own headers, or, for an upgrade, with a tunnel
/// between the two upgraded connections.
fn answer(
    web: &Web,
    i: usize,
    mut resp: hyper::Response<Incoming>,
    from_client: Option<hyper::upgrade::OnUpgrade>,
) -> Response {
    let name = &web.names[i];
    let failed = matches!(
        resp.status(),
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    );
    count(name, if failed { "failed" } else { "ok" });
    let outcome = if failed { Outcome::Failed } else { Outcome::Ok };
    web.record(|u| u.handle_outcome(Instant::now(), i, outcome));
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The web server's connection is not the client's (it may close
        // each one; the client's stays open for its next request).
        let h = resp.headers_mut();
        for name in HOP {
            h.remove(name);
        }
        h.remove(header::UPGRADE);
        h.remove("keep-alive");
    } else if let Some(from_client) = from_client {
        let from_server = hyper::upgrade::on(&mut resp);
        let idle = web.cfg.websocket_idle;
        tokio::spawn(async move {
            let (Ok(c), Ok(s)) = (from_client.await, from_server.await) else {
                return;
            };
            metrics::gauge!("resilience_edge_websockets").increment(1.0);
            if tunnel(TokioIo::new(c), TokioIo::new(s), idle).await {
                metrics::counter!("resilience_edge_websockets_idle_closed_total").increment(1);
            }
            metrics::gauge!("resilience_edge_websockets").decrement(1.0);
        });
    }
    resp.map(Body::new)
}

/// Copy both ways until either side closes or nothing has passed for
/// `idle`; true when closed for idleness.
async fn tunnel<A, B>(a: A, b: B, idle: Duration) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = tokio::time::Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Active {
        io: a,
        start,
        last: last.clone(),
    };
    let mut b = Active {
        io: b,
        start,
        last: last.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            _ = &mut copy => return false,
            _ = tokio::time::sleep_until(deadline) => {
                let quiet = start + Duration::from_millis(last.load(Ordering::Relaxed));
                if tokio::time::Instant::now().saturating_duration_since(quiet) >= idle {
                    return true;
                }
            }
        }
    }
}

/// A stream that notes when it last read something (ms after `start`).
struct Active<S> {
    io: S,
    start: tokio::time::Instant,
    last: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let ms = this.start.elapsed().as_millis() as u64;
            this.last.store(ms, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

const FAULT_NONE: u8 = 0;
const FAULT_SLOW: u8 = 1;
const FAULT_LARGE: u8 = 2;

/// A request body that must arrive whole before a deadline and stay under
/// a size; which limit broke is left in `fault`.
struct Limited {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    left: u64,
    fault: Arc<AtomicU8>,
}

impl hyper::body::Body for Limited {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.fault.store(FAULT_SLOW, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(io::Error::new(
                io::ErrorKind::TimedOut,
                "request body too slow",
            )))));
        }
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                let n = d.len() as u64;
                if n > this.left {
                    this.fault.store(FAULT_LARGE, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(axum::Error::new(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "request body too large",
                    )))));
                }
                this.left -= n;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_quiet_tunnel_closes_after_the_idle_limit_a_busy_one_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut a_peer) = tokio::io::duplex(64);
        let (b, mut b_peer) = tokio::io::duplex(64);
        let idle = Duration::from_secs(2);
        let t = tokio::spawn(tunnel(a, b, idle));
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            a_peer.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            b_peer.read_exact(&mut one).await.unwrap();
        }
        assert!(
            !t.is_finished(),
            "3 s of traffic every 0.5 s, idle limit 2 s"
        );
        let closed = tokio::time::timeout(Duration::from_secs(10), t).await;
        assert!(closed.unwrap().unwrap(), "closed for idleness");
    }
}
