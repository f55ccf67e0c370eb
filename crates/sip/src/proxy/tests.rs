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

/// The `rs-flow` the test relay writes for the phone: in a Path
/// (`call_id` None) or a Record-Route.
fn sealed(call_id: Option<&str>) -> String {
    relay().seal_flow(udp(PHONE), call_id)
}

fn tls_sealed(r: &Relay) -> String {
    let tls = Flow {
        transport: Transport::Tls,
        addr: PHONE.parse().unwrap(),
    };
    r.seal_flow(tls, None)
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

fn text(s: &Outgoing) -> String {
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
        format!("Path: <sip:127.0.0.1:5060;lr;rs-flow={}>", sealed(None))
    );
    assert!(sealed(None).starts_with("udp~127.0.0.10~5070~p"));
    assert!(t.contains("Via: SIP/2.0/UDP 192.168.1.10:5070;branch=z9hG4bKr1;received=127.0.0.10;rport=5070\r\n"), "{t}");
    assert!(t.contains("Max-Forwards: 69\r\n"));
    assert!(t.ends_with("Content-Length: 0\r\n\r\n"));
    assert_eq!(
        out.notes,
        [Note::Register {
            aor: "sip:1001@pbx.example.com".into(),
            from: udp(PHONE),
            to: udp(PBX_A),
            call_id: "reg-1".into(),
            requested: Some(3600),
            template: Some(
                "sip:pbx.example.com\n<sip:1001@pbx.example.com>\n<sip:1001@pbx.example.com>;tag=a\n<sip:1001@192.168.1.10:5070>\nudp~127.0.0.10~5070".into()
            ),
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
    let invite = format!("INVITE sip:1001@192.168.1.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKp1\r\nRoute: <sip:127.0.0.1:5060;lr;rs-flow={}>\r\nRecord-Route: <sip:127.0.0.2;lr>\r\nFrom: <sip:1002@pbx.example.com>;tag=b\r\nTo: <sip:1001@pbx.example.com>\r\nCall-ID: call-2\r\nCSeq: 1 INVITE\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n", sealed(None));
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
    assert!(t.contains(&format!(
        "Record-Route: <sip:127.0.0.1:5060;lr;rs-flow={}>\r\n",
        sealed(Some("call-2"))
    )));
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
    let bye = format!("BYE sip:1002@127.0.0.3:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.10:5070;branch=z9hG4bKb1\r\nRoute: <sip:127.0.0.1:5060;lr;rs-flow={}>, <sip:127.0.0.3;lr>\r\nFrom: <sip:1001@pbx.example.com>;tag=a\r\nTo: <sip:1002@pbx.example.com>;tag=z\r\nCall-ID: call-3\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n", sealed(Some("call-3")));
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
    // No PBX to serve the phone: a 503 that says when to try again, but
    // nothing for an ACK.
    let out = r
        .handle(udp(PHONE), register("z9hG4bKn").as_bytes(), |_| None)
        .unwrap();
    assert!(out.generated);
    assert_eq!(out.to, udp(PHONE));
    let t = text(&out);
    assert!(t.starts_with("SIP/2.0 503 Service Unavailable\r\n"), "{t}");
    assert!(t.contains("\r\nRetry-After: 5\r\n"), "{t}");
    let r9 = relay().with_retry_after(9);
    let t = text(
        &r9.handle(udp(PHONE), register("z9hG4bKn").as_bytes(), |_| None)
            .unwrap(),
    );
    assert!(t.contains("\r\nRetry-After: 9\r\n"), "{t}");
    let ack = register("z9hG4bKn")
        .replace("REGISTER sip", "ACK sip")
        .replace("1 REGISTER", "1 ACK");
    assert_eq!(
        r.handle(udp(PHONE), ack.as_bytes(), |_| None),
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
        Err(Dropped::ForgedBranch)
    );
    // A phone answering a PBX's request: the response goes to the PBX, and
    // teaches the router nothing.
    let id = "0123456789abcdef0123";
    let mac = r.branch_mac(id, "", Some(udp(PBX_A)));
    let answer = forged
        .replace("10.9.9.9:161", "127.0.0.2:5060")
        .replace("z9hG4bKx", &format!("z9hG4bK-rs-{id}-{mac}"));
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
    let invite = format!("INVITE sip:1001@192.168.1.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKp9\r\nRoute: <sip:127.0.0.1:5060;lr;rs-flow={}>, <sip:203.0.113.5:53;lr>\r\nFrom: <sip:1002@pbx>;tag=b\r\nTo: <sip:1001@pbx>\r\nCall-ID: c9\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n", sealed(None));
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
fn a_route_preloaded_by_a_phone_using_the_edge_as_outbound_proxy_is_routed_as_new() {
    // RFC 3261 §16.4: the phone's REGISTER names the domain, its Route the
    // edge (by address, or by a configured name), with no flow.
    for route in [
        "<sip:127.0.0.1:5060;lr>",
        "<sip:edge.example.com;lr>",
        "<sip:EDGE.example.com:5060;lr;transport=udp>",
    ] {
        let raw = register("z9hG4bKo1").replace(
            "Max-Forwards: 70\r\n",
            &format!("Max-Forwards: 70\r\nRoute: {route}\r\n"),
        );
        let r = relay().with_names(vec!["edge.example.com".into()]);
        let out = r.handle(udp(PHONE), raw.as_bytes(), to_pbx_a).unwrap();
        assert_eq!(out.to, udp(PBX_A), "{route}");
        let t = text(&out);
        assert!(!t.contains("\r\nRoute:"), "our Route comes off: {t}");
        assert!(
            t.contains("\r\nPath: <sip:127.0.0.1:5060;lr;rs-flow="),
            "{t}"
        );
        assert!(matches!(out.notes[..], [Note::Register { .. }]));
    }
    // A name the edge was not given is someone else: not an open relay.
    let raw = register("z9hG4bKo2").replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRoute: <sip:other.example.com;lr>\r\n",
    );
    assert_eq!(
        relay().handle(udp(PHONE), raw.as_bytes(), to_pbx_a),
        Err(Dropped::NoRoute)
    );
    // An R-URI that is a PBX's contact keeps the request on that PBX.
    let raw = register("z9hG4bKo3")
        .replace(
            "REGISTER sip:pbx.example.com",
            "REGISTER sip:127.0.0.3:5060",
        )
        .replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nRoute: <sip:127.0.0.1:5060;lr>\r\n",
        );
    let out = relay()
        .handle(udp(PHONE), raw.as_bytes(), |_| panic!("not routed as new"))
        .unwrap();
    assert_eq!(out.to, udp(PBX_B));
}

#[test]
fn a_response_is_relayed_only_where_the_edge_sent_the_request_from() {
    let r = relay();
    let fwd = text(
        &r.handle(udp(PHONE), register("z9hG4bKs1").as_bytes(), to_pbx_a)
            .unwrap(),
    );
    let vias: Vec<&str> = fwd.lines().filter(|l| l.starts_with("Via:")).collect();
    let ok = |edge_via: &str, next: &str| {
        format!("SIP/2.0 200 OK\r\n{edge_via}\r\n{next}\r\nFrom: <sip:1001@pbx.example.com>;tag=a\r\nTo: <sip:1001@pbx.example.com>;tag=k\r\nCall-ID: reg-1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")
    };
    assert!(r
        .handle(udp(PBX_A), ok(vias[0], vias[1]).as_bytes(), |_| None)
        .is_ok());
    // The edge's real Via, another next hop (a reflection): dropped.
    for victim in [
        "Via: SIP/2.0/UDP 192.168.1.10:5070;branch=z9hG4bKs1;received=127.0.0.99;rport=5070",
        "Via: SIP/2.0/UDP 127.0.0.99:9;branch=z9hG4bKs1",
        "Via: SIP/2.0/UDP 192.168.1.10:5070;branch=z9hG4bKs2;received=127.0.0.10;rport=5070",
        "Via: SIP/2.0/TCP 192.168.1.10:5070;branch=z9hG4bKs1;received=127.0.0.10;rport=5070",
    ] {
        assert_eq!(
            r.handle(udp(PBX_A), ok(vias[0], victim).as_bytes(), |_| None),
            Err(Dropped::ForgedBranch),
            "{victim}"
        );
    }
    // Another key (an edge restarted without a key file) signs otherwise.
    let other = Relay::new(r.me, r.pbxs.clone(), [8; 32]);
    assert_eq!(
        other.handle(udp(PBX_A), ok(vias[0], vias[1]).as_bytes(), |_| None),
        Err(Dropped::ForgedBranch)
    );
    // The same key (a restart with the key file) still relays it.
    let same_key = Relay::new(r.me, r.pbxs.clone(), [7; 32]);
    assert!(same_key
        .handle(udp(PBX_A), ok(vias[0], vias[1]).as_bytes(), |_| None)
        .is_ok());
}

#[test]
fn a_request_from_a_pbx_reaches_a_phone_only_through_a_flow_the_edge_signed() {
    let r = relay();
    let msg = |route: &str| {
        format!("MESSAGE sip:1001@127.0.0.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKm1\r\n{route}From: <sip:x@pbx>;tag=b\r\nTo: <sip:1001@pbx>\r\nCall-ID: m1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n")
    };
    let route = |flow: &str| format!("Route: <sip:127.0.0.1:5060;lr;rs-flow={flow}>\r\n");
    // Signed in a Path: delivered.
    let out = r
        .handle(udp(PBX_A), msg(&route(&sealed(None))).as_bytes(), |_| None)
        .unwrap();
    assert_eq!(out.to, udp(PHONE));
    // Unsigned, signed for another flow, for another dialog, or with the
    // Path's MAC relabelled as a dialog's: dropped.
    let path = sealed(None);
    let relabelled = path.replace("~p", "~d");
    let other_flow = sealed(None).replace("5070~", "5071~");
    for flow in [
        "udp~127.0.0.10~5070".to_owned(),
        other_flow,
        sealed(Some("another-call")),
        relabelled,
        "garbage".to_owned(),
    ] {
        assert_eq!(
            r.handle(udp(PBX_A), msg(&route(&flow)).as_bytes(), |_| None),
            Err(Dropped::ForgedFlow),
            "{flow}"
        );
    }
    // Signed for this dialog: delivered.
    assert!(r
        .handle(
            udp(PBX_A),
            msg(&route(&sealed(Some("m1")))).as_bytes(),
            |_| None
        )
        .is_ok());
    // No Route at all, the R-URI naming the phone: dropped.
    assert_eq!(
        r.handle(udp(PBX_A), msg("").as_bytes(), |_| None),
        Err(Dropped::UnsignedFlow)
    );
    // Max-Forwards 0 from a PBX's address: the 483 goes to that address,
    // whatever the Via says.
    let mf0 = msg("Max-Forwards: 0\r\n").replace("127.0.0.2:5060;branch", "127.0.0.99:9;branch");
    let out = r.handle(udp(PBX_A), mf0.as_bytes(), |_| None).unwrap();
    assert_eq!(out.to, udp(PBX_A));
}

#[test]
fn the_edge_registers_a_phone_from_its_template_and_consumes_the_answer() {
    let r = relay();
    let out = r
        .handle(udp(PHONE), register("z9hG4bKr1").as_bytes(), to_pbx_a)
        .unwrap();
    let Some(Note::Register {
        template: Some(tpl),
        ..
    }) = out.notes.first()
    else {
        panic!("{:?}", out.notes)
    };
    let bytes = r.register(tpl, "rs-x-1", 1200).unwrap();
    let t = String::from_utf8(bytes.clone()).unwrap();
    let msg = Message::parse(&bytes).unwrap();
    assert_eq!(msg.method(), Some("REGISTER"));
    assert!(
        t.starts_with("REGISTER sip:pbx.example.com SIP/2.0\r\n"),
        "{t}"
    );
    assert!(
        t.contains("Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-rs-own-"),
        "{t}"
    );
    assert!(t.contains("To: <sip:1001@pbx.example.com>\r\n"), "{t}");
    assert!(t.contains("From: <sip:1001@pbx.example.com>;tag=rs"), "{t}");
    assert!(
        !t.contains("tag=a"),
        "the phone's From tag is not reused: {t}"
    );
    assert!(
        t.contains("Contact: <sip:1001@192.168.1.10:5070>\r\n"),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "Path: <sip:127.0.0.1:5060;lr;rs-flow={}>\r\n",
            sealed(None)
        )),
        "{t}"
    );
    assert!(t.contains("Call-ID: rs-x-1\r\nCSeq: 1 REGISTER\r\n"), "{t}");
    assert!(t.contains("Expires: 1200\r\n"), "{t}");
    // The PBX's answer: the edge's own, not relayed anywhere.
    let via = t.lines().find(|l| l.starts_with("Via:")).unwrap();
    let ok = format!(
        "SIP/2.0 200 OK\r\n{via}\r\nFrom: <sip:1001@pbx.example.com>;tag=rs1\r\nTo: <sip:1001@pbx.example.com>;tag=k\r\nCall-ID: rs-x-1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(
        r.own_answer(udp(PBX_A), ok.as_bytes()),
        Some(OwnAnswer {
            code: 200,
            call_id: "rs-x-1".into(),
            aor: "sip:1001@pbx.example.com".into()
        })
    );
    assert_eq!(
        r.handle(udp(PBX_A), ok.as_bytes(), |_| None),
        Err(Dropped::NotOurs),
        "never relayed"
    );
    assert_eq!(
        r.own_answer(udp(PHONE), ok.as_bytes()),
        None,
        "only from a PBX"
    );
    // A relayed answer is not the edge's own.
    let vias: Vec<String> = text(&out)
        .lines()
        .filter(|l| l.starts_with("Via:"))
        .map(String::from)
        .collect();
    let relayed = ok.replace(via, &format!("{}\r\n{}", vias[0], vias[1]));
    assert_eq!(r.own_answer(udp(PBX_A), relayed.as_bytes()), None);
    // A forged answer with the edge's own prefix but not its MAC: not ours.
    let forged = ok.replace(
        &via[via.find("branch=").unwrap()..],
        "branch=z9hG4bK-rs-own-0123456789abcdef0123",
    );
    assert_eq!(r.own_answer(udp(PBX_A), forged.as_bytes()), None);
}

