//! The edge's test bench: two Kamailio registrars playing the Main's and
//! the Standby's PBX (fixtures/sip/kamailio-pbx.cfg), a `resilience edge`
//! in front of them, and sipp playing the phones.

use super::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sip")
        .join(name)
}

/// A Kamailio playing one PBX, stopped by SIGTERM (so its workers go too).
pub struct Kamailio {
    pub child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
    pub rundir: PathBuf,
}

impl Kamailio {
    /// Kamailio cannot be handed a socket: it binds a candidate port itself
    /// and, when that fails (it exits), is started again on another one.
    pub fn start(dir: &TestDir, name: &str) -> Kamailio {
        let rundir = dir.path(name);
        std::fs::create_dir_all(&rundir).unwrap();
        let log = dir.path(&format!("{name}.log"));
        spawn_on_some_port(|port| {
            let mut k = Kamailio {
                child: None,
                port,
                log: log.clone(),
                rundir: rundir.clone(),
            };
            k.spawn(&[]);
            let up = wait_until(secs(10), || {
                !matches!(k.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
                    || sip_answers(port)
            });
            let running = matches!(k.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)));
            (up && running).then_some(k)
        })
    }

    /// Start it with `-A` defines (`DROP_REGISTER`), its log continued.
    pub fn spawn(&mut self, defines: &[&str]) {
        let out = append_log(&self.log);
        let rundir = self.rundir.to_str().unwrap();
        let child = Command::new("kamailio")
            .args(["-f", fixture("kamailio-pbx.cfg").to_str().unwrap()])
            .args(["-DD", "-E", "-n", "1", "-m", "32", "-M", "4"])
            .args(["-l", &format!("udp:127.0.0.1:{}", self.port)])
            .args(["-Y", rundir, "-w", rundir])
            .args(defines.iter().flat_map(|d| ["-A", d]))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect(
                "kamailio (Debian package kamailio) must be installed: scripts/test.sh installs it",
            );
        self.child = Some(child);
    }

    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    pub fn restart_with(&mut self, defines: &[&str]) {
        self.stop();
        self.spawn(defines);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            for _ in 0..50 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a test adds to the lab's edge config.
#[derive(Default)]
pub struct LabOpts {
    /// The web proxy and two web stubs behind it.
    pub web: bool,
    /// Lines appended to `[edge]`.
    pub edge_extra: String,
    /// Lines after the last section of the config.
    pub tail: String,
    /// The `[health]` lines instead of the lab's (probes every 200 ms, down
    /// after 2 lost), when not empty.
    pub health: String,
    /// Lines appended to each `[[pbx]]` (Main, Standby).
    pub pbx_extra: [String; 2],
    /// What the edge must see up before the lab is ready, when not both
    /// (an `ha_url` in `pbx_extra` names a node that is Inactive).
    pub expect_up: Option<[bool; 2]>,
    /// More sockets for the edge (the ones `edge_extra` names).
    pub socks: Vec<Sock>,
}

/// The lab edge's API token (its `token_file`).
pub const EDGE_TOKEN: &str = "edge-lab-token-0123456789abcdef0123456789";

pub struct Lab {
    pub dir: TestDir,
    pub pbx: [Kamailio; 2],
    pub edge: Proc,
    /// The edge's sockets (SIP UDP and TCP, API, web proxy, any of
    /// `LabOpts::socks`), handed to it at every start.
    pub edge_socks: Vec<Sock>,
    pub sip: u16,
    pub api: u16,
    /// The web proxy's port and the two nodes' web stubs, when asked for.
    pub http: Option<(u16, [Proc; 2])>,
}

impl Lab {
    pub fn start(name: &str) -> Lab {
        Lab::start_with(name, false)
    }

    pub fn start_with(name: &str, web: bool) -> Lab {
        Lab::start_opts(
            name,
            LabOpts {
                web,
                ..LabOpts::default()
            },
        )
    }

    /// A lab with extra lines in the edge's config: `edge_extra` at the end
    /// of `[edge]`, `tail` after the last section (new sections).
    pub fn start_opts(name: &str, opts: LabOpts) -> Lab {
        let web = opts.web;
        let expect_up = opts.expect_up.unwrap_or([true, true]);
        let dir = TestDir::new(name);
        let pbx = [
            Kamailio::start(&dir, "pbx-main"),
            Kamailio::start(&dir, "pbx-standby"),
        ];
        let [sip_udp, sip_tcp] = Sock::udp_tcp();
        let api_sock = Sock::tcp();
        let (sip, api) = (sip_udp.port(), api_sock.port());
        let mut edge_socks = vec![sip_udp, sip_tcp, api_sock];
        edge_socks.extend(opts.socks);
        let mut webs = [0, 0];
        let http = web.then(|| {
            let http = Sock::tcp();
            let http_port = http.port();
            edge_socks.push(http);
            let mut stub = |i: usize, name: &str| {
                let (p, port) = web_stub(&dir.0, name);
                webs[i] = port;
                p
            };
            (http_port, [stub(0, "main"), stub(1, "standby")])
        });
        let http_port = http.as_ref().map_or(0, |h| h.0);
        let (http_line, web_lines) = if web {
            (
                format!("http_listen = \"127.0.0.1:{http_port}\"\n"),
                [0, 1].map(|i| {
                    format!(
                        "web = \"127.0.0.1:{0}\"\nha_url = \"http://127.0.0.1:{0}/api/v1/ha\"\n",
                        webs[i]
                    )
                }),
            )
        } else {
            (String::new(), [String::new(), String::new()])
        };
        let cfg = dir.path("edge.toml");
        write_secret(&dir.path("edge.token"), EDGE_TOKEN);
        std::fs::write(
            &cfg,
            format!(
                r#"[edge]
sip_listen = "127.0.0.1:{sip}"
api_listen = "127.0.0.1:{api}"
token_file = "edge.token"
{http_line}{edge_extra}
[[pbx]]
name = "main"
sip = "127.0.0.1:{}"
{}{}
[[pbx]]
name = "standby"
sip = "127.0.0.1:{}"
{}{}
[health]
{health}

[phones]
failover_after = "1s"
failback_stable = "2s"
homeless_window = "5s"
register_timeout = "1s"
{tail}
"#,
                pbx[0].port,
                web_lines[0],
                opts.pbx_extra[0],
                pbx[1].port,
                web_lines[1],
                opts.pbx_extra[1],
                edge_extra = opts.edge_extra,
                health = if opts.health.is_empty() {
                    "interval = \"200ms\"\ntimeout = \"200ms\"\ndown_after = 2\nup_after = 1"
                } else {
                    opts.health.as_str()
                },
                tail = opts.tail,
            ),
        )
        .unwrap();
        let socks: Vec<&Sock> = edge_socks.iter().collect();
        let edge = Proc::spawn_with(
            "edge",
            &["edge", "--config", cfg.to_str().unwrap()],
            &dir.0,
            &dir.path("edge.log"),
            &socks,
        );
        let lab = Lab {
            dir,
            pbx,
            edge,
            edge_socks,
            sip,
            api,
            http,
        };
        assert!(
            wait_until(secs(10), || lab.pbx_up() == expect_up),
            "the edge never saw the PBXs up as {expect_up:?}\n{}",
            lab.logs()
        );
        lab
    }

    /// The command that starts the lab's edge (again) on its sockets, its
    /// output not yet directed.
    pub fn edge_command(&self) -> Command {
        let cfg = self.dir.path("edge.toml");
        let socks: Vec<&Sock> = self.edge_socks.iter().collect();
        let mut c = sockets::command(bin(), &["edge", "--config", cfg.to_str().unwrap()], &socks);
        c.current_dir(&self.dir.0).stdin(Stdio::null());
        c
    }

    /// Start the lab's edge again (after `edge.kill()`), its log continued.
    pub fn respawn_edge(&mut self) {
        let cfg = self.dir.path("edge.toml");
        let socks: Vec<&Sock> = self.edge_socks.iter().collect();
        self.edge = Proc::spawn_with(
            "edge",
            &["edge", "--config", cfg.to_str().unwrap()],
            &self.dir.0,
            &self.dir.path("edge.log"),
            &socks,
        );
    }

    pub fn get(&self, path: &str) -> Value {
        get(&format!("http://127.0.0.1:{}{path}", self.api)).unwrap_or(Value::Null)
    }

    pub fn pbx_up(&self) -> Vec<bool> {
        self.get("/api/v1/status")["pbxs"]
            .as_array()
            .map(|a| a.iter().map(|p| p["up"] == true).collect())
            .unwrap_or_default()
    }

    /// GET with the edge's token: (HTTP status, JSON body).
    pub fn get_auth(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = agent().get(&format!("http://127.0.0.1:{}{path}", self.api));
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        match req.call() {
            Ok(mut r) => (
                r.status().as_u16(),
                r.body_mut().read_json().unwrap_or(Value::Null),
            ),
            Err(ureq::Error::StatusCode(c)) => (c, Value::Null),
            Err(_) => (0, Value::Null),
        }
    }

    /// The phone's row in the phones list (a page starting at its AOR).
    pub fn phone(&self, aor: &str) -> Value {
        // The page after a key just below the AOR starts at the AOR.
        let (_, v) = self.get_auth(
            &format!("/api/v1/phones?limit=1&after={}", enc(&before(aor))),
            Some(EDGE_TOKEN),
        );
        v["phones"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["aor"] == aor).cloned())
            .unwrap_or(Value::Null)
    }

    pub fn logs(&self) -> String {
        let edge = std::fs::read_to_string(self.dir.path("edge.log")).unwrap_or_default();
        format!(
            "--- edge ---\n{edge}\n--- pbx-main ---\n{}\n--- pbx-standby ---\n{}",
            tail(&self.pbx[0].log()),
            tail(&self.pbx[1].log())
        )
    }

    /// sipp running `scenario` once as phone `user`, against the edge.
    pub fn sipp_command(&self, scenario: &str, user: &str, extra: &[&str]) -> Command {
        let mut c = Command::new("sipp");
        c.args(["-sf", fixture(scenario).to_str().unwrap()])
            // No -p: sipp binds its own port (no port picked for it).
            .args(["-i", "127.0.0.1"])
            .args(["-m", "1", "-s", user, "-timeout", "60s", "-timeout_error"])
            .args(["-nostdin", "-trace_err"])
            .args(extra)
            .arg(format!("127.0.0.1:{}", self.sip))
            .current_dir(&self.dir.0);
        c
    }

    /// Run sipp to the end; (exit code, what it printed).
    pub fn sipp(&self, scenario: &str, user: &str, extra: &[&str]) -> (i32, String) {
        sipp_output(self.sipp_command(scenario, user, extra))
    }

    pub fn register(&self, user: &str) -> (i32, String) {
        self.sipp("phone_register.xml", user, &["-trace_msg"])
    }

    /// Start a callee that registers and answers one call, in the
    /// background; the caller must use the same Call-ID string.
    pub fn callee(&self, user: &str, cid: &str) -> Proc {
        self.callee_with(user, cid, &[])
    }

    pub fn callee_with(&self, user: &str, cid: &str, extra: &[&str]) -> Proc {
        let mut args = vec!["-cid_str", cid];
        args.extend_from_slice(extra);
        let child = self
            .sipp_command("phone_answer.xml", user, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "sipp (Debian package sip-tester) must be installed: scripts/test.sh installs it",
            );
        Proc::from_child("callee", child)
    }

    /// The phone's REGISTER has been answered through the edge.
    pub fn registered(&self, aor: &str) -> bool {
        self.phone(aor)["last_register_s_ago"].is_number()
    }
}

