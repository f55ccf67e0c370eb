//! The lab's moving parts: its processes (kept by role, so each can be
//! crashed and booted again), the heartbeat wire between the two nodes (a
//! UDP relay per direction that drops everything while the link is cut),
//! and the control API the dashboards' lab buttons and the tests call.

use super::configs::{Ports, Sockets, NODES};
use anyhow::Context;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

/// Every role the lab runs, in start order.
pub const ROLES: [&str; 7] = [
    "main-pbx",
    "standby-pbx",
    "main",
    "standby",
    "edge",
    "cc-main",
    "cc-standby",
];

/// The heartbeat link between the nodes.
#[derive(Default)]
pub struct Wire {
    pub cut: AtomicBool,
    pub relayed: AtomicU64,
    pub dropped: AtomicU64,
}

impl Wire {
    /// Relay node `i`'s heartbeats (sent to its wire port) to the other
    /// node, unless the link is cut.
    pub async fn run(
        self: Arc<Self>,
        i: usize,
        sock: std::net::UdpSocket,
        ports: Ports,
    ) -> anyhow::Result<()> {
        sock.set_nonblocking(true)?;
        let sock = UdpSocket::from_std(sock)
            .with_context(|| format!("lab wire port {}", ports.wire[i]))?;
        let to: SocketAddr = ([127, 0, 0, 1], ports.heartbeat[1 - i]).into();
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, _)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            if self.cut.load(Ordering::Relaxed) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                let _ = sock.send_to(&buf[..n], to).await;
                self.relayed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

pub struct Lab {
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub ports: Ports,
    /// The control API's path prefix: a page that does not know it cannot
    /// post to the lab (a no-body POST needs no CORS preflight).
    pub secret: String,
    pub wire: Arc<Wire>,
    /// Kept for the whole lab: a process booted again gets the same ones.
    pub sockets: Sockets,
    children: BTreeMap<String, Child>,
}

impl Lab {
    pub fn new(exe: PathBuf, dir: PathBuf, sockets: Sockets, secret: String) -> Lab {
        Lab {
            exe,
            dir,
            ports: sockets.ports(),
            sockets,
            secret,
            wire: Arc::new(Wire::default()),
            children: BTreeMap::new(),
        }
    }

    pub fn spawn(&mut self, role: &str) -> anyhow::Result<String> {
        // A process that ended by itself can be booted again.
        if let Some(c) = self.children.get_mut(role) {
            if matches!(c.try_wait(), Ok(None)) {
                return Ok(format!("{role} already runs"));
            }
            self.children.remove(role);
        }
        let args: Vec<String> = match role {
            "main" | "standby" => vec!["node".into(), "--config".into(), format!("{role}.toml")],
            "main-pbx" | "standby-pbx" => {
                let i = if role == "main-pbx" { 0 } else { 1 };
                vec![
                    "stand-in-pbx".into(),
                    "--listen".into(),
                    format!("127.0.0.1:{}", self.ports.pbx[i]),
                ]
            }
            "edge" => vec!["edge".into(), "--config".into(), "edge.toml".into()],
            "cc-main" | "cc-standby" => {
                vec!["follow".into(), "--config".into(), format!("{role}.toml")]
            }
            _ => anyhow::bail!("no such part of the lab: {role}"),
        };
        let log = std::fs::File::create(self.dir.join(format!("{role}.log")))?;
        let fds = self.sockets.of_role(role);
        let child = Command::from(crate::listen_fds::command(&self.exe, &args, fds))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {role}"))?;
        let msg = format!("started {role} (pid {})", child.id().unwrap_or(0));
        self.children.insert(role.to_owned(), child);
        Ok(msg)
    }

    /// SIGKILL a process of the lab, as a crash would.
    pub async fn kill(&mut self, role: &str) -> String {
        match self.children.remove(role) {
            Some(mut c) => {
                let _ = c.start_kill();
                let _ = c.wait().await;
                format!("killed {role}")
            }
            None => format!("{role} is not running"),
        }
    }

    pub async fn stop_all(&mut self) {
        while let Some((role, _)) = self.children.iter().next_back() {
            let role = role.clone();
            println!("lab: {}", self.kill(&role).await);
        }
    }

