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

mod data;
mod event;
mod guard;
mod io;
mod lifecycle;
mod new_calls;
mod peer;
mod push;
mod switchover;

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
use peer::Peer;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A service action in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServiceOp {
    Start,
    Stop,
}

#[derive(Debug, Clone)]
struct Fault {
    until: Instant,
}

/// Why the Main waits before asking for the service back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailbackWait {
    Manual,
    Stable(Duration),
    /// The `keep_on_failback` copy runs (up to this long): `data.rs`.
    Data(Duration),
    /// It failed and `on_data_failure = "hold"`.
    DataHeld,
}

impl FailbackWait {
    /// Constant while waiting, so it is logged once; the snapshot gives the
    /// time left.
    fn text(self, node: &Node) -> String {
        match self {
            FailbackWait::Data(d) => format!(
                "copying the keep_on_failback paths back from standby {} before asking for the service (up to {})",
                node.peer_label(),
                human(d)
            ),
            FailbackWait::DataHeld => node.data_held_text(),
            FailbackWait::Manual => {
                "failback policy is manual: waiting for an admin (resilience failback)".into()
            }
            FailbackWait::Stable(d) => format!(
                "waiting for the main to hear the standby without a break for {} (failback policy: stable)",
                human(d)
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct Drain {
    deadline: Instant,
    next_poll: Instant,
    query: Option<ActionId>,
    /// The receiver's boot when it last was ready (`switchover.rs`:
    /// a receiver's restart does not cancel the drain).
    peer_boot: Option<u64>,
    /// Since when a restarted receiver has not been ready again.
    grace: Option<Instant>,
}

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

    // ---- inputs -------------------------------------------------------

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

    fn handle_action_done(
        &mut self,
        id: ActionId,
        result: Result<ActionOutcome, ActionError>,
    ) -> Result<(), InputError> {
        if self.data_done(id, &result) {
            return Ok(());
        }
        if let Some(i) = self.persist_ids.iter().position(|&p| p == id) {
            self.persist_ids.swap_remove(i);
            if let Err(e) = result {
                self.event(
                    EventKind::ActionFailed,
                    format!("persisting state failed: {e}"),
                );
            }
            return Ok(());
        }
        if let Some(i) = self.count_ids.iter().position(|&p| p == id) {
            self.count_ids.swap_remove(i);
            if let Some(d) = self.drain.as_mut().filter(|d| d.query == Some(id)) {
                d.query = None;
            }
            match result {
                Ok(ActionOutcome::ActiveCalls(n)) => self.calls = Some(n),
                Ok(ActionOutcome::Done) => {}
                Err(e) => self.event(
                    EventKind::ActionFailed,
                    format!("counting active calls failed: {e}"),
                ),
            }
            return Ok(());
        }
        let Some((op_id, op)) = self.service_op else {
            return Err(InputError::UnknownAction(id));
        };
        if op_id != id {
            return Err(InputError::UnknownAction(id));
        }
        self.service_op = None;
        match (op, result) {
            (ServiceOp::Start, Ok(_)) => {
                self.failed_starts = 0;
                if let Some(reason) = self.stop_after_start.take() {
                    self.begin_stop(reason);
                } else {
                    let why = format!("services started ({})", self.reason);
                    self.set_status(Status::Active, why);
                }
            }
            (ServiceOp::Start, Err(e)) => {
                self.failed_starts += 1;
                let of = self.s.start_attempts;
                self.event(
                    EventKind::ServiceStartFailed {
                        attempt: self.failed_starts,
                        of,
                    },
                    e.to_string(),
                );
                let aborted = self.stop_after_start.take().is_some();
                self.set_serving(false);
                self.set_status(Status::Inactive, format!("services failed to start: {e}"));
                if aborted {
                    // It was to be stopped anyway.
                } else {
                    // Even a faulted node retries, slowly, when no one else
                    // serves (its fault only tells a healthy peer to take over).
                    self.retry_at = Some(self.now + self.s.retry_delay);
                    if self.failed_starts >= of {
                        self.failed_starts = 0;
                        self.enter_fault(format!(
                            "services failed to start {of} times; last error: {e}"
                        ));
                    }
                }
            }
            (ServiceOp::Stop, Ok(_)) => {
                self.calls = None;
                self.set_serving(false);
                let why = format!("services stopped ({})", self.reason);
                self.set_status(Status::Inactive, why);
            }
            (ServiceOp::Stop, Err(e)) => {
                // Services may still run: stay Stopping (the peer will not
                // start) and try again.
                self.event(
                    EventKind::ServiceStopFailed,
                    format!("{e}; retrying in {}", human(self.s.retry_delay)),
                );
                self.retry_at = Some(self.now + self.s.retry_delay);
            }
        }
        Ok(())
    }

    fn handle_command(&mut self, cmd: Command) -> Result<(), InputError> {
        let refuse = |node: &mut Node, reason: String| {
            node.event(EventKind::CommandRefused, format!("{cmd}: {reason}"));
            Err(InputError::Refused {
                command: cmd,
                reason,
            })
        };
        if self.s.node_type == NodeType::Disabled {
            return refuse(self, "high availability is disabled on this node".into());
        }
        let peer_name = self.s.peer_name.clone().unwrap_or_default();
        let peer_claims = self
            .peer_frame()
            .filter(|f| f.status.occupies())
            .map(|f| f.status);
        let accepted = match (self.s.mode, cmd) {
            (Mode::Manual, Command::StartServices { force }) => {
                if self.status.claims() {
                    "services are already running".to_string()
                } else {
                    if let Some(peer_status) = peer_claims {
                        if !force {
                            let ago = self
                                .peer
                                .last_heard()
                                .map(|t| self.now - t)
                                .unwrap_or_default();
                            return refuse(
                                self,
                                format!(
                                    "peer {peer_name} is {} (heard {:.1}s ago); stop its services first, or force",
                                    peer_status,
                                    ago.as_secs_f64()
                                ),
                            );
                        }
                        self.forced = true;
                    }
                    self.admin = Some(AdminChoice::Start);
                    self.clear_fault();
                    self.persist();
                    if self.forced {
                        format!("starting services although peer {peer_name} is active (forced)")
                    } else {
                        "starting services".to_string()
                    }
                }
            }
            (_, Command::StopServices) => {
                self.admin = Some(AdminChoice::Stop);
                self.persist();
                if self.status.occupies() || self.retry_at.is_some() {
                    self.retry_at = None;
                    self.begin_stop(format!("an admin stopped services ({} mode)", self.s.mode));
                }
                match self.s.mode {
                    Mode::Manual => "services stopped".to_string(),
                    Mode::Automatic => format!(
                        "services stopped and held: this node yields to {peer_name} until services are started again"
                    ),
                }
            }
            (Mode::Manual, Command::Failback) => {
                return refuse(
                    self,
                    "manual mode: stop services on the standby, then start them on the main".into(),
                )
            }
            (Mode::Automatic, Command::StartServices { force }) => {
                if force && peer_claims.is_some() {
                    return refuse(
                        self,
                        format!(
                            "automatic mode: the heartbeat decides and will not run both nodes; stop services on {peer_name} (it then yields), use failback, or switch to manual mode"
                        ),
                    );
                }
                let was_held = self.admin == Some(AdminChoice::Stop);
                self.admin = None;
                self.clear_fault();
                self.persist();
                match (was_held, peer_claims) {
                    (_, Some(peer_status)) => format!(
                        "hold released; peer {peer_name} is {peer_status}, this node stays ready to take over"
                    ),
                    (true, None) => "hold released; the heartbeat decides".to_string(),
                    (false, None) => "no hold to release; the heartbeat decides".to_string(),
                }
            }
            (_, Command::Switchover) => match self.switchover_command() {
                Ok(text) => text,
                Err(reason) => return refuse(self, reason),
            },
            (Mode::Automatic, Command::Failback) => match self.failback_refusal() {
                Some(reason) => return refuse(self, reason),
                None => {
                    if self.admin == Some(AdminChoice::SwitchedAway) {
                        self.admin = None;
                        self.persist();
                    }
                    self.failback_now = true;
                    self.data_retry_now();
                    self.clear_fault();
                    match self.s.node_type {
                        NodeType::Main => format!("asking {peer_name} to hand over now"),
                        _ => format!("handing the service back to {peer_name}"),
                    }
                }
            },
        };
        self.event(EventKind::CommandAccepted, format!("{cmd}: {accepted}"));
        Ok(())
    }

    fn failback_refusal(&self) -> Option<String> {
        let peer_name = self.s.peer_name.clone().unwrap_or_default();
        let peer = self.peer_frame();
        match self.s.node_type {
            NodeType::Main => {
                if self.status.claims() {
                    Some("this node is already active".into())
                } else if self.admin == Some(AdminChoice::Stop) {
                    Some("an admin stopped services on this node; start them first".into())
                } else if !peer.is_some_and(|f| f.status.claims()) {
                    Some(format!(
                        "standby {peer_name} is not heard active; the main starts on its own"
                    ))
                } else {
                    None
                }
            }
            _ => {
                if !self.status.is_active() {
                    Some("this node is not active".into())
                } else {
                    match peer {
                        None => Some(format!(
                            "main {peer_name} is not heard: handing over now would leave no active node"
                        )),
                        Some(f) if f.flags.has(Flags::YIELDING) => Some(format!(
                            "main {peer_name} yields (stopped by an admin or faulted)"
                        )),
                        Some(_) => None,
                    }
                }
            }
        }
    }

    // ---- decisions ----------------------------------------------------

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

    /// Split brain: both claim the service and hear each other; the loser
    /// steps down. Applies to a leaving (draining) node too: its drain may
    /// last `stop_timeout`, two PBXs must not serve meanwhile. True when
    /// this node steps down.
    pub(super) fn resolve_split_brain(&mut self) -> bool {
        if self.s.mode != Mode::Automatic || self.s.node_type == NodeType::Disabled {
            return false;
        }
        if self.status.claims() {
            if let Some(f) = self
                .peer_frame()
                .filter(|f| f.status.claims() && f.mode == Mode::Automatic)
                .filter(|f| !self.planned_overlap(f))
            {
                let (own, theirs) = (self.epoch, f.epoch);
                let already = self.status == Status::Starting && self.stop_after_start.is_some();
                if !already && !self.wins_against(f) {
                    let peer = f.name.clone();
                    self.event(
                        EventKind::SplitBrain {
                            own_epoch: own,
                            peer_epoch: theirs,
                            winner: false,
                        },
                        format!("{peer} keeps the service ({})", self.split_brain_rule()),
                    );
                    self.begin_stop(format!("split brain resolved in favour of {peer}"));
                    return true;
                }
            }
        }
        false
    }

    fn split_brain_rule(&self) -> &'static str {
        match self.s.split_brain {
            SplitBrainPolicy::Main => "split_brain = main: the main wins",
            SplitBrainPolicy::Latest => "split_brain = latest: the higher epoch wins",
        }
    }

    /// Whether this node keeps the service against a claiming peer. Both
    /// nodes evaluate the same total order, so exactly one wins.
    fn wins_against(&self, f: &Frame) -> bool {
        let me_main = self.s.node_type == NodeType::Main;
        let peer_main = f.node_type == NodeType::Main;
        let by_type = me_main != peer_main && self.s.split_brain == SplitBrainPolicy::Main;
        if by_type {
            return me_main;
        }
        // Higher epoch, then the Main, then the smaller name.
        (self.epoch, me_main, std::cmp::Reverse(&self.s.name))
            > (f.epoch, peer_main, std::cmp::Reverse(&f.name))
    }

    /// Why this node may start now (automatic mode), if it may.
    fn may_start(&mut self) -> Option<String> {
        if self.admin == Some(AdminChoice::Stop) || self.retry_at.is_some_and(|t| self.now < t) {
            return None;
        }
        self.retry_at = None;
        let silent_for = self.now
            - self
                .peer
                .last_heard()
                .unwrap_or(self.started_at)
                .max(self.started_at);
        match (self.s.node_type, self.peer_frame()) {
            (NodeType::Main, Some(f)) => {
                // Switched away, the Main leaves the service to a Standby
                // that does not yield (it takes it on the "main yields" rule).
                // A Standby adopting the services its restarted daemon left
                // running reports Inactive but serves: never start on that.
                let adopting = f.flags.has(Flags::ADOPTING);
                let ready = f.status == Status::Inactive
                    && !adopting
                    && f.flags.has(Flags::HEARS_PEER)
                    && ((self.fault.is_none() && !self.switched_away())
                        || f.flags.has(Flags::YIELDING));
                // A Standby that cannot hear us (one-way cut) would take over
                // by itself if it could; when it has not, someone must serve.
                let deaf_for = self.peer.deaf_since().map(|t| self.now - t);
                let deaf = f.status == Status::Inactive
                    && !adopting
                    && deaf_for.is_some_and(|d| d >= self.s.failover_after + self.s.startup_wait);
                if let Some(why) = self.may_start_alongside(f) {
                    Some(why)
                } else if ready && f.flags.has(Flags::LEAVING) {
                    // Not held for the kept data: the data gate holds the
                    // request, which the leaving Standby waits for while it
                    // serves (`lifecycle.rs`); once it has stopped, someone
                    // must serve.
                    Some(format!(
                        "standby {} is leaving (its daemon is stopping) and has stopped its services",
                        self.peer_label()
                    ))
                } else if ready {
                    Some(format!("standby {} is inactive", self.peer_label()))
                } else if deaf {
                    Some(format!(
                        "standby {} is inactive and has not heard this node for {:.1}s",
                        self.peer_label(),
                        deaf_for.unwrap_or_default().as_secs_f64()
                    ))
                } else {
                    None
                }
            }
            (NodeType::Main, None) => (silent_for >= self.s.startup_wait).then(|| {
                format!(
                    "standby {} not heard for {:.1}s",
                    self.peer_label(),
                    silent_for.as_secs_f64()
                )
            }),
            (_, Some(f)) => {
                // A Main adopting the services its restarted daemon left
                // running reports Inactive but serves: never start on that.
                let yields = f.status == Status::Inactive
                    && !f.flags.has(Flags::ADOPTING)
                    && f.flags.has(Flags::YIELDING)
                    && f.flags.has(Flags::HEARS_PEER)
                    && self.fault.is_none();
                yields.then(|| {
                    if f.flags.has(Flags::LEAVING) {
                        format!(
                            "main {} is leaving (its daemon is stopping) and has stopped its services",
                            self.peer_label()
                        )
                    } else {
                        format!(
                            "main {} yields (stopped or switched over by an admin, or faulted)",
                            self.peer_label()
                        )
                    }
                })
            }
            (_, None) => {
                if silent_for < self.s.failover_after {
                    return None;
                }
                if self.s.arbiters && !self.arbiter_ok {
                    if !self.arbiter_warned {
                        self.arbiter_warned = true;
                        self.event(
                            EventKind::FailoverBlocked,
                            format!(
                                "main {} silent for {:.1}s but no arbiter answers: this node may be the one cut off", self.peer_label(),
                                silent_for.as_secs_f64()
                            ),
                        );
                    }
                    return None;
                }
                Some(format!(
                    "main {} silent for {:.1}s",
                    self.peer_label(),
                    silent_for.as_secs_f64()
                ))
            }
        }
    }

    /// An Active node whose PBX is down hands over to a ready peer.
    fn should_release(&self) -> Option<String> {
        let since = self.pbx_down_since?;
        if self.now - since < self.s.failover_after {
            return None;
        }
        let f = self.peer_frame()?;
        // A Standby draining beside this Main (`failback.new_calls =
        // "main"`) still runs: it takes the new calls back at once.
        let ready = (f.status == Status::Inactive || self.planned_overlap(f))
            && f.flags.has(Flags::HEARS_PEER)
            && !f.flags.has(Flags::YIELDING);
        ready.then(|| {
            format!(
                "local PBX down for {:.1}s; handing over to {}",
                (self.now - since).as_secs_f64(),
                f.name
            )
        })
    }

    /// Why the Standby should hand the service back now, if it should.
    fn handover_request(&self) -> Option<String> {
        if self.s.node_type != NodeType::Standby {
            return None;
        }
        let f = self.peer_frame()?;
        if f.node_type != NodeType::Main
            || f.status != Status::Inactive
            || f.flags.has(Flags::YIELDING)
            || !f.flags.has(Flags::HEARS_PEER)
        {
            return None;
        }
        if f.flags.has(Flags::WANT_ACTIVE) {
            Some(format!("main {} asks for the service back", f.name))
        } else if self.failback_now {
            Some("an admin asked for failback".into())
        } else {
            None
        }
    }

    fn begin_drain(&mut self, why: String) {
        let Some(policy) = self.s.drain else {
            self.begin_stop(format!("{why}; no drain configured"));
            return;
        };
        let timeout = match self.leaving {
            Some(until) => policy
                .timeout
                .min(until.saturating_duration_since(self.now)),
            None => policy.timeout,
        };
        self.drain = Some(Drain {
            deadline: self.now + timeout,
            next_poll: self.now,
            query: None,
            peer_boot: self.peer_frame().map(|f| f.boot),
            grace: None,
        });
        self.calls = None;
        self.event(
            EventKind::DrainStarted,
            format!(
                "{why}; waiting up to {} for active calls to end",
                human(timeout)
            ),
        );
        self.set_status(Status::Draining, why);
        self.continue_drain();
    }

    fn continue_drain(&mut self) {
        let asked = self.leaving.is_some()
            || self.handover_request().is_some()
            || self.main_runs_alongside();
        if asked {
            self.receiver_ready();
        } else if self.receiver_restarting() {
            return;
        } else {
            self.drain = None;
            self.event(
                EventKind::DrainCancelled,
                "the main no longer asks for the service (silent, yielding or withdrawn)".into(),
            );
            self.set_status(Status::Active, "handover cancelled".into());
            return;
        }
        let Some(d) = self.drain.as_ref() else { return };
        if self.calls == Some(0) {
            self.begin_stop("handover: no active calls left".into());
        } else if self.now >= d.deadline {
            let calls = self
                .calls
                .map_or("an unknown number of".into(), |n| n.to_string());
            self.begin_stop(format!(
                "handover: drain timed out with {calls} active calls"
            ));
        } else if d.query.is_none() && self.now >= d.next_poll {
            let poll = self.s.drain.map_or(Duration::from_secs(1), |p| p.poll);
            let id = self.action(ActionKind::CountActiveCalls);
            self.count_ids.push(id);
            if let Some(d) = self.drain.as_mut() {
                d.query = Some(id);
                d.next_poll = self.now + poll;
            }
        }
    }

    /// The Main's failback request flag, per policy.
    fn update_failback_request(&mut self) {
        let (mut want, mut wait) = self.failback_decision();
        if want {
            (want, wait) = self.data_gate();
        } else if wait.is_none() {
            // No failback under way (or it is done).
            self.data_reset();
        }
        if want != self.want_active {
            self.want_active = want;
            if want {
                let why = self.failback_reason();
                self.event(EventKind::FailbackRequested, why);
                self.send_heartbeat();
            }
        }
        // The wait's text depends only on its kind (and the policy, which
        // never changes for a node): compare kinds, format only on a change.
        if wait != self.failback_wait_kind {
            self.failback_wait_kind = wait;
            let wait = wait.map(|w| w.text(self));
            if let Some(w) = &wait {
                self.event(EventKind::FailbackPending, w.clone());
            }
            self.failback_wait = wait;
        }
        if self.status == Status::Active
            || (self.s.node_type == NodeType::Standby && self.status == Status::Inactive)
        {
            self.failback_now = false;
        }
    }

    fn failback_reason(&self) -> String {
        if self.peer_leaving() {
            return format!(
                "standby {} is leaving (its daemon is stopping)",
                self.peer_label()
            );
        }
        if self.failback_now {
            return "an admin asked for failback".into();
        }
        match self.s.failback {
            FailbackPolicy::Immediate => "failback policy: immediate".into(),
            FailbackPolicy::Stable(d) => format!("failback policy: main stable for {}", human(d)),
            FailbackPolicy::Manual => "an admin asked for failback".into(),
        }
    }

    /// (ask now, why we wait).
    fn failback_decision(&self) -> (bool, Option<FailbackWait>) {
        let peer_leaving = self.peer_leaving();
        let eligible = self.s.node_type == NodeType::Main
            && self.s.mode == Mode::Automatic
            && self.status == Status::Inactive
            && self.leaving.is_none()
            && self.adopt_until.is_none()
            && (peer_leaving
                || (self.admin.is_none_or(|a| a == AdminChoice::Start)
                    && self.fault.is_none()
                    && self.peer_frame().is_some_and(|f| f.status.claims())));
        if !eligible {
            return (false, None);
        }
        // A Standby whose daemon stops hands the service back whatever
        // the policy: its kept data comes home first, as at failback.
        if self.failback_now || peer_leaving {
            return (true, None);
        }
        match self.s.failback {
            FailbackPolicy::Immediate => (true, None),
            FailbackPolicy::Manual => (false, Some(FailbackWait::Manual)),
            FailbackPolicy::Stable(d) => {
                if self.now - self.stable_since() >= d {
                    (true, None)
                } else {
                    (false, Some(FailbackWait::Stable(d)))
                }
            }
        }
    }

    /// The Standby's daemon is stopping (`LEAVING`): it hands the service
    /// to this Main, which applies its data gate first (`data.rs`). Not
    /// while this Main is held by an admin's stop.
    fn peer_leaving(&self) -> bool {
        self.s.node_type == NodeType::Main
            && self.admin != Some(AdminChoice::Stop)
            && self
                .peer_frame()
                .is_some_and(|f| f.node_type == NodeType::Standby && f.flags.has(Flags::LEAVING))
    }

    fn stable_since(&self) -> Instant {
        self.peer
            .heard_since()
            .unwrap_or(self.now)
            .max(self.started_at)
    }

    fn retry_pending_stop(&mut self) {
        if self.status == Status::Stopping
            && self.service_op.is_none()
            && self.retry_at.is_some_and(|t| self.now >= t)
        {
            self.retry_at = None;
            let id = self.action(ActionKind::StopServices);
            self.service_op = Some((id, ServiceOp::Stop));
        }
    }

    // ---- transitions --------------------------------------------------

    fn begin_start(&mut self, why: String) {
        let peer_epoch = self.peer.frame().map_or(0, |f| f.epoch);
        self.epoch = self.epoch.max(peer_epoch) + 1;
        self.retry_at = None;
        // A switched-away Main that starts (its Standby failed or yields)
        // serves again: the hold is over.
        if self.switched_away() {
            self.admin = None;
        }
        self.end_handover();
        // Start first, then record the new epoch, so a failover does not
        // wait for an fsync (0.2 ms usually, 20-45 ms when the disk is busy:
        // bench/failover). Losing the record is harmless: the epoch only
        // counts while this node claims the service, a node that dies
        // before the record lands restarts Inactive (the runtime stops
        // whatever may still run), and its next start takes an epoch above
        // its peer's. A failed write is an event.
        let id = self.action(ActionKind::StartServices);
        self.serving = true;
        self.persist();
        self.service_op = Some((id, ServiceOp::Start));
        self.set_status(Status::Starting, why);
    }

    fn begin_stop(&mut self, why: String) {
        self.drain = None;
        self.end_handover();
        match self.status {
            // A start in flight: stop once it reports (the runtime runs one
            // service action at a time).
            Status::Starting if self.service_op.is_some() => {
                self.stop_after_start = Some(why);
            }
            Status::Starting | Status::Active | Status::Draining => {
                let id = self.action(ActionKind::StopServices);
                self.service_op = Some((id, ServiceOp::Stop));
                self.set_status(Status::Stopping, why);
            }
            Status::Inactive => {
                self.retry_at = None;
            }
            Status::Stopping => {}
        }
    }

    fn enter_fault(&mut self, why: String) {
        let hold = self.s.fault_hold;
        self.fault = Some(Fault {
            until: self.now + hold,
        });
        self.event(EventKind::Faulted { until: hold }, why);
    }

    fn clear_fault(&mut self) {
        self.failed_starts = 0;
        self.retry_at = None;
        if self.fault.take().is_some() {
            self.event(EventKind::FaultCleared, "an admin cleared the fault".into());
        }
    }

    fn set_status(&mut self, to: Status, why: String) {
        let from = self.status;
        if from == to {
            return;
        }
        self.status = to;
        self.reason = why.clone();
        if !to.claims() {
            self.forced = false;
        }
        if !to.is_active() {
            self.pbx_down_since = None;
        } else if self.pbx == PbxHealth::Down {
            self.pbx_down_since.get_or_insert(self.now);
        }
        self.event(EventKind::StatusChanged { from, to }, why.clone());
        if from.is_active() != to.is_active() {
            self.event(
                EventKind::ActiveChanged {
                    from: from.is_active(),
                    to: to.is_active(),
                },
                why,
            );
        }
        // Tell the peer at once rather than at the next tick.
        self.send_heartbeat();
    }

    // ---- peer ---------------------------------------------------------

    /// The peer's configured name, for reasons.
    fn peer_label(&self) -> &str {
        self.s.peer_name.as_deref().unwrap_or_default()
    }

    fn peer_alive(&self) -> bool {
        self.peer
            .last_heard()
            .is_some_and(|t| self.now - t < self.s.failover_after)
    }

    /// The peer's last frame, if it is recent enough to act on.
    fn peer_frame(&self) -> Option<&Frame> {
        if self.peer_alive() {
            self.peer.frame()
        } else {
            None
        }
    }

    fn update_peer_liveness(&mut self) {
        let alive = self.peer_alive();
        if self.peer.reported_alive() == alive {
            return;
        }
        let name = self.s.peer_name.clone().unwrap_or_default();
        match (self.peer.reported_alive(), alive) {
            (false, true) => {
                self.peer.set_reported_alive(true, self.now);
                let status = self.peer.frame().map_or(Status::Inactive, |f| f.status);
                self.event(
                    EventKind::PeerHeard { status },
                    format!("{name} is {status}"),
                );
                if let Some(f) = self.peer.frame() {
                    if f.node_type == self.s.node_type || f.mode != self.s.mode {
                        let why = format!(
                            "{name} runs as {} in {} mode, this node as {} in {} mode",
                            f.node_type, f.mode, self.s.node_type, self.s.mode
                        );
                        self.event(EventKind::PeerMismatch, why);
                    }
                }
                // Let the peer know at once that we hear it.
                self.send_heartbeat();
            }
            (true, false) => {
                self.peer.set_reported_alive(false, self.now);
                let silent_for = self
                    .peer
                    .last_heard()
                    .map_or(Duration::ZERO, |t| self.now - t);
                self.event(
                    EventKind::PeerSilent { silent_for },
                    format!("{name} not heard"),
                );
            }
            _ => {}
        }
    }

    // ---- outputs ------------------------------------------------------

    fn send_heartbeat(&mut self) {
        if self.s.node_type == NodeType::Disabled {
            return;
        }
        self.next_heartbeat = self.now + self.s.interval;
        let mut flags = 0;
        if self.want_active || self.switch.asking() {
            flags |= Flags::WANT_ACTIVE;
        }
        if self.is_yielding() {
            flags |= Flags::YIELDING;
        }
        if self.peer_alive() {
            flags |= Flags::HEARS_PEER;
        }
        if self.forced {
            flags |= Flags::FORCED;
        }
        if self.leaving.is_some() {
            flags |= Flags::LEAVING;
        }
        if self.adopt_until.is_some() {
            flags |= Flags::ADOPTING;
        }
        flags |= self.new_calls_flags();
        self.seq += 1;
        let f = &mut self.outgoing;
        f.node_type = self.s.node_type;
        f.mode = self.s.mode;
        f.status = self.status;
        f.pbx = self.pbx;
        f.flags = Flags(flags);
        f.boot = self.boot;
        f.seq = self.seq;
        (f.challenge, f.echo) = self.peer.challenge_and_echo();
        f.epoch = self.epoch;
        f.replication = self.replication;
        f.calls = self.calls;
        let bytes = heartbeat::encode(f, &self.s.key);
        if let Some((&last, rest)) = self.s.peer_addrs.split_last() {
            for &to in rest {
                self.out.push_back(Output::Transmit(Transmit {
                    to,
                    bytes: bytes.clone(),
                }));
            }
            self.out
                .push_back(Output::Transmit(Transmit { to: last, bytes }));
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

    /// The earliest time at which a rule could change its answer.
    fn next_deadline(&self) -> Instant {
        let now = self.now;
        let last = self
            .peer
            .last_heard()
            .unwrap_or(self.started_at)
            .max(self.started_at);
        // Called after every input: no allocation.
        let stable = match self.s.failback {
            FailbackPolicy::Stable(d)
                if matches!(self.failback_wait_kind, Some(FailbackWait::Stable(_))) =>
            {
                Some(self.stable_since() + d)
            }
            _ => None,
        };
        [
            (self.s.node_type != NodeType::Disabled).then_some(self.next_heartbeat),
            Some(last + self.s.failover_after),
            Some(last + self.s.startup_wait),
            self.retry_at,
            self.peer
                .deaf_since()
                .map(|t| t + self.s.failover_after + self.s.startup_wait),
            self.fault.as_ref().map(|f| f.until),
            self.pbx_down_since.map(|t| t + self.s.failover_after),
            self.drain.as_ref().map(|d| d.deadline),
            self.drain.as_ref().map(|d| d.next_poll),
            self.drain
                .as_ref()
                .and_then(|d| d.grace)
                .map(|t| t + self.s.failover_after),
            self.leaving,
            self.adopt_until,
            stable,
            self.switchover_deadline(),
            self.guard_deadline(),
            self.data_deadline(),
        ]
        .into_iter()
        .flatten()
        .filter(|&t| t > now)
        .min()
        .unwrap_or(now + self.s.interval.max(Duration::from_millis(100)))
    }
}

#[cfg(test)]
mod tests;
