//! The earliest time at which a rule could change its answer, and which
//! rule that is ([`Wake`]), so a runtime or a trace can say why the node
//! woke (as str0m's `Reason` does for its timeouts).

use super::*;
use std::fmt;

/// Which timer a deadline belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Wake {
    /// The next heartbeat is due (`heartbeat.interval`).
    Heartbeat,
    /// The peer will have been silent for `failover_after`.
    PeerSilent,
    /// The peer will have been silent for `startup_wait` (the Main's start).
    StartupWait,
    /// A peer that does not hear this node: the Main's start after
    /// `failover_after + startup_wait`.
    PeerDeaf,
    /// A failed service action is tried again (`retry_delay`).
    ActionRetry,
    /// The fault hold ends (`fault_hold`).
    FaultHold,
    /// The local PBX will have been down for `failover_after`.
    PbxDown,
    /// The drain times out.
    DrainTimeout,
    /// The active calls are counted again during the drain.
    DrainPoll,
    /// A restarted receiver of the drain has had `failover_after` to be
    /// ready again.
    ReceiverGrace,
    /// A stopping daemon's drain may last until then (`stop_timeout`).
    Leaving,
    /// The wait for the peer after adopting services at boot ends.
    Adoption,
    /// The Main will have heard the Standby for the stable failback time.
    FailbackStable,
    /// A switchover (handing over, asking, resuming) expires.
    Switchover,
    /// A disabled node's watch for pair members changes its answer.
    Guard,
    /// The `keep_on_failback` copy has run for `data_wait`.
    DataWait,
    /// A failed `keep_on_failback` copy is tried again.
    DataRetry,
}

impl Wake {
    /// Short text for logs and traces.
    pub fn label(self) -> &'static str {
        match self {
            Wake::Heartbeat => "heartbeat due",
            Wake::PeerSilent => "peer silent (failover_after)",
            Wake::StartupWait => "startup_wait",
            Wake::PeerDeaf => "peer deaf (failover_after + startup_wait)",
            Wake::ActionRetry => "service action retry",
            Wake::FaultHold => "fault_hold end",
            Wake::PbxDown => "PBX down for failover_after",
            Wake::DrainTimeout => "drain timeout",
            Wake::DrainPoll => "drain: count calls",
            Wake::ReceiverGrace => "drain: restarted receiver's grace",
            Wake::Leaving => "stop timeout",
            Wake::Adoption => "adoption wait end",
            Wake::FailbackStable => "failback stable",
            Wake::Switchover => "switchover expiry",
            Wake::Guard => "disabled node's guard",
            Wake::DataWait => "data_wait",
            Wake::DataRetry => "data copy retry",
        }
    }
}

impl fmt::Display for Wake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl Node {
    /// The earliest deadline after the last input's time and the rule it
    /// belongs to; `None` when no rule waits on time (the node then asks to
    /// be woken after a heartbeat interval anyway). Equal deadlines go to
    /// the first in [`Wake`]'s order.
    pub fn next_wake(&self) -> Option<(Instant, Wake)> {
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
        let drain = self.drain.as_ref();
        // A running minimum, not an iterator over an array of pairs: this
        // runs after every input and was a quarter of a simulated step.
        // Strictly earlier wins, so equal deadlines keep the first reason.
        let mut best: Option<(Instant, Wake)> = None;
        let mut consider = |t: Option<Instant>, why: Wake| {
            if let Some(t) = t.filter(|&t| t > now) {
                if best.is_none_or(|(b, _)| t < b) {
                    best = Some((t, why));
                }
            }
        };
        consider(
            (self.s.node_type != NodeType::Disabled).then_some(self.next_heartbeat),
            Wake::Heartbeat,
        );
        consider(Some(last + self.s.failover_after), Wake::PeerSilent);
        consider(Some(last + self.s.startup_wait), Wake::StartupWait);
        consider(
            self.peer
                .deaf_since()
                .map(|t| t + self.s.failover_after + self.s.startup_wait),
            Wake::PeerDeaf,
        );
        consider(self.retry_at, Wake::ActionRetry);
        consider(self.fault.as_ref().map(|f| f.until), Wake::FaultHold);
        consider(
            self.pbx_down_since.map(|t| t + self.s.failover_after),
            Wake::PbxDown,
        );
        consider(drain.map(|d| d.deadline), Wake::DrainTimeout);
        consider(drain.map(|d| d.next_poll), Wake::DrainPoll);
        consider(
            drain
                .and_then(|d| d.grace)
                .map(|t| t + self.s.failover_after),
            Wake::ReceiverGrace,
        );
        consider(self.leaving, Wake::Leaving);
        consider(self.adopt_until, Wake::Adoption);
        consider(stable, Wake::FailbackStable);
        consider(self.switchover_deadline(), Wake::Switchover);
        consider(self.guard_deadline(), Wake::Guard);
        let (t, why) = self.data_deadline();
        consider(t, why);
        best
    }

