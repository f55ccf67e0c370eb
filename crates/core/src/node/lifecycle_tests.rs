//! Unit tests of the stop and restart rules: one node, or two wired
//! together by a small pump (whole runs with faults live in the simulator).
use super::*;
use std::net::SocketAddr;

fn settings(name: &str, peer: &str, node_type: NodeType) -> Settings {
    Settings {
        name: name.into(),
        node_type,
        mode: Mode::Automatic,
        peer_name: Some(peer.into()),
        peer_addrs: vec!["127.0.0.1:7400".parse().unwrap()],
        interval: Duration::from_millis(200),
        // Long, so nothing here happens by silence.
        failover_after: Duration::from_secs(30),
        startup_wait: Duration::from_secs(30),
        failback: FailbackPolicy::Immediate,
        split_brain: SplitBrainPolicy::Main,
        drain: Some(DrainPolicy {
            timeout: Duration::from_secs(300),
            poll: Duration::from_secs(1),
        }),
        arbiters: false,
        start_attempts: 3,
        retry_delay: Duration::from_secs(1),
        fault_hold: Duration::from_secs(60),
        stop_timeout: Duration::from_secs(20),
        new_calls: NewCallsPolicy::Standby,
        failback_data: None,
        key: crate::ClusterKey::new(&[1; 32]).unwrap(),
    }
}

const FROM: &str = "127.0.0.1:1";

/// A node and what its runtime would hold: services, calls, the pending
/// service action.
struct Host {
    node: Node,
    services: bool,
    calls: u32,
    starts: u32,
    stops: u32,
    /// Stop actions still to fail (a stuck service).
    stop_fails: u32,
    events: Vec<String>,
    frames: Vec<Frame>,
}

impl Host {
    fn new(node: Node, services: bool) -> Host {
        Host {
            node,
            services,
            calls: 0,
            starts: 0,
            stops: 0,
            stop_fails: 0,
            events: Vec::new(),
            frames: Vec::new(),
        }
    }
    fn has(&self, text: &str) -> bool {
        self.events.iter().any(|e| e.contains(text))
    }
}

/// Run both nodes until `until`: frames cross at once, service actions
/// finish 100 ms later, calls end when counted if `calls_end`.
fn run(h: &mut [Host; 2], now: &mut Instant, d: Duration) {
    let until = *now + d;
    let key = crate::ClusterKey::new(&[1; 32]).unwrap();
    let from: SocketAddr = FROM.parse().unwrap();
    type Pending = (
        Instant,
        usize,
        ActionId,
        bool,
        Result<ActionOutcome, ActionError>,
    );
    let mut pending: Vec<Pending> = Vec::new();
    let mut steps = 0u32;
    loop {
        let mut deadline = until;
        let mut busy = true;
        while busy {
            busy = false;
            for i in 0..2 {
                loop {
                    match h[i].node.poll_output() {
                        Output::Timeout(at) => {
                            deadline = deadline.min(at);
                            break;
                        }
                        Output::Transmit(t) => {
                            busy = true;
                            if let Ok(f) = heartbeat::decode(&t.bytes, &key) {
                                h[i].frames.push(f);
                            }
                            let _ = h[1 - i]
                                .node
                                .handle_input(Input::Datagram(*now, from, &t.bytes));
                        }
                        Output::Event(e) => h[i].events.push(e.to_string()),
                        Output::Action(a) => {
                            let r = match a.kind {
                                ActionKind::StartServices => {
                                    h[i].services = true;
                                    h[i].starts += 1;
                                    Ok(ActionOutcome::Done)
                                }
                                ActionKind::StopServices if h[i].stop_fails > 0 => {
                                    h[i].stop_fails -= 1;
                                    Err(ActionError("the unit did not stop".into()))
                                }
                                ActionKind::StopServices => {
                                    h[i].stops += 1;
                                    Ok(ActionOutcome::Done)
                                }
                                ActionKind::CountActiveCalls => {
                                    Ok(ActionOutcome::ActiveCalls(h[i].calls))
                                }
                                ActionKind::Persist(_) | ActionKind::FetchFailbackData => {
                                    Ok(ActionOutcome::Done)
                                }
                            };
                            let stop = a.kind == ActionKind::StopServices && r.is_ok();
                            pending.push((*now + Duration::from_millis(100), i, a.id, stop, r));
                        }
                    }
                }
            }
        }
        let next = pending
            .iter()
            .map(|p| p.0)
            .min()
            .map_or(deadline, |t| t.min(deadline));
        if next > until || (next == until && *now == until) {
            *now = until;
            return;
        }
        steps += 1;
        assert!(steps < 100_000, "the pair never settles");
        *now = next.max(*now);
        let due: Vec<_> = pending.iter().filter(|p| p.0 <= *now).cloned().collect();
        pending.retain(|p| p.0 > *now);
        for (_, i, id, stop, r) in due {
            if stop {
                h[i].services = false;
            }
            let _ = h[i].node.handle_input(Input::ActionDone(*now, id, r));
        }
        for host in h.iter_mut() {
            let _ = host.node.handle_input(Input::Timeout(*now));
        }
    }
}

