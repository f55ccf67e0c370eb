//! The Standby's drain before it hands the service back: active calls are
//! counted until none is left or the drain times out.

use super::*;

#[derive(Debug, Clone)]
pub(super) struct Drain {
    pub(super) deadline: Instant,
    pub(super) next_poll: Instant,
    pub(super) query: Option<ActionId>,
    /// The receiver's boot when it last was ready (`switchover.rs`:
    /// a receiver's restart does not cancel the drain).
    pub(super) peer_boot: Option<u64>,
    /// Since when a restarted receiver has not been ready again.
    pub(super) grace: Option<Instant>,
}

impl Node {
    /// Why the Standby should hand the service back now, if it should.
    pub(super) fn handover_request(&self) -> Option<String> {
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

    pub(super) fn begin_drain(&mut self, why: String) {
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

    pub(super) fn continue_drain(&mut self) {
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
}
