//! The Main's failback request (`WANT_ACTIVE`) per policy, and why it
//! waits. The data gate (`data.rs`) holds the request, never the start.

use super::*;

/// Why the Main waits before asking for the service back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailbackWait {
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
    pub(super) fn text(self, node: &Node) -> String {
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

impl Node {
    /// The Main's failback request flag, per policy.
    pub(super) fn update_failback_request(&mut self) {
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

    pub(super) fn failback_reason(&self) -> String {
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
    pub(super) fn failback_decision(&self) -> (bool, Option<FailbackWait>) {
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
    pub(super) fn peer_leaving(&self) -> bool {
        self.s.node_type == NodeType::Main
            && self.admin != Some(AdminChoice::Stop)
            && self
                .peer_frame()
                .is_some_and(|f| f.node_type == NodeType::Standby && f.flags.has(Flags::LEAVING))
    }

    pub(super) fn stable_since(&self) -> Instant {
        self.peer
            .heard_since()
            .unwrap_or(self.now)
            .max(self.started_at)
    }
}
