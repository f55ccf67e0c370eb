//! `resilience node`: the daemon on each PBX host.
//!
//! One task owns the sans-IO core (mini-redis style): heartbeat datagrams,
//! the timer, API commands, probe answers and action results all arrive as
//! [`Msg`]s or wake-ups; the core's outputs leave as datagrams, spawned
//! service actions, log lines, history rows and a refreshed status document
//! that the API reads without asking the loop.

mod alarm;
pub mod probe;
pub mod store;
mod store_thread;

use crate::api::{self, ApiState};
use crate::services::{self, ServiceState, Services};
use anyhow::Context;
use resilience_core::config::NodeConfig;
use resilience_core::node::{AdminChoice, EventKind, Snapshot};
use resilience_core::{
    Action, ActionError, ActionId, ActionKind, ActionOutcome, ClusterKey, Command, Event, Input,
    InputError, Node, NodeType, Output, PbxHealth, ServicesAtBoot, Settings, Status,
};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use store::{unix_ms, Store, StoredEvent};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// What the loop hears from the other tasks.
pub enum Msg {
    Datagram(SocketAddr, Vec<u8>),
    Command(Command, oneshot::Sender<Result<String, String>>),
    Events(store::EventsPage, oneshot::Sender<Vec<StoredEvent>>),
    /// The state events the timeline needs since a time (unix ms).
    StateEvents(i64, oneshot::Sender<Vec<StoredEvent>>),
    ActionDone(ActionId, Result<ActionOutcome, ActionError>),
    /// The store's thread wrote (or failed to write) the core's facts.
    Persisted(ActionId, Result<ActionOutcome, ActionError>),
    Pbx(PbxHealth),
    Arbiter(bool),
    ServiceStates(Vec<ServiceState>),
    /// An event of the runtime's own (replication), for the history.
    Note(&'static str, String),
    /// The new binary's check of the config before a re-exec (SIGHUP).
    RestartChecked(Result<(), String>),
}

/// Resolve a path from the config against the config file's folder.
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// The folder a config file's relative paths (and commands) start from:
/// absolute, so what is recorded (changed files, kept originals) means the
/// same whichever folder the next command runs from.
pub fn config_base(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

/// Read and validate a node config file.
pub fn load_config(path: &Path) -> anyhow::Result<(NodeConfig, PathBuf)> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("{shown}: cannot read"))?;
    let cfg = NodeConfig::parse(&shown, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in cfg.warnings(&shown, &text) {
        tracing::warn!("{w}");
    }
    let base = config_base(path);
    Ok((cfg, base))
}

/// Read the cluster key named by the config (a secret file: see [`crate::secret`]).
pub fn load_key(cfg: &NodeConfig, base: &Path) -> anyhow::Result<ClusterKey> {
    let path = resolve(base, &cfg.heartbeat.key_file);
    let text = crate::secret::read(&path, "cluster key").map_err(|e| {
        if e.is_missing() {
            anyhow::anyhow!(
                "{e} (create it with `resilience keygen --out {}` and copy it to both nodes with mode 0600)",
                path.display()
            )
        } else {
            e.into()
        }
    })?;
    ClusterKey::from_hex(&text).map_err(|e| anyhow::anyhow!("cluster key {}: {e}", path.display()))
}

/// Where the API token lives: the configured file, or `<state_dir>/api.token`.
pub fn token_path(cfg: &NodeConfig, base: &Path) -> PathBuf {
    match &cfg.api.token_file {
        Some(p) => resolve(base, p),
        None => resolve(base, &cfg.node.state_dir).join("api.token"),
    }
}

/// The API token: the configured file, or `<state_dir>/api.token`, created
/// (mode 0600) on first start. Either must pass [`crate::secret::read_token`].
pub fn load_or_create_token(cfg: &NodeConfig, base: &Path) -> anyhow::Result<(String, PathBuf)> {
    let path = token_path(cfg, base);
    match crate::secret::read_token(&path) {
        Ok(t) => Ok((t, path)),
        Err(e) if e.is_missing() && cfg.api.token_file.is_none() => {
            let mut bytes = [0u8; 24];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random token: {e}"))?;
            let token = hex::encode(bytes);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            crate::secret::write(&path, &format!("{token}\n"), false)
                .with_context(|| format!("creating {}", path.display()))?;
            Ok((token, path))
        }
        Err(e) => Err(e.into()),
    }
}

/// The private keys read later by TLS (replication's on each session, the
/// API's when it starts): checked at start so a node with an exposed key
/// refuses to start instead of serving with it. (what, path) for each.
pub fn tls_keys(cfg: &NodeConfig, base: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut keys = Vec::new();
    if let Some(r) = &cfg.replication {
        keys.push(("replication key", resolve(base, &r.key)));
    }
    if let Some(k) = &cfg.api.tls_key {
        keys.push(("API TLS key", resolve(base, k)));
    }
    keys
}

/// Counters the loop keeps beside the core.
#[derive(Default)]
struct Counters {
    frames_sent: u64,
    frames_received: u64,
    send_errors: u64,
    /// History lines the state database's thread could not take.
    history_dropped: u64,
    actions: std::collections::BTreeMap<(&'static str, &'static str), u64>,
}

/// Run the daemon until SIGINT/SIGTERM.
pub async fn run(config: &Path) -> anyhow::Result<()> {
    let (cfg, base) = load_config(config)?;
    // Every secret is checked before anything is started or written.
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
    let (store, warning) = Store::open(&state_dir)?;
    if let Some(w) = &warning {
        tracing::error!("{w}");
    }
    let persisted = store.load_facts()?;
    tracing::info!("API token in {}", token_path.display());
    let settings = Settings::from_config(&cfg, key);
    let services = Services::new(cfg.services.clone(), base.clone());

    // Heartbeat sockets: one per path.
    let mut sockets = Vec::new();
    for addr in
        std::iter::once(cfg.heartbeat.listen).chain(cfg.heartbeat.extra_listen.iter().copied())
    {
        let s = crate::listen_fds::tokio_udp(addr)
            .await
            .with_context(|| format!("heartbeat socket {addr}"))?;
        sockets.push(Arc::new(s));
    }
    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    let store =
        store_thread::StoreThread::spawn(store, tx.clone()).context("state database thread")?;
    for s in &sockets {
        let s = s.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                match s.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        if tx
                            .send(Msg::Datagram(from, buf[..n].to_vec()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!("heartbeat receive: {e}"),
                }
            }
        });
    }

    // The PBX settings for fast failover (or the originals, when disabled),
    // before any PBX service starts, so it starts with them.
    let pbx_settings = crate::pbx_settings::run_for(&cfg, &base).await;
    let at_ms = unix_ms(SystemTime::now());
    for (level, line) in crate::pbx_settings::lines(&pbx_settings) {
        use crate::pbx_settings::Level;
        match level {
            Level::Failed => tracing::error!("{line}"),
            _ => tracing::info!("{line}"),
        }
        if level != Level::Same {
            store.event(at_ms, "pbx_settings", &line);
        }
    }
    if pbx_settings.files.iter().any(|f| f.state == "written") {
        if let Some(w) = &pbx_settings.warning {
            tracing::warn!("{w}");
        }
    }
    let pbx_settings = Arc::new(serde_json::to_value(&pbx_settings).unwrap_or_default());

    // What runs now: the core decides whether to adopt it (a restart or an
    // upgrade of this daemon while it served) or to stop it (see the core's
    // `node/lifecycle.rs`).
    let (seen_at_boot, states) = services.observe().await;
    if seen_at_boot != ServicesAtBoot::Stopped {
        tracing::info!(
            "services at start: {}",
            states
                .iter()
                .map(|s| format!(
                    "{} {}",
                    s.name,
                    match s.running {
                        Some(true) => "running",
                        Some(false) => "stopped",
                        None => "unclear",
                    }
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // The binary to run again on SIGHUP: its path now, before an upgrade
    // replaces the file (/proc/self/exe would then name the old, deleted one).
    let exe = std::env::current_exe().context("path of this binary")?;

    spawn_probes(&cfg, &base, tx.clone());

    let (status_tx, status_rx) = watch::channel(json!({}));
    let (ha_tx, ha_rx) = watch::channel(json!({}));
    let (events_tx, _) = broadcast::channel::<serde_json::Value>(256);
    let replicator = cfg.replication.clone().map(|r| {
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
        Arc::new(crate::replication::Replicator::new(
            r,
            &base,
            &state_dir,
            &peer,
            cfg.node.node_type == NodeType::Standby,
            Some(notes_tx),
        ))
    });
    let (active_tx, active_rx) = watch::channel(false);
    // Kept for as long as the daemon runs: dropping one stops its watch.
    let mut watchers = Vec::new();
    if let Some(r) = &replicator {
        let (r2, rx) = (r.clone(), active_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = r2.serve(rx).await {
                tracing::error!("replication server: {e:#}");
            }
        });
        let status = status_rx.clone();
        match r.watch(move || api::push_refusal(&status.borrow()).is_none()) {
            Ok(w) => watchers = w,
            Err(e) => tracing::error!("replication: cannot watch folders: {e:#}"),
        }
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
                let refusal = api::push_refusal(&status.borrow());
                if refusal.is_none() {
                    r3.push_all().await;
                }
            }
        });
    }
    let metrics = api::install_metrics();
    let api_state = ApiState {
        tx: tx.clone(),
        status: status_rx,
        ha: ha_rx,
        token: Arc::new(token),
        metrics,
        replicator: replicator.clone(),
        pbx_settings,
    };
    let api_listener = crate::listen_fds::tokio_tcp(cfg.api.listen)
        .await
        .with_context(|| format!("API socket {}", cfg.api.listen))?;
    let tls = match (&cfg.api.tls_cert, &cfg.api.tls_key) {
        (Some(c), Some(k)) => Some(api::Tls {
            cert: resolve(&base, c),
            key: resolve(&base, k),
        }),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("API on {scheme}://{}", api_listener.local_addr()?);
    // The node's own name is one of its API's names (its certificate's).
    let mut api_cfg = cfg.api.clone();
    api_cfg.hosts.push(cfg.node.name.clone());
    let mut api_task = tokio::spawn(api::serve(api_listener, api_state, tls, api_cfg));

    let started = Instant::now();
    let wall_start = SystemTime::now();
    let wall = move |at: Instant| -> i64 {
        let t = if at >= started {
            wall_start + (at - started)
        } else {
            wall_start - (started - at)
        };
        unix_ms(t)
    };
    // A random boot id per start: the peer confirms it by a challenge echo,
    // so nothing on this node's disk is needed for it to be heard again.
    let boot_id = getrandom::u64().map_err(|e| anyhow::anyhow!("random boot id: {e}"))?;
    let mut node = Node::boot(settings, persisted, seen_at_boot, boot_id, Instant::now());
    let mut counters = Counters::default();
    let mut service_states: Vec<ServiceState> = Vec::new();
    let peer_addrs = node.settings().peer_addrs.clone();
    let calls_cmd = cfg.drain.active_calls_command.clone();
    let mut last_peer: Option<&'static str> = None;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    // SIGHUP asked for a re-exec, done once no service action is under way.
    let mut restart_pending = false;
    // When the daemon was told to stop, plus the stop timeout.
    let mut stop_deadline: Option<Instant> = None;
    let mut restart_checking = false;
    let mut alarm = alarm::Alarm::spawn().context("timer thread")?;

    loop {
        // Hand out everything the core has to say, up to its next deadline.
        let mut now_inputs: Vec<(ActionId, Result<ActionOutcome, ActionError>)> = Vec::new();
        let mut events = Vec::new();
        let deadline = loop {
            match node.poll_output() {
                Output::Transmit(t) => {
                    let i = peer_addrs.iter().position(|a| *a == t.to).unwrap_or(0);
                    let s = &sockets[i.min(sockets.len() - 1)];
                    match s.try_send_to(&t.bytes, t.to) {
                        Ok(_) => counters.frames_sent += 1,
                        Err(e) => {
                            counters.send_errors += 1;
                            tracing::debug!("heartbeat to {}: {e}", t.to);
                        }
                    }
                }
                Output::Action(Action { id, kind }) => match kind {
                    // On the store's thread: a slow or hung disk must not
                    // stop the heartbeats. The result comes back as a Msg.
                    ActionKind::Persist(p) => {
                        if let Err(e) = store.facts(id, p) {
                            now_inputs.push((id, Err(e)));
                        }
                    }
                    ActionKind::StartServices => {
                        // Called here: the first service is spawned now,
                        // before the Persist that follows is written.
                        let starting = services.start_all();
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let r = starting.await;
                            let r = r.map(|_| ActionOutcome::Done).map_err(ActionError);
                            let _ = tx.send(Msg::ActionDone(id, r)).await;
                        });
                    }
                    ActionKind::StopServices => {
                        let services = services.clone();
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let r = services.stop_all().await;
                            let r = r.map(|_| ActionOutcome::Done).map_err(ActionError);
                            let _ = tx.send(Msg::ActionDone(id, r)).await;
                        });
                    }
                    ActionKind::FetchFailbackData => {
                        let fetch = crate::replication::failback::fetch(
                            replicator.clone(),
                            cfg.failback.data_wait,
                        );
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let r = fetch
                                .await
                                .map(|_| ActionOutcome::Done)
                                .map_err(ActionError);
                            let _ = tx.send(Msg::ActionDone(id, r)).await;
                        });
                    }
                    ActionKind::CountActiveCalls => {
                        let tx = tx.clone();
                        let cmd = calls_cmd.clone();
                        let dir = base.clone();
                        tokio::spawn(async move {
                            let r = match cmd {
                                Some(c) => services::count_calls(&dir, &c, Duration::from_secs(10))
                                    .await
                                    .map(ActionOutcome::ActiveCalls)
                                    .map_err(ActionError),
                                // Nothing can count calls: the drain ends at once.
                                None => Ok(ActionOutcome::ActiveCalls(0)),
                            };
                            let _ = tx.send(Msg::ActionDone(id, r)).await;
                        });
                    }
                },
                Output::Event(e) => events.push(e),
                Output::Timeout(at) => break at,
            }
        };
        // The history is written once the actions are under way: a failover
        // does not wait for the log and the database.
        for e in &events {
            record_event(e, &store, &events_tx, &wall);
        }
        if node.is_done() {
            // Services stopped and the peer told (the frames went above).
            // The kept data's copy-back to the Main runs to its end first,
            // within the stop timeout.
            if let Some(r) = replicator.as_ref().filter(|r| r.copying_back()) {
                let left = stop_deadline
                    .map_or(Duration::ZERO, |t| {
                        t.saturating_duration_since(Instant::now())
                    })
                    .max(Duration::from_secs(1));
                tracing::info!("waiting for the kept data's copy-back to the main");
                if !r.copy_back_finished(left).await {
                    tracing::warn!("the kept data's copy-back to the main did not finish within the stop timeout");
                }
            }
            if !store.flush(Duration::from_secs(2)) {
                tracing::warn!("the state database did not confirm its last writes");
            }
            tracing::info!("daemon stopped");
            break;
        }
        // Nor does a re-exec cut a copy-back.
        let copying = replicator.as_ref().is_some_and(|r| r.copying_back());
        if restart_pending && now_inputs.is_empty() && node.is_quiescent() && !copying {
            restart_pending = false;
            let text = format!(
                "restarting the daemon ({}): services left running, adopted by the new process",
                exe.display()
            );
            tracing::info!("{text}");
            store.event(unix_ms(SystemTime::now()), "restart", &text);
            // Short: the heartbeats wait meanwhile.
            store.flush(Duration::from_millis(500));
            let e = reexec(&exe);
            let text = format!("restart failed, carrying on: {e}");
            tracing::error!("{text}");
            store.event(unix_ms(SystemTime::now()), "restart", &text);
        }
        if !now_inputs.is_empty() {
            for (id, r) in now_inputs {
                let _ = node.handle_input(Input::ActionDone(Instant::now(), id, r));
            }
            continue;
        }
        counters.history_dropped = store.dropped();
        let heard = publish(&node, &cfg, &counters, &service_states, &status_tx, &ha_tx);
        let was_active = *active_tx.borrow();
        active_tx.send_if_modified(|a| std::mem::replace(a, node.is_active()) != node.is_active());
        if was_active != node.is_active() {
            if let Some(r) = &replicator {
                r.expect_copy_back(was_active);
            }
        }
        // The peer's state as heard, for the dashboard's timeline.
        if let Some((name, word)) = heard {
            if last_peer != Some(word) {
                last_peer = Some(word);
                let text = format!("peer {name} is {word}");
                let at_ms = unix_ms(SystemTime::now());
                store.event(at_ms, "peer_state", &text);
            }
        }

        alarm.set(deadline);
        tokio::select! {
            _ = alarm.fired() => {
                let _ = node.handle_input(Input::Timeout(Instant::now()));
            }
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                let now = Instant::now();
                match msg {
                    Msg::Datagram(from, bytes) => {
                        counters.frames_received += 1;
                        tracing::trace!(target: "resilience::heartbeat", "{} bytes from {from}", bytes.len());
                        if let Err(e) = node.handle_input(Input::Datagram(now, from, &bytes)) {
                            tracing::debug!("from {from}: {e}");
                        }
                    }
                    Msg::Command(cmd, reply) => {
                        let r = node.handle_input(Input::Command(now, cmd));
                        let _ = reply.send(match r {
                            Ok(()) => Ok(accepted_message(&node, cmd)),
                            Err(InputError::Refused { reason, .. }) => Err(reason),
                            Err(e) => Err(e.to_string()),
                        });
                    }
                    Msg::Events(limit, reply) => {
                        store.events(limit, reply);
                    }
                    Msg::StateEvents(since, reply) => {
                        store.state_events(since, reply);
                    }
                    Msg::ActionDone(id, r) => {
                        let label = if r.is_ok() { "ok" } else { "error" };
                        *counters.actions.entry(("service", label)).or_default() += 1;
                        // Show the services as they now are, not as of the last poll.
                        let (services, tx) = (services.clone(), tx.clone());
                        tokio::spawn(async move {
                            let _ = tx.send(Msg::ServiceStates(services.states().await)).await;
                        });
                        if let Err(e) = node.handle_input(Input::ActionDone(now, id, r)) {
                            tracing::warn!("{e}");
                        }
                    }
                    Msg::Persisted(id, r) => {
                        let label = if r.is_ok() { "ok" } else { "error" };
                        *counters.actions.entry(("persist", label)).or_default() += 1;
                        if let Err(e) = node.handle_input(Input::ActionDone(now, id, r)) {
                            tracing::warn!("{e}");
                        }
                    }
                    Msg::Pbx(h) => {
                        let _ = node.handle_input(Input::PbxHealth(now, h));
                    }
                    Msg::Arbiter(ok) => {
                        let _ = node.handle_input(Input::Arbiter(now, ok));
                    }
                    Msg::ServiceStates(s) => service_states = s,
                    Msg::RestartChecked(r) => {
                        restart_checking = false;
                        match r {
                            Ok(()) if node.is_leaving() => {}
                            Ok(()) => restart_pending = true,
                            Err(e) => {
                                let text = format!("restart refused, carrying on: {e}");
                                tracing::error!("{text}");
                                store.event(unix_ms(SystemTime::now()), "restart", &text);
                            }
                        }
                    }
                    Msg::Note(kind, text) => {
                        let at_ms = unix_ms(SystemTime::now());
                        store.event(at_ms, kind, &text);
                        let _ = events_tx.send(json!({"at_ms": at_ms, "kind": kind, "text": text}));
                    }
                }
            }
            _ = sigterm.recv() => {
                stop_signal(&mut node, "SIGTERM")?;
                stop_deadline.get_or_insert(Instant::now() + node.settings().stop_timeout);
            }
            _ = sigint.recv() => {
                stop_signal(&mut node, "SIGINT")?;
                stop_deadline.get_or_insert(Instant::now() + node.settings().stop_timeout);
            }
            _ = sighup.recv() => {
                if node.is_leaving() {
                    tracing::warn!("SIGHUP ignored: the daemon is stopping");
                } else if !restart_checking {
                    tracing::info!("SIGHUP: checking the binary, then restarting the daemon once no service action is under way");
                    restart_checking = true;
                    // Off the loop: the heartbeats go on meanwhile.
                    let (tx, exe, config) = (tx.clone(), exe.clone(), config.to_owned());
                    tokio::spawn(async move {
                        let r = restart_check(&exe, &config).await;
                        let _ = tx.send(Msg::RestartChecked(r)).await;
                    });
                }
            }
            r = &mut api_task => {
                // The API is how admins and followers see the node: without
                // it, stop and let systemd restart us with the error logged.
                let why = match r {
                    Ok(Ok(())) => "API server stopped".to_string(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(e) => format!("API task: {e}"),
                };
                anyhow::bail!("{why}");
            }
        }
    }
    api_task.abort();
    drop(watchers);
    Ok(())
}

