//! Planned switchover: an admin moves the service to the peer now, after a
//! drain, and back later by the same command on either node. No failover
//! timer is involved: the nodes hear each other throughout.
//!
//! Built only from what the heartbeat already carries (no new flag: a new
//! flag is a malformed frame to a node of the previous version, which would
//! then hear its peer as silent and fail over during a rolling upgrade):
//!
//! - **The Active node hands over**: it drains (status Draining, calls
//!   counted as for failback) while the peer stays ready, then stops. A Main
//!   that hands over keeps a persisted hold ([`AdminChoice::SwitchedAway`])
//!   and yields until the Standby serves, so the Standby starts on its "main
//!   yields" rule and the Main's failback policy does not take the service
//!   back; the Main still starts if the Standby goes silent or yields (the
//!   hold only suppresses failback, never failover: once the Standby serves
//!   the Main stops yielding, so a Standby whose PBX fails finds it ready).
//! - **The Inactive node asks**: a Main by its failback request
//!   (`WANT_ACTIVE`: the Standby drains as for failback); a Standby by
//!   setting `WANT_ACTIVE` too, which a Main of this version reads as "hand
//!   over to me" (an older Main ignores it, and the ask expires with an
//!   event).
//! - **A Standby hands back to a switched-away Main** by draining: no other
//!   rule makes a Standby drain while its Main yields, so the Main reads it
//!   as the end of its hold, stops yielding, and starts once the Standby has
//!   stopped. A Main held by `services stop` (or faulted) keeps yielding: the
//!   Standby then gives up after `failover_after` and keeps serving.

use super::*;

/// A switchover in progress on this node.
#[derive(Debug, Default)]
pub(super) struct Switch {
    /// This Active node hands the service over by an admin's switchover
    /// (since; the Draining status carries the drain).
    handing: Option<Instant>,
    /// This Inactive Standby asks its Main to hand over (since the last
    /// sign of progress).
    asking: Option<Instant>,
    /// This Main adopted its services after a restart during its own
    /// switchover's drain: it resumes the switchover once the Standby is
    /// ready (since the adoption).
    resume: Option<Instant>,
}

impl Switch {
    /// The Standby's ask, sent as `WANT_ACTIVE`.
    pub(super) fn asking(&self) -> bool {
        self.asking.is_some()
    }
}

impl Node {
    /// `Command::Switchover`: Ok(what happens), or Err(why it is refused).
    pub(super) fn switchover_command(&mut self) -> Result<String, String> {
        let peer = self.peer_label().to_string();
        if self.s.peer_name.is_none() {
            return Err("no peer is configured".into());
        }
        if self.s.mode == Mode::Manual {
            return Err(format!(
                "manual mode: stop services on this node, then start them on {peer} (or the other way round)"
            ));
        }
        match self.status {
            Status::Active => {
                if let Some(why) = self.peer_unready(true) {
                    return Err(why);
                }
                let drain = self.s.drain.map_or("no drain configured".into(), |p| {
                    format!("once active calls end (at most {})", human(p.timeout))
                });
                self.begin_handover(format!("an admin asked for a switchover to {peer}"));
                Ok(format!("handing the service over to {peer} {drain}"))
            }
            Status::Inactive => {
                if self.pbx == PbxHealth::Down {
                    return Err("this node's PBX is down: it could not serve".into());
                }
                if let Some(why) = self.peer_unready(false) {
                    return Err(why);
                }
                // The admin wants the service here: an own hold or fault
                // would only make the peer refuse.
                if self.admin.is_some() {
                    self.admin = None;
                    self.persist();
                }
                self.clear_fault();
                match self.s.node_type {
                    NodeType::Main => {
                        self.failback_now = true;
                        Ok(format!(
                            "asking {peer} to hand over now (it drains its calls first)"
                        ))
                    }
                    _ => {
                        self.switch.asking = Some(self.now);
                        self.send_heartbeat();
                        Ok(format!(
                            "asking {peer} to hand over now (it drains its calls first)"
                        ))
                    }
                }
            }
            Status::Draining if self.switch.handing.is_some() => Err(format!(
                "a switchover to {peer} is already under way (draining)"
            )),
            s => Err(format!(
                "this node is {s}: wait until it is active or inactive"
            )),
        }
    }