/// A string that sorts right before `s` and after anything below it (for
/// the phones list's `after`): `s` minus its last character, then a
/// character below it, then the highest one.
fn before(s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    match chars.pop() {
        Some(c) => {
            let below = char::from_u32(c as u32 - 1).unwrap_or(c);
            chars.push(below);
            chars.push(char::MAX);
            chars.into_iter().collect()
        }
        None => String::new(),
    }
}

/// Percent-encode a query value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Start a server that cannot be handed a socket (Kamailio, stunnel) on a
/// port it binds itself: `start(port)` gives the server, or None when it
/// could not serve there (it exited: the port was taken), and the next
/// candidate is tried. Candidates lie below the kernel's ephemeral range
/// (32768-60999), where no `bind(0)` or outgoing connection lands.
pub fn spawn_on_some_port<T>(mut start: impl FnMut(u16) -> Option<T>) -> T {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let mut seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for _ in 0..10 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let port = (LOW + (seed >> 8) % SPAN) as u16;
        if let Some(t) = start(port) {
            return t;
        }
    }
    panic!("the server failed to start on 10 candidate ports");
}

/// A SIP server answers an OPTIONS on UDP 127.0.0.1:`port`.
pub fn sip_answers(port: u16) -> bool {
    let Ok(s) = std::net::UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let me = s.local_addr().unwrap().port();
    let msg = format!(
        "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK-ready{me}\r\nFrom: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1:{port}>\r\nCall-ID: ready-{me}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 2048];
    s.send_to(msg.as_bytes(), ("127.0.0.1", port)).is_ok()
        && s.recv(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"SIP/2.0 "))
}

