//! Deterministic simulator of a Main/Standby pair (raft-rs `harness/network.rs`
//! and str0m's `tests/common.rs` for the shape).
//!
//! Two [`Node`]s, links that can be cut one way or both, lossy, delayed and
//! duplicating (seeded), stand-in services with latency and injectable
//! failures, a PBX probe, an arbiter, crashes and reboots from the persisted
//! facts. Time is virtual: the harness jumps from one deadline to the next, so
//! a simulated hour takes milliseconds. After every step [`Cluster::step`]
//! checks the invariants and returns the first violation.

#![allow(dead_code)]

mod rules;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resilience_core::config::SplitBrainPolicy;
use resilience_core::heartbeat::{self, Flags, Frame};
use resilience_core::node::{AdminChoice, DataGate, DrainPolicy, FailbackPolicy, NewCallsPolicy};
use resilience_core::pbx_probe::PbxProbe;
use resilience_core::{
    Action, ActionId, ActionKind, ActionOutcome, ClusterKey, Command, Event, EventKind, Input,
    InputError, Mode, Node, NodeType, Output, PbxHealth, Persisted, ServicesAtBoot, Settings,
    Status, Wake,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const MAIN: usize = 0;
pub const STANDBY: usize = 1;

/// The timers a scenario runs with.
#[derive(Debug, Clone)]
pub struct Timers {
    pub interval: Duration,
    pub failover_after: Duration,
    pub startup_wait: Duration,
    pub failback: FailbackPolicy,
    pub split_brain: SplitBrainPolicy,
    pub drain: Option<DrainPolicy>,
    pub arbiters: bool,
    pub start_attempts: u32,
    pub retry_delay: Duration,
    pub fault_hold: Duration,
    pub mode: Mode,
    /// The Main copies its kept data home before failback (`data.rs`).
    pub failback_data: Option<DataGate>,
    /// Who takes new calls while the Standby drains (`new_calls.rs`).
    pub new_calls: NewCallsPolicy,
}

impl Default for Timers {
    /// The shipped defaults (config/node.rs), with a short stable time so
    /// scenarios see failback within minutes.
    fn default() -> Self {
        Timers {
            interval: Duration::from_millis(200),
            failover_after: Duration::from_secs(3),
            startup_wait: Duration::from_secs(3),
            failback: FailbackPolicy::Stable(Duration::from_secs(60)),
            split_brain: SplitBrainPolicy::Main,
            drain: Some(DrainPolicy {
                timeout: Duration::from_secs(30),
                poll: Duration::from_secs(1),
            }),
            arbiters: false,
            start_attempts: 3,
            retry_delay: Duration::from_secs(2),
            fault_hold: Duration::from_secs(60),
            mode: Mode::Automatic,
            failback_data: None,
            new_calls: NewCallsPolicy::Standby,
        }
    }
}

pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400 + i as u16))
}

pub const NAMES: [&str; 2] = ["pbx-main", "pbx-standby"];

pub fn settings(i: usize, t: &Timers) -> Settings {
    Settings {
        name: NAMES[i].into(),
        node_type: if i == MAIN {
            NodeType::Main
        } else {
            NodeType::Standby
        },
        mode: t.mode,
        peer_name: Some(NAMES[1 - i].into()),
        peer_addrs: vec![addr(1 - i)],
        interval: t.interval,
        failover_after: t.failover_after,
        startup_wait: t.startup_wait,
        failback: t.failback,
        split_brain: t.split_brain,
        drain: t.drain,
        arbiters: t.arbiters,
        start_attempts: t.start_attempts,
        retry_delay: t.retry_delay,
        fault_hold: t.fault_hold,
        failback_data: t.failback_data.filter(|_| i == MAIN),
        stop_timeout: Duration::from_secs(60),
        new_calls: t.new_calls,
        key: ClusterKey::new(b"simulated cluster key, 32 bytes!").expect("key"),
    }
}

/// One direction of the network between the nodes.
#[derive(Debug, Clone)]
pub struct Link {
    pub up: bool,
    /// Probability that a frame is lost.
    pub loss: f64,
    /// Probability that a delivered frame is delivered twice.
    pub dup: f64,
    pub delay_min: Duration,
    pub delay_max: Duration,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            up: true,
            loss: 0.0,
            dup: 0.0,
            delay_min: Duration::from_millis(1),
            delay_max: Duration::from_millis(5),
        }
    }
}

