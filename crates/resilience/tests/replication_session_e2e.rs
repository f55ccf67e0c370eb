//! End-to-end: replication sessions that end. A silent client, a link that
//! goes dark mid-push, a frame header announcing 64 MiB and a flood of
//! garbage connections, each against a real Standby on loopback.
//!
//! The replication listeners bind port 0; the tests read the address from
//! the node's log. `read_timeout` is 2 s here, so a stalled session ends
//! quickly; the tests wait on conditions, with generous limits.

mod common;

use common::repl::{main_session, read_frame};
use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const READ_TIMEOUT_S: u64 = 2;

/// A pair with a cluster CA, replicating folder `<name>-etc` as job "etc"
/// with a 2 s read deadline. Nothing started.
fn pair(test: &str) -> Pair {
    let p = Pair::new(test, "automatic", "policy = \"immediate\"", false);
    let pki = p.dir.path("pki").display().to_string();
    for args in [
        vec!["cert", "init", "--dir", &pki],
        vec!["cert", "issue", "pbx-main", "--dir", &pki],
        vec!["cert", "issue", "pbx-standby", "--dir", &pki],
    ] {
        let (code, out, err) = cli(&args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    p
}

/// Write node `i`'s `[replication]` section: listen on port 0, push to `peer`.
fn configure(p: &mut Pair, i: usize, peer: SocketAddr) {
    let name = p.specs[i].name.clone();
    let pki = p.dir.path("pki").display().to_string();
    let folder = p.dir.path(&format!("{name}-etc"));
    std::fs::create_dir_all(&folder).unwrap();
    p.set_extra(
        i,
        format!(
            "\n[replication]\nlisten = \"127.0.0.1:0\"\npeer = \"{peer}\"\nca = \"{pki}/ca.pem\"\n\
             cert = \"{pki}/{name}.crt\"\nkey = \"{pki}/{name}.key\"\n\
             read_timeout = \"{READ_TIMEOUT_S}s\"\n\
             \n[[replication.dir]]\nname = \"etc\"\npath = \"{}\"\n",
            folder.display()
        ),
    );
}

fn log_of(p: &Pair, i: usize) -> String {
    std::fs::read_to_string(p.dir.path(&format!("{}.log", p.specs[i].name))).unwrap_or_default()
}

/// The address node `i`'s replication listener bound, from its log (the
/// last start's line).
fn bound(p: &Pair, i: usize) -> SocketAddr {
    let mut found = None;
    assert!(
        wait_until(secs(20), || {
            found = log_of(p, i)
                .lines()
                .rev()
                .find_map(|l| l.split("accepting pushes on ").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok());
            found.is_some()
        }),
        "no replication listener\n{}",
        p.logs()
    );
    found.unwrap()
}

/// Start the Standby, then the Main pushing to `main_peer(standby address)`;
/// the Standby's replication address.
fn start(p: &mut Pair, main_peer: impl FnOnce(SocketAddr) -> SocketAddr) -> SocketAddr {
    // The Standby pushes nothing (no keep_on_failback): its peer is unused.
    configure(p, STANDBY, "127.0.0.1:9".parse().unwrap());
    p.start(STANDBY);
    let standby = bound(p, STANDBY);
    configure(p, MAIN, main_peer(standby));
    p.start(MAIN);
    assert!(wait_until(secs(20), || p.running(MAIN)), "{}", p.logs());
    standby
}

fn replicate(p: &Pair) -> (i32, String, String) {
    cli(&[
        "replicate",
        "--config",
        p.config_path(MAIN).to_str().unwrap(),
    ])
}

/// Push until one succeeds (the Standby may still be handing back after
/// the start); the time it took, or a failure with the last answer.
fn push_until_ok(p: &Pair, within: Duration) -> Duration {
    let t0 = Instant::now();
    let mut last = String::new();
    let ok = wait_until(within, || {
        let (code, out, err) = replicate(p);
        last = format!("{code}: {out}{err}");
        if code != 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        code == 0
    });
    assert!(
        ok,
        "no push succeeded in {within:?}; last: {last}\n{}",
        p.logs()
    );
    t0.elapsed()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_client_that_says_hello_and_goes_silent_does_not_block_replication() {
    let _g = serial();
    let mut p = pair("sess-silent");
    let src = p.dir.path("pbx-main-etc");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.conf"), b"one").unwrap();
    let standby = start(&mut p, |s| s);
    push_until_ok(&p, secs(60));

    let rt = runtime();
    // A holder of the Main's certificate opens a session and says nothing more.
    let mut silent = rt.block_on(async {
        let mut s = main_session(standby, &p.dir.path("pki")).await.unwrap();
        let (kind, _) = read_frame(&mut s).await.unwrap();
        assert_eq!(kind, 2, "expected the manifest");
        s
    });
    std::fs::write(src.join("b.conf"), b"two").unwrap();
    let took = push_until_ok(&p, secs(60));
    println!("push through after a silent session: {took:?} (read deadline {READ_TIMEOUT_S}s)");
    assert_eq!(
        std::fs::read(p.dir.path("pbx-standby-etc/b.conf")).unwrap(),
        b"two"
    );
    // The silent client was let go, and the event says why.
    rt.block_on(async {
        let end = tokio::time::timeout(secs(30), read_frame(&mut silent)).await;
        assert!(
            matches!(end, Ok(Err(_)) | Ok(Ok((8, _)))),
            "the silent session is still open: {end:?}"
        );
    });
    let log = log_of(&p, STANDBY);
    assert!(
        log.contains("replication etc: session ended") && log.contains("read deadline"),
        "{log}"
    );
}

/// A TCP proxy between the Main and the Standby that forwards until
/// `after` bytes went Main → Standby, then black-holes both ways: it stops
/// reading and writing and holds every socket open (no FIN, no RST).
struct Proxy {
    addr: SocketAddr,
    dark: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(to: SocketAddr, after: u64) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let dark = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (d, st) = (dark.clone(), stop.clone());
        std::thread::spawn(move || {
            let held = Arc::new(Mutex::new(Vec::new()));
            while !st.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = std::net::TcpStream::connect(to) else {
                    continue;
                };
                for (from, into, count) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        true,
                    ),
                    (
                        server.try_clone().unwrap(),
                        client.try_clone().unwrap(),
                        false,
                    ),
                ] {
                    let (d, st, sent) = (d.clone(), st.clone(), sent.clone());
                    std::thread::spawn(move || {
                        pump(from, into, count.then_some((sent, after)), d, st)
                    });
                }
                held.lock().unwrap().push((client, server));
            }
        });
        Proxy { addr, dark, stop }
    }
}

