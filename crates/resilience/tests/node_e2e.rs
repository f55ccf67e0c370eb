//! End-to-end: two real `resilience node` processes on loopback, services as
//! marker files, stand-in PBXs as their SIP side. Timers: heartbeat 100 ms,
//! failover after 1 s.

mod common;

use common::*;
use resilience_core::heartbeat::{decode, encode, Flags, Frame};
use resilience_core::{ClusterKey, Mode, NodeType, PbxHealth, Status};
use std::time::{Duration, Instant};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Watches both nodes while `f` runs and fails if both ever run services.
fn never_both(p: &Pair, dur: Duration, mut until: impl FnMut(&Pair) -> bool) -> bool {
    let end = Instant::now() + dur;
    while Instant::now() < end {
        assert!(
            !(p.marker(MAIN) && p.marker(STANDBY)),
            "both nodes run services while connected\n{}",
            p.logs()
        );
        if until(p) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    until(p)
}

fn boot_pair(p: &mut Pair) {
    p.start(MAIN);
    p.start(STANDBY);
    let ok = wait_until(secs(10), || p.marker(MAIN) && p.active(MAIN) == Some(true));
    assert!(ok, "main never became active\n{}", p.logs());
    assert!(!p.marker(STANDBY), "standby started services\n{}", p.logs());
}

/// Start the Main again after a SIGKILL and a failover: the services its
/// killed daemon left running (as a PBX would keep running) are stopped as
/// soon as it hears the Standby serving, before anything else happens.
///
/// With an immediate failback the stop and the next start can be a few
/// milliseconds apart, shorter than a poll of the marker: the Main's own
/// event "stopping -> inactive … left running" is the proof, the marker's
/// absence only a shortcut.
fn restart_killed_main(p: &mut Pair) {
    p.start(MAIN);
    let stopped = |p: &Pair| {
        event_texts(p, MAIN).iter().any(|t| {
            t.contains("status stopping -> inactive")
                && t.contains("stopping the services this node left running")
        })
    };
    assert!(
        wait_until(secs(5), || !p.marker(MAIN) || stopped(p)),
        "the main kept the services its killed daemon left running\n{}",
        p.logs()
    );
    assert!(
        wait_until(secs(5), || stopped(p)),
        "the main's services went away without its stop being recorded\n{}",
        p.logs()
    );
}

/// SIGKILL the Main; the time until the Standby's services run.
fn kill_main_and_fail_over(p: &mut Pair) -> Duration {
    let t0 = Instant::now();
    p.kill(MAIN);
    let ok = wait_until(secs(10), || p.running(STANDBY));
    let took = t0.elapsed();
    assert!(ok, "standby never started its services\n{}", p.logs());
    took
}

/// The texts of node `i`'s newest events (none if its API does not answer).
fn event_texts(p: &Pair, i: usize) -> Vec<String> {
    get(&p.url(i, "/api/v1/events?limit=100")).map_or_else(Vec::new, |ev| {
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["text"].as_str().map(str::to_owned))
            .collect()
    })
}

#[test]
fn sigkill_of_the_main_fails_over_then_immediate_failback() {
    let _g = serial();
    let mut p = Pair::new(
        "kill-immediate",
        "automatic",
        "policy = \"immediate\"",
        false,
    );
    boot_pair(&mut p);
    std::thread::sleep(Duration::from_millis(500));
    let took = kill_main_and_fail_over(&mut p);
    eprintln!("SIGKILL of the main -> standby services started in {took:?} (failover_after 1 s, interval 100 ms)");
    // Not before failover_after (the last heartbeat left at most one interval
    // before the kill), and not some other path much later. The speed itself
    // is bench/failover's job, so the upper bound leaves room for a loaded CI.
    assert!(
        took >= Duration::from_millis(FAILOVER_MS - INTERVAL_MS - 50),
        "failed over before failover_after: {took:?}"
    );
    assert!(
        took < Duration::from_millis(FAILOVER_MS * 4),
        "took {took:?}"
    );
    // The marker appears when the start script runs; the node reports Active
    // once it has the script's result, a moment later.
    assert!(
        wait_until(secs(2), || p.active(STANDBY) == Some(true)),
        "standby runs its services but does not report Active\n{}",
        p.logs()
    );
    // The Main comes back: the marker it left behind is reconciled away,
    // it waits for the handover, and the two never run together.
    restart_killed_main(&mut p);
    let ok = never_both(&p, secs(15), |p| {
        p.marker(MAIN) && !p.marker(STANDBY) && p.active(MAIN) == Some(true)
    });
    assert!(ok, "no failback\n{}", p.logs());
    assert!(
        wait_until(secs(2), || p.active(STANDBY) == Some(false)),
        "standby still reports Active after the failback\n{}",
        p.logs()
    );
    let texts = event_texts(&p, STANDBY);
    assert!(
        texts
            .iter()
            .any(|t| t.contains("Updating resilience state, from: False to: True")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("Updating resilience state, from: True to: False")),
        "{texts:?}"
    );
}

