use super::*;

const MAIN: System = 0;
const STANDBY: System = 1;
const ALICE: &str = "sip:1001@pbx";
const BOB: &str = "sip:2001@pbx";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A REGISTER for `aor` sent where the router says, answered 200 with a
/// day's expiry: the phone has an entry.
fn reg(r: &mut Router, t: Instant, aor: &str) {
    reg_for(r, t, aor, 86_400);
}

fn reg_for(r: &mut Router, t: Instant, aor: &str, expires: u32) {
    reg_with(r, t, aor, expires, None);
}

fn reg_with(r: &mut Router, t: Instant, aor: &str, expires: u32, template: Option<&str>) {
    let to = r.route(t, aor).unwrap();
    let call_id = format!("cid-{aor}");
    let contact = format!("udp:{aor}");
    r.handle_register_sent(
        t,
        RegisterSent {
            call_id: &call_id,
            aor,
            contact: &contact,
            to,
            requested: Some(expires),
            template: template.map(Into::into),
        },
    );
    r.handle_register_answer(t, &call_id, aor, 200, Some(expires));
}

/// Both PBXs up from t0, IP Office's timers.
fn router(t0: Instant) -> Router {
    let mut r = Router::new(Policy::default(), 2, vec![("2".into(), STANDBY)], t0);
    r.handle_health(t0, MAIN, true);
    r.handle_health(t0, STANDBY, true);
    r
}

#[test]
fn phones_start_at_home_by_prefix_or_default() {
    let t0 = Instant::now();
    let mut r = router(t0);
    assert_eq!(r.route(t0, ALICE), Some(MAIN));
    assert_eq!(r.route(t0, BOB), Some(STANDBY), "2xxx lives on the Standby");
    assert!(r.phone_of(ALICE).is_none(), "routing remembers nothing");
    reg(&mut r, t0, ALICE);
    assert!(!r.phone_of(ALICE).unwrap().is_guest());
}

#[test]
fn failover_only_after_the_delay_then_back_after_the_stable_time() {
    let t0 = Instant::now();
    let mut r = router(t0);
    reg(&mut r, t0, ALICE);
    let down = t0 + secs(10);
    r.handle_health(down, MAIN, false);
    // During the delay a new request still goes where it is answered, but
    // the phone has not failed over.
    assert_eq!(r.route(down + secs(60), ALICE), Some(STANDBY));
    assert_eq!(r.phone_of(ALICE).unwrap().serving, MAIN);
    assert_eq!(r.poll_timeout(), Some(down + secs(180)));
    r.handle_timeout(down + secs(179));
    assert!(r.poll_moves().is_empty());
    r.handle_timeout(down + secs(180));
    let m = r.poll_moves();
    assert_eq!((m.len(), m[0].to), (1, STANDBY), "{m:?}");
    assert!(
        m[0].reason.contains("home down for 180s"),
        "{}",
        m[0].reason
    );
    assert!(r.phone_of(ALICE).unwrap().is_guest());
    assert_eq!(r.expires_for(ALICE, 3600), 120, "a guest comes back sooner");
    // Home back: not before ten stable minutes.
    let up = down + secs(300);
    r.handle_health(up, MAIN, true);
    r.handle_timeout(up + secs(599));
    assert_eq!(r.route(up + secs(599), ALICE), Some(STANDBY));
    r.handle_timeout(up + secs(600));
    let m = r.poll_moves();
    assert_eq!(m[0].to, MAIN);
    assert_eq!(r.route(up + secs(600), ALICE), Some(MAIN));
    assert_eq!(r.expires_for(ALICE, 3600), 3600);
}

#[test]
fn a_flapping_home_restarts_the_stable_time() {
    let t0 = Instant::now();
    let mut r = router(t0);
    reg(&mut r, t0, ALICE);
    r.handle_health(t0, MAIN, false);
    r.handle_timeout(t0 + secs(180));
    let up = t0 + secs(200);
    r.handle_health(up, MAIN, true);
    r.handle_health(up + secs(300), MAIN, false);
    r.handle_health(up + secs(301), MAIN, true);
    r.handle_timeout(up + secs(600));
    assert_eq!(r.phone_of(ALICE).unwrap().serving, STANDBY);
    r.handle_timeout(up + secs(901));
    assert_eq!(r.phone_of(ALICE).unwrap().serving, MAIN);
}

