//! [`NodeDriver`]: the daemon's loop as a struct (quinn's `ConnectionDriver`
//! shape). [`NodeDriver::new`] builds everything (config, secrets, sockets,
//! store, services, replication, API); [`NodeDriver::run`] is a short loop
//! that hands out the core's outputs, then waits on one `select!` and
//! dispatches each wake-up to one method.

use super::{
    accepted_message, alarm, publish, record_event, restart_check, spawn_probes, stop_signal,
    store_thread, Counters,
};
use crate::api;
use crate::clock::unix_ms;
use crate::node_config::{load_config, load_key, load_or_create_token, tls_keys};
use crate::node_handle::{ApiState, Msg, Refused};
use crate::paths::resolve;
use crate::replication::Replicator;
use crate::services::{self, ServiceState, Services};
use anyhow::Context;
use resilience_core::config::NodeConfig;
use resilience_core::{
    Action, ActionError, ActionId, ActionKind, ActionOutcome, Input, InputError, Node, NodeType,
    Output, ServicesAtBoot, Settings,
};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use store_thread::StoreThread;
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

/// How long the start may take before the loop pings (status commands,
/// PBX settings, the database), told to systemd at start and before an
/// upgrade's re-exec; the loop then restores the unit's `WatchdogSec=`.
const STARTUP_WATCHDOG: Duration = Duration::from_secs(120);

/// Give the start [`STARTUP_WATCHDOG`] under systemd's watchdog.
pub(super) fn watchdog_startup() {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        let _ = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::WatchdogUsec(STARTUP_WATCHDOG.as_micros() as u32),
                sd_notify::NotifyState::Watchdog,
            ],
        );
    }
}

/// When the next `WATCHDOG=1` is due: every half of systemd's period.
struct Watchdog {
    every: Duration,
    next: Instant,
}

impl Watchdog {
    /// Set when systemd asked for pings of this very process.
    fn from_env() -> Option<Watchdog> {
        let mut usec = 0;
        if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
            return None;
        }
        let every = Duration::from_micros(usec) / 2;
        tracing::info!("systemd watchdog: a ping every {every:?}");
        // The unit's period again, after the start's longer one.
        let _ = sd_notify::notify(
            false,
            &[sd_notify::NotifyState::WatchdogUsec(
                usec.min(u32::MAX as u64) as u32,
            )],
        );
        Some(Watchdog {
            every,
            next: Instant::now(),
        })
    }

    /// Ping when due; returns when the next ping is due.
    fn pet(&mut self, now: Instant) -> Instant {
        if now >= self.next {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            self.next = now + self.every;
        }
        self.next
    }
}

/// An action's result known at once (the store refused it), fed back to the
/// core before the loop waits.
type ActionResult = (ActionId, Result<ActionOutcome, ActionError>);

/// Ends a driver started in-process, as SIGTERM ends the daemon. The
/// daemon itself answers signals; only tests hold one.
#[derive(Clone)]
#[cfg_attr(not(test), allow(dead_code))]
pub struct NodeHandle {
    stop: mpsc::UnboundedSender<()>,
    api: SocketAddr,
}

#[cfg_attr(not(test), allow(dead_code))]
impl NodeHandle {
    /// Hand over, stop the services, then end the loop (a second call, like a
    /// second SIGTERM, exits at once).
    pub fn shutdown(&self) {
        let _ = self.stop.send(());
    }

    /// Where the node's API listens.
    pub fn api_addr(&self) -> SocketAddr {
        self.api
    }
}

/// The process signals the daemon answers.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }
}

