//! A real node and a real follower on loopback; the follower's service is a
//! marker-file script, its hooks append to a file. The node is driven in
//! manual mode through its API, paused (SIGSTOP) for a lost poll, and
//! killed for an unreachable node.

mod common;

use common::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const POLL_MS: u64 = 400;
const UNREACHABLE_MS: u64 = 3000;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

struct Follower {
    /// Killed when the test ends.
    _proc: Proc,
    api: u16,
    marker: PathBuf,
    hooks: PathBuf,
    log: PathBuf,
}

impl Follower {
    fn start(p: &Pair) -> Follower {
        Follower::start_as(p, "cc", &p.url(MAIN, "/api/v1/ha"), "")
    }

    /// `name` tells apart the files of followers of one test; `extra`
    /// goes into `[follow]`.
    fn start_as(p: &Pair, name: &str, node: &str, extra: &str) -> Follower {
        let d = p.dir.0.display();
        let api_sock = Sock::tcp();
        let api = api_sock.port();
        let cfg = format!(
            r#"[follow]
name = "{name}"
node = "{node}"
{extra}
poll = "{POLL_MS}ms"
timeout = "300ms"
confirm_polls = 2
unreachable_after = "{UNREACHABLE_MS}ms"
retry_after = "1s"
api_listen = "127.0.0.1:{api}"

[hooks]
on_active = ["echo active >> {d}/{name}-hooks.log"]
on_inactive = ["echo inactive >> {d}/{name}-hooks.log"]

[[service]]
name = "nginx"
start = "touch {d}/{name}.up"
stop = "rm -f {d}/{name}.up"
status = "test -f {d}/{name}.up"
"#,
        );
        let path = p.dir.path(&format!("{name}-follow.toml"));
        std::fs::write(&path, cfg).unwrap();
        let log = p.dir.path(&format!("{name}-follow.log"));
        let proc = Proc::spawn_with(
            "follower",
            &["follow", "--config", path.to_str().unwrap()],
            &p.dir.0,
            &log,
            &[&api_sock],
        );
        let f = Follower {
            _proc: proc,
            api,
            marker: p.dir.path(&format!("{name}.up")),
            hooks: p.dir.path(&format!("{name}-hooks.log")),
            log,
        };
        assert!(
            wait_until(secs(10), || f.status().is_some()),
            "follower API never came up\n{}",
            f.logs()
        );
        f
    }

    fn status(&self) -> Option<serde_json::Value> {
        get(&format!("http://127.0.0.1:{}/api/v1/status", self.api))
    }