/// The state database held by another process (as a hung disk would hold
/// the writes): the Standby still takes over at once and keeps answering,
/// and what it could not write lands once the database is free.
#[test]
fn a_held_state_database_does_not_hold_up_the_failover() {
    let _g = serial();
    let mut p = Pair::new("db-held", "automatic", "policy = \"manual\"", false);
    boot_pair(&mut p);
    let db = p.dir.path("state-pbx-standby/state.db");
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let took = kill_main_and_fail_over(&mut p);
    eprintln!("database held: SIGKILL of the main -> standby services started in {took:?}");
    assert!(
        took < Duration::from_millis(FAILOVER_MS * 4),
        "the failover waited for the database: {took:?}\n{}",
        p.logs()
    );
    assert!(
        wait_until(secs(3), || p.active(STANDBY) == Some(true)),
        "standby does not report Active while its database is held\n{}",
        p.logs()
    );
    holder.execute_batch("COMMIT").unwrap();
    drop(holder);
    let written = wait_until(secs(10), || {
        event_texts(&p, STANDBY)
            .iter()
            .any(|t| t.contains("Updating resilience state, from: False to: True"))
    });
    assert!(
        written,
        "the history of the failover never landed\n{}",
        p.logs()
    );
    let epoch: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT value FROM facts WHERE key = 'epoch'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        epoch.parse::<u64>().unwrap() >= 2,
        "epoch {epoch} not written"
    );
}

#[test]
fn failback_after_the_stable_time() {
    let _g = serial();
    let mut p = Pair::new(
        "stable",
        "automatic",
        "policy = \"stable\"\nstable_for = \"3s\"",
        false,
    );
    boot_pair(&mut p);
    kill_main_and_fail_over(&mut p);
    // Stamped before the start: the Main cannot hear the Standby before it
    // runs, so the stable time cannot end before `back` + 3 s. (After the
    // start returns, the Main may already have heard the Standby for a poll
    // interval.)
    let back = Instant::now();
    restart_killed_main(&mut p);
    // Waits: still on the Standby after 2 s, and the wait is explained.
    assert!(
        !never_both(&p, secs(2), |p| p.marker(MAIN)),
        "failback before the stable time\n{}",
        p.logs()
    );
    let st = p.status(MAIN);
    assert!(
        st["failback"]["waiting_because"]
            .as_str()
            .unwrap_or("")
            .contains("without a break"),
        "{st:#}"
    );
    let ok = never_both(&p, secs(15), |p| {
        p.marker(MAIN) && p.active(MAIN) == Some(true)
    });
    assert!(ok, "no failback\n{}", p.logs());
    assert!(
        back.elapsed() >= secs(3),
        "failback after {:?}",
        back.elapsed()
    );
}