/// What woke the loop.
enum Wake {
    Timer,
    Msg(Option<Msg>),
    Stop(&'static str),
    Restart,
    ApiEnded(Result<anyhow::Result<()>, tokio::task::JoinError>),
}

/// Tasks started beside the loop, kept for as long as it runs.
struct Beside {
    api_task: JoinHandle<anyhow::Result<()>>,
    /// Dropping one stops its folder watch.
    watchers: Vec<notify::RecommendedWatcher>,
}

/// The daemon: the core, its sockets and the tasks around it.
pub struct NodeDriver {
    cfg: NodeConfig,
    base: PathBuf,
    config_path: PathBuf,
    /// The binary to run again on SIGHUP: its path at start, before an
    /// upgrade replaces the file (/proc/self/exe would then name the old one).
    exe: PathBuf,
    node: Node,
    sockets: Vec<Arc<UdpSocket>>,
    peer_addrs: Vec<SocketAddr>,
    store: StoreThread,
    services: Services,
    replicator: Option<Arc<Replicator>>,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    stop_rx: mpsc::UnboundedReceiver<()>,
    status_tx: watch::Sender<Option<crate::status::NodeView>>,
    ha_tx: watch::Sender<Option<crate::status::HaStatus>>,
    events_tx: broadcast::Sender<serde_json::Value>,
    active_tx: watch::Sender<bool>,
    counters: Counters,
    service_states: Vec<ServiceState>,
    last_peer: Option<crate::status::StateWord>,
    /// SIGHUP asked for a re-exec, done once no service action is under way.
    restart_pending: bool,
    restart_checking: bool,
    /// When the daemon was told to stop, plus the stop timeout.
    stop_deadline: Option<Instant>,
    alarm: alarm::Alarm,
    /// systemd's watchdog (`WatchdogSec=`), pinged from this loop: a loop
    /// that hangs stops the pings and systemd restarts the daemon, which
    /// adopts the services it left running.
    watchdog: Option<Watchdog>,
    signals: Signals,
    beside: Beside,
    started: Instant,
    wall_start: SystemTime,
}

/// The config, its secrets and the state database, all checked before
/// anything is started or written.
struct Loaded {
    cfg: NodeConfig,
    base: PathBuf,
    settings: Settings,
    token: String,
    state_dir: PathBuf,
    store: super::store::Store,
    persisted: resilience_core::Persisted,
}

fn load(config: &Path) -> anyhow::Result<Loaded> {
    let (cfg, base) = load_config(config)?;
    let key = load_key(&cfg, &base)?;
    for (what, path) in tls_keys(&cfg, &base) {
        // A missing one is reported where it is used, as before.
        match crate::secret::read(&path, what) {
            Err(e) if !e.is_missing() => return Err(e.into()),
            _ => {}
        }
    }
    let (token, token_path) = load_or_create_token(&cfg, &base)?;
    let state_dir = resolve(&base, &cfg.node.state_dir);
    let (store, warning) = super::store::Store::open(&state_dir)?;
    if let Some(w) = &warning {
        tracing::error!("{w}");
    }
    let persisted = store.load_facts()?;
    tracing::info!("API token in {}", token_path.display());
    let settings = Settings::from_config(&cfg, key);
    Ok(Loaded {
        cfg,
        base,
        settings,
        token,
        state_dir,
        store,
        persisted,
    })
}

/// Heartbeat sockets, one per path, each read by a task into the loop.
async fn heartbeat_sockets(
    cfg: &NodeConfig,
    tx: &mpsc::Sender<Msg>,
) -> anyhow::Result<Vec<Arc<UdpSocket>>> {
    let mut sockets = Vec::new();
    for addr in
        std::iter::once(cfg.heartbeat.listen).chain(cfg.heartbeat.extra_listen.iter().copied())
    {
        let s = crate::listen_fds::tokio_udp(addr)
            .await
            .with_context(|| format!("heartbeat socket {addr}"))?;
        sockets.push(Arc::new(s));
    }
    for s in &sockets {
        let (s, tx) = (s.clone(), tx.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                match s.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        let msg = Msg::Datagram(from, buf[..n].to_vec());
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!("heartbeat receive: {e}"),
                }
            }
        });
    }
    Ok(sockets)
}

