//! `resilience follow`: on a contact-center, UC or media host, follow the
//! linked node's Active flag (XiVO's `xivocc-ha-monitoring`, every poll
//! instead of every cron minute).
//!
//! One loop owns the sans-IO [`Follower`]: each poll's answer goes in, and
//! "make the services active/inactive" comes out and runs as its own task
//! (so a slow `systemctl` never delays the next poll); its result goes back
//! in. The status document and metrics are refreshed after every step.

use crate::services::{run_in, ServiceState, Services, ServicesFailed};
use crate::status::{FollowerActions, FollowerPending, FollowerPolls, FollowerStatus, HaRoute};
use anyhow::Context;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use resilience_core::config::follow::{FollowConfig, HooksSection};
use resilience_core::follower::{Answer, Event, Follower, Output};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};
use tokio::sync::{mpsc, watch};

/// Connections the follower's status API holds at most (it serves a
/// dashboard and a scraper or two).
const FOLLOW_API_CONNECTIONS: usize = 64;

/// Read and validate a follower config file; the folder relative paths
/// (and commands) start from.
pub fn load_config(path: &Path) -> anyhow::Result<(FollowConfig, PathBuf)> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("{shown}: cannot read"))?;
    let cfg = FollowConfig::parse(&shown, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((cfg, crate::paths::config_base(path)))
}

/// One poll: the node's `active` flag, or why there is none.
fn poll(agent: &ureq::Agent, url: &str) -> Answer {
    let mut resp = match agent.get(url).call() {
        Ok(r) => r,
        Err(e) => return Answer::Unreachable(e.to_string()),
    };
    let code = resp.status().as_u16();
    if code != 200 {
        return Answer::Unreachable(format!("HTTP {code}"));
    }
    let body = match resp.body_mut().read_to_string() {
        Ok(b) => b,
        Err(e) => return Answer::Unreachable(format!("unreadable answer: {e}")),
    };
    match serde_json::from_str::<HaRoute>(&body) {
        Ok(ha) => Answer::Active(ha.active),
        Err(e) if e.is_data() => Answer::Unreachable("the answer has no boolean `active`".into()),
        Err(e) => Answer::Unreachable(format!("unreadable answer: {e}")),
    }
}

/// Services first, then the hooks: started services are what an
/// `on_active` hook may rely on; `on_inactive` runs once they are down.
async fn apply(
    services: &Services,
    hooks: &HooksSection,
    dir: &Path,
    active: bool,
) -> Result<(), ServicesFailed> {
    let (lines, result) = services.ensure(active).await;
    let mut failed = result.err().map(|f| f.0).unwrap_or_default();
    for l in lines {
        tracing::info!("[RESILIENCE] {l}");
    }
    let list = if active {
        &hooks.on_active
    } else {
        &hooks.on_inactive
    };
    for cmd in list {
        match run_in(dir, cmd, hooks.timeout).await {
            Ok(_) => tracing::info!("[RESILIENCE] hook `{cmd}` done"),
            Err(e) => failed.push(format!("hook {e}")),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ServicesFailed(failed))
    }
}

#[derive(Default)]
struct Counters {
    polls_ok: u64,
    polls_failed: u64,
    actions_ok: u64,
    actions_failed: u64,
}

#[derive(Clone)]
struct ApiState {
    /// `None` until the first step.
    status: watch::Receiver<Option<FollowerStatus>>,
    metrics: PrometheusHandle,
}

async fn status(State(s): State<ApiState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let doc = s.status.borrow().clone();
    match doc {
        Some(doc) => Json(doc).into_response(),
        None => Json(json!({})).into_response(),
    }
}

async fn serve_metrics(State(s): State<ApiState>) -> axum::response::Response {
    crate::metrics_export::prometheus_text(&s.metrics)
}

fn flag(b: Option<bool>) -> f64 {
    match b {
        Some(true) => 1.0,
        Some(false) => 0.0,
        None => -1.0,
    }
}