/// A connected pair, Main Active, Standby Inactive.
fn serving_pair(now: &mut Instant) -> [Host; 2] {
    let main = Node::new(
        settings("m", "s", NodeType::Main),
        Persisted::default(),
        1,
        *now,
    );
    let standby = Node::new(
        settings("s", "m", NodeType::Standby),
        Persisted::default(),
        2,
        *now,
    );
    let mut h = [Host::new(main, false), Host::new(standby, false)];
    run(&mut h, now, Duration::from_secs(2));
    assert_eq!(h[0].node.status(), Status::Active, "{:?}", h[0].events);
    assert_eq!(h[1].node.status(), Status::Inactive);
    h
}

#[test]
fn shutdown_of_the_active_main_hands_over_at_once() {
    let mut now = Instant::now();
    let mut h = serving_pair(&mut now);
    let t0 = now;
    h[0].frames.clear();
    h[0].node.handle_input(Input::Shutdown(now)).unwrap();
    // The first frame out says "leaving", before any service is touched.
    let first = h[0].node.poll_output();
    match first {
        Output::Event(e) => assert_eq!(e.kind, EventKind::Leaving),
        o => panic!("{o:?}"),
    }
    run(&mut h, &mut now, Duration::from_secs(3));
    let leaving = h[0].frames.first().expect("a frame");
    assert!(leaving.flags.has(Flags::LEAVING) && leaving.flags.has(Flags::YIELDING));
    assert!(h[0].node.is_done(), "{:?}", h[0].events);
    assert!(!h[0].services, "the stopped node leaves no PBX running");
    assert_eq!(h[1].node.status(), Status::Active, "{:?}", h[1].events);
    assert!(h[1].has("is leaving"), "{:?}", h[1].events);
    // Within the heartbeat and action times, nowhere near failover_after.
    assert!(now - t0 <= Duration::from_secs(3));
}

#[test]
fn shutdown_drains_calls_within_the_stop_timeout() {
    let mut now = Instant::now();
    let mut h = serving_pair(&mut now);
    h[0].calls = 2;
    h[0].node.handle_input(Input::Shutdown(now)).unwrap();
    run(&mut h, &mut now, Duration::from_secs(10));
    assert_eq!(
        h[0].node.status(),
        Status::Draining,
        "calls keep it draining"
    );
    assert_eq!(h[1].node.status(), Status::Inactive, "never two serving");
    assert!(h[0].services);
    // The drain ends at stop_timeout (20 s), not the drain policy's 300 s.
    run(&mut h, &mut now, Duration::from_secs(12));
    assert!(h[0].node.is_done(), "{:?}", h[0].events);
    assert!(
        h[0].has("drain timed out with 2 active calls"),
        "{:?}",
        h[0].events
    );
    assert_eq!(h[1].node.status(), Status::Active);
}

#[test]
fn shutdown_of_an_inactive_node_is_done_at_once() {
    let mut now = Instant::now();
    let mut h = serving_pair(&mut now);
    h[1].node.handle_input(Input::Shutdown(now)).unwrap();
    assert!(h[1].node.is_done());
    run(&mut h, &mut now, Duration::from_secs(1));
    assert_eq!(h[1].stops, 0, "nothing to stop");
    assert_eq!(h[0].node.status(), Status::Active);
}

