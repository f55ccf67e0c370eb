//! The earliest time at which a rule could change its answer.

use super::*;

impl Node {
    /// The earliest time at which a rule could change its answer.
    pub(super) fn next_deadline(&self) -> Instant {
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
