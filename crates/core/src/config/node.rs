//! The node's file: `[node]`, `[peer]`, `[heartbeat]`, `[failback]`,
//! `[drain]`, `[pbx]`, `[[service]]`, `[api]`, and the validation of the
//! whole file (`[replication]` and `[pbx_settings]` included, whose tables
//! are in `replication.rs` and `pbx_settings.rs`).

use super::located::{line_of, locate, parse_file, ConfigError};
use super::pbx_settings::PbxSettingsSection;
use super::replication::ReplicationSection;
use crate::heartbeat::MAX_NAME;
use crate::types::{Mode, NodeType};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole node configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    #[serde(default)]
    pub peer: Option<PeerSection>,
    #[serde(default)]
    pub heartbeat: HeartbeatSection,
    #[serde(default)]
    pub failback: FailbackSection,
    #[serde(default)]
    pub drain: DrainSection,
    #[serde(default)]
    pub arbiters: ArbiterSection,
    #[serde(default)]
    pub pbx: PbxSection,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSection>,
    #[serde(default)]
    pub service_policy: ServicePolicySection,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub replication: Option<ReplicationSection>,
    #[serde(default)]
    pub pbx_settings: Option<PbxSettingsSection>,
}

/// `[node]`: who this node is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Unique name in the cluster, sent in every heartbeat (1 to 64 bytes).
    pub name: String,
    /// `disabled` unless the file says otherwise (XiVO: "Default status of
    /// Resilience is disabled"): joining a pair takes an explicit `main` or
    /// `standby`.
    #[serde(rename = "type", default = "default_node_type")]
    pub node_type: NodeType,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Where the node keeps its persisted state (SQLite) and history.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

/// `[peer]`: the other PBX node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    pub name: String,
    /// The peer's heartbeat address (its VoIP interface).
    pub address: SocketAddr,
    /// A second heartbeat path (another interface pair); the peer is silent
    /// only when every path is.
    #[serde(default)]
    pub extra_addresses: Vec<SocketAddr>,
    /// The peer's API, shown on the dashboard and used for replication.
    #[serde(default)]
    pub api: Option<String>,
}

/// `[heartbeat]`: timers and the cluster key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatSection {
    /// Local address the heartbeats are received on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub extra_listen: Vec<SocketAddr>,
    #[serde(with = "humantime_serde", default = "default_interval")]
    pub interval: Duration,
    /// How long the Main must be silent (or report its PBX down) before the
    /// Standby takes over.
    #[serde(with = "humantime_serde", default = "default_failover_after")]
    pub failover_after: Duration,
    /// How long a starting Main waits to hear the Standby before it starts
    /// anyway. Defaults to `failover_after`.
    #[serde(with = "humantime_serde::option", default)]
    pub startup_wait: Option<Duration>,
    /// File holding the cluster key in hex (`resilience keygen`).
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
}

/// When the returning Main takes the service back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailbackPolicyKind {
    /// As soon as it hears the Standby (XiVO).
    Immediate,
    /// After the Main has been up and heard for `stable_for` (IP Office: 10 min).
    Stable,
    /// Only when an admin says so (`resilience failback`).
    Manual,
}

impl std::fmt::Display for FailbackPolicyKind {
    /// The config's own word.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailbackPolicyKind::Immediate => "immediate",
            FailbackPolicyKind::Stable => "stable",
            FailbackPolicyKind::Manual => "manual",
        })
    }
}

/// Who keeps the service when a partition heals with both nodes Active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitBrainPolicy {
    /// The Main, always; the Standby stops at once.
    Main,
    /// The node that activated last (higher epoch); the Main on a tie.
    Latest,
}

impl std::fmt::Display for SplitBrainPolicy {
    /// The config's own word.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SplitBrainPolicy::Main => "main",
            SplitBrainPolicy::Latest => "latest",
        })
    }
}

