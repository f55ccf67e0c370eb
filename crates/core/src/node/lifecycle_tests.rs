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
