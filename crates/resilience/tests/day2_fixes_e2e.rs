//! Day-2 fixes, end to end: a Standby whose daemon is stopped while it
//! serves brings its kept data home before the Main starts; a reload of
//! the receiving node does not cancel a switchover. Real nodes, real TLS
//! replication.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const VOICEMAIL: &str = "voicemail/1001/msg0001.txt";

/// A pair with a cluster CA, replicating `<name>-spool` as job "spool" and
/// keeping its voicemail at failback; each node's services record, at
/// every start, whether the voicemail message is on this node
/// (`<name>.starts`).
fn voicemail_pair(test: &str, failback: &str) -> Pair {
    let mut p = Pair::new(test, "automatic", failback, false);
    let pki = p.dir.path("pki");
    let pki_s = pki.display().to_string();
    for args in [
        vec!["cert", "init", "--dir", &pki_s],
        vec!["cert", "issue", "pbx-main", "--dir", &pki_s],
        vec!["cert", "issue", "pbx-standby", "--dir", &pki_s],
    ] {
        let (code, out, err) = cli(&args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    let ports = [p.tcp(0), p.tcp(1)];
    for i in 0..2 {
        let name = p.specs[i].name.clone();
        let folder = p.dir.path(&format!("{name}-spool"));
        std::fs::create_dir_all(&folder).unwrap();
        let msg = folder.join(VOICEMAIL);
        let log = p.dir.path(&format!("{name}.starts"));
        p.set_extra(
            i,
            format!(
                "\n[replication]\nlisten = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\nca = \"{pki_s}/ca.pem\"\ncert = \"{pki_s}/{name}.crt\"\nkey = \"{pki_s}/{name}.key\"\ndebounce = \"300ms\"\nkeep_on_failback = [\"spool/voicemail\"]\n\n[[replication.dir]]\nname = \"spool\"\npath = \"{}\"\n\n[[service]]\nname = \"voicemail-check\"\nstart = \"if test -f {msg}; then echo present >> {log}; else echo missing >> {log}; fi\"\nstop = \"true\"\n",
                ports[i],
                ports[1 - i],
                folder.display(),
                msg = msg.display(),
                log = log.display(),
            ),
        );
    }
    p
}

fn spool(p: &Pair, i: usize) -> PathBuf {
    p.dir.path(&format!("{}-spool", p.specs[i].name))
}

fn starts(p: &Pair, i: usize) -> Vec<String> {
    std::fs::read_to_string(p.dir.path(&format!("{}.starts", p.specs[i].name)))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write(root: &Path, rel: &str, body: &[u8]) {
    let f = root.join(rel);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(f, body).unwrap();
}

/// 48 MiB that do not compress to nothing.
fn message() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..48 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// `systemctl stop` on the serving Standby (the Main back, failback
/// manual): the handover goes through the Main's data gate, so the
/// voicemail left on the Standby is on the Main when its services start,
/// and the Standby's daemon then exits.
#[test]
fn stopping_the_serving_standby_brings_its_kept_voicemail_home_first() {
    let _g = serial();
    let mut p = voicemail_pair(
        "day2-fix-stop-keep",
        "policy = \"manual\"\ndata_wait = \"20s\"\non_data_failure = \"hold\"",
    );
    p.start(MAIN);
    p.start(STANDBY);
    assert!(wait_until(secs(10), || p.running(MAIN)), "{}", p.logs());
    assert_eq!(starts(&p, MAIN), ["missing"]);
    p.kill(MAIN);
    assert!(wait_until(secs(10), || p.running(STANDBY)), "{}", p.logs());
    // Large enough that copying it takes longer than the Main takes to
    // start (the race a copy after the Standby has stopped would lose).
    let message = message();
    write(&spool(&p, STANDBY), VOICEMAIL, &message);
    // The Main returns and waits for an admin (failback manual); the
    // Standby keeps serving.
    p.start(MAIN);
    let waiting = || {
        p.status(MAIN)["failback"]["waiting_because"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        wait_until(secs(10), || waiting().contains("manual")),
        "{}",
        p.logs()
    );
    assert_eq!(p.active(STANDBY), Some(true));
    assert_eq!(starts(&p, MAIN), ["missing"]);
    let pid = p.nodes[STANDBY].as_ref().unwrap().pid();
    signal(pid, "TERM");
    assert!(wait_until(secs(30), || p.running(MAIN)), "{}", p.logs());
    // Its services started with the message already on it.
    assert_eq!(starts(&p, MAIN), ["missing", "present"], "{}", p.logs());
    assert!(
        std::fs::read(spool(&p, MAIN).join(VOICEMAIL)).unwrap() == message,
        "the same bytes"
    );
    let standby = p.nodes[STANDBY].as_mut().unwrap();
    assert!(
        wait_until(secs(30), || !standby.alive()),
        "the stopped Standby's daemon exits"
    );
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

fn set_calls(p: &Pair, i: usize, n: u32) {
    let f = p.dir.path(&format!("{}.calls", p.specs[i].name));
    std::fs::write(f, format!("{n}\n")).unwrap();
}

fn log_of(p: &Pair, i: usize) -> String {
    std::fs::read_to_string(p.dir.path(&format!("{}.log", p.specs[i].name))).unwrap_or_default()
}

/// The Main hands over by a switchover and drains its calls; meanwhile the
/// Standby's daemon is upgraded in place (`systemctl reload`, SIGHUP). The
/// new process's first frames may not hear the Main yet (when a frame of
/// the Main reaches it before its own first one goes out: a race this
/// test does not force; the core test
/// `a_receivers_upgrade_does_not_cancel_a_switchover_drain` does): the
/// drain goes on, and the Standby serves once the calls have ended.
#[test]
fn a_reload_of_the_receiving_standby_does_not_cancel_a_switchover() {
    let _g = serial();
    let mut p = Pair::new(
        "day2-fix-reload-rx",
        "automatic",
        "policy = \"immediate\"",
        false,
    );
    p.start(STANDBY);
    p.start(MAIN);
    assert!(
        wait_until(secs(10), || p.running(MAIN)
            && p.status(STANDBY)["peer"]["heard"] == true),
        "{}",
        p.logs()
    );
    set_calls(&p, MAIN, 2);
    let cfg = p.config_path(MAIN);
    let (code, out, err) = cli(&["switchover", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        wait_until(secs(10), || p.status(MAIN)["drain"]["active_calls"]
            .as_u64()
            == Some(2)),
        "{}",
        p.logs()
    );
    let daemon = p.nodes[STANDBY].as_ref().unwrap().pid();
    signal(daemon, "HUP");
    // The new process runs and hears the Main again.
    assert!(
        wait_until(secs(20), || log_of(&p, STANDBY)
            .contains("restarting the daemon")),
        "{}",
        p.logs()
    );
    assert!(
        wait_until(secs(20), || p.status(STANDBY)["peer"]["heard"] == true
            && p.status(MAIN)["peer"]["heard"] == true
            && event_texts(&p, STANDBY)
                .iter()
                .any(|t| t.contains("node started") && t.contains("start 2"))),
        "{}",
        p.logs()
    );
    assert!(p.nodes[STANDBY].as_mut().unwrap().alive());
    assert_eq!(p.nodes[STANDBY].as_ref().unwrap().pid(), daemon);
    let cancelled = || {
        event_texts(&p, MAIN)
            .iter()
            .any(|t| t.contains("cancelled"))
    };
    assert!(!cancelled(), "{:?}", event_texts(&p, MAIN));
    assert_eq!(p.status(MAIN)["node"]["status"], "draining", "{}", p.logs());
    set_calls(&p, MAIN, 0);
    assert!(
        wait_until(secs(20), || p.running(STANDBY) && !p.marker(MAIN)),
        "{}",
        p.logs()
    );
    assert!(!cancelled(), "{:?}", event_texts(&p, MAIN));
}

/// The Main hands over by a switchover; its daemon is killed (SIGKILL)
/// during the drain and started again well within `failover_after`: it
/// adopts its services and resumes the switchover the admin asked for,
/// rather than serve on, stuck with the switchover hold.
#[test]
fn a_main_killed_mid_switchover_resumes_it_after_its_restart() {
    let _g = serial();
    let mut p = Pair::new(
        "day2-fix-kill-switch",
        "automatic",
        "policy = \"immediate\"",
        false,
    );
    // Long enough that the Standby never fails over while the Main restarts.
    for i in [MAIN, STANDBY] {
        let path = p.config_path(i);
        let text = std::fs::read_to_string(&path).unwrap().replace(
            &format!("failover_after = \"{FAILOVER_MS}ms\""),
            "failover_after = \"30s\"",
        );
        assert!(text.contains("\"30s\""));
        std::fs::write(&path, text).unwrap();
    }
    p.start(STANDBY);
    p.start(MAIN);
    assert!(
        wait_until(secs(10), || p.running(MAIN)
            && p.status(STANDBY)["peer"]["heard"] == true),
        "{}",
        p.logs()
    );
    set_calls(&p, MAIN, 2);
    let cfg = p.config_path(MAIN);
    let (code, out, err) = cli(&["switchover", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        wait_until(secs(10), || p.status(MAIN)["drain"]["active_calls"]
            .as_u64()
            == Some(2)),
        "{}",
        p.logs()
    );
    p.kill(MAIN);
    assert!(p.marker(MAIN), "the services outlive the daemon");
    p.start(MAIN);
    assert!(
        wait_until(secs(20), || event_texts(&p, MAIN)
            .iter()
            .any(|t| t.contains("resuming the switchover to pbx-standby"))),
        "{}",
        p.logs()
    );
    assert!(!p.marker(STANDBY), "the Standby waits for the drain");
    set_calls(&p, MAIN, 0);
    assert!(
        wait_until(secs(20), || p.running(STANDBY) && !p.marker(MAIN)),
        "{}",
        p.logs()
    );
    // The Main keeps the switchover's hold: no failback by policy.
    assert!(
        wait_until(secs(5), || p.status(MAIN)["node"]["switched_away"] == true),
        "{}",
        p.status(MAIN)
    );
}