    /// The earliest time at which a rule could change its answer.
    pub(super) fn next_deadline(&self) -> Instant {
        self.next_wake().map_or_else(
            || self.now + self.s.interval.max(Duration::from_millis(100)),
            |(t, _)| t,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{drain, settings};
    use super::*;

    /// A node with heartbeats far apart, so another rule's timer is first.
    fn quiet(node_type: NodeType, mode: Mode, now: Instant) -> Node {
        let mut s = settings("a", "b", node_type, mode);
        s.interval = Duration::from_secs(10);
        s.startup_wait = Duration::from_secs(2);
        let mut n = Node::new(s, Persisted::default(), 1, now);
        drain(&mut n);
        n
    }

    fn timeout(n: &mut Node) -> Instant {
        match n.poll_output() {
            Output::Timeout(at) => at,
            o => panic!("expected a timeout, got {o:?}"),
        }
    }

    #[test]
    fn heartbeat_is_the_first_wake_with_default_timers() {
        let now = Instant::now();
        let mut n = Node::new(
            settings("a", "b", NodeType::Standby, Mode::Automatic),
            Persisted::default(),
            1,
            now,
        );
        drain(&mut n);
        let at = now + Duration::from_millis(200);
        assert_eq!(n.next_wake(), Some((at, Wake::Heartbeat)));
        assert_eq!(timeout(&mut n), at);
    }

    #[test]
    fn a_silent_main_wakes_the_standby_for_failover_after() {
        let now = Instant::now();
        let mut n = quiet(NodeType::Standby, Mode::Automatic, now);
        // startup_wait (2 s) is earlier but only the Main acts on it; the
        // wake still names it: the Standby's own timer comes next.
        assert_eq!(
            n.next_wake(),
            Some((now + Duration::from_secs(2), Wake::StartupWait))
        );
        n.handle_input(Input::Timeout(now + Duration::from_secs(2)))
            .unwrap();
        drain(&mut n);
        assert_eq!(
            n.next_wake(),
            Some((now + Duration::from_secs(3), Wake::PeerSilent))
        );
        assert_eq!(timeout(&mut n), now + Duration::from_secs(3));
    }

    #[test]
    fn a_failed_start_wakes_for_the_retry() {
        let now = Instant::now();
        let mut n = quiet(NodeType::Main, Mode::Manual, now);
        n.handle_input(Input::Command(now, Command::StartServices { force: false }))
            .unwrap();
        let id = drain(&mut n)
            .into_iter()
            .find_map(|o| match o {
                Output::Action(Action {
                    id,
                    kind: ActionKind::StartServices,
                }) => Some(id),
                _ => None,
            })
            .expect("a start");
        n.handle_input(Input::ActionDone(now, id, Err(ActionError("boom".into()))))
            .unwrap();
        drain(&mut n);
        assert_eq!(
            n.next_wake(),
            Some((now + Duration::from_secs(1), Wake::ActionRetry))
        );
    }

    #[test]
    fn a_fault_wakes_for_its_hold_end() {
        let now = Instant::now();
        let mut s = settings("a", "b", NodeType::Main, Mode::Manual);
        s.interval = Duration::from_secs(600);
        s.failover_after = Duration::from_secs(600);
        s.startup_wait = Duration::from_secs(600);
        s.start_attempts = 1;
        s.retry_delay = Duration::from_secs(900);
        let mut n = Node::new(s, Persisted::default(), 1, now);
        drain(&mut n);
        n.handle_input(Input::Command(now, Command::StartServices { force: false }))
            .unwrap();
        let id = drain(&mut n)
            .into_iter()
            .find_map(|o| match o {
                Output::Action(a) if a.kind == ActionKind::StartServices => Some(a.id),
                _ => None,
            })
            .expect("a start");
        n.handle_input(Input::ActionDone(now, id, Err(ActionError("boom".into()))))
            .unwrap();
        drain(&mut n);
        assert_eq!(
            n.next_wake(),
            Some((now + Duration::from_secs(60), Wake::FaultHold))
        );
        assert_eq!(Wake::FaultHold.to_string(), "fault_hold end");
    }
}
