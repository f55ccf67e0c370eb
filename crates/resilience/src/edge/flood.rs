//! The relay task's intake filter: every message from a phone's side (UDP
//! datagram or framed TCP/TLS message) passes the per-source rate limit
//! ([`resilience_sip::flood`]) before it is parsed; the PBXs' addresses are
//! exempt. What is over is dropped (the caller counts it as `over_rate`); one line per source per
//! window says which source, at most [`LINES_PER_WINDOW`] such lines per
//! window, the rest summed up in one line.

use resilience_core::config::edge::LimitsSection;
use resilience_sip::flood::{FloodGuard, FloodLimits, Verdict};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most "blocking" lines written per window; further sources are counted.
const LINES_PER_WINDOW: u32 = 10;

pub struct Flood {
    guard: FloodGuard,
    exempt: Vec<SocketAddr>,
    limits: FloodLimits,
    lines_since: Instant,
    lines: u32,
    unsaid: u32,
}

pub fn limits(l: &LimitsSection) -> FloodLimits {
    FloodLimits {
        window: l.window,
        max_per_window: l.max_per_window,
        forget_after: l.forget_after,
        max_sources: l.max_sources,
    }
}

impl Flood {
    pub fn new(l: &LimitsSection, exempt: Vec<SocketAddr>, now: Instant) -> Flood {
        let limits = limits(l);
        Flood {
            guard: FloodGuard::new(limits, now),
            exempt,
            limits,
            lines_since: now,
            lines: 0,
            unsaid: 0,
        }
    }

    /// Whether a message from `from` goes on to the relay.
    pub fn admit(&mut self, now: Instant, from: SocketAddr) -> bool {
        if self.exempt.contains(&from) {
            return true;
        }
        let verdict = self.guard.check(now, from.ip());
        if verdict == Verdict::Pass {
            return true;
        }
        if verdict == Verdict::DropAndLog {
            self.say(now, from);
        }
        false
    }

    fn say(&mut self, now: Instant, from: SocketAddr) {
        let window = self.limits.window.max(Duration::from_secs(1));
        if now.saturating_duration_since(self.lines_since) >= window {
            if self.unsaid > 0 {
                tracing::warn!(
                    "pike: {} more sources went over the rate limit in the last {:?}",
                    self.unsaid,
                    window
                );
            }
            self.lines_since = now;
            self.lines = 0;
            self.unsaid = 0;
        }
        if self.lines < LINES_PER_WINDOW {
            self.lines += 1;
            tracing::warn!(
                "pike: blocking {}: over {} messages in {:?}, dropped for the rest of the window",
                from.ip(),
                self.limits.max_per_window,
                self.limits.window
            );
        } else {
            self.unsaid += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pbx_is_never_limited_and_a_phone_is() {
        let l = LimitsSection {
            max_per_window: 5,
            ..LimitsSection::default()
        };
        let pbx: SocketAddr = "10.0.0.2:5060".parse().unwrap();
        let phone: SocketAddr = "10.0.0.9:5060".parse().unwrap();
        let now = Instant::now();
        let mut f = Flood::new(&l, vec![pbx], now);
        assert!((0..1000).all(|_| f.admit(now, pbx)));
        assert_eq!((0..10).filter(|_| f.admit(now, phone)).count(), 5);
        // The PBX's address with another port is a stranger.
        let other: SocketAddr = "10.0.0.2:5999".parse().unwrap();
        assert_eq!((0..10).filter(|_| f.admit(now, other)).count(), 5);
    }
}
