//! Day 2: planned switchover, the disabled-node guard and the deprecated
//! `failback.homeless_grace`, with real daemons on loopback. Services are
//! scripts (a marker file per node) and calls are counted by a script that
//! reads a file the test writes: N calls, then 0.

mod common;

use common::{cli, get, post, serial, wait_until, Pair, MAIN, STANDBY, TOKEN};
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The texts of node `i`'s newest events.
fn event_texts(p: &Pair, i: usize) -> Vec<String> {
    get(&p.url(i, "/api/v1/events?limit=200")).map_or_else(Vec::new, |ev| {
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["text"].as_str().map(str::to_owned))
            .collect()
    })
}

fn has_event(p: &Pair, i: usize, needle: &str) -> bool {
    event_texts(p, i).iter().any(|t| t.contains(needle))
}

/// The calls node `i`'s count script reports from now on.
fn set_calls(p: &Pair, i: usize, n: u32) {
    let f = p.dir.path(&format!("{}.calls", p.specs[i].name));
    std::fs::write(f, format!("{n}\n")).unwrap();
}

fn node_field(p: &Pair, i: usize, key: &str) -> serde_json::Value {
    p.status(i)["node"][key].clone()
}

/// Wait for `cond`, failing the test if both nodes ever run their services
/// meanwhile (the invariant of a switchover: never two serving).
fn wait_one_serving(p: &Pair, what: &str, cond: impl Fn(&Pair) -> bool) {
    let mut both = false;
    let ok = wait_until(secs(20), || {
        both |= p.marker(MAIN) && p.marker(STANDBY);
        cond(p)
    });
    assert!(!both, "both nodes ran services during {what}\n{}", p.logs());
    assert!(ok, "{what} never happened\n{}", p.logs());
}

/// Run `resilience switchover` against node `i`'s API; the output.
fn switchover(p: &Pair, i: usize) -> (i32, String, String) {
    let cfg = p.config_path(i);
    cli(&["switchover", "--config", cfg.to_str().unwrap()])
}

/// Node `i` drains with `n` calls counted, and its peer has not started.
fn draining_with(p: &Pair, i: usize, n: u64) {
    let ok = wait_until(secs(10), || {
        let s = p.status(i);
        s["node"]["status"] == "draining" && s["drain"]["active_calls"].as_u64() == Some(n)
    });
    assert!(
        ok,
        "{} never drained with {n} calls\n{}",
        p.specs[i].name,
        p.logs()
    );
    assert!(
        !p.marker(1 - i),
        "{} started while {} still had calls\n{}",
        p.specs[1 - i].name,
        p.specs[i].name,
        p.logs()
    );
}