fn pump(
    mut from: std::net::TcpStream,
    mut into: std::net::TcpStream,
    count: Option<(Arc<AtomicU64>, u64)>,
    dark: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        if dark.load(Ordering::Relaxed) {
            // Black hole: read nothing, write nothing, close nothing.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        if dark.load(Ordering::Relaxed) || into.write_all(&buf[..n]).is_err() {
            continue;
        }
        if let Some((sent, after)) = &count {
            if sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64 >= *after {
                dark.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_link_black_holed_mid_push_then_a_killed_main_leaves_replication_working() {
    let _g = serial();
    let mut p = pair("sess-blackhole");
    let src = p.dir.path("pbx-main-etc");
    std::fs::create_dir_all(&src).unwrap();
    let big: Vec<u8> = (0..(64u32 << 20) / 4)
        .flat_map(|i| i.wrapping_mul(2654435761).to_le_bytes())
        .collect();
    std::fs::write(src.join("big.bin"), &big).unwrap();
    let mut proxy = None;
    let standby = start(&mut p, |s| {
        let px = Proxy::start(s, 8 << 20);
        let a = px.addr;
        proxy = Some(px);
        a
    });
    let proxy = proxy.unwrap();
    let cfg = p.config_path(MAIN).display().to_string();
    // The push runs into the black hole; it ends when the Main is killed.
    let push = std::thread::spawn(move || cli(&["replicate", "--config", &cfg]));
    assert!(
        wait_until(secs(60), || proxy.dark.load(Ordering::Relaxed)),
        "the push never reached the proxy's cut\n{}",
        p.logs()
    );
    // The Main loses power: no FIN, no RST on the Standby's side.
    p.kill(MAIN);
    let killed = Instant::now();
    let _ = push.join();
    // Back up, pushing to the Standby directly.
    configure(&mut p, MAIN, standby);
    p.start(MAIN);
    let took = push_until_ok(&p, secs(120));
    println!(
        "replication working again {:?} after the Main was killed (push itself {took:?}; read deadline {READ_TIMEOUT_S}s)",
        killed.elapsed()
    );
    assert!(std::fs::read(p.dir.path("pbx-standby-etc/big.bin")).unwrap() == big);
    let log = log_of(&p, STANDBY);
    assert!(
        log.contains("replication etc: session ended") && log.contains("read deadline"),
        "{log}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_data_header_announcing_64_mib_allocates_nothing_and_is_refused() {
    let _g = serial();
    let mut p = pair("sess-bigframe");
    let standby = start(&mut p, |s| s);
    push_until_ok(&p, secs(60));
    let pid = p.nodes[STANDBY].as_ref().unwrap().pid();
    let rt = runtime();
    let before = rss_kib(pid);
    let reply = rt.block_on(async {
        let mut s = main_session(standby, &p.dir.path("pki")).await.unwrap();
        let (kind, _) = read_frame(&mut s).await.unwrap();
        assert_eq!(kind, 2, "expected the manifest");
        // A Data header for 64 MiB, and not one byte of it.
        s.write_all(&[4, 0x04, 0, 0, 0]).await.unwrap();
        s.flush().await.unwrap();
        let reply = tokio::time::timeout(secs(10), read_frame(&mut s)).await;
        // Measured while the session is still open on the old behaviour.
        (reply, rss_kib(pid))
    });
    let (reply, after) = reply;
    println!("standby RSS {before} KiB before, {after} KiB after the 64 MiB header");
    assert!(
        after < before + 16 * 1024,
        "the Standby grew from {before} to {after} KiB"
    );
    match reply {
        Ok(Ok((8, body))) => {
            let why = String::from_utf8_lossy(&body);
            assert!(why.contains("over the") && why.contains("limit"), "{why}");
        }
        other => panic!("expected an error frame refusing the header, got {other:?}"),
    }
}

#[test]
fn a_flood_of_garbage_connections_writes_a_bounded_log_and_is_counted() {
    let _g = serial();
    let mut p = pair("sess-flood");
    let standby = start(&mut p, |s| s);
    let log_path = p.dir.path("pbx-standby.log");
    let log_before = std::fs::metadata(&log_path).unwrap().len();
    // Two clients, each one connection at a time, for 5 s: garbage, then
    // wait for the Standby to close.
    let end = Instant::now() + secs(5);
    let made = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let made = made.clone();
            std::thread::spawn(move || {
                let mut junk = [0u8; 200];
                let mut i = 0u32;
                while Instant::now() < end {
                    i += 1;
                    for (k, b) in junk.iter_mut().enumerate() {
                        *b = (i as usize * 31 + k * 7 + w) as u8;
                    }
                    let Ok(mut c) = std::net::TcpStream::connect(standby) else {
                        continue;
                    };
                    made.fetch_add(1, Ordering::Relaxed);
                    let _ = c.write_all(&junk);
                    let _ = c.set_read_timeout(Some(secs(5)));
                    let mut sink = [0u8; 256];
                    while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let made = made.load(Ordering::Relaxed);
    let refused = |p: &Pair| {
        p.status(STANDBY)["replication"]["refused"]["total"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        wait_until(secs(30), || refused(&p) >= made),
        "{made} connections made, {} counted: {:#}",
        refused(&p),
        p.status(STANDBY)["replication"]
    );
    // The interval's summary line comes once the 10 s interval is over.
    assert!(
        wait_until(secs(30), || log_of(&p, STANDBY)
            .contains("connections refused in the last")),
        "no summary line\n{}",
        log_of(&p, STANDBY)
    );
    let grown = std::fs::metadata(&log_path).unwrap().len() - log_before;
    let st = p.status(STANDBY);
    println!(
        "{made} garbage connections in 5 s: log grew {grown} bytes; counted {}",
        st["replication"]["refused"]
    );
    assert!(
        grown < 20_000,
        "the log grew {grown} bytes\n{}",
        log_of(&p, STANDBY)
    );
    assert!(
        st["replication"]["refused"]["by_reason"]["tls handshake failed"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{:#}",
        st["replication"]
    );
    assert!(made > 50, "only {made} connections made");
}