/// SIGTERM/SIGINT: hand over, stop services, then exit (the loop breaks
/// once the core is done). A second one exits at once.
fn stop_signal(node: &mut Node, name: &str) -> anyhow::Result<()> {
    if node.is_leaving() {
        anyhow::bail!("{name} again while stopping: exiting now; services may be left running");
    }
    tracing::info!("{name}: stopping the daemon: handing over, then stopping services");
    let _ = node.handle_input(Input::Shutdown(Instant::now()));
    Ok(())
}

/// The new binary must accept the config before this process becomes it:
/// a binary that cannot start would leave the services without a daemon.
async fn restart_check(exe: &Path, config: &Path) -> Result<(), String> {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(exe)
            .arg("check-config")
            .arg(config)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("`{} check-config` did not answer within 20s", exe.display()))?
    .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let out_text = String::from_utf8_lossy(&out.stdout);
        Err(format!(
            "`{} check-config {}` failed: {}",
            exe.display(),
            config.display(),
            format!("{} {}", out_text.trim(), err.trim()).trim()
        ))
    }
}

/// Become the binary at `exe` (the new one after an upgrade), same PID and
/// arguments, as nginx upgrades itself. Descriptors are close-on-exec, so
/// the new process binds its sockets again, but for those handed over at
/// start (`listen_fds`), handed on. Returns only on failure.
fn reexec(exe: &Path) -> std::io::Error {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1));
    crate::listen_fds::exec_keeping_sockets(cmd)
}