#[test]
fn switchover_both_ways_with_a_drain_from_either_node() {
    let _g = serial();
    // Immediate failback: a switchover must not bounce back by policy.
    let mut p = Pair::new("switch", "automatic", "policy = \"immediate\"", false);
    p.start(STANDBY);
    p.start(MAIN);
    assert!(
        wait_until(secs(10), || p.running(MAIN)
            && p.active(STANDBY) == Some(false)),
        "pair never settled\n{}",
        p.logs()
    );

    // 1. On the Active Main: it drains its 2 calls, then the Standby serves.
    set_calls(&p, MAIN, 2);
    let (code, out, err) = switchover(&p, MAIN);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("handing the service over to pbx-standby"),
        "{out}"
    );
    draining_with(&p, MAIN, 2);
    set_calls(&p, MAIN, 0);
    wait_one_serving(&p, "switchover to the standby", |p| {
        p.running(STANDBY) && !p.marker(MAIN)
    });
    // No failover timer: the Standby took it on the Main's word.
    assert!(
        has_event(&p, STANDBY, "main pbx-main yields"),
        "{:?}",
        event_texts(&p, STANDBY)
    );
    assert!(!has_event(&p, STANDBY, "silent for"), "{}", p.logs());
    // The Main holds back (despite policy = immediate) and says why.
    assert!(
        wait_until(secs(5), || node_field(&p, MAIN, "switched_away") == true),
        "{}",
        p.status(MAIN)
    );
    assert_eq!(p.status(MAIN)["failback"]["requested"], false);
    assert!(node_field(&p, MAIN, "switchover")
        .as_str()
        .is_some_and(|t| t.contains("switched over to pbx-standby")));

    // 2. Back, run on the Active Standby: it drains its call, the Main
    // drops its hold and serves.
    set_calls(&p, STANDBY, 1);
    let (code, out, err) = switchover(&p, STANDBY);
    assert_eq!(code, 0, "{out}{err}");
    draining_with(&p, STANDBY, 1);
    set_calls(&p, STANDBY, 0);
    wait_one_serving(&p, "switchover back to the main", |p| {
        p.running(MAIN) && !p.marker(STANDBY) && p.active(STANDBY) == Some(false)
    });
    assert_eq!(node_field(&p, MAIN, "switched_away"), false);

    // 3. Run on the Inactive Standby: it asks, the Main drains and hands over.
    set_calls(&p, MAIN, 3);
    let (code, out, err) = switchover(&p, STANDBY);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("asked pbx-main to hand the service over"),
        "{out}"
    );
    draining_with(&p, MAIN, 3);
    set_calls(&p, MAIN, 0);
    wait_one_serving(&p, "switchover asked by the standby", |p| {
        p.running(STANDBY) && !p.marker(MAIN)
    });

    // 4. Run on the Inactive Main: the Standby drains, the Main serves.
    set_calls(&p, STANDBY, 1);
    let (code, out, err) = switchover(&p, MAIN);
    assert_eq!(code, 0, "{out}{err}");
    draining_with(&p, STANDBY, 1);
    set_calls(&p, STANDBY, 0);
    wait_one_serving(&p, "switchover asked by the main", |p| {
        p.running(MAIN) && !p.marker(STANDBY) && p.active(STANDBY) == Some(false)
    });
}

#[test]
fn switchover_is_refused_with_a_reason_when_the_peer_is_down() {
    let _g = serial();
    let mut p = Pair::new(
        "switch-refused",
        "automatic",
        "policy = \"immediate\"",
        false,
    );
    p.start(MAIN);
    // Alone, the Main starts after startup_wait.
    assert!(
        wait_until(secs(10), || p.running(MAIN)),
        "main never started\n{}",
        p.logs()
    );
    let (code, out, err) = switchover(&p, MAIN);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("pbx-standby is not heard"), "{err}");
    // The API: the token is required, then 409 with the reason.
    let url = p.url(MAIN, "/api/v1/switchover");
    let (code, body) = post(&url, None);
    assert_eq!(code, 401, "{body}");
    let (code, body) = post(&url, Some(TOKEN));
    assert_eq!(code, 409, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("pbx-standby is not heard")),
        "{body}"
    );
    assert!(has_event(
        &p,
        MAIN,
        "switchover: peer pbx-standby is not heard"
    ));
    // Nothing moved.
    assert!(p.running(MAIN));
    assert_eq!(node_field(&p, MAIN, "status"), "active");
    assert_eq!(node_field(&p, MAIN, "switched_away"), false);
}

