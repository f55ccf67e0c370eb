//! systemd's watchdog (`WatchdogSec=` in the node's unit): the node tells
//! systemd it is ready, then pings the watchdog from its loop for as long as
//! the loop runs; a stuck loop stops the pings and systemd restarts it.
//! Here the test plays systemd: it owns the `NOTIFY_SOCKET` and reads what
//! the node sends.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Start the Main with `WATCHDOG_USEC` (or none) and read what it sends:
/// whether it said READY=1, and how many WATCHDOG=1 came within `after`
/// of READY=1 (stopping at `enough`).
fn notifications(
    p: &Pair,
    watchdog_usec: Option<&str>,
    enough: usize,
    after: Duration,
) -> (bool, usize, Vec<String>, Proc) {
    let sock_path = p
        .dir
        .path(&format!("notify-{}.sock", watchdog_usec.unwrap_or("off")));
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let cfg = p.config_path(MAIN);
    let mut cmd = p.node_command(MAIN, bin(), &cfg);
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(append_log(&p.dir.path("pbx-main.log")));
    if let Some(u) = watchdog_usec {
        cmd.env("WATCHDOG_USEC", u);
    }
    let node = Proc::from_child("pbx-main", cmd.spawn().unwrap());
    let (mut ready_at, mut pings, mut periods) = (None, 0, Vec::new());
    let mut buf = [0u8; 512];
    let start = Instant::now();
    loop {
        let waited = match ready_at {
            None => start.elapsed() > Duration::from_secs(30),
            Some(t) => pings >= enough || Instant::now() - t > after,
        };
        if waited {
            break;
        }
        let Ok(n) = notify.recv(&mut buf) else {
            continue;
        };
        let msg = String::from_utf8_lossy(&buf[..n]);
        if ready_at.is_none() && msg.lines().any(|l| l == "READY=1") {
            ready_at = Some(Instant::now());
        }
        pings += msg.lines().filter(|l| *l == "WATCHDOG=1").count();
        periods.extend(
            msg.lines()
                .filter(|l| l.starts_with("WATCHDOG_USEC="))
                .map(str::to_owned),
        );
    }
    (ready_at.is_some(), pings, periods, node)
}

#[test]
fn the_node_pings_systemds_watchdog_from_its_loop() {
    let _g = serial();
    let p = Pair::new("watchdog", "automatic", "policy = \"immediate\"", false);
    // A 400 ms watchdog: a ping at least every 200 ms while the loop runs.
    let (ready, pings, periods, mut node) =
        notifications(&p, Some("400000"), 10, Duration::from_secs(20));
    assert!(ready, "no READY=1\n{}", p.logs());
    assert!(
        pings >= 10,
        "only {pings} WATCHDOG=1 within 20 s\n{}",
        p.logs()
    );
    // The start asks for a longer period (status commands, the database),
    // then the loop gives back the unit's own.
    assert_eq!(
        periods,
        ["WATCHDOG_USEC=120000000", "WATCHDOG_USEC=400000"],
        "{}",
        p.logs()
    );
    node.kill();
    // Without WATCHDOG_USEC (no WatchdogSec=), no ping at all.
    let (ready, pings, _, mut node) = notifications(&p, None, 1, Duration::from_secs(2));
    node.kill();
    assert!(ready, "no READY=1\n{}", p.logs());
    assert_eq!(pings, 0, "pinged a watchdog nobody asked for");
}
