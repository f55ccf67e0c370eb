//! Helpers for the end-to-end tests: real `resilience` processes on loopback,
//! each killed by its pid when the test ends or panics.

#![allow(dead_code)]

pub mod edge;
pub mod repl;
pub mod sockets;

pub use sockets::Sock;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_resilience")
}

/// Heavy tests take this lock so they run one at a time on a 2-core machine.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A temporary folder, removed when dropped (kept with RES_KEEP=1).
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "resilience-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        TestDir(d)
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("RES_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str], cwd: &Path, log: &Path) -> Proc {
        Proc::spawn_with(name, args, cwd, log, &[])
    }

    /// `resilience args…` serving on `socks` (handed over as descriptors
    /// 3, 4, …: see [`sockets`]).
    pub fn spawn_with(name: &str, args: &[&str], cwd: &Path, log: &Path, socks: &[&Sock]) -> Proc {
        let out = append_log(log);
        let child = sockets::command(bin(), args, socks)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn resilience");
        Proc {
            name: name.to_owned(),
            child: Some(child),
        }
    }

    /// Guard a child started some other way.
    pub fn from_child(name: &str, child: Child) -> Proc {
        Proc {
            name: name.to_owned(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// SIGKILL now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The exit status once the process has ended by itself (None while it
    /// runs, or after `kill`).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A process's log file, opened for appending (a restarted process
/// continues the same log).
pub fn append_log(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

/// One node of a test pair.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub node_type: &'static str,
    pub mode: &'static str,
    pub peer: String,
    pub hb: u16,
    pub peer_hb: u16,
    pub api: u16,
    pub pbx: Option<u16>,
    pub failback: String,
    pub extra: String,
}

pub const INTERVAL_MS: u64 = 100;
pub const FAILOVER_MS: u64 = 1000;

impl Spec {
    pub fn config(&self, dir: &Path) -> String {
        let pbx = self
            .pbx
            .map(|p| format!("[pbx]\nsip_options = \"127.0.0.1:{p}\"\ninterval = \"200ms\"\n"))
            .unwrap_or_default();
        let d = dir.display();
        format!(
            r#"[node]
name = "{name}"
type = "{ty}"
mode = "{mode}"
state_dir = "{d}/state-{name}"

[peer]
name = "{peer}"
address = "127.0.0.1:{peer_hb}"

[heartbeat]
listen = "127.0.0.1:{hb}"
interval = "{INTERVAL_MS}ms"
failover_after = "{FAILOVER_MS}ms"
key_file = "{d}/cluster.key"

[failback]
{failback}

[drain]
timeout = "5s"
poll = "200ms"
active_calls_command = "cat {d}/{name}.calls 2>/dev/null || echo 0"

{pbx}
[[service]]
name = "pbx"
start = "touch {d}/{name}.up"
stop = "rm -f {d}/{name}.up"
status = "test -f {d}/{name}.up"
timeout = "5s"

[service_policy]
retry_delay = "500ms"
fault_hold = "10s"

[api]
listen = "127.0.0.1:{api}"
token_file = "{d}/api.token"
{extra}
"#,
            name = self.name,
            ty = self.node_type,
            mode = self.mode,
            peer = self.peer,
            peer_hb = self.peer_hb,
            hb = self.hb,
            failback = self.failback,
            api = self.api,
            extra = self.extra,
        )
    }
}

/// At least 32 characters: the node refuses a shorter token.
pub const TOKEN: &str = "e2e-test-token-0123456789abcdef012345";
pub const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// Write a key or token as the node wants it: mode 0600 (the node refuses a
/// secret that group or others may read or write).
pub fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A Main and a Standby, configured but not started.
pub struct Pair {
    pub dir: TestDir,
    pub specs: [Spec; 2],
    pub nodes: [Option<Proc>; 2],
    pub pbx: [Option<Proc>; 2],
    /// Each node's sockets (heartbeat, API, any added by [`Pair::tcp`]),
    /// handed to it at every start.
    pub socks: [Vec<Sock>; 2],
    /// Each stand-in PBX's SIP socket, when made with PBXs.
    pub pbx_socks: [Option<Sock>; 2],
}

pub const MAIN: usize = 0;
pub const STANDBY: usize = 1;

impl Pair {
    pub fn new(test: &str, mode: &'static str, failback: &str, with_pbx: bool) -> Pair {
        let dir = TestDir::new(test);
        write_secret(&dir.path("cluster.key"), &format!("{KEY}\n"));
        write_secret(&dir.path("api.token"), &format!("{TOKEN}\n"));
        // Both heartbeat sockets exist before either node starts: each
        // config names the other's real port.
        let socks = [0, 1].map(|_| vec![Sock::udp(), Sock::tcp()]);
        let pbx_socks = [0, 1].map(|_| with_pbx.then(Sock::udp));
        let mk = |i: usize, name: &str, ty, peer: &str| Spec {
            name: name.into(),
            node_type: ty,
            mode,
            peer: peer.into(),
            hb: socks[i][0].port(),
            peer_hb: socks[1 - i][0].port(),
            api: socks[i][1].port(),
            pbx: pbx_socks[i].as_ref().map(Sock::port),
            failback: failback.into(),
            extra: String::new(),
        };
        let specs = [
            mk(0, "pbx-main", "main", "pbx-standby"),
            mk(1, "pbx-standby", "standby", "pbx-main"),
        ];
        for s in &specs {
            std::fs::write(dir.path(&format!("{}.toml", s.name)), s.config(&dir.0)).unwrap();
        }
        Pair {
            dir,
            specs,
            nodes: [None, None],
            pbx: [None, None],
            socks,
            pbx_socks,
        }
    }

    /// A new TCP socket for node `i` (a replication listener, say), handed
    /// to it at every start: its port, for the configs.
    pub fn tcp(&mut self, i: usize) -> u16 {
        let s = Sock::tcp();
        let port = s.port();
        self.socks[i].push(s);
        port
    }

    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.path(&format!("{}.toml", self.specs[i].name))
    }

    /// Start node `i` without waiting for its API (an https API, say).
    pub fn spawn(&mut self, i: usize) {
        let cfg = self.config_path(i);
        // Appended across restarts, so a failing test shows the whole story.
        let log = self.dir.path(&format!("{}.log", self.specs[i].name));
        let socks: Vec<&Sock> = self.socks[i].iter().collect();
        let p = Proc::spawn_with(
            &self.specs[i].name,
            &["node", "--config", cfg.to_str().unwrap()],
            &self.dir.0,
            &log,
            &socks,
        );
        self.nodes[i] = Some(p);
    }

    /// `program node --config cfg` (an installed copy of the binary, say)
    /// on node `i`'s sockets, its output not yet directed.
    pub fn node_command(&self, i: usize, program: &str, cfg: &Path) -> Command {
        let socks: Vec<&Sock> = self.socks[i].iter().collect();
        sockets::command(
            program,
            &["node", "--config", cfg.to_str().unwrap()],
            &socks,
        )
    }

    /// Add `extra` to node `i`'s config (after its `[api]` table).
    pub fn set_extra(&mut self, i: usize, extra: String) {
        self.specs[i].extra = extra;
        std::fs::write(self.config_path(i), self.specs[i].config(&self.dir.0)).unwrap();
    }

    pub fn start(&mut self, i: usize) {
        self.spawn(i);
        assert!(
            // Published, not only listening: the test holds the API's
            // socket, so a request waits in its queue even before the node
            // runs, and the node answers `{}` until its loop's first step.
            wait_until(Duration::from_secs(10), || get(&self.url(i, "/api/v1/ha"))
                .is_some_and(|v| v.get("node_type").is_some())),
            "{} API never came up\n{}",
            self.specs[i].name,
            self.logs()
        );
    }

    pub fn start_pbx(&mut self, i: usize) {
        let port = self.specs[i].pbx.expect("pair made with PBXs");
        let addr = format!("127.0.0.1:{port}");
        let log = self.dir.path(&format!("{}.pbx.log", self.specs[i].name));
        let sock = self.pbx_socks[i].as_ref().expect("pair made with PBXs");
        self.pbx[i] = Some(Proc::spawn_with(
            "pbx",
            &["stand-in-pbx", "--listen", &addr],
            &self.dir.0,
            &log,
            &[sock],
        ));
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            p.kill();
        }
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.specs[i].api)
    }

    pub fn marker(&self, i: usize) -> bool {
        self.dir
            .path(&format!("{}.up", self.specs[i].name))
            .exists()
    }

    /// Services up and the node says so: the marker is written by the start
    /// script, the node reports Active once it has the script's result.
    pub fn running(&self, i: usize) -> bool {
        self.marker(i) && self.active(i) == Some(true)
    }

    pub fn active(&self, i: usize) -> Option<bool> {
        get(&self.url(i, "/api/v1/ha")).and_then(|v| v["active"].as_bool())
    }

    pub fn status(&self, i: usize) -> Value {
        get(&self.url(i, "/api/v1/status")).unwrap_or(Value::Null)
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for s in &self.specs {
            let p = self.dir.path(&format!("{}.log", s.name));
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                s.name,
                std::fs::read_to_string(&p).unwrap_or_default()
            ));
        }
        out
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into()
}

