//! The disabled-node guard: a node configured `type = "disabled"` serves
//! alone, so it must not serve beside a pair of its own cluster. Turning one
//! member of a live pair into `disabled` would otherwise run two PBXs: the
//! disabled node starts its own, stops sending heartbeats, and its former
//! peer takes over too.
//!
//! The rule: a disabled node listens on its heartbeat socket; while a frame
//! of a Main or Standby of its cluster (signed with its cluster key) has
//! arrived within `failover_after`, it keeps its services stopped (and stops
//! them if they run) and says why. At start it listens for `startup_wait`
//! before it serves. A disabled node never sends heartbeats, so it cannot
//! confirm a sender's boot (the replay guard's challenge): a frame counts on
//! its signature alone. A replayed frame can therefore only make it hold its
//! services stopped for `failover_after`, never make it serve.

use super::*;

/// What a disabled node knows of the pair members it hears.
#[derive(Debug, Default)]
pub(super) struct Guard {
    /// The last pair member heard: when, and its description.
    heard: Option<(Instant, String)>,
    /// The guard holds the services stopped (for events on a change).
    holding: bool,
    /// Services were stopped once at the first hold after start: they may
    /// have been left running by a daemon that ran before.
    stopped_once: bool,
}

impl Node {
    /// A heartbeat reaching a disabled node: only its signature and its
    /// sender's type count.
    pub(super) fn guard_datagram(&mut self, bytes: &[u8]) -> Result<(), InputError> {
        let f = heartbeat::decode(bytes, &self.s.key).map_err(|r| self.reject(r))?;
        if f.name == self.s.name {
            return Err(self.reject(Reject::FromSelf));
        }
        if f.node_type == NodeType::Disabled {
            return Err(self.reject(Reject::UnknownSender));
        }
        let what = format!("{} {} ({}, {} mode)", f.node_type, f.name, f.status, f.mode);
        self.guard.heard = Some((self.now, what));
        Ok(())
    }

    fn member_heard(&self) -> Option<&str> {
        self.guard
            .heard
            .as_ref()
            .filter(|(t, _)| self.now - *t < self.s.failover_after)
            .map(|(_, w)| w.as_str())
    }

    fn guard_reason(what: &str) -> String {
        format!(
            "{what} of this node's cluster is heard: a disabled node does not run its services beside a pair member (two PBXs would serve); leave high availability on both nodes (README: leaving high availability) or give this node another cluster key"
        )
    }

    /// Disabled nodes: serve alone, unless a pair member is heard.
    pub(super) fn decide_disabled(&mut self) {
        if let Some(what) = self.member_heard().map(str::to_owned) {
            let why = Self::guard_reason(&what);
            if !self.guard.holding {
                self.guard.holding = true;
                self.event(EventKind::DisabledGuard { holding: true }, why.clone());
            }
            if self.status.claims() {
                self.begin_stop(why);
            } else if self.status == Status::Inactive
                && !self.guard.stopped_once
                && self.service_op.is_none()
            {
                // Services a previous daemon left running are unknown to
                // this one: stop them (stopping stopped services is a no-op).
                self.guard.stopped_once = true;
                let id = self.action(ActionKind::StopServices);
                self.service_op = Some((id, ServiceOp::Stop));
                self.set_status(Status::Stopping, why);
            }
            return;
        }
        if self.guard.holding {
            self.guard.holding = false;
            self.event(
                EventKind::DisabledGuard { holding: false },
                format!(
                    "no Main or Standby of this cluster heard for {}",
                    human(self.s.failover_after)
                ),
            );
        }
        if self.now - self.started_at >= self.s.startup_wait {
            self.decide_wanted(true, "high availability disabled: this node serves alone");
        }
    }

    pub(super) fn guard_deadline(&self) -> Option<Instant> {
        if self.s.node_type != NodeType::Disabled {
            return None;
        }
        [
            self.guard
                .heard
                .as_ref()
                .map(|(t, _)| *t + self.s.failover_after),
            Some(self.started_at + self.s.startup_wait),
        ]
        .into_iter()
        .flatten()
        .filter(|&t| t > self.now)
        .min()
    }

    /// For the status page.
    pub(super) fn guard_text(&self) -> Option<String> {
        if self.s.node_type != NodeType::Disabled {
            return None;
        }
        if let Some(what) = self.member_heard() {
            return Some(Self::guard_reason(what));
        }
        (self.now - self.started_at < self.s.startup_wait && !self.status.claims()).then(|| {
            format!(
                "listening {} for a Main or Standby of this cluster before serving alone",
                human(self.s.startup_wait)
            )
        })
    }
}