/// `[failback]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailbackSection {
    #[serde(default = "default_failback_policy")]
    pub policy: FailbackPolicyKind,
    #[serde(with = "humantime_serde", default = "default_stable_for")]
    pub stable_for: Duration,
    #[serde(default = "default_split_brain")]
    pub split_brain: SplitBrainPolicy,
    /// Deprecated and read by nothing: homeless prevention is the edge's
    /// (`[phones] homeless_window` in edge.toml), the node routes no phone.
    /// Still accepted, with a warning ([`NodeConfig::warnings`]), so a file
    /// that has it keeps loading after an upgrade.
    #[serde(default)]
    pub homeless_grace: Option<serde::de::IgnoredAny>,
    /// How long the Main waits for the `keep_on_failback` paths to be
    /// copied back from the Standby (and checked) before it asks for the
    /// service. Default: 2m
    #[serde(with = "humantime_serde", default = "default_data_wait")]
    pub data_wait: Duration,
    /// What the Main does when that copy fails or outlasts `data_wait`.
    /// Default: hold
    #[serde(default)]
    pub on_data_failure: DataFailurePolicy,
    /// Where new calls go while the Standby drains at failback.
    /// Default: standby
    #[serde(default)]
    pub new_calls: NewCallsPolicy,
}

/// `failback.new_calls`: who takes new calls while the Standby drains.
///
/// XiVO's high availability documentation has new conferences start on the
/// primary while existing ones continue on the secondary; that needs
/// something in front of the PBXs that routes new calls apart from the
/// dialogs in progress: the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NewCallsPolicy {
    /// The Standby keeps taking new calls until its drain ends; the Main
    /// starts after it stops (one PBX runs at a time).
    #[default]
    Standby,
    /// The Main starts while the Standby drains and takes the new calls
    /// once the Standby has released them; calls in progress end on the
    /// Standby. Only with the edge in front (phones cannot follow alone).
    Main,
}

/// `failback.on_data_failure`: kept data that did not come home.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataFailurePolicy {
    /// The Standby keeps serving, the reason is on the status and the
    /// dashboard, and the copy is tried again (voicemail is never lost).
    #[default]
    Hold,
    /// Fail back anyway with a loud event (service first; what was not
    /// copied stays on the Standby until the next push overwrites it).
    Proceed,
}

/// `[drain]`: how the Standby hands over without cutting calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainSection {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Longest wait for active calls to end before services stop anyway.
    #[serde(with = "humantime_serde", default = "default_drain_timeout")]
    pub timeout: Duration,
    /// How often the active calls are counted while draining.
    #[serde(with = "humantime_serde", default = "default_drain_poll")]
    pub poll: Duration,
    /// Command that prints the number of active calls.
    #[serde(default)]
    pub active_calls_command: Option<String>,
    /// Longest drain when the daemon itself is stopped (`systemctl stop`):
    /// the unit's `TimeoutStopSec` must leave room for it and for stopping
    /// the services.
    #[serde(with = "humantime_serde", default = "default_stop_timeout")]
    pub stop_timeout: Duration,
}

/// `[arbiters]`: witnesses the Standby must reach before it takes over.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ArbiterSection {
    /// `host:port` addresses probed over TCP; any one reachable is enough.
    #[serde(default)]
    pub addresses: Vec<SocketAddr>,
    #[serde(with = "humantime_serde", default = "default_arbiter_interval")]
    pub interval: Duration,
}

/// `[pbx]`: how the local PBX's health is probed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PbxSection {
    /// SIP address answered with OPTIONS (e.g. `127.0.0.1:5060`).
    #[serde(default)]
    pub sip_options: Option<SocketAddr>,
    /// Optional command that exits 0 when the PBX is healthy.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(with = "humantime_serde", default = "default_pbx_interval")]
    pub interval: Duration,
}

/// One `[[service]]`, started in file order and stopped in reverse.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub name: String,
    /// A systemd unit controlled with `systemctl`.
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub stop: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(with = "humantime_serde", default = "default_service_timeout")]
    pub timeout: Duration,
}

/// `[service_policy]`: what happens when services fail to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePolicySection {
    /// Attempts before the node gives up and reports a fault.
    #[serde(default = "default_retries")]
    pub start_attempts: u32,
    #[serde(with = "humantime_serde", default = "default_retry_delay")]
    pub retry_delay: Duration,
    /// How long a faulted node stays out of the running before it may serve again.
    #[serde(with = "humantime_serde", default = "default_fault_hold")]
    pub fault_hold: Duration,
}

