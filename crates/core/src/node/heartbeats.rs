//! What the node hears of its peer (liveness, with events when it changes)
//! and the heartbeat frame it sends.

use super::*;

impl Node {
    /// The peer's configured name, for reasons.
    pub(super) fn peer_label(&self) -> &str {
        self.s.peer_name.as_deref().unwrap_or_default()
    }

    pub(super) fn peer_alive(&self) -> bool {
        self.peer
            .last_heard()
            .is_some_and(|t| self.now - t < self.s.failover_after)
    }

    /// The peer's last frame, if it is recent enough to act on.
    pub(super) fn peer_frame(&self) -> Option<&Frame> {
        if self.peer_alive() {
            self.peer.frame()
        } else {
            None
        }
    }

    pub(super) fn update_peer_liveness(&mut self) {
        let alive = self.peer_alive();
        if self.peer.reported_alive() == alive {
            return;
        }
        let name = self.s.peer_name.clone().unwrap_or_default();
        match (self.peer.reported_alive(), alive) {
            (false, true) => {
                self.peer.set_reported_alive(true, self.now);
                let status = self.peer.frame().map_or(Status::Inactive, |f| f.status);
                self.event(
                    EventKind::PeerHeard { status },
                    format!("{name} is {status}"),
                );
                if let Some(f) = self.peer.frame() {
                    if f.node_type == self.s.node_type || f.mode != self.s.mode {
                        let why = format!(
                            "{name} runs as {} in {} mode, this node as {} in {} mode",
                            f.node_type, f.mode, self.s.node_type, self.s.mode
                        );
                        self.event(EventKind::PeerMismatch, why);
                    }
                }
                // Let the peer know at once that we hear it.
                self.send_heartbeat();
            }
            (true, false) => {
                self.peer.set_reported_alive(false, self.now);
                let silent_for = self
                    .peer
                    .last_heard()
                    .map_or(Duration::ZERO, |t| self.now - t);
                self.event(
                    EventKind::PeerSilent { silent_for },
                    format!("{name} not heard"),
                );
            }
            _ => {}
        }
    }

    pub(super) fn send_heartbeat(&mut self) {
        if self.s.node_type == NodeType::Disabled {
            return;
        }
        self.next_heartbeat = self.now + self.s.interval;
        let mut flags = 0;
        if self.want_active || self.switch.asking() {
            flags |= Flags::WANT_ACTIVE;
        }
        if self.is_yielding() {
            flags |= Flags::YIELDING;
        }
        if self.peer_alive() {
            flags |= Flags::HEARS_PEER;
        }
        if self.forced {
            flags |= Flags::FORCED;
        }
        if self.leaving.is_some() {
            flags |= Flags::LEAVING;
        }
        if self.adopt_until.is_some() {
            flags |= Flags::ADOPTING;
        }
        flags |= self.new_calls_flags();
        self.seq += 1;
        let f = &mut self.outgoing;
        f.node_type = self.s.node_type;
        f.mode = self.s.mode;
        f.status = self.status;
        f.pbx = self.pbx;
        f.flags = Flags(flags);
        f.boot = self.boot;
        f.seq = self.seq;
        (f.challenge, f.echo) = self.peer.challenge_and_echo();
        f.epoch = self.epoch;
        f.replication = self.replication;
        f.calls = self.calls;
        let bytes = heartbeat::encode(f, &self.s.key);
        if let Some((&last, rest)) = self.s.peer_addrs.split_last() {
            for &to in rest {
                self.out.push_back(Output::Transmit(Transmit {
                    to,
                    bytes: bytes.clone(),
                }));
            }
            self.out
                .push_back(Output::Transmit(Transmit { to: last, bytes }));
        }
    }
}