/// The PBX settings for fast failover (or the originals, when disabled),
/// before any PBX service starts, so it starts with them. What the API shows.
async fn apply_pbx_settings(
    cfg: &NodeConfig,
    base: &Path,
    store: &StoreThread,
) -> Arc<serde_json::Value> {
    use crate::pbx_settings::Level;
    let report = crate::pbx_settings::run_for(cfg, base).await;
    let at_ms = unix_ms(SystemTime::now());
    for (level, line) in crate::pbx_settings::lines(&report) {
        match level {
            Level::Failed => tracing::error!("{line}"),
            _ => tracing::info!("{line}"),
        }
        if level != Level::Same {
            store.event(at_ms, "pbx_settings", &line);
        }
    }
    if report.files.iter().any(|f| f.state == "written") {
        if let Some(w) = &report.warning {
            tracing::warn!("{w}");
        }
    }
    Arc::new(serde_json::to_value(&report).unwrap_or_default())
}

/// What runs now: the core decides whether to adopt it (a restart or an
/// upgrade of this daemon while it served) or to stop it (see the core's
/// `node/lifecycle.rs`).
async fn observe_services(services: &Services) -> ServicesAtBoot {
    let (seen_at_boot, states) = services.observe().await;
    if seen_at_boot != ServicesAtBoot::Stopped {
        let shown: Vec<String> = states
            .iter()
            .map(|s| {
                let word = match s.running {
                    Some(true) => "running",
                    Some(false) => "stopped",
                    None => "unclear",
                };
                format!("{} {word}", s.name)
            })
            .collect();
        tracing::info!("services at start: {}", shown.join(", "));
    }
    seen_at_boot
}

/// The replicator, if configured, with its notes forwarded to the history.
fn replicator(
    cfg: &NodeConfig,
    base: &Path,
    state_dir: &Path,
    tx: &mpsc::Sender<Msg>,
) -> Option<Arc<Replicator>> {
    let r = cfg.replication.clone()?;
    let peer = cfg
        .peer
        .as_ref()
        .map(|p| p.name.clone())
        .unwrap_or_default();
    let (notes_tx, mut notes_rx) = tokio::sync::mpsc::unbounded_channel();
    let tx = tx.clone();
    tokio::spawn(async move {
        while let Some((kind, text)) = notes_rx.recv().await {
            let _ = tx.send(Msg::Note(kind, text)).await;
        }
    });
    Some(Arc::new(Replicator::new(
        r,
        base,
        state_dir,
        &peer,
        cfg.node.node_type == NodeType::Standby,
        Some(notes_tx),
    )))
}

/// Replication's server, folder watch and periodic push; the watchers must
/// be kept for as long as the daemon runs.
fn start_replication(
    cfg: &NodeConfig,
    r: &Arc<Replicator>,
    active_rx: watch::Receiver<bool>,
    status_rx: &watch::Receiver<Option<crate::status::NodeView>>,
) -> Vec<notify::RecommendedWatcher> {
    let r2 = r.clone();
    tokio::spawn(async move {
        if let Err(e) = r2.serve(active_rx).await {
            tracing::error!("replication server: {e:#}");
        }
    });
    let status = status_rx.clone();
    let watchers = match r.watch(move || api::push_refusal(&status.borrow()).is_none()) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("replication: cannot watch folders: {e:#}");
            Vec::new()
        }
    };
    let (r3, status) = (r.clone(), status_rx.clone());
    let every = cfg
        .replication
        .as_ref()
        .map_or(Duration::from_secs(3600), |c| c.interval);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if api::push_refusal(&status.borrow()).is_none() {
                r3.push_all().await;
            }
        }
    });
    watchers
}

