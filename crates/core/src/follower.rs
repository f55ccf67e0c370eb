//! What a follower host (contact center, UC apps, media server) does with its
//! node's answers to `GET /api/v1/ha`, sans-IO: each poll's answer comes in
//! with the time; "make the local services active / inactive" comes out,
//! and every decision is an event with its reason (XiVO's
//! `xivocc-ha-monitoring`, without its flaps).
//!
//! - A change is acted on once it has held for `confirm_polls` answers in a
//!   row; one contrary answer starts the count again, so one odd answer
//!   never restarts nginx.
//! - A poll that gets no answer is neither a yes nor a no: the current state
//!   is kept, and said so. Once the node has been unreachable for
//!   `unreachable_after`, the follower treats it as Inactive (a follower cut
//!   off from its node must not keep serving beside the other side's).
//! - One action at a time; a failed one is retried after `retry_after` (on
//!   the next poll past it), and the state counts as applied only once an
//!   action has succeeded. Time moves on polls: the runtime polls on its
//!   interval, so the core needs no timer of its own.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Answers in a row that a change must hold for (at least 1).
    pub confirm_polls: u32,
    /// How long the node may be unreachable before it counts as Inactive.
    pub unreachable_after: Duration,
    /// Wait before a failed action is tried again.
    pub retry_after: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            confirm_polls: 2,
            unreachable_after: Duration::from_secs(30),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// One poll of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The node answered with its Active flag.
    Active(bool),
    /// No usable answer (connection refused, timeout, bad document), and why.
    Unreachable(String),
}