#[test]
fn a_phone_in_a_call_fails_back_only_after_hanging_up() {
    let t0 = Instant::now();
    let mut r = router(t0);
    reg(&mut r, t0, ALICE);
    r.handle_health(t0, MAIN, false);
    r.handle_timeout(t0 + secs(180));
    r.handle_call(t0 + secs(200), "call-1", ALICE);
    r.handle_call_answered(t0 + secs(201), "call-1");
    r.handle_health(t0 + secs(210), MAIN, true);
    let stable = t0 + secs(810);
    r.handle_timeout(stable);
    assert_eq!(r.phone_of(ALICE).unwrap().serving, STANDBY, "busy: stays");
    assert!(
        r.poll_timeout().is_none_or(|t| t > stable),
        "no busy loop while it waits for the hang-up"
    );
    r.handle_call_end(stable + secs(30), "call-1");
    assert_eq!(r.phone_of(ALICE).unwrap().serving, MAIN);
    let m = r.poll_moves();
    assert!(m.last().unwrap().reason.contains("idle"), "{m:?}");
}

/// A REGISTER from the phone sent home, not answered yet.
fn send(r: &mut Router, t: Instant, aor: &str, call_id: &str) {
    r.handle_register_sent(
        t,
        RegisterSent {
            call_id,
            aor,
            contact: "udp:x",
            to: MAIN,
            requested: Some(3600),
            template: None,
        },
    );
}

#[test]
fn homeless_prevention_sends_a_rejected_or_unanswered_register_back() {
    let t0 = Instant::now();
    let mut r = router(t0);
    for aor in [ALICE, "sip:1002@pbx"] {
        reg(&mut r, t0, aor);
    }
    r.handle_health(t0, MAIN, false);
    r.handle_timeout(t0 + secs(180));
    r.handle_health(t0 + secs(200), MAIN, true);
    let back = t0 + secs(800);
    r.handle_timeout(back);
    assert_eq!(r.poll_moves().len(), 4);
    // Home rejects Alice's REGISTER: straight back to the backup.
    send(&mut r, back + secs(1), ALICE, "c1");
    r.handle_register_answer(back + secs(1), "c1", ALICE, 503, None);
    assert_eq!(r.phone_of(ALICE).unwrap().serving, STANDBY);
    let m = r.poll_moves();
    assert!(m[0].reason.contains("503"), "{m:?}");
    // Home never answers 1002's: back after the register timeout.
    send(&mut r, back + secs(2), "sip:1002@pbx", "c2");
    // A deadline may come early (Alice's answered REGISTER left one), never
    // late; waking early changes nothing and finds the real one.
    assert!(r.poll_timeout().unwrap() <= back + secs(6));
    r.handle_timeout(back + secs(5));
    assert_eq!(r.phone_of("sip:1002@pbx").unwrap().serving, MAIN);
    assert_eq!(r.poll_timeout(), Some(back + secs(6)));
    r.handle_timeout(back + secs(6));
    assert_eq!(r.phone_of("sip:1002@pbx").unwrap().serving, STANDBY);
    // Sent back, they wait a whole stable time again: no ping-pong.
    assert_eq!(r.poll_timeout(), Some(back + secs(601)));
    r.handle_timeout(back + secs(600));
    assert_eq!(r.phone_of(ALICE).unwrap().serving, STANDBY);
    r.handle_timeout(back + secs(601));
    assert_eq!(r.phone_of(ALICE).unwrap().serving, MAIN);
    // After the window a rejection is the phone's problem, not a move.
    let mut r2 = router(t0);
    reg(&mut r2, t0, ALICE);
    send(&mut r2, t0, ALICE, "c3");
    r2.handle_register_answer(t0, "c3", ALICE, 503, None);
    assert_eq!(r2.phone_of(ALICE).unwrap().serving, MAIN);
}

