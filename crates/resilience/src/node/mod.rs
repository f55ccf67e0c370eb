//! `resilience node`: the daemon on each PBX host.
//!
//! One task owns the sans-IO core (mini-redis style): heartbeat datagrams,
//! the timer, API commands, probe answers and action results all arrive as
//! [`Msg`]s or wake-ups; the core's outputs leave as datagrams, spawned
//! service actions, log lines, history rows and a refreshed status document
//! that the API reads without asking the loop.

mod alarm;
mod driver;
pub mod probe;
pub mod store;
mod store_thread;

use crate::node_handle::{Msg, RestartCheckError};
use crate::services::{self, ServiceState, Services};
use crate::status::{self, HaStatus, NodeStatus, NodeView, StateWord};
pub use driver::NodeDriver;
use resilience_core::config::NodeConfig;
use resilience_core::node::{EventKind, Snapshot};
use resilience_core::{Command, Event, Input, Node, PbxProbe};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};

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
    driver::watchdog_startup();
    let (driver, _handle) = NodeDriver::new(config).await?;
    driver.run().await
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
async fn restart_check(exe: &Path, config: &Path) -> Result<(), RestartCheckError> {
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
    .map_err(|_| RestartCheckError::NoAnswer(exe.to_owned()))?
    .map_err(|e| RestartCheckError::Run {
        exe: exe.to_owned(),
        source: e,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let out_text = String::from_utf8_lossy(&out.stdout);
        Err(RestartCheckError::Refused {
            exe: exe.to_owned(),
            config: config.to_owned(),
            output: format!("{} {}", out_text.trim(), err.trim())
                .trim()
                .to_string(),
        })
    }
}

/// Become the binary at `exe` (the new one after an upgrade), same PID and
/// arguments, as nginx upgrades itself. Descriptors are close-on-exec, so
/// the new process binds its sockets again, but for those handed over at
/// start (`listen_fds`), handed on. Returns only on failure.
fn reexec(exe: &Path) -> std::io::Error {
    // systemd's watchdog stays armed across exec (same pid): the new
    // process's start must not count as a stuck loop.
    driver::watchdog_startup();
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
    match e.kind.sets_active() {
        Some(active) => store.state_event(at_ms, kind, &text, StateWord::active(active)),
        None => store.event(at_ms, kind, &text),
    }
    let _ = events.send(json!({"at_ms": at_ms, "kind": kind, "text": text}));
}

fn spawn_probes(cfg: &NodeConfig, base: &Path, tx: mpsc::Sender<Msg>) {
    let pbx = cfg.pbx.clone();
    if pbx.sip_options.is_some() || pbx.command.is_some() {
        let tx = tx.clone();
        let dir = base.to_owned();
        tokio::spawn(async move {
            let mut debounce = PbxProbe::new();
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
                // The core's debounce: one lost UDP probe is noise.
                if let Some(h) = debounce.observe(ok) {
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

/// Refresh the documents the API serves; the peer's name and its state as
/// heard (`active`, `inactive` or `silent`).
fn publish(
    node: &Node,
    cfg: &NodeConfig,
    c: &Counters,
    services: &[ServiceState],
    status_tx: &watch::Sender<Option<NodeView>>,
    ha_tx: &watch::Sender<Option<HaStatus>>,
) -> Option<(String, StateWord)> {
    let s: Snapshot = node.snapshot(Instant::now());
    let ha = Some(HaStatus::of(&s, cfg));
    ha_tx.send_if_modified(|old| {
        if *old != ha {
            *old = ha;
            true
        } else {
            false
        }
    });
    let counts = status::Counts {
        sent: c.frames_sent,
        received: c.frames_received,
        send_errors: c.send_errors,
        history_dropped: c.history_dropped,
    };
    let doc = NodeStatus::of(&s, cfg, services, counts);
    crate::metrics_export::update_metrics(&s, c.frames_sent, c.frames_received);
    let heard = doc.peer.as_ref().map(|p| (p.name.clone(), p.word()));
    status_tx.send_replace(Some(NodeView { snapshot: s, doc }));
    heard
}