#[test]
fn disabled_node_beside_a_live_main_refuses_to_serve_and_says_why() {
    let _g = serial();
    let mut p = Pair::new(
        "disabled-guard",
        "automatic",
        "policy = \"immediate\"",
        false,
    );
    p.start(MAIN);
    p.start(STANDBY);
    assert!(
        wait_until(secs(10), || p.running(MAIN)
            && p.active(STANDBY) == Some(false)),
        "pair never settled\n{}",
        p.logs()
    );
    // The admin turns the Standby into `disabled`, keeping its [peer]
    // table, and a PBX runs there (left by hand, or by the daemon before).
    p.kill(STANDBY);
    p.specs[STANDBY].node_type = "disabled";
    let cfg = p.config_path(STANDBY);
    std::fs::write(&cfg, p.specs[STANDBY].config(&p.dir.0)).unwrap();
    let (code, out, err) = cli(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning") && err.contains("key `node.type`") && err.contains("[peer]"),
        "{err}"
    );
    std::fs::write(p.dir.path("pbx-standby.up"), "").unwrap();
    p.start(STANDBY);
    // It hears the Main, stops what runs and keeps it stopped, and says why.
    let ok = wait_until(secs(10), || {
        node_field(&p, STANDBY, "guard")
            .as_str()
            .is_some_and(|g| g.contains("main pbx-main (active"))
            && !p.marker(STANDBY)
            && node_field(&p, STANDBY, "status") == "inactive"
    });
    assert!(ok, "{}\n{}", p.status(STANDBY), p.logs());
    assert!(has_event(
        &p,
        STANDBY,
        "disabled node keeps its services stopped"
    ));
    let log = std::fs::read_to_string(p.dir.path("pbx-standby.log")).unwrap();
    assert!(
        log.contains("WARN") && log.contains("disabled node keeps its services stopped"),
        "{log}"
    );
    let (_, out, _) = cli(&["status", "--config", cfg.to_str().unwrap()]);
    assert!(out.contains("NOT SERVING"), "{out}");
    // Past its startup wait (1 s here: 20 heartbeats of the Main heard),
    // still not serving beside the Main.
    assert!(
        wait_until(secs(10), || p.status(STANDBY)["heartbeat"]["received"]
            .as_u64()
            .is_some_and(|n| n >= 20)
            || p.marker(STANDBY)),
        "the disabled node hears no heartbeat\n{}",
        p.logs()
    );
    assert!(
        !p.marker(STANDBY),
        "disabled node serves beside the main\n{}",
        p.logs()
    );
    assert!(p.running(MAIN));
    // The Main goes away for good: the disabled node serves alone.
    p.kill(MAIN);
    assert!(
        wait_until(secs(10), || p.marker(STANDBY)
            && p.active(STANDBY) == Some(true)),
        "disabled node never served alone\n{}",
        p.logs()
    );
    assert!(node_field(&p, STANDBY, "guard").is_null());
}

#[test]
fn homeless_grace_is_accepted_with_a_warning_naming_line_and_key() {
    let p = Pair::new("homeless", "automatic", "homeless_grace = \"5m\"", false);
    let cfg = p.config_path(MAIN);
    let line = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .position(|l| l.contains("homeless_grace"))
        .unwrap()
        + 1;
    let (code, out, err) = cli(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let at = format!("{}:{line}: key `failback.homeless_grace`", cfg.display());
    assert!(err.contains(&at), "{err}");
    assert!(err.contains("homeless_window"), "{err}");
}

#[test]
fn switchover_is_refused_when_the_peer_reports_its_pbx_down() {
    let _g = serial();
    let mut p = Pair::new(
        "switch-pbx-down",
        "automatic",
        "policy = \"immediate\"",
        true,
    );
    // The Main's stand-in PBX answers its probe; the Standby's does not run.
    p.start_pbx(MAIN);
    p.start(MAIN);
    p.start(STANDBY);
    let ok = wait_until(secs(10), || {
        p.running(MAIN) && p.status(MAIN)["peer"]["pbx"] == "down"
    });
    assert!(ok, "{}\n{}", p.status(MAIN), p.logs());
    let (code, out, err) = switchover(&p, MAIN);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("pbx-standby reports its PBX down"), "{err}");
    // Once it answers, the same command moves the service.
    p.start_pbx(STANDBY);
    assert!(
        wait_until(secs(10), || p.status(MAIN)["peer"]["pbx"] == "up"),
        "{}",
        p.logs()
    );
    let (code, out, err) = switchover(&p, MAIN);
    assert_eq!(code, 0, "{out}{err}");
    wait_one_serving(&p, "switchover once the peer's PBX is up", |p| {
        p.running(STANDBY) && !p.marker(MAIN)
    });
}