    /// Why the peer cannot take the service (`handing`: this node is the
    /// Active one) or give it (otherwise), if it cannot.
    fn peer_unready(&self, handing: bool) -> Option<String> {
        let name = self.peer_label();
        let Some(f) = self.peer_frame() else {
            return Some(match self.peer.last_heard() {
                Some(t) => format!(
                    "peer {name} is not heard (last heartbeat {:.1}s ago)",
                    (self.now - t).as_secs_f64()
                ),
                None => format!("peer {name} is not heard (no heartbeat since this node started)"),
            });
        };
        if f.mode != Mode::Automatic {
            return Some(format!("peer {name} runs in {} mode", f.mode));
        }
        if f.node_type == self.s.node_type || f.node_type == NodeType::Disabled {
            return Some(format!(
                "peer {name} runs as {}, this node as {}",
                f.node_type, self.s.node_type
            ));
        }
        if !f.flags.has(Flags::HEARS_PEER) {
            return Some(format!("peer {name} does not hear this node"));
        }
        if f.pbx == PbxHealth::Down {
            return Some(format!("peer {name} reports its PBX down"));
        }
        if handing {
            if f.status != Status::Inactive {
                return Some(format!("peer {name} is {}, not inactive", f.status));
            }
            // A Standby may hand back to a Main that yields after a
            // switchover: the Main drops that hold when it sees the drain
            // (bounded in `continue_handover`).
            if f.flags.has(Flags::YIELDING) && self.s.node_type == NodeType::Main {
                return Some(format!("peer {name} yields (held by an admin or faulted)"));
            }
        } else {
            match f.status {
                Status::Active => {}
                Status::Draining => {
                    return Some(format!("peer {name} is already handing over (draining)"))
                }
                s => return Some(format!("peer {name} is {s}, not active")),
            }
        }
        None
    }

    pub(super) fn begin_handover(&mut self, why: String) {
        self.switch.handing = Some(self.now);
        self.switch.asking = None;
        if self.s.node_type == NodeType::Main {
            self.admin = Some(AdminChoice::SwitchedAway);
            self.persist();
        }
        let (deadline, wait) = match self.s.drain {
            Some(p) => (
                self.now + p.timeout,
                format!("waiting up to {} for active calls to end", human(p.timeout)),
            ),
            None => (self.now, "no drain configured".into()),
        };
        self.drain = Some(Drain {
            deadline,
            next_poll: self.now,
            query: None,
            peer_boot: self.peer_frame().map(|f| f.boot),
            grace: None,
        });
        self.calls = None;
        self.event(EventKind::DrainStarted, format!("{why}; {wait}"));
        self.set_status(Status::Draining, why);
        self.continue_handover();
    }

    /// Whether this node's drain is a switchover's (else failback's).
    pub(super) fn handing_over(&self) -> bool {
        self.switch.handing.is_some()
    }

    /// Draining for a switchover: stop once calls have ended (or the drain
    /// timed out) and the peer is ready; give up if the peer stops being so.
    pub(super) fn continue_handover(&mut self) {
        let Some(since) = self.switch.handing else {
            return;
        };
        let peer = self.peer_label().to_string();
        if let Some(why) = self.peer_unready(true) {
            if !self.receiver_restarting() {
                self.cancel_handover(why);
            }
            return;
        }
        self.receiver_ready();
        let peer_yields = self
            .peer_frame()
            .is_some_and(|f| f.flags.has(Flags::YIELDING));
        if peer_yields && self.now - since >= self.s.failover_after {
            self.cancel_handover(format!(
                "main {peer} still yields after {:.1}s: it is held by an admin (`resilience services stop`) or faulted; release it first",
                (self.now - since).as_secs_f64()
            ));
            return;
        }
        let Some(d) = self.drain.as_ref() else {
            return;
        };
        let done = if self.calls == Some(0) {
            Some("no active calls left".to_string())
        } else if self.now >= d.deadline {
            Some(match (self.s.drain, self.calls) {
                (None, _) => "no drain configured".into(),
                (_, Some(n)) => format!("drain timed out with {n} active calls"),
                (_, None) => "drain timed out with an unknown number of active calls".into(),
            })
        } else {
            None
        };
        match done {
            // Wait for a switched-away Main to drop its hold (bounded above).
            Some(_) if peer_yields => {}
            Some(why) => {
                self.event(
                    EventKind::Switchover,
                    format!("handing the service to {peer}: {why}"),
                );
                self.begin_stop(format!("switchover to {peer}: {why}"));
                return;
            }
            None => {}
        }
        let d = self.drain.as_ref().expect("checked above");
        if d.query.is_none() && self.now >= d.next_poll && self.now < d.deadline {
            let poll = self.s.drain.map_or(Duration::from_secs(1), |p| p.poll);
            let id = self.action(ActionKind::CountActiveCalls);
            self.count_ids.push(id);
            if let Some(d) = self.drain.as_mut() {
                d.query = Some(id);
                d.next_poll = self.now + poll;
            }
        }
    }

