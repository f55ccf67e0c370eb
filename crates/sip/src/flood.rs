//! Per-source rate limits on what reaches the relay, Kamailio's pike
//! module's way: messages are counted per source IP in a window
//! (`sampling_time_unit`); a source over the threshold
//! (`reqs_density_per_unit`) has the rest of its messages in that window
//! dropped, and stays blocked while it keeps sending over the threshold;
//! a source not seen for `forget_after` (`remove_latency`) is forgotten.
//!
//! Sans-IO: time is an argument. The table of sources is bounded: it is
//! kept as two generations (the current one and the previous one); a
//! source found in the previous generation moves to the current one, and
//! when the current generation is full or `forget_after` has passed, the
//! previous one is dropped whole. So a flood of distinct (spoofed) source
//! addresses costs at most `max_sources` entries and pushes out only
//! sources that have been silent since the last turn, never an active
//! flooder's count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits, from the edge's `[limits]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimits {
    /// Length of a counting window (pike's `sampling_time_unit`).
    pub window: Duration,
    /// Messages one source may send in a window (pike's
    /// `reqs_density_per_unit`); the rest of the window is dropped.
    pub max_per_window: u32,
    /// A source silent this long is forgotten (pike's `remove_latency`).
    pub forget_after: Duration,
    /// Most sources remembered at once.
    pub max_sources: usize,
}

impl Default for FloodLimits {
    fn default() -> Self {
        FloodLimits {
            window: Duration::from_secs(2),
            max_per_window: 100,
            forget_after: Duration::from_secs(120),
            max_sources: 100_000,
        }
    }
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Over the source's limit: drop it (and count it).
    Drop,
    /// Over the limit, and the first drop of this source in this window:
    /// drop it and say so in the log (one line per source per window).
    DropAndLog,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    window_start: Instant,
    count: u32,
}

/// The per-source counters.
#[derive(Debug)]
pub struct FloodGuard {
    limits: FloodLimits,
    current: HashMap<IpAddr, Source>,
    previous: HashMap<IpAddr, Source>,
    turned_at: Instant,
}

impl FloodGuard {
    pub fn new(limits: FloodLimits, now: Instant) -> FloodGuard {
        FloodGuard {
            limits,
            current: HashMap::new(),
            previous: HashMap::new(),
            turned_at: now,
        }
    }

    /// One generation holds at most half the cap.
    fn generation_cap(&self) -> usize {
        (self.limits.max_sources / 2).max(1)
    }

    /// Count one message from `ip` at `now`.
    pub fn check(&mut self, now: Instant, ip: IpAddr) -> Verdict {
        if now.saturating_duration_since(self.turned_at) >= self.limits.forget_after {
            self.turn(now);
        }
        let src = match self.current.get_mut(&ip) {
            Some(s) => s,
            None => {
                let moved = self.previous.remove(&ip);
                if self.current.len() >= self.generation_cap() {
                    self.turn(now);
                }
                self.current.entry(ip).or_insert(moved.unwrap_or(Source {
                    window_start: now,
                    count: 0,
                }))
            }
        };
        if now.saturating_duration_since(src.window_start) >= self.limits.window {
            src.window_start = now;
            src.count = 0;
        }
        src.count = src.count.saturating_add(1);
        match src.count {
            n if n <= self.limits.max_per_window => Verdict::Pass,
            n if n == self.limits.max_per_window.saturating_add(1) => Verdict::DropAndLog,
            _ => Verdict::Drop,
        }
    }

    /// Sources remembered now (both generations).
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn turn(&mut self, now: Instant) {
        self.previous = std::mem::take(&mut self.current);
        self.turned_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn limits() -> FloodLimits {
        FloodLimits {
            window: Duration::from_secs(2),
            max_per_window: 10,
            forget_after: Duration::from_secs(120),
            max_sources: 1000,
        }
    }

    #[test]
    fn over_the_threshold_is_dropped_and_logged_once_per_window() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new(limits(), t0);
        let mut seen = Vec::new();
        for i in 0..30u64 {
            seen.push(g.check(t0 + Duration::from_millis(i * 10), ip(1)));
        }
        assert!(seen[..10].iter().all(|v| *v == Verdict::Pass));
        assert_eq!(seen[10], Verdict::DropAndLog);
        assert!(seen[11..].iter().all(|v| *v == Verdict::Drop));
        // Another source is not affected.
        assert_eq!(g.check(t0, ip(2)), Verdict::Pass);
        // The next window starts afresh, with one log line again if over.
        let t1 = t0 + Duration::from_secs(2);
        for _ in 0..10 {
            assert_eq!(g.check(t1, ip(1)), Verdict::Pass);
        }
        assert_eq!(g.check(t1, ip(1)), Verdict::DropAndLog);
        assert_eq!(g.check(t1, ip(1)), Verdict::Drop);
    }

    #[test]
    fn a_steady_source_under_the_threshold_always_passes() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new(limits(), t0);
        // 4 per second, 8 per window, for ten minutes.
        for i in 0..2400u64 {
            let v = g.check(t0 + Duration::from_millis(i * 250), ip(1));
            assert_eq!(v, Verdict::Pass, "message {i}");
        }
    }

    #[test]
    fn distinct_sources_never_grow_the_table_past_the_cap() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new(limits(), t0);
        let flooder = ip(0);
        for i in 1..100_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i));
            g.check(now, ip(i));
            assert!(g.len() <= 1000, "{} sources at {i}", g.len());
            // The flooder, active all along, keeps its count.
            let v = g.check(now, flooder);
            if i > 10 {
                assert_ne!(v, Verdict::Pass, "flooder passed at {i}");
            }
        }
    }

    #[test]
    fn silent_sources_are_forgotten() {
        let t0 = Instant::now();
        let mut g = FloodGuard::new(limits(), t0);
        for i in 0..100 {
            g.check(t0, ip(i));
        }
        g.check(t0 + Duration::from_secs(121), ip(500));
        g.check(t0 + Duration::from_secs(242), ip(500));
        assert_eq!(g.len(), 1);
    }
}
