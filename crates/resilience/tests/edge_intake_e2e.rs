//! End-to-end: what the edge takes in from strangers — per-source rate
//! limits, bounded SIP TCP (caps, deadlines) under a descriptor limit,
//! probes that do not call a PBX down for the edge's own trouble, and SIP
//! over TLS (stunnel in front of sipp, as Debian's sipp has no TLS) with
//! a certificate renewed on disk while the edge runs.

mod common;

use common::edge::*;
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn status(lab: &Lab) -> Value {
    lab.get("/api/v1/status")
}

fn dropped(lab: &Lab, reason: &str) -> u64 {
    status(lab)["dropped"][reason].as_u64().unwrap_or(0)
}

fn edge_log(lab: &Lab) -> String {
    std::fs::read_to_string(lab.dir.path("edge.log")).unwrap_or_default()
}

/// Run the lab's edge again from its config, at most `nofile` descriptors
/// (as systemd's default `LimitNOFILE=1024` would give it).
fn respawn_edge(lab: &mut Lab, nofile: u64) {
    lab.edge.kill();
    let log = lab.dir.path("edge.log");
    let out = append_log(&log);
    let mut cmd = lab.edge_command();
    cmd.stdout(out.try_clone().unwrap()).stderr(out);
    // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    lab.edge = Proc::from_child("edge", cmd.spawn().expect("spawn the edge"));
    assert!(
        wait_until(secs(10), || lab.pbx_up() == [true, true]),
        "the edge never saw both PBXs up after its restart\n{}",
        lab.logs()
    );
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let local = SocketAddr::from((from, 0));
    s.bind(&local.into())?;
    s.connect_timeout(&to.into(), secs(1))?;
    Ok(s)
}

