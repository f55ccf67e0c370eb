//! Who may push its data to the peer: only the Main, only while it serves,
//! and never onto a Standby that serves. The Main's copy is the one in
//! service only then; pushing at any other time would overwrite what the
//! serving side recorded.

use super::Snapshot;
use crate::types::NodeType;

/// Why a node may not push its data now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushRefusal {
    /// A Standby (or a disabled node) never pushes.
    #[error("only the main pushes; the standby never does")]
    NotMain,
    /// The Main does not serve: its copy is not the one in service.
    #[error("this main is not active: its copy is not the one in service")]
    NotActive,
    /// The Standby serves (as last heard): replication waits for the failback.
    #[error("the standby is active: replication pauses until failback")]
    PeerActive,
}

impl Snapshot {
    /// `Ok` when this node may push its data to its peer now.
    pub fn may_push_data(&self) -> Result<(), PushRefusal> {
        if self.node_type != NodeType::Main {
            return Err(PushRefusal::NotMain);
        }
        if !self.active {
            return Err(PushRefusal::NotActive);
        }
        let peer_active = self
            .peer
            .as_ref()
            .and_then(|p| p.status)
            .is_some_and(|s| s.is_active());
        if peer_active {
            return Err(PushRefusal::PeerActive);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::PeerSnapshot;
    use crate::types::{Mode, PbxHealth, Status};

    fn snap(node_type: NodeType, status: Status, peer: Option<Status>) -> Snapshot {
        Snapshot {
            name: "n".into(),
            node_type,
            mode: Mode::Automatic,
            status,
            active: status.is_active(),
            takes_new_calls: status.is_active(),
            epoch: 1,
            pbx: PbxHealth::Up,
            admin: None,
            faulted: false,
            arbiter_ok: true,
            reason: String::new(),
            failback_wait: None,
            failback_due_in: None,
            want_active: false,
            calls: None,
            peer: Some(PeerSnapshot {
                name: "p".into(),
                heard: peer.is_some(),
                last_heard_ago: None,
                status: peer,
                pbx: None,
                epoch: None,
                yielding: false,
                replication: None,
            }),
            switchover: None,
            guard: None,
            rejected: Vec::new(),
        }
    }

    #[test]
    fn the_active_main_pushes_beside_an_inactive_or_silent_standby() {
        let main = NodeType::Main;
        assert_eq!(
            snap(main, Status::Active, Some(Status::Inactive)).may_push_data(),
            Ok(())
        );
        assert_eq!(snap(main, Status::Active, None).may_push_data(), Ok(()));
        assert_eq!(
            snap(main, Status::Draining, Some(Status::Stopping)).may_push_data(),
            Ok(())
        );
        let mut alone = snap(main, Status::Active, None);
        alone.peer = None;
        assert_eq!(alone.may_push_data(), Ok(()));
    }

    #[test]
    fn refusals_say_why() {
        let s = snap(NodeType::Standby, Status::Active, Some(Status::Inactive));
        assert_eq!(s.may_push_data(), Err(PushRefusal::NotMain));
        let s = snap(NodeType::Disabled, Status::Inactive, None);
        assert_eq!(s.may_push_data(), Err(PushRefusal::NotMain));
        for st in [Status::Inactive, Status::Starting, Status::Stopping] {
            let s = snap(NodeType::Main, st, Some(Status::Inactive));
            assert_eq!(s.may_push_data(), Err(PushRefusal::NotActive), "{st:?}");
        }
        for peer in [Status::Active, Status::Draining] {
            let s = snap(NodeType::Main, Status::Active, Some(peer));
            assert_eq!(s.may_push_data(), Err(PushRefusal::PeerActive), "{peer:?}");
        }
        assert_eq!(
            PushRefusal::PeerActive.to_string(),
            "the standby is active: replication pauses until failback"
        );
    }
}