#[test]
fn no_failover_to_a_backup_that_is_down_and_none_when_both_are() {
    let t0 = Instant::now();
    let mut r = router(t0);
    reg(&mut r, t0, ALICE);
    r.handle_health(t0, STANDBY, false);
    r.handle_health(t0, MAIN, false);
    r.handle_timeout(t0 + secs(3600));
    assert_eq!(r.phone_of(ALICE).unwrap().serving, MAIN);
    assert_eq!(r.route(t0 + secs(3600), ALICE), None);
    assert_eq!(
        r.poll_timeout(),
        Some(t0 + secs(86_400) + GRACE),
        "no rule deadline, only its expiry"
    );
}

#[test]
fn a_call_never_answered_or_never_hung_up_stops_holding_the_phone() {
    let t0 = Instant::now();
    let policy = Policy {
        failback_stable: secs(60),
        ..Policy::default()
    };
    let mut r = Router::new(policy, 2, vec![], t0);
    r.handle_health(t0, MAIN, true);
    r.handle_health(t0, STANDBY, true);
    reg(&mut r, t0, ALICE);
    r.handle_health(t0, MAIN, false);
    r.handle_timeout(t0 + secs(180));
    assert_eq!(r.phone_of(ALICE).unwrap().serving, STANDBY);
    // An INVITE the dying PBX never answers.
    r.handle_call(t0 + secs(200), "lost", ALICE);
    r.handle_health(t0 + secs(210), MAIN, true);
    r.handle_timeout(t0 + secs(300));
    assert_eq!(r.phone_of(ALICE).unwrap().serving, STANDBY, "still counted");
    assert!(r.poll_timeout().unwrap() <= t0 + secs(380));
    // Timer C: after 180 s unanswered it no longer counts, and the idle
    // phone goes home.
    r.handle_timeout(t0 + secs(380));
    assert_eq!(r.phone_of(ALICE).unwrap().calls, 0);
    assert_eq!(r.phone_of(ALICE).unwrap().serving, MAIN);
    // An answered call whose BYE was lost counts until call_max.
    r.handle_health(t0 + secs(400), MAIN, false);
    r.handle_timeout(t0 + secs(580));
    assert_eq!(r.phone_of(ALICE).unwrap().serving, STANDBY);
    r.handle_call(t0 + secs(600), "long", ALICE);
    r.handle_call_answered(t0 + secs(601), "long");
    r.handle_health(t0 + secs(610), MAIN, true);
    r.handle_timeout(t0 + secs(3600));
    assert_eq!(
        r.phone_of(ALICE).unwrap().serving,
        STANDBY,
        "answered: holds"
    );
    r.handle_timeout(t0 + secs(601 + 4 * 3600));
    assert_eq!(r.phone_of(ALICE).unwrap().serving, MAIN);
}

fn small(t0: Instant, max_phones: usize) -> Router {
    let policy = Policy {
        max_phones,
        ..Policy::default()
    };
    let mut r = Router::new(policy, 2, vec![], t0);
    r.handle_health(t0, MAIN, true);
    r.handle_health(t0, STANDBY, true);
    r
}

