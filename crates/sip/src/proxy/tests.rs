use super::*;

const EDGE: &str = "127.0.0.1:5060";
const PBX_A: &str = "127.0.0.2:5060";
const PBX_B: &str = "127.0.0.3:5060";
const PHONE: &str = "127.0.0.10:5070";

fn relay() -> Relay {
    Relay::new(
        EDGE.parse().unwrap(),
        vec![PBX_A.parse().unwrap(), PBX_B.parse().unwrap()],
        [7; 32],
    )
}

fn udp(a: &str) -> Flow {
    Flow::udp(a.parse().unwrap())
}

fn register(branch: &str) -> String {
    format!(
        "REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.1.10:5070;branch={branch};rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:1001@pbx.example.com>;tag=a\r\n\
To: <sip:1001@pbx.example.com>\r\n\
Call-ID: reg-1\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:1001@192.168.1.10:5070>\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n"
    )
}

fn text(s: &Send) -> String {
    String::from_utf8(s.bytes.clone()).unwrap()
}

fn to_pbx_a(r: &NewRequest<'_>) -> Option<SocketAddr> {
    assert_eq!(r.aor, "sip:1001@pbx.example.com");
    Some(PBX_A.parse().unwrap())
}

#[test]
fn register_from_a_natted_phone_goes_to_the_chosen_pbx_with_path() {
    let out = relay()
        .handle(udp(PHONE), register("z9hG4bKr1").as_bytes(), to_pbx_a)
        .unwrap();
    assert_eq!(out.to, udp(PBX_A));
    let t = text(&out);
    let lines: Vec<&str> = t.split("\r\n").collect();
    assert!(
        lines[1].starts_with("Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-rs-"),
        "{t}"
    );
    assert_eq!(
        lines[2],
        "Path: <sip:127.0.0.1:5060;lr;rs-flow=udp~127.0.0.10~5070>"
    );
    assert!(t.contains("Via: SIP/2.0/UDP 192.168.1.10:5070;branch=z9hG4bKr1;received=127.0.0.10;rport=5070\r\n"), "{t}");
    assert!(t.contains("Max-Forwards: 69\r\n"));
    assert!(t.ends_with("Content-Length: 0\r\n\r\n"));
    assert_eq!(
        out.notes,
        [Note::Register {
            aor: "sip:1001@pbx.example.com".into(),
            from: udp(PHONE),
            to: udp(PBX_A),
            call_id: "reg-1".into()
        }]
    );
}

#[test]
fn the_response_loses_the_edge_via_and_goes_back_to_the_phone() {
    let r = relay();
    let fwd = r
        .handle(udp(PHONE), register("z9hG4bKr1").as_bytes(), to_pbx_a)
        .unwrap();
    let t = text(&fwd);
    let vias: Vec<&str> = t.lines().filter(|l| l.starts_with("Via:")).collect();
    let ok = format!(
        "SIP/2.0 200 OK\r\n{}\r\n{}\r\nFrom: <sip:1001@pbx.example.com>;tag=a\r\nTo: <sip:1001@pbx.example.com>;tag=k\r\nCall-ID: reg-1\r\nCSeq: 1 REGISTER\r\nContact: <sip:1001@192.168.1.10:5070>;expires=120\r\nContent-Length: 0\r\n\r\n",
        vias[0], vias[1]
    );
    let back = r
        .handle(udp(PBX_A), ok.as_bytes(), |_| unreachable!())
        .unwrap();
    assert_eq!(back.to, udp(PHONE), "rport and received win over sent-by");
    let b = text(&back);
    assert_eq!(b.matches("Via:").count(), 1, "{b}");
    assert!(!b.contains("127.0.0.1:5060"), "{b}");
    assert_eq!(
        back.notes,
        [Note::Registered {
            aor: "sip:1001@pbx.example.com".into(),
            code: 200,
            call_id: "reg-1".into(),
            expires: Some(120)
        }]
    );
    // A response that did not come through the edge is dropped.
    let stray = ok.replace(vias[0], "Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKz");
    assert_eq!(
        r.handle(udp(PBX_A), stray.as_bytes(), |_| None),
        Err(Dropped::NotOurs)
    );
}