    /// One lab command (`crash main`, `pbx-down standby`, `link-cut`, …).
    pub async fn command(&mut self, action: &str, node: Option<&str>) -> anyhow::Result<String> {
        let node = match node {
            Some(n) if NODES.contains(&n) => Some(n),
            Some(n) => anyhow::bail!("no node `{n}` (main or standby)"),
            None => None,
        };
        let set_link = |cut: bool| {
            self.wire.cut.store(cut, Ordering::Relaxed);
            Ok(if cut {
                "heartbeat link cut: the nodes no longer hear each other".to_string()
            } else {
                "heartbeat link healed".to_string()
            })
        };
        match (action, node) {
            ("crash", Some(n)) => Ok(self.kill(n).await),
            ("boot", Some(n)) => self.spawn(n),
            ("pbx-down", Some(n)) => Ok(self.kill(&format!("{n}-pbx")).await),
            ("pbx-up", Some(n)) => self.spawn(&format!("{n}-pbx")),
            ("link-cut", None) => set_link(true),
            ("link-heal", None) => set_link(false),
            _ => Err(anyhow::anyhow!(
                "unknown lab command `{action}{}`",
                node.map(|n| format!(" {n}")).unwrap_or_default()
            )),
        }
    }

    pub fn control_url(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.ports.control, self.secret)
    }

    pub fn state(&mut self) -> serde_json::Value {
        let running: BTreeMap<&str, Option<u32>> = ROLES
            .iter()
            .map(|r| {
                let pid = self.children.get_mut(*r).and_then(|c| match c.try_wait() {
                    Ok(None) => c.id(),
                    _ => None,
                });
                (*r, pid)
            })
            .collect();
        let p = &self.ports;
        json!({
            "dir": self.dir,
            "processes": running,
            "link": if self.wire.cut.load(Ordering::Relaxed) { "cut" } else { "up" },
            "wire": {
                "relayed": self.wire.relayed.load(Ordering::Relaxed),
                "dropped": self.wire.dropped.load(Ordering::Relaxed),
            },
            "dashboards": {
                "main": format!("http://127.0.0.1:{}/", p.api[0]),
                "standby": format!("http://127.0.0.1:{}/", p.api[1]),
            },
            "edge": {
                "sip": format!("127.0.0.1:{}", p.edge_sip),
                "api": format!("http://127.0.0.1:{}/api/v1/status", p.edge_api),
            },
            "followers": {
                "cc-main": format!("http://127.0.0.1:{}/api/v1/status", p.follower_api[0]),
                "cc-standby": format!("http://127.0.0.1:{}/api/v1/status", p.follower_api[1]),
            },
            "control": self.control_url(),
        })
    }
}

type Shared = Arc<Mutex<Lab>>;

const PAGE: &str = r#"<!doctype html><meta charset="utf-8"><title>Resilience lab</title>
<style>body{font:15px system-ui,sans-serif;margin:2em;max-width:50em}a{margin-right:1em}</style>
<h1>Resilience lab</h1>
<p>Open a node's dashboard; its Lab panel crashes and boots the nodes, stops
their PBXs and cuts the heartbeat link.</p>
<p id="links"></p><pre id="state"></pre>
<script>
fetch('lab/state').then(r=>r.json()).then(s=>{
  for (const [n,u] of Object.entries(s.dashboards)) {
    const a=document.createElement('a'); a.href=u; a.textContent=n+' dashboard';
    document.getElementById('links').append(a);
  }
  document.getElementById('state').textContent=JSON.stringify(s,null,2);
});
</script>"#;

async fn state(State(lab): State<Shared>) -> Json<serde_json::Value> {
    Json(lab.lock().await.state())
}

async fn act(lab: Shared, action: String, node: Option<String>) -> Response {
    let r = lab.lock().await.command(&action, node.as_deref()).await;
    match r {
        Ok(msg) => {
            println!("lab: {msg}");
            Json(json!({"ok": true, "message": msg})).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": e.to_string()})),
        )
            .into_response(),
    }
}

/// The control API under `/SECRET`: `GET /lab/state`, `POST
/// /lab/ACTION[/NODE]`. Pages of any origin may read the answers (the
/// dashboards live on other ports); only those given the secret (the node
/// configs' `lab_url`) can reach it.
pub fn router(lab: Shared, secret: &str) -> Router {
    let inner = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/lab/state", get(state))
        .route(
            "/lab/{action}",
            post(|State(l): State<Shared>, UrlPath(a): UrlPath<String>| act(l, a, None)),
        )
        .route(
            "/lab/{action}/{node}",
            post(
                |State(l): State<Shared>, UrlPath((a, n)): UrlPath<(String, String)>| {
                    act(l, a, Some(n))
                },
            ),
        )
        .layer(axum::middleware::map_response(
            |mut r: Response| async move {
                r.headers_mut().insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
                r
            },
        ))
        .with_state(lab);
    // `/SECRET` and `/SECRET/` alike: the lab prints the one, a browser
    // or a hand may add the other.
    Router::new()
        .route(&format!("/{secret}/"), get(|| async { Html(PAGE) }))
        .nest(&format!("/{secret}"), inner)
}
