//! End-to-end: `resilience edge` between real SIP peers — sipp as the
//! phones, two Kamailio registrars as the Main's and the Standby's PBX
//! (fixtures/sip/kamailio-pbx.cfg). Timers are short: probes every 200 ms,
//! failover after 1 s, failback after 2 s stable.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sip")
        .join(name)
}

/// A Kamailio playing one PBX, stopped by SIGTERM (so its workers go too).
struct Kamailio {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    rundir: PathBuf,
}

impl Kamailio {
    fn start(dir: &TestDir, name: &str, port: u16) -> Kamailio {
        let rundir = dir.path(name);
        std::fs::create_dir_all(&rundir).unwrap();
        let mut k = Kamailio {
            child: None,
            port,
            log: dir.path(&format!("{name}.log")),
            rundir,
        };
        k.spawn(&[]);
        k
    }

    /// Start it with `-A` defines (`DROP_REGISTER`), its log continued.
    fn spawn(&mut self, defines: &[&str]) {
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

    fn restart(&mut self) {
        self.restart_with(&[]);
    }

    fn restart_with(&mut self, defines: &[&str]) {
        self.stop();
        self.spawn(defines);
    }

    fn stop(&mut self) {
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Lab {
    dir: TestDir,
    pbx: [Kamailio; 2],
    edge: Proc,
    sip: u16,
    api: u16,
    /// The web proxy's port and the two nodes' web stubs, when asked for.
    http: Option<(u16, [Proc; 2])>,
}

impl Lab {
    fn start(name: &str) -> Lab {
        Lab::start_with(name, false)
    }

    fn start_with(name: &str, web: bool) -> Lab {
        let dir = TestDir::new(name);
        let pbx = [
            Kamailio::start(&dir, "pbx-main", free_udp()),
            Kamailio::start(&dir, "pbx-standby", free_udp()),
        ];
        let (sip, api) = (free_udp(), free_tcp());
        let (http_port, webs) = (free_tcp(), [free_tcp(), free_tcp()]);
        let http = web.then(|| {
            let stub = |name: &str, port: u16| {
                let child = Command::new("python3")
                    .arg(fixture("../web_stub.py"))
                    .args([name, &port.to_string()])
                    .current_dir(&dir.0)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                Proc::from_child(name, child)
            };
            (http_port, [stub("main", webs[0]), stub("standby", webs[1])])
        });
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
        std::fs::write(
            &cfg,
            format!(
                r#"[edge]
sip_listen = "127.0.0.1:{sip}"
api_listen = "127.0.0.1:{api}"
{http_line}
[[pbx]]
name = "main"
sip = "127.0.0.1:{}"
{}
[[pbx]]
name = "standby"
sip = "127.0.0.1:{}"
{}
[health]
interval = "200ms"
timeout = "200ms"
down_after = 2
up_after = 1

[phones]
failover_after = "1s"
failback_stable = "2s"
homeless_window = "5s"
register_timeout = "1s"
"#,
                pbx[0].port, web_lines[0], pbx[1].port, web_lines[1]
            ),
        )
        .unwrap();
        let edge = Proc::spawn(
            "edge",
            &["edge", "--config", cfg.to_str().unwrap()],
            &dir.0,
            &dir.path("edge.log"),
        );
        let lab = Lab {
            dir,
            pbx,
            edge,
            sip,
            api,
            http,
        };
        assert!(
            wait_until(secs(10), || lab.pbx_up() == [true, true]),
            "the edge never saw both PBXs up\n{}",
            lab.logs()
        );
        lab
    }

    fn get(&self, path: &str) -> Value {
        get(&format!("http://127.0.0.1:{}{path}", self.api)).unwrap_or(Value::Null)
    }

    fn pbx_up(&self) -> Vec<bool> {
        self.get("/api/v1/status")["pbxs"]
            .as_array()
            .map(|a| a.iter().map(|p| p["up"] == true).collect())
            .unwrap_or_default()
    }

    fn phone(&self, aor: &str) -> Value {
        self.get("/api/v1/phones")["phones"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["aor"] == aor).cloned())
            .unwrap_or(Value::Null)
    }

    fn logs(&self) -> String {
        let edge = std::fs::read_to_string(self.dir.path("edge.log")).unwrap_or_default();
        format!(
            "--- edge ---\n{edge}\n--- pbx-main ---\n{}\n--- pbx-standby ---\n{}",
            tail(&self.pbx[0].log()),
            tail(&self.pbx[1].log())
        )
    }

    /// sipp running `scenario` once as phone `user`, against the edge.
    fn sipp_command(&self, scenario: &str, user: &str, extra: &[&str]) -> Command {
        let mut c = Command::new("sipp");
        c.args(["-sf", fixture(scenario).to_str().unwrap()])
            .args(["-i", "127.0.0.1", "-p", &free_udp().to_string()])
            .args(["-m", "1", "-s", user, "-timeout", "60s", "-timeout_error"])
            .args(["-nostdin", "-trace_err"])
            .args(extra)
            .arg(format!("127.0.0.1:{}", self.sip))
            .current_dir(&self.dir.0);
        c
    }

    /// Run sipp to the end; (exit code, what it printed).
    fn sipp(&self, scenario: &str, user: &str, extra: &[&str]) -> (i32, String) {
        sipp_output(self.sipp_command(scenario, user, extra))
    }

    fn register(&self, user: &str) -> (i32, String) {
        self.sipp("phone_register.xml", user, &["-trace_msg"])
    }

    /// Start a callee that registers and answers one call, in the
    /// background; the caller must use the same Call-ID string.
    fn callee(&self, user: &str, cid: &str) -> Proc {
        self.callee_with(user, cid, &[])
    }

    fn callee_with(&self, user: &str, cid: &str, extra: &[&str]) -> Proc {
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
    fn registered(&self, aor: &str) -> bool {
        self.phone(aor)["last_register_s_ago"].is_number()
    }
}

fn sipp_output(mut c: Command) -> (i32, String) {
    let out = c
        .output()
        .expect("sipp (Debian package sip-tester) must be installed: scripts/test.sh installs it");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn tail(s: &str) -> &str {
    let lines: Vec<usize> = s.match_indices('\n').map(|(i, _)| i).collect();
    match lines.len() {
        n if n > 30 => &s[lines[n - 30] + 1..],
        _ => s,
    }
}

fn registers_at(k: &Kamailio, user: &str) -> usize {
    k.log()
        .matches(&format!("REGISTER sip:{user}@pbx.test"))
        .count()
}

#[test]
fn phones_register_and_call_each_other_through_the_edge() {
    let _g = serial();
    let lab = Lab::start("edge-call");
    let mut callee = lab.callee("2001", "call-a");
    assert!(
        wait_until(secs(10), || lab.registered("sip:2001@pbx.test")),
        "callee never registered\n{}",
        lab.logs()
    );
    let (code, out) = lab.sipp(
        "phone_call.xml",
        "1001",
        &["-key", "callee", "2001", "-cid_str", "call-a", "-d", "300"],
    );
    assert_eq!(code, 0, "caller failed: {out}\n{}", lab.logs());
    assert!(
        wait_until(secs(10), || !callee.alive()),
        "callee did not finish"
    );
    // Both registered at home (the Main), the call went through it.
    for aor in ["sip:1001@pbx.test", "sip:2001@pbx.test"] {
        let p = lab.phone(aor);
        assert_eq!(p["serving"], "main", "{p}");
        assert_eq!(p["guest"], false);
        assert_eq!(p["calls"], 0, "the BYE ended the call: {p}");
    }
    assert!(
        lab.pbx[0].log().contains("INVITE sip:2001@127.0.0.1"),
        "{}",
        lab.logs()
    );
    let metrics = get_text(&format!("http://127.0.0.1:{}/metrics", lab.api));
    assert!(
        metrics.contains("resilience_edge_messages_total"),
        "{metrics}"
    );
    assert!(metrics.contains("resilience_edge_phones 2"), "{metrics}");
}

#[test]
fn phones_over_tcp_register_and_call_through_the_edge() {
    let _g = serial();
    let lab = Lab::start("edge-tcp");
    let mut callee = lab.callee_with("2001", "call-t", &["-t", "t1"]);
    assert!(
        wait_until(secs(10), || lab.registered("sip:2001@pbx.test")),
        "callee never registered over TCP\n{}",
        lab.logs()
    );
    assert!(
        lab.phone("sip:2001@pbx.test")["contact"]
            .as_str()
            .unwrap_or("")
            .starts_with("tcp:"),
        "{}",
        lab.phone("sip:2001@pbx.test")
    );
    let (code, out) = lab.sipp(
        "phone_call.xml",
        "1001",
        &[
            "-t", "t1", "-key", "callee", "2001", "-cid_str", "call-t", "-d", "300",
        ],
    );
    assert_eq!(code, 0, "caller failed: {out}\n{}", lab.logs());
    assert!(
        wait_until(secs(10), || !callee.alive()),
        "callee did not finish"
    );
    // The PBX side stayed UDP; the phones' side was TCP both ways.
    assert!(
        lab.pbx[0].log().contains("INVITE sip:2001@127.0.0.1"),
        "{}",
        lab.logs()
    );
}

fn get_text(url: &str) -> String {
    agent()
        .get(url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}

#[test]
fn a_dead_pbx_moves_phones_after_the_delay_and_they_come_back_when_it_is_stable() {
    let _g = serial();
    let mut lab = Lab::start("edge-failover");
    let (code, out) = lab.register("1001");
    assert_eq!(code, 0, "{out}");
    assert_eq!(registers_at(&lab.pbx[0], "1001"), 1);
    lab.pbx[0].stop();
    assert!(
        wait_until(secs(5), || lab.pbx_up() == [false, true]),
        "{}",
        lab.logs()
    );
    let edge_log = std::fs::read_to_string(lab.dir.path("edge.log")).unwrap();
    assert!(
        edge_log.contains("Destination down: sip:127.0.0.1:"),
        "{edge_log}"
    );
    // After failover_after the phone is the Standby's guest, and its next
    // REGISTER lands there.
    assert!(
        wait_until(secs(5), || lab.phone("sip:1001@pbx.test")["serving"]
            == "standby"),
        "{}",
        lab.logs()
    );
    assert_eq!(lab.phone("sip:1001@pbx.test")["guest"], true);
    let (code, out) = lab.register("1001");
    assert_eq!(code, 0, "{out}\n{}", lab.logs());
    assert_eq!(registers_at(&lab.pbx[1], "1001"), 1, "{}", lab.logs());
    // The guest was told to come back within away_expires (120 s), not the
    // 3600 s the Standby granted.
    let traces: String = std::fs::read_dir(&lab.dir.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("_messages.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(traces.contains(";expires=120"), "{traces}");
    assert!(
        traces.contains(";expires=3600"),
        "at home the grant is untouched: {traces}"
    );
    // New calls go to the Standby too.
    let mut callee = lab.callee("2001", "call-f");
    assert!(
        wait_until(secs(10), || lab.registered("sip:2001@pbx.test")),
        "{}",
        lab.logs()
    );
    let (code, out) = lab.sipp(
        "phone_call.xml",
        "1001",
        &["-key", "callee", "2001", "-cid_str", "call-f", "-d", "100"],
    );
    assert_eq!(
        code,
        0,
        "a call after the failover failed: {out}\n{}",
        lab.logs()
    );
    assert!(wait_until(secs(10), || !callee.alive()));
    assert!(
        lab.pbx[1].log().contains("INVITE sip:2001@127.0.0.1"),
        "{}",
        lab.logs()
    );
    assert!(!lab.pbx[0].log().contains("INVITE sip:2001"));
    // The Main comes back: not before it has been up for the stable time.
    lab.pbx[0].restart();
    assert!(wait_until(secs(5), || lab.pbx_up() == [true, true]));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(lab.phone("sip:1001@pbx.test")["serving"], "standby");
    assert!(
        wait_until(secs(5), || lab.phone("sip:1001@pbx.test")["serving"]
            == "main"),
        "{}",
        lab.logs()
    );
    let (code, out) = lab.register("1001");
    assert_eq!(code, 0, "{out}");
    assert_eq!(registers_at(&lab.pbx[0], "1001"), 2, "{}", lab.logs());
    // The edge's API answers its own names only (no DNS rebinding).
    let foreign = get_with_host(lab.api, "evil.example", "/api/v1/phones");
    assert!(foreign.starts_with("HTTP/1.1 421"), "{foreign}");
    let moves = lab.get("/api/v1/status")["moves"].clone();
    let reasons: Vec<&str> = moves
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["reason"].as_str())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("home down")), "{moves}");
    assert!(reasons.iter().any(|r| r.contains("idle")), "{moves}");
}

#[test]
fn a_phone_in_a_call_fails_back_only_after_hanging_up() {
    let _g = serial();
    let mut lab = Lab::start("edge-busy");
    lab.pbx[0].stop();
    assert!(wait_until(secs(5), || lab.pbx_up() == [false, true]));
    // Both phones start on the Standby, the only PBX up.
    let mut callee = lab.callee("2001", "call-b");
    assert!(
        wait_until(secs(10), || lab.phone("sip:2001@pbx.test")["serving"]
            == "standby"
            && lab.registered("sip:2001@pbx.test")),
        "{}",
        lab.logs()
    );
    let call = lab.sipp_command(
        "phone_call.xml",
        "1001",
        &["-key", "callee", "2001", "-cid_str", "call-b", "-d", "6000"],
    );
    let caller = std::thread::spawn(move || sipp_output(call));
    assert!(
        wait_until(secs(5), || lab.phone("sip:1001@pbx.test")["calls"] == 1),
        "{}",
        lab.logs()
    );
    // Home returns and is stable while the call goes on: the phones stay.
    lab.pbx[0].restart();
    assert!(wait_until(secs(5), || lab.pbx_up() == [true, true]));
    std::thread::sleep(Duration::from_millis(2500));
    let p = lab.phone("sip:1001@pbx.test");
    assert_eq!(p["serving"], "standby", "a busy phone stays: {p}");
    assert_eq!(p["home"], "main");
    // Hang up: the call ends where it was, then the phones go home.
    let (code, out) = caller.join().unwrap();
    assert_eq!(code, 0, "the call broke: {out}\n{}", lab.logs());
    assert!(wait_until(secs(10), || !callee.alive()));
    assert!(
        wait_until(secs(3), || lab.phone("sip:1001@pbx.test")["serving"]
            == "main"),
        "{}",
        lab.logs()
    );
    assert!(
        !lab.pbx[0].log().contains("INVITE sip:2001"),
        "the call must not have touched the Main"
    );
}

#[test]
fn malformed_and_oversized_input_is_dropped_and_counted() {
    let _g = serial();
    let mut lab = Lab::start("edge-garbage");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = format!("127.0.0.1:{}", lab.sip);
    let big = format!(
        "INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\nX-Pad: {}\r\n",
        "a".repeat(60_000)
    );
    let garbage: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\x03".to_vec(),
        b"HELLO\r\n\r\n".to_vec(),
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKq\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nFrom: <sip:a>;tag=1\r\nTo: <sip:b>\r\n\r\n".to_vec(),
        big.into_bytes(),
    ];
    for g in &garbage {
        sock.send_to(g, &to).unwrap();
    }
    assert!(
        wait_until(secs(5), || {
            let d = &lab.get("/api/v1/status")["dropped"];
            d["malformed"].as_u64().unwrap_or(0) >= 3 && d["not_ours"].as_u64().unwrap_or(0) >= 1
        }),
        "{}",
        lab.get("/api/v1/status")
    );
    // Over TCP: a head that never ends within the size limit closes the
    // connection and is counted.
    let mut tcp = std::net::TcpStream::connect(&to).unwrap();
    use std::io::{Read, Write};
    let _ = tcp.write_all(&vec![b'a'; 70_000]);
    tcp.set_read_timeout(Some(secs(5))).unwrap();
    let mut rest = Vec::new();
    // Closed: an end of stream, or a reset if our bytes were still unread.
    let closed = match tcp.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the edge kept an unframeable stream open");
    assert!(
        wait_until(secs(5), || lab.get("/api/v1/status")["dropped"]
            ["malformed"]
            .as_u64()
            .unwrap_or(0)
            >= 4),
        "{}",
        lab.get("/api/v1/status")
    );
    // And it keeps serving.
    assert!(
        lab.edge.alive(),
        "the edge died on bad input\n{}",
        lab.logs()
    );
    let (code, out) = lab.register("3001");
    assert_eq!(code, 0, "{out}\n{}", lab.logs());
    let metrics = get_text(&format!("http://127.0.0.1:{}/metrics", lab.api));
    assert!(
        metrics.contains("resilience_edge_dropped_total{reason=\"malformed\"} 4"),
        "{metrics}"
    );
}

fn http_get(port: u16, path: &str) -> (u16, String) {
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

#[test]
fn web_applications_reach_the_live_node_at_the_same_address() {
    use std::io::{Read, Write};
    let _g = serial();
    let mut lab = Lab::start_with("edge-web", true);
    let port = lab.http.as_ref().unwrap().0;
    assert!(
        wait_until(secs(5), || http_get(port, "/cc/agents")
            == (200, "main".into())),
        "{:?}\n{}",
        http_get(port, "/"),
        lab.logs()
    );
    // A WebSocket through the edge, to the Main's web server.
    let mut ws = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    ws.set_read_timeout(Some(secs(5))).unwrap();
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: pbx\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            ws.read(&mut byte).unwrap(),
            1,
            "closed during the handshake"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws.write_all(b"hello").unwrap();
    let mut got = [0u8; 10];
    ws.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"main:hello");
    // The Main's node says it is no longer Active (its PBX still answers
    // OPTIONS): the edge follows the node, not just the SIP probe.
    std::fs::write(lab.dir.path("main.inactive"), "").unwrap();
    assert!(
        wait_until(secs(5), || lab.pbx_up() == [false, true]),
        "{}",
        lab.logs()
    );
    assert_eq!(http_get(port, "/cc/agents"), (200, "standby".into()));
    std::fs::remove_file(lab.dir.path("main.inactive")).unwrap();
    assert!(wait_until(secs(5), || http_get(port, "/cc/agents")
        == (200, "main".into())));
    // The Main's PBX goes down: the next request, same address, reaches
    // the Standby.
    lab.pbx[0].stop();
    assert!(
        wait_until(secs(5), || http_get(port, "/cc/agents")
            == (200, "standby".into())),
        "{}",
        lab.logs()
    );
    // The open WebSocket stays where it was opened.
    ws.write_all(b"again").unwrap();
    ws.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"main:again");
    // No node up: a clear 503, not a hang.
    lab.pbx[1].stop();
    assert!(
        wait_until(secs(5), || http_get(port, "/").0 == 503),
        "{:?}",
        http_get(port, "/")
    );
}

#[test]
fn a_register_home_leaves_unanswered_in_the_homeless_window_goes_to_the_backup() {
    let _g = serial();
    let mut lab = Lab::start("edge-homeless");
    lab.pbx[0].stop();
    assert!(wait_until(secs(5), || lab.pbx_up() == [false, true]));
    let (code, out) = lab.register("1001");
    assert_eq!(code, 0, "{out}");
    assert_eq!(lab.phone("sip:1001@pbx.test")["serving"], "standby");
    // Home comes back answering probes but not phones; once stable the
    // idle phone is sent home...
    lab.pbx[0].restart_with(&["DROP_REGISTER"]);
    assert!(
        wait_until(secs(8), || lab.phone("sip:1001@pbx.test")["serving"]
            == "main"),
        "{}",
        lab.logs()
    );
    // ... its REGISTER there goes unanswered, and a retransmission after
    // register_timeout lands on the Standby: the phone is never homeless.
    let (code, out) = lab.register("1001");
    assert_eq!(
        code,
        0,
        "the phone was left without a registrar: {out}\n{}",
        lab.logs()
    );
    assert!(lab.pbx[0]
        .log()
        .contains("dropping REGISTER sip:1001@pbx.test"));
    assert_eq!(registers_at(&lab.pbx[1], "1001"), 2, "{}", lab.logs());
    let p = lab.phone("sip:1001@pbx.test");
    assert_eq!(p["serving"], "standby", "{p}");
    let moves = lab.get("/api/v1/status")["moves"].to_string();
    assert!(moves.contains("did not answer its REGISTER"), "{moves}");
}