/// `[api]`: the HTTP API and dashboard.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Set by `resilience lab`: its control API, so the dashboard can offer
    /// the lab's fault buttons (crash a node, stop a PBX, cut the link).
    #[serde(default)]
    pub lab_url: Option<String>,
    /// Most connections served at once; more are closed on accept. The
    /// node lowers it further to leave file descriptors for its own work
    /// (heartbeats, database, replication, service commands).
    #[serde(default = "default_api_max_connections")]
    pub max_connections: usize,
    /// Host names the API answers to, besides IP addresses, `localhost`
    /// and the machine's hostname: any other `Host:` is refused, so a
    /// hostile web page cannot read the API by DNS rebinding.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Whether `[table]` of `src` has `key` (any value).
fn has_key(src: &str, table: &str, key: &str) -> bool {
    toml_edit::Document::parse(src)
        .ok()
        .is_some_and(|d| d.as_item().get(table).and_then(|t| t.get(key)).is_some())
}

fn default_node_type() -> NodeType {
    NodeType::Disabled
}
fn default_mode() -> Mode {
    Mode::Automatic
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/resilience")
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7400))
}
fn default_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_failover_after() -> Duration {
    Duration::from_secs(3)
}
fn default_key_file() -> PathBuf {
    PathBuf::from("/etc/resilience/cluster.key")
}
fn default_failback_policy() -> FailbackPolicyKind {
    FailbackPolicyKind::Stable
}
fn default_stable_for() -> Duration {
    Duration::from_secs(600)
}
fn default_split_brain() -> SplitBrainPolicy {
    SplitBrainPolicy::Main
}
fn default_data_wait() -> Duration {
    Duration::from_secs(120)
}
pub(super) fn default_true() -> bool {
    true
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_drain_poll() -> Duration {
    Duration::from_secs(2)
}
fn default_arbiter_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_pbx_interval() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_service_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_retries() -> u32 {
    3
}
fn default_retry_delay() -> Duration {
    Duration::from_secs(5)
}
fn default_fault_hold() -> Duration {
    Duration::from_secs(300)
}
fn default_api_max_connections() -> usize {
    512
}
fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7480))
}

impl Default for HeartbeatSection {
    fn default() -> Self {
        HeartbeatSection {
            listen: default_listen(),
            extra_listen: Vec::new(),
            interval: default_interval(),
            failover_after: default_failover_after(),
            startup_wait: None,
            key_file: default_key_file(),
        }
    }
}
impl Default for FailbackSection {
    fn default() -> Self {
        FailbackSection {
            policy: default_failback_policy(),
            stable_for: default_stable_for(),
            split_brain: default_split_brain(),
            homeless_grace: None,
            data_wait: default_data_wait(),
            on_data_failure: DataFailurePolicy::default(),
            new_calls: NewCallsPolicy::default(),
        }
    }
}
impl Default for DrainSection {
    fn default() -> Self {
        DrainSection {
            enabled: true,
            timeout: default_drain_timeout(),
            poll: default_drain_poll(),
            active_calls_command: None,
            stop_timeout: default_stop_timeout(),
        }
    }
}
impl Default for PbxSection {
    fn default() -> Self {
        PbxSection {
            sip_options: None,
            command: None,
            interval: default_pbx_interval(),
        }
    }
}
impl Default for ServicePolicySection {
    fn default() -> Self {
        ServicePolicySection {
            start_attempts: default_retries(),
            retry_delay: default_retry_delay(),
            fault_hold: default_fault_hold(),
        }
    }
}
impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: default_api_listen(),
            token_file: None,
            tls_cert: None,
            tls_key: None,
            lab_url: None,
            max_connections: default_api_max_connections(),
            hosts: Vec::new(),
        }
    }
}

impl NodeConfig {
    /// Parse and validate the text of a configuration file named `file`.
    pub fn parse(file: &str, src: &str) -> Result<NodeConfig, ConfigError> {
        let cfg = parse_file(file, src, NodeConfig::validate)?;
        // `disabled` by default, but a file that names a peer is a pair
        // member's that lost its type: running it standalone could leave
        // no node serving, or two. Say so rather than guess.
        if cfg.peer.is_some() && !has_key(src, "node", "type") {
            return Err(ConfigError {
                file: file.to_owned(),
                line: locate(src, "node").map(|o| line_of(src, o)),
                key: Some("node.type".into()),
                message: "missing: this file has a [peer], so say type = \"main\" or \"standby\" (or \"disabled\" and remove [peer] to leave the pair)".into(),
            });
        }
        Ok(cfg)
    }

