//! The node's HTTP API (axum): what followers, the edge, the CLI and the
//! dashboard read, and the admin's actions. Every call that changes
//! something needs `Authorization: Bearer <token>`; without it the answer is
//! 401 with a JSON error.

use crate::http_server as server;
use crate::node_handle::{ApiState, EventsPage, Msg};
use crate::status::{ApiAnswer, HistoryPage, NodeView, PushAnswer, PushJob};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use resilience_core::Command;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/ha", get(ha))
        .route("/api/v1/status", get(status))
        .route("/api/v1/events", get(events))
        .route("/api/v1/services/start", post(start))
        .route("/api/v1/services/stop", post(stop))
        .route("/api/v1/failback", post(failback))
        .route("/api/v1/switchover", post(switchover))
        .route("/api/v1/replicate", post(replicate))
        .merge(crate::web::routes())
        .with_state(state)
}

/// TLS material for the API, from `[api] tls_cert` and `tls_key` (PEM).
pub struct Tls {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Serve the API on `listener`, over TLS when `tls` is given, within the
/// bounds of [`server`] and the `[api]` section (connection cap, Host names).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    tls: Option<Tls>,
    cfg: resilience_core::config::ApiSection,
) -> anyhow::Result<()> {
    let app = server::guarded(router(state), server::Hosts::new(&cfg.hosts));
    let acceptor = match tls {
        None => None,
        Some(t) => {
            // One process-wide crypto provider (ring); a second install is a no-op.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&t.cert, &t.key)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("API TLS {} / {}: {e}", t.cert.display(), t.key.display())
                })?;
            let mut config = (*config.get_inner()).clone();
            // HTTP/1.1 is what the server speaks.
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        }
    };
    let limit = server::nofile_limit();
    let cap = server::connection_cap(cfg.max_connections, limit);
    tracing::info!(
        "API serves at most {cap} connections at once (max_connections {}, descriptor limit {})",
        cfg.max_connections,
        limit.map_or("unknown".into(), |n| n.to_string())
    );
    server::serve(listener, app, acceptor, cap).await?;
    Ok(())
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    let answer = ApiAnswer {
        error: Some(msg.into()),
        ..ApiAnswer::default()
    };
    (code, Json(answer)).into_response()
}

/// `Err(reason)` when the call must be refused with 401.
fn authorized(state: &ApiState, headers: &HeaderMap) -> Result<(), &'static str> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if bool::from(t.as_bytes().ct_eq(state.token.as_bytes())) => Ok(()),
        Some(_) => Err("invalid API token"),
        None => Err(
            "this call changes the node: send Authorization: Bearer <token> (the node's api.token)",
        ),
    }
}

async fn ha(State(s): State<ApiState>) -> Response {
    let ha = s.ha.borrow().clone();
    match ha {
        Some(ha) => Json(ha).into_response(),
        None => Json(json!({})).into_response(),
    }
}

async fn status(State(s): State<ApiState>) -> Response {
    let doc = s.status.borrow().as_ref().map(|v| v.doc.clone());
    let Some(mut doc) = doc else {
        return Json(json!({})).into_response();
    };
    // Replication runs beside the node loop: read it now, not as of the last tick.
    if let Some(r) = &s.replicator {
        doc.replication = Some(r.status_doc());
    }
    doc.pbx_settings = Some((*s.pbx_settings).clone());
    Json(doc).into_response()
}

/// Most events one `GET /api/v1/events` returns: a page, never the whole
/// history (`next_before` leads to the next one).
pub const EVENTS_PAGE_MAX: usize = 500;

#[derive(Deserialize)]
struct EventsQuery {
    limit: Option<usize>,
    before: Option<i64>,
}

/// `GET /api/v1/events?limit=N&before=ID`: the newest `N` events (at most
/// [`EVENTS_PAGE_MAX`]) older than event `ID`, newest first, and the
/// cursor of the next page (`next_before`, `null` at the end).
async fn events(State(s): State<ApiState>, Query(q): Query<EventsQuery>) -> Response {
    let limit = q.limit.unwrap_or(50).min(EVENTS_PAGE_MAX);
    let page = EventsPage {
        limit,
        before: q.before,
    };
    let Some(_turn) = server::heavy_turn().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many history reads at once: retry",
        );
    };
    let (tx, rx) = oneshot::channel();
    if s.tx.send(Msg::Events(page, tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "node loop stopped");
    }
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(ev)) => {
            let next = (limit > 0 && ev.len() == limit)
                .then(|| ev.last().map(|e| e.id))
                .flatten();
            Json(HistoryPage {
                events: ev,
                limit,
                next_before: next,
            })
            .into_response()
        }
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "node loop did not answer"),
    }
}

#[derive(Deserialize, Default)]
struct Force {
    #[serde(default)]
    force: bool,
}

async fn command(s: &ApiState, headers: &HeaderMap, cmd: Command) -> Response {
    if let Err(why) = authorized(s, headers) {
        return error(StatusCode::UNAUTHORIZED, why);
    }
    let (tx, rx) = oneshot::channel();
    if s.tx.send(Msg::Command(cmd, tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "node loop stopped");
    }
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(Ok(msg))) => Json(ApiAnswer {
            ok: Some(true),
            message: Some(msg),
            ..ApiAnswer::default()
        })
        .into_response(),
        Ok(Ok(Err(crate::node_handle::Refused(reason)))) => (
            StatusCode::CONFLICT,
            Json(ApiAnswer {
                ok: Some(false),
                error: Some(format!("{cmd} refused: {reason}")),
                reason: Some(reason),
                message: None,
            }),
        )
            .into_response(),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "node loop did not answer"),
    }
}

async fn start(
    State(s): State<ApiState>,
    headers: HeaderMap,
    q: Query<Force>,
    body: Option<Json<Force>>,
) -> Response {
    let force = q.force || body.is_some_and(|b| b.force);
    command(&s, &headers, Command::StartServices { force }).await
}

async fn stop(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    command(&s, &headers, Command::StopServices).await
}

async fn failback(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    command(&s, &headers, Command::Failback).await
}

/// `POST /api/v1/switchover`: move the service to the peer now, after a
/// drain (409 with the reason when the peer is not ready).
async fn switchover(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    command(&s, &headers, Command::Switchover).await
}

/// Why this node may not push now, if it may not: the core's rule
/// ([`Snapshot::may_push_data`]) over the last published snapshot.
pub fn push_refusal(view: &Option<NodeView>) -> Option<String> {
    match view {
        Some(v) => v.snapshot.may_push_data().err().map(|r| r.to_string()),
        None => Some("the node has not published its state yet".into()),
    }
}

async fn replicate(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(why) = authorized(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, why);
    }
    let Some(r) = s.replicator.clone() else {
        return error(
            StatusCode::CONFLICT,
            "no [replication] section in this node's config",
        );
    };
    let refusal = push_refusal(&s.status.borrow());
    if let Some(why) = refusal {
        return error(StatusCode::CONFLICT, why);
    }
    let jobs = r
        .push_all()
        .await
        .into_iter()
        .map(|(job, res)| match res {
            Ok(a) => PushJob {
                job,
                files: Some(a.files),
                bytes: Some(a.bytes),
                deleted: Some(a.deleted),
                error: None,
            },
            Err(e) => PushJob {
                job,
                files: None,
                bytes: None,
                deleted: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    Json(PushAnswer { jobs }).into_response()
}

async fn metrics(State(s): State<ApiState>) -> Response {
    crate::metrics_export::prometheus_text(&s.metrics)
}
