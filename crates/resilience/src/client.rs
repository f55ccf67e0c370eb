//! The admin's commands against a node's API: `status`, `services
//! start|stop`, `failback`, `switchover`, `events`.
//!
//! Exit codes, for scripts: 0 done; 1 refused by the node (the reason is
//! printed); 3 the node could not be reached; 4 the token was refused; 66
//! a configuration file could not be read (as sysexits' `EX_NOINPUT`). The
//! same list is in `resilience --help`.

use crate::status::{ApiAnswer, EventRow, HeartbeatInfo, HistoryPage, NodeStatus, PushAnswer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const EXIT_REFUSED: i32 = 1;
pub const EXIT_UNREACHABLE: i32 = 3;
pub const EXIT_UNAUTHORIZED: i32 = 4;
pub const EXIT_NO_INPUT: i32 = 66;

/// Where the node's API is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct Target {
    pub api: String,
    pub token_file: Option<PathBuf>,
    /// A CA to trust for https (besides the system's roots).
    pub ca: Option<PathBuf>,
}

impl Target {
    /// From the flags, falling back on a node config file (its API address
    /// and token file) and then on the defaults.
    pub fn new(
        api: Option<String>,
        token_file: Option<PathBuf>,
        config: Option<&Path>,
    ) -> anyhow::Result<Target> {
        let mut t = Target {
            api: "http://127.0.0.1:7480".into(),
            token_file: token_file.clone(),
            ca: None,
        };
        if let Some(path) = config {
            let (cfg, base) = crate::node_config::load_config(path)?;
            let scheme = if cfg.api.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            t.api = format!("{scheme}://{}", cfg.api.listen);
            if t.token_file.is_none() {
                t.token_file = Some(match &cfg.api.token_file {
                    Some(p) => crate::paths::resolve(&base, p),
                    None => crate::paths::resolve(&base, &cfg.node.state_dir).join("api.token"),
                });
            }
        }
        if let Some(a) = api {
            t.api = a;
        }
        if t.token_file.is_none() {
            t.token_file = Some(PathBuf::from("/var/lib/resilience/api.token"));
        }
        t.api = t.api.trim_end_matches('/').to_owned();
        Ok(t)
    }

    pub fn with_ca(mut self, ca: Option<PathBuf>) -> Target {
        self.ca = ca;
        self
    }

    fn token(&self) -> anyhow::Result<String> {
        let path = self
            .token_file
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no token file"))?;
        let t = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "API token {}: {e} (use --token-file or --config)",
                path.display()
            )
        })?;
        Ok(t.trim().to_owned())
    }
}

fn agent(t: &Target) -> Result<ureq::Agent, (i32, String)> {
    agent_with(t, Some(Duration::from_secs(10)))
}

/// `timeout`: for the whole call; `None` for calls as long as the work they
/// wait for (a replication push), with only the connection bounded.
fn agent_with(t: &Target, timeout: Option<Duration>) -> Result<ureq::Agent, (i32, String)> {
    crate::http_client::http_agent(t.ca.as_deref(), timeout, true)
        .map_err(|e| (EXIT_UNREACHABLE, e.to_string()))
}

/// GET a JSON document. Err carries the exit code and the message.
fn get(t: &Target, path: &str) -> Result<Value, (i32, String)> {
    let url = format!("{}{path}", t.api);
    let mut resp = agent(t)?
        .get(&url)
        .call()
        .map_err(|e| (EXIT_UNREACHABLE, format!("{url}: {e}")))?;
    let status = resp.status().as_u16();
    let body: Value = resp
        .body_mut()
        .read_json()
        .map_err(|e| (EXIT_UNREACHABLE, format!("{url}: answer is not JSON: {e}")))?;
    if status != 200 {
        let a: ApiAnswer = serde_json::from_value(body).unwrap_or_default();
        return Err((
            EXIT_REFUSED,
            format!("{url}: HTTP {status}: {}", a.error.unwrap_or_default()),
        ));
    }
    Ok(body)
}

