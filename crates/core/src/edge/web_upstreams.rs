//! Which PBX's web server the edge's web proxy sends a request to, sans-IO.
//!
//! The SIP probes say which PBXs are up; a live PBX may still have a dead
//! web server (a crashed CC behind a live XiVO). Two signals take such an
//! upstream out of the rotation:
//!
//! - **Passive**, nginx's `max_fails`/`fail_timeout`: after `max_fails`
//!   failed proxied requests (connect error, timeout, 502/503/504) within
//!   `fail_timeout`, the upstream is skipped for `fail_timeout`. Then the
//!   next request tries it again: one more failure skips it again at once,
//!   a success puts it back (nginx keeps its failure count until a success,
//!   the same way).
//! - **Active**, optional per PBX: a health URL polled by the runtime; after
//!   `down_after` failed checks in a row the upstream is down until
//!   `up_after` pass. A passing check also ends a passive skip.
//!
//! Selection: the first PBX that is up for SIP, has a web server and is
//! not skipped; a request that could not connect is tried once on another
//! ([`Upstreams::pick_other`]), as nginx's `proxy_next_upstream error` does. When every live candidate is skipped, the first live one
//! is tried anyway: a guess beats a certain 503 (nginx's "no live
//! upstreams" spares a lone server the same way).
//!
//! Time is an argument; nothing here reads a clock.

use std::time::{Duration, Instant};

/// One PBX's web server, by index in the edge's `[[pbx]]` list.
pub type Upstream = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures within `fail_timeout` that skip an upstream (0: never).
    pub max_fails: u32,
    /// The failure window, and how long an upstream is skipped.
    pub fail_timeout: Duration,
    /// Active checks failed in a row before an upstream is down.
    pub down_after: u32,
    /// Active checks passed in a row before it is up again.
    pub up_after: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            max_fails: 3,
            fail_timeout: Duration::from_secs(10),
            down_after: 2,
            up_after: 1,
        }
    }
}

/// The outcome of one proxied request, as far as the upstream is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any answer but 502/503/504.
    Ok,
    /// Connect error, timeout, 502/503/504, connection lost mid-answer.
    Failed,
}

/// Why an upstream is out of the rotation, for the status and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Available,
    /// Passive: skipped until this time.
    Skipped {
        until: Instant,
    },
    /// Active: its health URL failed.
    CheckFailed,
}

/// Something worth a log line and a counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Taken out of the rotation after `fails` failures.
    Skipped { upstream: Upstream, fails: u32 },
    /// Its health URL failed `down_after` times in a row.
    CheckDown { upstream: Upstream },
    /// Back in the rotation (a success, or a passing check).
    Back { upstream: Upstream },
}

#[derive(Debug, Clone, Default)]
struct Entry {
    has_web: bool,
    /// Failure times inside the window, oldest first (at most `max_fails`).
    fails: Vec<Instant>,
    skipped_until: Option<Instant>,
    /// Skipped before and not yet answered well since: one failure
    /// skips it again.
    probation: bool,
    /// `None` without an active check (or before its first verdict).
    check_up: Option<bool>,
    check_oks: u32,
    check_fails: u32,
}

/// The web upstreams' health and the choice among them.
#[derive(Debug, Clone)]
pub struct Upstreams {
    policy: Policy,
    entries: Vec<Entry>,
    changes: Vec<Change>,
}

impl Upstreams {
    /// `has_web[i]`: whether PBX `i` has a web server at all.
    pub fn new(policy: Policy, has_web: &[bool]) -> Upstreams {
        Upstreams {
            policy,
            entries: has_web
                .iter()
                .map(|&has_web| Entry {
                    has_web,
                    ..Entry::default()
                })
                .collect(),
            changes: Vec::new(),
        }
    }

    /// Where the next request goes: the first upstream whose PBX is up
    /// (`sip_up`) and that is available; failing that, the first whose PBX
    /// is up. `None`: no PBX with a web server is up.
    pub fn pick(&self, now: Instant, sip_up: &[bool]) -> Option<Upstream> {
        self.pick_other(now, sip_up, None)
    }

    /// [`pick`](Self::pick) among the upstreams other than `tried` (the one a
    /// request could not even connect to, for its one retry).
    pub fn pick_other(
        &self,
        now: Instant,
        sip_up: &[bool],
        tried: Option<Upstream>,
    ) -> Option<Upstream> {
        let live = || {
            self.entries.iter().enumerate().filter(|(i, e)| {
                e.has_web && sip_up.get(*i).copied().unwrap_or(false) && Some(*i) != tried
            })
        };
        live()
            .find(|(i, _)| self.state(now, *i) == State::Available)
            .or_else(|| live().next())
            .map(|(i, _)| i)
    }