#[test]
fn shutdown_of_the_active_standby_gives_the_service_to_the_main() {
    let mut now = Instant::now();
    let mut s = settings("m", "s", NodeType::Main);
    s.failback = FailbackPolicy::Manual;
    let main = Node::new(s, Persisted::default(), 1, now);
    // The Standby serves (it took over earlier): it adopts at boot alone.
    let facts = Persisted {
        serving: true,
        ..Persisted::default()
    };
    let standby = Node::boot(
        settings("s", "m", NodeType::Standby),
        facts,
        ServicesAtBoot::Running,
        2,
        now,
    );
    let mut h = [Host::new(main, false), Host::new(standby, true)];
    run(&mut h, &mut now, Duration::from_secs(2));
    assert_eq!(h[1].node.status(), Status::Active, "{:?}", h[1].events);
    assert_eq!(
        h[0].node.status(),
        Status::Inactive,
        "manual failback: waits"
    );
    h[1].node.handle_input(Input::Shutdown(now)).unwrap();
    run(&mut h, &mut now, Duration::from_secs(2));
    assert!(h[1].node.is_done());
    assert_eq!(h[0].node.status(), Status::Active, "{:?}", h[0].events);
    assert!(h[0].has("standby s is leaving"), "{:?}", h[0].events);
}

#[test]
fn restarted_main_adopts_running_services_when_the_standby_is_inactive() {
    let mut now = Instant::now();
    let mut h = serving_pair(&mut now);
    // The Main's daemon restarts (an upgrade or a crash): services still run.
    let facts = Persisted {
        epoch: h[0].node.epoch(),
        starts: 1,
        admin: None,
        serving: true,
    };
    h[0].node = Node::boot(
        settings("m", "s", NodeType::Main),
        facts,
        ServicesAtBoot::Running,
        3,
        now,
    );
    h[0].events.clear();
    h[0].frames.clear();
    run(&mut h, &mut now, Duration::from_secs(3));
    assert!(h[0].frames[0].flags.has(Flags::ADOPTING));
    assert_eq!(h[0].node.status(), Status::Active, "{:?}", h[0].events);
    assert!(h[0].has("adopted the services left running, not restarted (s is inactive)"));
    assert_eq!(h[0].starts, 1, "not started again");
    assert_eq!(h[0].stops, 0);
    assert_eq!(h[1].node.status(), Status::Inactive, "{:?}", h[1].events);
}

#[test]
fn restarted_standby_adopts_and_the_waiting_main_does_not_start() {
    let mut now = Instant::now();
    let mut s = settings("m", "s", NodeType::Main);
    s.failback = FailbackPolicy::Manual;
    let main = Node::new(s, Persisted::default(), 1, now);
    let facts = Persisted {
        serving: true,
        epoch: 4,
        ..Persisted::default()
    };
    let standby = Node::boot(
        settings("s", "m", NodeType::Standby),
        facts,
        ServicesAtBoot::Running,
        2,
        now,
    );
    let mut h = [Host::new(main, false), Host::new(standby, true)];
    run(&mut h, &mut now, Duration::from_secs(5));
    // The Main heard an Inactive Standby (adopting) and did not start on it.
    assert_eq!(h[0].starts, 0, "{:?}", h[0].events);
    assert_eq!(h[1].node.status(), Status::Active);
    assert_eq!(h[1].node.epoch(), 4, "its own epoch, above the Main's");
}

#[test]
fn restarted_node_stops_services_when_the_peer_serves() {
    let mut now = Instant::now();
    let mut h = serving_pair(&mut now);
    // The Standby's daemon restarts with services running that it thinks
    // it served (its facts are stale): the Main is Active.
    let facts = Persisted {
        serving: true,
        ..Persisted::default()
    };
    h[1].node = Node::boot(
        settings("s", "m", NodeType::Standby),
        facts,
        ServicesAtBoot::Running,
        3,
        now,
    );
    h[1].services = true;
    run(&mut h, &mut now, Duration::from_secs(3));
    assert!(!h[1].services, "{:?}", h[1].events);
    assert!(h[1].has("m is active"), "{:?}", h[1].events);
    assert_eq!(h[1].node.status(), Status::Inactive);
    assert_eq!(h[0].node.status(), Status::Active);
}

