//! What goes into and comes out of a [`Node`](super::Node).

use super::event::Event;
pub use crate::config::{DataFailurePolicy, NewCallsPolicy};
use crate::config::{FailbackPolicyKind, NodeConfig, SplitBrainPolicy};
use crate::heartbeat::ClusterKey;
use crate::types::{Mode, NodeType, PbxHealth};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Something that happened to the node, with the time it happened.
#[derive(Debug)]
pub enum Input<'a> {
    /// Bytes received on a heartbeat socket.
    Datagram(Instant, SocketAddr, &'a [u8]),
    /// The deadline from [`Output::Timeout`] passed (early or late is fine).
    Timeout(Instant),
    /// An admin's order, from the API or the CLI.
    Command(Instant, Command),
    /// An [`Action`] finished.
    ActionDone(Instant, ActionId, Result<ActionOutcome, ActionError>),
    /// The local PBX probe's latest answer.
    PbxHealth(Instant, PbxHealth),
    /// Whether any arbiter (witness) answers the runtime's probe.
    Arbiter(Instant, bool),
    /// The replication generation this node holds (sent to the peer).
    Replication(Instant, u64),
    /// The daemon is asked to stop (SIGTERM, `systemctl stop`, host
    /// shutdown): the node tells its peer at once, drains per policy within
    /// `stop_timeout`, stops its services, and then [`Node::is_done`] says the
    /// runtime may exit. A stopped node never leaves a PBX running behind it.
    ///
    /// [`Node::is_done`]: super::Node::is_done
    Shutdown(Instant),
}

impl Input<'_> {
    /// When the input happened.
    pub fn time(&self) -> Instant {
        match self {
            Input::Datagram(t, ..)
            | Input::Timeout(t)
            | Input::Command(t, _)
            | Input::ActionDone(t, ..)
            | Input::PbxHealth(t, _)
            | Input::Arbiter(t, _)
            | Input::Replication(t, _)
            | Input::Shutdown(t) => *t,
        }
    }
}

/// An admin's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Manual mode: start the services (refused while the peer is Active
    /// unless `force`). Automatic mode: release an admin hold; the heartbeat
    /// decides.
    StartServices { force: bool },
    /// Stop the services now and keep them stopped (in automatic mode the node
    /// then yields to its peer).
    StopServices,
    /// Move the service back to the Main now, whatever the failback policy.
    Failback,
    /// Planned switchover: move the service to the peer now, after a drain,
    /// with no failover timer involved. On the Active node it hands over;
    /// on the Inactive one it asks the peer to. Refused with a reason when
    /// the peer is not ready. A Main that hands over so stays away until the
    /// next switchover (it still takes over if the Standby fails).
    Switchover,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::StartServices { force: false } => f.write_str("start services"),
            Command::StartServices { force: true } => f.write_str("start services (forced)"),
            Command::StopServices => f.write_str("stop services"),
            Command::Failback => f.write_str("failback"),
            Command::Switchover => f.write_str("switchover"),
        }
    }
}

/// What the runtime must do next.
#[derive(Debug)]
pub enum Output {
    /// Send these bytes to the peer.
    Transmit(Transmit),
    /// Run this and report with [`Input::ActionDone`].
    Action(Action),
    /// A decision, for the log, the history and the dashboard.
    Event(Event),
    /// Nothing more to do until this time (or the next input).
    Timeout(Instant),
}

/// A heartbeat frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// Names an action so its result can be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActionId(pub u64);

/// A side effect for the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub id: ActionId,
    pub kind: ActionKind,
}

/// The side effects the core asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionKind {
    /// Start every service in order. On failure the runtime stops what it
    /// started and reports the error: an error means "nothing is running".
    StartServices,
    /// Stop every service in reverse order.
    StopServices,
    /// Count the active calls (for the drain); answer with
    /// [`ActionOutcome::ActiveCalls`].
    CountActiveCalls,
    /// Write these facts durably, newest last, and report the result. The
    /// node does not wait for it: a slow or hung disk must not hold up a
    /// failover or the heartbeats (losing the newest facts to a crash is
    /// safe: see `begin_start`). A failed write is an event.
    Persist(Persisted),
    /// Main, before it asks for the service back: copy the Standby's
    /// `keep_on_failback` paths here and check them, within the gate's
    /// `wait`. Done, or the reason it failed.
    FetchFailbackData,
}

/// A successful action's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionOutcome {
    Done,
    ActiveCalls(u32),
}

/// Why an action failed, in the runtime's words (service, exit code, stderr).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ActionError(pub String);

/// An input the node did not accept. The node's state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A heartbeat that failed a check; counted.
    #[error("heartbeat dropped: {0}")]
    Rejected(crate::heartbeat::Reject),
    /// An admin command refused, with the reason to show the admin.
    #[error("{command} refused: {reason}")]
    Refused { command: Command, reason: String },
    /// A result for an action this node is not waiting for (it was
    /// superseded, or the runtime is confused).
    #[error("result for unknown action {0:?}")]
    UnknownAction(ActionId),
}

