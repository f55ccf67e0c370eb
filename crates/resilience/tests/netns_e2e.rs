//! End-to-end across real network links: the Main and the Standby in two
//! network namespaces joined by two veth pairs (two heartbeat paths), and an
//! arbiter (a TCP listener) in a third namespace that only the Standby
//! reaches. Links are cut with `ip link set down`. Needs root and iproute2;
//! without them the test fails (it does not skip).
//!
//! Addresses are from TEST-NET-1 (192.0.2.0/24), inside namespaces this test
//! makes and deletes.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 (`ip`) is needed");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three namespaces and their links; deleted (and their processes killed) on drop.
struct Net {
    ns: [String; 3],
    procs: Vec<Proc>,
}

const A: usize = 0; // the Main
const B: usize = 1; // the Standby
const W: usize = 2; // the witness (arbiter)

impl Net {
    fn new() -> Net {
        assert!(
            is_root(),
            "this test needs root to create network namespaces"
        );
        let id = std::process::id() % 100_000;
        let ns = [format!("rt{id}a"), format!("rt{id}b"), format!("rt{id}w")];
        let net = Net {
            ns,
            procs: Vec::new(),
        };
        for n in &net.ns {
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        // (left ns, left dev, left addr, right ns, right dev, right addr)
        let links = [
            (A, "hb1a", "192.0.2.1", B, "hb1b", "192.0.2.2"),
            (A, "hb2a", "192.0.2.5", B, "hb2b", "192.0.2.6"),
            (B, "arbb", "192.0.2.9", W, "arbw", "192.0.2.10"),
        ];
        for (l, ld, la, r, rd, ra) in links {
            ip(&[
                "link", "add", ld, "netns", &net.ns[l], "type", "veth", "peer", "name", rd,
                "netns", &net.ns[r],
            ]);
            ip(&[
                "-n",
                &net.ns[l],
                "addr",
                "add",
                &format!("{la}/30"),
                "dev",
                ld,
            ]);
            ip(&[
                "-n",
                &net.ns[r],
                "addr",
                "add",
                &format!("{ra}/30"),
                "dev",
                rd,
            ]);
            ip(&["-n", &net.ns[l], "link", "set", ld, "up"]);
            ip(&["-n", &net.ns[r], "link", "set", rd, "up"]);
        }
        net
    }

    fn link(&self, ns: usize, dev: &str, up: bool) {
        ip(&[
            "-n",
            &self.ns[ns],
            "link",
            "set",
            dev,
            if up { "up" } else { "down" },
        ]);
    }

    fn spawn(&mut self, ns: usize, name: &str, args: &[&str], dir: &TestDir) {
        let mut full = vec!["netns", "exec", &self.ns[ns], bin()];
        full.extend_from_slice(args);
        let log = dir.path(&format!("{name}.log"));
        let out = append_log(&log);
        let child = Command::new("ip")
            .args(&full)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("ip netns exec");
        self.procs.push(Proc::from_child(name, child));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.procs.clear();
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn is_root() -> bool {
    // /proc/self/status: "Uid: real effective saved fs".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.to_owned())
        })
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        .unwrap_or(false)
}

fn config(
    dir: &TestDir,
    name: &str,
    ty: &str,
    me: [&str; 2],
    peer: [&str; 2],
    arbiter: bool,
) -> String {
    let d = dir.0.display();
    let arb = if arbiter {
        "[arbiters]\naddresses = [\"192.0.2.10:7000\"]\ninterval = \"200ms\"\n"
    } else {
        ""
    };
    let peer_name = if name == "main" { "standby" } else { "main" };
    format!(
        r#"[node]
name = "{name}"
type = "{ty}"
state_dir = "{d}/state-{name}"
[peer]
name = "{peer_name}"
address = "{p0}:7400"
extra_addresses = ["{p1}:7400"]
[heartbeat]
listen = "{m0}:7400"
extra_listen = ["{m1}:7400"]
interval = "{INTERVAL_MS}ms"
failover_after = "{FAILOVER_MS}ms"
key_file = "{d}/cluster.key"
[failback]
policy = "immediate"
{arb}
[[service]]
name = "pbx"
start = "touch {d}/{name}.up"
stop = "rm -f {d}/{name}.up"
status = "test -f {d}/{name}.up"
[api]
listen = "127.0.0.1:7480"
token_file = "{d}/api.token"
"#,
        m0 = me[0],
        m1 = me[1],
        p0 = peer[0],
        p1 = peer[1],
    )
}

fn up(dir: &TestDir, name: &str) -> bool {
    dir.path(&format!("{name}.up")).exists()
}

fn logs(dir: &TestDir) -> String {
    ["main", "standby"]
        .iter()
        .map(|n| {
            format!(
                "--- {n} ---\n{}",
                std::fs::read_to_string(dir.path(&format!("{n}.log"))).unwrap_or_default()
            )
        })
        .collect()
}

#[test]
fn heartbeat_paths_and_the_arbiter_rule_across_real_links() {
    let _g = serial();
    let dir = TestDir::new("netns");
    write_secret(&dir.path("cluster.key"), &format!("{KEY}\n"));
    write_secret(&dir.path("api.token"), &format!("{TOKEN}\n"));
    let main = config(
        &dir,
        "main",
        "main",
        ["192.0.2.1", "192.0.2.5"],
        ["192.0.2.2", "192.0.2.6"],
        false,
    );
    let standby = config(
        &dir,
        "standby",
        "standby",
        ["192.0.2.2", "192.0.2.6"],
        ["192.0.2.1", "192.0.2.5"],
        true,
    );
    std::fs::write(dir.path("main.toml"), main).unwrap();
    std::fs::write(dir.path("standby.toml"), standby).unwrap();
    let mut net = Net::new();
    // The witness: any TCP listener will do; the stand-in PBX has one.
    net.spawn(
        W,
        "arbiter",
        &[
            "stand-in-pbx",
            "--listen",
            "192.0.2.10:7001",
            "--tcp-listen",
            "192.0.2.10:7000",
        ],
        &dir,
    );
    let main_cfg = dir.path("main.toml").display().to_string();
    let standby_cfg = dir.path("standby.toml").display().to_string();
    net.spawn(A, "main", &["node", "--config", &main_cfg], &dir);
    net.spawn(B, "standby", &["node", "--config", &standby_cfg], &dir);
    assert!(
        wait_until(Duration::from_secs(10), || up(&dir, "main")),
        "main never active\n{}",
        logs(&dir)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !up(&dir, "standby"),
        "standby active with the main alive\n{}",
        logs(&dir)
    );

    // One heartbeat path down: the other carries on, no failover.
    net.link(A, "hb1a", false);
    std::thread::sleep(Duration::from_millis(3 * FAILOVER_MS));
    assert!(
        !up(&dir, "standby"),
        "failover with one path still up\n{}",
        logs(&dir)
    );

    // The Standby is cut off from everything (both paths and the arbiter):
    // it must not start a second PBX.
    net.link(B, "arbb", false);
    net.link(A, "hb2a", false);
    std::thread::sleep(Duration::from_millis(4 * FAILOVER_MS));
    assert!(
        !up(&dir, "standby"),
        "isolated standby took over\n{}",
        logs(&dir)
    );
    let log = std::fs::read_to_string(dir.path("standby.log")).unwrap();
    assert!(log.contains("no arbiter answers"), "{log}");

    // The arbiter answers again while the Main stays unheard: take over.
    net.link(B, "arbb", true);
    assert!(
        wait_until(Duration::from_secs(5), || up(&dir, "standby")),
        "no failover with the arbiter reachable\n{}",
        logs(&dir)
    );

    // The paths heal: one Active again (the Main, by default).
    net.link(A, "hb1a", true);
    net.link(A, "hb2a", true);
    assert!(
        wait_until(Duration::from_secs(5), || up(&dir, "main")
            && !up(&dir, "standby")),
        "two actives after the heal\n{}",
        logs(&dir)
    );
}