#[test]
fn restarted_node_adopts_after_the_boot_wait_when_the_peer_is_silent() {
    let now = Instant::now();
    let facts = Persisted {
        serving: true,
        ..Persisted::default()
    };
    let mut n = Node::boot(
        settings("m", "s", NodeType::Main),
        facts,
        ServicesAtBoot::Running,
        3,
        now,
    );
    while !matches!(n.poll_output(), Output::Timeout(_)) {}
    assert_eq!(n.status(), Status::Inactive);
    let wait = n.boot_wait();
    assert!(wait < n.settings().failover_after / 2);
    n.handle_input(Input::Timeout(now + wait - Duration::from_millis(1)))
        .unwrap();
    assert_eq!(n.status(), Status::Inactive);
    n.handle_input(Input::Timeout(now + wait)).unwrap();
    assert_eq!(n.status(), Status::Active);
}

#[test]
fn boot_stops_services_when_not_serving_held_or_unclear() {
    let now = Instant::now();
    let cases = [
        (
            Persisted::default(),
            ServicesAtBoot::Running,
            "was not serving",
        ),
        (
            Persisted {
                serving: true,
                admin: Some(AdminChoice::Stop),
                ..Persisted::default()
            },
            ServicesAtBoot::Running,
            "an admin had stopped services",
        ),
        (
            Persisted {
                serving: true,
                ..Persisted::default()
            },
            ServicesAtBoot::Unclear,
            "no clear state",
        ),
    ];
    for (facts, seen, why) in cases {
        let mut n = Node::boot(settings("m", "s", NodeType::Main), facts, seen, 3, now);
        let mut stopped = false;
        let mut reason = String::new();
        loop {
            match n.poll_output() {
                Output::Timeout(_) => break,
                Output::Action(a) if a.kind == ActionKind::StopServices => stopped = true,
                Output::Event(e)
                    if e.kind
                        == EventKind::StatusChanged {
                            from: Status::Inactive,
                            to: Status::Stopping,
                        } =>
                {
                    reason = e.reason
                }
                _ => {}
            }
        }
        assert!(stopped, "{why}");
        assert!(reason.contains(why), "{reason}");
        assert_eq!(n.status(), Status::Stopping);
    }
    // Nothing runs: nothing to do.
    let mut n = Node::boot(
        settings("m", "s", NodeType::Main),
        Persisted {
            serving: true,
            ..Persisted::default()
        },
        ServicesAtBoot::Stopped,
        3,
        now,
    );
    let mut persisted_not_serving = false;
    loop {
        match n.poll_output() {
            Output::Timeout(_) => break,
            Output::Action(a) => {
                assert_ne!(a.kind, ActionKind::StopServices);
                persisted_not_serving |= matches!(a.kind, ActionKind::Persist(p) if !p.serving);
            }
            _ => {}
        }
    }
    assert!(persisted_not_serving);
}

#[test]
fn a_disabled_node_adopts_what_runs_at_once() {
    let now = Instant::now();
    let mut s = settings("m", "s", NodeType::Disabled);
    s.peer_name = None;
    s.peer_addrs.clear();
    let mut n = Node::boot(s, Persisted::default(), ServicesAtBoot::Running, 3, now);
    let mut started = false;
    loop {
        match n.poll_output() {
            Output::Timeout(_) => break,
            Output::Action(a) => started |= a.kind == ActionKind::StartServices,
            _ => {}
        }
    }
    assert!(!started);
    assert_eq!(n.status(), Status::Active);
}

#[test]
fn serving_is_kept_while_services_run() {
    let mut now = Instant::now();
    let mut h = serving_pair(&mut now);
    assert!(h[0].node.serving);
    h[0].node
        .handle_input(Input::Command(now, Command::StopServices))
        .unwrap();
    run(&mut h, &mut now, Duration::from_secs(1));
    assert!(!h[0].services);
    assert!(
        !h[0].node.serving,
        "stopped: nothing to adopt at the next start"
    );
}