/// An admin's lasting choice, kept across reboots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminChoice {
    /// Manual mode: services were started by an admin.
    Start,
    /// Services were stopped by an admin (automatic mode: the node is held
    /// inactive and yields to its peer).
    Stop,
    /// The Main handed the service to the Standby by a planned switchover:
    /// it yields and does not ask for it back until the next switchover,
    /// but still takes over if the Standby fails or yields.
    SwitchedAway,
}

/// The facts a node keeps across restarts; handed back to [`Node::new`](super::Node::new).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Persisted {
    /// Highest epoch this node knows of.
    pub epoch: u64,
    /// Starts of this node (one more at every start; for the log only:
    /// nothing depends on it, so losing it is harmless).
    pub starts: u64,
    /// An admin's lasting choice, if any.
    pub admin: Option<AdminChoice>,
    /// This node had started (or adopted) its services and not stopped them
    /// since: with services found running at the next start, the node may
    /// adopt them instead of stopping them (a daemon restart or upgrade).
    pub serving: bool,
}

/// What the runtime saw of the services just before the node started (each
/// service's status command or unit state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServicesAtBoot {
    /// Every service says it is stopped.
    Stopped,
    /// Every service says it runs.
    Running,
    /// Some run and some do not, or a state is not clear (no status
    /// command, a unit still activating): they may run.
    Unclear,
}

impl ServicesAtBoot {
    /// From each service's state (`Some(true)` runs, `Some(false)` stopped,
    /// `None` not clear). No services at all counts as stopped.
    pub fn from_states(running: impl IntoIterator<Item = Option<bool>> + Clone) -> Self {
        if running.clone().into_iter().all(|r| r == Some(false)) {
            ServicesAtBoot::Stopped
        } else if running.into_iter().all(|r| r == Some(true)) {
            ServicesAtBoot::Running
        } else {
            ServicesAtBoot::Unclear
        }
    }
}

/// When the returning Main takes the service back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailbackPolicy {
    Immediate,
    /// After the Main has heard the Standby without a break for this long.
    Stable(Duration),
    Manual,
}

/// How the Standby hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPolicy {
    /// Longest wait for active calls to end.
    pub timeout: Duration,
    /// How often calls are counted.
    pub poll: Duration,
}

/// What the core needs of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub node_type: NodeType,
    pub mode: Mode,
    pub peer_name: Option<String>,
    /// Every heartbeat path to the peer.
    pub peer_addrs: Vec<SocketAddr>,
    pub interval: Duration,
    pub failover_after: Duration,
    pub startup_wait: Duration,
    pub failback: FailbackPolicy,
    pub split_brain: SplitBrainPolicy,
    /// `None`: stop at once on handover.
    pub drain: Option<DrainPolicy>,
    /// Whether arbiters are configured (then the Standby needs one to take over).
    pub arbiters: bool,
    pub start_attempts: u32,
    pub retry_delay: Duration,
    pub fault_hold: Duration,
    /// Main: data to bring home before failback (`keep_on_failback`).
    pub failback_data: Option<DataGate>,
    /// Longest drain when the daemon is stopped (kept below the unit's
    /// `TimeoutStopSec` with room to stop the services).
    pub stop_timeout: Duration,
    /// Who takes new calls while the Standby drains at failback
    /// (`failback.new_calls`; see `new_calls.rs`).
    pub new_calls: NewCallsPolicy,
    pub key: ClusterKey,
}

/// How the Main waits for its `keep_on_failback` data at failback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataGate {
    /// Longest wait for the copy (`failback.data_wait`).
    pub wait: Duration,
    pub on_failure: DataFailurePolicy,
}

impl Settings {
    /// The core's part of a node configuration file.
    pub fn from_config(c: &NodeConfig, key: ClusterKey) -> Settings {
        let peer = c.peer.as_ref();
        Settings {
            name: c.node.name.clone(),
            node_type: c.node.node_type,
            mode: c.node.mode,
            peer_name: peer.map(|p| p.name.clone()),
            peer_addrs: peer
                .map(|p| {
                    std::iter::once(p.address)
                        .chain(p.extra_addresses.iter().copied())
                        .collect()
                })
                .unwrap_or_default(),
            interval: c.heartbeat.interval,
            failover_after: c.heartbeat.failover_after,
            startup_wait: c.startup_wait(),
            failback: match c.failback.policy {
                FailbackPolicyKind::Immediate => FailbackPolicy::Immediate,
                FailbackPolicyKind::Stable => FailbackPolicy::Stable(c.failback.stable_for),
                FailbackPolicyKind::Manual => FailbackPolicy::Manual,
            },
            split_brain: c.failback.split_brain,
            drain: c.drain.enabled.then_some(DrainPolicy {
                timeout: c.drain.timeout,
                poll: c.drain.poll,
            }),
            arbiters: !c.arbiters.addresses.is_empty(),
            start_attempts: c.service_policy.start_attempts,
            retry_delay: c.service_policy.retry_delay,
            fault_hold: c.service_policy.fault_hold,
            failback_data: c
                .replication
                .as_ref()
                .filter(|r| !r.keep_on_failback.is_empty() && c.node.node_type == NodeType::Main)
                .map(|_| DataGate {
                    wait: c.failback.data_wait,
                    on_failure: c.failback.on_data_failure,
                }),
            stop_timeout: c.drain.stop_timeout,
            new_calls: c.failback.new_calls,
            key,
        }
    }
}