#[test]
fn only_an_answered_register_makes_an_entry_and_unregistering_removes_it() {
    let t0 = Instant::now();
    let mut r = small(t0, 10);
    // Routing, a REGISTER sent, a REGISTER refused: no entry.
    assert_eq!(r.route(t0, ALICE), Some(MAIN));
    send(&mut r, t0, ALICE, "c1");
    assert!(r.phone_of(ALICE).is_none());
    r.handle_register_answer(t0, "c1", ALICE, 401, None);
    assert!(r.phone_of(ALICE).is_none());
    assert_eq!(r.counts().pending, 0);
    // An answer for another phone's Call-ID teaches nothing.
    send(&mut r, t0, ALICE, "c2");
    r.handle_register_answer(t0, "c2", BOB, 200, Some(60));
    assert!(r.phone_of(BOB).is_none() && r.phone_of(ALICE).is_none());
    // A 2xx: an entry, its flow known.
    reg_for(&mut r, t0, ALICE, 60);
    assert_eq!(r.counts().phones, 1);
    assert_eq!(
        r.phone_of_flow(&format!("udp:{ALICE}")).map(|a| &**a),
        Some(ALICE)
    );
    // Expires: 0 answered 2xx: gone at once, flow too.
    r.handle_register_sent(
        t0 + secs(1),
        RegisterSent {
            call_id: "c3",
            aor: ALICE,
            contact: &format!("udp:{ALICE}"),
            to: MAIN,
            requested: Some(0),
            template: None,
        },
    );
    assert!(r.phone_of(ALICE).is_some(), "not before the PBX agrees");
    r.handle_register_answer(t0 + secs(1), "c3", ALICE, 200, None);
    assert!(r.phone_of(ALICE).is_none());
    let c = r.counts();
    assert_eq!((c.phones, c.flows, c.unregistered), (0, 0, 1), "{c:?}");
    let ch = r.poll_changes();
    assert_eq!(
        ch.last().map(|(a, row)| (&**a, row.is_none())),
        Some((ALICE, true))
    );
}

#[test]
fn an_entry_expires_with_its_registration_plus_the_grace() {
    let t0 = Instant::now();
    let mut r = small(t0, 10);
    reg_for(&mut r, t0, ALICE, 60);
    reg_for(&mut r, t0, BOB, 120);
    assert_eq!(r.poll_timeout(), Some(t0 + secs(60) + GRACE));
    r.handle_timeout(t0 + secs(60));
    assert!(r.phone_of(ALICE).is_some(), "in its grace");
    r.handle_timeout(t0 + secs(60) + GRACE);
    assert!(r.phone_of(ALICE).is_none());
    // A re-registration pushes the end back.
    reg_for(&mut r, t0 + secs(100), BOB, 120);
    r.handle_timeout(t0 + secs(200));
    assert!(r.phone_of(BOB).is_some());
    assert_eq!(r.poll_timeout(), Some(t0 + secs(220) + GRACE));
    r.handle_timeout(t0 + secs(230));
    let c = r.counts();
    assert_eq!((c.phones, c.flows, c.expired), (0, 0, 2), "{c:?}");
    assert_eq!(r.poll_timeout(), None, "nothing left to wait for");
}

#[test]
fn over_the_cap_a_new_phone_is_relayed_untracked_and_only_expired_ones_are_evicted() {
    let t0 = Instant::now();
    let mut r = small(t0, 2);
    reg_for(&mut r, t0, "sip:1@pbx", 60);
    reg_for(&mut r, t0, "sip:2@pbx", 3600);
    reg_for(&mut r, t0 + secs(1), "sip:3@pbx", 3600);
    assert!(r.phone_of("sip:3@pbx").is_none());
    assert_eq!(r.route(t0, "sip:3@pbx"), Some(MAIN), "still relayed");
    assert_eq!(r.counts().over_cap, 1);
    // Phone 1's registration ran out (in its grace): it makes room.
    reg_for(&mut r, t0 + secs(61), "sip:3@pbx", 3600);
    assert!(r.phone_of("sip:3@pbx").is_some());
    assert!(r.phone_of("sip:1@pbx").is_none());
    assert!(
        r.phone_of("sip:2@pbx").is_some(),
        "registered: never evicted"
    );
    let c = r.counts();
    assert_eq!((c.phones, c.evicted, c.over_cap), (2, 1, 1), "{c:?}");
    // A known phone re-registers whatever the cap.
    reg_for(&mut r, t0 + secs(62), "sip:2@pbx", 3600);
    assert_eq!(r.counts().over_cap, 1);
}

