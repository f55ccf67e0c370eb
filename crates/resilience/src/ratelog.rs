//! Rate-limited logging for input a stranger can send.
//!
//! A listener that logs one line per refused connection or packet hands an
//! attacker the disk: ten seconds of garbage wrote megabytes. Here each
//! refusal is counted under a short, fixed reason (`"tls handshake
//! failed"`). The first refusal of a reason in an interval is logged in full
//! (who, what exactly), the rest of that interval only counted; when the
//! interval ends with something suppressed, one summary line gives the
//! totals:
//!
//! ```text
//! replication: 4123 connections refused in the last 10 s (not the peer: 123, tls handshake failed: 4000)
//! ```
//!
//! So a flood costs at most one line per reason plus one summary per
//! interval, and the totals since start stay readable for the status page
//! and metrics ([`RateLog::totals`]).
//!
//! Use: one `Arc<RateLog>` per listener, `event(reason, || detail)` for each
//! refusal (the closure runs only when the line is written), and
//! [`RateLog::spawn_summaries`] once, so a flood that stops still gets its
//! summary line.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts refusals per reason and writes at most one line per reason and
/// one summary per interval.
pub struct RateLog {
    /// Prefix of every line (`"replication"`).
    subject: &'static str,
    /// What is counted, plural (`"connections refused"`).
    what: &'static str,
    interval: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    window_start: Instant,
    /// This interval's counts per reason (logged or not).
    window: BTreeMap<&'static str, u64>,
    /// Events counted but not written this interval.
    suppressed: u64,
    /// Since start, per reason.
    totals: BTreeMap<&'static str, u64>,
}

impl RateLog {
    pub fn new(subject: &'static str, what: &'static str, interval: Duration) -> RateLog {
        RateLog {
            subject,
            what,
            interval,
            inner: Mutex::new(Inner {
                window_start: Instant::now(),
                window: BTreeMap::new(),
                suppressed: 0,
                totals: BTreeMap::new(),
            }),
        }
    }

    /// Count one refusal; log `detail()` if it is the first of `reason` in
    /// this interval.
    pub fn event(&self, reason: &'static str, detail: impl FnOnce() -> String) {
        if let Some(line) = self.event_at(Instant::now(), reason, detail) {
            tracing::warn!("{line}");
        }
    }

    /// Write the summary if the interval is over (called by the summary
    /// task; also useful at shutdown).
    pub fn flush(&self) {
        if let Some(line) = self.flush_at(Instant::now()) {
            tracing::warn!("{line}");
        }
    }

    /// Refusals since start, per reason.
    pub fn totals(&self) -> BTreeMap<&'static str, u64> {
        self.lock().totals.clone()
    }

    /// The status-page form: `{"total": N, "by_reason": {...}}`.
    pub fn totals_doc(&self) -> crate::status::RateTotals {
        let t = self.totals();
        crate::status::RateTotals {
            total: t.values().sum(),
            by_reason: t.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }

    /// Write summaries every interval for as long as the log is alive.
    pub fn spawn_summaries(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = self.interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(log) => log.flush(),
                    None => break,
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`event`](Self::event) at a given time: the line to write, if any
    /// (a summary of the last interval comes first when one is due).
    fn event_at(
        &self,
        now: Instant,
        reason: &'static str,
        detail: impl FnOnce() -> String,
    ) -> Option<String> {
        let summary = self.flush_at(now);
        let mut g = self.lock();
        *g.totals.entry(reason).or_default() += 1;
        let n = g.window.entry(reason).or_default();
        *n += 1;
        let first = *n == 1;
        if !first {
            g.suppressed += 1;
        }
        drop(g);
        let line = first.then(|| format!("{}: {}", self.subject, detail()));
        match (summary, line) {
            (Some(s), Some(l)) => Some(format!("{s}\n{l}")),
            (s, l) => s.or(l),
        }
    }

    /// Close the interval if it is over: the summary line if anything was
    /// suppressed in it.
    fn flush_at(&self, now: Instant) -> Option<String> {
        let mut g = self.lock();
        if now.saturating_duration_since(g.window_start) < self.interval {
            return None;
        }
        let window = std::mem::take(&mut g.window);
        let suppressed = std::mem::take(&mut g.suppressed);
        g.window_start = now;
        drop(g);
        if suppressed == 0 {
            return None;
        }
        let total: u64 = window.values().sum();
        let parts: Vec<String> = window.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        Some(format!(
            "{}: {total} {} in the last {} s ({})",
            self.subject,
            self.what,
            self.interval.as_secs().max(1),
            parts.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_then_a_summary() {
        let log = RateLog::new(
            "replication",
            "connections refused",
            Duration::from_secs(10),
        );
        let t0 = log.lock().window_start;
        let mut lines = Vec::new();
        for i in 0..1000u32 {
            let reason = if i % 10 == 0 {
                "not the peer"
            } else {
                "tls handshake failed"
            };
            let at = t0 + Duration::from_millis(u64::from(i));
            lines.extend(log.event_at(at, reason, || format!("refused {i}")));
        }
        // The first of each reason, nothing else.
        assert_eq!(
            lines,
            vec!["replication: refused 0", "replication: refused 1"]
        );
        assert_eq!(log.flush_at(t0 + Duration::from_secs(5)), None);
        let s = log.flush_at(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(
            s,
            "replication: 1000 connections refused in the last 10 s \
             (not the peer: 100, tls handshake failed: 900)"
        );
        // A new interval: the first of a reason is written again; a quiet
        // interval (nothing suppressed) writes no summary.
        let later = t0 + Duration::from_secs(11);
        let l = log.event_at(later, "not the peer", || "again".into());
        assert_eq!(l.as_deref(), Some("replication: again"));
        assert_eq!(log.flush_at(t0 + Duration::from_secs(30)), None);
        assert_eq!(log.totals()["tls handshake failed"], 900);
        assert_eq!(log.totals()["not the peer"], 101);
        assert_eq!(log.totals_doc().total, 1001);
    }

    #[test]
    fn a_due_summary_comes_with_the_next_event() {
        let log = RateLog::new("edge", "packets dropped", Duration::from_secs(1));
        let t0 = log.lock().window_start;
        log.event_at(t0, "garbage", String::new);
        log.event_at(t0, "garbage", String::new);
        let l = log
            .event_at(t0 + Duration::from_secs(2), "garbage", || "x".into())
            .unwrap();
        assert_eq!(
            l,
            "edge: 2 packets dropped in the last 1 s (garbage: 2)\nedge: x"
        );
    }
}