fn accepted_message(node: &Node, cmd: Command) -> String {
    let s = node.snapshot(Instant::now());
    match (cmd, s.switchover) {
        (Command::Switchover, Some(what)) => {
            format!("{cmd}: accepted; status {}; {what}", s.status)
        }
        _ => format!("{cmd}: accepted; status {}", s.status),
    }
}

fn record_event(
    e: &Event,
    store: &store_thread::StoreThread,
    events: &broadcast::Sender<serde_json::Value>,
    wall: &impl Fn(Instant) -> i64,
) {
    let text = e.to_string();
    // What an admin must act on stands out in the journal.
    if e.kind == EventKind::FailbackDataFailed {
        tracing::error!(target: "resilience", "{text}");
    } else if matches!(
        e.kind,
        EventKind::DisabledGuard { holding: true } | EventKind::SwitchoverCancelled
    ) {
        tracing::warn!(target: "resilience", "{text}");
    } else {
        tracing::info!(target: "resilience", "{text}");
    }
    let at_ms = wall(e.at);
    let kind = e.kind.label();
    store.event(at_ms, kind, &text);
    let _ = events.send(json!({"at_ms": at_ms, "kind": kind, "text": text}));
}

fn spawn_probes(cfg: &NodeConfig, base: &Path, tx: mpsc::Sender<Msg>) {
    let pbx = cfg.pbx.clone();
    if pbx.sip_options.is_some() || pbx.command.is_some() {
        let tx = tx.clone();
        let dir = base.to_owned();
        tokio::spawn(async move {
            let mut last: Option<PbxHealth> = None;
            let mut failures = 0u32;
            let mut tick = tokio::time::interval(pbx.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let timeout = pbx.interval.max(Duration::from_millis(300));
                let mut ok = true;
                if let Some(target) = pbx.sip_options {
                    ok &= matches!(probe::sip_options(target, timeout).await, Ok(c) if probe::healthy_code(c));
                }
                if let Some(cmd) = &pbx.command {
                    ok &= services::run_in(&dir, cmd, timeout).await.is_ok();
                }
                // Two misses in a row before Down: one lost UDP probe is noise.
                failures = if ok { 0 } else { failures + 1 };
                let h = if ok {
                    PbxHealth::Up
                } else if failures >= 2 {
                    PbxHealth::Down
                } else {
                    continue;
                };
                if last != Some(h) {
                    last = Some(h);
                    if tx.send(Msg::Pbx(h)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    let arbiters = cfg.arbiters.clone();
    if !arbiters.addresses.is_empty() {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut last = None;
            let mut tick = tokio::time::interval(arbiters.interval);
            loop {
                tick.tick().await;
                let ok = probe::any_arbiter(
                    &arbiters.addresses,
                    arbiters.interval.max(Duration::from_millis(300)),
                )
                .await;
                if last != Some(ok) {
                    last = Some(ok);
                    if tx.send(Msg::Arbiter(ok)).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    let services = Services::new(cfg.services.clone(), base.to_owned());
    tokio::spawn(async move {
        loop {
            let s = services.states().await;
            if tx.send(Msg::ServiceStates(s)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn status_word(s: Status) -> &'static str {
    if s.is_active() {
        "active"
    } else {
        "inactive"
    }
}

/// Refresh the documents the API serves; the peer's name and its state as
/// heard (`active`, `inactive` or `silent`).
fn publish(
    node: &Node,
    cfg: &NodeConfig,
    c: &Counters,
    services: &[ServiceState],
    status_tx: &watch::Sender<serde_json::Value>,
    ha_tx: &watch::Sender<serde_json::Value>,
) -> Option<(String, &'static str)> {
    let now = Instant::now();
    let s: Snapshot = node.snapshot(now);
    let remote = cfg
        .peer
        .as_ref()
        .map(|p| p.address.ip().to_string())
        .unwrap_or_default();
    let ha = json!({
        "node_type": s.node_type.to_string(),
        "mode": s.mode.to_string(),
        // `active`: takes new calls (the edge and the followers route by
        // it); `services`: they run; `draining`: calls in progress end here.
        "active": s.takes_new_calls,
        "services": s.status.occupies(),
        "draining": s.status == Status::Draining,
        "remote_address": remote,
    });
    ha_tx.send_if_modified(|old| {
        if *old != ha {
            *old = ha;
            true
        } else {
            false
        }
    });
    let peer = s.peer.as_ref().map(|p| {
        json!({
            "name": p.name,
            "address": cfg.peer.as_ref().map(|x| x.address.to_string()),
            "heard": p.heard,
            "last_heard_ago_s": p.last_heard_ago.map(|d| d.as_secs_f64()),
            "status": p.status.map(|s| s.to_string()),
            "active": p.status.map(|s| s.is_active()),
            "pbx": p.pbx.map(|h| h.to_string()),
            "epoch": p.epoch,
            "yielding": p.yielding,
            "replication": p.replication,
        })
    });
    let rejected: serde_json::Map<String, serde_json::Value> = s
        .rejected
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let doc = json!({
        "node": {
            "name": s.name,
            "node_type": s.node_type.to_string(),
            "mode": s.mode.to_string(),
            "status": s.status.to_string(),
            "state": status_word(s.status),
            "active": s.active,
            "takes_new_calls": s.takes_new_calls,
            "epoch": s.epoch,
            "reason": s.reason,
            "held": s.admin == Some(AdminChoice::Stop),
            "switched_away": s.admin == Some(AdminChoice::SwitchedAway),
            "switchover": s.switchover,
            "guard": s.guard,
            "admin": s.admin.map(|a| format!("{a:?}").to_lowercase()),
            "faulted": s.faulted,
            "arbiter_ok": s.arbiter_ok,
            "arbiters": cfg.arbiters.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        },
        "pbx": { "health": s.pbx.to_string(), "probe": cfg.pbx.sip_options.map(|a| a.to_string()) },
        "peer": peer,
        "services": services,
        "failback": {
            "policy": format!("{:?}", cfg.failback.policy).to_lowercase(),
            "new_calls": format!("{:?}", cfg.failback.new_calls).to_lowercase(),
            "pending": s.failback_wait.is_some() || s.want_active,
            "requested": s.want_active,
            "waiting_because": s.failback_wait,
            "due_in_s": s.failback_due_in.map(|d| d.as_secs_f64()),
        },
        "drain": { "active_calls": s.calls },
        "lab": cfg.api.lab_url,
        "heartbeat": {
            "interval_ms": cfg.heartbeat.interval.as_millis() as u64,
            "failover_after_ms": cfg.heartbeat.failover_after.as_millis() as u64,
            "sent": c.frames_sent,
            "received": c.frames_received,
            "send_errors": c.send_errors,
            "rejected": rejected,
        },
        "history": { "dropped": c.history_dropped },
    });
    api::update_metrics(&s, c.frames_sent, c.frames_received);
    status_tx.send_replace(doc);
    s.peer.map(|p| {
        let word = match (p.heard, p.status) {
            (true, Some(st)) => status_word(st),
            _ => "silent",
        };
        (p.name, word)
    })
}