#[test]
fn branches_match_for_a_retransmission_and_a_cancel_and_differ_otherwise() {
    let r = relay();
    let branch_of = |raw: &str| {
        let t = text(&r.handle(udp(PHONE), raw.as_bytes(), to_pbx_a).unwrap());
        let l = t.lines().nth(1).unwrap().to_owned();
        l.split("branch=").nth(1).unwrap().to_owned()
    };
    let invite = "INVITE sip:1002@pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.10:5070;branch=z9hG4bKi1\r\nFrom: <sip:1001@pbx.example.com>;tag=a\r\nTo: <sip:1002@pbx.example.com>\r\nCall-ID: call-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let cancel = invite
        .replace("INVITE sip", "CANCEL sip")
        .replace("1 INVITE", "1 CANCEL");
    let b1 = branch_of(invite);
    assert_eq!(b1, branch_of(invite));
    assert_eq!(b1, branch_of(&cancel));
    assert_ne!(b1, branch_of(&invite.replace("z9hG4bKi1", "z9hG4bKi2")));
}

#[test]
fn an_invite_from_the_pbx_follows_the_path_to_the_phone_and_is_record_routed() {
    let invite = "INVITE sip:1001@192.168.1.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKp1\r\nRoute: <sip:127.0.0.1:5060;lr;rs-flow=udp~127.0.0.10~5070>\r\nRecord-Route: <sip:127.0.0.2;lr>\r\nFrom: <sip:1002@pbx.example.com>;tag=b\r\nTo: <sip:1001@pbx.example.com>\r\nCall-ID: call-2\r\nCSeq: 1 INVITE\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n";
    let out = relay()
        .handle(udp(PBX_A), invite.as_bytes(), |_| unreachable!())
        .unwrap();
    assert_eq!(
        out.to,
        udp(PHONE),
        "the flow in the Path, not the private contact"
    );
    let t = text(&out);
    assert!(!t.contains("\nRoute:"), "our Route is taken off: {t}");
    assert!(t.contains("Record-Route: <sip:127.0.0.1:5060;lr;rs-flow=udp~127.0.0.10~5070>\r\n"));
    assert!(t.contains("Record-Route: <sip:127.0.0.2;lr>\r\n"));
    assert!(!t.contains("received="), "a PBX's Via is left alone: {t}");
    assert_eq!(
        out.notes,
        [Note::Invite {
            call_id: "call-2".into(),
            phone: udp(PHONE)
        }]
    );
}

#[test]
fn an_in_dialog_request_from_the_phone_stays_on_the_pbx_of_the_call() {
    // The call is on PBX B (the route set says so), whatever the policy
    // now says for new calls.
    let bye = "BYE sip:1002@127.0.0.3:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.10:5070;branch=z9hG4bKb1\r\nRoute: <sip:127.0.0.1:5060;lr;rs-flow=udp~127.0.0.10~5070>, <sip:127.0.0.3;lr>\r\nFrom: <sip:1001@pbx.example.com>;tag=a\r\nTo: <sip:1002@pbx.example.com>;tag=z\r\nCall-ID: call-3\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    let out = relay()
        .handle(udp(PHONE), bye.as_bytes(), |_| panic!("not a new request"))
        .unwrap();
    assert_eq!(out.to, udp(PBX_B));
    let t = text(&out);
    assert!(t.contains("\r\nRoute: <sip:127.0.0.3;lr>\r\n"), "{t}");
    assert_eq!(
        out.notes,
        [Note::DialogDown {
            call_id: "call-3".into()
        }]
    );
}