/// A host: the node (None while crashed), its disk and its services.
pub struct Host {
    pub settings: Settings,
    pub node: Option<Node>,
    /// What the node persisted; survives crashes (unless lost or rolled back).
    pub disk: Persisted,
    /// A backup of `disk` taken earlier, to restore from (rolled-back state).
    pub backup: Persisted,
    /// The random id of the current boot (a new one at every boot).
    pub boot_id: u64,
    /// Services possibly running: from the start order to the end of a stop.
    pub services: bool,
    pub start_latency: Duration,
    pub stop_latency: Duration,
    /// The next N starts fail.
    pub fail_starts: u32,
    /// The next N copies of the kept data fail; each takes this long.
    pub fail_fetches: u32,
    pub fetch_latency: Duration,
    /// The PBX answers its probe when running.
    pub pbx_ok: bool,
    /// A flapping probe: raw results debounced as the runtime does; the
    /// ideal probe (`pbx_ok` at once) when `None`.
    probe: Option<FlapProbe>,
    pub calls: u32,
    /// Whether calls end while the node drains.
    pub calls_end: bool,
    pub arbiter: bool,
    deadline: Option<Instant>,
    generation: u64,
    reported_pbx: Option<PbxHealth>,
    reported_arbiter: Option<bool>,
    pub booted_at: Instant,
    /// Successful activations (Active flag false -> true) since boot.
    pub activations: u32,
    /// Start decisions (status -> Starting) since boot.
    pub starts: u32,
    /// The last status seen by the checker, and since when.
    seen: Option<(Status, Instant)>,
    /// Service starts ordered (since the simulation began).
    pub service_starts: u32,
    /// Service stops ordered (since the simulation began).
    pub service_stops: u32,
    /// The next N stops fail (the services keep running).
    pub fail_stops: u32,
    /// The last stop failed: the services run against the node's will.
    stop_failed: bool,
    /// Booted with services running and no service action ordered since:
    /// the node is deciding whether to adopt them (it reports Inactive).
    left_at_boot: bool,
    /// Persist actions ordered and not completed.
    persists_in_flight: u32,
    /// What this node accepted from its peer since it booted: the last
    /// frame, when, and the start of the current unbroken run of hearing
    /// (a gap of `failover_after` breaks it, as the node's own rule).
    heard: Option<Heard>,
    /// When this node last stepped down in a split brain.
    split_step_down: Option<Instant>,
    /// When this node last decided to start (status -> Starting).
    starting_at: Option<Instant>,
    /// Services up: a start reported done (or left running), no stop done
    /// since. `services` is wider: from the start order on.
    up: bool,
    /// The node's epoch at the last check of this boot (never goes down).
    last_epoch: u64,
    /// The last frame this host sent, kept to be replayed later.
    pub last_sent: Vec<u8>,
}

/// The last frame a node accepted from its peer, as the checker saw it.
#[derive(Debug, Clone)]
pub struct Heard {
    pub frame: Frame,
    pub at: Instant,
    pub since: Instant,
}

impl Host {
    /// The last frame this node accepted from its peer since it booted.
    pub fn heard(&self) -> Option<&Heard> {
        self.heard.as_ref()
    }
    pub fn alive(&self) -> bool {
        self.node.is_some()
    }
    pub fn status(&self) -> Option<Status> {
        self.node.as_ref().map(|n| n.status())
    }
    pub fn is_active(&self) -> bool {
        self.node.as_ref().is_some_and(|n| n.is_active())
    }
    pub fn takes_new_calls(&self) -> bool {
        self.node.as_ref().is_some_and(|n| n.takes_new_calls())
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("node is up")
    }
}

#[derive(Debug)]
enum What {
    Packet {
        to: usize,
        bytes: Vec<u8>,
    },
    Done {
        host: usize,
        generation: u64,
        id: ActionId,
        kind: ActionKind,
    },
}

/// Which raw probe results a flapping probe loses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flap {
    /// Every `n`-th probe is lost (`n >= 2`): single misses only;
    /// `SingleMisses(2)` is up and down alternating.
    SingleMisses(u32),
    /// `down` probes lost in a row, then `up` answered, over and over.
    Bursts { down: u32, up: u32 },
}

impl Flap {
    /// Whether the `n`-th probe (from 1) is answered, the PBX being up.
    fn answers(self, n: u64) -> bool {
        match self {
            Flap::SingleMisses(every) => !n.is_multiple_of(u64::from(every.max(2))),
            Flap::Bursts { down, up } => n % u64::from((down + up).max(1)) >= u64::from(down),
        }
    }
}

/// A host's flapping probe: its pattern, its debounce (the core's, as the
/// runtime uses it) and what it saw.
#[derive(Debug)]
struct FlapProbe {
    flap: Flap,
    debounce: PbxProbe,
    next_at: Instant,
    n: u64,
    misses_in_a_row: u32,
    /// The longest run of misses since the flapping began.
    pub longest_misses: u32,
    /// Down reported to the node since the flapping began.
    pub downs: u32,
}

/// The rule the runtime's probe follows, restated for the checks (not
/// read from the core, so a changed debounce fails them): the PBX is down
/// after two missed probes in a row.
pub const PROBE_MISSES_FOR_DOWN: u32 = 2;

/// The runtime's probe period (`pbx.interval`'s default).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Pending {
    at: Instant,
    seq: u64,
    what: What,
}
impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// What the invariant checker has seen.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Standby start decisions while the Main was reachable and not yielding.
    pub false_failovers: u32,
    /// Standby activations during a Main outage.
    pub failovers: u32,
    /// Handovers from the Standby back to the Main.
    pub failbacks: u32,
    /// New calls released by a draining Standby to its Main (`new_calls.rs`).
    pub new_calls_handoffs: u32,
    pub frames_sent: u64,
    pub frames_rejected: u64,
}