/// What the follower's loop owns between steps: the core, what it reports
/// in the status document, and what an applying task needs.
struct Follow {
    cfg: FollowConfig,
    base: PathBuf,
    agent: ureq::Agent,
    url: String,
    services: Services,
    core: Follower,
    counters: Counters,
    states: Vec<ServiceState>,
    last_error: Option<String>,
    poll_error: Option<String>,
    last_change: Option<SystemTime>,
    done_tx: mpsc::Sender<Result<(), ServicesFailed>>,
    status_tx: watch::Sender<Option<FollowerStatus>>,
}

/// Run the follower until SIGINT/SIGTERM. Services are left as they are on
/// exit: a restarted follower picks up from what runs.
pub async fn run(config: &Path) -> anyhow::Result<()> {
    let (cfg, base) = load_config(config)?;
    let ca = cfg
        .follow
        .ca
        .as_ref()
        .map(|c| crate::paths::resolve(&base, c));
    // A connection per poll: reachability of the node is what is measured.
    let agent = crate::http_client::http_agent(ca.as_deref(), Some(cfg.follow.timeout), false)
        .map_err(|e| anyhow::anyhow!("follow.ca: {e}"))?;
    let (status_tx, status_rx) = watch::channel(None);
    let mut api_task = spawn_api(&cfg, status_rx).await?;
    let (done_tx, mut done_rx) = mpsc::channel::<Result<(), ServicesFailed>>(4);
    let services = Services::new(cfg.services.clone(), base.clone());
    let mut f = Follow {
        url: cfg.follow.node.clone(),
        core: Follower::new(cfg.policy()),
        states: services.states().await,
        services,
        cfg,
        base,
        agent,
        counters: Counters::default(),
        last_error: None,
        poll_error: None,
        last_change: None,
        done_tx,
        status_tx,
    };
    tracing::info!("[RESILIENCE] Querying HA status at {}", f.url);
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut tick = tokio::time::interval(f.cfg.follow.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(crate::shutdown::shutdown_signal());

    loop {
        tokio::select! {
            _ = tick.tick() => f.poll_once().await,
            Some(r) = done_rx.recv() => f.applied(r).await,
            r = &mut api_task => {
                anyhow::bail!("follower API stopped: {:?}", r);
            }
            _ = &mut shutdown => {
                tracing::info!("follower stopping; services left as they are");
                return Ok(());
            }
        }
        f.drain_outputs();
        f.publish();
    }
}

/// Bind the follower's status API and serve it on its own task.
async fn spawn_api(
    cfg: &FollowConfig,
    status: watch::Receiver<Option<FollowerStatus>>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let metrics = crate::metrics_export::install_metrics();
    crate::metrics_export::set_info("follow", &[]);
    let listener = crate::listen_fds::tokio_tcp(cfg.follow.api_listen)
        .await
        .with_context(|| format!("follower API socket {}", cfg.follow.api_listen))?;
    tracing::info!(
        "follower {} on http://{}",
        cfg.follow.name,
        listener.local_addr()?
    );
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(serve_metrics))
        .route("/api/v1/status", get(self::status))
        .with_state(ApiState { status, metrics });
    // Bounded like the node's API: a connection cap, header and idle
    // deadlines, and only this host's names (no DNS rebinding).
    let app = crate::http_server::guarded(
        app,
        crate::http_server::Hosts::new(std::slice::from_ref(&cfg.follow.name)),
    );
    let cap = crate::http_server::connection_cap(
        FOLLOW_API_CONNECTIONS,
        crate::http_server::nofile_limit(),
    );
    Ok(tokio::spawn(async move {
        crate::http_server::serve(listener, app, None, cap).await
    }))
}