    /// The upstream's state at `now`.
    pub fn state(&self, now: Instant, i: Upstream) -> State {
        let Some(e) = self.entries.get(i) else {
            return State::Available;
        };
        if e.check_up == Some(false) {
            return State::CheckFailed;
        }
        match e.skipped_until {
            Some(until) if now < until => State::Skipped { until },
            _ => State::Available,
        }
    }

    /// A proxied request to `i` ended with `outcome`.
    pub fn handle_outcome(&mut self, now: Instant, i: Upstream, outcome: Outcome) {
        let p = self.policy;
        let Some(e) = self.entries.get_mut(i) else {
            return;
        };
        match outcome {
            Outcome::Ok => {
                e.fails.clear();
                if e.probation || e.skipped_until.is_some() {
                    e.probation = false;
                    e.skipped_until = None;
                    self.changes.push(Change::Back { upstream: i });
                }
            }
            Outcome::Failed => {
                if p.max_fails == 0 {
                    return;
                }
                if e.skipped_until.is_some_and(|u| now < u) {
                    // Requests sent before the skip, answered after it.
                    return;
                }
                e.fails
                    .retain(|&t| now.saturating_duration_since(t) < p.fail_timeout);
                e.fails.push(now);
                let n = e.fails.len() as u32;
                if e.probation || n >= p.max_fails {
                    e.skipped_until = Some(now + p.fail_timeout);
                    e.probation = true;
                    e.fails.clear();
                    self.changes.push(Change::Skipped {
                        upstream: i,
                        fails: n,
                    });
                }
            }
        }
    }

    /// An active health check of `i` passed (`ok`) or failed.
    pub fn handle_check(&mut self, _now: Instant, i: Upstream, ok: bool) {
        let p = self.policy;
        let Some(e) = self.entries.get_mut(i) else {
            return;
        };
        if ok {
            e.check_oks += 1;
            e.check_fails = 0;
        } else {
            e.check_fails += 1;
            e.check_oks = 0;
        }
        let was_out = e.check_up == Some(false) || e.skipped_until.is_some() || e.probation;
        if ok && e.check_oks >= p.up_after {
            e.check_up = Some(true);
            e.skipped_until = None;
            e.probation = false;
            e.fails.clear();
            if was_out {
                self.changes.push(Change::Back { upstream: i });
            }
        } else if !ok && e.check_fails >= p.down_after && e.check_up != Some(false) {
            e.check_up = Some(false);
            self.changes.push(Change::CheckDown { upstream: i });
        }
    }

    /// What changed since the last call (for logs and counters).
    pub fn poll_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn two() -> (Upstreams, Instant) {
        (
            Upstreams::new(Policy::default(), &[true, true]),
            Instant::now(),
        )
    }

    #[test]
    fn picks_the_first_live_pbx_with_a_web_server() {
        let t = Instant::now();
        let u = Upstreams::new(Policy::default(), &[false, true, true]);
        assert_eq!(u.pick(t, &[true, true, true]), Some(1));
        assert_eq!(u.pick(t, &[true, false, true]), Some(2));
        assert_eq!(u.pick(t, &[true, false, false]), None);
        assert_eq!(u.pick(t, &[]), None);
    }