pub struct Cluster {
    pub base: Instant,
    pub now: Instant,
    pub rng: ChaCha8Rng,
    pub hosts: Vec<Host>,
    /// `links[from][to]`.
    pub links: [[Link; 2]; 2],
    queue: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    /// Last lines of the log, printed when an invariant fails.
    pub log: VecDeque<String>,
    pub log_all: bool,
    pub check: bool,
    pub stats: Stats,
    pub timers: Timers,
    /// Last time the topology changed (link cut/heal, crash, reboot).
    pub disturbed_at: Instant,
    /// Since when the Main has been unreachable from the Standby.
    pub outage_since: Option<Instant>,
    /// Liveness is not checked before this time (an injected failure runs).
    pub exempt_until: Instant,
    /// Since when no node has been active.
    none_active_since: Option<Instant>,
    /// Since when some node could serve (alive and not held by an admin).
    can_serve_since: Option<Instant>,
    outage_activations: u32,
    /// When the last outage of the Main ended (a decision taken just after
    /// a heal may still be the outage's).
    outage_ended: Option<Instant>,
    /// A violation seen while handing out outputs, reported by the next check.
    violation: Option<String>,
    /// The Standby offered the new calls in this drain and its services
    /// still run: the planned overlap with the Main (`new_calls.rs`).
    pub overlap: bool,
}

const LOG_KEEP: usize = 400;

impl Cluster {
    pub fn new(seed: u64, timers: Timers) -> Cluster {
        let base = Instant::now();
        let mut c = Cluster {
            base,
            now: base,
            rng: ChaCha8Rng::seed_from_u64(seed),
            hosts: Vec::new(),
            links: Default::default(),
            queue: BinaryHeap::new(),
            seq: 0,
            log: VecDeque::new(),
            log_all: false,
            check: true,
            stats: Stats::default(),
            disturbed_at: base,
            outage_since: None,
            exempt_until: base,
            none_active_since: None,
            can_serve_since: None,
            outage_activations: 0,
            outage_ended: None,
            violation: None,
            overlap: false,
            timers: timers.clone(),
        };
        for i in 0..2 {
            c.hosts.push(Host {
                settings: settings(i, &timers),
                node: None,
                disk: Persisted::default(),
                backup: Persisted::default(),
                boot_id: 0,
                services: false,
                start_latency: Duration::from_millis(500),
                stop_latency: Duration::from_millis(300),
                fail_starts: 0,
                fail_fetches: 0,
                fetch_latency: Duration::from_millis(300),
                pbx_ok: true,
                probe: None,
                calls: 0,
                calls_end: true,
                arbiter: true,
                deadline: None,
                generation: 0,
                reported_pbx: None,
                reported_arbiter: None,
                booted_at: base,
                activations: 0,
                starts: 0,
                seen: None,
                service_starts: 0,
                service_stops: 0,
                fail_stops: 0,
                stop_failed: false,
                left_at_boot: false,
                persists_in_flight: 0,
                heard: None,
                split_step_down: None,
                starting_at: None,
                up: false,
                last_epoch: 0,
                last_sent: Vec::new(),
            });
        }
        c
    }