/// A stop that failed and waits for its retry when the daemon is told to
/// stop: the retry still runs, and the daemon is done only once the
/// services are stopped (it never exits with its PBX running).
#[test]
fn shutdown_while_a_failed_stop_waits_for_its_retry_still_stops_the_services() {
    let mut now = Instant::now();
    let mut h = serving_pair(&mut now);
    h[0].stop_fails = 1;
    h[0].node
        .handle_input(Input::Command(now, Command::StopServices))
        .unwrap();
    // The stop fails after 100 ms; the retry waits `retry_delay` (1 s).
    run(&mut h, &mut now, Duration::from_millis(300));
    assert_eq!(h[0].node.status(), Status::Stopping, "{:?}", h[0].events);
    assert!(h[0].services);
    h[0].node.handle_input(Input::Shutdown(now)).unwrap();
    run(&mut h, &mut now, Duration::from_secs(5));
    assert!(!h[0].services, "{:?}", h[0].events);
    assert!(h[0].node.is_done(), "{:?}", h[0].events);
}

/// A Main Active, a Standby Active and draining because its daemon was told
/// to stop: the split-brain rule still makes the loser step down, rather
/// than two PBXs serving for the whole drain.
#[test]
fn a_leaving_node_still_applies_the_split_brain_rule() {
    let mut now = Instant::now();
    let mut s = settings("m", "s", NodeType::Main);
    s.failback = FailbackPolicy::Manual;
    let main = Node::new(s.clone(), Persisted::default(), 1, now);
    let facts = Persisted {
        serving: true,
        ..Persisted::default()
    };
    let standby = Node::boot(
        settings("s", "m", NodeType::Standby),
        facts,
        ServicesAtBoot::Running,
        2,
        now,
    );
    let mut h = [Host::new(main, false), Host::new(standby, true)];
    run(&mut h, &mut now, Duration::from_secs(2));
    assert_eq!(h[1].node.status(), Status::Active, "{:?}", h[1].events);
    h[1].calls = 2;
    h[1].node.handle_input(Input::Shutdown(now)).unwrap();
    run(&mut h, &mut now, Duration::from_secs(1));
    assert_eq!(h[1].node.status(), Status::Draining, "{:?}", h[1].events);
    // The Main's daemon restarts with services it left running and adopts
    // them without hearing its peer (a cut during its boot wait).
    let mut m = Node::boot(
        s,
        Persisted {
            serving: true,
            epoch: 9,
            ..Persisted::default()
        },
        ServicesAtBoot::Running,
        3,
        now,
    );
    let wait = m.boot_wait();
    while !matches!(m.poll_output(), Output::Timeout(_)) {}
    m.handle_input(Input::Timeout(now + wait)).unwrap();
    while !matches!(m.poll_output(), Output::Timeout(_)) {}
    assert_eq!(m.status(), Status::Active);
    now += wait;
    h[0] = Host::new(m, true);
    run(&mut h, &mut now, Duration::from_secs(2));
    assert!(h[1].has("split brain resolved"), "{:?}", h[1].events);
    assert!(!h[1].services, "{:?}", h[1].events);
    assert_eq!(h[0].node.status(), Status::Active);
}

/// The Main hands over by an admin's switchover, its daemon crashes during
/// the drain and restarts at once, adopting its services: the switchover
/// the admin asked for resumes (the hold does not leave it stuck Active
/// and yielding).
#[test]
fn a_main_restarted_mid_switchover_resumes_it() {
    let mut now = Instant::now();
    let mut h = serving_pair(&mut now);
    h[0].calls = 2;
    h[0].node
        .handle_input(Input::Command(now, Command::Switchover))
        .unwrap();
    run(&mut h, &mut now, Duration::from_secs(1));
    assert_eq!(h[0].node.status(), Status::Draining, "{:?}", h[0].events);
    let facts = Persisted {
        epoch: h[0].node.epoch(),
        starts: 1,
        admin: Some(AdminChoice::SwitchedAway),
        serving: true,
    };
    h[0].node = Node::boot(
        settings("m", "s", NodeType::Main),
        facts,
        ServicesAtBoot::Running,
        3,
        now,
    );
    h[0].events.clear();
    run(&mut h, &mut now, Duration::from_secs(3));
    assert!(h[0].has("resum"), "{:?}", h[0].events);
    assert_eq!(
        h[1].starts, 0,
        "not beside the adopting Main: {:?}",
        h[1].events
    );
    h[0].calls = 0;
    run(&mut h, &mut now, Duration::from_secs(3));
    assert_eq!(h[1].node.status(), Status::Active, "{:?}", h[0].events);
    assert_eq!(h[0].node.status(), Status::Inactive, "{:?}", h[0].events);
    assert!(!h[0].services);
}

