//! Unit tests of single rules; whole scenarios live in `tests/` (the simulator).
use super::*;

pub(super) fn settings(name: &str, peer: &str, node_type: NodeType, mode: Mode) -> Settings {
    Settings {
        name: name.into(),
        node_type,
        mode,
        peer_name: Some(peer.into()),
        peer_addrs: vec!["127.0.0.1:7400".parse().unwrap()],
        interval: Duration::from_millis(200),
        failover_after: Duration::from_secs(3),
        startup_wait: Duration::from_secs(3),
        failback: FailbackPolicy::Immediate,
        split_brain: SplitBrainPolicy::Main,
        drain: None,
        arbiters: false,
        start_attempts: 3,
        retry_delay: Duration::from_secs(1),
        fault_hold: Duration::from_secs(60),
        failback_data: None,
        stop_timeout: Duration::from_secs(60),
        new_calls: NewCallsPolicy::Standby,
        key: crate::ClusterKey::new(&[1; 32]).unwrap(),
    }
}

pub(super) fn drain(node: &mut Node) -> Vec<Output> {
    let mut v = Vec::new();
    loop {
        match node.poll_output() {
            Output::Timeout(_) => return v,
            o => v.push(o),
        }
    }
}

#[test]
fn boot_persists_a_new_boot_id_and_logs_it() {
    let now = Instant::now();
    let p = Persisted {
        epoch: 7,
        starts: 4,
        admin: None,
        serving: false,
    };
    let mut n = Node::new(
        settings("a", "b", NodeType::Standby, Mode::Automatic),
        p,
        0xb007,
        now,
    );
    let out = drain(&mut n);
    assert!(out.iter().any(|o| matches!(o, Output::Action(Action { kind: ActionKind::Persist(p), .. }) if p.starts == 5 && p.epoch == 7)));
    assert!(out.iter().any(|o| matches!(o, Output::Event(e) if matches!(e.kind, EventKind::Booted { starts: 5, epoch: 7, boot_id: 0xb007, .. }))));
    assert_eq!(n.status(), Status::Inactive);
}

#[test]
fn active_flag_event_uses_xivo_words() {
    let now = Instant::now();
    let mut n = Node::new(
        settings("a", "b", NodeType::Main, Mode::Manual),
        Persisted::default(),
        0xb007,
        now,
    );
    drain(&mut n);
    n.handle_input(Input::Command(now, Command::StartServices { force: false }))
        .unwrap();
    let out = drain(&mut n);
    let id = out
        .iter()
        .find_map(|o| match o {
            Output::Action(Action {
                id,
                kind: ActionKind::StartServices,
            }) => Some(*id),
            _ => None,
        })
        .expect("start action");
    n.handle_input(Input::ActionDone(now, id, Ok(ActionOutcome::Done)))
        .unwrap();
    let lines: Vec<String> = drain(&mut n)
        .into_iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.to_string()),
            _ => None,
        })
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Updating resilience state, from: False to: True")),
        "{lines:?}"
    );
}

#[test]
fn disabled_node_serves_alone_and_refuses_commands() {
    let now = Instant::now();
    let mut s = settings("a", "b", NodeType::Disabled, Mode::Automatic);
    s.peer_name = None;
    s.peer_addrs.clear();
    let mut n = Node::new(s, Persisted::default(), 0xb007, now);
    // It listens for pair members for startup_wait before serving alone.
    let starts = |out: &[Output]| {
        out.iter().any(|o| {
            matches!(
                o,
                Output::Action(Action {
                    kind: ActionKind::StartServices,
                    ..
                })
            )
        })
    };
    let out = drain(&mut n);
    assert!(!starts(&out));
    assert!(n
        .snapshot(now)
        .guard
        .is_some_and(|g| g.contains("listening")));
    let now = now + Duration::from_secs(3);
    n.handle_input(Input::Timeout(now)).unwrap();
    let out = drain(&mut n);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Action(Action {
            kind: ActionKind::StartServices,
            ..
        })
    )));
    assert!(!out.iter().any(|o| matches!(o, Output::Transmit(_))));
    let e = n
        .handle_input(Input::Command(now, Command::StopServices))
        .unwrap_err();
    assert!(matches!(e, InputError::Refused { .. }));
}

#[test]
fn garbage_datagram_is_counted_not_trusted() {
    let now = Instant::now();
    let mut n = Node::new(
        settings("a", "b", NodeType::Standby, Mode::Automatic),
        Persisted::default(),
        0xb007,
        now,
    );
    drain(&mut n);
    let from = "127.0.0.1:1".parse().unwrap();
    for _ in 0..3 {
        let e = n
            .handle_input(Input::Datagram(now, from, b"hello"))
            .unwrap_err();
        assert_eq!(e, InputError::Rejected(Reject::BadMagic));
    }
    let snap = n.snapshot(now);
    assert_eq!(
        snap.rejected
            .iter()
            .find(|(l, _)| *l == "bad_magic")
            .unwrap()
            .1,
        3
    );
    assert!(!snap.peer.unwrap().heard);
}