    fn cancel_handover(&mut self, why: String) {
        let peer = self.peer_label().to_string();
        self.switch.handing = None;
        self.drain = None;
        if self.admin == Some(AdminChoice::SwitchedAway) {
            self.admin = None;
            self.persist();
        }
        self.event(
            EventKind::SwitchoverCancelled,
            format!("switchover to {peer} cancelled: {why}"),
        );
        self.set_status(
            Status::Active,
            "switchover cancelled; this node keeps the service".into(),
        );
    }

    /// The receiver is ready: remember its boot, end any grace.
    pub(super) fn receiver_ready(&mut self) {
        let boot = self.peer_frame().map(|f| f.boot);
        if let Some(d) = self.drain.as_mut() {
            d.peer_boot = boot;
            d.grace = None;
        }
    }

    /// The receiver of a drain (the Main in failback, the peer in a
    /// switchover) restarted during it, as a `SIGHUP` upgrade does: its
    /// new boot's first frames neither hear this node nor ask again yet, and
    /// reading them as "no longer ready" would cancel the handover the admin
    /// or the policy asked for. The drain holds (it does not stop: the
    /// receiver may not start yet) for up to `failover_after`, then is
    /// cancelled as before.
    pub(super) fn receiver_restarting(&mut self) -> bool {
        let Some((boot, occupies)) = self.peer_frame().map(|f| (f.boot, f.status.occupies()))
        else {
            return false;
        };
        let (now, limit) = (self.now, self.s.failover_after);
        let Some(d) = self.drain.as_mut() else {
            return false;
        };
        if occupies || d.peer_boot.is_none_or(|b| b == boot) {
            return false;
        }
        let since = *d.grace.get_or_insert(now);
        now - since < limit
    }

    /// A Main restarted mid-switchover adopted its services with the
    /// switchover hold persisted: resume the switchover (the admin asked for
    /// it) when the Standby can take the service, else drop the hold with
    /// an event, rather than serve while yielding.
    pub(super) fn resume_after_restart(&mut self) {
        if !self.switched_away() {
            return;
        }
        if self.peer_frame().is_none() {
            self.drop_switch_hold(format!(
                "{} is not heard after this node's daemon restarted",
                self.peer_label()
            ));
        } else {
            self.switch.resume = Some(self.now);
        }
    }

    /// While Active after such a restart: hand over once the peer is ready,
    /// give up after `failover_after`. True when it acted.
    pub(super) fn resume_tick(&mut self) -> bool {
        let Some(since) = self.switch.resume else {
            return false;
        };
        if self.status != Status::Active || !self.switched_away() {
            self.switch.resume = None;
            return false;
        }
        match self.peer_unready(true) {
            None => {
                self.switch.resume = None;
                let peer = self.peer_label().to_string();
                self.begin_handover(format!(
                    "resuming the switchover to {peer} an admin asked for before this node's daemon restarted"
                ));
                true
            }
            Some(why) if self.now - since >= self.s.failover_after => {
                self.switch.resume = None;
                self.drop_switch_hold(why);
                false
            }
            Some(_) => false,
        }
    }