/// Bind and start the API; its task and address.
async fn start_api(
    cfg: &NodeConfig,
    base: &Path,
    state: ApiState,
) -> anyhow::Result<(JoinHandle<anyhow::Result<()>>, SocketAddr)> {
    // The API serves /metrics: what this node is, as its info series.
    crate::metrics_export::set_info(
        "node",
        &[
            ("type", cfg.node.node_type.to_string()),
            ("name", cfg.node.name.clone()),
        ],
    );
    let api_listener = crate::listen_fds::tokio_tcp(cfg.api.listen)
        .await
        .with_context(|| format!("API socket {}", cfg.api.listen))?;
    let tls = match (&cfg.api.tls_cert, &cfg.api.tls_key) {
        (Some(c), Some(k)) => Some(api::Tls {
            cert: resolve(base, c),
            key: resolve(base, k),
        }),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let addr = api_listener.local_addr()?;
    tracing::info!("API on {scheme}://{addr}");
    // The node's own name is one of its API's names (its certificate's).
    let mut api_cfg = cfg.api.clone();
    api_cfg.hosts.push(cfg.node.name.clone());
    let task = tokio::spawn(api::serve(api_listener, state, tls, api_cfg));
    Ok((task, addr))
}

/// The core, booted with a random boot id: the peer confirms it by a
/// challenge echo, so nothing on this node's disk is needed for it to be
/// heard again.
fn boot_core(
    settings: Settings,
    persisted: resilience_core::Persisted,
    seen_at_boot: ServicesAtBoot,
) -> anyhow::Result<Node> {
    let boot_id = getrandom::u64().map_err(|e| anyhow::anyhow!("random boot id: {e}"))?;
    Ok(Node::boot(
        settings,
        persisted,
        seen_at_boot,
        boot_id,
        Instant::now(),
    ))
}

impl NodeDriver {
    /// Build the daemon from its config file: every secret is checked
    /// before anything is started or written. Each part starts in the
    /// order the daemon needs (state, sockets, PBX settings, services,
    /// replication, API, core), one call each.
    pub async fn new(config: &Path) -> anyhow::Result<(NodeDriver, NodeHandle)> {
        let l = load(config)?;
        let (cfg, base, state_dir) = (l.cfg, l.base, l.state_dir);
        let services = Services::new(cfg.services.clone(), base.clone());
        let (tx, rx) = mpsc::channel::<Msg>(1024);
        let sockets = heartbeat_sockets(&cfg, &tx).await?;
        let store = StoreThread::spawn(l.store, tx.clone()).context("state database thread")?;
        let pbx_settings = apply_pbx_settings(&cfg, &base, &store).await;
        let seen_at_boot = observe_services(&services).await;
        let exe = std::env::current_exe().context("path of this binary")?;
        spawn_probes(&cfg, &base, tx.clone());

        let (status_tx, status_rx) = watch::channel(None);
        let (ha_tx, ha_rx) = watch::channel(None);
        let (events_tx, _) = broadcast::channel::<serde_json::Value>(256);
        let replicator = replicator(&cfg, &base, &state_dir, &tx);
        let (active_tx, active_rx) = watch::channel(false);
        let watchers = match &replicator {
            Some(r) => start_replication(&cfg, r, active_rx, &status_rx),
            None => Vec::new(),
        };
        let api_state = ApiState {
            tx: tx.clone(),
            status: status_rx,
            ha: ha_rx,
            token: Arc::new(l.token),
            metrics: crate::metrics_export::install_metrics(),
            replicator: replicator.clone(),
            pbx_settings,
        };
        let (api_task, api_addr) = start_api(&cfg, &base, api_state).await?;

        let node = boot_core(l.settings, l.persisted, seen_at_boot)?;
        let peer_addrs = node.settings().peer_addrs.clone();
        let signals = Signals::install()?;
        let alarm = alarm::Alarm::spawn().context("timer thread")?;
        let (stop, stop_rx) = mpsc::unbounded_channel();
        let driver = NodeDriver {
            cfg,
            base,
            config_path: config.to_owned(),
            exe,
            node,
            sockets,
            peer_addrs,
            store,
            services,
            replicator,
            tx,
            rx,
            stop_rx,
            status_tx,
            ha_tx,
            events_tx,
            active_tx,
            counters: Counters::default(),
            service_states: Vec::new(),
            last_peer: None,
            restart_pending: false,
            restart_checking: false,
            stop_deadline: None,
            alarm,
            watchdog: Watchdog::from_env(),
            signals,
            beside: Beside { api_task, watchers },
            started: Instant::now(),
            wall_start: SystemTime::now(),
        };
        Ok((
            driver,
            NodeHandle {
                stop,
                api: api_addr,
            },
        ))
    }

    /// Build the daemon and run it on a task of its own (tests start nodes
    /// in-process this way); the handle's `shutdown` ends it like SIGTERM.
    #[cfg(test)]
    pub async fn start(
        config: &Path,
    ) -> anyhow::Result<(NodeHandle, JoinHandle<anyhow::Result<()>>)> {
        let (driver, handle) = NodeDriver::new(config).await?;
        Ok((handle, tokio::spawn(driver.run())))
    }

    /// Run until the core is done after a stop request (SIGTERM, SIGINT or
    /// the handle), or the API fails.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        loop {
            let (deadline, now_inputs) = self.hand_out();
            if self.node.is_done() {
                self.finish().await;
                break;
            }
            self.restart_if_due(now_inputs.is_empty());
            if !now_inputs.is_empty() {
                for (id, r) in now_inputs {
                    let _ = self
                        .node
                        .handle_input(Input::ActionDone(Instant::now(), id, r));
                }
                continue;
            }
            self.publish();
            let deadline = match &mut self.watchdog {
                Some(w) => deadline.min(w.pet(Instant::now())),
                None => deadline,
            };
            self.alarm.set(deadline);
            let wake = tokio::select! {
                _ = self.alarm.fired() => Wake::Timer,
                msg = self.rx.recv() => Wake::Msg(msg),
                _ = self.signals.term.recv() => Wake::Stop("SIGTERM"),
                _ = self.signals.int.recv() => Wake::Stop("SIGINT"),
                Some(()) = self.stop_rx.recv() => Wake::Stop("shutdown request"),
                _ = self.signals.hup.recv() => Wake::Restart,
                r = &mut self.beside.api_task => Wake::ApiEnded(r),
            };
            match wake {
                Wake::Timer => {
                    if let Some((_, why)) = self.node.next_wake() {
                        tracing::debug!("woke for {why}");
                    }
                    let _ = self.node.handle_input(Input::Timeout(Instant::now()));
                }
                Wake::Msg(None) => break,
                Wake::Msg(Some(msg)) => self.on_msg(msg),
                Wake::Stop(name) => self.on_stop(name)?,
                Wake::Restart => self.on_sighup(),
                Wake::ApiEnded(r) => return Err(api_ended(r)),
            }
        }
        self.beside.api_task.abort();
        drop(self.beside.watchers);
        Ok(())
    }

    /// Unix ms of a core instant, by the wall clock read at start.
    fn wall(&self, at: Instant) -> i64 {
        let t = if at >= self.started {
            self.wall_start + (at - self.started)
        } else {
            self.wall_start - (self.started - at)
        };
        unix_ms(t)
    }

    /// Hand out everything the core has to say, up to its next deadline;
    /// the history is written once the actions are under way (a failover
    /// does not wait for the log and the database).
    fn hand_out(&mut self) -> (Instant, Vec<ActionResult>) {
        let mut now_inputs = Vec::new();
        let mut events = Vec::new();
        let deadline = loop {
            match self.node.poll_output() {
                Output::Transmit(t) => self.transmit(&t.bytes, t.to),
                Output::Action(Action { id, kind }) => self.act(id, kind, &mut now_inputs),
                Output::Event(e) => events.push(e),
                Output::Timeout(at) => break at,
            }
        };
        for e in &events {
            record_event(e, &self.store, &self.events_tx, &|at| self.wall(at));
        }
        (deadline, now_inputs)
    }

    fn transmit(&mut self, bytes: &[u8], to: SocketAddr) {
        let i = self.peer_addrs.iter().position(|a| *a == to).unwrap_or(0);
        let s = &self.sockets[i.min(self.sockets.len() - 1)];
        match s.try_send_to(bytes, to) {
            Ok(_) => self.counters.frames_sent += 1,
            Err(e) => {
                self.counters.send_errors += 1;
                tracing::debug!("heartbeat to {to}: {e}");
            }
        }
    }

    /// Start one of the core's actions; its result comes back as a [`Msg`].
    fn act(&mut self, id: ActionId, kind: ActionKind, now_inputs: &mut Vec<ActionResult>) {
        match kind {
            // On the store's thread: a slow or hung disk must not stop the
            // heartbeats. The result comes back as a Msg.
            ActionKind::Persist(p) => {
                if let Err(e) = self.store.facts(id, p) {
                    now_inputs.push((id, Err(e)));
                }
            }
            ActionKind::StartServices => {
                // Called here: the first service is spawned now, before the
                // Persist that follows is written.
                let starting = self.services.start_all();
                report(&self.tx, id, async move {
                    starting.await.map(|_| ActionOutcome::Done)
                });
            }
            ActionKind::StopServices => {
                let services = self.services.clone();
                report(&self.tx, id, async move {
                    services.stop_all().await.map(|_| ActionOutcome::Done)
                });
            }
            ActionKind::FetchFailbackData => {
                let fetch = crate::replication::failback::fetch(
                    self.replicator.clone(),
                    self.cfg.failback.data_wait,
                );
                report(&self.tx, id, async move {
                    fetch.await.map(|_| ActionOutcome::Done)
                });
            }
            ActionKind::CountActiveCalls => {
                let cmd = self.cfg.drain.active_calls_command.clone();
                let dir = self.base.clone();
                report(&self.tx, id, async move {
                    match cmd {
                        Some(c) => services::count_calls(&dir, &c, Duration::from_secs(10))
                            .await
                            .map(ActionOutcome::ActiveCalls),
                        // Nothing can count calls: the drain ends at once.
                        None => Ok(ActionOutcome::ActiveCalls(0)),
                    }
                });
            }
        }
    }

    /// Services stopped and the peer told (the frames went out): the kept
    /// data's copy-back to the Main runs to its end first, within the stop
    /// timeout, then the history is flushed.
    async fn finish(&mut self) {
        if let Some(r) = self.replicator.as_ref().filter(|r| r.copying_back()) {
            let left = self
                .stop_deadline
                .map_or(Duration::ZERO, |t| {
                    t.saturating_duration_since(Instant::now())
                })
                .max(Duration::from_secs(1));
            tracing::info!("waiting for the kept data's copy-back to the main");
            if !r.copy_back_finished(left).await {
                tracing::warn!(
                    "the kept data's copy-back to the main did not finish within the stop timeout"
                );
            }
        }
        if !self.store.flush(Duration::from_secs(2)) {
            tracing::warn!("the state database did not confirm its last writes");
        }
        tracing::info!("daemon stopped");
    }

    /// The re-exec SIGHUP asked for, once no action is under way (nor a
    /// copy-back, which a re-exec would cut).
    fn restart_if_due(&mut self, no_inputs: bool) {
        let copying = self.replicator.as_ref().is_some_and(|r| r.copying_back());
        if !(self.restart_pending && no_inputs && self.node.is_quiescent() && !copying) {
            return;
        }
        self.restart_pending = false;
        let text = format!(
            "restarting the daemon ({}): services left running, adopted by the new process",
            self.exe.display()
        );
        tracing::info!("{text}");
        self.store
            .event(unix_ms(SystemTime::now()), "restart", &text);
        // Short: the heartbeats wait meanwhile.
        self.store.flush(Duration::from_millis(500));
        let e = super::reexec(&self.exe);
        let text = format!("restart failed, carrying on: {e}");
        tracing::error!("{text}");
        self.store
            .event(unix_ms(SystemTime::now()), "restart", &text);
    }

    /// Refresh the API's documents and the replication's view of the role;
    /// note the peer's state as heard for the dashboard's timeline.
    fn publish(&mut self) {
        self.counters.history_dropped = self.store.dropped();
        let heard = publish(
            &self.node,
            &self.cfg,
            &self.counters,
            &self.service_states,
            &self.status_tx,
            &self.ha_tx,
        );
        let active = self.node.is_active();
        let was_active = *self.active_tx.borrow();
        self.active_tx
            .send_if_modified(|a| std::mem::replace(a, active) != active);
        if was_active != active {
            if let Some(r) = &self.replicator {
                r.expect_copy_back(was_active);
            }
        }
        if let Some((name, word)) = heard {
            if self.last_peer != Some(word) {
                self.last_peer = Some(word);
                let text = format!("peer {name} is {word}");
                self.store
                    .state_event(unix_ms(SystemTime::now()), "peer_state", &text, word);
            }
        }
    }

    fn on_msg(&mut self, msg: Msg) {
        let now = Instant::now();
        match msg {
            Msg::Datagram(from, bytes) => {
                self.counters.frames_received += 1;
                tracing::trace!(target: "resilience::heartbeat", "{} bytes from {from}", bytes.len());
                if let Err(e) = self.node.handle_input(Input::Datagram(now, from, &bytes)) {
                    tracing::debug!("from {from}: {e}");
                }
            }
            Msg::Command(cmd, reply) => {
                let r = self.node.handle_input(Input::Command(now, cmd));
                let _ = reply.send(match r {
                    Ok(()) => Ok(accepted_message(&self.node, cmd)),
                    Err(InputError::Refused { reason, .. }) => Err(Refused(reason)),
                    Err(e) => Err(Refused(e.to_string())),
                });
            }
            Msg::Events(limit, reply) => self.store.events(limit, reply),
            Msg::StateEvents(since, reply) => self.store.state_events(since, reply),
            Msg::ActionDone(id, r) => self.on_action_done(id, r),
            Msg::Persisted(id, r) => {
                let label = if r.is_ok() { "ok" } else { "error" };
                *self.counters.actions.entry(("persist", label)).or_default() += 1;
                if let Err(e) = self.node.handle_input(Input::ActionDone(now, id, r)) {
                    tracing::warn!("{e}");
                }
            }
            Msg::Pbx(h) => {
                let _ = self.node.handle_input(Input::PbxHealth(now, h));
            }
            Msg::Arbiter(ok) => {
                let _ = self.node.handle_input(Input::Arbiter(now, ok));
            }
            Msg::ServiceStates(s) => self.service_states = s,
            Msg::RestartChecked(r) => self.on_restart_checked(r),
            Msg::Note(kind, text) => {
                let at_ms = unix_ms(SystemTime::now());
                self.store.event(at_ms, kind, &text);
                let _ = self
                    .events_tx
                    .send(json!({"at_ms": at_ms, "kind": kind, "text": text}));
            }
        }
    }

    fn on_action_done(&mut self, id: ActionId, r: Result<ActionOutcome, ActionError>) {
        let label = if r.is_ok() { "ok" } else { "error" };
        *self.counters.actions.entry(("service", label)).or_default() += 1;
        // Show the services as they now are, not as of the last poll.
        let (services, tx) = (self.services.clone(), self.tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(Msg::ServiceStates(services.states().await)).await;
        });
        if let Err(e) = self
            .node
            .handle_input(Input::ActionDone(Instant::now(), id, r))
        {
            tracing::warn!("{e}");
        }
    }

    fn on_restart_checked(&mut self, r: Result<(), crate::node_handle::RestartCheckError>) {
        self.restart_checking = false;
        match r {
            Ok(()) if self.node.is_leaving() => {}
            Ok(()) => self.restart_pending = true,
            Err(e) => {
                let text = format!("restart refused, carrying on: {e}");
                tracing::error!("{text}");
                self.store
                    .event(unix_ms(SystemTime::now()), "restart", &text);
            }
        }
    }

    /// SIGTERM, SIGINT or the handle: hand over and stop (a second one
    /// exits at once, with an error).
    fn on_stop(&mut self, name: &str) -> anyhow::Result<()> {
        stop_signal(&mut self.node, name)?;
        self.stop_deadline
            .get_or_insert(Instant::now() + self.node.settings().stop_timeout);
        Ok(())
    }

    /// SIGHUP: check the binary off the loop (the heartbeats go on), then
    /// restart once no service action is under way.
    fn on_sighup(&mut self) {
        if self.node.is_leaving() {
            tracing::warn!("SIGHUP ignored: the daemon is stopping");
        } else if !self.restart_checking {
            tracing::info!("SIGHUP: checking the binary, then restarting the daemon once no service action is under way");
            self.restart_checking = true;
            let (tx, exe, config) = (self.tx.clone(), self.exe.clone(), self.config_path.clone());
            tokio::spawn(async move {
                let r = restart_check(&exe, &config).await;
                let _ = tx.send(Msg::RestartChecked(r)).await;
            });
        }
    }
}