#[test]
fn max_forwards_zero_gets_a_483_and_no_open_relay() {
    let r = relay();
    let raw = register("z9hG4bKm").replace("Max-Forwards: 70", "Max-Forwards: 0");
    let out = r.handle(udp(PHONE), raw.as_bytes(), to_pbx_a).unwrap();
    assert!(out.generated);
    assert_eq!(out.to, udp(PHONE));
    let t = text(&out);
    assert!(t.starts_with("SIP/2.0 483 Too Many Hops\r\n"), "{t}");
    assert!(
        t.contains("To: <sip:1001@pbx.example.com>;tag=rs483\r\n"),
        "{t}"
    );
    assert!(t.contains("Call-ID: reg-1\r\n"));
    // A phone cannot use the edge to reach anything but a PBX.
    let raw = register("z9hG4bKo").replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRoute: <sip:10.1.2.3;lr>\r\n",
    );
    assert_eq!(
        r.handle(udp(PHONE), raw.as_bytes(), to_pbx_a),
        Err(Dropped::NoRoute)
    );
    // No PBX to serve the phone.
    assert_eq!(
        r.handle(udp(PHONE), register("z9hG4bKn").as_bytes(), |_| None),
        Err(Dropped::NoPbx)
    );
}

#[test]
fn garbage_is_dropped_with_a_reason() {
    let r = relay();
    for raw in [
        &b""[..],
        b"\x00\x01\x02",
        b"INVITE\r\n\r\n",
        b"SIP/2.0 200 OK\r\n\r\n",
    ] {
        assert!(matches!(
            r.handle(udp(PHONE), raw, to_pbx_a),
            Err(Dropped::Malformed(_))
        ));
    }
    let bad_via = register("z9hG4bKx").replace("SIP/2.0/UDP 192.168.1.10:5070", "junk");
    assert_eq!(
        r.handle(udp(PHONE), bad_via.as_bytes(), to_pbx_a),
        Err(Dropped::BadVia)
    );
}

#[test]
fn expiries_are_capped_for_a_phone_away_from_home() {
    let ok = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.10:5070;branch=z9hG4bKr1\r\nFrom: <sip:1001@pbx>;tag=a\r\nTo: <sip:1001@pbx>;tag=k\r\nCall-ID: r\r\nCSeq: 1 REGISTER\r\nContact: <sip:1001@10.0.0.2:5070>;expires=3600, <sip:1001@10.0.0.3>;expires=60\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n";
    let out = String::from_utf8(cap_expires(ok.as_bytes(), 120).unwrap()).unwrap();
    assert!(
        out.contains(
            "Contact: <sip:1001@10.0.0.2:5070>;expires=120, <sip:1001@10.0.0.3>;expires=60\r\n"
        ),
        "{out}"
    );
    assert!(out.contains("\r\nExpires: 120\r\n"), "{out}");
    assert_eq!(
        cap_expires(out.as_bytes(), 120),
        None,
        "nothing left to cap"
    );
}

#[test]
fn forged_responses_and_phone_written_received_go_nowhere_else() {
    let r = relay();
    // A "response" from outside whose next hop is some other host: dropped,
    // the edge is not a reflector.
    let forged = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx, SIP/2.0/UDP 10.9.9.9:161\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: f\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(
        r.handle(udp(PHONE), forged.as_bytes(), |_| None),
        Err(Dropped::NotOurs)
    );
    // A phone answering a PBX's request: the response goes to the PBX, and
    // teaches the router nothing.
    let answer = forged.replace("10.9.9.9:161", "127.0.0.2:5060");
    let out = r.handle(udp(PHONE), answer.as_bytes(), |_| None).unwrap();
    assert_eq!(out.to, udp(PBX_A));
    assert!(out.notes.is_empty(), "{:?}", out.notes);
    // A phone cannot choose where the PBX answers: its received is replaced.
    let raw = register("z9hG4bKq").replace(";rport\r\n", ";received=198.51.100.1\r\n");
    let t = text(&r.handle(udp(PHONE), raw.as_bytes(), to_pbx_a).unwrap());
    assert!(!t.contains("198.51.100.1"), "{t}");
    assert!(
        t.contains(";branch=z9hG4bKq;received=127.0.0.10\r\n"),
        "{t}"
    );
}

