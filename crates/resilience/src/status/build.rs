//! The node's documents built from the core's snapshot and the config:
//! the only place that decides what each field of [`NodeStatus`] and
//! [`HaStatus`] means.

use super::*;
use resilience_core::config::NodeConfig;
use resilience_core::node::{AdminChoice, PeerSnapshot, Snapshot};

/// What the node loop publishes after each step: the document served, and
/// the core's snapshot it was built from (rules such as the push
/// permission are the core's, over the snapshot, not over the JSON).
#[derive(Debug, Clone)]
pub struct NodeView {
    pub snapshot: Snapshot,
    pub doc: NodeStatus,
}

/// The runtime's heartbeat and history counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub sent: u64,
    pub received: u64,
    pub send_errors: u64,
    pub history_dropped: u64,
}

impl HaStatus {
    pub fn of(s: &Snapshot, cfg: &NodeConfig) -> HaStatus {
        HaStatus {
            node_type: s.node_type,
            mode: s.mode,
            // `active`: takes new calls (the edge and the followers route by
            // it); `services`: they run; `draining`: calls in progress end here.
            active: s.takes_new_calls,
            services: s.status.occupies(),
            draining: s.status == Status::Draining,
            remote_address: cfg
                .peer
                .as_ref()
                .map(|p| p.address.ip().to_string())
                .unwrap_or_default(),
        }
    }
}

impl NodeStatus {
    /// The document of `s`; `replication` and `pbx_settings` are added
    /// when it is served.
    pub fn of(s: &Snapshot, cfg: &NodeConfig, services: &[ServiceState], c: Counts) -> NodeStatus {
        NodeStatus {
            node: NodeInfo::of(s, cfg),
            pbx: PbxInfo {
                health: s.pbx,
                probe: cfg.pbx.sip_options.map(|a| a.to_string()),
            },
            peer: s.peer.as_ref().map(|p| PeerInfo::of(p, cfg)),
            services: services.to_vec(),
            failback: FailbackInfo {
                policy: format!("{:?}", cfg.failback.policy).to_lowercase(),
                new_calls: format!("{:?}", cfg.failback.new_calls).to_lowercase(),
                pending: s.failback_wait.is_some() || s.want_active,
                requested: s.want_active,
                waiting_because: s.failback_wait.clone(),
                due_in_s: s.failback_due_in.map(|d| d.as_secs_f64()),
            },
            drain: DrainInfo {
                active_calls: s.calls,
            },
            lab: cfg.api.lab_url.clone(),
            heartbeat: HeartbeatInfo {
                interval_ms: cfg.heartbeat.interval.as_millis() as u64,
                failover_after_ms: cfg.heartbeat.failover_after.as_millis() as u64,
                sent: c.sent,
                received: c.received,
                send_errors: c.send_errors,
                rejected: s
                    .rejected
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
            },
            history: HistoryInfo {
                dropped: c.history_dropped,
            },
            replication: None,
            pbx_settings: None,
        }
    }
}

impl NodeInfo {
    fn of(s: &Snapshot, cfg: &NodeConfig) -> NodeInfo {
        NodeInfo {
            name: s.name.clone(),
            node_type: s.node_type,
            mode: s.mode,
            status: s.status,
            state: StateWord::of(s.status),
            active: s.active,
            takes_new_calls: s.takes_new_calls,
            epoch: s.epoch,
            reason: s.reason.clone(),
            held: s.admin == Some(AdminChoice::Stop),
            switched_away: s.admin == Some(AdminChoice::SwitchedAway),
            switchover: s.switchover.clone(),
            guard: s.guard.clone(),
            admin: s.admin.map(|a| format!("{a:?}").to_lowercase()),
            faulted: s.faulted,
            arbiter_ok: s.arbiter_ok,
            arbiters: cfg
                .arbiters
                .addresses
                .iter()
                .map(|a| a.to_string())
                .collect(),
        }
    }
}

impl PeerInfo {
    fn of(p: &PeerSnapshot, cfg: &NodeConfig) -> PeerInfo {
        PeerInfo {
            name: p.name.clone(),
            address: cfg.peer.as_ref().map(|x| x.address.to_string()),
            heard: p.heard,
            last_heard_ago_s: p.last_heard_ago.map(|d| d.as_secs_f64()),
            status: p.status,
            active: p.status.map(|s| s.is_active()),
            pbx: p.pbx,
            epoch: p.epoch,
            yielding: p.yielding,
            replication: p.replication,
        }
    }

    /// The peer in one word: its status as heard, or `silent`.
    pub fn word(&self) -> StateWord {
        match (self.heard, self.status) {
            (true, Some(st)) => StateWord::of(st),
            _ => StateWord::Silent,
        }
    }
}
