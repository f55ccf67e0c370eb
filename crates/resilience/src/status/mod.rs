//! The status documents every role serves, as types: the node's
//! `/api/v1/status` ([`NodeStatus`]) and `/api/v1/ha` ([`HaStatus`]), the
//! edge's and the follower's `/api/v1/status`, and the node's events page.
//! Whoever writes or reads one goes through these, so a renamed field is a
//! compile error rather than a silent `null` on the other side.
//!
//! The JSON keeps the field names and value shapes of the hand-built
//! documents these replace: dashboards, scripts, followers and edges of
//! another version read them. Reading is lenient the way an older or newer
//! peer needs: unknown fields are ignored (serde's default) and fields a
//! version may lack default.
//!
//! A leaf: it depends on serde and the core's value types only.

mod build;
#[cfg(test)]
mod tests;

pub use build::{Counts, NodeView};
use resilience_core::{Mode, NodeType, PbxHealth, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /api/v1/ha`: what the edge and the followers route by. An older
/// node's document has no `services` or `draining`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaStatus {
    pub node_type: NodeType,
    pub mode: Mode,
    /// Takes new calls (the edge and the followers route by it).
    pub active: bool,
    /// Its services run (or are being started or stopped).
    #[serde(default)]
    pub services: bool,
    /// Calls in progress end here; new ones go to the peer.
    #[serde(default)]
    pub draining: bool,
    /// The peer's address (empty without a peer).
    #[serde(default)]
    pub remote_address: String,
}

/// What the edge and the followers read of `GET /api/v1/ha`: `active`
/// alone, so a node of another version (a node type or mode this one does
/// not know, fields added or gone) is still understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct HaRoute {
    /// Takes new calls.
    pub active: bool,
}

/// `GET /api/v1/status` of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: NodeInfo,
    pub pbx: PbxInfo,
    /// `null` without a `[peer]`.
    pub peer: Option<PeerInfo>,
    #[serde(default)]
    pub services: Vec<ServiceState>,
    pub failback: FailbackInfo,
    pub drain: DrainInfo,
    /// The lab's control page, when the node runs in a lab.
    #[serde(default)]
    pub lab: Option<String>,
    pub heartbeat: HeartbeatInfo,
    #[serde(default)]
    pub history: HistoryInfo,
    /// The replication jobs, read when the document is served (absent
    /// without `[replication]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationStatus>,
    /// What `[pbx_settings]` changed at start, added when served. Its shape
    /// is the pbx_settings module's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pbx_settings: Option<serde_json::Value>,
}

/// The node itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub node_type: NodeType,
    pub mode: Mode,
    pub status: Status,
    /// `active` or `inactive`: the XiVO flag in words.
    pub state: StateWord,
    /// Serving (Active or Draining).
    pub active: bool,
    #[serde(default)]
    pub takes_new_calls: bool,
    pub epoch: u64,
    /// Why the last status change happened.
    #[serde(default)]
    pub reason: String,
    /// An admin holds it inactive.
    #[serde(default)]
    pub held: bool,
    #[serde(default)]
    pub switched_away: bool,
    #[serde(default)]
    pub switchover: Option<String>,
    #[serde(default)]
    pub guard: Option<String>,
    /// The admin's last choice in lowercase (`start`, `stop`, `switchedaway`).
    #[serde(default)]
    pub admin: Option<String>,
    #[serde(default)]
    pub faulted: bool,
    #[serde(default)]
    pub arbiter_ok: bool,
    #[serde(default)]
    pub arbiters: Vec<String>,
}

/// A node's or its peer's state in one word, as the pages and the
/// timeline show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateWord {
    Active,
    Inactive,
    /// The peer is not heard.
    Silent,
}

impl StateWord {
    /// The word of a status: `active` while it serves.
    pub fn of(status: Status) -> StateWord {
        StateWord::active(status.is_active())
    }

    /// The word of a serving flag.
    pub fn active(active: bool) -> StateWord {
        if active {
            StateWord::Active
        } else {
            StateWord::Inactive
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StateWord::Active => "active",
            StateWord::Inactive => "inactive",
            StateWord::Silent => "silent",
        }
    }

    /// The word back from its text (as stored in the history).
    pub fn parse(s: &str) -> Option<StateWord> {
        [StateWord::Active, StateWord::Inactive, StateWord::Silent]
            .into_iter()
            .find(|w| w.as_str() == s)
    }
}

impl std::fmt::Display for StateWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The local PBX as probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PbxInfo {
    pub health: PbxHealth,
    /// The SIP OPTIONS target, if one is probed.
    #[serde(default)]
    pub probe: Option<String>,
}

/// The peer as last heard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub name: String,
    #[serde(default)]
    pub address: Option<String>,
    pub heard: bool,
    #[serde(default)]
    pub last_heard_ago_s: Option<f64>,
    /// `None` until a heartbeat was heard.
    #[serde(default)]
    pub status: Option<Status>,
    /// Serving, as last heard.
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default)]
    pub pbx: Option<PbxHealth>,
    #[serde(default)]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub yielding: bool,
    #[serde(default)]
    pub replication: Option<u64>,
}