#[test]
fn manual_failback_waits_for_the_admin_and_drains_calls() {
    let _g = serial();
    let mut p = Pair::new("manual-fb", "automatic", "policy = \"manual\"", false);
    boot_pair(&mut p);
    kill_main_and_fail_over(&mut p);
    std::fs::write(p.dir.path("pbx-standby.calls"), "2 active calls\n").unwrap();
    restart_killed_main(&mut p);
    assert!(
        !never_both(&p, secs(3), |p| p.marker(MAIN)),
        "failback without the admin\n{}",
        p.logs()
    );
    // The admin, with the CLI against the Main's config.
    let cfg = p.config_path(MAIN);
    let (code, out, err) = cli(&["failback", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    // Calls are up: the Standby drains and waits.
    assert!(
        wait_until(secs(5), || p.status(STANDBY)["node"]["status"]
            == "draining"),
        "{}",
        p.logs()
    );
    assert!(
        !never_both(&p, secs(1), |p| p.marker(MAIN)),
        "stopped with calls up\n{}",
        p.logs()
    );
    std::fs::write(p.dir.path("pbx-standby.calls"), "0 active calls\n").unwrap();
    let ok = never_both(&p, secs(10), |p| {
        p.marker(MAIN) && p.active(MAIN) == Some(true)
    });
    assert!(ok, "no failback after the calls ended\n{}", p.logs());
}

#[test]
fn manual_mode_start_stop_and_refusal_without_force() {
    let _g = serial();
    let mut p = Pair::new("manual", "manual", "policy = \"immediate\"", false);
    p.start(MAIN);
    p.start(STANDBY);
    std::thread::sleep(secs(2));
    assert!(
        !p.marker(MAIN) && !p.marker(STANDBY),
        "manual nodes started by themselves"
    );
    let main_cfg = p.config_path(MAIN);
    let standby_cfg = p.config_path(STANDBY);
    let (m, s) = (main_cfg.to_str().unwrap(), standby_cfg.to_str().unwrap());
    let (code, out, err) = cli(&["services", "start", "--config", m]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(wait_until(secs(5), || p.running(MAIN)), "{}", p.logs());
    assert!(wait_until(secs(3), || p.status(STANDBY)["peer"]["active"] == true));
    // The Standby refuses to start over an active Main, and says why.
    let (code, out, err) = cli(&["services", "start", "--config", s]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("pbx-main is active"), "{err}");
    assert!(!p.marker(STANDBY));
    // Stop on the Main, then start on the Standby: the manual failover.
    let (code, _, err) = cli(&["services", "stop", "--config", m]);
    assert_eq!(code, 0, "{err}");
    assert!(wait_until(secs(5), || !p.marker(MAIN)));
    assert!(wait_until(secs(3), || p.status(STANDBY)["peer"]["active"] == false));
    let (code, _, err) = cli(&["services", "start", "--config", s]);
    assert_eq!(code, 0, "{err}");
    assert!(wait_until(secs(5), || p.running(STANDBY)));
    // Forced start on the Main while the Standby runs: allowed, by choice.
    let (code, _, err) = cli(&["services", "start", "--force", "--config", m]);
    assert_eq!(code, 0, "{err}");
    assert!(wait_until(secs(5), || p.running(MAIN)));
    // The admin's start survives a restart of the daemon.
    p.kill(STANDBY);
    p.start(STANDBY);
    assert!(
        wait_until(secs(5), || p.active(STANDBY) == Some(true)),
        "{}",
        p.logs()
    );
}

#[test]
fn pbx_probe_failure_moves_the_service_while_heartbeats_flow() {
    let _g = serial();
    let mut p = Pair::new("pbx", "automatic", "policy = \"immediate\"", true);
    p.start_pbx(MAIN);
    p.start_pbx(STANDBY);
    boot_pair(&mut p);
    assert!(
        wait_until(secs(5), || p.status(MAIN)["pbx"]["health"] == "up"),
        "{}",
        p.logs()
    );
    // The Main's PBX dies; its host and daemon live on.
    if let Some(mut pbx) = p.pbx[MAIN].take() {
        pbx.kill();
    }
    let ok = never_both(&p, secs(10), |p| {
        p.marker(STANDBY) && p.active(STANDBY) == Some(true)
    });
    assert!(ok, "no failover on a dead PBX\n{}", p.logs());
    let st = p.status(STANDBY);
    assert_eq!(
        st["peer"]["heard"], true,
        "heartbeat should still flow: {st:#}"
    );
    let main = p.status(MAIN);
    assert_eq!(main["node"]["faulted"], true, "{main:#}");
}

fn frame(seq: u64, boot: u64, echo: u64) -> Frame {
    Frame {
        node_type: NodeType::Main,
        mode: Mode::Automatic,
        status: Status::Active,
        pbx: PbxHealth::Up,
        flags: Flags(Flags::HEARS_PEER),
        boot,
        seq,
        epoch: 1,
        replication: 0,
        challenge: 0x5eed,
        echo,
        calls: None,
        name: "pbx-main".into(),
    }
}

#[test]
fn forged_and_replayed_heartbeats_are_rejected_and_counted() {
    let _g = serial();
    let mut p = Pair::new("forged", "automatic", "policy = \"immediate\"", false);
    // The test plays the Main: only the Standby runs.
    p.start(STANDBY);
    let key = ClusterKey::from_hex(KEY).unwrap();
    // On the Main's heartbeat address: the Standby's frames carry the
    // challenge our frames must echo before it takes them.
    let sock = p.socks[MAIN][0].udp_clone();
    sock.set_read_timeout(Some(secs(5))).unwrap();
    let challenge = {
        let mut buf = [0u8; 512];
        loop {
            let (n, _) = sock
                .recv_from(&mut buf)
                .expect("a heartbeat from the standby");
            if let Ok(f) = decode(&buf[..n], &key) {
                break f.challenge;
            }
        }
    };
    let to = format!("127.0.0.1:{}", p.specs[STANDBY].hb);
    let mut seq = 0;
    let send = |bytes: &[u8]| {
        sock.send_to(bytes, &to).unwrap();
    };
    // Frames of boot 7 that do not echo the challenge are not taken.
    for _ in 0..3 {
        seq += 1;
        send(&encode(&frame(seq, 7, 0), &key));
    }
    for _ in 0..20 {
        seq += 1;
        send(&encode(&frame(seq, 7, challenge), &key));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        wait_until(secs(3), || p.status(STANDBY)["peer"]["heard"] == true),
        "{}",
        p.logs()
    );
    // Replayed: a frame already sent. Forged: the right shape, another key.
    send(&encode(&frame(3 + 3, 7, challenge), &key));
    let wrong = ClusterKey::new(b"an attacker's key, not the real!").unwrap();
    send(&encode(&frame(seq + 1, 7, challenge), &wrong));
    // Another boot of the "Main" (an earlier one, captured): it echoes a
    // challenge the Standby gave up when it confirmed boot 7.
    send(&encode(&frame(seq + 2, 6, challenge), &key));
    // Garbage.
    send(b"INVITE sip:nobody SIP/2.0\r\n\r\n");
    let counted = wait_until(secs(3), || {
        let r = &p.status(STANDBY)["heartbeat"]["rejected"];
        r["replayed"] == 1 && r["forged"] == 1 && r["unconfirmed"] == 4 && r["bad_magic"] == 1
    });
    assert!(counted, "{:#}", p.status(STANDBY)["heartbeat"]);
    let metrics = agent()
        .get(&p.url(STANDBY, "/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("resilience_heartbeats_rejected_total{reason=\"forged\"} 1"),
        "{metrics}"
    );
    assert!(!p.marker(STANDBY), "the standby acted on a rejected frame");
}

/// How long ago node `i` last heard its peer (None: never, or no answer).
fn heard_ago(p: &Pair, i: usize) -> Option<f64> {
    get(&p.url(i, "/api/v1/status")).and_then(|s| s["peer"]["last_heard_ago_s"].as_f64())
}

/// Kill the Main, let the Standby notice the silence, start it again with
/// whatever its state folder holds, and wait for the Standby to hear it.
fn restart_main(p: &mut Pair, before_start: impl FnOnce(&Pair)) -> bool {
    p.kill(MAIN);
    assert!(
        wait_until(secs(10), || heard_ago(p, STANDBY).is_some_and(|a| a > 0.5)),
        "the standby never noticed the silence\n{}",
        p.logs()
    );
    before_start(p);
    p.start(MAIN);
    wait_until(secs(10), || heard_ago(p, STANDBY).is_some_and(|a| a < 0.3))
}

/// The node's state database files (`state.db`, its WAL and shared memory).
fn state_db_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("state.db"))
        })
        .collect()
}