    fn drop_switch_hold(&mut self, why: String) {
        let peer = self.peer_label().to_string();
        self.admin = None;
        self.persist();
        self.event(
            EventKind::SwitchoverCancelled,
            format!(
                "switchover to {peer} cancelled: {why}; this node keeps the services it adopted"
            ),
        );
        self.send_heartbeat();
    }

    /// Called when services stop or start: a handover is over either way.
    pub(super) fn end_handover(&mut self) {
        self.switch.handing = None;
    }

    /// The Main, Active: why its Standby asks for the service, if it does.
    pub(super) fn handover_asked(&self) -> Option<String> {
        if self.s.node_type != NodeType::Main || self.status != Status::Active {
            return None;
        }
        let f = self.peer_frame()?;
        let asks = f.node_type == NodeType::Standby
            && f.flags.has(Flags::WANT_ACTIVE)
            && f.status == Status::Inactive
            && f.flags.has(Flags::HEARS_PEER)
            && !f.flags.has(Flags::YIELDING)
            && f.mode == Mode::Automatic
            && f.pbx != PbxHealth::Down;
        asks.then(|| {
            format!(
                "standby {} asks for the service (an admin's switchover)",
                f.name
            )
        })
    }

    /// The Main's `ready` rule while switched away: the Standby is expected
    /// to serve, so the Main starts beside a heard Standby only if it yields.
    pub(super) fn switched_away(&self) -> bool {
        self.admin == Some(AdminChoice::SwitchedAway)
    }

    /// Per-input bookkeeping: the Standby's ask, the Main's hold.
    pub(super) fn switchover_tick(&mut self) {
        if let Some(since) = self.switch.asking {
            let peer = self.peer_label().to_string();
            let f = self.peer_frame();
            let progress =
                f.is_some_and(|f| matches!(f.status, Status::Draining | Status::Stopping));
            let handed =
                f.is_some_and(|f| f.status == Status::Inactive && f.flags.has(Flags::YIELDING));
            if self.status.claims() || handed {
                self.switch.asking = None;
            } else if progress {
                self.switch.asking = Some(self.now);
            } else if self.now - since >= self.s.failover_after * 2 {
                self.switch.asking = None;
                self.event(
                    EventKind::SwitchoverCancelled,
                    format!(
                        "main {peer} did not hand over within {:.1}s (not active any more, or a version without switchover)",
                        (self.now - since).as_secs_f64()
                    ),
                );
                self.send_heartbeat();
            }
        }
        if self.switched_away() && self.status == Status::Inactive {
            let back = self.peer_frame().is_some_and(|f| {
                f.node_type == NodeType::Standby
                    && f.status == Status::Draining
                    && f.flags.has(Flags::HEARS_PEER)
            });
            if back {
                self.admin = None;
                self.persist();
                let peer = self.peer_label().to_string();
                self.event(
                    EventKind::Switchover,
                    format!(
                        "standby {peer} hands the service back: this node stops yielding and starts once {peer} has stopped"
                    ),
                );
                self.send_heartbeat();
            }
        }
    }

    /// The next time a switchover rule may change its answer.
    pub(super) fn switchover_deadline(&self) -> Option<Instant> {
        match (self.switch.handing, self.switch.asking, self.switch.resume) {
            (Some(t), _, _) => Some(t + self.s.failover_after),
            (_, Some(t), _) => Some(t + self.s.failover_after * 2),
            (_, _, Some(t)) => Some(t + self.s.failover_after),
            _ => None,
        }
    }

    /// For the status page: the switchover under way or the Main's hold.
    pub(super) fn switchover_text(&self) -> Option<String> {
        let peer = self.peer_label();
        if self.switch.handing.is_some() {
            Some(format!("handing the service over to {peer} (draining)"))
        } else if self.switch.asking.is_some() {
            Some(format!("asked {peer} to hand the service over"))
        } else if self.switched_away() {
            Some(format!(
                "switched over to {peer} by an admin: this node does not take the service back until the next switchover (it still takes over if {peer} fails)"
            ))
        } else {
            None
        }
    }
}