/// Whether one service runs, as its status command says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    pub name: String,
    /// `None` when the service has no status command.
    pub running: Option<bool>,
}

/// The Main's way back to service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailbackInfo {
    /// `failback.policy` in lowercase.
    pub policy: String,
    /// `failback.new_calls` in lowercase.
    #[serde(default)]
    pub new_calls: String,
    pub pending: bool,
    pub requested: bool,
    #[serde(default)]
    pub waiting_because: Option<String>,
    #[serde(default)]
    pub due_in_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DrainInfo {
    /// Calls last counted while draining.
    pub active_calls: Option<u32>,
}

/// The heartbeat's settings and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatInfo {
    pub interval_ms: u64,
    pub failover_after_ms: u64,
    pub sent: u64,
    pub received: u64,
    #[serde(default)]
    pub send_errors: u64,
    /// Dropped heartbeats by reason.
    #[serde(default)]
    pub rejected: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HistoryInfo {
    /// History lines the state database could not take.
    pub dropped: u64,
}

/// `GET /api/v1/events`: one page of the history, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub events: Vec<EventRow>,
    #[serde(default)]
    pub limit: usize,
    /// The cursor of the next (older) page; `None` at the end.
    #[serde(default)]
    pub next_before: Option<i64>,
}

/// One event of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    pub id: i64,
    /// Unix time in milliseconds.
    pub at_ms: i64,
    pub kind: String,
    pub text: String,
    /// The state the event puts its timeline row in (own `active`/`booted`
    /// events, the peer's `peer_state`); absent for other events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateWord>,
}

/// `GET /api/v1/status` of the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeStatus {
    pub pbxs: Vec<EdgePbx>,
    pub relayed: u64,
    /// Datagrams dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    pub phones: usize,
    pub table: EdgeTable,
    pub connections: EdgeConnections,
    /// The latest phone moves, newest first.
    pub moves: Vec<PhoneMove>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgePbx {
    pub name: String,
    pub up: bool,
}

/// The phone table's counts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EdgeTable {
    pub phones: usize,
    pub away: usize,
    pub flows: usize,
    pub registers_pending: usize,
    pub calls: usize,
    pub expired: u64,
    pub evicted: u64,
    pub over_cap: u64,
    pub unregistered: u64,
    pub register_timeouts: u64,
    pub registers_pending_dropped: u64,
    pub reregisters_sent: u64,
    pub reregisters_ok: u64,
}

/// The SIP TCP/TLS intake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeConnections {
    pub open: usize,
    pub cap: usize,
    pub per_source_cap: usize,
    pub refused_or_closed: RateTotals,
}

/// `replication` of the node's status: what each job last did.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// The peer's replication address.
    pub peer: String,
    pub jobs: BTreeMap<String, ReplicationJob>,
    /// What changed on the Standby while it served, reported at failback
    /// (the replication module's `changes::Report`).
    #[serde(default)]
    pub local_changes_at_failback: Option<serde_json::Value>,
    /// Sessions the listener refused, by reason.
    #[serde(default)]
    pub refused: RateTotals,
}

/// One replication job's last results.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicationJob {
    /// `dir`, `sqlite` or `postgres`.
    pub kind: String,
    /// The folder or file, or the database's name.
    pub path: String,
    /// `push` on the Main, `receive` on the Standby.
    pub role: String,
    pub last_success_ms: Option<i64>,
    pub last_attempt_ms: Option<i64>,
    pub duration_ms: Option<u64>,
    pub files: u64,
    pub bytes: u64,
    pub deleted: u64,
    pub last_error: Option<String>,
    pub running: bool,
    /// Symlinks leading out of the folder, not sent (Main).
    pub links_skipped: u64,
    /// Seconds since the last success.
    pub stale_s: Option<f64>,
}

/// Totals of a rate-limited log.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RateTotals {
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
}

/// A phone the edge moved to the other PBX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhoneMove {
    pub at_ms: u64,
    pub aor: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// `GET /api/v1/status` of a follower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerStatus {
    pub name: String,
    pub node_url: String,
    /// The node's last answer (`None`: unreachable, or not polled yet).
    pub node_active: Option<bool>,
    pub reachable: bool,
    pub unreachable_for_ms: Option<u64>,
    pub wanted_active: Option<bool>,
    pub applied_active: Option<bool>,
    pub applying: bool,
    /// A change seen but not yet confirmed.
    pub pending: Option<FollowerPending>,
    pub services: Vec<ServiceState>,
    pub polls: FollowerPolls,
    pub actions: FollowerActions,
    pub last_error: Option<String>,
    pub poll_error: Option<String>,
    pub last_change_unix_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerPending {
    pub active: bool,
    pub answers: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FollowerPolls {
    pub ok: u64,
    pub unreachable: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FollowerActions {
    pub ok: u64,
    pub failed: u64,
}

/// The answer of a node's API call that changes something (or refuses):
/// `message` when done, `error` (and the core's `reason`) when not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /api/v1/replicate`: each job's push.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushAnswer {
    #[serde(default)]
    pub jobs: Vec<PushJob>,
}

/// One job's push: its counts, or its `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushJob {
    pub job: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