/// A Main whose state database is lost (a new disk, a reinstall) or
/// restored from an older backup must be heard by the Standby again, and
/// the pair must come back to exactly one Active: with a persisted boot
/// counter, the Standby refused its frames as stale for ever and both
/// nodes served.
#[test]
fn a_main_with_lost_or_old_state_is_heard_again_and_one_serves() {
    let _g = serial();
    let mut p = Pair::new("lost-state", "automatic", "policy = \"immediate\"", false);
    boot_pair(&mut p);
    let state = p.dir.path("state-pbx-main");
    let backup = p.dir.path("backup-pbx-main");
    for round in 0..4 {
        if round == 1 {
            // An admin's backup of the state folder, while the Main is down.
            p.kill(MAIN);
            std::fs::create_dir_all(&backup).unwrap();
            for f in state_db_files(&state) {
                std::fs::copy(&f, backup.join(f.file_name().unwrap())).unwrap();
            }
        }
        assert!(
            restart_main(&mut p, |_| {}),
            "restart {round}\n{}",
            p.logs()
        );
    }
    let one_active = |p: &Pair| {
        p.active(MAIN) == Some(true) && p.active(STANDBY) == Some(false) && !p.marker(STANDBY)
    };
    for (what, restore) in [("lost", false), ("restored from an old backup", true)] {
        let heard = restart_main(&mut p, |p| {
            for f in state_db_files(&state) {
                std::fs::remove_file(f).unwrap();
            }
            if restore {
                for f in state_db_files(&backup) {
                    std::fs::copy(&f, state.join(f.file_name().unwrap())).unwrap();
                }
            }
            let _ = p;
        });
        assert!(
            heard,
            "state {what}: the standby does not hear the main\n{}",
            p.logs()
        );
        assert!(
            wait_until(secs(15), || one_active(&p)),
            "state {what}: not back to one active (main {:?}, standby {:?})\n{}",
            p.active(MAIN),
            p.active(STANDBY),
            p.logs()
        );
        let r = &p.status(STANDBY)["heartbeat"]["rejected"];
        assert!(
            r["unconfirmed"].as_u64().unwrap_or(0) < 20,
            "state {what}: {r:#}"
        );
    }
}