    /// Checks across keys that serde cannot express. Returns the key to blame.
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((k.to_owned(), m));
        let name_ok = |n: &str| !n.is_empty() && n.len() <= MAX_NAME;
        if !name_ok(&self.node.name) {
            return bad("node.name", format!("expected 1 to {MAX_NAME} bytes"));
        }
        match (&self.peer, self.node.node_type) {
            (None, NodeType::Main | NodeType::Standby) => {
                return bad(
                    "node.type",
                    format!(
                        "a {} node needs a [peer] table with the other node's name and address",
                        self.node.node_type
                    ),
                )
            }
            (Some(p), _) if !name_ok(&p.name) => {
                return bad("peer.name", format!("expected 1 to {MAX_NAME} bytes"))
            }
            (Some(p), _) if p.name == self.node.name => {
                return bad("peer.name", "must differ from node.name".into())
            }
            _ => {}
        }
        let hb = &self.heartbeat;
        if hb.interval.is_zero() {
            return bad(
                "heartbeat.interval",
                "expected a duration above zero".into(),
            );
        }
        if hb.failover_after < hb.interval * 3 {
            return bad(
                "heartbeat.failover_after",
                format!(
                    "expected at least 3 heartbeat intervals ({:?}); a shorter window fails over on a few lost packets",
                    hb.interval * 3
                ),
            );
        }
        if self.failback.policy == FailbackPolicyKind::Stable && self.failback.stable_for.is_zero()
        {
            return bad(
                "failback.stable_for",
                "expected a duration above zero (or policy = \"immediate\")".into(),
            );
        }
        if self.failback.data_wait.is_zero() {
            return bad(
                "failback.data_wait",
                "expected a duration above zero (the longest wait for keep_on_failback data)"
                    .into(),
            );
        }
        if self.drain.poll.is_zero() {
            return bad("drain.poll", "expected a duration above zero".into());
        }
        if self.service_policy.start_attempts == 0 {
            return bad(
                "service_policy.start_attempts",
                "expected at least 1".into(),
            );
        }
        validate_services(&self.services)?;
        if let Some(r) = &self.replication {
            let mut names = std::collections::HashSet::new();
            for (i, d) in r.dirs.iter().enumerate() {
                if d.name.is_empty() || !names.insert(&d.name) {
                    return bad(
                        &format!("replication.dir[{i}].name"),
                        "expected a unique, non-empty job name".into(),
                    );
                }
                for (key, p) in [("owner", &d.owner), ("group", &d.group)] {
                    if p.as_ref().is_some_and(|p| !p.is_valid()) {
                        return bad(
                            &format!("replication.dir[{i}].{key}"),
                            format!(
                                "expected a {} name (letters, digits, `_`, `.`, `-`) or a numeric id",
                                if key == "owner" { "user" } else { "group" }
                            ),
                        );
                    }
                }
                if let Some(p) = d.exclude.iter().find(|p| globset::Glob::new(p).is_err()) {
                    return bad(
                        &format!("replication.dir[{i}].exclude"),
                        format!("`{p}` is not a glob pattern"),
                    );
                }
            }
            let ident = |n: &str| {
                !n.is_empty()
                    && n.len() <= 40
                    && n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            };
            for (i, j) in r.sqlite.iter().enumerate() {
                if !ident(&j.name) || !names.insert(&j.name) {
                    return bad(
                        &format!("replication.sqlite[{i}].name"),
                        "expected a unique job name of letters, digits, `_` or `-`".into(),
                    );
                }
            }
            for (i, j) in r.postgres.iter().enumerate() {
                if !ident(&j.name) || !names.insert(&j.name) {
                    return bad(
                        &format!("replication.postgres[{i}].name"),
                        "expected a unique job name of letters, digits, `_` or `-`".into(),
                    );
                }
                if j.watch_poll < Duration::from_millis(100) {
                    return bad(
                        &format!("replication.postgres[{i}].watch_poll"),
                        "expected at least 100ms".into(),
                    );
                }
                // Quoted as an identifier on the Standby; keep it plain.
                if !ident(&j.database) || j.database.contains('-') {
                    return bad(
                        &format!("replication.postgres[{i}].database"),
                        "expected a database name of letters, digits and `_` (at most 40)".into(),
                    );
                }
            }
            for (i, k) in r.keep_on_failback.iter().enumerate() {
                let job = k.split('/').next().unwrap_or("");
                if !r.dirs.iter().any(|d| d.name == job) || k.contains("..") {
                    return bad(
                        &format!("replication.keep_on_failback[{i}]"),
                        format!(
                            "`{k}` should be JOB/relative/path under a [[replication.dir]] job"
                        ),
                    );
                }
            }
            if r.interval.is_zero() {
                return bad(
                    "replication.interval",
                    "expected a duration above zero".into(),
                );
            }
            for (key, d) in [
                ("replication.read_timeout", r.read_timeout),
                ("replication.handshake_timeout", r.handshake_timeout),
            ] {
                if d < Duration::from_secs(1) {
                    return bad(key, "expected at least 1s".into());
                }
            }
            if r.session_timeout < r.read_timeout {
                return bad(
                    "replication.session_timeout",
                    format!(
                        "expected at least replication.read_timeout ({:?})",
                        r.read_timeout
                    ),
                );
            }
            if r.max_connections == 0 {
                return bad("replication.max_connections", "expected at least 1".into());
            }
        }
        if let Some(e) = self
            .pbx_settings
            .as_ref()
            .and_then(|p| p.sip_expiry.as_ref())
        {
            if e.min < Duration::from_secs(1) {
                return bad("pbx_settings.sip_expiry.min", "expected at least 1s".into());
            }
            if !(e.min <= e.default && e.default <= e.max) {
                return bad(
                    "pbx_settings.sip_expiry.default",
                    format!(
                        "expected min <= default <= max (got {:?} <= {:?} <= {:?})",
                        e.min, e.default, e.max
                    ),
                );
            }
        }
        if self.api.max_connections == 0 {
            return bad(
                "api.max_connections",
                "expected at least 1 connection".into(),
            );
        }
        if let Some(h) = self.api.hosts.iter().find(|h| {
            h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == '/' || c == ':')
        }) {
            return bad(
                "api.hosts",
                format!("expected host names without port or scheme (like \"pbx1.example.com\"), got {h:?}"),
            );
        }
        if self.api.tls_cert.is_some() != self.api.tls_key.is_some() {
            return bad(
                "api.tls_cert",
                "`tls_cert` and `tls_key` go together".into(),
            );
        }
        Ok(())
    }

    /// What a valid file says that is probably a mistake, located like
    /// errors; the node logs them at start and `check-config` prints them.
    pub fn warnings(&self, file: &str, src: &str) -> Vec<ConfigError> {
        let at = |key: &str, message: String| ConfigError {
            file: file.to_owned(),
            line: locate(src, key).map(|o| line_of(src, o)),
            key: Some(key.to_owned()),
            message,
        };
        let mut out = Vec::new();
        if self.failback.homeless_grace.is_some() {
            out.push(at(
                "failback.homeless_grace",
                "deprecated and ignored: the node routes no phone; homeless prevention is the edge's `[phones] homeless_window` (edge.toml). Remove the key".into(),
            ));
        }
        // A standalone node has no reason to name a peer: a file that keeps
        // `[peer]` most likely turned a pair member into `disabled`.
        if let (NodeType::Disabled, Some(p)) = (self.node.node_type, &self.peer) {
            out.push(at(
                "node.type",
                format!(
                    "`disabled` but [peer] still names {}: if this node was a pair member, its peer takes over while this node serves alone (two PBXs). This node keeps its services stopped while it hears a Main or Standby of its cluster; to leave high availability, follow the README (leaving high availability) and remove [peer]",
                    p.name
                ),
            ));
        }
        out
    }

    /// The startup wait in force (defaults to `failover_after`).
    pub fn startup_wait(&self) -> Duration {
        self.heartbeat
            .startup_wait
            .unwrap_or(self.heartbeat.failover_after)
    }
}

