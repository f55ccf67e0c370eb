//! New calls go home during the failback drain (`failback.new_calls = "main"`).
//!
//! XiVO's high availability documentation has new conferences start on the
//! primary while existing ones continue on the secondary. With the edge in
//! front (it routes new requests by the PBXs' HA flag and in-dialog ones by
//! the PBX of the call), the Main can take the new calls while the Standby
//! drains. Both PBXs then run for a while, so the hand-off of *new* calls is
//! ordered, so that at no instant do both nodes take them:
//!
//! 1. The Standby drains for a failback and sets
//!    [`Flags::OFFERS_NEW_CALLS`]; it still takes new calls.
//! 2. The Main (same setting, asking for the service) starts its services
//!    alongside. Active, it takes no new call while the Standby's frame says
//!    it still takes them.
//! 3. The Standby hears the Main Active, stops taking new calls and sets
//!    [`Flags::RELEASED_NEW_CALLS`].
//! 4. The Main hears that and takes the new calls.
//!
//! The Standby's services run until its calls end or the drain bound
//! passes, as in a plain drain. If the Main falls silent, yields or stops
//! being Active during the overlap, the Standby takes new calls again at
//! once (its drain is cancelled, as today). A Standby whose Main has the
//! default setting only offers: the Main waits for it to stop, as today.
//! Planned switchovers and a stopping daemon drain as before.

use super::Node;
use crate::config::NewCallsPolicy;
use crate::heartbeat::{Flags, Frame};
use crate::types::{NodeType, Status};

/// What a node remembers of the hand-off.
#[derive(Debug, Default)]
pub(super) struct Handoff {
    /// Standby: the new calls are released to the Main.
    pub released: bool,
    /// Main: a Standby draining without the offer was reported.
    pub mismatch_told: bool,
}

impl Node {
    /// This Standby drains for a failback and offers the new calls to the Main.
    pub fn offers_new_calls(&self) -> bool {
        self.s.node_type == NodeType::Standby
            && self.s.new_calls == NewCallsPolicy::Main
            && self.status == Status::Draining
            && !self.handing_over()
    }

    /// Whether this node takes new calls: the HA `active` flag the edge and
    /// the followers read. Equal to [`Node::is_active`] except during the
    /// hand-off of `failback.new_calls = "main"`.
    pub fn takes_new_calls(&self) -> bool {
        if !self.status.is_active() {
            return false;
        }
        match self.s.node_type {
            NodeType::Standby => !self.handoff.released,
            _ => !self.peer_frame().is_some_and(holds_new_calls),
        }
    }

    /// The Main's start alongside a Standby that offers the new calls.
    pub(super) fn may_start_alongside(&self, f: &Frame) -> Option<String> {
        let offered = self.s.new_calls == NewCallsPolicy::Main
            && self.want_active
            && f.node_type == NodeType::Standby
            && f.status == Status::Draining
            && f.flags.has(Flags::OFFERS_NEW_CALLS)
            && f.flags.has(Flags::HEARS_PEER)
            && !f.flags.has(Flags::YIELDING);
        offered.then(|| {
            format!(
                "standby {} drains and offers the new calls (failback.new_calls = main)",
                self.peer_label()
            )
        })
    }

    /// The Standby keeps draining while the Main it offered the new calls
    /// to starts or runs alongside (its request flag is gone by then).
    pub(super) fn main_runs_alongside(&self) -> bool {
        self.offers_new_calls()
            && self.peer_frame().is_some_and(|f| {
                f.node_type == NodeType::Main
                    && matches!(f.status, Status::Starting | Status::Active)
                    && f.flags.has(Flags::HEARS_PEER)
                    && !f.flags.has(Flags::YIELDING)
            })
    }

    /// The planned overlap is no split brain: neither side stops for it.
    pub(super) fn planned_overlap(&self, f: &Frame) -> bool {
        match self.s.node_type {
            NodeType::Standby => self.main_runs_alongside(),
            NodeType::Main => {
                self.s.new_calls == NewCallsPolicy::Main
                    && f.node_type == NodeType::Standby
                    && f.status == Status::Draining
                    && f.flags.has(Flags::OFFERS_NEW_CALLS)
            }
            NodeType::Disabled => false,
        }
    }

    /// The Standby releases the new calls once it hears the Main Active,
    /// and takes them back when that stops being so. Logged and told to the
    /// peer at once.
    pub(super) fn update_new_calls(&mut self) {
        // A Main restarted during the overlap (an upgrade, a crash) reports
        // Inactive while it decides to adopt its PBX: the new calls stay
        // released meanwhile (none are taken for that moment), else the Main
        // would take them again on the Standby's last frame while this node
        // takes them back.
        let adopting_main = self.handoff.released
            && self.peer_frame().is_some_and(|f| {
                f.node_type == NodeType::Main
                    && f.status == Status::Inactive
                    && f.flags.has(Flags::ADOPTING)
            });
        let released = adopting_main
            || (self.main_runs_alongside()
                && self
                    .peer_frame()
                    .is_some_and(|f| f.status == Status::Active));
        self.tell_mismatch();
        if released == self.handoff.released {
            return;
        }
        self.handoff.released = released;
        if !released && !self.status.is_active() {
            // The drain is over (services stopping): nothing to take back.
            return;
        }
        let why = if released {
            format!(
                "main {} is active: new calls go to it, calls in progress end here",
                self.peer_label()
            )
        } else {
            format!(
                "main {} no longer runs alongside: this node takes new calls again",
                self.peer_label()
            )
        };
        self.event(super::EventKind::NewCallsReleased { released }, why);
        self.send_heartbeat();
    }

    /// A Main set to `main` whose Standby drains for it without offering
    /// the new calls (set to `standby`): said once per drain, as the drain
    /// then runs as with `standby`.
    fn tell_mismatch(&mut self) {
        if self.s.node_type != NodeType::Main || self.s.new_calls != NewCallsPolicy::Main {
            return;
        }
        let plain_drain = self.want_active
            && self.peer_frame().is_some_and(|f| {
                f.status == Status::Draining
                    && !f.flags.has(Flags::OFFERS_NEW_CALLS)
                    && !f.flags.has(Flags::YIELDING)
            });
        if !plain_drain {
            if self.status == Status::Active || self.peer_frame().is_none() {
                self.handoff.mismatch_told = false;
            }
            return;
        }
        if !self.handoff.mismatch_told {
            self.handoff.mismatch_told = true;
            let why = format!(
                "standby {} drains without offering the new calls (set failback.new_calls = \"main\" on it too, unless this drain is a switchover): this main starts once it has stopped",
                self.peer_label()
            );
            self.event(super::EventKind::PeerMismatch, why);
        }
    }

    /// The flags this node adds to its heartbeat.
    pub(super) fn new_calls_flags(&self) -> u8 {
        let mut flags = 0;
        if self.offers_new_calls() {
            flags |= Flags::OFFERS_NEW_CALLS;
        }
        if self.handoff.released {
            flags |= Flags::RELEASED_NEW_CALLS;
        }
        flags
    }
}

/// A Standby that offered the new calls and has not released them yet.
fn holds_new_calls(f: &Frame) -> bool {
    f.node_type == NodeType::Standby
        && f.status == Status::Draining
        && f.flags.has(Flags::OFFERS_NEW_CALLS)
        && !f.flags.has(Flags::RELEASED_NEW_CALLS)
}