#[test]
fn api_writes_need_the_token() {
    let _g = serial();
    let mut p = Pair::new("token", "manual", "policy = \"immediate\"", false);
    p.start(MAIN);
    for path in [
        "/api/v1/services/start",
        "/api/v1/services/stop",
        "/api/v1/failback",
    ] {
        let (code, body) = post(&p.url(MAIN, path), None);
        assert_eq!(code, 401, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains("Bearer"),
            "{body}"
        );
        let (code, _) = post(&p.url(MAIN, path), Some("wrong-token"));
        assert_eq!(code, 401, "{path}");
    }
    assert!(!p.marker(MAIN));
    let (code, body) = post(&p.url(MAIN, "/api/v1/services/start"), Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    assert!(wait_until(secs(5), || p.marker(MAIN) && p.active(MAIN) == Some(true)));
    // Reads need no token.
    let ha = get(&p.url(MAIN, "/api/v1/ha")).unwrap();
    assert_eq!(ha["node_type"], "main");
    assert_eq!(ha["mode"], "manual");
    assert_eq!(ha["active"], true);
    assert_eq!(ha["remote_address"], "127.0.0.1");
    // A refused action is a 409 with its reason.
    let (code, body) = post(&p.url(MAIN, "/api/v1/failback"), Some(TOKEN));
    assert_eq!(code, 409, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or("")
            .contains("manual mode"),
        "{body}"
    );
}

#[test]
fn corrupt_state_database_is_reported_and_recreated() {
    let _g = serial();
    let mut p = Pair::new("corrupt", "automatic", "policy = \"immediate\"", false);
    let state = p.dir.path("state-pbx-standby");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("state.db"),
        b"garbage, not SQLite at all ........................",
    )
    .unwrap();
    p.start(STANDBY);
    let log = std::fs::read_to_string(p.dir.path("pbx-standby.log")).unwrap();
    assert!(
        log.contains("moved to") && log.contains("recreated"),
        "{log}"
    );
    assert_eq!(p.status(STANDBY)["node"]["node_type"], "standby");
}

/// A cluster CA and a node certificate for 127.0.0.1 (what `resilience cert`
/// will make, issue 4): (ca.pem, node.crt, node.key) written into `dir`.
fn tls_files(dir: &TestDir) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "resilience test cluster CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.path("ca.pem"),
        dir.path("node.crt"),
        dir.path("node.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    write_secret(&paths.2, &key.serialize_pem());
    let s = |p: std::path::PathBuf| p.display().to_string();
    (s(paths.0), s(paths.1), s(paths.2))
}

#[test]
fn api_over_tls_is_trusted_through_the_cluster_ca_only() {
    let _g = serial();
    let mut p = Pair::new("tls", "manual", "policy = \"immediate\"", false);
    let (ca, crt, key) = tls_files(&p.dir);
    p.set_extra(MAIN, format!("tls_cert = \"{crt}\"\ntls_key = \"{key}\"\n"));
    p.spawn(MAIN);
    let api = format!("https://127.0.0.1:{}", p.specs[MAIN].api);
    let ok = wait_until(secs(10), || {
        cli(&["status", "--api", &api, "--ca", &ca]).0 == 0
    });
    assert!(ok, "status over TLS failed\n{}", p.logs());
    // Without the cluster CA the certificate is refused.
    let (code, _, err) = cli(&["status", "--api", &api]);
    assert_eq!(code, 3, "{err}");
    // Plain HTTP on a TLS port gets nothing useful.
    let plain = format!("http://127.0.0.1:{}/api/v1/ha", p.specs[MAIN].api);
    assert!(get(&plain).is_none());
    // Writes over TLS still need the token.
    let (code, _, err) = cli(&[
        "services",
        "start",
        "--api",
        &api,
        "--ca",
        &ca,
        "--token-file",
        "/nonexistent",
    ]);
    assert_eq!(code, 4, "{err}");
    let token = p.dir.path("api.token").display().to_string();
    let (code, out, err) = cli(&[
        "services",
        "start",
        "--api",
        &api,
        "--ca",
        &ca,
        "--token-file",
        &token,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // The API speaks TLS here, so the marker alone tells.
    assert!(wait_until(secs(5), || p.marker(MAIN)));
}
