//! End-to-end: new calls go home during the failback drain. Two real nodes
//! (`failback.new_calls`), a real `resilience edge` probing their
//! `/api/v1/ha`, two Kamailio registrars as their PBXs and sipp as the
//! phones. A call is in progress on the Standby's PBX when the Main comes
//! back; with `new_calls = "main"` a new call placed during the drain
//! reaches the Main's PBX while the old call's BYE still reaches the
//! Standby's, and the Standby stops once its call has ended. Without the
//! setting, the new call stays on the Standby (the drain as before).

mod common;

use common::edge::*;
use common::*;
use serde_json::Value;

/// How long the old call lasts: the failback and the new call happen
/// within it (the caller's sipp hangs up after this pause).
const OLD_CALL_MS: u64 = 30_000;

fn ha(pair: &Pair, i: usize) -> Value {
    get(&pair.url(i, "/api/v1/ha")).unwrap_or(Value::Null)
}

fn set_calls(pair: &Pair, i: usize, n: u32) {
    let f = pair.dir.path(&format!("{}.calls", pair.specs[i].name));
    std::fs::write(f, format!("{n}\n")).unwrap();
}

fn all_logs(pair: &Pair, lab: &Lab) -> String {
    format!("{}\n{}", pair.logs(), lab.logs())
}

/// A pair with immediate failback and a drain long enough for the test
/// (the common 5 s would end the old call's drain by its bound).
fn pair(test: &str, new_calls_main: bool) -> Pair {
    let failback = if new_calls_main {
        "policy = \"immediate\"\nnew_calls = \"main\""
    } else {
        "policy = \"immediate\""
    };
    let p = Pair::new(test, "automatic", failback, false);
    for i in [MAIN, STANDBY] {
        let cfg = p.specs[i].config(&p.dir.0);
        let long = cfg.replace("timeout = \"5s\"\npoll", "timeout = \"90s\"\npoll");
        assert_ne!(cfg, long, "the drain timeout line moved");
        std::fs::write(p.config_path(i), long).unwrap();
    }
    p
}

/// Failover with a call in progress through the edge, then the Main back.
/// Returns the old call's caller (its sipp, hanging up after
/// [`OLD_CALL_MS`]) and callee.
fn old_call_then_failback(
    pair: &mut Pair,
    lab: &Lab,
) -> (std::thread::JoinHandle<(i32, String)>, Proc) {
    // The Main dies: the Standby serves, the edge follows its HA flag.
    pair.kill(MAIN);
    let _ = std::fs::remove_file(pair.dir.path("pbx-main.up"));
    assert!(
        wait_until(secs(10), || pair.running(STANDBY)),
        "no failover\n{}",
        all_logs(pair, lab)
    );
    assert!(
        wait_until(secs(10), || lab.pbx_up() == [false, true]),
        "the edge did not follow the failover: {:?}\n{}",
        lab.pbx_up(),
        all_logs(pair, lab)
    );
    // Phones on the Standby: the callee of the old call, and an idle
    // phone that will place the new one.
    let callee = lab.callee("2001", "old-call");
    assert!(
        wait_until(secs(10), || lab.phone("sip:2001@pbx.test")["serving"]
            == "standby"
            && lab.registered("sip:2001@pbx.test")),
        "{}",
        all_logs(pair, lab)
    );
    let (code, out) = lab.register("1002");
    assert_eq!(code, 0, "{out}");
    let d = OLD_CALL_MS.to_string();
    let call = lab.sipp_command(
        "phone_call.xml",
        "1001",
        &["-key", "callee", "2001", "-cid_str", "old-call", "-d", &d],
    );
    let caller = std::thread::spawn(move || sipp_output(call));
    assert!(
        wait_until(secs(10), || lab.phone("sip:1001@pbx.test")["calls"] == 1),
        "the old call did not start\n{}",
        all_logs(pair, lab)
    );
    // Kamailio writes its log line a moment after relaying: wait for it.
    assert!(
        wait_until(secs(5), || lab.pbx[1].log().contains("INVITE sip:2001@")),
        "the old call did not go through the standby's PBX\n{}",
        all_logs(pair, lab)
    );
    // The Standby's PBX counts it: the drain waits for it.
    set_calls(pair, STANDBY, 1);
    // The Main comes back and asks at once (failback policy immediate).
    pair.start(MAIN);
    (caller, callee)
}

/// A new call from the idle phone 1002 to a phone 2002 registered now.
fn new_call(pair: &Pair, lab: &Lab) {
    let callee = lab.callee("2002", "new-call");
    assert!(
        wait_until(secs(10), || lab.registered("sip:2002@pbx.test")),
        "{}",
        all_logs(pair, lab)
    );
    let (code, out) = lab.sipp(
        "phone_call.xml",
        "1002",
        &[
            "-key", "callee", "2002", "-cid_str", "new-call", "-d", "200",
        ],
    );
    assert_eq!(
        code,
        0,
        "the new call failed: {out}\n{}",
        all_logs(pair, lab)
    );
    drop(callee);
}