/// `[[service]]` lists (node and follower): unique names, and either a
/// systemd unit or both start and stop commands.
pub(crate) fn validate_services(services: &[ServiceSection]) -> Result<(), (String, String)> {
    let bad = |k: &str, m: String| Err((k.to_owned(), m));
    let mut names = std::collections::HashSet::new();
    for (i, s) in services.iter().enumerate() {
        if s.name.is_empty() {
            return bad(
                &format!("service[{i}].name"),
                "expected a non-empty name".into(),
            );
        }
        if !names.insert(&s.name) {
            return bad(
                &format!("service[{i}].name"),
                format!("service `{}` is listed twice", s.name),
            );
        }
        match (&s.unit, &s.start, &s.stop) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            (Some(_), _, _) => {
                return bad(
                    &format!("service[{i}].unit"),
                    "give either `unit` or `start` and `stop` commands, not both".into(),
                )
            }
            _ => {
                return bad(
                    &format!("service[{i}]"),
                    "expected `unit = \"name.service\"`, or both `start` and `stop` commands"
                        .into(),
                )
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Principal;

    const MAIN: &str = r#"
[node]
name = "pbx-main"
type = "main"

[peer]
name = "pbx-standby"
address = "127.0.0.1:7401"

[heartbeat]
interval = "200ms"
failover_after = "3s"

[[service]]
name = "asterisk"
unit = "asterisk.service"

[[service]]
name = "xivo-ctid"
start = "systemctl start xivo-ctid"
stop = "systemctl stop xivo-ctid"
"#;

    #[test]
    fn parses_a_good_file() {
        let c = NodeConfig::parse("main.toml", MAIN).unwrap();
        assert_eq!(c.node.node_type, NodeType::Main);
        assert_eq!(c.heartbeat.interval, Duration::from_millis(200));
        assert_eq!(c.failback.stable_for, Duration::from_secs(600));
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.startup_wait(), Duration::from_secs(3));
    }

    #[test]
    fn homeless_grace_is_accepted_with_a_located_warning() {
        let src = MAIN.replace(
            "[heartbeat]",
            "[failback]\nhomeless_grace = \"5m\"\n\n[heartbeat]",
        );
        let c = NodeConfig::parse("main.toml", &src).unwrap();
        let w = c.warnings("main.toml", &src);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].line, Some(11), "{}", w[0]);
        assert_eq!(w[0].key.as_deref(), Some("failback.homeless_grace"));
        assert!(w[0].message.contains("homeless_window"), "{}", w[0]);
        assert!(NodeConfig::parse("main.toml", MAIN)
            .unwrap()
            .warnings("main.toml", MAIN)
            .is_empty());
    }

    #[test]
    fn disabled_with_a_peer_section_is_warned() {
        let src = MAIN.replace("type = \"main\"", "type = \"disabled\"");
        let c = NodeConfig::parse("main.toml", &src).unwrap();
        let w = c.warnings("main.toml", &src);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].line, Some(4), "{}", w[0]);
        assert!(w[0].message.contains("two PBXs"), "{}", w[0]);
    }

    #[test]
    fn misspelt_key_names_line_and_key() {
        let src = MAIN.replace("failover_after", "failover_aftr");
        let e = NodeConfig::parse("main.toml", &src).unwrap_err();
        assert_eq!(e.line, Some(12), "{e}");
        assert!(e.to_string().contains("failover_aftr"), "{e}");
        assert!(e.to_string().starts_with("main.toml:12"), "{e}");
    }

    #[test]
    fn bad_duration_names_line_and_key() {
        let src = MAIN.replace("\"3s\"", "\"3 parsecs\"");
        let e = NodeConfig::parse("main.toml", &src).unwrap_err();
        assert_eq!(e.line, Some(12), "{e}");
        assert_eq!(e.key.as_deref(), Some("heartbeat.failover_after"), "{e}");
        assert!(e.message.contains("duration"), "{e}");
    }

    #[test]
    fn bad_enum_value_names_line_and_key() {
        let src = MAIN.replace("type = \"main\"", "type = \"primary\"");
        let e = NodeConfig::parse("main.toml", &src).unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert_eq!(e.key.as_deref(), Some("node.type"), "{e}");
        assert!(e.message.contains("main"), "{e}");
    }

    #[test]
    fn syntax_error_names_line() {
        let src = MAIN.replace("interval = \"200ms\"", "interval = \"200ms");
        let e = NodeConfig::parse("main.toml", &src).unwrap_err();
        assert_eq!(e.line, Some(11), "{e}");
    }

    #[test]
    fn validation_errors_name_line_and_key() {
        let src = MAIN.replace("failover_after = \"3s\"", "failover_after = \"400ms\"");
        let e = NodeConfig::parse("main.toml", &src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("heartbeat.failover_after"), "{e}");
        assert_eq!(e.line, Some(12), "{e}");

        let src = MAIN.replace("name = \"xivo-ctid\"", "name = \"asterisk\"");
        let e = NodeConfig::parse("main.toml", &src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("service[1].name"), "{e}");
        assert_eq!(e.line, Some(19), "{e}");

        let src = MAIN.replace("name = \"pbx-standby\"", "name = \"pbx-main\"");
        let e = NodeConfig::parse("main.toml", &src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("peer.name"), "{e}");
        assert_eq!(e.line, Some(7), "{e}");
    }

    #[test]
    fn failback_new_calls_names_line_and_key() {
        let c = NodeConfig::parse("main.toml", MAIN).unwrap();
        assert_eq!(c.failback.new_calls, NewCallsPolicy::Standby);
        let src = format!("{MAIN}\n[failback]\nnew_calls = \"main\"\n");
        let c = NodeConfig::parse("main.toml", &src).unwrap();
        assert_eq!(c.failback.new_calls, NewCallsPolicy::Main);
        let src = format!("{MAIN}\n[failback]\nnew_calls = \"edge\"\n");
        let e = NodeConfig::parse("main.toml", &src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("failback.new_calls"), "{e}");
        assert_eq!(e.line, Some(MAIN.lines().count() + 3), "{e}");
    }

    #[test]
    fn failback_data_settings_name_line_and_key() {
        let c = NodeConfig::parse("main.toml", MAIN).unwrap();
        assert_eq!(c.failback.data_wait, Duration::from_secs(120));
        assert_eq!(c.failback.on_data_failure, DataFailurePolicy::Hold);
        let good =
            format!("{MAIN}\n[failback]\ndata_wait = \"30s\"\non_data_failure = \"proceed\"\n");
        let c = NodeConfig::parse("main.toml", &good).unwrap();
        assert_eq!(c.failback.data_wait, Duration::from_secs(30));
        assert_eq!(c.failback.on_data_failure, DataFailurePolicy::Proceed);
        let bad = good.replace("\"proceed\"", "\"wait\"");
        let e = NodeConfig::parse("main.toml", &bad).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("failback.on_data_failure"), "{e}");
        assert_eq!(e.line, Some(25), "{e}");
        let bad = good.replace("\"30s\"", "\"0s\"");
        let e = NodeConfig::parse("main.toml", &bad).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("failback.data_wait"), "{e}");
        assert_eq!(e.line, Some(24), "{e}");
        let bad = good.replace("\"30s\"", "\"soon\"");
        let e = NodeConfig::parse("main.toml", &bad).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("failback.data_wait"), "{e}");
        assert_eq!(e.line, Some(24), "{e}");
    }

    #[test]
    fn replication_jobs_are_checked() {
        let repl = "\n[replication]\nlisten = \"127.0.0.1:7490\"\npeer = \"127.0.0.1:7491\"\n\
                    ca = \"ca.pem\"\ncert = \"a.crt\"\nkey = \"a.key\"\nkeep_on_failback = [KEEP]\n\
                    [[replication.dir]]\nname = \"spool\"\npath = \"/var/spool/asterisk\"\n\
                    [[replication.postgres]]\nname = \"db\"\ndatabase = \"DBNAME\"\nexclude_tables = [\"cel\"]\n";
        let good = format!("{MAIN}{repl}")
            .replace("KEEP", "\"spool/voicemail\"")
            .replace("DBNAME", "asterisk");
        let cfg = NodeConfig::parse("main.toml", &good).unwrap();
        let r = cfg.replication.unwrap();
        assert_eq!(r.postgres[0].port, 5432);
        assert_eq!(r.postgres[0].exclude_tables, vec!["cel".to_string()]);
        assert!(r.postgres[0].watch);
        assert_eq!(r.postgres[0].watch_poll, Duration::from_secs(1));
        let bad = good.replace("exclude_tables", "watch_poll = \"10ms\"\nexclude_tables");
        let e = NodeConfig::parse("main.toml", &bad).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("replication.postgres[0].watch_poll"),
            "{e}"
        );

        let bad = good.replace("\"asterisk\"\nexclude", "\"aster;drop\"\nexclude");
        let e = NodeConfig::parse("main.toml", &bad).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("replication.postgres[0].database"),
            "{e}"
        );
        let bad = good.replace("spool/voicemail", "nojob/voicemail");
        let e = NodeConfig::parse("main.toml", &bad).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("replication.keep_on_failback[0]"),
            "{e}"
        );
        let bad = good.replace("exclude_tables", "exclude_table");
        let e = NodeConfig::parse("main.toml", &bad).unwrap_err();
        assert!(e.to_string().contains("exclude_table"), "{e}");

        // Session limits: defaults, and nonsense refused by key.
        assert_eq!(r.read_timeout, Duration::from_secs(30));
        assert_eq!(r.session_timeout, Duration::from_secs(6 * 3600));
        assert_eq!(r.handshake_timeout, Duration::from_secs(10));
        assert_eq!(r.max_connections, 16);
        let limits =
            |extra: &str| good.replace("keep_on_failback", &format!("{extra}\nkeep_on_failback"));
        let ok = NodeConfig::parse(
            "main.toml",
            &limits("read_timeout = \"2s\"\nsession_timeout = \"1m\""),
        )
        .unwrap();
        assert_eq!(ok.replication.unwrap().read_timeout, Duration::from_secs(2));
        for (extra, key) in [
            ("read_timeout = \"0s\"", "replication.read_timeout"),
            (
                "handshake_timeout = \"10ms\"",
                "replication.handshake_timeout",
            ),
            ("session_timeout = \"10s\"", "replication.session_timeout"),
            ("max_connections = 0", "replication.max_connections"),
        ] {
            let e = NodeConfig::parse("main.toml", &limits(extra)).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
        }
        // Owner and group of a folder job: names or ids, checked.
        let owned = good.replace(
            "path = \"/var/spool/asterisk\"\n",
            "path = \"/var/spool/asterisk\"\nowner = \"asterisk\"\ngroup = 1001\n",
        );
        let r = NodeConfig::parse("main.toml", &owned)
            .unwrap()
            .replication
            .unwrap();
        assert_eq!(r.dirs[0].owner, Some(Principal::Name("asterisk".into())));
        assert_eq!(r.dirs[0].group.as_ref().and_then(Principal::id), Some(1001));
        let bad = owned.replace("owner = \"asterisk\"", "owner = \"aster isk\"");
        let e = NodeConfig::parse("main.toml", &bad).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("replication.dir[0].owner"), "{e}");
        let line = bad.lines().position(|l| l.starts_with("owner")).unwrap() + 1;
        assert_eq!(e.line, Some(line), "{e}");
        let bad = owned.replace("group = 1001", "group = -4");
        let e = NodeConfig::parse("main.toml", &bad).unwrap_err();
        assert!(e.to_string().contains("group"), "{e}");
    }

    #[test]
    fn main_without_peer_is_refused() {
        let src = "[node]\nname = \"a\"\ntype = \"standby\"\n";
        let e = NodeConfig::parse("s.toml", src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("node.type"));
        assert_eq!(e.line, Some(3));
        let ok = "[node]\nname = \"a\"\ntype = \"disabled\"\n";
        NodeConfig::parse("d.toml", ok).unwrap();
    }

    #[test]
    fn missing_required_key() {
        let src = "[node]\ntype = \"disabled\"\n";
        let e = NodeConfig::parse("d.toml", src).unwrap_err();
        assert!(e.message.contains("name"), "{e}");
    }

    #[test]
    fn a_node_without_a_type_is_disabled() {
        let c = NodeConfig::parse("node.toml", "[node]\nname = \"a\"\n").unwrap();
        assert_eq!(c.node.node_type, NodeType::Disabled);
        // A file with [peer] but no type is refused: it was a pair
        // member's, and running it standalone could leave none serving.
        let src = "[node]\nname = \"a\"\n[peer]\nname = \"b\"\naddress = \"127.0.0.1:7400\"\n";
        let e = NodeConfig::parse("node.toml", src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("node.type"), "{e}");
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn a_hostname_a_big_port_and_a_duplicate_key_are_named() {
        let src = MAIN.replace("127.0.0.1:7401", "pbx-standby.example:7401");
        let e = NodeConfig::parse("m.toml", &src).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("peer.address"), "{e}");
        assert!(e.message.contains("`pbx-standby.example`"), "{e}");
        let src = MAIN.replace("127.0.0.1:7401", "127.0.0.1:99999");
        let e = NodeConfig::parse("m.toml", &src).unwrap_err();
        assert!(e.message.contains("port 99999"), "{e}");
        let src = MAIN.replace(
            "name = \"pbx-main\"",
            "name = \"pbx-main\"\nname = \"again\"",
        );
        let e = NodeConfig::parse("m.toml", &src).unwrap_err();
        assert!(e.message.contains("duplicate key `name`"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
    }
}