/// A decision or an observation, worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The node's answer differs from the previous one (XiVO's
    /// `HA config shows active=…`).
    Shows { active: bool },
    /// The first poll without an answer: what is kept, and for how long.
    Unreachable {
        reason: String,
        keeping: Option<bool>,
        for_at_most: Duration,
    },
    /// The node answers again.
    Reachable { after: Duration },
    /// The wanted state changed, and why.
    Decided { active: bool, reason: String },
    /// An action finished.
    Applied { active: bool },
    Failed {
        active: bool,
        error: String,
        retry_in: Duration,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = |a: bool| if a { "active" } else { "inactive" };
        match self {
            Event::Shows { active } => write!(f, "HA config shows active={active}"),
            Event::Unreachable {
                reason,
                keeping,
                for_at_most,
            } => {
                write!(f, "node unreachable ({reason}); ")?;
                match keeping {
                    Some(a) => write!(f, "keeping services {}", word(*a))?,
                    None => write!(f, "no state decided yet")?,
                }
                write!(
                    f,
                    " for up to {:?} before treating the node as inactive",
                    for_at_most
                )
            }
            Event::Reachable { after } => write!(f, "node answers again after {after:?}"),
            Event::Decided { active, reason } => {
                write!(f, "services go {}: {reason}", word(*active))
            }
            Event::Applied { active } => write!(f, "services are {}", word(*active)),
            Event::Failed {
                active,
                error,
                retry_in,
            } => write!(
                f,
                "making services {} failed: {error}; retrying in {retry_in:?}",
                word(*active)
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Make the local services active (start them, run `on_active`) or
    /// inactive; report with [`Follower::handle_done`].
    Apply {
        active: bool,
    },
    Event(Event),
}

/// The follower's state, for the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The node's last answer (`None`: unreachable, or not polled yet).
    pub node_active: Option<bool>,
    pub reachable: bool,
    pub unreachable_for: Option<Duration>,
    /// What the follower wants its services to be.
    pub wanted: Option<bool>,
    /// What the last successful action made them.
    pub applied: Option<bool>,
    pub applying: bool,
    /// A change seen but not yet confirmed: (active, answers so far).
    pub pending: Option<(bool, u32)>,
}

#[derive(Debug)]
pub struct Follower {
    policy: Policy,
    last_answer: Option<Option<bool>>,
    pending: Option<(bool, u32)>,
    wanted: Option<bool>,
    applied: Option<bool>,
    in_flight: Option<bool>,
    retry_at: Option<Instant>,
    unreachable_since: Option<Instant>,
    out: VecDeque<Output>,
}

impl Follower {
    pub fn new(mut policy: Policy) -> Follower {
        policy.confirm_polls = policy.confirm_polls.max(1);
        Follower {
            policy,
            last_answer: None,
            pending: None,
            wanted: None,
            applied: None,
            in_flight: None,
            retry_at: None,
            unreachable_since: None,
            out: VecDeque::new(),
        }
    }

    /// The answer of one poll, received at `now`.
    pub fn handle_answer(&mut self, now: Instant, answer: Answer) {
        match answer {
            Answer::Active(a) => {
                if let Some(since) = self.unreachable_since.take() {
                    self.event(Event::Reachable {
                        after: now.saturating_duration_since(since),
                    });
                }
                if self.last_answer != Some(Some(a)) {
                    self.event(Event::Shows { active: a });
                }
                self.last_answer = Some(Some(a));
                if self.wanted == Some(a) {
                    self.pending = None;
                } else {
                    let n = match self.pending {
                        Some((p, n)) if p == a => n + 1,
                        _ => 1,
                    };
                    if n >= self.policy.confirm_polls {
                        self.pending = None;
                        self.decide(
                            a,
                            format!(
                                "the node says active={a} ({n} answer{} in a row)",
                                if n == 1 { "" } else { "s" }
                            ),
                        );
                    } else {
                        self.pending = Some((a, n));
                    }
                }
            }
            Answer::Unreachable(reason) => {
                // A lost poll neither confirms nor refutes a pending change.
                let since = match self.unreachable_since {
                    Some(s) => s,
                    None => {
                        self.unreachable_since = Some(now);
                        self.event(Event::Unreachable {
                            reason,
                            keeping: self.wanted,
                            for_at_most: self.policy.unreachable_after,
                        });
                        now
                    }
                };
                self.last_answer = Some(None);
                let gone = now.saturating_duration_since(since);
                if gone >= self.policy.unreachable_after {
                    // An answer from before a long outage confirms nothing.
                    self.pending = None;
                }
                if gone >= self.policy.unreachable_after && self.wanted != Some(false) {
                    self.decide(false, format!("the node has been unreachable for {gone:?}"));
                }
            }
        }
        self.maybe_apply(now);
    }

    /// The result of the last [`Output::Apply`].
    pub fn handle_done(&mut self, now: Instant, result: Result<(), String>) {
        let Some(active) = self.in_flight.take() else {
            return;
        };
        match result {
            Ok(()) => {
                self.applied = Some(active);
                self.retry_at = None;
                self.event(Event::Applied { active });
            }
            Err(error) => {
                // Half done is not done: the next action starts from scratch.
                self.applied = None;
                self.retry_at = Some(now + self.policy.retry_after);
                self.event(Event::Failed {
                    active,
                    error,
                    retry_in: self.policy.retry_after,
                });
            }
        }
        self.maybe_apply(now);
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        Snapshot {
            node_active: self.last_answer.flatten(),
            reachable: self.unreachable_since.is_none() && self.last_answer.is_some(),
            unreachable_for: self
                .unreachable_since
                .map(|s| now.saturating_duration_since(s)),
            wanted: self.wanted,
            applied: self.applied,
            applying: self.in_flight.is_some(),
            pending: self.pending,
        }
    }

    fn decide(&mut self, active: bool, reason: String) {
        self.wanted = Some(active);
        self.retry_at = None;
        self.event(Event::Decided { active, reason });
    }

    fn maybe_apply(&mut self, now: Instant) {
        let Some(w) = self.wanted else { return };
        if self.in_flight.is_some() || self.applied == Some(w) {
            return;
        }
        if self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        self.in_flight = Some(w);
        self.out.push_back(Output::Apply { active: w });
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_secs(1);

    struct Run {
        f: Follower,
        now: Instant,
        applies: Vec<bool>,
        events: Vec<Event>,
    }

    impl Run {
        fn new(confirm: u32) -> Run {
            Run {
                f: Follower::new(Policy {
                    confirm_polls: confirm,
                    unreachable_after: Duration::from_secs(10),
                    retry_after: Duration::from_secs(3),
                }),
                now: Instant::now(),
                applies: Vec::new(),
                events: Vec::new(),
            }
        }
        fn poll(&mut self, a: Answer) {
            self.now += POLL;
            self.f.handle_answer(self.now, a);
            self.drain();
        }
        fn done(&mut self, r: Result<(), String>) {
            self.f.handle_done(self.now, r);
            self.drain();
        }
        fn drain(&mut self) {
            while let Some(o) = self.f.poll_output() {
                match o {
                    Output::Apply { active } => self.applies.push(active),
                    Output::Event(e) => self.events.push(e),
                }
            }
        }
    }

    use Answer::{Active, Unreachable};

    #[test]
    fn acts_once_a_change_holds_for_n_polls() {
        let mut r = Run::new(2);
        r.poll(Active(true));
        assert!(r.applies.is_empty(), "one answer is not enough");
        r.poll(Active(true));
        assert_eq!(r.applies, [true]);
        r.done(Ok(()));
        for _ in 0..5 {
            r.poll(Active(true));
        }
        assert_eq!(r.applies, [true], "nothing redone while unchanged");
        r.poll(Active(false));
        r.poll(Active(false));
        assert_eq!(r.applies, [true, false]);
        assert!(r.events.contains(&Event::Shows { active: false }));
    }

    #[test]
    fn one_contrary_answer_does_not_flap() {
        let mut r = Run::new(2);
        r.poll(Active(true));
        r.poll(Active(true));
        r.done(Ok(()));
        r.poll(Active(false));
        r.poll(Active(true));
        r.poll(Active(false));
        r.poll(Active(true));
        assert_eq!(r.applies, [true]);
        assert_eq!(r.f.snapshot(r.now).pending, None);
    }

    #[test]
    fn a_lost_poll_keeps_the_state_until_the_configured_time() {
        let mut r = Run::new(2);
        r.poll(Active(true));
        r.poll(Active(true));
        r.done(Ok(()));
        r.poll(Unreachable("refused".into()));
        r.poll(Active(true));
        assert_eq!(r.applies, [true], "a single lost poll changes nothing");
        assert!(matches!(
            r.events
                .iter()
                .find(|e| matches!(e, Event::Unreachable { .. })),
            Some(Event::Unreachable {
                keeping: Some(true),
                ..
            })
        ));
        // Unreachable for good: 10 s (the first failed poll starts the clock).
        for _ in 0..10 {
            r.poll(Unreachable("timeout".into()));
        }
        assert_eq!(r.applies, [true], "not before unreachable_after");
        r.poll(Unreachable("timeout".into()));
        assert_eq!(r.applies, [true, false]);
        r.done(Ok(()));
        // Back: debounced like any change.
        r.poll(Active(true));
        assert_eq!(r.applies, [true, false]);
        r.poll(Active(true));
        assert_eq!(r.applies, [true, false, true]);
    }

    #[test]
    fn a_lost_poll_does_not_reset_a_pending_change() {
        let mut r = Run::new(3);
        r.poll(Active(true));
        r.poll(Unreachable("timeout".into()));
        r.poll(Active(true));
        assert!(r.applies.is_empty());
        r.poll(Active(true));
        assert_eq!(r.applies, [true]);
    }

    #[test]
    fn failures_are_retried_after_the_delay_and_not_counted_as_applied() {
        let mut r = Run::new(1);
        r.poll(Active(true));
        assert_eq!(r.applies, [true]);
        r.done(Err("nginx: exit status 1".into()));
        assert_eq!(r.f.snapshot(r.now).applied, None);
        r.poll(Active(true));
        r.poll(Active(true));
        assert_eq!(r.applies, [true], "retry waits 3 s");
        r.poll(Active(true));
        assert_eq!(r.applies, [true, true]);
        r.done(Ok(()));
        assert_eq!(r.f.snapshot(r.now).applied, Some(true));
    }

    #[test]
    fn a_change_during_an_action_waits_for_it() {
        let mut r = Run::new(1);
        r.poll(Active(true));
        r.poll(Active(false));
        assert_eq!(r.applies, [true], "one action at a time");
        r.done(Ok(()));
        assert_eq!(r.applies, [true, false]);
    }

    #[test]
    fn an_answer_before_a_long_outage_confirms_nothing() {
        let mut r = Run::new(2);
        for _ in 0..11 {
            r.poll(Unreachable("refused".into()));
        }
        r.done(Ok(()));
        assert_eq!(r.applies, [false]);
        r.poll(Active(true));
        for _ in 0..11 {
            r.poll(Unreachable("refused".into()));
        }
        r.poll(Active(true));
        assert_eq!(
            r.applies,
            [false],
            "two answers 11 s apart are not two in a row"
        );
        r.poll(Active(true));
        assert_eq!(r.applies, [false, true]);
    }

    #[test]
    fn unreachable_from_the_start_ends_inactive() {
        let mut r = Run::new(2);
        for _ in 0..11 {
            r.poll(Unreachable("refused".into()));
        }
        assert_eq!(r.applies, [false]);
        let s = r.f.snapshot(r.now);
        assert!(!s.reachable);
        assert_eq!(s.wanted, Some(false));
    }
}
