//! Every decision the node makes, with its reason.

use crate::heartbeat::Reject;
use crate::types::{human, Mode, NodeType, Status};
use std::fmt;
use std::time::{Duration, Instant};

/// A state change or a decision, for the log, the history and the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: Instant,
    pub kind: EventKind,
    /// Why, in words an admin reads.
    pub reason: String,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The node (re)started from its persisted facts.
    Booted {
        node_type: NodeType,
        mode: Mode,
        epoch: u64,
        /// Starts remembered by the disk (1 after a lost state).
        starts: u64,
        /// The random id of this start, as in its heartbeats.
        boot_id: u64,
    },
    StatusChanged {
        from: Status,
        to: Status,
    },
    /// The XiVO "active" flag flipped (logged in XiVO's words).
    ActiveChanged {
        from: bool,
        to: bool,
    },
    PeerHeard {
        status: Status,
    },
    PeerSilent {
        silent_for: Duration,
    },
    /// The peer's configuration disagrees with ours (same type, other mode).
    PeerMismatch,
    /// The Main waits before asking for the service back.
    FailbackPending,
    /// The Main asks the Standby to hand over.
    FailbackRequested,
    /// The Main has its `keep_on_failback` data back from the Standby.
    FailbackDataReady,
    /// Copying it back failed or timed out: held, or failing back without it.
    FailbackDataFailed,
    DrainStarted,
    DrainCancelled,
    /// A Standby draining with `failback.new_calls = "main"` released the
    /// new calls to the Main (true) or took them back (false).
    NewCallsReleased {
        released: bool,
    },
    ServiceStartFailed {
        attempt: u32,
        of: u32,
    },
    ServiceStopFailed,
    /// The node will not serve for a while and tells its peer so.
    Faulted {
        /// How long the node yields (`fault_hold`).
        hold: Duration,
    },
    FaultCleared,
    /// The Standby would take over but may not (no arbiter reachable).
    FailoverBlocked,
    /// Both nodes claim the service; the loser steps down (`winner:
    /// false`), the winner says once that it stays active.
    SplitBrain {
        own_epoch: u64,
        peer_epoch: u64,
        winner: bool,
    },
    CommandAccepted,
    CommandRefused,
    /// Heartbeats dropped for this reason so far (logged at 1, 10, 100, …).
    FrameRejected {
        reject: Reject,
        count: u64,
    },
    /// An action the node does not depend on failed (persisting, counting calls).
    ActionFailed,
    /// A planned switchover moved on (asked, handing over, hold released).
    Switchover,
    /// A planned switchover was given up; the reason says why.
    SwitchoverCancelled,
    /// A disabled node hears a Main or Standby of its cluster (`serving:
    /// false`, it keeps its services stopped) or no longer does.
    DisabledGuard {
        holding: bool,
    },
    /// A restarted daemon found its services running and waits to hear its
    /// peer before it adopts them.
    Adopting,
    /// The daemon is stopping: the node hands over and stops its services.
    Leaving,
    /// Services stopped and the peer told: the daemon may exit.
    Left,
}

impl EventKind {
    /// The serving flag this event leaves the node with, when it says one:
    /// a flip of the flag, or a start (a node boots not serving). The
    /// dashboard's timeline is drawn from these.
    pub fn sets_active(&self) -> Option<bool> {
        match self {
            EventKind::ActiveChanged { to, .. } => Some(*to),
            EventKind::Booted { .. } => Some(false),
            _ => None,
        }
    }