#[test]
fn an_unregistration_says_so_and_keeps_no_template() {
    let r = relay();
    let unreg = register("z9hG4bKr2").replace("Expires: 3600", "Expires: 0");
    let out = r.handle(udp(PHONE), unreg.as_bytes(), to_pbx_a).unwrap();
    assert!(
        matches!(
            out.notes.first(),
            Some(Note::Register {
                requested: Some(0),
                template: None,
                ..
            })
        ),
        "{:?}",
        out.notes
    );
    let star = register("z9hG4bKr3")
        .replace("Contact: <sip:1001@192.168.1.10:5070>", "Contact: *")
        .replace("Expires: 3600", "Expires: 0");
    let out = r.handle(udp(PHONE), star.as_bytes(), to_pbx_a).unwrap();
    assert!(
        matches!(
            out.notes.first(),
            Some(Note::Register {
                requested: Some(0),
                template: None,
                ..
            })
        ),
        "{:?}",
        out.notes
    );
    let param = register("z9hG4bKr4").replace(
        "Contact: <sip:1001@192.168.1.10:5070>",
        "Contact: <sip:1001@192.168.1.10:5070>;expires=0",
    );
    let out = r.handle(udp(PHONE), param.as_bytes(), to_pbx_a).unwrap();
    assert!(
        matches!(
            out.notes.first(),
            Some(Note::Register {
                requested: Some(0),
                ..
            })
        ),
        "{:?}",
        out.notes
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
        t.contains(&format!(
            "Path: <sip:127.0.0.1:5060;lr;rs-flow={}>\r\n",
            tls_sealed(&r)
        )),
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
    let invite = format!(
        "INVITE sip:1001@192.168.1.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKp1\r\nRoute: <sip:127.0.0.1:5060;lr;rs-flow={}>\r\nFrom: <sip:1002@pbx.example.com>;tag=b\r\nTo: <sip:1001@pbx.example.com>\r\nCall-ID: call-3\r\nCSeq: 1 INVITE\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n",
        tls_sealed(&r)
    );
    let out = r.handle(udp(PBX_A), invite.as_bytes(), |_| None).unwrap();
    assert_eq!(out.to, tls);
    assert!(text(&out).starts_with(
        "INVITE sip:1001@192.168.1.10:5070 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5060;branch="
    ));
}
