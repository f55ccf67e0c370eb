//! When an Inactive node may start (automatic mode), and when an Active
//! node whose PBX is down hands the service over.

use super::*;

impl Node {
    /// Why this node may start now (automatic mode), if it may.
    pub(super) fn may_start(&mut self) -> Option<String> {
        if self.admin == Some(AdminChoice::Stop) || self.retry_at.is_some_and(|t| self.now < t) {
            return None;
        }
        self.retry_at = None;
        let silent_for = self.now
            - self
                .peer
                .last_heard()
                .unwrap_or(self.started_at)
                .max(self.started_at);
        match (self.s.node_type, self.peer_frame()) {
            (NodeType::Main, Some(f)) => {
                // Switched away, the Main leaves the service to a Standby
                // that does not yield (it takes it on the "main yields" rule).
                // A Standby adopting the services its restarted daemon left
                // running reports Inactive but serves: never start on that.
                let adopting = f.flags.has(Flags::ADOPTING);
                let ready = f.status == Status::Inactive
                    && !adopting
                    && f.flags.has(Flags::HEARS_PEER)
                    && ((self.fault.is_none() && !self.switched_away())
                        || f.flags.has(Flags::YIELDING));
                // A Standby that cannot hear us (one-way cut) would take over
                // by itself if it could; when it has not, someone must serve.
                let deaf_for = self.peer.deaf_since().map(|t| self.now - t);
                let deaf = f.status == Status::Inactive
                    && !adopting
                    && deaf_for.is_some_and(|d| d >= self.s.failover_after + self.s.startup_wait);
                if let Some(why) = self.may_start_alongside(f) {
                    Some(why)
                } else if ready && f.flags.has(Flags::LEAVING) {
                    // Not held for the kept data: the data gate holds the
                    // request, which the leaving Standby waits for while it
                    // serves (`lifecycle.rs`); once it has stopped, someone
                    // must serve.
                    Some(format!(
                        "standby {} is leaving (its daemon is stopping) and has stopped its services",
                        self.peer_label()
                    ))
                } else if ready {
                    Some(format!("standby {} is inactive", self.peer_label()))
                } else if deaf {
                    Some(format!(
                        "standby {} is inactive and has not heard this node for {:.1}s",
                        self.peer_label(),
                        deaf_for.unwrap_or_default().as_secs_f64()
                    ))
                } else {
                    None
                }
            }
            (NodeType::Main, None) => (silent_for >= self.s.startup_wait).then(|| {
                format!(
                    "standby {} not heard for {:.1}s",
                    self.peer_label(),
                    silent_for.as_secs_f64()
                )
            }),
            (_, Some(f)) => {
                // A Main adopting the services its restarted daemon left
                // running reports Inactive but serves: never start on that.
                let yields = f.status == Status::Inactive
                    && !f.flags.has(Flags::ADOPTING)
                    && f.flags.has(Flags::YIELDING)
                    && f.flags.has(Flags::HEARS_PEER)
                    && self.fault.is_none();
                yields.then(|| {
                    if f.flags.has(Flags::LEAVING) {
                        format!(
                            "main {} is leaving (its daemon is stopping) and has stopped its services",
                            self.peer_label()
                        )
                    } else {
                        format!(
                            "main {} yields (stopped or switched over by an admin, or faulted)",
                            self.peer_label()
                        )
                    }
                })
            }
            (_, None) => {
                if silent_for < self.s.failover_after {
                    return None;
                }
                if self.s.arbiters && !self.arbiter_ok {
                    if !self.arbiter_warned {
                        self.arbiter_warned = true;
                        self.event(
                            EventKind::FailoverBlocked,
                            format!(
                                "main {} silent for {:.1}s but no arbiter answers: this node may be the one cut off", self.peer_label(),
                                silent_for.as_secs_f64()
                            ),
                        );
                    }
                    return None;
                }
                Some(format!(
                    "main {} silent for {:.1}s",
                    self.peer_label(),
                    silent_for.as_secs_f64()
                ))
            }
        }
    }

    /// An Active node whose PBX is down hands over to a ready peer.
    pub(super) fn should_release(&self) -> Option<String> {
        let since = self.pbx_down_since?;
        if self.now - since < self.s.failover_after {
            return None;
        }
        let f = self.peer_frame()?;
        // A Standby draining beside this Main (`failback.new_calls =
        // "main"`) still runs: it takes the new calls back at once.
        let ready = (f.status == Status::Inactive || self.planned_overlap(f))
            && f.flags.has(Flags::HEARS_PEER)
            && !f.flags.has(Flags::YIELDING);
        ready.then(|| {
            format!(
                "local PBX down for {:.1}s; handing over to {}",
                (self.now - since).as_secs_f64(),
                f.name
            )
        })
    }
}
