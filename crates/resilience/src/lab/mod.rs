//! `resilience lab`: the whole cluster on loopback, for a first look. It
//! writes a cluster key and the configs into a folder, starts two nodes
//! (each with a stand-in PBX), an edge and a follower per node, prints the
//! dashboard addresses and both nodes' decisions as they happen. Faults come
//! from the dashboards' Lab panel, the control API (`POST /lab/crash/main`,
//! …) or commands typed on stdin. Ctrl-C (or `quit`) stops every process it
//! started, by pid, and writes `lab.json` for tools (ports, addresses).

mod configs;
mod control;

use crate::status::HistoryPage;
use anyhow::Context;
use configs::{Ports, Sockets, NODES};
use control::{Lab, ROLES};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::Mutex;

fn help() {
    println!(
        "lab commands (or the Lab panel of a dashboard):\n  crash main|standby     SIGKILL the node daemon (its services stay as they were)\n  boot main|standby      start the node daemon again\n  pbx-down main|standby  stop the stand-in PBX (the node's SIP probe fails)\n  pbx-up main|standby    start it again\n  link-cut | link-heal   cut or heal the heartbeat link between the nodes\n  status                 both nodes' status\n  quit                   stop everything (Ctrl-C does too)\nfrom another shell: resilience lab --dir LAB_FOLDER crash main (same words)"
    );
}

/// Run a lab: write its configs and secrets, start both nodes and their
/// stand-in PBXs, then read commands until quit or Ctrl-C.
pub async fn run(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("resilience-lab-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("lab folder {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let sockets = Sockets::bind().context("lab sockets on 127.0.0.1")?;
    let ports = sockets.ports();
    let wires = [sockets.wire[0].try_clone()?, sockets.wire[1].try_clone()?];
    let control = sockets.control.try_clone()?;
    write_secrets(&dir)?;
    let mut secret = [0u8; 12];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let secret = hex::encode(secret);
    let control_url = format!("http://127.0.0.1:{}/{secret}", ports.control);
    write_configs(&dir, &ports, &control_url)?;

    let lab = Arc::new(Mutex::new(Lab::new(
        std::env::current_exe()?,
        dir.clone(),
        sockets,
        secret.clone(),
    )));
    start(&lab, wires, &ports).await?;
    serve_control(control, &lab, &secret)?;
    let state = lab.lock().await.state();
    std::fs::write(dir.join("lab.json"), serde_json::to_vec_pretty(&state)?)?;
    print_addresses(&dir, &ports, &control_url);
    help();
    prompt(&lab, &dir, &ports).await?;
    println!("lab: stopping");
    lab.lock().await.stop_all().await;
    Ok(ExitCode::SUCCESS)
}

/// The nodes refuse secrets others can read (crate::secret): 0600, and a
/// folder kept from an older lab gets its files' modes fixed.
fn write_secrets(dir: &Path) -> anyhow::Result<()> {
    for name in ["cluster.key", "api.token"] {
        let path = dir.join(name);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod 600 {}", path.display()))?;
        } else {
            crate::secret::write(&path, &format!("{}\n", crate::keygen::new_key()?), false)
                .with_context(|| format!("creating {}", path.display()))?;
        }
    }
    Ok(())
}

/// Each node's and follower's config, and the edge's.
fn write_configs(dir: &Path, ports: &Ports, control_url: &str) -> anyhow::Result<()> {
    for (i, n) in NODES.iter().enumerate() {
        std::fs::write(
            dir.join(format!("{n}.toml")),
            configs::node(i, ports, control_url),
        )?;
        std::fs::write(
            dir.join(format!("cc-{n}.toml")),
            configs::follower(i, ports),
        )?;
    }
    std::fs::write(dir.join("edge.toml"), configs::edge(ports))?;
    Ok(())
}

/// Carry the heartbeat wire between the nodes and start every role.
async fn start(
    lab: &Arc<Mutex<Lab>>,
    wires: [std::net::UdpSocket; 2],
    ports: &Ports,
) -> anyhow::Result<()> {
    let mut l = lab.lock().await;
    for (i, sock) in wires.into_iter().enumerate() {
        let wire = l.wire.clone();
        let p = ports.clone();
        tokio::spawn(async move {
            if let Err(e) = wire.run(i, sock, p).await {
                eprintln!("lab: wire: {e:#}");
            }
        });
    }
    for role in ROLES {
        println!("lab: {}", l.spawn(role)?);
    }
    Ok(())
}

/// Serve the lab's control API on its own task.
fn serve_control(
    control: std::net::TcpListener,
    lab: &Arc<Mutex<Lab>>,
    secret: &str,
) -> anyhow::Result<()> {
    control.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(control).context("lab control port")?;
    let app = control::router(lab.clone(), secret);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("lab: control API: {e}");
        }
    });
    Ok(())
}