/// POST an action with the token. Ok(message) when done.
fn post(t: &Target, path: &str) -> Result<String, (i32, String)> {
    let token = t.token().map_err(|e| (EXIT_UNAUTHORIZED, e.to_string()))?;
    let url = format!("{}{path}", t.api);
    let mut resp = agent(t)?
        .post(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .send_empty()
        .map_err(|e| (EXIT_UNREACHABLE, format!("{url}: {e}")))?;
    let status = resp.status().as_u16();
    let body: ApiAnswer = resp.body_mut().read_json().unwrap_or_default();
    match status {
        200 => Ok(body.message.unwrap_or_else(|| "done".into())),
        401 => Err((
            EXIT_UNAUTHORIZED,
            body.error.unwrap_or_else(|| "unauthorized".into()),
        )),
        _ => Err((
            EXIT_REFUSED,
            body.error.unwrap_or_else(|| format!("HTTP {status}")),
        )),
    }
}

fn finish(r: Result<String, (i32, String)>) -> i32 {
    match r {
        Ok(msg) => {
            println!("{msg}");
            0
        }
        Err((code, msg)) => {
            eprintln!("{msg}");
            code
        }
    }
}

pub fn status(t: &Target, as_json: bool) -> i32 {
    finish(get(t, "/api/v1/status").and_then(|doc| {
        if as_json {
            return Ok(serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        let doc: NodeStatus = serde_json::from_value(doc).map_err(|e| {
            (
                EXIT_UNREACHABLE,
                format!("{}/api/v1/status: not a node's status: {e}", t.api),
            )
        })?;
        Ok(render_status(&doc))
    }))
}

fn secs(v: Option<f64>) -> String {
    v.map_or("never".into(), |s| format!("{s:.1}s ago"))
}

/// The status document in a few lines an admin reads at a glance.
pub fn render_status(d: &NodeStatus) -> String {
    let n = &d.node;
    let mut out = format!(
        "{} ({} node, {} mode): {} [{}], epoch {}\n  why: {}\n  PBX: {}",
        n.name,
        n.node_type,
        n.mode,
        if n.active { "ACTIVE" } else { "INACTIVE" },
        n.status,
        n.epoch,
        n.reason,
        d.pbx.health,
    );
    if n.held {
        out.push_str("\n  held inactive by an admin (yields to the peer)");
    }
    if n.faulted {
        out.push_str("\n  FAULTED: yields to the peer for a while");
    }
    if let Some(w) = &n.switchover {
        out.push_str(&format!("\n  switchover: {w}"));
    }
    if let Some(w) = &n.guard {
        out.push_str(&format!("\n  NOT SERVING: {w}"));
    }
    if let Some(p) = &d.peer {
        out.push_str(&format!(
            "\n  peer {}: {}, last heard {}, PBX {}",
            p.name,
            match (p.heard, p.status) {
                (true, Some(st)) => st.to_string(),
                (true, None) => "?".into(),
                (false, _) => "SILENT".into(),
            },
            secs(p.last_heard_ago_s),
            p.pbx.map_or("?".into(), |h| h.to_string()),
        ));
    }
    let f = &d.failback;
    if let Some(w) = &f.waiting_because {
        out.push_str(&format!("\n  failback pending: {w}"));
        if let Some(s) = f.due_in_s {
            out.push_str(&format!(" ({s:.0}s left)"));
        }
    } else if f.requested {
        out.push_str("\n  failback requested: waiting for the standby to hand over");
    }
    out.push_str(&services_line(d));
    out.push_str(&heartbeats_line(&d.heartbeat));
    out
}

/// The services' line of [`render_status`]; empty when there are none.
fn services_line(d: &NodeStatus) -> String {
    let s: Vec<String> = d
        .services
        .iter()
        .map(|s| {
            let state = match s.running {
                Some(true) => "running",
                Some(false) => "stopped",
                None => "unknown",
            };
            format!("{} {state}", s.name)
        })
        .collect();
    if s.is_empty() {
        String::new()
    } else {
        format!("\n  services: {}", s.join(", "))
    }
}

/// The heartbeats' line of [`render_status`], rejections by reason.
fn heartbeats_line(hb: &HeartbeatInfo) -> String {
    let rejected: Vec<String> = hb
        .rejected
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    format!(
        "\n  heartbeats: sent {}, received {}, rejected: {}",
        hb.sent,
        hb.received,
        if rejected.is_empty() {
            "none".into()
        } else {
            rejected.join(", ")
        }
    )
}

pub fn services(t: &Target, start: bool, force: bool) -> i32 {
    let path = match (start, force) {
        (true, true) => "/api/v1/services/start?force=true",
        (true, false) => "/api/v1/services/start",
        (false, _) => "/api/v1/services/stop",
    };
    finish(post(t, path))
}

/// Ask the Main to push every replication job now; print each job's result.
pub fn replicate(t: &Target) -> i32 {
    let token = match t.token() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_UNAUTHORIZED;
        }
    };
    let url = format!("{}/api/v1/replicate", t.api);
    let agent = match agent_with(t, None) {
        Ok(a) => a,
        Err((c, m)) => {
            eprintln!("{m}");
            return c;
        }
    };
    let mut resp = match agent
        .post(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .send_empty()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{url}: {e}");
            return EXIT_UNREACHABLE;
        }
    };
    let status = resp.status().as_u16();
    match status {
        200 => {
            let body: PushAnswer = resp.body_mut().read_json().unwrap_or_default();
            let mut failed = false;
            for j in &body.jobs {
                match &j.error {
                    Some(e) => {
                        failed = true;
                        eprintln!("{}: FAILED: {e}", j.job);
                    }
                    None => println!(
                        "{}: {} files, {} bytes, {} deleted",
                        j.job,
                        j.files.unwrap_or(0),
                        j.bytes.unwrap_or(0),
                        j.deleted.unwrap_or(0)
                    ),
                }
            }
            if failed {
                EXIT_REFUSED
            } else {
                0
            }
        }
        401 => {
            let body: ApiAnswer = resp.body_mut().read_json().unwrap_or_default();
            eprintln!("{}", body.error.as_deref().unwrap_or("unauthorized"));
            EXIT_UNAUTHORIZED
        }
        _ => {
            let body: ApiAnswer = resp.body_mut().read_json().unwrap_or_default();
            eprintln!("{}", body.error.as_deref().unwrap_or("refused"));
            EXIT_REFUSED
        }
    }
}