#[test]
fn unanswered_registers_are_bounded_and_time_out() {
    let t0 = Instant::now();
    let mut r = small(t0, 3);
    for i in 0..5 {
        send(
            &mut r,
            t0 + secs(i),
            &format!("sip:{i}@pbx"),
            &format!("c{i}"),
        );
    }
    let c = r.counts();
    assert_eq!((c.pending, c.pending_dropped), (3, 2), "{c:?}");
    // The oldest went: its late answer makes nothing.
    r.handle_register_answer(t0 + secs(5), "c0", "sip:0@pbx", 200, Some(60));
    assert!(r.phone_of("sip:0@pbx").is_none());
    assert_eq!(r.poll_timeout(), Some(t0 + secs(2) + secs(4)));
    r.handle_timeout(t0 + secs(8));
    let c = r.counts();
    assert_eq!((c.pending, c.register_timeouts), (0, 3), "{c:?}");
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn a_moved_phone_is_registered_at_its_new_pbx_for_what_is_left_of_its_expiry() {
    let t0 = Instant::now();
    let mut r = router(t0);
    reg_with(&mut r, t0, ALICE, 3600, Some("alice's"));
    reg_for(&mut r, t0, "sip:1002@pbx", 3600);
    r.handle_health(t0 + secs(10), MAIN, false);
    assert!(r.poll_reregister().is_empty(), "not before the move");
    r.handle_timeout(t0 + secs(190));
    assert_eq!(r.poll_moves().len(), 2);
    let rr = r.poll_reregister();
    assert_eq!(rr.len(), 1, "only a phone whose REGISTER was kept: {rr:?}");
    assert_eq!((&*rr[0].aor, rr[0].to), (ALICE, STANDBY));
    assert_eq!(&*rr[0].template, "alice's");
    assert_eq!(rr[0].expires, 3600 - 190);
    assert!(rr[0].call_id.starts_with("rs-"));
    // Its answer is the edge's: counted, the phone's expiry unchanged.
    let before = r.phone_of(ALICE).unwrap().expires_at;
    r.handle_register_answer(t0 + secs(190), &rr[0].call_id, ALICE, 200, Some(120));
    assert_eq!(r.phone_of(ALICE).unwrap().expires_at, before);
    assert_eq!(r.counts().reregisters_ok, 1);
    // Home back and stable: registered home again; home refusing it within
    // the window sends the phone back (never homeless).
    r.handle_health(t0 + secs(200), MAIN, true);
    r.handle_timeout(t0 + secs(800));
    let rr = r.poll_reregister();
    assert_eq!((rr.len(), rr[0].to), (1, MAIN));
    assert_ne!(rr[0].call_id, "rs-1");
    assert_eq!(r.phone_of(ALICE).unwrap().serving, MAIN);
    r.handle_timeout(t0 + secs(803));
    assert_eq!(
        r.phone_of(ALICE).unwrap().serving,
        MAIN,
        "an unanswered one is not the phone's"
    );
    r.handle_register_answer(t0 + secs(803), &rr[0].call_id, ALICE, 503, None);
    assert_eq!(r.phone_of(ALICE).unwrap().serving, STANDBY);
    assert_eq!(r.counts().reregisters_sent, 3);
}

#[test]
fn counts_and_changes_follow_events_without_a_walk() {
    let t0 = Instant::now();
    let mut r = router(t0);
    reg(&mut r, t0, ALICE);
    reg(&mut r, t0, BOB);
    let ch = r.poll_changes();
    assert_eq!(ch.len(), 2);
    assert!(ch.iter().all(|(_, row)| row.is_some()));
    r.handle_health(t0, MAIN, false);
    r.handle_timeout(t0 + secs(180));
    assert_eq!(r.counts().away, 1, "Alice is away; Bob's home is up");
    let ch = r.poll_changes();
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].1.as_ref().unwrap().serving, STANDBY);
    let flow = format!("udp:{ALICE}");
    let aor = r.phone_of_flow(&flow).unwrap().clone();
    r.handle_call(t0 + secs(181), "call", &aor);
    assert_eq!(r.counts().calls, 1);
    assert_eq!(r.poll_changes()[0].1.as_ref().unwrap().calls, 1);
    r.handle_call(t0 + secs(181), "other", "sip:stranger@pbx");
    assert_eq!(
        r.counts().calls,
        1,
        "an unregistered phone's call is not counted"
    );
}
