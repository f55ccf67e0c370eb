use super::*;

const MAIN: System = 0;
const STANDBY: System = 1;
const ALICE: &str = "sip:1001@pbx";
const BOB: &str = "sip:2001@pbx";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
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
    assert!(!r.phone_of(ALICE).unwrap().is_guest());
}

#[test]
fn failover_only_after_the_delay_then_back_after_the_stable_time() {
    let t0 = Instant::now();
    let mut r = router(t0);
    r.route(t0, ALICE);
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
    r.route(t0, ALICE);
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
    r.route(t0, ALICE);
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

#[test]
fn homeless_prevention_sends_a_rejected_or_unanswered_register_back() {
    let t0 = Instant::now();
    let mut r = router(t0);
    for aor in [ALICE, "sip:1002@pbx"] {
        r.route(t0, aor);
    }
    r.handle_health(t0, MAIN, false);
    r.handle_timeout(t0 + secs(180));
    r.handle_health(t0 + secs(200), MAIN, true);
    let back = t0 + secs(800);
    r.handle_timeout(back);
    assert_eq!(r.poll_moves().len(), 4);
    // Home rejects Alice's REGISTER: straight back to the backup.
    r.handle_register_sent(back + secs(1), ALICE, "udp~1", MAIN);
    r.handle_register_answer(back + secs(1), ALICE, 503);
    assert_eq!(r.phone_of(ALICE).unwrap().serving, STANDBY);
    let m = r.poll_moves();
    assert!(m[0].reason.contains("503"), "{m:?}");
    // Home never answers 1002's: back after the register timeout.
    r.handle_register_sent(back + secs(2), "sip:1002@pbx", "udp~2", MAIN);
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
    r2.route(t0, ALICE);
    r2.handle_register_sent(t0, ALICE, "udp~1", MAIN);
    r2.handle_register_answer(t0, ALICE, 503);
    assert_eq!(r2.phone_of(ALICE).unwrap().serving, MAIN);
}

#[test]
fn no_failover_to_a_backup_that_is_down_and_none_when_both_are() {
    let t0 = Instant::now();
    let mut r = router(t0);
    r.route(t0, ALICE);
    r.handle_health(t0, STANDBY, false);
    r.handle_health(t0, MAIN, false);
    r.handle_timeout(t0 + secs(3600));
    assert_eq!(r.phone_of(ALICE).unwrap().serving, MAIN);
    assert_eq!(r.route(t0 + secs(3600), ALICE), None);
    assert_eq!(r.poll_timeout(), None);
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
    r.route(t0, ALICE);
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