/// The web stub (fixtures/web_stub.py) playing node `name`'s web server,
/// on a socket bound here and handed to it (dropped here: once the stub is
/// killed its port refuses connections, as a dead server's does): (the
/// stub, its port).
pub fn web_stub(dir: &Path, name: &str) -> (Proc, u16) {
    let sock = Sock::tcp();
    let port = sock.port();
    (web_stub_on(dir, name, sock), port)
}

/// [`web_stub`] on a given socket (a restarted stub's old port).
pub fn web_stub_on(dir: &Path, name: &str, sock: Sock) -> Proc {
    let python = "python3";
    let stub = fixture("../web_stub.py");
    let child = sockets::command(python, &[stub.to_str().unwrap(), name, "fd"], &[&sock])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 (Debian package python3) must be installed");
    Proc::from_child(name, child)
}

pub fn sipp_output(mut c: Command) -> (i32, String) {
    let out = c
        .output()
        .expect("sipp (Debian package sip-tester) must be installed: scripts/test.sh installs it");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

pub fn tail(s: &str) -> &str {
    let lines: Vec<usize> = s.match_indices('\n').map(|(i, _)| i).collect();
    match lines.len() {
        n if n > 30 => &s[lines[n - 30] + 1..],
        _ => s,
    }
}

pub fn registers_at(k: &Kamailio, user: &str) -> usize {
    k.log()
        .matches(&format!("REGISTER sip:{user}@pbx.test"))
        .count()
}

/// GET on the edge: (status, body), or (0, the error).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    match agent()
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
    {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(ureq::Error::StatusCode(c)) => (c, String::new()),
        Err(e) => (0, e.to_string()),
    }
}

/// The body of a GET, or "" when there is none.
pub fn get_text(url: &str) -> String {
    agent()
        .get(url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}
