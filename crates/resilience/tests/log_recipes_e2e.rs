//! The log recipes of XiVO's HA documentation ("Logging" of its resilience
//! page), run as written against real output of Resilience:
//! - `grep 'Updating resilience state' /var/log/xivo-sysconfd.log` finds
//!   the node's change of state, `from: False to: True` in XiVO's casing;
//! - `grep xivocc-ha /var/log/syslog` finds the follower's lines ("Querying
//!   HA status", "HA config shows active=false", "Nginx already stopped")
//!   once they go through syslog under the identifier `xivocc-ha`, which the
//!   follower's unit sets (`SyslogIdentifier=xivocc-ha`). Here the standard
//!   syslog client (`logger`) carries them to a socket the test reads, as
//!   journald or rsyslog would;
//! - the edge's recipes (`grep "WAR.*Destination"`, `grep "temporarily
//!   disabled"`) are run by edge_intake_e2e and edge_web_e2e.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `grep PATTERN FILE` as the admin types it: the matching lines.
fn grep(pattern: &str, file: &Path) -> Vec<String> {
    let out = Command::new("grep")
        .arg(pattern)
        .arg(file)
        .output()
        .expect("grep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn xivos_log_recipes_find_their_lines() {
    let _g = serial();
    let mut p = Pair::new("log-recipes", "manual", "policy = \"manual\"", false);
    p.start(MAIN);

    // The follower of an Inactive node, its stderr through `logger`.
    let sock_path = p.dir.path("syslog.sock");
    let syslog = UnixDatagram::bind(&sock_path).unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let d = p.dir.0.display();
    let cfg = format!(
        r#"[follow]
name = "cc"
node = "{}"
poll = "200ms"
timeout = "500ms"
api_listen = "127.0.0.1:0"

[[service]]
name = "nginx"
start = "touch {d}/cc.up"
stop = "rm -f {d}/cc.up"
status = "test -f {d}/cc.up"
"#,
        p.url(MAIN, "/api/v1/ha")
    );
    let cfg_path = p.dir.path("follow.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut follower = Command::new(bin())
        .args(["follow", "--config", cfg_path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = follower.stderr.take().unwrap();
    let logger = Command::new("logger")
        .args(["-t", "xivocc-ha", "--socket-errors=on", "-u"])
        .arg(&sock_path)
        .stdin(Stdio::from(stderr))
        .stdout(Stdio::null())
        .spawn()
        .expect("logger (bsdutils)");
    let _follower = Proc::from_child("follower", follower);
    let _logger = Proc::from_child("logger", logger);

    // What syslog received, written where rsyslog would write it.
    let syslog_file = p.dir.path("syslog");
    let mut received = String::new();
    let mut buf = vec![0u8; 8192];
    let wanted = [
        "[RESILIENCE] Querying HA status at http://127.0.0.1:",
        "[RESILIENCE] HA config shows active=false",
        "[RESILIENCE] Nginx already stopped",
    ];
    let found = wait_until(Duration::from_secs(15), || {
        while let Ok(n) = syslog.recv(&mut buf) {
            received.push_str(&String::from_utf8_lossy(&buf[..n]));
            received.push('\n');
        }
        std::fs::write(&syslog_file, &received).unwrap();
        let lines = grep("xivocc-ha", &syslog_file);
        wanted.iter().all(|w| lines.iter().any(|l| l.contains(w)))
    });
    assert!(
        found,
        "grep xivocc-ha found not all of {wanted:?} in:\n{received}"
    );

    // The unit gives the follower that identifier.
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../packaging/systemd/resilience-follow.service"),
    )
    .unwrap();
    assert!(
        unit.lines().any(|l| l == "SyslogIdentifier=xivocc-ha"),
        "{unit}"
    );

    // The node: manual mode, an admin starts the services.
    let cfg = p.config_path(MAIN);
    let (code, out, err) = cli(&["services", "start", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let log = p.dir.path("pbx-main.log");
    assert!(
        wait_until(Duration::from_secs(10), || grep(
            "Updating resilience state",
            &log
        )
        .iter()
        .any(|l| l.contains("Updating resilience state, from: False to: True"))),
        "grep 'Updating resilience state' found nothing in\n{}",
        p.logs()
    );
}
