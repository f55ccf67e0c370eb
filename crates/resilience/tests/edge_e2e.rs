//! End-to-end: `resilience edge` between real SIP peers — sipp as the
//! phones, two Kamailio registrars as the Main's and the Standby's PBX
//! (fixtures/sip/kamailio-pbx.cfg). Timers are short: probes every 200 ms,
//! failover after 1 s, failback after 2 s stable.

mod common;

use common::edge::*;
use common::*;
use std::time::Duration;

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
        edge_log.contains("Destination down: OPTIONS sip:127.0.0.1:"),
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
    // The edge registered it at the Standby as it moved it...
    assert!(
        wait_until(secs(5), || registers_at(&lab.pbx[1], "1001") == 1),
        "{}",
        lab.logs()
    );
    // ... and the phone's own next REGISTER lands there too.
    let (code, out) = lab.register("1001");
    assert_eq!(code, 0, "{out}\n{}", lab.logs());
    assert_eq!(registers_at(&lab.pbx[1], "1001"), 2, "{}", lab.logs());
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
    // Registered home by the edge as it came back, then by itself.
    assert!(
        wait_until(secs(5), || registers_at(&lab.pbx[0], "1001") == 2),
        "{}",
        lab.logs()
    );
    let (code, out) = lab.register("1001");
    assert_eq!(code, 0, "{out}");
    assert_eq!(registers_at(&lab.pbx[0], "1001"), 3, "{}", lab.logs());
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
    // ... its REGISTER there (and the one the edge sent for it) goes
    // unanswered, and a retransmission after register_timeout lands on the
    // Standby (where the edge registers it again as it moves it): the phone
    // is never homeless.
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
    assert_eq!(registers_at(&lab.pbx[1], "1001"), 3, "{}", lab.logs());
    let p = lab.phone("sip:1001@pbx.test");
    assert_eq!(p["serving"], "standby", "{p}");
    let moves = lab.get("/api/v1/status")["moves"].to_string();
    assert!(moves.contains("did not answer its REGISTER"), "{moves}");
}