/// Same crash, but the Standby is not heard when the restarted Main adopts:
/// the switchover cannot go on, it is cancelled with an event and the hold
/// is dropped (the Main serves and does not yield).
#[test]
fn a_main_restarted_mid_switchover_without_its_peer_cancels_it() {
    let now = Instant::now();
    let facts = Persisted {
        epoch: 3,
        starts: 1,
        admin: Some(AdminChoice::SwitchedAway),
        serving: true,
    };
    let mut n = Node::boot(
        settings("m", "s", NodeType::Main),
        facts,
        ServicesAtBoot::Running,
        3,
        now,
    );
    let wait = n.boot_wait();
    let mut events = Vec::new();
    n.handle_input(Input::Timeout(now + wait)).unwrap();
    loop {
        match n.poll_output() {
            Output::Timeout(_) => break,
            Output::Event(e) => events.push(e),
            _ => {}
        }
    }
    assert_eq!(n.status(), Status::Active);
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::SwitchoverCancelled),
        "{events:?}"
    );
    assert!(!n.is_yielding());
    assert_eq!(n.snapshot(now + wait).admin, None);
}

/// A disabled node that found its services in an unclear state is stopped
/// during its startup_wait: it stops them before it is done.
#[test]
fn a_disabled_node_stopped_during_startup_wait_stops_unclear_services() {
    let now = Instant::now();
    let mut s = settings("m", "s", NodeType::Disabled);
    s.peer_name = None;
    s.peer_addrs.clear();
    let mut n = Node::boot(s, Persisted::default(), ServicesAtBoot::Unclear, 3, now);
    while !matches!(n.poll_output(), Output::Timeout(_)) {}
    let at = now + Duration::from_secs(1);
    n.handle_input(Input::Shutdown(at)).unwrap();
    let mut stop = None;
    loop {
        match n.poll_output() {
            Output::Timeout(_) => break,
            Output::Action(a) if a.kind == ActionKind::StopServices => stop = Some(a.id),
            _ => {}
        }
    }
    let id = stop.expect("the services that may run are stopped");
    assert!(!n.is_done(), "not done before they are stopped");
    n.handle_input(Input::ActionDone(at, id, Ok(ActionOutcome::Done)))
        .unwrap();
    assert!(n.is_done());
}

/// A Standby drains toward its Main (failback), and the Main's daemon is
/// re-executed (an upgrade): its first frames do not hear the Standby yet.
/// The drain goes on, and the failback completes.
#[test]
fn a_receivers_upgrade_does_not_cancel_a_failback_drain() {
    let mut now = Instant::now();
    let main = Node::new(
        settings("m", "s", NodeType::Main),
        Persisted::default(),
        1,
        now,
    );
    let standby = Node::boot(
        settings("s", "m", NodeType::Standby),
        Persisted {
            serving: true,
            epoch: 4,
            ..Persisted::default()
        },
        ServicesAtBoot::Running,
        2,
        now,
    );
    let mut h = [Host::new(main, false), Host::new(standby, true)];
    h[1].calls = 2;
    run(&mut h, &mut now, Duration::from_secs(3));
    assert_eq!(h[1].node.status(), Status::Draining, "{:?}", h[1].events);
    // The Main re-executes: services stopped, nothing to adopt.
    h[0].node = Node::boot(
        settings("m", "s", NodeType::Main),
        Persisted {
            epoch: 4,
            starts: 1,
            ..Persisted::default()
        },
        ServicesAtBoot::Stopped,
        5,
        now,
    );
    run(&mut h, &mut now, Duration::from_secs(3));
    assert!(!h[1].has("cancelled"), "{:?}", h[1].events);
    h[1].calls = 0;
    run(&mut h, &mut now, Duration::from_secs(3));
    assert_eq!(h[0].node.status(), Status::Active, "{:?}", h[1].events);
    assert!(!h[1].services);
}