impl Follow {
    /// Ask the node once and hand the answer to the core.
    async fn poll_once(&mut self) {
        // The answer belongs to when the poll began: an unreachable
        // node's clock starts then, not after the timeout.
        let asked = Instant::now();
        let (a, u) = (self.agent.clone(), self.url.clone());
        let answer = tokio::task::spawn_blocking(move || poll(&a, &u))
            .await
            .unwrap_or_else(|e| Answer::Unreachable(format!("poll task: {e}")));
        tracing::debug!(
            "[RESILIENCE] Querying HA status at {}: {answer:?}",
            self.url
        );
        match &answer {
            Answer::Active(_) => {
                self.counters.polls_ok += 1;
                self.poll_error = None;
            }
            Answer::Unreachable(why) => {
                self.counters.polls_failed += 1;
                self.poll_error = Some(why.clone());
            }
        }
        self.core.handle_answer(asked, answer);
    }

    /// An applying task finished: count it, tell the core, re-read services.
    async fn applied(&mut self, r: Result<(), ServicesFailed>) {
        match &r {
            Ok(()) => self.counters.actions_ok += 1,
            Err(e) => {
                self.counters.actions_failed += 1;
                self.last_error = Some(e.to_string());
            }
        }
        self.core
            .handle_done(Instant::now(), r.map_err(|e| e.to_string()));
        self.states = self.services.states().await;
    }

    /// Carry out what the core asks: applying tasks and log lines.
    fn drain_outputs(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Apply { active } => {
                    let (s, h, d, tx) = (
                        self.services.clone(),
                        self.cfg.hooks.clone(),
                        self.base.clone(),
                        self.done_tx.clone(),
                    );
                    tokio::spawn(async move {
                        let _ = tx.send(apply(&s, &h, &d, active).await).await;
                    });
                }
                Output::Event(e) => match &e {
                    Event::Shows { .. } => {
                        tracing::info!("[RESILIENCE] Querying HA status at {}", self.url);
                        tracing::info!("[RESILIENCE] {e}");
                    }
                    Event::Unreachable { .. } | Event::Failed { .. } => {
                        tracing::warn!("[RESILIENCE] {e}")
                    }
                    Event::Decided { .. } => {
                        self.last_change = Some(SystemTime::now());
                        tracing::info!("[RESILIENCE] {e}")
                    }
                    _ => tracing::info!("[RESILIENCE] {e}"),
                },
            }
        }
    }

    /// Refresh the metrics and the status document from the core.
    fn publish(&self) {
        let snap = self.core.snapshot(Instant::now());
        let c = &self.counters;
        metrics::gauge!("resilience_follow_node_active").set(flag(snap.node_active));
        metrics::gauge!("resilience_follow_reachable").set(if snap.reachable { 1.0 } else { 0.0 });
        metrics::gauge!("resilience_follow_wanted_active").set(flag(snap.wanted));
        metrics::gauge!("resilience_follow_applied_active").set(flag(snap.applied));
        metrics::counter!("resilience_follow_polls_total", "result" => "ok").absolute(c.polls_ok);
        metrics::counter!("resilience_follow_polls_total", "result" => "unreachable")
            .absolute(c.polls_failed);
        metrics::counter!("resilience_follow_actions_total", "result" => "ok")
            .absolute(c.actions_ok);
        metrics::counter!("resilience_follow_actions_total", "result" => "failed")
            .absolute(c.actions_failed);
        let _ = self.status_tx.send(Some(FollowerStatus {
            name: self.cfg.follow.name.clone(),
            node_url: self.url.clone(),
            node_active: snap.node_active,
            reachable: snap.reachable,
            unreachable_for_ms: snap.unreachable_for.map(|d| d.as_millis() as u64),
            wanted_active: snap.wanted,
            applied_active: snap.applied,
            applying: snap.applying,
            pending: snap
                .pending
                .map(|(active, answers)| FollowerPending { active, answers }),
            services: self.states.clone(),
            polls: FollowerPolls {
                ok: c.polls_ok,
                unreachable: c.polls_failed,
            },
            actions: FollowerActions {
                ok: c.actions_ok,
                failed: c.actions_failed,
            },
            last_error: self.last_error.clone(),
            poll_error: self.poll_error.clone(),
            last_change_unix_ms: self.last_change.map(crate::clock::unix_ms),
        }));
    }
}
