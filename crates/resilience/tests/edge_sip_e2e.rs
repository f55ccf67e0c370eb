//! End-to-end: the edge's SIP correctness and its PBX path, between real
//! peers (sipp as the phones, Kamailio as the PBXs; see common/edge.rs):
//! a phone using the edge as its outbound proxy (RFC 3261 §16.4), the 503
//! when no PBX can serve, datagrams spoofed from a PBX's address, and an
//! edge restarted in the middle of a call.

mod common;

use common::edge::*;
use common::*;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn dropped(lab: &Lab, reason: &str) -> u64 {
    lab.get("/api/v1/status")["dropped"][reason]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_phone_with_the_edge_as_outbound_proxy_registers_and_calls() {
    let _g = serial();
    let lab = Lab::start("edge-outbound");
    let mut callee = lab.callee("2001", "call-o");
    assert!(
        wait_until(secs(10), || lab.registered("sip:2001@pbx.test")),
        "callee never registered\n{}",
        lab.logs()
    );
    // REGISTER sip:pbx.test and INVITE sip:2001@pbx.test, each with
    // `Route: <sip:EDGE;lr>`: before §16.4 routing neither got an answer.
    let (code, out) = lab.sipp(
        "phone_call_outbound.xml",
        "1001",
        &[
            "-key", "callee", "2001", "-cid_str", "call-o", "-d", "300", "-timeout", "20s",
        ],
    );
    assert_eq!(code, 0, "caller failed: {out}\n{}", lab.logs());
    assert!(lab.registered("sip:1001@pbx.test"));
    assert!(
        wait_until(secs(10), || !callee.alive()),
        "callee did not finish"
    );
    assert_eq!(callee.exited().and_then(|s| s.code()), Some(0));
    // A REGISTER alone, the R-URI the domain: answered 200 too.
    let (code, out) = lab.sipp("phone_register_outbound.xml", "1002", &["-timeout", "10s"]);
    assert_eq!(code, 0, "{out}\n{}", lab.logs());
    assert!(lab.registered("sip:1002@pbx.test"));
}

#[test]
fn with_no_pbx_up_a_phone_gets_503_with_retry_after() {
    let _g = serial();
    let mut lab = Lab::start_opts(
        "edge-503",
        LabOpts {
            edge_extra: "retry_after = \"7s\"\n".into(),
            ..LabOpts::default()
        },
    );
    lab.pbx[0].stop();
    lab.pbx[1].stop();
    assert!(
        wait_until(secs(10), || lab.pbx_up() == [false, false]),
        "the PBXs never went down\n{}",
        lab.logs()
    );
    let generated = |lab: &Lab| -> u64 {
        get_text(lab.api, "/metrics")
            .lines()
            .find(|l| l.starts_with("resilience_edge_messages_total{kind=\"generated\"}"))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(0)
    };
    let before = generated(&lab);
    // The scenario wants a 503 carrying `Retry-After: 7`.
    let (code, out) = lab.sipp("phone_register_503.xml", "1003", &["-timeout", "10s"]);
    assert_eq!(code, 0, "{out}\n{}", lab.logs());
    assert!(generated(&lab) > before, "the 503 is counted as generated");
}

/// A UDP datagram whose IPv4 source is `from`, sent with a raw socket (the
/// tests run as root; a UDP checksum of 0 means none, RFC 768).
fn spoof(from: SocketAddr, to: SocketAddr, payload: &[u8]) {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (from, to) else {
        panic!("IPv4 only");
    };
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(255)), // IPPROTO_RAW: we write the IP header
    )
    .expect("a raw socket (the tests run as root)");
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]); // id, DF, TTL, UDP, checksum (kernel)
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    sock.send_to(&p, &to.into()).expect("raw send");
}

/// Whatever reaches `sock` within `d` (the edge has already decided).
fn received(sock: &UdpSocket, d: Duration) -> Option<String> {
    sock.set_read_timeout(Some(d)).unwrap();
    let mut buf = [0u8; 4096];
    sock.recv_from(&mut buf)
        .ok()
        .map(|(n, from)| format!("from {from}: {}", String::from_utf8_lossy(&buf[..n])))
}

