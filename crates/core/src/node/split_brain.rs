//! Split brain: both nodes claim the service and hear each other. Both
//! evaluate the same total order, so exactly one keeps the service.

use super::*;

impl Node {
    /// Split brain: both claim the service and hear each other; the loser
    /// steps down. Applies to a leaving (draining) node too: its drain may
    /// last `stop_timeout`, two PBXs must not serve meanwhile. True when
    /// this node steps down.
    pub(super) fn resolve_split_brain(&mut self) -> bool {
        if self.s.mode != Mode::Automatic || self.s.node_type == NodeType::Disabled {
            return false;
        }
        let claiming_peer = self
            .peer_frame()
            .filter(|_| self.status.claims())
            .filter(|f| f.status.claims() && f.mode == Mode::Automatic)
            .filter(|f| !self.planned_overlap(f));
        let Some(f) = claiming_peer else {
            self.split_brain_won = false;
            return false;
        };
        let (own, theirs, peer) = (self.epoch, f.epoch, f.name.clone());
        // Starting only to stop again: neither stays active nor steps down.
        let already = self.status == Status::Starting && self.stop_after_start.is_some();
        if self.wins_against(f) {
            // Once per split brain: both sides then log it, each with its
            // own part.
            if !self.split_brain_won && !already {
                self.split_brain_won = true;
                let rule = self.split_brain_rule();
                self.event(
                    EventKind::SplitBrain {
                        own_epoch: own,
                        peer_epoch: theirs,
                        winner: true,
                    },
                    format!("{peer} steps down ({rule})"),
                );
            }
            return false;
        }
        if already {
            return false;
        }
        self.event(
            EventKind::SplitBrain {
                own_epoch: own,
                peer_epoch: theirs,
                winner: false,
            },
            format!("{peer} keeps the service ({})", self.split_brain_rule()),
        );
        self.begin_stop(format!("split brain resolved in favour of {peer}"));
        true
    }

    pub(super) fn split_brain_rule(&self) -> &'static str {
        match self.s.split_brain {
            SplitBrainPolicy::Main => "split_brain = main: the main wins",
            SplitBrainPolicy::Latest => "split_brain = latest: the higher epoch wins",
        }
    }

    /// Whether this node keeps the service against a claiming peer. Both
    /// nodes evaluate the same total order, so exactly one wins.
    pub(super) fn wins_against(&self, f: &Frame) -> bool {
        let me_main = self.s.node_type == NodeType::Main;
        let peer_main = f.node_type == NodeType::Main;
        let by_type = me_main != peer_main && self.s.split_brain == SplitBrainPolicy::Main;
        if by_type {
            return me_main;
        }
        // Higher epoch, then the Main, then the smaller name.
        (self.epoch, me_main, std::cmp::Reverse(&self.s.name))
            > (f.epoch, peer_main, std::cmp::Reverse(&f.name))
    }
}