#[test]
fn a_pbx_request_follows_the_flow_in_the_edge_route_not_a_phone_written_path() {
    let invite = "INVITE sip:1001@192.168.1.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKp9\r\nRoute: <sip:127.0.0.1:5060;lr;rs-flow=udp~127.0.0.10~5070>, <sip:203.0.113.5:53;lr>\r\nFrom: <sip:1002@pbx>;tag=b\r\nTo: <sip:1001@pbx>\r\nCall-ID: c9\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let out = relay()
        .handle(udp(PBX_A), invite.as_bytes(), |_| unreachable!())
        .unwrap();
    assert_eq!(out.to, udp(PHONE));
}

#[test]
fn what_the_relay_sends_stays_within_the_limits_it_reads_with() {
    // Found by the fuzzer: 128 header lines in, three added, and the next
    // hop (an edge too) would refuse it. The edge refuses it first.
    let mut raw = register("z9hG4bKh");
    let pad: String = (0..crate::message::MAX_HEADERS - 10)
        .map(|i| format!("X-{i}: y\r\n"))
        .collect();
    raw = raw.replace(
        "Content-Length: 0\r\n",
        &format!("{pad}Content-Length: 0\r\n"),
    );
    assert!(Message::parse(raw.as_bytes()).is_ok());
    assert_eq!(
        relay().handle(udp(PHONE), raw.as_bytes(), to_pbx_a),
        Err(Dropped::Malformed(ParseError::TooManyHeaders))
    );
}

#[test]
fn a_phone_over_tls_is_answered_and_reached_over_its_tls_connection() {
    let r = relay();
    let tls = Flow {
        transport: Transport::Tls,
        addr: PHONE.parse().unwrap(),
    };
    let reg = register("z9hG4bKt1").replace("SIP/2.0/UDP 192.168", "SIP/2.0/TLS 192.168");
    let fwd = r.handle(tls, reg.as_bytes(), to_pbx_a).unwrap();
    assert_eq!(fwd.to, udp(PBX_A), "the PBX side stays UDP");
    let t = text(&fwd);
    assert!(
        t.contains("Path: <sip:127.0.0.1:5060;lr;rs-flow=tls~127.0.0.10~5070>\r\n"),
        "{t}"
    );
    // rport is written even when the phone did not ask: a connection.
    assert!(
        t.contains("SIP/2.0/TLS 192.168.1.10:5070;branch=z9hG4bKt1;received=127.0.0.10;rport=5070"),
        "{t}"
    );
    let vias: Vec<&str> = t.lines().filter(|l| l.starts_with("Via:")).collect();
    let ok = format!(
        "SIP/2.0 200 OK\r\n{}\r\n{}\r\nFrom: <sip:1001@pbx.example.com>;tag=a\r\nTo: <sip:1001@pbx.example.com>;tag=k\r\nCall-ID: reg-1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
        vias[0], vias[1]
    );
    let back = r.handle(udp(PBX_A), ok.as_bytes(), |_| None).unwrap();
    assert_eq!(back.to, tls);
    // A PBX's INVITE follows the flow in the Path to the TLS connection,
    // and the edge's Via on it says TLS.
    let invite = "INVITE sip:1001@192.168.1.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKp1\r\nRoute: <sip:127.0.0.1:5060;lr;rs-flow=tls~127.0.0.10~5070>\r\nFrom: <sip:1002@pbx.example.com>;tag=b\r\nTo: <sip:1001@pbx.example.com>\r\nCall-ID: call-3\r\nCSeq: 1 INVITE\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n";
    let out = r.handle(udp(PBX_A), invite.as_bytes(), |_| None).unwrap();
    assert_eq!(out.to, tls);
    assert!(text(&out).starts_with(
        "INVITE sip:1001@192.168.1.10:5070 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5060;branch="
    ));
}
