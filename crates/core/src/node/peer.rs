//! What a node knows of its peer: the last authenticated frame and when.

use crate::heartbeat::{Flags, Frame, Fresh, Reject, ReplayGuard};
use std::time::Instant;

#[derive(Debug)]
pub(super) struct Peer {
    guard: ReplayGuard,
    last: Option<(Instant, Frame)>,
    /// Start of the current unbroken run of hearing the peer.
    heard_since: Option<Instant>,
    /// Since when the peer's frames say it does not hear us (a one-way cut).
    deaf_since: Option<Instant>,
    /// Whether the node last reported the peer as heard (for events).
    reported_alive: bool,
}

impl Peer {
    /// What a node whose own boot id is `own_boot` knows of its peer at start:
    /// nothing (see the heartbeat module for why nothing is persisted).
    pub(super) fn new(own_boot: u64) -> Peer {
        Peer {
            guard: ReplayGuard::new(own_boot),
            last: None,
            heard_since: None,
            deaf_since: None,
            reported_alive: false,
        }
    }

    /// Keep an authenticated frame unless it is replayed or not confirmed fresh.
    pub(super) fn accept(&mut self, now: Instant, frame: Frame) -> Result<Fresh, Reject> {
        let fresh = self.guard.check(&frame)?;
        if frame.flags.has(Flags::HEARS_PEER) {
            self.deaf_since = None;
        } else {
            self.deaf_since.get_or_insert(now);
        }
        self.last = Some((now, frame));
        Ok(fresh)
    }

    /// The challenge and the echo for our next frame.
    pub(super) fn challenge_and_echo(&self) -> (u64, u64) {
        (self.guard.challenge(), self.guard.echo())
    }

    pub(super) fn frame(&self) -> Option<&Frame> {
        self.last.as_ref().map(|(_, f)| f)
    }

    pub(super) fn last_heard(&self) -> Option<Instant> {
        self.last.as_ref().map(|(t, _)| *t)
    }

    pub(super) fn heard_since(&self) -> Option<Instant> {
        self.heard_since
    }

    /// Since when the peer has been heard saying it does not hear us.
    pub(super) fn deaf_since(&self) -> Option<Instant> {
        self.deaf_since
    }

    pub(super) fn reported_alive(&self) -> bool {
        self.reported_alive
    }

    pub(super) fn set_reported_alive(&mut self, alive: bool, now: Instant) {
        self.reported_alive = alive;
        self.heard_since = alive.then_some(self.last_heard().unwrap_or(now));
        if !alive {
            self.deaf_since = None;
        }
    }
}