pub fn get(url: &str) -> Option<Value> {
    let mut r = agent().get(url).call().ok()?;
    if r.status().as_u16() != 200 {
        return None;
    }
    r.body_mut().read_json().ok()
}

/// POST with an optional token: (HTTP status, JSON body).
pub fn post(url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = agent().post(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    match req.send_empty() {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_json().unwrap_or(Value::Null),
        ),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Run the CLI: (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run resilience");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A real PostgreSQL server of the test's own, run as the `postgres` user
/// and stopped (SIGQUIT, by pid) when dropped. It listens on a Unix socket
/// in its data folder only (no TCP port to pick: PostgreSQL cannot be
/// handed a socket); libpq clients reach it with the folder as host.
pub struct Postgres {
    /// The socket's port number (part of its file name only).
    pub port: u16,
    /// The socket folder: the `host` of a replication job.
    pub host: String,
    pub data: PathBuf,
    child: Option<Child>,
}

fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL server not installed (no /usr/lib/postgresql): \
             scripts/test.sh installs the Debian package postgresql",
        )
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("no PostgreSQL server binaries under /usr/lib/postgresql")
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        assert!(out.status.success(), "no postgres user: install postgresql");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

impl Postgres {
    pub fn start(dir: &Path, name: &str) -> Postgres {
        use std::os::unix::process::CommandExt;
        let bin = pg_bin_dir();
        let (uid, gid) = postgres_ids();
        use std::os::unix::fs::PermissionsExt;
        let data = dir.join(format!("pg-{name}"));
        std::fs::create_dir_all(&data).unwrap();
        // The server runs as `postgres`: it must reach its folder whatever
        // the umask the tests were started with.
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres", data.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(chown.success());
        let out = Command::new(bin.join("initdb"))
            .args(["-D", data.to_str().unwrap()])
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .current_dir(&data)
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = 5432;
        let log = std::fs::File::create(dir.join(format!("pg-{name}.log"))).unwrap();
        let child = Command::new(bin.join("postgres"))
            .args(["-D", data.to_str().unwrap(), "-p", &port.to_string()])
            .args(["-k", data.to_str().unwrap()])
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .current_dir(&data)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let pg = Postgres {
            port,
            host: data.to_str().unwrap().to_owned(),
            data,
            child: Some(child),
        };
        assert!(
            wait_until(Duration::from_secs(30), || pg
                .try_sql("postgres", "SELECT 1")
                .is_ok()),
            "postgres {name} never answered"
        );
        pg
    }

    pub fn try_sql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.try_sql(db, sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Immediate shutdown: the server's children go with it.
            let _ = Command::new("kill")
                .args(["-QUIT", &c.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One raw HTTP/1.1 GET to 127.0.0.1:`port` with the given `Host:`; the
/// whole answer (status line first).
pub fn get_with_host(port: u16, host: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).expect("write");
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    answer
}

/// Open descriptors of process `pid`.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Open `n` TCP connections from 127.0.0.2 to `to` and send nothing on
/// them; the ones that connected, kept open until the runtime is dropped.
pub fn idle_connections(
    rt: &tokio::runtime::Runtime,
    to: std::net::SocketAddr,
    n: usize,
) -> Vec<tokio::net::TcpStream> {
    rt.block_on(async move {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                tokio::spawn(async move {
                    let s = tokio::net::TcpSocket::new_v4().ok()?;
                    s.bind(std::net::SocketAddr::from(([127, 0, 0, 2], 0)))
                        .ok()?;
                    tokio::time::timeout(Duration::from_secs(5), s.connect(to))
                        .await
                        .ok()?
                        .ok()
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(Some(s)) = t.await {
                out.push(s);
            }
        }
        out
    })
}

/// Process `pid` holds a TCP socket listening on loopback port `port`
/// (read from /proc: the server's own bind, not a probe of ours).
pub fn listens_tcp(pid: u32, port: u16) -> bool {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let want = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 9 && f[1] == want && f[3] == "0A" && inodes.iter().any(|i| i == f[9])
    })
}