#[test]
fn with_new_calls_main_a_new_call_reaches_the_main_while_the_old_one_ends_on_the_standby() {
    let _g = serial();
    let mut pair = pair("new-calls-main", true);
    pair.start(MAIN);
    pair.start(STANDBY);
    assert!(
        wait_until(secs(10), || pair.running(MAIN)),
        "{}",
        pair.logs()
    );
    let ha_lines = [MAIN, STANDBY].map(|i| format!("ha_url = \"{}\"\n", pair.url(i, "/api/v1/ha")));
    let lab = Lab::start_opts(
        "new-calls-main-edge",
        LabOpts {
            pbx_extra: ha_lines,
            expect_up: Some([true, false]),
            ..LabOpts::default()
        },
    );
    let (caller, mut callee) = old_call_then_failback(&mut pair, &lab);

    // The hand-off: the Main runs and takes the new calls, the Standby
    // runs for its call in progress and takes none.
    assert!(
        wait_until(secs(15), || {
            let (m, s) = (ha(&pair, MAIN), ha(&pair, STANDBY));
            m["active"] == true
                && s["active"] == false
                && s["draining"] == true
                && s["services"] == true
        }),
        "no hand-off of new calls: main {}, standby {}\n{}",
        ha(&pair, MAIN),
        ha(&pair, STANDBY),
        all_logs(&pair, &lab)
    );
    assert!(pair.marker(MAIN) && pair.marker(STANDBY), "both PBXs run");
    let st = pair.status(STANDBY);
    assert_eq!(st["node"]["active"], true, "{st}");
    assert_eq!(st["node"]["takes_new_calls"], false, "{st}");
    assert_eq!(st["failback"]["new_calls"], "main", "{st}");
    assert!(
        wait_until(secs(5), || lab.pbx_up() == [true, false]),
        "the edge: {:?}\n{}",
        lab.pbx_up(),
        all_logs(&pair, &lab)
    );

    new_call(&pair, &lab);
    assert!(
        wait_until(secs(5), || lab.pbx[0].log().contains("INVITE sip:2002@")),
        "the new call did not reach the Main's PBX\n{}",
        all_logs(&pair, &lab)
    );
    assert!(
        !lab.pbx[1].log().contains("INVITE sip:2002@"),
        "the new call reached the Standby's PBX"
    );
    // Still draining when the old call hangs up.
    assert_eq!(
        pair.status(STANDBY)["node"]["status"],
        "draining",
        "{}",
        all_logs(&pair, &lab)
    );

    // The old call's BYE follows its route through the Standby's PBX (the
    // only one that record-routed it): the caller gets its 200.
    let (code, out) = caller.join().unwrap();
    assert_eq!(
        code,
        0,
        "the old call broke: {out}\n{}",
        all_logs(&pair, &lab)
    );
    assert!(wait_until(secs(10), || !callee.alive()));
    assert!(
        !lab.pbx[0].log().contains("INVITE sip:2001@"),
        "the old call must not have touched the Main's PBX"
    );
    // Its call ended: the Standby stops, the Main goes on alone.
    set_calls(&pair, STANDBY, 0);
    assert!(
        wait_until(secs(10), || !pair.marker(STANDBY)
            && pair.status(STANDBY)["node"]["status"] == "inactive"),
        "the standby did not stop after its call\n{}",
        all_logs(&pair, &lab)
    );
    assert!(pair.running(MAIN), "{}", all_logs(&pair, &lab));
    let events = std::fs::read_to_string(pair.dir.path("pbx-standby.log")).unwrap_or_default();
    assert!(
        events.contains("new calls released to the main"),
        "{events}"
    );
}

#[test]
fn without_the_setting_a_new_call_during_the_drain_stays_on_the_standby() {
    let _g = serial();
    let mut pair = pair("new-calls-standby", false);
    pair.start(MAIN);
    pair.start(STANDBY);
    assert!(
        wait_until(secs(10), || pair.running(MAIN)),
        "{}",
        pair.logs()
    );
    let ha_lines = [MAIN, STANDBY].map(|i| format!("ha_url = \"{}\"\n", pair.url(i, "/api/v1/ha")));
    let lab = Lab::start_opts(
        "new-calls-standby-edge",
        LabOpts {
            pbx_extra: ha_lines,
            expect_up: Some([true, false]),
            ..LabOpts::default()
        },
    );
    let (caller, mut callee) = old_call_then_failback(&mut pair, &lab);

    // The Standby drains and still takes the new calls; the Main waits.
    assert!(
        wait_until(secs(15), || {
            let s = ha(&pair, STANDBY);
            s["active"] == true && s["draining"] == true
        }),
        "standby {}\n{}",
        ha(&pair, STANDBY),
        all_logs(&pair, &lab)
    );
    assert_eq!(ha(&pair, MAIN)["active"], false);
    assert!(!pair.marker(MAIN), "the main started during the drain");
    assert_eq!(lab.pbx_up(), [false, true]);

    new_call(&pair, &lab);
    assert!(
        wait_until(secs(5), || lab.pbx[1].log().contains("INVITE sip:2002@")),
        "the new call did not reach the Standby's PBX\n{}",
        all_logs(&pair, &lab)
    );
    assert!(!lab.pbx[0].log().contains("INVITE sip:2002@"));
    assert!(!pair.marker(MAIN), "the main started during the drain");

    let (code, out) = caller.join().unwrap();
    assert_eq!(
        code,
        0,
        "the old call broke: {out}\n{}",
        all_logs(&pair, &lab)
    );
    assert!(wait_until(secs(10), || !callee.alive()));
    set_calls(&pair, STANDBY, 0);
    assert!(
        wait_until(secs(10), || pair.running(MAIN) && !pair.marker(STANDBY)),
        "no failback after the drain\n{}",
        all_logs(&pair, &lab)
    );
}