#[test]
fn datagrams_spoofed_from_a_pbx_are_neither_reflected_nor_delivered() {
    let _g = serial();
    let lab = Lab::start("edge-spoof");
    let edge: SocketAddr = (Ipv4Addr::LOCALHOST, lab.sip).into();
    let pbx: SocketAddr = (Ipv4Addr::LOCALHOST, lab.pbx[0].port).into();
    let victim = UdpSocket::bind("127.0.0.1:0").unwrap();
    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (v, ph) = (
        victim.local_addr().unwrap().port(),
        phone.local_addr().unwrap().port(),
    );
    // (a) A response with the edge's Via on top and the victim next: the
    // old edge sent it on to the victim.
    let response = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bK-rs-00112233445566778899-00112233445566778899\r\nVia: SIP/2.0/UDP 127.0.0.1:{v};branch=z9hG4bKvictim\r\nFrom: <sip:a@pbx.test>;tag=1\r\nTo: <sip:b@pbx.test>;tag=2\r\nCall-ID: spoof-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        lab.sip
    );
    // (b) A MESSAGE with the edge's Route and a flow naming the phone, and
    // (c) one with no Route, the R-URI naming the phone.
    let message = |route: &str, cid: &str| {
        format!(
            "MESSAGE sip:1001@127.0.0.1:{ph} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bK{cid}\r\n{route}Max-Forwards: 70\r\nFrom: <sip:bank@pbx.test>;tag=f\r\nTo: <sip:1001@pbx.test>\r\nCall-ID: {cid}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nhi!\n",
            pbx.port()
        )
    };
    let routed = message(
        &format!(
            "Route: <sip:127.0.0.1:{};lr;rs-flow=udp~127.0.0.1~{ph}>\r\n",
            lab.sip
        ),
        "spoof-2",
    );
    let bare = message("", "spoof-3");
    spoof(pbx, edge, response.as_bytes());
    spoof(pbx, edge, routed.as_bytes());
    spoof(pbx, edge, bare.as_bytes());
    assert!(
        wait_until(secs(10), || {
            dropped(&lab, "forged_branch") >= 1
                && dropped(&lab, "forged_flow") >= 1
                && dropped(&lab, "unsigned_flow") >= 1
        }),
        "the spoofed datagrams were not counted: {}\n{}",
        lab.get("/api/v1/status"),
        lab.logs()
    );
    // The edge handles datagrams in order and has decided on all three.
    assert_eq!(received(&victim, Duration::from_millis(300)), None);
    assert_eq!(received(&phone, Duration::from_millis(300)), None);
    // Each reason logged at WARN (rate-limited), not only at DEBUG; and
    // the start warned that there is no key file.
    let log = std::fs::read_to_string(lab.dir.path("edge.log")).unwrap();
    for reason in [
        "a response whose branch the edge did not sign",
        "a Route naming the edge with a flow it did not sign",
        "a PBX's request for a phone without a flow the edge signed",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains(reason)),
            "{reason}\n{log}"
        );
    }
    assert!(log.contains("no [edge] key_file"), "{log}");
}

