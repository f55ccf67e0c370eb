//! End-to-end: the edge's web side against strangers and failures. Idle
//! connections at 1,024 descriptors stop neither a request nor the probes;
//! slow and idle clients are cut while an open WebSocket is not; HTTPS and
//! WSS with a certificate reloaded in place (curl, a rustls client); a dead
//! web server behind a live PBX is skipped (passively, after `max_fails`,
//! and by its health URL) and used again once back. Kamailio plays the
//! PBXs, fixtures/web_stub.py their web servers.

mod common;

use common::edge::*;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn set_own_nofile(soft: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        let before = r.rlim_cur;
        r.rlim_cur = soft.min(r.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        before
    }
}

fn hard_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a plain syscall on a struct we own.
    unsafe { assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0) };
    r.rlim_max
}

/// Whether the peer closes `s` within `limit` (reading what comes).
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(ms(100))).unwrap();
    let end = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Read an HTTP head (up to the blank line) byte by byte.
fn read_head(s: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

const WS_UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: pbx\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A masked WebSocket text frame (RFC 6455 §5.2) carrying `text` (< 126 bytes).
fn ws_frame(text: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A WebSocket through the edge's plain listener: after the 101, what is
/// written comes back prefixed by the serving stub's name.
fn open_ws(port: u16) -> TcpStream {
    let mut ws = TcpStream::connect(("127.0.0.1", port)).unwrap();
    ws.set_read_timeout(Some(secs(5))).unwrap();
    ws.write_all(WS_UPGRADE).unwrap();
    let head = read_head(&mut ws);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws
}

fn echo(ws: &mut (impl Read + Write), who: &str) {
    let frame = ws_frame(b"hello");
    ws.write_all(&frame).unwrap();
    let mut want = format!("{who}:").into_bytes();
    want.extend_from_slice(&frame);
    let mut got = vec![0u8; want.len()];
    ws.read_exact(&mut got).unwrap();
    assert_eq!(got, want);
}

#[test]
fn idle_connections_at_1024_descriptors_stop_neither_a_request_nor_the_probes() {
    let _g = serial();
    // The edge (and its PBXs) start under the systemd default of 1,024
    // descriptors; this process then takes its own limit back up, for
    // the flood it holds.
    let before = set_own_nofile(1024);
    let lab = Lab::start_with("edge-web-flood", true);
    set_own_nofile(before.max(hard_nofile().min(65_536)));
    let port = lab.http.as_ref().unwrap().0;
    assert!(
        wait_until(secs(5), || http_get(port, "/cc") == (200, "main".into())),
        "{}",
        lab.logs()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let flood = idle_connections(&rt, SocketAddr::from(([127, 0, 0, 1], port)), 1100);
    assert!(flood.len() > 1000, "only {} connected", flood.len());
    let pid = lab.edge.pid();
    let t = Instant::now();
    assert_eq!(
        http_get(port, "/cc/agents"),
        (200, "main".into()),
        "a request during the flood\n{}",
        lab.logs()
    );
    assert!(t.elapsed() < secs(2), "took {:?}", t.elapsed());
    eprintln!(
        "{} idle connections: a request answered in {:?}, the edge holds {} descriptors",
        flood.len(),
        t.elapsed(),
        fds(pid)
    );
    assert!(fds(pid) < 900, "the edge holds {} descriptors", fds(pid));
    assert_eq!(lab.pbx_up(), [true, true], "{}", lab.logs());
    // Sources that sent nothing are cut at the header deadline (10 s).
    assert!(
        wait_until(secs(20), || fds(pid) < 100),
        "the edge still holds {} descriptors",
        fds(pid)
    );
    let metrics = get_text(&format!("http://127.0.0.1:{}/metrics", lab.api));
    assert!(
        metrics.contains("resilience_edge_web_refused_total{reason=\"over_peer_cap\"}"),
        "{metrics}"
    );
    drop(flood);
}

#[test]
fn slow_headers_and_idle_keepalives_are_cut_an_open_websocket_is_not() {
    let _g = serial();
    let lab = Lab::start_opts(
        "edge-web-deadlines",
        LabOpts {
            web: true,
            tail: "[web]\nheader_timeout = \"1s\"\nwebsocket_idle = \"3s\"\n".into(),
            ..LabOpts::default()
        },
    );
    let port = lab.http.as_ref().unwrap().0;
    assert!(wait_until(secs(5), || http_get(port, "/") == (200, "main".into())));

    // A head sent a header line every 200 ms never completes: cut.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(ms(200))).unwrap();
    slow.write_all(b"GET /cc HTTP/1.1\r\nHost: edge\r\n")
        .unwrap();
    let t = Instant::now();
    let mut cut = false;
    let mut buf = [0u8; 512];
    while t.elapsed() < secs(8) {
        if slow.write_all(b"X-Slow: a\r\n").is_err() {
            cut = true;
            break;
        }
        match slow.read(&mut buf) {
            Ok(0) => {
                cut = true;
                break;
            }
            Ok(n) => assert!(
                !String::from_utf8_lossy(&buf[..n]).contains("200 OK"),
                "a slow head was served"
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "a slow head was still open after {:?}", t.elapsed());
    assert!(t.elapsed() < secs(4), "cut after {:?}", t.elapsed());

    // A kept-alive connection that asks for nothing more: closed.
    let mut ka = TcpStream::connect(("127.0.0.1", port)).unwrap();
    ka.set_read_timeout(Some(secs(5))).unwrap();
    ka.write_all(b"GET /a HTTP/1.1\r\nHost: edge\r\n\r\n")
        .unwrap();
    let head = read_head(&mut ka);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "the edge should keep the connection: {head}"
    );
    let mut body = [0u8; 4];
    ka.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"main");
    assert!(
        closed_within(&mut ka, secs(4)),
        "an idle keep-alive stayed open"
    );

    // A WebSocket outlives the HTTP deadlines...
    let mut ws = open_ws(port);
    std::thread::sleep(ms(2000));
    echo(&mut ws, "main");
    // ...but not its own idle limit.
    let quiet = Instant::now();
    assert!(
        closed_within(&mut ws, secs(8)),
        "an idle WebSocket stayed open"
    );
    assert!(
        quiet.elapsed() >= ms(2500),
        "closed after {:?}, before its 3 s idle limit",
        quiet.elapsed()
    );
    // Counted once the proxy's task has closed it, a moment after the
    // client sees the close.
    let mut metrics = String::new();
    assert!(
        wait_until(secs(5), || {
            metrics = get_text(&format!("http://127.0.0.1:{}/metrics", lab.api));
            metrics.contains("resilience_edge_websockets_idle_closed_total 1")
        }),
        "{metrics}"
    );
}

/// Send `head` (and `body`) on a new connection; the status line of the
/// answer, and how long it took.
fn raw_status(port: u16, head: &str, body: &[u8]) -> (String, Duration) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(secs(8))).unwrap();
    let t = Instant::now();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let head = read_head(&mut s);
    (head.lines().next().unwrap_or("").to_owned(), t.elapsed())
}

#[test]
fn request_bodies_have_a_deadline_and_a_size_and_do_not_count_against_the_server() {
    let _g = serial();
    // One failure would take the Main's web server out: a client's
    // fault must not count as one.
    let lab = Lab::start_opts(
        "edge-web-bodies",
        LabOpts {
            web: true,
            tail: "[web]\nbody_timeout = \"1s\"\nmax_body = 1000\nmax_fails = 1\n".into(),
            ..LabOpts::default()
        },
    );
    let port = lab.http.as_ref().unwrap().0;
    assert!(wait_until(secs(5), || http_get(port, "/") == (200, "main".into())));
    let post = |len: usize| {
        format!("POST /upload HTTP/1.1\r\nHost: edge\r\nContent-Length: {len}\r\n\r\n")
    };
    // A body that fits, whole: relayed.
    let (status, _) = raw_status(port, &post(500), &[b'x'; 500]);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // Declared too large: refused before anything is relayed.
    let (status, _) = raw_status(port, &post(2000), b"");
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    // Ten bytes of a hundred, then nothing: cut at the body deadline.
    let (status, took) = raw_status(port, &post(100), &[b'x'; 10]);
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert!(took < secs(4), "answered after {took:?}");
    // The Main's web server is still the one serving.
    assert_eq!(http_get(port, "/cc"), (200, "main".into()));
    let metrics = get_text(&format!("http://127.0.0.1:{}/metrics", lab.api));
    for want in [
        "resilience_edge_web_refused_total{reason=\"bad_body\"} 2",
        "resilience_edge_web_requests_total{pbx=\"main\",outcome=\"client_error\"} 1",
    ] {
        assert!(metrics.contains(want), "{want}\n{metrics}");
    }
    assert!(
        !metrics.contains("resilience_edge_web_upstream_disabled_total"),
        "{metrics}"
    );
}

/// A CA and a certificate it signed for `localhost` and 127.0.0.1:
/// (CA PEM, certificate PEM, key PEM).
fn ca_and_leaf(ca_name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), leaf.pem(), key.serialize_pem())
}

