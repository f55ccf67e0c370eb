//! The node state machine: who is Active, and why.
//!
//! Shape of quinn-proto's `Connection`: [`Node::handle_input`] takes an input
//! and the time, [`Node::poll_output`] hands back what to do, ending with the
//! next deadline. The rules, in the order [`Node::decide`] applies them:
//!
//! - **Split brain**: a node that claims the service and hears a peer that
//!   claims it too steps down unless it wins (the Main by default; the higher
//!   epoch with `split_brain = "latest"`). Both sides compute the same answer.
//! - **Start** (automatic): the Main starts when the Standby is heard Inactive
//!   and hears it back, or after `startup_wait` without hearing it. The
//!   Standby starts when the Main has been silent for `failover_after` (and an
//!   arbiter answers, where arbiters are configured), or when the Main says
//!   it yields (held by an admin, or faulted). The two conditions never hold
//!   together while the nodes hear each other, so at most one starts.
//! - **Release**: an Active node whose PBX has been down for `failover_after`
//!   hands over to a ready peer and yields for `fault_hold`.
//! - **Failback**: the Main, Inactive and hearing the Standby Active, waits
//!   per policy, then sets `WANT_ACTIVE`; the Standby drains (calls reach zero
//!   or the drain times out), stops, and reports Inactive; the Main starts.
//!   With `failback.new_calls = "main"` (`new_calls.rs`) the Main starts
//!   alongside the draining Standby and takes the new calls once released.
//! - **Manual mode**: only commands start and stop services.
//! - **Planned switchover** (`switchover.rs`): an admin's command moves the
//!   service to a ready peer after a drain, with no failover timer; a Main
//!   that hands over so yields until the next switchover.
//! - **Disabled nodes** (`guard.rs`): serve alone, but not while a Main or
//!   Standby of their cluster is heard.
//! - **Stop and restart** (`lifecycle.rs`): a stopping daemon hands over
//!   (tells its peer, drains, stops its services); a restarted one adopts the
//!   services it left running when its facts and its peer agree that it is
//!   the one serving, and stops them otherwise.
//!
//! One file per idea: `commands.rs` (an admin's commands), `services.rs`
//! (service actions, status, fault hold), `split_brain.rs`, `failover.rs`
//! (when to start, when a sick PBX hands over), `handover.rs` (the drain),
//! `failback.rs` (the Main's request), `heartbeats.rs` (what is heard and
//! sent), `deadlines.rs` (the next wake-up and its [`Wake`] reason).

mod commands;
mod data;
mod deadlines;
mod event;
mod failback;
mod failover;
mod guard;
mod handover;
mod heartbeats;
mod io;
mod lifecycle;
mod new_calls;
mod peer;
mod push;
mod services;
mod split_brain;
mod switchover;

pub use deadlines::Wake;
pub use event::{Event, EventKind};
pub use io::{
    Action, ActionError, ActionId, ActionKind, ActionOutcome, AdminChoice, Command,
    DataFailurePolicy, DataGate, DrainPolicy, FailbackPolicy, Input, InputError, NewCallsPolicy,
    Output, Persisted, ServicesAtBoot, Settings, Transmit,
};
pub use push::PushRefusal;

use crate::config::SplitBrainPolicy;
use crate::heartbeat::{self, Flags, Frame, Reject};
use crate::types::{human, Mode, NodeType, PbxHealth, Status};
use failback::FailbackWait;
use handover::Drain;
use peer::Peer;
use services::{Fault, ServiceOp};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A read-only picture of the node, for the API and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    pub node_type: NodeType,
    pub mode: Mode,
    pub status: Status,
    pub active: bool,
    /// Takes new calls (differs from `active` only during the hand-off of
    /// `failback.new_calls = "main"`: `new_calls.rs`).
    pub takes_new_calls: bool,
    pub epoch: u64,
    pub pbx: PbxHealth,
    pub admin: Option<AdminChoice>,
    pub faulted: bool,
    pub arbiter_ok: bool,
    /// Why the last status change happened.
    pub reason: String,
    /// Why the Main is waiting to fail back, if it is.
    pub failback_wait: Option<String>,
    /// When the stable timer will let the Main ask, if it is running.
    pub failback_due_in: Option<Duration>,
    pub want_active: bool,
    /// Active calls last counted (while draining).
    pub calls: Option<u32>,
    pub peer: Option<PeerSnapshot>,
    /// A planned switchover under way, or the Main's hold after one.
    pub switchover: Option<String>,
    /// Why a disabled node does not serve (a pair member is heard), or
    /// waits before serving.
    pub guard: Option<String>,
    /// Dropped heartbeats, by [`Reject::label`].
    pub rejected: Vec<(&'static str, u64)>,
}

