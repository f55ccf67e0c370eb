//! Day 2 of an HA pair, with real daemons and a long-lived service process
//! (a shell loop standing for the PBX, its pid in a file):
//! - `systemctl stop` (SIGTERM) on the Active Main hands over at once: the
//!   Standby serves on the Main's "leaving" heartbeat, not after
//!   `failover_after` (30 s here), and the Main's services are stopped;
//! - the documented upgrade (replace the binary, `systemctl reload`, i.e.
//!   SIGHUP) re-executes the new binary in the same process and adopts the
//!   running PBX: same service pid, the Standby never Active;
//! - a SIGKILL of the Active daemon and a start within `failover_after`:
//!   the services are adopted, not restarted.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The service: a shell loop started in the background, its pid in
/// `NAME.pid`, each start counted in `NAME.starts`; `NAME.up` as the other
/// tests' marker.
const SERVICE: &str = r#"#!/bin/sh
dir=$(dirname "$0")
pidf="$dir/$2.pid"
case "$1" in
start)
    sh -c 'while :; do sleep 1; done' </dev/null >/dev/null 2>&1 &
    echo $! > "$pidf"
    echo started >> "$dir/$2.starts"
    touch "$dir/$2.up"
    ;;
stop)
    if [ -f "$pidf" ]; then kill "$(cat "$pidf")" 2>/dev/null; fi
    rm -f "$pidf" "$dir/$2.up"
    ;;