/// CPU time the process has used (user and system), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = s.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// The process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Watches, in the background, that both PBXs stay up on the edge's status.
struct UpWatch {
    stop: Arc<AtomicBool>,
    seen_down: Arc<std::sync::Mutex<Option<Value>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl UpWatch {
    fn start(api: u16) -> UpWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen_down = Arc::new(std::sync::Mutex::new(None));
        let (s, d) = (stop.clone(), seen_down.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(v) = get(&format!("http://127.0.0.1:{api}/api/v1/status")) {
                    let pbxs = v["pbxs"].as_array().cloned().unwrap_or_default();
                    if pbxs.iter().any(|p| p["up"] != true) {
                        d.lock().unwrap().get_or_insert(v);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        UpWatch {
            stop,
            seen_down,
            handle: Some(handle),
        }
    }

    /// Stop; the first status that showed a PBX down, if any.
    fn finish(mut self) -> Option<Value> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.seen_down.lock().unwrap().take()
    }
}

#[test]
fn two_thousand_idle_connections_at_1024_descriptors_leave_phones_and_probes_alone() {
    let _g = serial();
    let mut lab = Lab::start_opts(
        "intake-fds",
        LabOpts {
            // ha_url set: each probe round opens a connection to the node.
            web: true,
            tail: "[limits]\nmessage_timeout = \"4s\"\nidle_timeout = \"3s\"\n".into(),
            ..LabOpts::default()
        },
    );
    respawn_edge(&mut lab, 1024);
    let log_from = edge_log(&lab).len();
    let pid = lab.edge.pid();
    let to: SocketAddr = format!("127.0.0.1:{}", lab.sip).parse().unwrap();
    let rss_before = rss_kib(pid);
    let watch = UpWatch::start(lab.api);

    // 2,000 silent connections from 20 addresses (100 each): more than the
    // 1,024 descriptors the edge has.
    let mut idle = Vec::new();
    let mut failed = 0;
    for i in 0..2000u32 {
        match connect_from([127, 0, 1, 1 + (i / 100) as u8], to) {
            Ok(s) => idle.push(s),
            Err(_) => failed += 1,
        }
        if failed == 20 {
            break;
        }
    }
    let opened = Instant::now();
    assert!(
        failed < 20,
        "the edge stopped taking connections after {}
{}",
        idle.len(),
        lab.logs()
    );
    let st = status(&lab)["connections"].clone();
    let cap = st["cap"].as_u64().unwrap();
    assert!(
        cap <= 1024 - 256,
        "the cap must leave descriptors for the edge's own work: {st}"
    );
    let rss_full = rss_kib(pid);

    // Legitimate phones, over UDP and over TCP, are still relayed.
    let (code, out) = lab.register("4001");
    assert_eq!(
        code,
        0,
        "UDP REGISTER during the flood: {out}\n{}",
        lab.logs()
    );
    let (code, out) = lab.sipp("phone_register.xml", "4002", &["-t", "t1"]);
    assert_eq!(
        code,
        0,
        "TCP REGISTER during the flood: {out}\n{}",
        lab.logs()
    );
    assert!(lab.registered("sip:4001@pbx.test") && lab.registered("sip:4002@pbx.test"));
    // At the cap, silent connections give way to new ones (or, on a busy
    // machine, reach their deadline first): every connection beyond the cap
    // was taken from the listen queue and another one closed for it.
    let mut st = Value::Null;
    let given_way = wait_until(secs(10), || {
        st = status(&lab)["connections"].clone();
        let by = &st["refused_or_closed"]["by_reason"];
        let n = |k: &str| by[k].as_u64().unwrap_or(0);
        n("replaced a silent connection") > 0
            && n("replaced a silent connection") + n("idle timeout") + n("message timeout")
                >= idle.len() as u64 - cap
    });
    assert!(
        given_way,
        "at the cap, silent connections give way to new ones: {st}"
    );
    assert!(
        st["open"].as_u64().unwrap() <= cap + 8,
        "connections over the cap: {st}"
    );

    // The silent ones are closed once their first message is overdue.
    assert!(
        wait_until(secs(15), || status(&lab)["connections"]["open"] == 0),
        "idle connections not closed: {}",
        status(&lab)
    );
    assert!(opened.elapsed() >= secs(3), "closed before the deadline");
    let mut buf = [0u8; 16];
    let mut closed = 0;
    for s in &mut idle {
        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        if matches!(s.read(&mut buf), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, idle.len(), "every silent connection was closed");
    drop(idle);

    // Both PBXs stayed up all along: the HA probe still had descriptors.
    if let Some(v) = watch.finish() {
        panic!(
            "a PBX was marked down during the flood: {v}\n{}",
            lab.logs()
        );
    }
    assert!(
        !edge_log(&lab)[log_from..].contains("Destination down"),
        "{}",
        lab.logs()
    );
    assert!(lab.edge.alive(), "{}", lab.logs());
    let rss_after = rss_kib(pid);
    // What closed connections freed serves the next ones: waves after the
    // first do not grow the edge. The second wave is the reference, not the
    // first: how many of a wave are open at once depends on how fast this
    // machine accepts (on a busy one the first of a wave reach their
    // deadline before the last are accepted), and the allocator keeps the
    // highest of those; a leak grows with every wave.
    let mut rss_waves = Vec::new();
    for (n, net) in [(2u8, 2u8), (3, 5)] {
        let wave: Vec<_> = (0..2000u32)
            .filter_map(|i| connect_from([127, 0, net, 1 + (i / 100) as u8], to).ok())
            .collect();
        // Half the cap at once is enough to reuse what the wave before
        // freed; the whole cap is never open at once on a busy machine.
        assert!(
            wait_until(secs(10), || status(&lab)["connections"]["open"]
                .as_u64()
                .is_some_and(|n| n >= cap / 2)),
            "wave {n}: {}",
            status(&lab)
        );
        rss_waves.push(rss_kib(pid));
        drop(wave);
        assert!(
            wait_until(secs(10), || status(&lab)["connections"]["open"] == 0),
            "wave {n} closed by the peers: {}",
            status(&lab)
        );
    }
    let (rss_again, rss_third) = (rss_waves[0], rss_waves[1]);
    println!(
        "edge RSS: {rss_before} KiB before, {rss_full} KiB with {cap} silent connections, {rss_after} KiB after they closed, {rss_again} KiB with a second wave, {rss_third} KiB with a third"
    );
    assert!(
        rss_third < rss_again + 3072,
        "a third wave grew the edge from {rss_again} to {rss_third} KiB"
    );

    // The idle deadline: a connection that sent a message and then went
    // silent is closed after idle_timeout; one that sends CRLF keep-alives
    // stays; one that dribbles a message byte by byte is closed when the
    // message is overdue.
    let register = |user: &str, port: u16| {
        format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:{port};branch=z9hG4bK-{user}\r\nFrom: <sip:{user}@pbx.test>;tag=1\r\nTo: <sip:{user}@pbx.test>\r\nCall-ID: idle-{user}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@127.0.0.1:{port};transport=tcp>\r\nExpires: 60\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let mut quiet = TcpStream::connect(to).unwrap();
    let port = quiet.local_addr().unwrap().port();
    quiet.write_all(register("5001", port).as_bytes()).unwrap();
    let mut alive = TcpStream::connect(to).unwrap();
    let port = alive.local_addr().unwrap().port();
    alive.write_all(register("5002", port).as_bytes()).unwrap();
    let mut slow = TcpStream::connect(to).unwrap();
    let port = slow.local_addr().unwrap().port();
    let slow_msg = register("5003", port).into_bytes();
    let start = Instant::now();
    let is_closed = |s: &mut TcpStream| {
        let _ = s.set_nonblocking(true);
        let mut b = [0u8; 4096];
        let r = loop {
            match s.read(&mut b) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        let _ = s.set_nonblocking(false);
        r
    };
    let (mut quiet_closed, mut slow_closed) = (None, None);
    let mut i = 0;
    while start.elapsed() < secs(8) {
        let _ = alive.write_all(b"\r\n\r\n");
        if slow_closed.is_none() && i < slow_msg.len() {
            let _ = slow.write_all(&slow_msg[i..i + 1]);
            i += 1;
        }
        if quiet_closed.is_none() && is_closed(&mut quiet) {
            quiet_closed = Some(start.elapsed());
        }
        if slow_closed.is_none() && is_closed(&mut slow) {
            slow_closed = Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let quiet_closed = quiet_closed.expect("a silent connection stayed open");
    assert!(
        quiet_closed >= Duration::from_millis(2500),
        "closed before idle_timeout: {quiet_closed:?}"
    );
    let slow_closed = slow_closed.expect("a message dribbled byte by byte kept its connection");
    assert!(
        slow_closed >= Duration::from_millis(3500) && slow_closed < secs(7),
        "{slow_closed:?}"
    );
    assert!(
        !is_closed(&mut alive),
        "keep-alives count as activity: the connection must stay\n{}",
        lab.logs()
    );
}

#[test]
fn a_probe_the_edge_cannot_run_for_want_of_descriptors_leaves_the_pbx_up() {
    let _g = serial();
    let mut lab = Lab::start_opts(
        "intake-unknown",
        LabOpts {
            web: true,
            ..LabOpts::default()
        },
    );
    respawn_edge(&mut lab, 256);
    let log_from = edge_log(&lab).len();
    // Every listener of the edge is capped below its descriptor limit, so
    // strangers can no longer run it out; take its descriptors away
    // instead (the soft limit lowered to what it has open): the HA request
    // of every probe round then cannot open its connection.
    let watch = UpWatch::start(lab.api);
    let pid = lab.edge.pid();
    let set_nofile = |n: u64| {
        let r = libc::rlimit {
            rlim_cur: n,
            rlim_max: 256,
        };
        // SAFETY: prlimit on a child of this test, with a valid rlimit.
        let rc =
            unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &r, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    };
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    // Below what it has open (a probe's own connection may be open while
    // counting): no new descriptor at all.
    set_nofile(open.saturating_sub(4));
    assert!(
        wait_until(secs(10), || edge_log(&lab)[log_from..]
            .contains("the PBX's state is unknown")),
        "the probe never met the shortage: {}",
        lab.logs()
    );
    // Phones knocking on the SIP TCP port meanwhile: its accept loop
    // meets EMFILE and pauses rather than spins. Several probe rounds
    // (every 200 ms, down after 2) pass while the edge is short.
    let sip: SocketAddr = format!("127.0.0.1:{}", lab.sip).parse().unwrap();
    let knocking: Vec<_> = (0..5)
        .filter_map(|_| TcpStream::connect_timeout(&sip, secs(1)).ok())
        .collect();
    let cpu_before = cpu_secs(lab.edge.pid());
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_secs(lab.edge.pid()) - cpu_before;
    assert!(
        edge_log(&lab)[log_from..].contains("edge SIP connections: accept: "),
        "the SIP accept loop never met the shortage\n{}",
        lab.logs()
    );
    assert!(cpu < 0.4, "the edge spun: {cpu:.2} s of CPU in 2 s");
    drop(knocking);
    let (code, out) = lab.register("9001");
    assert_eq!(
        code,
        0,
        "UDP REGISTER while the edge is short: {out}\n{}",
        lab.logs()
    );
    set_nofile(256);
    if let Some(v) = watch.finish() {
        panic!("the edge's shortage marked a PBX down: {v}\n{}", lab.logs());
    }
    assert!(
        !edge_log(&lab)[log_from..].contains("Destination down"),
        "{}",
        lab.logs()
    );
}

#[test]
fn a_source_over_its_rate_is_dropped_and_logged_while_others_pass() {
    let _g = serial();
    let lab = Lab::start_opts(
        "intake-rate",
        LabOpts {
            tail: "[limits]\nwindow = \"2s\"\nmax_per_window = 20\n".into(),
            ..LabOpts::default()
        },
    );
    let to: SocketAddr = format!("127.0.0.1:{}", lab.sip).parse().unwrap();
    let options = |n: u32| {
        format!(
            "OPTIONS sip:pbx.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.3.1:5999;branch=z9hG4bK-fl{n}\r\nFrom: <sip:flood@pbx.test>;tag=1\r\nTo: <sip:flood@pbx.test>\r\nCall-ID: flood-{n}\r\nCSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // UDP from one source: 500 messages within a window (paced so that
    // the socket's buffer, not the limit, does not drop them first).
    let flooder = std::net::UdpSocket::bind("127.0.3.1:0").unwrap();
    for n in 0..500 {
        flooder.send_to(options(n).as_bytes(), to).unwrap();
        if n % 10 == 9 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(
        wait_until(secs(5), || dropped(&lab, "over_rate") >= 450),
        "{}",
        status(&lab)
    );
    // Another phone meanwhile: relayed.
    let (code, out) = lab.register("6001");
    assert_eq!(code, 0, "{out}\n{}", lab.logs());
    // Over TCP, from another source: the same limit, per message.
    let mut tcp = connect_from([127, 0, 3, 2], to).unwrap();
    let before = dropped(&lab, "over_rate");
    let burst: String = (1000..1100).map(options).collect();
    tcp.write_all(burst.as_bytes()).unwrap();
    assert!(
        wait_until(secs(5), || dropped(&lab, "over_rate") >= before + 80),
        "{}",
        status(&lab)
    );
    // Connections from one address stop at its cap (128 by default).
    let held: Vec<_> = (0..140)
        .filter_map(|_| connect_from([127, 0, 4, 1], to).ok())
        .collect();
    assert!(
        wait_until(secs(5), || status(&lab)["connections"]["refused_or_closed"]
            ["by_reason"]["over the per-address cap"]
            .as_u64()
            .unwrap_or(0)
            >= 10),
        "{}",
        status(&lab)
    );
    // 128 from 127.0.4.1, and the TCP flooder's one.
    let open = status(&lab)["connections"]["open"].as_u64().unwrap();
    assert!(open <= 129, "{open} open");
    drop(held);
    // One line per source per window, not one per message.
    let log = edge_log(&lab);
    let lines = |ip: &str| log.matches(&format!("pike: blocking {ip}:")).count();
    assert!((1..=2).contains(&lines("127.0.3.1")), "{}", lab.logs());
    assert_eq!(lines("127.0.3.2"), 1, "{}", lab.logs());
    // A new window lets the source in again.
    std::thread::sleep(secs(2));
    let before = dropped(&lab, "over_rate");
    for n in 2000..2010 {
        flooder.send_to(options(n).as_bytes(), to).unwrap();
    }
    let (code, out) = lab.register("6002");
    assert_eq!(code, 0, "{out}\n{}", lab.logs());
    assert_eq!(dropped(&lab, "over_rate"), before, "{}", status(&lab));
    let metrics = get_text(lab.api, "/metrics");
    assert!(
        metrics.contains("resilience_edge_dropped_total{reason=\"over_rate\"}"),
        "{metrics}"
    );
}

fn get_text(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn the_first_probe_counts_at_start_and_probe_lines_read_as_kamailio() {
    let _g = serial();
    let mut lab = Lab::start("intake-probe");
    // The same edge with a slow probe that wants three answers to call a
    // PBX up: at start, the first answer is enough.
    let cfg = std::fs::read_to_string(lab.dir.path("edge.toml")).unwrap();
    let [sip_udp, sip_tcp] = Sock::udp_tcp();
    let api_sock = Sock::tcp();
    let (sip, api) = (sip_udp.port(), api_sock.port());
    let slow = cfg
        .replace(&format!(":{}\"", lab.sip), &format!(":{sip}\""))
        .replace(&format!(":{}\"", lab.api), &format!(":{api}\""))
        .replace("interval = \"200ms\"", "interval = \"30s\"")
        .replace("up_after = 1", "up_after = 3");
    std::fs::write(lab.dir.path("slow.toml"), slow).unwrap();
    let started = Instant::now();
    let _slow = Proc::spawn_with(
        "slow-edge",
        &[
            "edge",
            "--config",
            lab.dir.path("slow.toml").to_str().unwrap(),
        ],
        &lab.dir.0,
        &lab.dir.path("slow-edge.log"),
        &[&sip_udp, &sip_tcp, &api_sock],
    );
    let up = || {
        get(&format!("http://127.0.0.1:{api}/api/v1/status"))
            .and_then(|v| v["pbxs"].as_array().cloned())
            .is_some_and(|a| a.len() == 2 && a.iter().all(|p| p["up"] == true))
    };
    assert!(
        wait_until(secs(10), up),
        "both PBXs up at start\n{}",
        std::fs::read_to_string(lab.dir.path("slow-edge.log")).unwrap_or_default()
    );
    assert!(started.elapsed() < secs(10));
    let mut c = Command::new("sipp");
    c.args(["-sf", fixture("phone_register.xml").to_str().unwrap()])
        .args(["-i", "127.0.0.1"])
        .args(["-m", "1", "-s", "7001", "-timeout", "10s", "-timeout_error"])
        .args(["-nostdin"])
        .arg(format!("127.0.0.1:{sip}"))
        .current_dir(&lab.dir.0);
    let (code, out) = sipp_output(c);
    assert_eq!(code, 0, "REGISTER right after start: {out}");

    // Kamailio's words, both at WARN, found by the admin's grep.
    let grep = |pattern: &str| {
        let out = Command::new("grep")
            .args(["-c", pattern, lab.dir.path("edge.log").to_str().unwrap()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
    };
    let standby = lab.pbx[1].port;
    let up_line = format!("WAR.*Destination up: OPTIONS sip:127.0.0.1:{standby};transport=udp");
    assert!(grep(&up_line) >= 1, "{}", lab.logs());
    lab.pbx[1].stop();
    let down_line = format!("WAR.*Destination down: OPTIONS sip:127.0.0.1:{standby};transport=udp");
    assert!(
        wait_until(secs(10), || grep(&down_line) == 1),
        "{}",
        lab.logs()
    );
    lab.pbx[1].restart();
    assert!(
        wait_until(secs(10), || grep(&up_line) == 2),
        "{}",
        lab.logs()
    );
}

/// Write a CA-signed certificate for `name` and its key (mode 0600).
fn write_cert(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>, name: &str, cert: &Path, key: &Path) {
    let k = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let c = params.signed_by(&k, issuer).unwrap();
    // Replaced as certbot does: the new files renamed over the old ones.
    let tmp_c = cert.with_extension("new");
    let tmp_k = key.with_extension("newkey");
    std::fs::write(&tmp_c, c.pem()).unwrap();
    write_secret(&tmp_k, &k.serialize_pem());
    std::fs::rename(&tmp_k, key).unwrap();
    std::fs::rename(&tmp_c, cert).unwrap();
}

/// Whether a TLS handshake with the edge succeeds for server name `name`,
/// trusting only `ca`.
fn tls_handshake(port: u16, ca: &rcgen::Certificate, name: &str) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), server).map_err(|e| e.to_string())?;
    let sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn register_and_call_over_tls_and_a_renewed_certificate_serves_the_next_connection() {
    let _g = serial();
    let certs = TestDir::new("intake-tls-certs");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let (cert, key) = (certs.path("edge.crt"), certs.path("edge.key"));
    write_cert(&issuer, "edge-one.test", &cert, &key);
    let tls_sock = Sock::tcp();
    let tls_port = tls_sock.port();
    let mut lab = Lab::start_opts(
        "intake-tls",
        LabOpts {
            socks: vec![tls_sock],
            edge_extra: format!(
                "sip_tls_listen = \"127.0.0.1:{tls_port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                cert.display(),
                key.display()
            ),
            ..LabOpts::default()
        },
    );

    // stunnel (client mode) turns sipp's TCP into TLS to the edge.
    // stunnel binds its own port: started again on another one when that
    // one is taken (it exits).
    let conf = lab.dir.path("stunnel.conf");
    let (_stunnel, front) = spawn_on_some_port(|front| {
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = 4\n[sip]\nclient = yes\naccept = 127.0.0.1:{front}\nconnect = 127.0.0.1:{tls_port}\n"
            ),
        )
        .unwrap();
        let stunnel = Command::new("stunnel4")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(append_log(&lab.dir.path("stunnel.log")))
            .stderr(append_log(&lab.dir.path("stunnel.log")))
            .spawn()
            .expect(
                "stunnel4 (Debian package stunnel4) must be installed: scripts/test.sh installs it",
            );
        let mut p = Proc::from_child("stunnel", stunnel);
        let pid = p.pid();
        wait_until(secs(10), || !p.alive() || listens_tcp(pid, front));
        p.alive().then_some((p, front))
    });
    // What a phone over TLS writes: its Via says TLS.
    for f in ["phone_register.xml", "phone_call.xml", "phone_answer.xml"] {
        let text = std::fs::read_to_string(fixture(f)).unwrap();
        std::fs::write(
            lab.dir.path(&format!("tls-{f}")),
            text.replace("SIP/2.0/[transport]", "SIP/2.0/TLS"),
        )
        .unwrap();
    }
    let sipp_tls = |scenario: &str, user: &str, extra: &[&str]| {
        let mut c = Command::new("sipp");
        c.args([
            "-sf",
            lab.dir.path(&format!("tls-{scenario}")).to_str().unwrap(),
        ])
        .args(["-t", "t1", "-i", "127.0.0.1"])
        .args(["-m", "1", "-s", user, "-timeout", "30s", "-timeout_error"])
        .args(["-nostdin", "-trace_err"])
        .args(extra)
        .arg(format!("127.0.0.1:{front}"))
        .current_dir(&lab.dir.0);
        c
    };
    let (code, out) = sipp_output(sipp_tls("phone_register.xml", "8001", &[]));
    assert_eq!(code, 0, "REGISTER over TLS: {out}\n{}", lab.logs());
    let p = lab.phone("sip:8001@pbx.test");
    assert!(
        p["contact"]
            .as_str()
            .unwrap_or_default()
            .starts_with("tls:"),
        "{p}"
    );

    // A call: callee and caller both over TLS.
    let callee = sipp_tls("phone_answer.xml", "8002", &["-cid_str", "call-tls"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp (Debian package sip-tester) must be installed");
    let mut callee = Proc::from_child("callee", callee);
    assert!(
        wait_until(secs(10), || lab.registered("sip:8002@pbx.test")),
        "callee never registered over TLS\n{}",
        lab.logs()
    );
    let (code, out) = sipp_output(sipp_tls(
        "phone_call.xml",
        "8003",
        &[
            "-key", "callee", "8002", "-cid_str", "call-tls", "-d", "300",
        ],
    ));
    assert_eq!(code, 0, "call over TLS: {out}\n{}", lab.logs());
    assert!(
        wait_until(secs(10), || !callee.alive()),
        "callee did not finish"
    );
    assert!(
        lab.pbx[0].log().contains("INVITE sip:8002@"),
        "{}",
        lab.logs()
    );

    // The certificate renewed on disk: the next connection gets it.
    tls_handshake(tls_port, &ca, "edge-one.test").expect("the first certificate");
    assert!(tls_handshake(tls_port, &ca, "edge-two.test").is_err());
    write_cert(&issuer, "edge-two.test", &cert, &key);
    tls_handshake(tls_port, &ca, "edge-two.test").expect("the renewed certificate, no restart");
    assert!(tls_handshake(tls_port, &ca, "edge-one.test").is_err());
    // A broken pair on disk leaves the last good one in service.
    std::fs::write(&cert, "not a certificate").unwrap();
    tls_handshake(tls_port, &ca, "edge-two.test").expect("the last good certificate");
    assert!(lab.edge.alive(), "{}", lab.logs());
}