/// The peer as last heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSnapshot {
    pub name: String,
    pub heard: bool,
    pub last_heard_ago: Option<Duration>,
    pub status: Option<Status>,
    pub pbx: Option<PbxHealth>,
    pub epoch: Option<u64>,
    pub yielding: bool,
    pub replication: Option<u64>,
}

/// One PBX node's high-availability brain. See the module doc for the rules.
#[derive(Debug)]
pub struct Node {
    s: Settings,
    now: Instant,
    started_at: Instant,
    status: Status,
    reason: String,
    epoch: u64,
    /// Starts of this node, as far as its disk remembers (for the log).
    starts: u64,
    /// Random id of this start, on the wire.
    boot: u64,
    seq: u64,
    admin: Option<AdminChoice>,
    fault: Option<Fault>,
    forced: bool,
    pbx: PbxHealth,
    pbx_down_since: Option<Instant>,
    arbiter_ok: bool,
    arbiter_warned: bool,
    peer: Peer,
    next_heartbeat: Instant,
    /// The frame this node sends, refreshed field by field at each heartbeat
    /// (its name is copied once, not at every send).
    outgoing: Frame,
    service_op: Option<(ActionId, ServiceOp)>,
    stop_after_start: Option<String>,
    failed_starts: u32,
    retry_at: Option<Instant>,
    drain: Option<Drain>,
    /// An admin asked for failback now (Main: skip the policy; Standby: hand back).
    failback_now: bool,
    want_active: bool,
    failback_wait: Option<String>,
    /// What `failback_wait` says, to log a change once.
    failback_wait_kind: Option<FailbackWait>,
    /// The copy of the kept data for this failback (`data.rs`).
    data: data::DataFetch,
    data_id: Option<ActionId>,
    replication: u64,
    calls: Option<u32>,
    next_id: u64,
    persist_ids: Vec<ActionId>,
    count_ids: Vec<ActionId>,
    out: VecDeque<Output>,
    rejected: [u64; Reject::ALL.len()],
    /// A planned switchover under way (see `switchover.rs`).
    switch: switchover::Switch,
    /// A disabled node's watch for pair members (see `guard.rs`).
    guard: guard::Guard,
    /// Services started or adopted and not stopped since (persisted).
    serving: bool,
    /// The daemon is stopping: the drain may last until this time.
    leaving: Option<Instant>,
    /// Stopping is over: services stopped, the peer told; the runtime may exit.
    left: bool,
    /// Services found running at boot, to adopt unless the peer serves: the
    /// wait for the peer ends at this time.
    adopt_until: Option<Instant>,
    /// Services were found in an unclear state at boot and no service
    /// action has run since: they may run, so a stop stops them.
    maybe_running: bool,
    /// The daemon was told to stop while serving: it stays until the peer
    /// takes the service (or the stop timeout ends), so the peer can fetch
    /// the kept data from it first (`data.rs`).
    leave_wait: bool,
    /// The hand-off of new calls during the drain (`new_calls.rs`).
    handoff: new_calls::Handoff,
    /// This node won the split brain under way and said so (once).
    split_brain_won: bool,
}

impl Node {
    /// A node starting at `now` from the facts it persisted last time
    /// (`Persisted::default()` on first start, or when they were lost), with
    /// `boot_id` a random number drawn for this start (the runtime's
    /// getrandom; the simulator's seeded generator). Nothing persisted is
    /// needed for the peer to accept the node again.
    pub fn new(settings: Settings, persisted: Persisted, boot_id: u64, now: Instant) -> Node {
        Node::boot(settings, persisted, ServicesAtBoot::Stopped, boot_id, now)
    }

