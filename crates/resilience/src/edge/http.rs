//! The web applications' side of the edge (XiVO's failover-mode pages: "users only
//! refresh their page"): an HTTP reverse proxy, WebSocket included, to the
//! web server of the first PBX the probes call up — with `ha_url`, the
//! Active node's. Each request picks its target anew, so the next request
//! after a failover reaches the other node at the same address; an open
//! WebSocket stays with the node it was opened on until it closes.

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct Proxy {
    /// Each PBX's web server, in the config's order (None: it has none).
    pub webs: Arc<Vec<Option<SocketAddr>>>,
    /// The probes' view of each PBX.
    pub up: Arc<Mutex<Vec<bool>>>,
    pub client: Client<HttpConnector, Body>,
}

impl Proxy {
    pub fn new(webs: Vec<Option<SocketAddr>>, up: Arc<Mutex<Vec<bool>>>) -> Proxy {
        Proxy {
            webs: Arc::new(webs),
            up,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    fn target(&self) -> Option<SocketAddr> {
        let up = self.up.lock().expect("up lock");
        self.webs
            .iter()
            .zip(up.iter())
            .find_map(|(w, &u)| if u { *w } else { None })
    }
}

/// Headers that belong to one connection, not to the request (RFC 9110
/// §7.6.1); an upgrade keeps Connection and Upgrade.
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

pub async fn forward(
    State(p): State<Proxy>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let Some(to) = p.target() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no PBX node is up to serve the web applications",
        );
    };
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
    let h = req.headers_mut();
    if !upgrade {
        for name in HOP {
            h.remove(name);
        }
        h.remove(header::UPGRADE);
    }
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {}", client.ip()),
        None => client.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    let from_client = upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut resp = match p.client.request(req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("web proxy: {to}: {e}");
            return json_error(StatusCode::BAD_GATEWAY, &format!("{to}: {e}"));
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(from_client) = from_client {
            let from_server = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (Ok(c), Ok(s)) = (from_client.await, from_server.await) else {
                    return;
                };
                let (mut c, mut s) = (TokioIo::new(c), TokioIo::new(s));
                let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
            });
        }
    }
    resp.map(Body::new)
}
