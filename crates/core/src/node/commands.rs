//! An admin's commands: start, stop, failback, switchover, and why one is
//! refused. A refused command leaves the state unchanged.

use super::*;

impl Node {
    pub(super) fn handle_command(&mut self, cmd: Command) -> Result<(), InputError> {
        let refuse = |node: &mut Node, reason: String| {
            node.event(EventKind::CommandRefused, format!("{cmd}: {reason}"));
            Err(InputError::Refused {
                command: cmd,
                reason,
            })
        };
        if self.s.node_type == NodeType::Disabled {
            return refuse(self, "high availability is disabled on this node".into());
        }
        let peer_name = self.s.peer_name.clone().unwrap_or_default();
        let peer_claims = self
            .peer_frame()
            .filter(|f| f.status.occupies())
            .map(|f| f.status);
        let accepted = match (self.s.mode, cmd) {
            (Mode::Manual, Command::StartServices { force }) => {
                if self.status.claims() {
                    "services are already running".to_string()
                } else {
                    if let Some(peer_status) = peer_claims {
                        if !force {
                            let ago = self
                                .peer
                                .last_heard()
                                .map(|t| self.now - t)
                                .unwrap_or_default();
                            return refuse(
                                self,
                                format!(
                                    "peer {peer_name} is {} (heard {:.1}s ago); stop its services first, or force",
                                    peer_status,
                                    ago.as_secs_f64()
                                ),
                            );
                        }
                        self.forced = true;
                    }
                    self.admin = Some(AdminChoice::Start);
                    self.clear_fault();
                    self.persist();
                    if self.forced {
                        format!("starting services although peer {peer_name} is active (forced)")
                    } else {
                        "starting services".to_string()
                    }
                }
            }
            (_, Command::StopServices) => {
                self.admin = Some(AdminChoice::Stop);
                self.persist();
                if self.status != Status::Stopping
                    && (self.status.occupies() || self.retry_at.is_some())
                {
                    // (Stopping: the stop under way, or its retry, goes on.)
                    self.retry_at = None;
                    self.begin_stop(format!("an admin stopped services ({} mode)", self.s.mode));
                }
                match self.s.mode {
                    Mode::Manual => "services stopped".to_string(),
                    Mode::Automatic => format!(
                        "services stopped and held: this node yields to {peer_name} until services are started again"
                    ),
                }
            }
            (Mode::Manual, Command::Failback) => {
                return refuse(
                    self,
                    "manual mode: stop services on the standby, then start them on the main".into(),
                )
            }
            (Mode::Automatic, Command::StartServices { force }) => {
                if force && peer_claims.is_some() {
                    return refuse(
                        self,
                        format!(
                            "automatic mode: the heartbeat decides and will not run both nodes; stop services on {peer_name} (it then yields), use failback, or switch to manual mode"
                        ),
                    );
                }
                let was_held = self.admin == Some(AdminChoice::Stop);
                self.admin = None;
                self.clear_fault();
                self.persist();
                match (was_held, peer_claims) {
                    (true, Some(peer_status)) => format!(
                        "hold released; peer {peer_name} is {peer_status}, this node stays ready to take over"
                    ),
                    // Not "released": there was nothing to release.
                    (false, Some(peer_status)) => format!(
                        "no hold to release; peer {peer_name} is {peer_status}, this node stays ready to take over"
                    ),
                    (true, None) => "hold released; the heartbeat decides".to_string(),
                    (false, None) => "no hold to release; the heartbeat decides".to_string(),
                }
            }
            (_, Command::Switchover) => match self.switchover_command() {
                Ok(text) => text,
                Err(reason) => return refuse(self, reason),
            },
            (Mode::Automatic, Command::Failback) => match self.failback_refusal() {
                Some(reason) => return refuse(self, reason),
                None => {
                    if self.admin == Some(AdminChoice::SwitchedAway) {
                        self.admin = None;
                        self.persist();
                    }
                    self.failback_now = true;
                    self.data_retry_now();
                    self.clear_fault();
                    match self.s.node_type {
                        NodeType::Main => format!("asking {peer_name} to hand over now"),
                        _ => format!("handing the service back to {peer_name}"),
                    }
                }
            },
        };
        self.event(EventKind::CommandAccepted, format!("{cmd}: {accepted}"));
        Ok(())
    }

    pub(super) fn failback_refusal(&self) -> Option<String> {
        let peer_name = self.s.peer_name.clone().unwrap_or_default();
        let peer = self.peer_frame();
        match self.s.node_type {
            NodeType::Main => {
                if self.status.claims() {
                    Some("this node is already active".into())
                } else if self.admin == Some(AdminChoice::Stop) {
                    Some("an admin stopped services on this node; start them first".into())
                } else if !peer.is_some_and(|f| f.status.claims()) {
                    Some(format!(
                        "standby {peer_name} is not heard active; the main starts on its own"
                    ))
                } else {
                    None
                }
            }
            _ => {
                if !self.status.is_active() {
                    Some("this node is not active".into())
                } else {
                    match peer {
                        None => Some(format!(
                            "main {peer_name} is not heard: handing over now would leave no active node"
                        )),
                        Some(f) if f.flags.has(Flags::YIELDING) => Some(format!(
                            "main {peer_name} yields (stopped by an admin or faulted)"
                        )),
                        Some(_) => None,
                    }
                }
            }
        }
    }
}
