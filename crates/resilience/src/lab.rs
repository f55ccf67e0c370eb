//! `resilience lab`: a Main and a Standby on loopback, each with a stand-in
//! PBX, for a first look. It writes a cluster key and two configs into a
//! folder, starts the four processes, prints both nodes' decisions as they
//! happen, and reads commands on stdin to break things (`crash main`,
//! `boot main`, `pbx-down main`, …). Ctrl-C (or `quit`) stops every process it
//! started, by pid.

use anyhow::Context;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

const NODES: [&str; 2] = ["main", "standby"];

struct Ports {
    heartbeat: u16,
    api: u16,
    pbx: u16,
}

fn free_udp() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_tcp() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn node_config(me: usize, ports: &[Ports; 2]) -> String {
    let (name, peer) = (NODES[me], NODES[1 - me]);
    let p = &ports[me];
    let q = &ports[1 - me];
    format!(
        r#"# Lab node {name}: short timers so failover and failback show in seconds.
[node]
name = "pbx-{name}"
type = "{name}"
mode = "automatic"
state_dir = "state-{name}"

[peer]
name = "pbx-{peer}"
address = "127.0.0.1:{peer_hb}"
api = "http://127.0.0.1:{peer_api}"

[heartbeat]
listen = "127.0.0.1:{hb}"
interval = "200ms"
failover_after = "3s"
key_file = "cluster.key"

[failback]
policy = "stable"
stable_for = "30s"

[drain]
timeout = "20s"
poll = "1s"
# Write a number into calls-{name} to pretend calls are up during a handover.
active_calls_command = "cat calls-{name} 2>/dev/null || echo 0"

[pbx]
sip_options = "127.0.0.1:{pbx}"
interval = "500ms"

[[service]]
name = "pbx"
start = "touch {name}.pbx-running"
stop = "rm -f {name}.pbx-running"
status = "test -f {name}.pbx-running"
timeout = "10s"

[service_policy]
retry_delay = "2s"
fault_hold = "60s"

[api]
listen = "127.0.0.1:{api}"
"#,
        peer_hb = q.heartbeat,
        peer_api = q.api,
        hb = p.heartbeat,
        pbx = p.pbx,
        api = p.api,
    )
}

/// The lab's processes, each kept by role so they can be broken and mended.
struct Lab {
    exe: PathBuf,
    dir: PathBuf,
    ports: [Ports; 2],
    children: HashMap<String, Child>,
}

impl Lab {
    fn spawn(&mut self, role: &str) -> anyhow::Result<()> {
        if self.children.contains_key(role) {
            println!("lab: {role} already runs");
            return Ok(());
        }
        let (who, what) = role.split_once('-').unwrap_or((role, "node"));
        let i = NODES
            .iter()
            .position(|n| *n == who)
            .context("unknown node")?;
        let log = std::fs::File::create(self.dir.join(format!("{role}.log")))?;
        let mut cmd = Command::new(&self.exe);
        match what {
            "pbx" => {
                let addr: SocketAddr = ([127, 0, 0, 1], self.ports[i].pbx).into();
                cmd.args(["stand-in-pbx", "--listen", &addr.to_string()]);
            }
            _ => {
                cmd.args(["node", "--config", &format!("{who}.toml")]);
            }
        }
        let child = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {role}"))?;
        println!("lab: started {role} (pid {})", child.id().unwrap_or(0));
        self.children.insert(role.to_owned(), child);
        Ok(())
    }

    /// SIGKILL a process of the lab, as a crash would.
    async fn kill(&mut self, role: &str) {
        match self.children.remove(role) {
            Some(mut c) => {
                let _ = c.start_kill();
                let _ = c.wait().await;
                println!("lab: killed {role}");
            }
            None => println!("lab: {role} is not running"),
        }
    }

    async fn stop_all(&mut self) {
        let roles: Vec<String> = self.children.keys().cloned().collect();
        for r in roles {
            self.kill(&r).await;
        }
    }
}

