//! The Main's data comes home before it serves again.
//!
//! What the Standby recorded while it served (`keep_on_failback`: voicemail,
//! recordings) is copied back to the Main and checked before the Main asks
//! for the service back, as XiVO's documentation has voicemail fail back
//! only once the sync is complete. The gate holds the *request*
//! (`WANT_ACTIVE`), not the start: while the copy runs, or when it failed
//! and the admin chose `on_data_failure = "hold"`, the Standby keeps
//! serving, so a failed copy never leaves the pair with no one serving.
//! With `"proceed"`, the failback goes on after the failure or after
//! `data_wait`, with a loud event. The runtime performs the copy
//! ([`ActionKind::FetchFailbackData`]); its result comes back as the
//! action's result. What the Standby records during its drain is copied
//! by the Standby once it has stopped, as before.

use super::{
    ActionError, ActionId, ActionKind, ActionOutcome, EventKind, FailbackWait, Node, Wake,
};
use crate::config::DataFailurePolicy;
use crate::types::human;
use std::time::{Duration, Instant};

/// Where the copy of the kept data stands for the failback under way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum DataFetch {
    /// Not asked yet in this failback.
    #[default]
    Idle,
    Running {
        deadline: Instant,
    },
    Ready,
    Failed {
        reason: String,
        /// Hold: when the copy is tried again.
        retry_at: Instant,
        proceeded: bool,
    },
}

/// Shortest pause between two tries of a held copy.
const MIN_RETRY: Duration = Duration::from_secs(1);

impl Node {
    /// The failback policy says ask: may the Main, as far as its data goes?
    /// (ask now, why it waits). Starts the copy when none was asked yet.
    pub(super) fn data_gate(&mut self) -> (bool, Option<FailbackWait>) {
        let Some(g) = self.s.failback_data else {
            return (true, None);
        };
        match &self.data {
            DataFetch::Ready
            | DataFetch::Failed {
                proceeded: true, ..
            } => (true, None),
            DataFetch::Running { deadline } if self.now >= *deadline => {
                self.data_failed(format!("no answer within {}", human(g.wait)));
                let proceeded = matches!(
                    self.data,
                    DataFetch::Failed {
                        proceeded: true,
                        ..
                    }
                );
                (proceeded, (!proceeded).then_some(FailbackWait::DataHeld))
            }
            DataFetch::Running { .. } => (false, Some(FailbackWait::Data(g.wait))),
            DataFetch::Failed { retry_at, .. } => {
                // One copy at a time: the next try waits for the last one's
                // answer, or its deadline (the runtime bounds each copy by
                // `data_wait`).
                if self.now >= *retry_at {
                    self.fetch_data(g.wait);
                }
                (false, Some(FailbackWait::DataHeld))
            }
            DataFetch::Idle => {
                self.fetch_data(g.wait);
                (false, Some(FailbackWait::Data(g.wait)))
            }
        }
    }

    fn fetch_data(&mut self, wait: Duration) {
        let id = self.action(ActionKind::FetchFailbackData);
        self.data_id = Some(id);
        let deadline = self.now + wait;
        // A held copy being retried keeps its reason on show.
        if !matches!(self.data, DataFetch::Failed { .. }) {
            self.data = DataFetch::Running { deadline };
        } else if let DataFetch::Failed { retry_at, .. } = &mut self.data {
            // Tried again once this try has answered (then `data_failed`
            // sets the pause), or at its deadline.
            *retry_at = deadline;
        }
    }

