//! `resilience lab` as a newcomer runs it: it starts, both nodes answer, the
//! lab's faults (a cut heartbeat link, a crashed Main) move the service, and
//! Ctrl-C (SIGINT) leaves none of its processes behind.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Every pid the lab reported, SIGKILLed on drop if still there (a failed
/// test must not leave the lab's children running).
struct Pids(Vec<u32>);

impl Drop for Pids {
    fn drop(&mut self) {
        for p in &self.0 {
            if alive(*p) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &p.to_string()])
                    .status();
            }
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie has exited: only its table entry is left for its parent.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn pids(state: &Value) -> Vec<u32> {
    state["processes"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_u64().map(|p| p as u32))
                .collect()
        })
        .unwrap_or_default()
}

fn active(url: &str) -> Option<bool> {
    get(&format!("{url}api/v1/ha")).and_then(|v| v["active"].as_bool())
}

#[test]
fn lab_starts_injects_faults_and_stops_clean() {
    let _g = serial();
    let dir = TestDir::new("lab");
    let lab_dir = dir.path("lab");
    let log = dir.path("lab.log");
    let mut lab = Proc::spawn(
        "lab",
        &["lab", "--dir", lab_dir.to_str().unwrap()],
        &dir.0,
        &log,
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(secs(20), || lab_dir.join("lab.json").exists()),
        "no lab.json\n{}",
        logs()
    );
    let state: Value =
        serde_json::from_slice(&std::fs::read(lab_dir.join("lab.json")).unwrap()).unwrap();
    let mut guard = Pids(pids(&state));
    assert_eq!(guard.0.len(), 7, "{state}");
    let main = state["dashboards"]["main"].as_str().unwrap().to_owned();
    let standby = state["dashboards"]["standby"].as_str().unwrap().to_owned();
    let control = state["control"].as_str().unwrap().to_owned();

    // Both nodes report; the Main takes the service.
    assert!(
        wait_until(secs(20), || active(&main) == Some(true)
            && active(&standby) == Some(false)),
        "{}",
        logs()
    );
    // The printed links carry the token (no pasting), and the control page
    // answers with and without a trailing slash.
    let token = std::fs::read_to_string(lab_dir.join("api.token")).unwrap();
    assert!(
        wait_until(secs(10), || logs()
            .contains(&format!("/#token={}", token.trim()))),
        "{}",
        logs()
    );
    for url in [control.clone(), format!("{control}/")] {
        let page = agent()
            .get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        assert!(page.contains("<"), "{url}: {page}");
    }
    // Each dashboard is served, and offers the lab's buttons.
    let s = get(&format!("{main}api/v1/status")).unwrap();
    assert_eq!(s["lab"].as_str(), Some(control.as_str()), "{s}");
    let page = agent()
        .get(&main)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(page.contains("Resilience Management"), "{page}");
    let resp = agent().get(&main).call().unwrap();
    assert_eq!(
        resp.headers()
            .get("x-frame-options")
            .and_then(|v| v.to_str().ok()),
        Some("DENY"),
        "the dashboard may be framed"
    );

    // The followers follow: the Main's contact center runs, the Standby's not.
    assert!(
        wait_until(secs(10), || lab_dir.join("cc-main.nginx-running").exists()),
        "{}",
        logs()
    );
    assert!(!lab_dir.join("cc-standby.nginx-running").exists());

    // Cut the heartbeat link: with no arbiter, the Standby takes over;
    // healed, the Main keeps the service and the Standby stands down.
    let (code, v) = post(&format!("{control}/lab/link-cut"), None);
    assert_eq!(code, 200, "{v}");
    assert!(
        wait_until(secs(15), || active(&standby) == Some(true)),
        "cut link: no takeover\n{}",
        logs()
    );
    let (code, v) = post(&format!("{control}/lab/link-heal"), None);
    assert_eq!(code, 200, "{v}");
    assert!(
        wait_until(secs(15), || active(&standby) == Some(false)
            && active(&main) == Some(true)),
        "healed link: not back to one Active\n{}",
        logs()
    );

    // A crash injected through the lab: the Standby becomes Active.
    let (code, v) = post(&format!("{control}/lab/crash/main"), None);
    assert_eq!(code, 200, "{v}");
    assert!(
        wait_until(secs(15), || active(&standby) == Some(true)),
        "no failover after the crash\n{}",
        logs()
    );
    assert!(active(&main).is_none(), "the Main still answers");
    let (code, v) = post(&format!("{control}/lab/crash/nobody"), None);
    assert_eq!(code, 400, "{v}");
    // Without the lab's secret, no page can reach its controls.
    let bare = control.rsplit_once('/').unwrap().0;
    let (code, _) = post(&format!("{bare}/lab/boot/main"), None);
    assert_eq!(code, 404);

    // Boot it again (a new pid) with the lab's subcommand, then Ctrl-C:
    // nothing of the lab is left.
    let (code, out, err) = cli(&["lab", "--dir", lab_dir.to_str().unwrap(), "boot", "main"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("started main"), "{out}");
    let now = get(&format!("{control}/lab/state")).unwrap();
    guard.0.extend(pids(&now));
    assert!(wait_until(secs(10), || active(&main).is_some()));
    let lab_pid = lab.pid();
    let ok = std::process::Command::new("kill")
        .args(["-INT", &lab_pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert!(
        wait_until(secs(15), || !lab.alive()),
        "the lab did not stop on SIGINT\n{}",
        logs()
    );
    let left: Vec<u32> = guard.0.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "left running: {left:?}\n{}", logs());
    assert!(logs().contains("lab: stopping"), "{}", logs());
}