/// `curl --cacert CA https://localhost:PORT/PATH`: (exit code, body).
fn curl(ca: &Path, port: u16, path: &str) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("curl (Debian package curl) must be installed: scripts/test.sh installs it");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A WSS connection to the edge through rustls, trusting `ca_pem` only.
fn open_wss(ca_pem: &str, port: u16) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(secs(5))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(WS_UPGRADE).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

#[test]
fn https_and_wss_with_a_certificate_reloaded_in_place() {
    let _g = serial();
    let certs = TestDir::new("edge-web-certs");
    let (ca1, cert1, key1) = ca_and_leaf("first CA");
    let (ca_path, ca2_path) = (certs.path("ca1.pem"), certs.path("ca2.pem"));
    let (cert_path, key_path) = (certs.path("cert.pem"), certs.path("key.pem"));
    std::fs::write(&ca_path, &ca1).unwrap();
    std::fs::write(&cert_path, &cert1).unwrap();
    std::fs::write(&key_path, &key1).unwrap();
    let https_sock = Sock::tcp();
    let https = https_sock.port();
    let lab = Lab::start_opts(
        "edge-web-tls",
        LabOpts {
            web: true,
            socks: vec![https_sock],
            edge_extra: format!(
                "https_listen = \"127.0.0.1:{https}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                cert_path.display(),
                key_path.display()
            ),
            ..LabOpts::default()
        },
    );
    assert!(
        wait_until(secs(5), || curl(&ca_path, https, "/cc/agents")
            == (0, "main".into())),
        "{:?}\n{}",
        curl(&ca_path, https, "/cc/agents"),
        lab.logs()
    );
    // Plain HTTP on the TLS port is not served.
    assert_ne!(http_get(https, "/").0, 200);
    let mut wss = open_wss(&ca1, https);
    echo(&mut wss, "main");

    // The certificate is renewed in place: new handshakes get the new one.
    let (ca2, cert2, key2) = ca_and_leaf("second CA");
    std::fs::write(&ca2_path, &ca2).unwrap();
    std::fs::write(&key_path, &key2).unwrap();
    std::fs::write(&cert_path, &cert2).unwrap();
    assert!(
        wait_until(secs(10), || curl(&ca2_path, https, "/").0 == 0),
        "{:?}\n{}",
        curl(&ca2_path, https, "/"),
        lab.logs()
    );
    let (code, out) = curl(&ca_path, https, "/");
    assert_ne!(code, 0, "the old CA still verifies: {out}");
    let mut wss2 = open_wss(&ca2, https);
    echo(&mut wss2, "main");
    // The WebSocket opened before the renewal is still up.
    echo(&mut wss, "main");
}