    fn data_failed(&mut self, why: String) {
        let Some(g) = self.s.failback_data else {
            return;
        };
        let peer = self.peer_label().to_owned();
        // A leaving Standby cannot keep serving: hold would leave no one.
        let leaving = self.peer_leaving();
        let proceeded = g.on_failure == DataFailurePolicy::Proceed || leaving;
        let retry = self.s.retry_delay.max(MIN_RETRY);
        let same = matches!(&self.data, DataFetch::Failed { reason, .. } if *reason == why);
        self.data = DataFetch::Failed {
            reason: why.clone(),
            retry_at: self.now + retry,
            proceeded,
        };
        if same {
            return; // told once per reason, not at every retry
        }
        let text = if leaving {
            format!(
                "keep_on_failback paths not copied back from standby {peer}: {why}; {peer} is leaving (its daemon is stopping): this node serves without them; what was not copied stays on {peer}"
            )
        } else if proceeded {
            format!(
                "keep_on_failback paths not copied back from standby {peer}: {why}; failing back without them (on_data_failure = proceed): what was not copied stays on {peer} until the next replication overwrites it"
            )
        } else {
            format!(
                "keep_on_failback paths not copied back from standby {peer}: {why}; failback held, {peer} keeps serving (on_data_failure = hold); retrying every {}",
                human(retry)
            )
        };
        self.event(EventKind::FailbackDataFailed, text);
        // Already held: the new reason replaces the old on the status.
        if self.failback_wait_kind == Some(FailbackWait::DataHeld) {
            let held = self.data_held_text();
            self.failback_wait = Some(held.clone());
            self.event(EventKind::FailbackPending, held);
        }
    }

    /// Why the failback is held, for the status and the dashboard.
    pub(super) fn data_held_text(&self) -> String {
        let why = match &self.data {
            DataFetch::Failed { reason, .. } => reason.as_str(),
            _ => "",
        };
        format!(
            "failback held: keep_on_failback paths not copied back from standby {}: {why} (on_data_failure = hold; retrying; `resilience failback` retries now)",
            self.peer_label()
        )
    }

    /// The result of a copy; false when `id` is not one.
    pub(super) fn data_done(
        &mut self,
        id: ActionId,
        result: &Result<ActionOutcome, ActionError>,
    ) -> bool {
        if self.data_id != Some(id) {
            return false;
        }
        self.data_id = None;
        match result {
            Ok(_) => {
                self.data = DataFetch::Ready;
                let peer = self.peer_label().to_owned();
                self.event(
                    EventKind::FailbackDataReady,
                    format!("keep_on_failback paths copied back from standby {peer} and checked"),
                );
            }
            Err(e)
                if !matches!(
                    self.data,
                    DataFetch::Failed {
                        proceeded: true,
                        ..
                    }
                ) =>
            {
                self.data_failed(e.0.clone())
            }
            Err(_) => {}
        }
        true
    }

    /// The failback is over or called off: the next one copies again. A
    /// copy still in flight is forgotten (its result is refused).
    pub(super) fn data_reset(&mut self) {
        if self.data != DataFetch::Idle {
            self.data = DataFetch::Idle;
            self.data_id = None;
        }
    }

    /// An admin asked for failback: a held copy is tried again now.
    pub(super) fn data_retry_now(&mut self) {
        if let DataFetch::Failed {
            proceeded: false,
            retry_at,
            ..
        } = &mut self.data
        {
            *retry_at = self.now;
        }
    }