    fn up(&self) -> bool {
        self.marker.exists()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn hooks(&self) -> String {
        std::fs::read_to_string(&self.hooks).unwrap_or_default()
    }

    fn failed_polls(&self) -> u64 {
        self.status()
            .and_then(|s| s["polls"]["unreachable"].as_u64())
            .unwrap_or(0)
    }
}

/// Wait for `f` to hold, and return how long it took from `since`.
fn time_until(since: Instant, limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    wait_until(limit, &mut f).then(|| since.elapsed())
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn follower_tracks_its_node_without_flapping() {
    let _g = serial();
    let mut p = Pair::new("follow", "manual", "policy = \"manual\"", false);
    p.start(MAIN);
    let f = Follower::start(&p);
    let m = p.config_path(MAIN);
    let m = m.to_str().unwrap();
    let poll = Duration::from_millis(POLL_MS);
    let all = |f: &Follower, p: &Pair| format!("{}\n--- follower ---\n{}", p.logs(), f.logs());

    // The node is Inactive: the follower settles on inactive and says its
    // service was already stopped, in XiVO's words.
    assert!(
        wait_until(secs(5), || f
            .status()
            .is_some_and(|s| s["applied_active"] == false)),
        "{}",
        all(&f, &p)
    );
    let log = f.logs();
    for line in [
        "[RESILIENCE] Querying HA status at http://127.0.0.1:",
        "[RESILIENCE] HA config shows active=false",
        "[RESILIENCE] Nginx already stopped",
    ] {
        assert!(log.contains(line), "no `{line}` in\n{log}");
    }
    assert!(!f.up());

    // Node Active → service started within two poll intervals of the node
    // saying so (plus the start script's own time).
    let (code, out, err) = cli(&["services", "start", "--config", m]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(wait_until(secs(5), || p.running(MAIN)), "{}", p.logs());
    let t0 = Instant::now();
    let took = time_until(t0, secs(10), || f.up());
    let took = took.unwrap_or_else(|| panic!("follower never started\n{}", all(&f, &p)));
    println!("follower started {took:?} after the node went Active (poll {poll:?})");
    assert!(took <= 2 * poll + secs(2), "took {took:?}\n{}", all(&f, &p));
    assert!(
        f.logs().contains("2 answers in a row"),
        "not debounced\n{}",
        f.logs()
    );
    assert!(wait_until(secs(2), || f.hooks() == "inactive\nactive\n"));

    // Node Inactive → stopped, with the hook.
    let (code, out, err) = cli(&["services", "stop", "--config", m]);
    assert_eq!(code, 0, "{out}{err}");
    let t0 = Instant::now();
    let took = time_until(t0, secs(10), || !f.up())
        .unwrap_or_else(|| panic!("follower never stopped\n{}", all(&f, &p)));
    println!("follower stopped {took:?} after the node went Inactive");
    assert!(took <= 2 * poll + secs(2), "{took:?}");
    assert!(wait_until(secs(2), || f.hooks() == "inactive\nactive\ninactive\n"));

    // Back to Active for the fault cases.
    let (code, _, _) = cli(&["services", "start", "--config", m]);
    assert_eq!(code, 0);
    assert!(wait_until(secs(10), || f.up()), "{}", all(&f, &p));
    assert!(wait_until(secs(3), || f
        .status()
        .is_some_and(|s| s["applied_active"] == true)));

    // A lost poll: the node paused just long enough for one poll to time
    // out. Nothing moves.
    let node_pid = p.nodes[MAIN].as_ref().unwrap().pid();
    let failed_before = f.failed_polls();
    signal(node_pid, "-STOP");
    let lost = wait_until(secs(5), || f.failed_polls() > failed_before);
    signal(node_pid, "-CONT");
    assert!(lost, "no poll was lost\n{}", f.logs());
    let end = Instant::now() + 4 * poll;
    while Instant::now() < end {
        assert!(f.up(), "one lost poll stopped the service\n{}", f.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = f.status().unwrap();
    assert_eq!(s["reachable"], true, "{s}");
    assert_eq!(s["applied_active"], true, "{s}");
    assert!(f.logs().contains("node unreachable"), "{}", f.logs());
    assert!(f.logs().contains("keeping services active"), "{}", f.logs());

    // The node unreachable for good: kept until `unreachable_after`, then
    // stopped. The clock starts at the first failed poll, after the kill.
    p.kill(MAIN);
    let t0 = Instant::now();
    let took = time_until(t0, secs(15), || !f.up())
        .unwrap_or_else(|| panic!("never stopped\n{}", f.logs()));
    println!("follower stopped {took:?} after its node was killed (unreachable_after {UNREACHABLE_MS} ms)");
    assert!(
        took >= Duration::from_millis(UNREACHABLE_MS),
        "stopped before unreachable_after: {took:?}\n{}",
        f.logs()
    );
    assert!(
        took <= Duration::from_millis(UNREACHABLE_MS) + 2 * poll + secs(2),
        "{took:?}\n{}",
        f.logs()
    );
    assert!(
        f.logs().contains("the node has been unreachable for"),
        "{}",
        f.logs()
    );

    // Its own endpoints.
    assert_eq!(
        agent()
            .get(&format!("http://127.0.0.1:{}/healthz", f.api))
            .call()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    // A page on a foreign name (DNS rebinding) cannot read it.
    let foreign = get_with_host(f.api, "evil.example", "/api/v1/status");
    assert!(foreign.starts_with("HTTP/1.1 421"), "{foreign}");
    // The metrics follow once the stop's result is in (the marker goes
    // before the follower hears back from the script).
    let metrics = || {
        agent()
            .get(&format!("http://127.0.0.1:{}/metrics", f.api))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default()
    };
    assert!(
        wait_until(secs(5), || {
            let m = metrics();
            m.contains("resilience_follow_reachable 0")
                && m.contains("resilience_follow_applied_active 0")
        }),
        "{}",
        metrics()
    );
}

#[test]
fn follower_over_tls_trusts_the_cluster_ca_only() {
    let _g = serial();
    let mut p = Pair::new("follow-tls", "manual", "policy = \"manual\"", false);
    let pki = p.dir.path("pki").display().to_string();
    for args in [
        vec!["cert", "init", "--dir", &pki],
        vec![
            "cert",
            "issue",
            "pbx-main",
            "--dir",
            &pki,
            "--name",
            "127.0.0.1",
        ],
    ] {
        let (code, out, err) = cli(&args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    p.set_extra(
        MAIN,
        format!("tls_cert = \"{pki}/pbx-main.crt\"\ntls_key = \"{pki}/pbx-main.key\"\n"),
    );
    let cfg = p.config_path(MAIN).display().to_string();
    p.spawn(MAIN);
    let api = format!("https://127.0.0.1:{}", p.specs[MAIN].api);
    let ca = format!("{pki}/ca.pem");
    assert!(
        wait_until(secs(10), || cli(&[
            "services", "start", "--config", &cfg, "--api", &api, "--ca", &ca
        ])
        .0 == 0),
        "{}",
        p.logs()
    );
    let url = format!("{api}/api/v1/ha");
    let trusted = Follower::start_as(&p, "trusted", &url, &format!("ca = \"{ca}\""));
    let stranger = Follower::start_as(&p, "stranger", &url, "");
    assert!(
        wait_until(secs(10), || trusted.up()),
        "{}\n{}",
        p.logs(),
        trusted.logs()
    );
    // Without the CA the node's certificate is not trusted: never started.
    assert!(wait_until(secs(5), || stranger.failed_polls() >= 3));
    let s = stranger.status().unwrap();
    assert_eq!(s["reachable"], false, "{s}");
    assert!(
        s["poll_error"].as_str().is_some_and(
            |e| e.to_lowercase().contains("certificate") || e.contains("UnknownIssuer")
        ),
        "{s}"
    );
    assert!(!stranger.up());
}