#[test]
fn frames_from_self_or_strangers_are_refused() {
    let now = Instant::now();
    let s = settings("a", "b", NodeType::Standby, Mode::Automatic);
    let key = s.key.clone();
    let mut n = Node::new(s, Persisted::default(), 0xb007, now);
    let from = "127.0.0.1:1".parse().unwrap();
    let mut f = Frame {
        node_type: NodeType::Main,
        mode: Mode::Automatic,
        status: Status::Active,
        pbx: PbxHealth::Up,
        flags: Flags::default(),
        boot: 1,
        seq: 1,
        epoch: 1,
        replication: 0,
        challenge: 5,
        echo: 0,
        calls: None,
        name: "a".into(),
    };
    let bytes = heartbeat::encode(&f, &key);
    assert_eq!(
        n.handle_input(Input::Datagram(now, from, &bytes)),
        Err(InputError::Rejected(Reject::FromSelf))
    );
    f.name = "mallory".into();
    let bytes = heartbeat::encode(&f, &key);
    assert_eq!(
        n.handle_input(Input::Datagram(now, from, &bytes)),
        Err(InputError::Rejected(Reject::UnknownSender))
    );
    f.name = "b".into();
    // The peer's first frame does not echo our challenge yet: not taken.
    let bytes = heartbeat::encode(&f, &key);
    assert_eq!(
        n.handle_input(Input::Datagram(now, from, &bytes)),
        Err(InputError::Rejected(Reject::Unconfirmed))
    );
    // Once it echoes the challenge of our next heartbeat, it is.
    let now = now + Duration::from_secs(1);
    n.handle_input(Input::Timeout(now)).unwrap();
    let ours = drain(&mut n)
        .into_iter()
        .rev()
        .find_map(|o| match o {
            Output::Transmit(t) => heartbeat::decode(&t.bytes, &key).ok(),
            _ => None,
        })
        .expect("a heartbeat");
    assert_eq!(ours.echo, 5, "we echo the peer's challenge");
    f.echo = ours.challenge;
    f.seq = 2;
    let bytes = heartbeat::encode(&f, &key);
    assert_eq!(n.handle_input(Input::Datagram(now, from, &bytes)), Ok(()));
    assert_eq!(
        n.handle_input(Input::Datagram(now, from, &bytes)),
        Err(InputError::Rejected(Reject::Replayed))
    );
    assert!(n.snapshot(now).peer.unwrap().heard);
}

#[test]
fn deadline_is_never_in_the_past() {
    let now = Instant::now();
    let mut n = Node::new(
        settings("a", "b", NodeType::Standby, Mode::Automatic),
        Persisted::default(),
        0xb007,
        now,
    );
    let mut t = now;
    for _ in 0..100 {
        let next = loop {
            if let Output::Timeout(at) = n.poll_output() {
                break at;
            }
        };
        assert!(next > t);
        t = next;
        n.handle_input(Input::Timeout(t)).unwrap();
    }
}

/// A failed stop is retried even when an admin's start (which clears a
/// fault and its retries) comes in meanwhile: the services may still run.
#[test]
fn a_start_command_keeps_a_failed_stops_retry() {
    let now = Instant::now();
    let mut n = Node::new(
        settings("a", "b", NodeType::Main, Mode::Manual),
        Persisted::default(),
        1,
        now,
    );
    drain(&mut n);
    let action = |out: Vec<Output>, want: ActionKind| {
        out.into_iter()
            .find_map(|o| match o {
                Output::Action(a) if a.kind == want => Some(a.id),
                _ => None,
            })
            .expect("the action")
    };
    n.handle_input(Input::Command(now, Command::StartServices { force: false }))
        .unwrap();
    let id = action(drain(&mut n), ActionKind::StartServices);
    n.handle_input(Input::ActionDone(now, id, Ok(ActionOutcome::Done)))
        .unwrap();
    n.handle_input(Input::Command(now, Command::StopServices))
        .unwrap();
    let id = action(drain(&mut n), ActionKind::StopServices);
    n.handle_input(Input::ActionDone(now, id, Err(ActionError("stuck".into()))))
        .unwrap();
    n.handle_input(Input::Command(now, Command::StartServices { force: false }))
        .unwrap();
    drain(&mut n);
    assert_eq!(n.status(), Status::Stopping);
    let later = now + Duration::from_secs(1);
    n.handle_input(Input::Timeout(later)).unwrap();
    action(drain(&mut n), ActionKind::StopServices);
}

#[test]
fn services_at_boot_from_each_services_state() {
    use ServicesAtBoot::*;
    assert_eq!(ServicesAtBoot::from_states([]), Stopped);
    assert_eq!(
        ServicesAtBoot::from_states([Some(false), Some(false)]),
        Stopped
    );
    assert_eq!(
        ServicesAtBoot::from_states([Some(true), Some(true)]),
        Running
    );
    assert_eq!(
        ServicesAtBoot::from_states([Some(true), Some(false)]),
        Unclear
    );
    assert_eq!(ServicesAtBoot::from_states([Some(true), None]), Unclear);
}
