//! Log lines under systemd: when stderr is the journal stream systemd set
//! up (`JOURNAL_STREAM` names its device and inode), each line starts with
//! its syslog priority, so `journalctl -p warning` finds the warnings, and
//! carries no timestamp of its own (the journal stamps it). The test plays
//! systemd: stderr is a file whose device and inode it names.

mod common;

use common::sockets::{command, Sock};
use common::*;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn under_the_journal_lines_carry_their_priority_and_no_timestamp() {
    let _g = serial();
    let dir = TestDir::new("journal");
    let api = Sock::tcp();
    // A node that refuses connections: the follower warns it is unreachable.
    let cfg = format!(
        r#"[follow]
name = "cc"
node = "http://127.0.0.1:1/api/v1/ha"
poll = "200ms"
timeout = "300ms"
unreachable_after = "600ms"
api_listen = "127.0.0.1:{}"

[[service]]
name = "nginx"
start = "true"
stop = "true"
status = "false"
"#,
        api.port()
    );
    let path = dir.path("follow.toml");
    std::fs::write(&path, cfg).unwrap();
    let log = dir.path("journal.log");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let mut cmd = command(
        bin(),
        &["follow", "--config", path.to_str().unwrap()],
        &[&api],
    );
    cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(file);
    let mut follower = Proc::from_child("follower", cmd.spawn().unwrap());
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let has = |prefix: &str| text().lines().any(|l| l.starts_with(prefix));
    assert!(
        wait_until(Duration::from_secs(15), || has("<6>") && has("<4>")),
        "no info (<6>) and warning (<4>) lines:\n{}",
        text()
    );
    follower.kill();
    for l in text().lines().filter(|l| !l.is_empty()) {
        assert!(
            l.starts_with('<') && l.as_bytes().get(2) == Some(&b'>'),
            "a line without its priority: {l}"
        );
        // `<6>2026-…` would be a second timestamp.
        assert!(
            !l[3..].starts_with(|c: char| c.is_ascii_digit()),
            "a line with its own timestamp: {l}"
        );
    }
}
