//! The dashboard each node serves on its API port (XiVO "Resilience Administration"'s admin header,
//! Resilience Management page and monitoring table): one HTML page and a
//! small script, compiled into the binary so there is nothing to build or
//! install. The page reads the same API as the CLI (`/api/v1/status`,
//! `/api/v1/events`, `/api/v1/timeline`) once a second and posts the same
//! actions with the token the admin typed once.

pub mod timeline;

use crate::node_handle::ApiState;
use crate::node_handle::Msg;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use std::time::{Duration, SystemTime};
use tokio::sync::oneshot;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(page))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript", SCRIPT) }),
        )
        .route("/ui/app.css", get(|| async { asset("text/css", STYLE) }))
        .route("/api/v1/timeline", get(timeline))
}

/// The page may not be framed: another site could otherwise lay it under
/// its own buttons and have an admin click Stop services (clickjacking).
async fn page() -> Response {
    (
        [
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Html(INDEX),
    )
        .into_response()
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct Hours {
    hours: Option<f64>,
}

/// `GET /api/v1/timeline?hours=N` (default 6, at most 48).
async fn timeline(State(s): State<ApiState>, Query(q): Query<Hours>) -> Response {
    let hours = q.hours.unwrap_or(6.0).clamp(0.01, 48.0);
    let window = (hours * 3_600_000.0) as i64;
    let now = crate::clock::unix_ms(SystemTime::now());
    let Some(_turn) = crate::http_server::heavy_turn().await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many history reads at once: retry",
        )
            .into_response();
    };
    let (tx, rx) = oneshot::channel();
    if s.tx.send(Msg::StateEvents(now - window, tx)).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "node loop stopped").into_response();
    }
    let Ok(Ok(events)) = tokio::time::timeout(Duration::from_secs(5), rx).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "node loop did not answer").into_response();
    };
    Json(timeline::build(&events, now, window)).into_response()
}