/// The web servers' sockets of the running tests, bound by [`web_lab`]
/// and held until [`stub`] hands them over.
static WEB_SOCKS: Mutex<Vec<Sock>> = Mutex::new(Vec::new());

/// A web stub on `port`: on the socket [`web_lab`] bound for it, or, for a
/// stub started again after a kill, on the port bound anew (the test's
/// own port, released when the killed stub closed it).
fn stub(dir: &Path, name: &str, port: u16) -> Proc {
    let held = {
        let mut socks = WEB_SOCKS.lock().unwrap_or_else(|e| e.into_inner());
        let i = socks.iter().position(|s| s.port() == port);
        i.map(|i| socks.swap_remove(i))
    };
    let sock = held.unwrap_or_else(|| {
        Sock::Tcp(std::net::TcpListener::bind(("127.0.0.1", port)).expect("the stub's port again"))
    });
    web_stub_on(dir, name, sock)
}

/// A lab whose PBXs' web servers the test runs itself (no `ha_url`: the
/// SIP probes alone say a PBX is up), `main_extra` added to the Main's
/// `[[pbx]]`: (lab, web proxy port, web ports).
fn web_lab(name: &str, main_extra: &str, tail: &str) -> (Lab, u16, [u16; 2]) {
    let http_sock = Sock::tcp();
    let http = http_sock.port();
    let web_socks = [Sock::tcp(), Sock::tcp()];
    let webs = [web_socks[0].port(), web_socks[1].port()];
    WEB_SOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(web_socks);
    let lab = Lab::start_opts(
        name,
        LabOpts {
            socks: vec![http_sock],
            edge_extra: format!("http_listen = \"127.0.0.1:{http}\"\n"),
            pbx_extra: [
                format!("web = \"127.0.0.1:{}\"\n{main_extra}", webs[0]),
                format!("web = \"127.0.0.1:{}\"\n", webs[1]),
            ],
            tail: tail.into(),
            ..LabOpts::default()
        },
    );
    (lab, http, webs)
}