status)
    [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null
    ;;
esac
"#;

/// A pair whose nodes wait 30 s of silence before a failover and run the
/// long-lived service; Main failback manual (nothing moves by itself).
fn pair(test: &str) -> Pair {
    let p = Pair::new(test, "automatic", "policy = \"manual\"", false);
    let script = p.dir.path("svc.sh");
    std::fs::write(&script, SERVICE).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = p.dir.0.display().to_string();
    for i in [MAIN, STANDBY] {
        let name = &p.specs[i].name;
        let path = p.config_path(i);
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text
            .replace(
                &format!("failover_after = \"{FAILOVER_MS}ms\""),
                "failover_after = \"30s\"",
            )
            .replace(
                &format!("start = \"touch {d}/{name}.up\""),
                &format!("start = \"{d}/svc.sh start {name}\""),
            )
            .replace(
                &format!("stop = \"rm -f {d}/{name}.up\""),
                &format!("stop = \"{d}/svc.sh stop {name}\""),
            )
            .replace(
                &format!("status = \"test -f {d}/{name}.up\""),
                &format!("status = \"{d}/svc.sh status {name}\""),
            );
        assert!(text.contains("svc.sh status") && text.contains("\"30s\""));
        std::fs::write(&path, text).unwrap();
    }
    p
}

/// The service pid of node `i`, if its pid file is there.
fn service_pid(p: &Pair, i: usize) -> Option<u32> {
    std::fs::read_to_string(p.dir.path(&format!("{}.pid", p.specs[i].name)))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn starts(p: &Pair, i: usize) -> usize {
    std::fs::read_to_string(p.dir.path(&format!("{}.starts", p.specs[i].name)))
        .unwrap_or_default()
        .lines()
        .count()
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// The service loops outlive the daemons by design: stop them by pid.
struct Services(Vec<PathBuf>);

impl Drop for Services {
    fn drop(&mut self) {
        for f in &self.0 {
            if let Some(pid) = std::fs::read_to_string(f)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
            {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
        }
    }
}

fn services_guard(p: &Pair) -> Services {
    Services(
        p.specs
            .iter()
            .map(|s| p.dir.path(&format!("{}.pid", s.name)))
            .collect(),
    )
}

/// Samples the Standby's Active flag until stopped; true if it was ever Active.
struct Watch {
    stop: Arc<AtomicBool>,
    seen_active: Arc<AtomicBool>,
    samples: Arc<std::sync::atomic::AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn standby(p: &Pair) -> Watch {
        let url = p.url(STANDBY, "/api/v1/ha");
        let stop = Arc::new(AtomicBool::new(false));
        let seen_active = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (s, a, n) = (stop.clone(), seen_active.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(v) = get(&url) {
                    n.fetch_add(1, Ordering::Relaxed);
                    if v["active"].as_bool() == Some(true) {
                        a.store(true, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Watch {
            stop,
            seen_active,
            samples,
            thread: Some(thread),
        }
    }

    /// (ever Active, samples taken).
    fn finish(mut self) -> (bool, u32) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.seen_active.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

/// Both daemons up, the Main Active with its service process running.
fn serving(p: &mut Pair) -> u32 {
    p.start(STANDBY);
    p.start(MAIN);
    assert!(
        wait_until(Duration::from_secs(10), || p.running(MAIN)
            && service_pid(p, MAIN).is_some_and(pid_alive)),
        "the main never served\n{}",
        p.logs()
    );
    // The Standby hears the Main Active (so a takeover would show).
    assert!(
        wait_until(Duration::from_secs(10), || p.status(STANDBY)["peer"]
            ["active"]
            == true),
        "{}",
        p.logs()
    );
    service_pid(p, MAIN).unwrap()
}

fn reason(p: &Pair, i: usize) -> String {
    p.status(i)["node"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn sigterm_on_the_active_main_hands_over_at_once() {
    let _serial = serial();
    let mut p = pair("stop-handover");
    let _services = services_guard(&p);
    let main_service = serving(&mut p);
    let pid = p.nodes[MAIN].as_ref().unwrap().pid();

    signal(pid, "TERM");

    // The Standby serves because the Main said it was leaving (its reason),
    // not because the Main fell silent: that takes failover_after = 30 s.
    assert!(
        wait_until(Duration::from_secs(15), || p.running(STANDBY)),
        "the standby never took over\n{}",
        p.logs()
    );
    let why = reason(&p, STANDBY);
    assert!(
        why.contains("main pbx-main is leaving"),
        "standby started for another reason: {why}\n{}",
        p.logs()
    );
    assert!(!why.contains("silent"), "{why}");
    // The Main's daemon exited by itself, cleanly, its services stopped.
    let main = p.nodes[MAIN].as_mut().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || main.exited().is_some()),
        "the main's daemon did not exit\n{}",
        p.logs()
    );
    let status = p.nodes[MAIN].as_mut().unwrap().exited().unwrap();
    assert!(status.success(), "exit status {status:?}\n{}", p.logs());
    assert!(!pid_alive(main_service), "the main left its PBX running");
    assert!(!p.marker(MAIN));
    let log = std::fs::read_to_string(p.dir.path("pbx-main.log")).unwrap();
    assert!(log.contains("leaving"), "{log}");
    assert!(log.contains("daemon stopped"), "{log}");
}

#[test]
fn upgrade_by_reload_keeps_the_pbx_and_the_standby_inactive() {
    let _serial = serial();
    let mut p = pair("upgrade");
    let _services = services_guard(&p);
    // The Main runs from an installed copy of the binary, as from /usr/bin.
    let bin_dir = p.dir.path("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let installed = bin_dir.join("resilience");
    std::fs::copy(bin(), &installed).unwrap();
    p.start(STANDBY);
    let cfg = p.config_path(MAIN);
    let log = append_log(&p.dir.path("pbx-main.log"));
    let child = p
        .node_command(MAIN, installed.to_str().unwrap(), &cfg)
        .current_dir(&p.dir.0)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    p.nodes[MAIN] = Some(Proc::from_child("pbx-main", child));
    assert!(
        wait_until(Duration::from_secs(10), || p.running(MAIN)
            && service_pid(&p, MAIN).is_some_and(pid_alive)),
        "{}",
        p.logs()
    );
    assert!(wait_until(Duration::from_secs(10), || p.status(STANDBY)
        ["peer"]["active"]
        == true));
    let service = service_pid(&p, MAIN).unwrap();
    let daemon = p.nodes[MAIN].as_ref().unwrap().pid();
    // A call in progress.
    std::fs::write(p.dir.path("pbx-main.calls"), "1\n").unwrap();
    let watch = Watch::standby(&p);

    // The documented procedure: install the new binary over the old one
    // (a new file renamed into place, as install(1) and dpkg do), then
    // `systemctl reload resilience-node`, which sends SIGHUP.
    let staged = bin_dir.join("resilience.new");
    std::fs::copy(bin(), &staged).unwrap();
    std::fs::rename(&staged, &installed).unwrap();
    use std::os::unix::fs::MetadataExt;
    let new_inode = std::fs::metadata(&installed).unwrap().ino();
    let exe = format!("/proc/{daemon}/exe");
    assert_ne!(std::fs::metadata(&exe).unwrap().ino(), new_inode);
    signal(daemon, "HUP");

    // The same process now runs the new file…
    assert!(
        wait_until(Duration::from_secs(15), || std::fs::metadata(&exe)
            .is_ok_and(|m| m.ino() == new_inode)),
        "the daemon did not re-execute the new binary\n{}",
        p.logs()
    );
    // …and serves again, having adopted the running service.
    assert!(
        wait_until(Duration::from_secs(10), || p.active(MAIN) == Some(true)
            && reason(&p, MAIN).contains("adopted")),
        "{}",
        p.logs()
    );
    // The Standby hears the new process Active (then nothing more can move).
    assert!(wait_until(Duration::from_secs(10), || p.status(STANDBY)
        ["peer"]["active"]
        == true));
    let (standby_was_active, samples) = watch.finish();
    assert!(samples > 10, "the standby was sampled {samples} times");
    assert!(!standby_was_active, "the standby went active\n{}", p.logs());
    assert!(p.nodes[MAIN].as_mut().unwrap().alive());
    assert_eq!(p.nodes[MAIN].as_ref().unwrap().pid(), daemon);
    assert_eq!(service_pid(&p, MAIN), Some(service), "service restarted");
    assert!(pid_alive(service), "the PBX process died");
    assert_eq!(starts(&p, MAIN), 1, "the service was started again");
    assert_eq!(starts(&p, STANDBY), 0);
    let log = std::fs::read_to_string(p.dir.path("pbx-main.log")).unwrap();
    assert!(log.contains("restarting the daemon"), "{log}");
}

#[test]
fn sigkill_then_start_within_failover_after_adopts_the_services() {
    let _serial = serial();
    let mut p = pair("crash-adopt");
    let _services = services_guard(&p);
    let service = serving(&mut p);
    let watch = Watch::standby(&p);

    p.kill(MAIN); // SIGKILL: the daemon alone dies
    assert!(pid_alive(service), "the service died with the daemon");
    p.start(MAIN);

    assert!(
        wait_until(Duration::from_secs(10), || p.active(MAIN) == Some(true)),
        "{}",
        p.logs()
    );
    let why = reason(&p, MAIN);
    assert!(why.contains("adopted the services left running"), "{why}");
    assert!(wait_until(Duration::from_secs(10), || p.status(STANDBY)
        ["peer"]["active"]
        == true));
    let (standby_was_active, _) = watch.finish();
    assert!(!standby_was_active, "the standby went active\n{}", p.logs());
    assert_eq!(service_pid(&p, MAIN), Some(service));
    assert!(pid_alive(service));
    assert_eq!(starts(&p, MAIN), 1, "the service was restarted");
}

#[test]
fn reload_with_a_broken_new_binary_is_refused_and_changes_nothing() {
    let _serial = serial();
    let mut p = pair("upgrade-refused");
    let _services = services_guard(&p);
    let bin_dir = p.dir.path("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let installed = bin_dir.join("resilience");
    std::fs::copy(bin(), &installed).unwrap();
    p.start(STANDBY);
    let cfg = p.config_path(MAIN);
    let log = append_log(&p.dir.path("pbx-main.log"));
    let child = p
        .node_command(MAIN, installed.to_str().unwrap(), &cfg)
        .current_dir(&p.dir.0)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    p.nodes[MAIN] = Some(Proc::from_child("pbx-main", child));
    assert!(
        wait_until(Duration::from_secs(10), || p.running(MAIN)),
        "{}",
        p.logs()
    );
    let service = service_pid(&p, MAIN).unwrap();
    let daemon = p.nodes[MAIN].as_ref().unwrap().pid();
    // A "new binary" that cannot start.
    let staged = bin_dir.join("resilience.new");
    std::fs::write(&staged, "#!/bin/sh\necho 'cannot start' >&2\nexit 2\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, &installed).unwrap();
    signal(daemon, "HUP");
    let main_log = p.dir.path("pbx-main.log");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &main_log
        )
        .unwrap_or_default()
        .contains("restart refused")),
        "{}",
        p.logs()
    );
    let text = std::fs::read_to_string(&main_log).unwrap();
    assert!(
        text.contains("cannot start"),
        "the reason is logged: {text}"
    );
    assert!(p.nodes[MAIN].as_mut().unwrap().alive());
    assert_eq!(p.active(MAIN), Some(true));
    assert_eq!(service_pid(&p, MAIN), Some(service));
    assert!(pid_alive(service));
    assert_eq!(starts(&p, MAIN), 1);
    assert_eq!(p.active(STANDBY), Some(false));
}