    /// A cluster with both nodes booted at time zero.
    pub fn started(seed: u64, timers: Timers) -> Cluster {
        let mut c = Cluster::new(seed, timers);
        c.boot(MAIN);
        c.boot(STANDBY);
        c
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    pub fn note(&mut self, line: String) {
        let line = format!("{:>9.3}s {line}", self.elapsed().as_secs_f64());
        if self.log_all {
            eprintln!("{line}");
        }
        if self.log.len() == LOG_KEEP {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    pub fn dump_log(&self) -> String {
        self.log.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    // ---- faults ------------------------------------------------------

    pub fn boot(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        if h.node.is_some() {
            return;
        }
        h.generation += 1;
        h.boot_id = self.rng.random();
        // The runtime reports what runs: services a daemon crash left behind.
        // A start ordered and not confirmed (its daemon died meanwhile)
        // may or may not have brought the services up.
        let seen = if h.up {
            ServicesAtBoot::Running
        } else if h.services {
            ServicesAtBoot::Unclear
        } else {
            ServicesAtBoot::Stopped
        };
        h.node = Some(Node::boot(
            h.settings.clone(),
            h.disk,
            seen,
            h.boot_id,
            self.now,
        ));
        h.deadline = None;
        h.reported_pbx = None;
        h.reported_arbiter = None;
        h.booted_at = self.now;
        h.activations = 0;
        h.starts = 0;
        h.left_at_boot = h.services;
        h.stop_failed = false;
        h.last_epoch = 0;
        h.persists_in_flight = 0;
        h.heard = None;
        h.split_step_down = None;
        self.disturbed_at = self.now;
        if i == STANDBY {
            self.outage_activations = 0;
        }
        self.note(format!("== boot {}", NAMES[i]));
        self.drain_outputs(i);
        self.update_outage();
    }

    /// The host's state database is lost (a new disk, a reinstall): it
    /// boots next with first-boot facts.
    pub fn lose_disk(&mut self, i: usize) {
        self.hosts[i].disk = Persisted::default();
        self.note(format!("== {} loses its state", NAMES[i]));
    }

    /// Keep a copy of the host's facts, as a backup would.
    pub fn back_up(&mut self, i: usize) {
        self.hosts[i].backup = self.hosts[i].disk;
    }

    /// The host's state is restored from its (older) backup.
    pub fn restore_backup(&mut self, i: usize) {
        self.hosts[i].disk = self.hosts[i].backup;
        self.note(format!(
            "== {} restored from an older backup {:?}",
            NAMES[i], self.hosts[i].backup
        ));
    }

    /// The host dies: its daemon and its services.
    pub fn crash(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        if h.node.take().is_none() {
            return;
        }
        h.services = false;
        h.up = false;
        h.deadline = None;
        self.disturbed_at = self.now;
        self.note(format!("== crash {}", NAMES[i]));
        self.update_outage();
    }

    /// The daemon dies (SIGKILL, a crash) and its services keep running;
    /// an action it had under way never reports.
    pub fn crash_daemon(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        if h.node.take().is_none() {
            return;
        }
        h.deadline = None;
        self.disturbed_at = self.now;
        let services = h.services;
        self.note(format!(
            "== daemon of {} killed (services {})",
            NAMES[i],
            if services { "left running" } else { "stopped" }
        ));
        self.update_outage();
    }

    /// The daemon is asked to stop (SIGTERM): it hands over and exits once
    /// the core says it is done (see `step`).
    pub fn stop_daemon(&mut self, i: usize) {
        let now = self.now;
        let Some(n) = self.hosts[i].node.as_mut() else {
            return;
        };
        let _ = n.handle_input(Input::Shutdown(now));
        self.note(format!("== SIGTERM to the daemon of {}", NAMES[i]));
        self.drain_outputs(i);
        self.reap(i);
    }

    /// A stopped daemon that is done exits; it must leave no services.
    fn reap(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        if !h.node.as_ref().is_some_and(|n| n.is_done()) {
            return;
        }
        h.node = None;
        h.deadline = None;
        if h.services && self.violation.is_none() {
            self.violation = Some(format!(
                "the daemon of {} exited with its services running",
                NAMES[i]
            ));
        }
        self.disturbed_at = self.now;
        self.note(format!("== daemon of {} exited", NAMES[i]));
        self.update_outage();
    }

    pub fn set_link(&mut self, from: usize, to: usize, up: bool) {
        if self.links[from][to].up != up {
            self.links[from][to].up = up;
            self.disturbed_at = self.now;
            self.note(format!(
                "== link {} -> {} {}",
                NAMES[from],
                NAMES[to],
                if up { "healed" } else { "cut" }
            ));
            self.update_outage();
        }
    }

    pub fn cut(&mut self) {
        self.set_link(MAIN, STANDBY, false);
        self.set_link(STANDBY, MAIN, false);
    }

    pub fn heal(&mut self) {
        self.set_link(MAIN, STANDBY, true);
        self.set_link(STANDBY, MAIN, true);
    }

    /// The arbiter answers host `i` or not. Liveness is measured from the
    /// moment it answers again.
    pub fn set_arbiter(&mut self, i: usize, ok: bool) {
        if self.hosts[i].arbiter != ok {
            self.hosts[i].arbiter = ok;
            self.note(format!(
                "== arbiter {} for {}",
                if ok { "answers" } else { "silent" },
                NAMES[i]
            ));
            if ok {
                self.exempt_until = self.exempt_until.max(self.now);
            }
        }
    }

    /// The next `n` service starts on host `i` fail. Liveness allows for the
    /// retries.
    pub fn fail_starts(&mut self, i: usize, n: u32) {
        let h = &mut self.hosts[i];
        h.fail_starts = n;
        let per_try = h.start_latency + self.timers.retry_delay;
        self.exempt_until = self.exempt_until.max(self.now + per_try * n);
        self.note(format!("== next {n} starts fail on {}", NAMES[i]));
    }

    /// The next `n` service stops on host `i` fail: the services keep
    /// running and the node retries. Liveness allows for the retries.
    pub fn fail_stops(&mut self, i: usize, n: u32) {
        let h = &mut self.hosts[i];
        h.fail_stops = n;
        let per_try = h.stop_latency + self.timers.retry_delay;
        self.exempt_until = self.exempt_until.max(self.now + per_try * n);
        self.note(format!("== next {n} stops fail on {}", NAMES[i]));
    }

    pub fn set_loss(&mut self, loss: f64) {
        for l in self.links.iter_mut().flatten() {
            l.loss = loss;
        }
    }

    pub fn command(&mut self, i: usize, cmd: Command) -> Result<(), InputError> {
        let now = self.now;
        let r = match self.hosts[i].node.as_mut() {
            Some(n) => n.handle_input(Input::Command(now, cmd)),
            None => panic!("command to a crashed node"),
        };
        self.note(format!("{} <- {cmd}: {r:?}", NAMES[i]));
        self.drain_outputs(i);
        r
    }

    /// Send raw bytes to a node as if from the network.
    pub fn inject(&mut self, i: usize, bytes: &[u8]) -> Result<(), InputError> {
        let now = self.now;
        let r = self.hosts[i]
            .node
            .as_mut()
            .expect("node up")
            .handle_input(Input::Datagram(now, addr(1 - i), bytes));
        self.drain_outputs(i);
        r
    }

    fn update_outage(&mut self) {
        let down = !self.hosts[MAIN].alive() || !self.links[MAIN][STANDBY].up;
        match (down, self.outage_since) {
            (true, None) => {
                self.outage_since = Some(self.now);
                self.outage_activations = 0;
            }
            (false, Some(_)) => {
                self.outage_since = None;
                self.outage_ended = Some(self.now);
            }
            _ => {}
        }
    }

    // ---- running -------------------------------------------------------

    fn next_time(&self) -> Option<Instant> {
        let q = self.queue.peek().map(|Reverse(p)| p.at);
        let d = self
            .hosts
            .iter()
            .flat_map(|h| [h.deadline, h.probe.as_ref().map(|p| p.next_at)])
            .flatten()
            .min();
        match (q, d) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Advance to the next thing that happens (not beyond `limit`).
    pub fn step(&mut self, limit: Instant) -> Result<(), String> {
        let Some(at) = self.next_time().filter(|&t| t <= limit) else {
            self.now = limit.max(self.now);
            return self.check_invariants();
        };
        self.now = at.max(self.now);
        while let Some(Reverse(p)) = self.queue.peek() {
            if p.at > self.now {
                break;
            }
            let Some(Reverse(p)) = self.queue.pop() else {
                break;
            };
            self.deliver(p.what);
        }
        for (i, name) in NAMES.iter().enumerate() {
            if self.hosts[i].deadline.is_some_and(|d| d <= self.now) {
                self.hosts[i].deadline = None;
                let now = self.now;
                let mut woke = None;
                if let Some(n) = self.hosts[i].node.as_mut() {
                    woke = n.next_wake().map(|(_, why)| why);
                    let _ = n.handle_input(Input::Timeout(now));
                }
                // Heartbeats are every few hundred milliseconds: only the
                // other timers are worth a line in the trace.
                if let Some(why) = woke.filter(|&w| w != Wake::Heartbeat) {
                    self.note(format!("{name} woke for {why}"));
                }
                self.drain_outputs(i);
            }
        }
        for i in 0..2 {
            self.probe_tick(i);
            self.sync_probes(i);
            self.reap(i);
        }
        self.check_invariants()
    }

    /// Make host `i`'s probe flap (`None`: back to the ideal probe).
    pub fn flap_probe(&mut self, i: usize, flap: Option<Flap>) {
        let now = self.now;
        self.hosts[i].probe = flap.map(|flap| FlapProbe {
            flap,
            debounce: PbxProbe::new(),
            next_at: now,
            n: 0,
            misses_in_a_row: 0,
            longest_misses: 0,
            downs: 0,
        });
        self.note(format!("== probe of {} flaps: {flap:?}", NAMES[i]));
    }

    /// The longest run of missed probes since host `i`'s probe began to flap.
    pub fn longest_probe_misses(&self, i: usize) -> Option<u32> {
        self.hosts[i].probe.as_ref().map(|p| p.longest_misses)
    }

    /// How often host `i`'s flapping probe reported its PBX down.
    pub fn probe_downs(&self, i: usize) -> Option<u32> {
        self.hosts[i].probe.as_ref().map(|p| p.downs)
    }

    /// A flapping probe's round, when due: one raw result into the debounce.
    fn probe_tick(&mut self, i: usize) {
        let now = self.now;
        let h = &mut self.hosts[i];
        let Some(p) = h.probe.as_mut().filter(|p| p.next_at <= now) else {
            return;
        };
        p.next_at = now + PROBE_INTERVAL;
        if !h.services {
            // Nothing to probe: the next start begins Unknown.
            p.debounce = PbxProbe::new();
            p.misses_in_a_row = 0;
            return;
        }
        p.n += 1;
        let ok = h.pbx_ok && p.flap.answers(p.n);
        p.misses_in_a_row = if ok { 0 } else { p.misses_in_a_row + 1 };
        p.longest_misses = p.longest_misses.max(p.misses_in_a_row);
        if p.debounce.observe(ok) == Some(PbxHealth::Down) {
            p.downs += 1;
        }
    }

    pub fn run_for(&mut self, d: Duration) -> Result<(), String> {
        let until = self.now + d;
        while self.now < until {
            self.step(until)?;
        }
        Ok(())
    }

    /// Run until `cond` holds (checked after every step) or `d` passes.
    pub fn run_until(
        &mut self,
        d: Duration,
        mut cond: impl FnMut(&Cluster) -> bool,
    ) -> Result<bool, String> {
        let until = self.now + d;
        while self.now < until {
            if cond(self) {
                return Ok(true);
            }
            self.step(until)?;
        }
        Ok(cond(self))
    }

    fn deliver(&mut self, what: What) {
        match what {
            What::Packet { to, bytes } => {
                let now = self.now;
                let Some(n) = self.hosts[to].node.as_mut() else {
                    return;
                };
                match n.handle_input(Input::Datagram(now, addr(1 - to), &bytes)) {
                    Err(e) => {
                        self.stats.frames_rejected += 1;
                        if !matches!(e, InputError::Rejected(resilience_core::Reject::Replayed)) {
                            self.note(format!("{} dropped a frame: {e}", NAMES[to]));
                        }
                    }
                    Ok(()) => {
                        let key = &self.hosts[to].settings.key;
                        if let Ok(frame) = heartbeat::decode(&bytes, key) {
                            let gap = self.timers.failover_after;
                            let h = &mut self.hosts[to];
                            let since = match &h.heard {
                                Some(p) if now - p.at < gap => p.since,
                                _ => now,
                            };
                            h.heard = Some(Heard {
                                frame,
                                at: now,
                                since,
                            });
                        }
                    }
                }
                self.drain_outputs(to);
            }
            What::Done {
                host,
                generation,
                id,
                kind,
            } => {
                let h = &mut self.hosts[host];
                if h.generation != generation || h.node.is_none() {
                    return;
                }
                let result = match kind {
                    ActionKind::StartServices => {
                        if h.fail_starts > 0 {
                            h.fail_starts -= 1;
                            h.services = false;
                            // Liveness allows for the retry this failure causes.
                            let retry = self.timers.retry_delay + h.start_latency + self.settle();
                            self.exempt_until = self.exempt_until.max(self.now + retry);
                            Err(resilience_core::ActionError(
                                "asterisk: exit status 1".into(),
                            ))
                        } else {
                            h.up = true;
                            Ok(ActionOutcome::Done)
                        }
                    }
                    ActionKind::StopServices => {
                        if h.fail_stops > 0 {
                            h.fail_stops -= 1;
                            // The retry is a new try: "stuck" counts from here.
                            h.seen = Some((Status::Stopping, self.now));
                            h.stop_failed = true;
                            // Liveness allows for the retry this failure causes.
                            let retry = self.timers.retry_delay + h.stop_latency + self.settle();
                            self.exempt_until = self.exempt_until.max(self.now + retry);
                            Err(resilience_core::ActionError(
                                "asterisk: stop timed out".into(),
                            ))
                        } else {
                            h.services = false;
                            h.up = false;
                            h.stop_failed = false;
                            Ok(ActionOutcome::Done)
                        }
                    }
                    ActionKind::CountActiveCalls => {
                        let n = h.calls;
                        // Calls end one by one as the drain goes on.
                        if h.calls > 0 && h.calls_end && self.rng.random_bool(0.5) {
                            self.hosts[host].calls -= 1;
                        }
                        Ok(ActionOutcome::ActiveCalls(n))
                    }
                    ActionKind::Persist(p) => {
                        h.disk = p;
                        h.persists_in_flight = h.persists_in_flight.saturating_sub(1);
                        Ok(ActionOutcome::Done)
                    }
                    ActionKind::FetchFailbackData => {
                        if h.fail_fetches > 0 {
                            h.fail_fetches -= 1;
                            Err(resilience_core::ActionError(
                                "connect: connection refused".into(),
                            ))
                        } else {
                            Ok(ActionOutcome::Done)
                        }
                    }
                };
                let now = self.now;
                if let Some(n) = self.hosts[host].node.as_mut() {
                    let _ = n.handle_input(Input::ActionDone(now, id, result));
                }
                self.drain_outputs(host);
            }
        }
    }

    /// Feed the PBX probe and the arbiter probe when their answer changes.
    fn sync_probes(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        let Some(n) = h.node.as_mut() else { return };
        let pbx = if !h.services {
            PbxHealth::Unknown
        } else if let Some(p) = &h.probe {
            p.debounce.health()
        } else if h.pbx_ok {
            PbxHealth::Up
        } else {
            PbxHealth::Down
        };
        let mut changed = false;
        if h.reported_pbx != Some(pbx) {
            h.reported_pbx = Some(pbx);
            let _ = n.handle_input(Input::PbxHealth(self.now, pbx));
            changed = true;
        }
        if h.reported_arbiter != Some(h.arbiter) {
            h.reported_arbiter = Some(h.arbiter);
            let _ = n.handle_input(Input::Arbiter(self.now, h.arbiter));
            changed = true;
        }
        if changed {
            self.drain_outputs(i);
        }
    }

    fn push(&mut self, at: Instant, what: What) {
        self.seq += 1;
        self.queue.push(Reverse(Pending {
            at,
            seq: self.seq,
            what,
        }));
    }

    fn delay(&mut self, l: &Link) -> Duration {
        let (a, b) = (
            l.delay_min.as_micros() as u64,
            l.delay_max.as_micros() as u64,
        );
        Duration::from_micros(if b > a {
            self.rng.random_range(a..=b)
        } else {
            a
        })
    }

    fn drain_outputs(&mut self, i: usize) {
        loop {
            let Some(n) = self.hosts[i].node.as_mut() else {
                return;
            };
            match n.poll_output() {
                Output::Timeout(at) => {
                    self.hosts[i].deadline = Some(at);
                    return;
                }
                Output::Transmit(t) => {
                    self.stats.frames_sent += 1;
                    self.hosts[i].last_sent.clone_from(&t.bytes);
                    let to = if t.to == addr(MAIN) { MAIN } else { STANDBY };
                    let link = self.links[i][to].clone();
                    if !link.up || (link.loss > 0.0 && self.rng.random_bool(link.loss)) {
                        continue;
                    }
                    let d = self.delay(&link);
                    let at = self.now + d;
                    if link.dup > 0.0 && self.rng.random_bool(link.dup) {
                        let d2 = self.delay(&link);
                        let at2 = self.now + d2;
                        self.push(
                            at2,
                            What::Packet {
                                to,
                                bytes: t.bytes.clone(),
                            },
                        );
                    }
                    self.push(at, What::Packet { to, bytes: t.bytes });
                }
                Output::Action(Action { id, kind }) => {
                    let h = &mut self.hosts[i];
                    let latency = match kind {
                        ActionKind::StartServices => {
                            // A restarted daemon adopts what runs; it never
                            // starts services again over running ones.
                            if h.services && self.violation.is_none() {
                                self.violation = Some(format!(
                                    "{} started its services while they were running",
                                    NAMES[i]
                                ));
                            }
                            h.services = true;
                            h.service_starts += 1;
                            h.left_at_boot = false;
                            h.start_latency
                        }
                        ActionKind::StopServices => {
                            h.service_stops += 1;
                            h.left_at_boot = false;
                            h.stop_latency
                        }
                        ActionKind::CountActiveCalls => Duration::from_millis(20),
                        ActionKind::Persist(_) => {
                            h.persists_in_flight += 1;
                            Duration::from_millis(1)
                        }
                        ActionKind::FetchFailbackData => h.fetch_latency,
                    };
                    let generation = h.generation;
                    let at = self.now + latency;
                    self.push(
                        at,
                        What::Done {
                            host: i,
                            generation,
                            id,
                            kind,
                        },
                    );
                }
                Output::Event(e) => {
                    self.check_decision(i, &e);
                    match e.kind {
                        EventKind::ActiveChanged { to: true, .. } => {
                            self.hosts[i].activations += 1;
                            // A start decided before the outage began is not
                            // the outage's failover.
                            let started_in_outage = self
                                .outage_since
                                .is_some_and(|o| self.hosts[i].starting_at.is_none_or(|s| s >= o));
                            if i == STANDBY && started_in_outage {
                                self.outage_activations += 1;
                                self.stats.failovers += 1;
                            }
                        }
                        EventKind::StatusChanged {
                            to: Status::Starting,
                            ..
                        } => {
                            self.hosts[i].starts += 1;
                            self.hosts[i].starting_at = Some(self.now);
                            let after_outage = self
                                .outage_ended
                                .is_some_and(|e| self.now - e < self.timers.failover_after);
                            if i == STANDBY && self.outage_since.is_none() && !after_outage {
                                let main_yields = self.hosts[MAIN]
                                    .node
                                    .as_ref()
                                    .is_some_and(|m| m.is_yielding());
                                if !main_yields && self.hosts[MAIN].alive() {
                                    self.stats.false_failovers += 1;
                                }
                            }
                        }
                        EventKind::NewCallsReleased { released: true } => {
                            self.stats.new_calls_handoffs += 1;
                        }
                        EventKind::StatusChanged {
                            from: Status::Stopping,
                            to: Status::Inactive,
                        } if i == STANDBY
                            && self.hosts[MAIN].alive()
                            && self.links[STANDBY][MAIN].up =>
                        {
                            self.stats.failbacks += 1;
                        }
                        _ => {}
                    }
                    self.note(format!("{}: {e}", NAMES[i]));
                }
            }
        }
    }

    // ---- invariants ------------------------------------------------------

    fn connected(&self) -> bool {
        self.hosts.iter().all(|h| h.alive()) && self.links[0][1].up && self.links[1][0].up
    }

    fn forced_or_manual(&self) -> bool {
        self.timers.mode == Mode::Manual
    }

    fn held(&self, i: usize) -> bool {
        self.hosts[i].disk.admin == Some(AdminChoice::Stop)
    }

    /// Time for the pair to settle after a change: notice it, act, confirm.
    pub fn settle(&self) -> Duration {
        let h = &self.hosts[0];
        self.timers.failover_after * 2 + h.start_latency + h.stop_latency + Duration::from_secs(1)
    }

    fn check_invariants(&mut self) -> Result<(), String> {
        if !self.check {
            return Ok(());
        }
        if let Some(v) = self.violation.take() {
            return Err(v);
        }
        self.check_state()?;
        let now = self.now;
        // Never Active without services up (a start ordered is not enough).
        for (i, h) in self.hosts.iter().enumerate() {
            if h.is_active() && !h.up {
                return Err(format!("{} is active without its services", NAMES[i]));
            }
        }
        // No node stays in a transition longer than its actions take.
        let retry_delay = self.timers.retry_delay;
        for (i, h) in self.hosts.iter_mut().enumerate() {
            let st = h.status();
            let bound = h.start_latency + h.stop_latency + retry_delay + Duration::from_secs(1);
            match (st, h.seen) {
                (None, _) => h.seen = None,
                (Some(s), Some((old, _))) if s == old => {}
                (Some(s), _) => h.seen = Some((s, now)),
            }
            if let Some((s @ (Status::Starting | Status::Stopping), since)) = h.seen {
                if now - since > bound {
                    return Err(format!("{} stuck in {s:?} for {:?}", NAMES[i], now - since));
                }
            }
        }
        let settled = self.connected() && now - self.disturbed_at >= self.settle();
        // The planned overlap of `failback.new_calls = "main"`: from the
        // Standby's offer until its services stop (or its drain is cancelled).
        let s = &self.hosts[STANDBY];
        if s.node.as_ref().is_some_and(|n| n.offers_new_calls()) {
            self.overlap = true;
        } else if !s.services
            || !self
                .hosts
                .iter()
                .any(|h| matches!(h.status(), Some(Status::Draining | Status::Stopping)))
        {
            // Over once the Standby's services are stopped, or when neither
            // side is on its way out any more (then it is a split brain).
            self.overlap = false;
        }
        // At most one node runs services while the two hear each other,
        // but for that overlap (and services whose stop fails run whatever
        // the node does).
        if settled
            && !self.overlap
            && !self.forced_or_manual()
            && self.hosts.iter().all(|h| h.services && !h.stop_failed)
        {
            return Err("both nodes run services while connected".into());
        }
        // A node that may push its data is the only one whose services run
        // while the two hear each other (else it overwrites the serving copy).
        if settled && !self.overlap && !self.forced_or_manual() {
            for (i, h) in self.hosts.iter().enumerate() {
                let other = &self.hosts[1 - i];
                // Only an Active node may push: the snapshot (the costly
                // part of a step) is built only when the rule can break.
                if !(h.is_active() && other.services && !other.stop_failed) {
                    continue;
                }
                let may_push = h
                    .node
                    .as_ref()
                    .is_some_and(|n| n.snapshot(now).may_push_data().is_ok());
                if may_push {
                    return Err(format!(
                        "{} may push its data while {} runs services",
                        NAMES[i],
                        NAMES[1 - i]
                    ));
                }
            }
        }
        // Never two nodes taking new calls while they hear each other:
        // settled, or at any instant of the ordered hand-off.
        if (settled || (self.overlap && self.connected()))
            && !self.forced_or_manual()
            && self.hosts.iter().all(|h| h.takes_new_calls())
        {
            return Err(format!(
                "both nodes take new calls while connected (main {:?}, standby {:?})",
                self.hosts[MAIN].status(),
                self.hosts[STANDBY].status()
            ));
        }
        if self.forced_or_manual() {
            return Ok(());
        }
        // One failover per outage.
        if self.outage_activations > 1 {
            return Err(format!(
                "standby activated {} times during one outage of the main",
                self.outage_activations
            ));
        }
        // A Standby caught stopping (a handover) finishes that first.
        let slack = self.hosts[STANDBY].start_latency
            + self.hosts[STANDBY].stop_latency
            + self.timers.interval * 2
            + self.links[MAIN][STANDBY].delay_max
            + Duration::from_millis(100);
        // The Standby takes over a dead Main.
        if let Some(since) = self.outage_since {
            let s = &self.hosts[STANDBY];
            let from = since.max(s.booted_at).max(self.exempt_until);
            let may = s.alive() && !self.held(STANDBY) && (!self.timers.arbiters || s.arbiter);
            if may && now - from > self.timers.failover_after + slack && !s.is_active() {
                return Err(format!(
                    "main unreachable for {:.1}s but the standby is {:?}",
                    (now - since).as_secs_f64(),
                    s.status()
                ));
            }
        }
        // Someone serves: not both inactive for long while one could serve.
        let any_active = self.hosts.iter().any(|h| h.is_active());
        // A faulted Standby beside a yielding Main (held, switched away,
        // leaving) waits out its fault hold: the Main decides in a tie.
        let yielding = |i: usize| self.hosts[i].node.as_ref().is_some_and(|n| n.is_yielding());
        let can_serve = (0..2).any(|i| {
            self.hosts[i].alive()
                && !self.held(i)
                && !(i == STANDBY && yielding(STANDBY) && yielding(MAIN))
        });
        if !can_serve {
            self.can_serve_since = None;
        } else if self.can_serve_since.is_none() {
            self.can_serve_since = Some(now);
        }
        if any_active {
            self.none_active_since = None;
        } else {
            let since = *self.none_active_since.get_or_insert(now);
            let bound = self.timers.startup_wait.max(self.timers.failover_after)
                + self.settle()
                + self.timers.retry_delay;
            let from = since
                .max(self.exempt_until)
                .max(self.can_serve_since.unwrap_or(now));
            let arbiter_blocked =
                self.timers.arbiters && !self.hosts[MAIN].alive() && !self.hosts[STANDBY].arbiter;
            if can_serve && !arbiter_blocked && now > from && now - from > bound {
                return Err(format!(
                    "no node active for {:.1}s (main {:?}, standby {:?})",
                    (now - since).as_secs_f64(),
                    self.hosts[MAIN].status(),
                    self.hosts[STANDBY].status()
                ));
            }
        }
        Ok(())
    }
}

/// A duration of `s` seconds (the scenarios' unit).
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Run `f` on a started cluster, and on failure print the simulator's log
/// before panicking.
pub fn play(
    seed: u64,
    timers: Timers,
    f: impl FnOnce(&mut Cluster) -> Result<(), String>,
) -> Cluster {
    let mut c = Cluster::started(seed, timers);
    c.log_all = std::env::var_os("SIM_LOG").is_some();
    if let Err(e) = f(&mut c) {
        panic!("{e}\n--- last simulator log lines ---\n{}", c.dump_log());
    }
    c
}

/// `return Err(message)` from a scenario when `cond` does not hold.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}