#[test]
fn a_dead_web_server_behind_a_live_pbx_is_skipped_after_max_fails_and_tried_again() {
    let _g = serial();
    let (lab, port, webs) = web_lab(
        "edge-web-passive",
        "",
        "[web]\nmax_fails = 2\nfail_timeout = \"2s\"\n",
    );
    let mut main = stub(&lab.dir.0, "main", webs[0]);
    let _standby = stub(&lab.dir.0, "standby", webs[1]);
    assert_eq!(http_get(port, "/cc"), (200, "main".into()));
    // The Main's web server dies; its PBX answers SIP all along.
    main.kill();
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(http_get(port, "/cc"));
    }
    // Each refused connection is retried on the Standby (nothing reached
    // the Main): users see no error; after max_fails the Main is skipped.
    assert!(
        answers.iter().all(|a| *a == (200, "standby".into())),
        "{answers:?}\n{}",
        lab.logs()
    );
    let metrics = get_text(&format!("http://127.0.0.1:{}/metrics", lab.api));
    for want in [
        "resilience_edge_web_requests_total{pbx=\"main\",outcome=\"failed\"} 2",
        "resilience_edge_web_retried_total{pbx=\"standby\"} 2",
    ] {
        assert!(metrics.contains(want), "{want}\n{metrics}");
    }
    // A request with a body goes to the Standby while the Main is skipped;
    // once fail_timeout has passed it tries the Main again and, having a
    // body, is not sent a second time: a 502, and the Main is skipped anew.
    let post = || {
        raw_status(
            port,
            "POST /form HTTP/1.1\r\nHost: edge\r\nContent-Length: 3\r\n\r\n",
            b"a=1",
        )
        .0
    };
    let mut posts = Vec::new();
    assert!(
        wait_until(secs(5), || {
            posts.push(post());
            posts.last().unwrap().starts_with("HTTP/1.1 502")
        }),
        "{posts:?}"
    );
    assert!(
        posts[..posts.len() - 1]
            .iter()
            .all(|p| p.starts_with("HTTP/1.1 200")),
        "{posts:?}"
    );
    assert_eq!(http_get(port, "/cc"), (200, "standby".into()));
    assert_eq!(lab.pbx_up(), [true, true], "the Main's SIP side is up");
    // Back: after fail_timeout the next request tries it again.
    let _main = stub(&lab.dir.0, "main", webs[0]);
    assert!(
        wait_until(secs(6), || http_get(port, "/cc") == (200, "main".into())),
        "{}",
        lab.logs()
    );
    let metrics = get_text(&format!("http://127.0.0.1:{}/metrics", lab.api));
    for want in [
        "resilience_edge_web_upstream_disabled_total{pbx=\"main\",why=\"max_fails\"} 2",
        "resilience_edge_web_requests_total{pbx=\"standby\",outcome=\"ok\"}",
        "resilience_edge_web_upstream_available{pbx=\"main\"} 1",
    ] {
        assert!(metrics.contains(want), "{want}\n{metrics}");
    }
    let edge = std::fs::read_to_string(lab.dir.path("edge.log")).unwrap();
    assert!(
        edge.contains("web upstream main") && edge.contains("temporarily disabled for 2s"),
        "{edge}"
    );
}

#[test]
fn a_failing_health_url_takes_a_web_server_out_before_any_user_hits_it() {
    let _g = serial();
    let (lab, port, webs) = web_lab("edge-web-active", "web_health = \"/healthz\"\n", "");
    let mut main = stub(&lab.dir.0, "main", webs[0]);
    let _standby = stub(&lab.dir.0, "standby", webs[1]);
    let metrics = || get_text(&format!("http://127.0.0.1:{}/metrics", lab.api));
    let available = "resilience_edge_web_upstream_available{pbx=\"main\"}";
    assert!(wait_until(secs(5), || http_get(port, "/cc")
        == (200, "main".into())
        && metrics().contains(&format!("{available} 1"))));
    main.kill();
    // Checks every 200 ms, down after 2: no user request needed.
    assert!(
        wait_until(secs(5), || metrics().contains(&format!("{available} 0"))),
        "{}\n{}",
        metrics(),
        lab.logs()
    );
    for _ in 0..3 {
        assert_eq!(http_get(port, "/cc"), (200, "standby".into()));
    }
    assert!(
        !metrics().contains("resilience_edge_web_requests_total{pbx=\"main\",outcome=\"failed\"}")
    );
    assert_eq!(lab.pbx_up(), [true, true]);
    let _main = stub(&lab.dir.0, "main", webs[0]);
    assert!(
        wait_until(secs(5), || http_get(port, "/cc") == (200, "main".into())),
        "{}",
        lab.logs()
    );
    assert!(metrics().contains(
        "resilience_edge_web_upstream_disabled_total{pbx=\"main\",why=\"health_check\"}"
    ));
}