/// The same for a switchover: the Main hands over to its Standby, whose
/// daemon is re-executed during the drain.
#[test]
fn a_receivers_upgrade_does_not_cancel_a_switchover_drain() {
    let mut now = Instant::now();
    let mut h = serving_pair(&mut now);
    h[0].calls = 2;
    h[0].node
        .handle_input(Input::Command(now, Command::Switchover))
        .unwrap();
    // (Not at a whole second: a count of calls is not left in flight.)
    run(&mut h, &mut now, Duration::from_millis(1500));
    assert_eq!(h[0].node.status(), Status::Draining, "{:?}", h[0].events);
    // Its first frame is lost: it learns the Main's challenge from the
    // Main's next frame, and its next frame, which the Main accepts, does
    // not hear the Main yet (as after a re-exec).
    let mut n = Node::boot(
        settings("s", "m", NodeType::Standby),
        Persisted::default(),
        ServicesAtBoot::Stopped,
        6,
        now,
    );
    while !matches!(n.poll_output(), Output::Timeout(_)) {}
    h[1].node = n;
    run(&mut h, &mut now, Duration::from_secs(3));
    assert!(!h[0].has("cancelled"), "{:?}", h[0].events);
    h[0].calls = 0;
    run(&mut h, &mut now, Duration::from_secs(3));
    assert_eq!(h[1].node.status(), Status::Active, "{:?}", h[0].events);
    assert!(!h[0].services);
}

/// The receiver does not come back within failover_after: the drain is
/// cancelled as before and the draining node keeps serving.
#[test]
fn a_receiver_that_does_not_come_back_cancels_the_drain() {
    let mut now = Instant::now();
    let mut h = serving_pair(&mut now);
    h[0].calls = 2;
    h[0].node
        .handle_input(Input::Command(now, Command::Switchover))
        .unwrap();
    run(&mut h, &mut now, Duration::from_secs(1));
    // The Standby comes back but never hears the Main (a one-way cut).
    // (It expects a peer of another name: the Main's frames are dropped.)
    h[1].node = Node::boot(
        settings("s", "x", NodeType::Standby),
        Persisted::default(),
        ServicesAtBoot::Stopped,
        6,
        now,
    );
    run(&mut h, &mut now, Duration::from_secs(40));
    assert!(h[0].has("cancelled"), "{:?}", h[0].events);
    assert_eq!(h[0].node.status(), Status::Active);
}

/// The serving Standby's daemon is stopped while its Main waits (manual
/// failback): the Main's data gate applies as at failback, so the kept
/// data is copied home before the Main starts; the Standby stays until the
/// Main has taken the service.
#[test]
fn a_leaving_standby_hands_over_through_the_mains_data_gate() {
    let mut now = Instant::now();
    let mut s = settings("m", "s", NodeType::Main);
    s.failback = FailbackPolicy::Manual;
    s.failback_data = Some(DataGate {
        wait: Duration::from_secs(10),
        on_failure: DataFailurePolicy::Hold,
    });
    let main = Node::new(s, Persisted::default(), 1, now);
    let standby = Node::boot(
        settings("s", "m", NodeType::Standby),
        Persisted {
            serving: true,
            ..Persisted::default()
        },
        ServicesAtBoot::Running,
        2,
        now,
    );
    let mut h = [Host::new(main, false), Host::new(standby, true)];
    run(&mut h, &mut now, Duration::from_secs(2));
    assert_eq!(h[1].node.status(), Status::Active, "{:?}", h[1].events);
    assert!(
        !h[0].has("failback data copied back"),
        "manual: no copy yet"
    );
    h[1].node.handle_input(Input::Shutdown(now)).unwrap();
    run(&mut h, &mut now, Duration::from_secs(3));
    assert!(h[1].node.is_done(), "{:?}", h[1].events);
    assert_eq!(h[0].node.status(), Status::Active, "{:?}", h[0].events);
    let at = |text: &str| h[0].events.iter().position(|e| e.contains(text));
    let copied = at("failback data copied back").expect("the kept data is copied");
    let started = at("status inactive -> starting").expect("the main starts");
    assert!(copied < started, "{:?}", h[0].events);
}