    /// [`Node::new`] with what the runtime saw of the services before the
    /// start: the node adopts services left running, or stops them (see
    /// `lifecycle.rs` for the rule).
    pub fn boot(
        settings: Settings,
        persisted: Persisted,
        services: ServicesAtBoot,
        boot_id: u64,
        now: Instant,
    ) -> Node {
        let peer = Peer::new(boot_id);
        let mut node = Node {
            now,
            started_at: now,
            status: Status::Inactive,
            reason: "node started".into(),
            epoch: persisted.epoch,
            starts: persisted.starts + 1,
            boot: boot_id,
            seq: 0,
            admin: persisted.admin,
            fault: None,
            forced: false,
            pbx: PbxHealth::Unknown,
            pbx_down_since: None,
            arbiter_ok: false,
            arbiter_warned: false,
            peer,
            next_heartbeat: now,
            outgoing: Frame {
                node_type: settings.node_type,
                mode: settings.mode,
                status: Status::Inactive,
                pbx: PbxHealth::Unknown,
                flags: Flags(0),
                boot: 0,
                seq: 0,
                epoch: 0,
                replication: 0,
                challenge: 0,
                echo: 0,
                calls: None,
                name: settings.name.clone(),
            },
            service_op: None,
            stop_after_start: None,
            failed_starts: 0,
            retry_at: None,
            drain: None,
            failback_now: false,
            want_active: false,
            failback_wait: None,
            failback_wait_kind: None,
            data: data::DataFetch::Idle,
            data_id: None,
            replication: 0,
            calls: None,
            next_id: 0,
            persist_ids: Vec::new(),
            count_ids: Vec::new(),
            out: VecDeque::new(),
            rejected: [0; Reject::ALL.len()],
            switch: Default::default(),
            guard: Default::default(),
            serving: persisted.serving,
            leaving: None,
            left: false,
            adopt_until: None,
            maybe_running: false,
            leave_wait: false,
            handoff: Default::default(),
            split_brain_won: false,
            s: settings,
        };
        // Automatic mode keeps only the admin's Stop; a Start there means
        // "let the heartbeat decide", which is the default.
        if node.s.mode == Mode::Automatic && node.admin == Some(AdminChoice::Start) {
            node.admin = None;
        }
        node.persist();
        let held = match node.admin {
            Some(AdminChoice::Start) => " (an admin had started services)",
            Some(AdminChoice::Stop) => " (an admin had stopped services)",
            Some(AdminChoice::SwitchedAway) => " (switched over to the peer by an admin)",
            None => "",
        };
        node.event(
            EventKind::Booted {
                node_type: node.s.node_type,
                mode: node.s.mode,
                epoch: node.epoch,
                starts: node.starts,
                boot_id: node.boot,
            },
            format!("restored from persisted facts{held}"),
        );
        node.reconcile_at_boot(services);
        node.decide();
        node
    }

    /// Feed one input. An error means the input was dropped or refused; the
    /// node carries on and its state is as before.
    pub fn handle_input(&mut self, input: Input<'_>) -> Result<(), InputError> {
        let now = input.time().max(self.now);
        self.now = now;
        let result = match input {
            Input::Datagram(_, _from, bytes) => self.handle_datagram(bytes),
            Input::Timeout(_) => Ok(()),
            Input::Command(_, cmd) => self.handle_command(cmd),
            Input::ActionDone(_, id, result) => self.handle_action_done(id, result),
            Input::PbxHealth(_, h) => {
                self.handle_pbx_health(h);
                Ok(())
            }
            Input::Arbiter(_, ok) => {
                self.arbiter_ok = ok;
                if ok {
                    self.arbiter_warned = false;
                }
                Ok(())
            }
            Input::Replication(_, generation) => {
                self.replication = generation;
                Ok(())
            }
            Input::Shutdown(_) => {
                self.handle_shutdown();
                Ok(())
            }
        };
        self.decide();
        result
    }