    /// When the copy's state may change without an input.
    pub(super) fn data_deadline(&self) -> (Option<Instant>, Wake) {
        match &self.data {
            DataFetch::Running { deadline } => (Some(*deadline), Wake::DataWait),
            DataFetch::Failed {
                retry_at,
                proceeded: false,
                ..
            } => (Some(*retry_at), Wake::DataRetry),
            _ => (None, Wake::DataWait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{drain, settings};
    use super::super::*;
    use super::DataFetch;

    const WAIT: Duration = Duration::from_secs(120);

    /// A Main that hears its Standby serving, with the data gate on.
    struct Scene {
        main: Node,
        now: Instant,
        key: crate::ClusterKey,
        seq: u64,
        challenge: u64,
        out: Vec<Output>,
    }

    impl Scene {
        fn new(on_failure: DataFailurePolicy) -> Scene {
            let now = Instant::now();
            let mut s = settings("main", "standby", NodeType::Main, Mode::Automatic);
            s.failback_data = Some(DataGate {
                wait: WAIT,
                on_failure,
            });
            let key = s.key.clone();
            let main = Node::new(s, Persisted::default(), 1, now);
            let mut sc = Scene {
                main,
                now,
                key,
                seq: 0,
                challenge: 0,
                out: Vec::new(),
            };
            sc.out = drain(&mut sc.main);
            // Two rounds: the first frame is unconfirmed, the second echoes.
            sc.standby(Status::Active);
            sc.standby(Status::Active);
            sc
        }

        /// The Main's last heartbeat.
        fn sent(&self) -> Option<Frame> {
            self.out.iter().rev().find_map(|o| match o {
                Output::Transmit(t) => heartbeat::decode(&t.bytes, &self.key).ok(),
                _ => None,
            })
        }

        /// One frame of the Standby, echoing the Main's last challenge.
        fn standby(&mut self, status: Status) {
            self.now += Duration::from_millis(200);
            self.seq += 1;
            let echo = self.sent().map_or(0, |f| f.challenge);
            self.challenge += 1;
            let f = Frame {
                node_type: NodeType::Standby,
                mode: Mode::Automatic,
                status,
                pbx: PbxHealth::Up,
                flags: Flags(Flags::HEARS_PEER),
                boot: 2,
                seq: self.seq,
                epoch: 1,
                replication: 0,
                challenge: self.challenge,
                echo,
                calls: None,
                name: "standby".into(),
            };
            let bytes = heartbeat::encode(&f, &self.key);
            let from = "127.0.0.1:1".parse().unwrap();
            let _ = self
                .main
                .handle_input(Input::Datagram(self.now, from, &bytes));
            self.out.extend(drain(&mut self.main));
            // And the Main's own heartbeat, so the next frame can echo it.
            self.main.handle_input(Input::Timeout(self.now)).unwrap();
            self.out.extend(drain(&mut self.main));
        }

        /// `d` later, the Standby heard serving all along.
        fn at(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now + Duration::from_millis(200) <= end {
                self.standby(Status::Active);
            }
            self.now = end;
            self.main.handle_input(Input::Timeout(self.now)).unwrap();
            self.out.extend(drain(&mut self.main));
        }

        fn fetches(&self) -> Vec<ActionId> {
            self.out
                .iter()
                .filter_map(|o| match o {
                    Output::Action(Action {
                        id,
                        kind: ActionKind::FetchFailbackData,
                    }) => Some(*id),
                    _ => None,
                })
                .collect()
        }

        fn done(&mut self, id: ActionId, r: Result<ActionOutcome, ActionError>) {
            self.main
                .handle_input(Input::ActionDone(self.now, id, r))
                .unwrap();
            self.out.extend(drain(&mut self.main));
        }

        fn events(&self, kind: EventKind) -> Vec<String> {
            self.out
                .iter()
                .filter_map(|o| match o {
                    Output::Event(e) if e.kind == kind => Some(e.to_string()),
                    _ => None,
                })
                .collect()
        }

        fn wants(&self) -> bool {
            self.main.snapshot(self.now).want_active
        }
    }

    #[test]
    fn the_main_asks_for_the_service_only_once_its_data_is_home() {
        let mut sc = Scene::new(DataFailurePolicy::Hold);
        let ids = sc.fetches();
        assert_eq!(ids.len(), 1, "one copy asked for: {:?}", sc.out);
        assert!(!sc.wants());
        assert!(!sc.sent().unwrap().flags.has(Flags::WANT_ACTIVE));
        let w = sc.main.snapshot(sc.now).failback_wait.unwrap();
        assert!(w.contains("copying the keep_on_failback paths"), "{w}");
        // Nothing moves while the copy runs, however long (within the bound).
        sc.at(Duration::from_secs(60));
        assert!(!sc.wants());
        assert_eq!(sc.fetches().len(), 1);
        sc.done(ids[0], Ok(ActionOutcome::Done));
        assert!(sc.wants());
        assert!(sc.sent().unwrap().flags.has(Flags::WANT_ACTIVE));
        assert_eq!(sc.events(EventKind::FailbackDataReady).len(), 1);
        assert_eq!(sc.main.snapshot(sc.now).failback_wait, None);
        // The Standby hands over; the Main starts, and the next failback
        // copies again.
        sc.standby(Status::Inactive);
        assert_eq!(sc.main.status(), Status::Starting);
        assert_eq!(sc.main.data, DataFetch::Idle);
    }

    #[test]
    fn a_failed_copy_holds_the_failback_with_its_reason_and_is_retried() {
        let mut sc = Scene::new(DataFailurePolicy::Hold);
        let ids = sc.fetches();
        sc.done(
            ids[0],
            Err(ActionError("connect: connection refused".into())),
        );
        assert!(!sc.wants());
        let w = sc.main.snapshot(sc.now).failback_wait.unwrap();
        assert!(
            w.contains("failback held") && w.contains("connection refused"),
            "{w}"
        );
        let failed = sc.events(EventKind::FailbackDataFailed);
        assert_eq!(failed.len(), 1);
        assert!(failed[0].contains("standby keeps serving") || failed[0].contains("keeps serving"));
        // Held for as long as it fails: never asks, the Standby serves.
        sc.at(Duration::from_millis(500));
        assert_eq!(sc.fetches().len(), 1, "retried before retry_delay");
        sc.at(Duration::from_secs(1));
        let ids = sc.fetches();
        assert_eq!(ids.len(), 2, "retried after retry_delay");
        sc.done(
            ids[1],
            Err(ActionError("connect: connection refused".into())),
        );
        assert!(!sc.wants());
        assert_eq!(
            sc.events(EventKind::FailbackDataFailed).len(),
            1,
            "the same reason is told once"
        );
        // An admin's failback retries at once; success lets the Main ask.
        sc.main
            .handle_input(Input::Command(sc.now, Command::Failback))
            .unwrap();
        sc.out.extend(drain(&mut sc.main));
        let ids = sc.fetches();
        assert_eq!(ids.len(), 3);
        sc.done(ids[2], Ok(ActionOutcome::Done));
        assert!(sc.wants());
    }

    #[test]
    fn proceed_fails_back_after_a_failure_or_the_bound_with_a_loud_event() {
        let mut sc = Scene::new(DataFailurePolicy::Proceed);
        let ids = sc.fetches();
        sc.done(ids[0], Err(ActionError("hash mismatch".into())));
        assert!(sc.wants());
        let failed = sc.events(EventKind::FailbackDataFailed);
        assert!(
            failed[0].contains("FAILBACK DATA NOT COPIED BACK")
                && failed[0].contains("hash mismatch"),
            "{failed:?}"
        );

        // No answer at all: on at the bound, and not a moment before.
        let mut sc = Scene::new(DataFailurePolicy::Proceed);
        sc.at(WAIT - Duration::from_secs(1));
        assert!(!sc.wants());
        sc.at(Duration::from_secs(1));
        assert!(sc.wants());
        assert!(sc.events(EventKind::FailbackDataFailed)[0].contains("no answer within"));
        // A late answer is taken without fuss.
        let ids = sc.fetches();
        sc.done(ids[0], Ok(ActionOutcome::Done));
        assert!(sc.wants());
    }

    #[test]
    fn a_main_starting_beside_an_inactive_standby_copies_nothing() {
        let now = Instant::now();
        let mut s = settings("main", "standby", NodeType::Main, Mode::Automatic);
        s.failback_data = Some(DataGate {
            wait: WAIT,
            on_failure: DataFailurePolicy::Hold,
        });
        let mut n = Node::new(s, Persisted::default(), 1, now);
        n.handle_input(Input::Timeout(now + Duration::from_secs(4)))
            .unwrap();
        let out = drain(&mut n);
        assert_eq!(n.status(), Status::Starting);
        assert!(!out.iter().any(|o| matches!(
            o,
            Output::Action(Action {
                kind: ActionKind::FetchFailbackData,
                ..
            })
        )));
    }
}