    /// A stable one-word name, for the history table, metrics and filters.
    pub fn label(&self) -> &'static str {
        use EventKind::*;
        match self {
            Booted { .. } => "booted",
            StatusChanged { .. } => "status",
            ActiveChanged { .. } => "active",
            PeerHeard { .. } => "peer_heard",
            PeerSilent { .. } => "peer_silent",
            PeerMismatch => "peer_mismatch",
            FailbackPending => "failback_pending",
            FailbackRequested => "failback_requested",
            FailbackDataReady => "failback_data_ready",
            FailbackDataFailed => "failback_data_failed",
            DrainStarted => "drain_started",
            DrainCancelled => "drain_cancelled",
            NewCallsReleased { .. } => "new_calls_released",
            ServiceStartFailed { .. } => "start_failed",
            ServiceStopFailed => "stop_failed",
            Faulted { .. } => "faulted",
            FaultCleared => "fault_cleared",
            FailoverBlocked => "failover_blocked",
            SplitBrain { .. } => "split_brain",
            CommandAccepted => "command_accepted",
            CommandRefused => "command_refused",
            FrameRejected { .. } => "frame_rejected",
            ActionFailed => "action_failed",
            Switchover => "switchover",
            SwitchoverCancelled => "switchover_cancelled",
            DisabledGuard { .. } => "disabled_guard",
            Adopting => "adopting",
            Leaving => "leaving",
            Left => "left",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use EventKind::*;
        match &self.kind {
            Booted {
                node_type,
                mode,
                epoch,
                starts,
                boot_id,
            } => write!(
                f,
                "node started as {node_type} in {mode} mode (epoch {epoch}, start {starts}, boot id {boot_id:016x})"
            )?,
            StatusChanged { from, to } => write!(f, "status {from} -> {to}")?,
            // XiVO's words and casing (its sysconfd logs Python booleans),
            // so the documented `grep 'Updating resilience state'` recipe
            // reads the same lines here.
            ActiveChanged { from, to } => write!(
                f,
                "Updating resilience state, from: {} to: {}",
                py_bool(*from),
                py_bool(*to)
            )?,
            PeerHeard { status } => write!(f, "peer heard (status {status})")?,
            PeerSilent { silent_for } => write!(f, "peer silent for {}", human(*silent_for))?,
            PeerMismatch => f.write_str("peer configuration mismatch")?,
            FailbackPending => f.write_str("failback pending")?,
            FailbackRequested => f.write_str("failback requested")?,
            FailbackDataReady => f.write_str("failback data copied back")?,
            FailbackDataFailed => f.write_str("FAILBACK DATA NOT COPIED BACK")?,
            DrainStarted => f.write_str("drain started")?,
            DrainCancelled => f.write_str("drain cancelled")?,
            NewCallsReleased { released: true } => {
                f.write_str("new calls released to the main")?
            }
            NewCallsReleased { released: false } => f.write_str("new calls taken back")?,
            ServiceStartFailed { attempt, of } => {
                write!(f, "services failed to start (attempt {attempt} of {of})")?
            }
            ServiceStopFailed => f.write_str("services failed to stop")?,
            Faulted { hold } => write!(f, "node faulted, yielding for {}", human(*hold))?,
            FaultCleared => f.write_str("fault cleared")?,
            FailoverBlocked => f.write_str("failover blocked")?,
            SplitBrain { own_epoch, peer_epoch, winner } => write!(
                f,
                "both nodes active (epoch {own_epoch} here, {peer_epoch} on the peer): this node {}",
                if *winner { "stays active" } else { "steps down" }
            )?,
            CommandAccepted => f.write_str("command accepted")?,
            CommandRefused => f.write_str("command refused")?,
            FrameRejected { reject, count } => write!(f, "heartbeat dropped ({count} so far): {reject}")?,
            ActionFailed => f.write_str("action failed")?,
            Switchover => f.write_str("switchover")?,
            SwitchoverCancelled => f.write_str("switchover cancelled")?,
            DisabledGuard { holding: true } => {
                f.write_str("disabled node keeps its services stopped")?
            }
            DisabledGuard { holding: false } => f.write_str("disabled node guard lifted")?,
            Adopting => f.write_str("services found running")?,
            Leaving => f.write_str("leaving")?,
            Left => f.write_str("left")?,
        }
        if !self.reason.is_empty() {
            write!(f, " — {}", self.reason)?;
        }
        Ok(())
    }
}

/// `True` / `False`, as XiVO's sysconfd writes them.
fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}