    /// The next thing to do. Ends with [`Output::Timeout`] when nothing is queued.
    pub fn poll_output(&mut self) -> Output {
        self.out
            .pop_front()
            .unwrap_or_else(|| Output::Timeout(self.next_deadline()))
    }

    /// The status the peer and the followers see.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The XiVO "active" flag.
    pub fn is_active(&self) -> bool {
        self.status.is_active()
    }

    /// The epoch this node holds.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The facts the node means to keep across restarts now; equal to what
    /// its last completed [`ActionKind::Persist`] wrote once that is done
    /// (the simulator checks it after every step).
    pub fn facts(&self) -> Persisted {
        Persisted {
            epoch: self.epoch,
            starts: self.starts,
            admin: self.admin,
            serving: self.serving,
        }
    }

    /// The settings the node runs with.
    pub fn settings(&self) -> &Settings {
        &self.s
    }

    /// Whether the node is faulted or held inactive (it tells its peer to serve).
    pub fn is_yielding(&self) -> bool {
        // A switched-away Main yields so that its Standby takes the service;
        // once the Standby serves, yielding would stop it from handing over
        // when its own PBX fails (a yielding peer is not ready), leaving no
        // one to serve. The hold itself (no failback) is the Main's own rule.
        // Nor while adopting after a restart: the services run here, and a
        // Standby would start on "main yields" beside them.
        let switched_away = self.admin == Some(AdminChoice::SwitchedAway)
            && self.adopt_until.is_none()
            && !self
                .peer_frame()
                .is_some_and(|f| f.status == Status::Active);
        self.fault.is_some()
            || self.admin == Some(AdminChoice::Stop)
            || switched_away
            || self.leaving.is_some()
    }