fn help() {
    println!(
        "lab commands:\n  crash main|standby     SIGKILL the node daemon (its services stay as they were)\n  boot main|standby      start the node daemon again\n  pbx-down main|standby  stop the stand-in PBX (the node's SIP probe fails)\n  pbx-up main|standby    start it again\n  status                 both nodes' status\n  quit                   stop everything (Ctrl-C does too)"
    );
}

pub async fn run(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("resilience-lab-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("lab folder {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let ports = [
        Ports {
            heartbeat: free_udp()?,
            api: free_tcp()?,
            pbx: free_udp()?,
        },
        Ports {
            heartbeat: free_udp()?,
            api: free_tcp()?,
            pbx: free_udp()?,
        },
    ];
    let key = dir.join("cluster.key");
    if !key.exists() {
        std::fs::write(&key, format!("{}\n", crate::keygen::new_key()?))?;
    }
    for (i, n) in NODES.iter().enumerate() {
        std::fs::write(dir.join(format!("{n}.toml")), node_config(i, &ports))?;
    }
    let mut lab = Lab {
        exe: std::env::current_exe()?,
        dir: dir.clone(),
        ports,
        children: HashMap::new(),
    };
    for role in ["main-pbx", "standby-pbx", "main", "standby"] {
        lab.spawn(role)?;
    }
    println!(
        "\nlab: folder {}\n  main    API http://127.0.0.1:{}  (resilience status --config {}/main.toml)\n  standby API http://127.0.0.1:{}  (resilience status --config {}/standby.toml)\n  timers: heartbeat 200ms, failover after 3s, failback after 30s stable, drain up to 20s",
        dir.display(),
        lab.ports[0].api,
        dir.display(),
        lab.ports[1].api,
        dir.display()
    );
    help();

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut last_id: [i64; 2] = [0, 0];
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let mut shutdown = std::pin::pin!(crate::node::shutdown_signal());
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                for i in 0..2 {
                    let url = format!("http://127.0.0.1:{}/api/v1/events?limit=50", lab.ports[i].api);
                    let since = last_id[i];
                    let got = tokio::task::spawn_blocking(move || fetch_events(&url, since)).await.unwrap_or_default();
                    for (id, text) in got {
                        last_id[i] = last_id[i].max(id);
                        println!("[{:<7}] {text}", NODES[i]);
                    }
                }
            }
            line = lines.next_line(), if stdin_open => {
                match line {
                    Ok(Some(l)) => {
                        let words: Vec<&str> = l.split_whitespace().collect();
                        match words.as_slice() {
                            ["crash", n] if NODES.contains(n) => lab.kill(n).await,
                            ["boot", n] if NODES.contains(n) => lab.spawn(n)?,
                            ["pbx-down", n] if NODES.contains(n) => lab.kill(&format!("{n}-pbx")).await,
                            ["pbx-up", n] if NODES.contains(n) => lab.spawn(&format!("{n}-pbx"))?,
                            ["status"] => {
                                for n in NODES {
                                    let cfg = lab.dir.join(format!("{n}.toml"));
                                    let t = crate::client::Target::new(None, None, Some(&cfg))?;
                                    tokio::task::spawn_blocking(move || crate::client::status(&t, false)).await?;
                                }
                            }
                            ["quit"] | ["exit"] => break,
                            [] => {}
                            _ => help(),
                        }
                    }
                    _ => stdin_open = false,
                }
            }
        }
    }
    println!("lab: stopping");
    lab.stop_all().await;
    Ok(ExitCode::SUCCESS)
}

/// New events of one node (id above `since`), oldest first.
fn fetch_events(url: &str, since: i64) -> Vec<(i64, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let Ok(mut resp) = agent.get(url).call() else {
        return Vec::new();
    };
    let Ok(doc) = resp.body_mut().read_json::<serde_json::Value>() else {
        return Vec::new();
    };
    let mut out: Vec<(i64, String)> = doc["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["id"].as_i64()?, e["text"].as_str()?.to_owned())))
        .filter(|(id, _)| *id > since)
        .collect();
    out.sort_by_key(|(id, _)| *id);
    out
}