#[test]
fn a_call_survives_an_edge_restart_with_a_key_file() {
    let _g = serial();
    let keys = TestDir::new("edge-restart-key");
    let key = keys.path("edge.key");
    write_secret(&key, &format!("{KEY}\n"));
    let mut lab = Lab::start_opts(
        "edge-restart",
        LabOpts {
            edge_extra: format!("key_file = \"{}\"\n", key.display()),
            ..LabOpts::default()
        },
    );
    let mut callee = lab.callee("2001", "call-r");
    assert!(
        wait_until(secs(10), || lab.registered("sip:2001@pbx.test")),
        "callee never registered\n{}",
        lab.logs()
    );
    // The caller holds the call 15 s, then hangs up: long enough that on a
    // loaded machine the edge is back before the BYE leaves (a BYE sent
    // while no edge listens is a different test: it meets a closed port).
    let mut caller = Proc::from_child(
        "caller",
        lab.sipp_command(
            "phone_call.xml",
            "1001",
            &[
                "-key", "callee", "2001", "-cid_str", "call-r", "-d", "15000",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp (Debian package sip-tester) must be installed"),
    );
    let in_call = |lab: &Lab| lab.phone("sip:1001@pbx.test")["calls"].as_u64() == Some(1);
    assert!(
        wait_until(secs(10), || in_call(&lab)),
        "the call never came up\n{}",
        lab.logs()
    );
    let held_from = Instant::now();
    let pid = lab.edge.pid();
    lab.edge.kill();
    lab.respawn_edge();
    assert_ne!(pid, lab.edge.pid());
    assert!(
        wait_until(secs(10), || lab.pbx_up() == [true, true]),
        "the edge did not come back\n{}",
        lab.logs()
    );
    eprintln!(
        "edge killed, restarted and both PBXs up again in {:?} (the call lasts 15 s)",
        held_from.elapsed()
    );
    // The BYE (the caller's, through the edge's Record-Route and the PBX
    // to the callee) and its 200 cross the restarted edge.
    assert!(
        wait_until(secs(40), || !caller.alive()),
        "caller did not finish\n{}",
        lab.logs()
    );
    assert_eq!(
        caller.exited().and_then(|s| s.code()),
        Some(0),
        "the caller's BYE was not answered\n{}",
        lab.logs()
    );
    assert!(wait_until(secs(10), || !callee.alive()));
    assert_eq!(callee.exited().and_then(|s| s.code()), Some(0));
    assert!(!std::fs::read_to_string(lab.dir.path("edge.log"))
        .unwrap()
        .contains("no [edge] key_file"));
}

/// A baresip phone (Debian `baresip`), headless: its own config folder,
/// one account whose outbound proxy is the edge, media on loopback only.
fn baresip(
    lab: &Lab,
    user: &str,
    account_extra: &str,
    args: &[&str],
) -> (Proc, std::path::PathBuf) {
    let dir = lab.dir.path(&format!("baresip-{user}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config"),
        // Port 0: baresip binds its own SIP ports (no port picked for it).
        "module_path /usr/lib/baresip/modules\n\
             sip_listen 127.0.0.1:0\n\
             net_interface 127.0.0.1\n\
             rtp_ports 30000-39999\n\
             module g711.so\n\
             module ausine.so\n\
             module aufile.so\n\
             audio_player aufile,/dev/null\n\
             audio_alert aufile,/dev/null\n\
             audio_source ausine,440\n\
             ausrc_srate 48000\n\
             ausrc_channels 2\n\
             auplay_srate 48000\n\
             auplay_channels 2\n\
             module_app account.so\n\
             module_app menu.so\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("accounts"),
        format!(
            "<sip:{user}@pbx.test>;outbound=\"sip:127.0.0.1:{}\";regint=600{account_extra}\n",
            lab.sip
        ),
    )
    .unwrap();
    let log = lab.dir.path(&format!("baresip-{user}.log"));
    let child = std::process::Command::new("baresip")
        .args(["-f", dir.to_str().unwrap(), "-t", "60"])
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(append_log(&log))
        .stderr(append_log(&log))
        .spawn()
        .expect("baresip (Debian package baresip) must be installed: scripts/test.sh installs it");
    (Proc::from_child(user, child), log)
}

fn read(p: &std::path::Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

#[test]
fn baresip_with_outbound_set_to_the_edge_registers_and_calls() {
    let _g = serial();
    let lab = Lab::start("edge-baresip");
    let (_callee, callee_log) = baresip(&lab, "2005", ";answermode=auto", &[]);
    assert!(
        wait_until(secs(20), || lab.registered("sip:2005@pbx.test")),
        "baresip (callee) never registered through the edge\n{}\n{}",
        read(&callee_log),
        lab.logs()
    );
    let (mut caller, caller_log) = baresip(&lab, "1005", "", &["-e", "/dial sip:2005@pbx.test"]);
    assert!(
        wait_until(secs(20), || lab.registered("sip:1005@pbx.test")
            && read(&caller_log).contains("Call established: sip:2005@pbx.test")),
        "baresip's call through the edge was not established\n--- caller ---\n{}\n--- callee ---\n{}\n{}",
        read(&caller_log),
        read(&callee_log),
        lab.logs()
    );
    assert!(read(&callee_log).contains("Call established: sip:1005@pbx.test"));
    // SIGTERM: baresip hangs up (BYE through the edge and the PBX) and
    // unregisters. A BYE received is what libre reports as "session
    // closed: Connection reset by peer".
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &caller.pid().to_string()])
        .status();
    assert!(
        wait_until(secs(20), || read(&callee_log).contains(
            "sip:1005@pbx.test: session closed: Connection reset by peer"
        )),
        "the callee never got the BYE\n{}",
        read(&callee_log)
    );
    assert!(wait_until(secs(10), || !caller.alive()));
}

fn get_text(port: u16, path: &str) -> String {
    agent()
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default()
}