    /// A picture of the node for the API and the dashboard.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let peer = self.s.peer_name.as_ref().map(|name| {
            let f = self.peer.frame();
            PeerSnapshot {
                name: name.clone(),
                heard: self.peer_alive(),
                last_heard_ago: self
                    .peer
                    .last_heard()
                    .map(|t| now.saturating_duration_since(t)),
                status: f.map(|f| f.status),
                pbx: f.map(|f| f.pbx),
                epoch: f.map(|f| f.epoch),
                yielding: f.is_some_and(|f| f.flags.has(Flags::YIELDING)),
                replication: f.map(|f| f.replication),
            }
        });
        Snapshot {
            name: self.s.name.clone(),
            node_type: self.s.node_type,
            mode: self.s.mode,
            status: self.status,
            active: self.status.is_active(),
            takes_new_calls: self.takes_new_calls(),
            epoch: self.epoch,
            pbx: self.pbx,
            admin: self.admin,
            faulted: self.fault.is_some(),
            arbiter_ok: self.arbiter_ok,
            reason: self.reason.clone(),
            failback_wait: self.failback_wait.clone(),
            failback_due_in: match (self.s.failback, self.failback_wait_kind) {
                (FailbackPolicy::Stable(d), Some(FailbackWait::Stable(_))) => {
                    Some((self.stable_since() + d).saturating_duration_since(now))
                }
                _ => None,
            },
            want_active: self.want_active,
            calls: self.calls,
            peer,
            switchover: self.switchover_text(),
            guard: self.guard_text(),
            rejected: Reject::ALL
                .iter()
                .map(|r| (r.label(), self.rejected[r.index()]))
                .collect(),
        }
    }

    fn handle_datagram(&mut self, bytes: &[u8]) -> Result<(), InputError> {
        if self.s.node_type == NodeType::Disabled {
            return self.guard_datagram(bytes);
        }
        let frame = heartbeat::decode(bytes, &self.s.key).map_err(|r| self.reject(r))?;
        if frame.name == self.s.name {
            return Err(self.reject(Reject::FromSelf));
        }
        if self.s.peer_name.as_deref() != Some(frame.name.as_str()) {
            return Err(self.reject(Reject::UnknownSender));
        }
        self.peer
            .accept(self.now, frame)
            .map_err(|r| self.reject(r))?;
        Ok(())
    }

    fn reject(&mut self, r: Reject) -> InputError {
        let n = &mut self.rejected[r.index()];
        *n += 1;
        let count = *n;
        // 1, 10, 100, …: enough to see it in the log without a flood. A
        // restart of either node costs a frame or two of handshake: only a
        // lasting run of unconfirmed frames is worth a line.
        if (r != Reject::Unconfirmed || count >= 10)
            && count
                .to_string()
                .trim_start_matches('1')
                .bytes()
                .all(|b| b == b'0')
        {
            self.event(EventKind::FrameRejected { reject: r, count }, String::new());
        }
        InputError::Rejected(r)
    }

    fn handle_pbx_health(&mut self, h: PbxHealth) {
        self.pbx = h;
        match h {
            PbxHealth::Down if self.status.is_active() => {
                self.pbx_down_since.get_or_insert(self.now);
            }
            _ => self.pbx_down_since = None,
        }
    }

    /// Apply the rules to the current facts. Called after every input.
    fn decide(&mut self) {
        let now = self.now;
        self.update_peer_liveness();
        if let Some(f) = &self.fault {
            if now >= f.until {
                self.fault = None;
                self.event(EventKind::FaultCleared, "fault hold elapsed".into());
            }
        }
        if self.leaving.is_some() {
            if !self.resolve_split_brain() {
                self.decide_leaving();
            }
        } else if self.adopt_until.is_some() {
            self.decide_adoption();
        } else {
            self.switchover_tick();
            self.decide_by_mode();
        }
        self.update_failback_request();
        self.update_new_calls();
        self.retry_pending_stop();
        if self.s.node_type != NodeType::Disabled && now >= self.next_heartbeat {
            self.send_heartbeat();
        }
    }

    fn decide_by_mode(&mut self) {
        match (self.s.node_type, self.s.mode) {
            (NodeType::Disabled, _) => self.decide_disabled(),
            (_, Mode::Manual) => {
                let want = self.admin == Some(AdminChoice::Start);
                self.decide_wanted(want, "an admin started services (manual mode)");
            }
            (_, Mode::Automatic) => self.decide_automatic(),
        }
    }

    /// Manual and disabled nodes: run services exactly when wanted.
    fn decide_wanted(&mut self, want: bool, why: &str) {
        if want
            && self.status == Status::Inactive
            && self.service_op.is_none()
            && self.fault.is_none()
            && self.retry_at.is_none_or(|t| self.now >= t)
        {
            let why = if self.forced {
                format!("{why}, forced")
            } else {
                why.to_string()
            };
            self.begin_start(why);
        } else if !want && self.status.claims() {
            self.begin_stop("an admin stopped services".into());
        }
    }

    fn decide_automatic(&mut self) {
        if self.resolve_split_brain() {
            return;
        }
        match self.status {
            Status::Inactive => {
                if self.service_op.is_none() {
                    if let Some(why) = self.may_start() {
                        self.begin_start(why);
                    }
                }
            }
            Status::Active => {
                if self.resume_tick() {
                    return;
                }
                if let Some(why) = self.should_release() {
                    self.enter_fault(why.clone());
                    self.begin_stop(why);
                } else if let Some(why) = self.handover_request() {
                    self.begin_drain(why);
                } else if let Some(why) = self.handover_asked() {
                    self.begin_handover(why);
                }
            }
            Status::Draining if self.handing_over() => self.continue_handover(),
            Status::Draining => self.continue_drain(),
            Status::Starting | Status::Stopping => {}
        }
    }

    fn action(&mut self, kind: ActionKind) -> ActionId {
        if matches!(kind, ActionKind::StartServices | ActionKind::StopServices) {
            self.maybe_running = false;
        }
        self.next_id += 1;
        let id = ActionId(self.next_id);
        self.out.push_back(Output::Action(Action { id, kind }));
        id
    }

    fn persist(&mut self) {
        let facts = self.facts();
        let id = self.action(ActionKind::Persist(facts));
        self.persist_ids.push(id);
    }

    fn event(&mut self, kind: EventKind, reason: String) {
        self.out.push_back(Output::Event(Event {
            at: self.now,
            kind,
            reason,
        }));
    }
}

#[cfg(test)]
mod tests;