pub fn failback(t: &Target) -> i32 {
    finish(post(t, "/api/v1/failback"))
}

pub fn switchover(t: &Target) -> i32 {
    finish(post(t, "/api/v1/switchover"))
}

/// The newest `limit` events, read page by page (the API returns at most
/// a page per request and the cursor of the next).
fn events_paged(t: &Target, limit: usize) -> Result<Vec<EventRow>, (i32, String)> {
    let mut out: Vec<EventRow> = Vec::new();
    let mut before: Option<i64> = None;
    while out.len() < limit {
        let want = limit - out.len();
        let path = match before {
            Some(b) => format!("/api/v1/events?limit={want}&before={b}"),
            None => format!("/api/v1/events?limit={want}"),
        };
        let page: HistoryPage = serde_json::from_value(get(t, &path)?).map_err(|e| {
            (
                EXIT_UNREACHABLE,
                format!("{}{path}: not a page of events: {e}", t.api),
            )
        })?;
        let empty = page.events.is_empty();
        out.extend(page.events);
        before = page.next_before;
        if empty || before.is_none() {
            break;
        }
    }
    out.truncate(limit);
    Ok(out)
}

pub fn events(t: &Target, limit: usize, as_json: bool) -> i32 {
    finish(events_paged(t, limit).map(|events| {
        if as_json {
            return serde_json::to_string_pretty(&serde_json::json!({ "events": events }))
                .unwrap_or_default();
        }
        let lines: Vec<String> = events
            .iter()
            .map(|e| format!("{}  {}", format_ms(e.at_ms), e.text))
            .collect();
        lines.join("\n")
    }))
}

/// Unix milliseconds as an RFC 3339 UTC time (no time-zone database needed).
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_times() {
        assert_eq!(super::format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::format_ms(1_795_000_000_123),
            "2026-11-18T11:06:40.123Z"
        );
    }
}
