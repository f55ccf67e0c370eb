//! Service actions and status transitions: start, stop, their results,
//! retries and the fault hold. The node never reports Active without its
//! services started.

use super::*;

/// A service action in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ServiceOp {
    Start,
    Stop,
}

#[derive(Debug, Clone)]
pub(super) struct Fault {
    pub(super) until: Instant,
}

impl Node {
    pub(super) fn handle_action_done(
        &mut self,
        id: ActionId,
        result: Result<ActionOutcome, ActionError>,
    ) -> Result<(), InputError> {
        if self.data_done(id, &result) {
            return Ok(());
        }
        if let Some(i) = self.persist_ids.iter().position(|&p| p == id) {
            self.persist_ids.swap_remove(i);
            if let Err(e) = result {
                self.event(
                    EventKind::ActionFailed,
                    format!("persisting state failed: {e}"),
                );
            }
            return Ok(());
        }
        if let Some(i) = self.count_ids.iter().position(|&p| p == id) {
            self.count_ids.swap_remove(i);
            if let Some(d) = self.drain.as_mut().filter(|d| d.query == Some(id)) {
                d.query = None;
            }
            match result {
                Ok(ActionOutcome::ActiveCalls(n)) => self.calls = Some(n),
                Ok(ActionOutcome::Done) => {}
                Err(e) => self.event(
                    EventKind::ActionFailed,
                    format!("counting active calls failed: {e}"),
                ),
            }
            return Ok(());
        }
        let Some((op_id, op)) = self.service_op else {
            return Err(InputError::UnknownAction(id));
        };
        if op_id != id {
            return Err(InputError::UnknownAction(id));
        }
        self.service_op = None;
        match (op, result) {
            (ServiceOp::Start, Ok(_)) => {
                self.failed_starts = 0;
                if let Some(reason) = self.stop_after_start.take() {
                    self.begin_stop(reason);
                } else {
                    let why = format!("services started ({})", self.reason);
                    self.set_status(Status::Active, why);
                }
            }
            (ServiceOp::Start, Err(e)) => {
                self.failed_starts += 1;
                let of = self.s.start_attempts;
                self.event(
                    EventKind::ServiceStartFailed {
                        attempt: self.failed_starts,
                        of,
                    },
                    e.to_string(),
                );
                let aborted = self.stop_after_start.take().is_some();
                self.set_serving(false);
                self.set_status(Status::Inactive, format!("services failed to start: {e}"));
                if aborted {
                    // It was to be stopped anyway.
                } else {
                    // Even a faulted node retries, slowly, when no one else
                    // serves (its fault only tells a healthy peer to take over).
                    self.retry_at = Some(self.now + self.s.retry_delay);
                    if self.failed_starts >= of {
                        self.failed_starts = 0;
                        self.enter_fault(format!(
                            "services failed to start {of} times; last error: {e}"
                        ));
                    }
                }
            }
            (ServiceOp::Stop, Ok(_)) => {
                self.calls = None;
                self.set_serving(false);
                let why = format!("services stopped ({})", self.reason);
                self.set_status(Status::Inactive, why);
            }
            (ServiceOp::Stop, Err(e)) => {
                // Services may still run: stay Stopping (the peer will not
                // start) and try again.
                self.event(
                    EventKind::ServiceStopFailed,
                    format!("{e}; retrying in {}", human(self.s.retry_delay)),
                );
                self.retry_at = Some(self.now + self.s.retry_delay);
            }
        }
        Ok(())
    }

    pub(super) fn retry_pending_stop(&mut self) {
        if self.status == Status::Stopping
            && self.service_op.is_none()
            && self.retry_at.is_some_and(|t| self.now >= t)
        {
            self.retry_at = None;
            let id = self.action(ActionKind::StopServices);
            self.service_op = Some((id, ServiceOp::Stop));
        }
    }

    pub(super) fn begin_start(&mut self, why: String) {
        let peer_epoch = self.peer.frame().map_or(0, |f| f.epoch);
        self.epoch = self.epoch.max(peer_epoch) + 1;
        self.retry_at = None;
        // A switched-away Main that starts (its Standby failed or yields)
        // serves again: the hold is over.
        if self.switched_away() {
            self.admin = None;
        }
        self.end_handover();
        // Start first, then record the new epoch, so a failover does not
        // wait for an fsync (0.2 ms usually, 20-45 ms when the disk is busy:
        // bench/failover). Losing the record is harmless: the epoch only
        // counts while this node claims the service, a node that dies
        // before the record lands restarts Inactive (the runtime stops
        // whatever may still run), and its next start takes an epoch above
        // its peer's. A failed write is an event.
        let id = self.action(ActionKind::StartServices);
        self.serving = true;
        self.persist();
        self.service_op = Some((id, ServiceOp::Start));
        self.set_status(Status::Starting, why);
    }

    pub(super) fn begin_stop(&mut self, why: String) {
        self.drain = None;
        self.end_handover();
        match self.status {
            // A start in flight: stop once it reports (the runtime runs one
            // service action at a time).
            Status::Starting if self.service_op.is_some() => {
                self.stop_after_start = Some(why);
            }
            Status::Starting | Status::Active | Status::Draining => {
                let id = self.action(ActionKind::StopServices);
                self.service_op = Some((id, ServiceOp::Stop));
                self.set_status(Status::Stopping, why);
            }
            Status::Inactive => {
                self.retry_at = None;
            }
            Status::Stopping => {}
        }
    }

    pub(super) fn enter_fault(&mut self, why: String) {
        let hold = self.s.fault_hold;
        self.fault = Some(Fault {
            until: self.now + hold,
        });
        self.event(EventKind::Faulted { hold }, why);
    }

    pub(super) fn clear_fault(&mut self) {
        self.failed_starts = 0;
        // A failed stop's retry stays: the services may still run, and
        // nothing else would try the stop again.
        if self.status != Status::Stopping {
            self.retry_at = None;
        }
        if self.fault.take().is_some() {
            self.event(EventKind::FaultCleared, "an admin cleared the fault".into());
        }
    }

    pub(super) fn set_status(&mut self, to: Status, why: String) {
        let from = self.status;
        if from == to {
            return;
        }
        self.status = to;
        self.reason = why.clone();
        if !to.claims() {
            self.forced = false;
        }
        if !to.is_active() {
            self.pbx_down_since = None;
        } else if self.pbx == PbxHealth::Down {
            self.pbx_down_since.get_or_insert(self.now);
        }
        self.event(EventKind::StatusChanged { from, to }, why.clone());
        if from.is_active() != to.is_active() {
            self.event(
                EventKind::ActiveChanged {
                    from: from.is_active(),
                    to: to.is_active(),
                },
                why,
            );
        }
        // Tell the peer at once rather than at the next tick.
        self.send_heartbeat();
    }
}