/// Run an action's work on a task of its own; its result comes back to the
/// loop as [`Msg::ActionDone`].
fn report<E: std::fmt::Display>(
    tx: &mpsc::Sender<Msg>,
    id: ActionId,
    work: impl std::future::Future<Output = Result<ActionOutcome, E>> + Send + 'static,
) {
    let tx = tx.clone();
    tokio::spawn(async move {
        let r = work.await.map_err(|e| ActionError(e.to_string()));
        let _ = tx.send(Msg::ActionDone(id, r)).await;
    });
}

/// The API is how admins and followers see the node: without it, stop and
/// let systemd restart us with the error logged.
fn api_ended(r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    let why = match r {
        Ok(Ok(())) => "API server stopped".to_string(),
        Ok(Err(e)) => format!("{e:#}"),
        Err(e) => format!("API task: {e}"),
    };
    anyhow::anyhow!("{why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const TOKEN: &str = "in-process-test-token-0123456789abcdef";

    fn write_secret(path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// A lone Main whose peer never answers (its heartbeats go to a loopback
    /// port nobody reads), API and heartbeat on ports the system picks.
    fn lone_main(dir: &Path) -> PathBuf {
        write_secret(&dir.join("cluster.key"), &format!("{KEY}\n"));
        write_secret(&dir.join("api.token"), &format!("{TOKEN}\n"));
        let d = dir.display();
        let config = format!(
            r#"[node]
name = "solo"
type = "main"
mode = "automatic"
state_dir = "{d}/state"

[peer]
name = "other"
address = "127.0.0.1:9"

[heartbeat]
listen = "127.0.0.1:0"
interval = "100ms"
failover_after = "1000ms"
key_file = "{d}/cluster.key"

[[service]]
name = "pbx"
start = "touch {d}/pbx.up"
stop = "rm -f {d}/pbx.up"
status = "test -f {d}/pbx.up"
timeout = "5s"

[api]
listen = "127.0.0.1:0"
token_file = "{d}/api.token"
"#
        );
        let path = dir.join("node.toml");
        std::fs::write(&path, config).unwrap();
        path
    }

    fn status(addr: SocketAddr) -> Option<crate::status::NodeStatus> {
        let agent =
            crate::http_client::http_agent(None, Some(Duration::from_secs(2)), false).ok()?;
        let mut r = agent
            .get(format!("http://{addr}/api/v1/status"))
            .call()
            .ok()?;
        r.body_mut().read_json().ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_driver_started_in_process_serves_its_status_and_stops_on_shutdown() {
        let dir = std::env::temp_dir().join(format!("resilience-driver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = lone_main(&dir);
        let (handle, join) = NodeDriver::start(&config).await.unwrap();
        let addr = handle.api_addr();
        let deadline = Instant::now() + Duration::from_secs(20);
        let doc = loop {
            let doc = tokio::task::spawn_blocking(move || status(addr))
                .await
                .unwrap();
            match doc {
                Some(d) => break d,
                None if Instant::now() > deadline => panic!("no status from {addr}"),
                // The API answers `{}` (no status) until the loop's first step.
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        assert_eq!(doc.node.name, "solo");
        handle.shutdown();
        let ended = tokio::time::timeout(Duration::from_secs(20), join).await;
        ended
            .expect("the driver ends after shutdown")
            .unwrap()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