fn print_addresses(dir: &Path, ports: &Ports, control_url: &str) {
    // The dashboards' links carry the token in their fragment: opened
    // from here, they act at once (the token stays in the browser).
    let token = std::fs::read_to_string(dir.join("api.token")).unwrap_or_default();
    let token = token.trim();
    println!(
        "\nlab: folder {d}\n  dashboards  main    http://127.0.0.1:{m}/#token={token}\n              standby http://127.0.0.1:{s}/#token={token}\n  API token   {token} (in {d}/api.token; the links above carry it)\n  edge        SIP 127.0.0.1:{e} (register phones here), status http://127.0.0.1:{ea}/api/v1/status\n  followers   cc-main http://127.0.0.1:{f0}/api/v1/status, cc-standby http://127.0.0.1:{f1}/api/v1/status\n  lab control {c}/\n  timers: heartbeat 200ms, failover after 3s, failback after 30s stable, drain up to 20s",
        d = dir.display(),
        m = ports.api[0],
        s = ports.api[1],
        e = ports.edge_sip,
        ea = ports.edge_api,
        f0 = ports.follower_api[0],
        f1 = ports.follower_api[1],
        c = control_url,
    );
}

/// Print both nodes' new events and read commands until quit, Ctrl-C or
/// stdin's end followed by Ctrl-C.
async fn prompt(lab: &Arc<Mutex<Lab>>, dir: &Path, ports: &Ports) -> anyhow::Result<()> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut last_id: [i64; 2] = [0, 0];
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let mut shutdown = std::pin::pin!(crate::shutdown::shutdown_signal());
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tick.tick() => print_events(ports, &mut last_id).await,
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(l)) => {
                    if command(lab, dir, &l).await? == Prompt::Quit {
                        return Ok(());
                    }
                }
                _ => stdin_open = false,
            },
        }
    }
}

/// Print each node's events newer than the last one printed.
async fn print_events(ports: &Ports, last_id: &mut [i64; 2]) {
    for i in 0..2 {
        let url = format!("http://127.0.0.1:{}/api/v1/events?limit=50", ports.api[i]);
        let since = last_id[i];
        let got = tokio::task::spawn_blocking(move || fetch_events(&url, since))
            .await
            .unwrap_or_default();
        for (id, text) in got {
            last_id[i] = last_id[i].max(id);
            println!("[{:<7}] {text}", NODES[i]);
        }
    }
}

/// Whether the prompt goes on after a command.
#[derive(PartialEq)]
enum Prompt {
    Go,
    Quit,
}

/// Carry out one typed command line.
async fn command(lab: &Arc<Mutex<Lab>>, dir: &Path, line: &str) -> anyhow::Result<Prompt> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["status"] => {
            for n in NODES {
                let cfg = dir.join(format!("{n}.toml"));
                let t = crate::client::Target::new(None, None, Some(&cfg))?;
                tokio::task::spawn_blocking(move || crate::client::status(&t, false)).await?;
            }
        }
        ["quit"] | ["exit"] => return Ok(Prompt::Quit),
        [] => {}
        [action, rest @ ..] if rest.len() <= 1 => {
            let r = lab
                .lock()
                .await
                .command(action, rest.first().copied())
                .await;
            match r {
                Ok(m) => println!("lab: {m}"),
                Err(e) => {
                    println!("lab: {e}");
                    help();
                }
            }
        }
        _ => help(),
    }
    Ok(Prompt::Go)
}

/// `resilience lab --dir DIR ACTION [NODE]`: one fault for a running lab,
/// through its control API (found in DIR/lab.json).
pub fn control_command(dir: Option<PathBuf>, words: &[String]) -> anyhow::Result<ExitCode> {
    let dir =
        dir.context("give the running lab's folder: resilience lab --dir DIR ACTION [NODE]")?;
    let state_file = dir.join("lab.json");
    let state: LabFile = serde_json::from_slice(
        &std::fs::read(&state_file)
            .with_context(|| format!("{}: is a lab running there?", state_file.display()))?,
    )
    .with_context(|| format!("{}: not a lab state file", state_file.display()))?;
    let control = state.control.context("lab.json has no control URL")?;
    let agent = crate::http_client::http_agent(None, Some(Duration::from_secs(10)), false)
        .map_err(|e| anyhow::anyhow!(e))?;
    let url = format!("{control}/lab/{}", words.join("/"));
    let mut resp = if words == ["state"] {
        agent.get(&url).call()
    } else {
        agent.post(&url).send_empty()
    }
    .with_context(|| format!("the lab at {control} did not answer"))?;
    let ok = resp.status().is_success();
    let v: serde_json::Value = resp.body_mut().read_json()?;
    match v.get("message").or(v.get("error")).and_then(|m| m.as_str()) {
        Some(m) => println!("{m}"),
        None => println!("{}", serde_json::to_string_pretty(&v)?),
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What `resilience lab --dir` reads of a running lab's `lab.json`.
#[derive(serde::Deserialize)]
struct LabFile {
    /// The lab's control API.
    control: Option<String>,
}

/// New events of one node (id above `since`), oldest first.
fn fetch_events(url: &str, since: i64) -> Vec<(i64, String)> {
    let Ok(agent) = crate::http_client::http_agent(None, Some(Duration::from_secs(2)), true) else {
        return Vec::new();
    };
    let Ok(mut resp) = agent.get(url).call() else {
        return Vec::new();
    };
    let Ok(page) = resp.body_mut().read_json::<HistoryPage>() else {
        return Vec::new();
    };
    let mut out: Vec<(i64, String)> = page
        .events
        .into_iter()
        .filter(|e| e.id > since)
        .map(|e| (e.id, e.text))
        .collect();
    out.sort_by_key(|(id, _)| *id);
    out
}