    #[test]
    fn max_fails_within_fail_timeout_skip_for_fail_timeout() {
        let (mut u, t) = two();
        let up = [true, true];
        u.handle_outcome(t, 0, Outcome::Failed);
        u.handle_outcome(t + ms(100), 0, Outcome::Failed);
        assert_eq!(u.pick(t + ms(100), &up), Some(0), "2 of 3 failures");
        u.handle_outcome(t + ms(200), 0, Outcome::Failed);
        assert_eq!(
            u.poll_changes(),
            [Change::Skipped {
                upstream: 0,
                fails: 3
            }]
        );
        assert_eq!(u.pick(t + ms(200), &up), Some(1));
        assert_eq!(
            u.state(t + ms(300), 0),
            State::Skipped {
                until: t + ms(10_200)
            }
        );
        // Late answers to requests sent before the skip do not extend it.
        u.handle_outcome(t + ms(500), 0, Outcome::Failed);
        assert_eq!(u.state(t + ms(10_200), 0), State::Available);
        assert_eq!(u.pick(t + ms(10_200), &up), Some(0));
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_skip() {
        let (mut u, t) = two();
        for k in 0..10 {
            u.handle_outcome(t + ms(6_000 * k), 0, Outcome::Failed);
        }
        assert_eq!(u.pick(t + ms(60_000), &[true, true]), Some(0));
        assert!(u.poll_changes().is_empty());
    }

    #[test]
    fn a_success_resets_the_count() {
        let (mut u, t) = two();
        u.handle_outcome(t, 0, Outcome::Failed);
        u.handle_outcome(t, 0, Outcome::Failed);
        u.handle_outcome(t, 0, Outcome::Ok);
        u.handle_outcome(t, 0, Outcome::Failed);
        assert_eq!(u.state(t, 0), State::Available);
    }

    #[test]
    fn after_the_skip_one_failure_skips_again_and_one_success_restores() {
        let (mut u, t) = two();
        for _ in 0..3 {
            u.handle_outcome(t, 0, Outcome::Failed);
        }
        let later = t + ms(10_000);
        assert_eq!(u.state(later, 0), State::Available);
        u.handle_outcome(later, 0, Outcome::Failed);
        assert!(matches!(u.state(later, 0), State::Skipped { .. }));
        let later = later + ms(10_000);
        u.handle_outcome(later, 0, Outcome::Ok);
        assert_eq!(u.poll_changes().last(), Some(&Change::Back { upstream: 0 }));
        u.handle_outcome(later, 0, Outcome::Failed);
        assert_eq!(u.state(later, 0), State::Available, "a fresh count");
    }

    #[test]
    fn every_candidate_skipped_still_tries_the_first_live_one() {
        let (mut u, t) = two();
        for i in 0..2 {
            for _ in 0..3 {
                u.handle_outcome(t, i, Outcome::Failed);
            }
        }
        assert_eq!(u.pick(t, &[true, true]), Some(0));
        assert_eq!(u.pick(t, &[false, true]), Some(1));
    }

    #[test]
    fn a_retry_goes_to_another_live_upstream_or_nowhere() {
        let (mut u, t) = two();
        assert_eq!(u.pick_other(t, &[true, true], Some(0)), Some(1));
        assert_eq!(u.pick_other(t, &[true, false], Some(0)), None);
        for _ in 0..3 {
            u.handle_outcome(t, 1, Outcome::Failed);
        }
        assert_eq!(
            u.pick_other(t, &[true, true], Some(0)),
            Some(1),
            "skipped, but the only other one"
        );
    }

    #[test]
    fn max_fails_zero_never_skips() {
        let t = Instant::now();
        let p = Policy {
            max_fails: 0,
            ..Policy::default()
        };
        let mut u = Upstreams::new(p, &[true, true]);
        for _ in 0..100 {
            u.handle_outcome(t, 0, Outcome::Failed);
        }
        assert_eq!(u.pick(t, &[true, true]), Some(0));
    }

    #[test]
    fn active_checks_take_out_and_bring_back() {
        let (mut u, t) = two();
        let up = [true, true];
        u.handle_check(t, 0, false);
        assert_eq!(u.pick(t, &up), Some(0), "one failed check of two");
        u.handle_check(t, 0, false);
        assert_eq!(u.state(t, 0), State::CheckFailed);
        assert_eq!(u.pick(t, &up), Some(1));
        u.handle_check(t, 0, false);
        assert_eq!(u.poll_changes(), [Change::CheckDown { upstream: 0 }]);
        // Traffic does not bring it back while its checks fail.
        u.handle_outcome(t + ms(60_000), 0, Outcome::Ok);
        assert_eq!(u.state(t + ms(60_000), 0), State::CheckFailed);
        u.handle_check(t, 0, true);
        assert_eq!(u.pick(t, &up), Some(0));
        assert_eq!(u.poll_changes(), [Change::Back { upstream: 0 }]);
    }

    #[test]
    fn a_passing_check_ends_a_passive_skip() {
        let (mut u, t) = two();
        for _ in 0..3 {
            u.handle_outcome(t, 0, Outcome::Failed);
        }
        assert_eq!(u.pick(t, &[true, true]), Some(1));
        u.handle_check(t + ms(500), 0, true);
        assert_eq!(u.pick(t + ms(500), &[true, true]), Some(0));
        assert_eq!(
            u.poll_changes(),
            [
                Change::Skipped {
                    upstream: 0,
                    fails: 3
                },
                Change::Back { upstream: 0 }
            ]
        );
    }
}
