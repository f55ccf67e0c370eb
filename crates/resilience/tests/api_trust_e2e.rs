//! End-to-end: the node API against strangers. Idle connections cannot
//! stop a failover, a crowd of history reads cannot grow the node, and a
//! foreign `Host:` (DNS rebinding) is refused. Real processes on loopback;
//! the nodes' API ports come from the OS (port 0, read back from the log).

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Raise this process's soft descriptor limit to its hard one: the test
/// itself holds thousands of sockets.
fn raise_own_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = r.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
    }
    r.rlim_cur
}

/// Start node `i` with its API on an OS-chosen port (and at most `nofile`
/// descriptors when given); its `Spec.api` is then the port it got.
fn start_node(p: &mut Pair, i: usize, nofile: Option<u64>) {
    p.specs[i].api = 0;
    let extra = p.specs[i].extra.clone();
    p.set_extra(i, extra);
    let log = p.dir.path(&format!("{}.log", p.specs[i].name));
    let out = append_log(&log);
    // Its heartbeat socket handed over; its API binds port 0 itself.
    let mut cmd = p.node_command(i, bin(), &p.config_path(i));
    cmd.current_dir(&p.dir.0)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    if let Some(n) = nofile {
        // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let r = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    p.nodes[i] = Some(Proc::from_child(
        &p.specs[i].name,
        cmd.spawn().expect("spawn"),
    ));
    let mut port = None;
    assert!(
        wait_until(secs(15), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            port = text.get(before..).and_then(|t| {
                let at = t.find("API on http://127.0.0.1:")? + "API on http://127.0.0.1:".len();
                let digits: String = t[at..].chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u16>().ok()
            });
            port.is_some()
        }),
        "{} never said where its API is\n{}",
        p.specs[i].name,
        p.logs()
    );
    p.specs[i].api = port.unwrap();
    assert!(
        wait_until(secs(10), || get(&p.url(i, "/api/v1/ha")).is_some()),
        "{} API never answered\n{}",
        p.specs[i].name,
        p.logs()
    );
}

fn api_addr(p: &Pair, i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p.specs[i].api))
}

/// One field of /proc/PID/status, in kB.
fn proc_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Finding: 1,139 idle connections to the Standby's API (1,024 fds) made it
/// fault on the failover ("Too many open files" spawning its services).
#[test]
fn idle_connections_at_1024_fds_do_not_stop_a_failover() {
    let _g = serial();
    let own = raise_own_nofile();
    assert!(own >= 2_200, "this test needs 2,200 descriptors, has {own}");
    let mut p = Pair::new("api-idle", "automatic", "policy = \"manual\"", false);
    start_node(&mut p, MAIN, None);
    start_node(&mut p, STANDBY, Some(1024));
    assert!(
        wait_until(secs(10), || p.marker(MAIN) && p.active(MAIN) == Some(true)),
        "main never became active\n{}",
        p.logs()
    );
    assert!(
        wait_until(secs(10), || p.status(STANDBY)["peer"]["active"] == true),
        "standby never heard the active main\n{}",
        p.logs()
    );
    let standby_pid = p.nodes[STANDBY].as_ref().unwrap().pid();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let conns = idle_connections(&rt, api_addr(&p, STANDBY), 2_000);
    let held = fds(standby_pid);
    eprintln!(
        "2,000 idle connections tried, {} connected; the standby holds {held} descriptors (limit 1,024)",
        conns.len()
    );
    assert!(!p.marker(STANDBY), "standby started services\n{}", p.logs());

    let t0 = Instant::now();
    p.kill(MAIN);
    let up = wait_until(secs(15), || p.marker(STANDBY));
    let took = t0.elapsed();
    assert!(
        up,
        "the standby never started its services with idle connections open\n{}",
        p.logs()
    );
    eprintln!("SIGKILL of the main -> standby services started in {took:?} (failover_after {FAILOVER_MS} ms), idle connections still open");
    // The API still answers others while a stranger holds its slots.
    assert!(
        wait_until(secs(10), || p.running(STANDBY)),
        "standby runs its services but its API does not say Active\n{}",
        p.logs()
    );
    let st = p.status(STANDBY);
    assert_eq!(st["node"]["faulted"], false, "standby faulted: {st}");
    let logs = p.logs();
    assert!(
        !logs.contains("Too many open files"),
        "descriptors ran out:\n{logs}"
    );
    drop(conns);
}

/// Finding: 32 parallel `GET /api/v1/events?limit=10000` grew the node
/// from 13 to 78 MB.
#[test]
fn a_crowd_of_history_reads_gets_pages_and_does_not_grow_the_node() {
    let _g = serial();
    let mut p = Pair::new("api-events", "automatic", "policy = \"manual\"", false);
    // A long history: 12,000 lines of 200 bytes, written while the node is down.
    start_node(&mut p, MAIN, None);
    p.kill(MAIN);
    {
        let db = p.dir.path("state-pbx-main/state.db");
        let mut c = rusqlite::Connection::open(&db).expect("state database");
        let tx = c.transaction().unwrap();
        let text = "x".repeat(200);
        for i in 0..12_000 {
            tx.execute(
                "INSERT INTO events (at_ms, kind, text) VALUES (?1, 'status', ?2)",
                rusqlite::params![1_700_000_000_000i64 + i, format!("{i} {text}")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    start_node(&mut p, MAIN, None);
    let pid = p.nodes[MAIN].as_ref().unwrap().pid();
    // Settle: the node has started and answered once.
    assert!(get(&p.url(MAIN, "/api/v1/events?limit=5")).is_some());
    let rss_before = proc_kb(pid, "VmRSS");

    let url = p.url(MAIN, "/api/v1/events?limit=10000");
    let sizes: Vec<(usize, Value)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..32)
            .map(|_| {
                let url = url.clone();
                s.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(secs(60)))
                        .build()
                        .into();
                    let mut r = agent.get(&url).call().expect("events");
                    assert_eq!(r.status().as_u16(), 200);
                    let doc: Value = r
                        .body_mut()
                        .with_config()
                        .limit(64 * 1024 * 1024)
                        .read_json()
                        .unwrap();
                    let n = doc["events"].as_array().map_or(0, Vec::len);
                    (n, doc["next_before"].clone())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (rss_after, peak) = (proc_kb(pid, "VmRSS"), proc_kb(pid, "VmHWM"));
    eprintln!(
        "32 x events?limit=10000: pages of {:?} events; node RSS {rss_before} kB before, {rss_after} kB after, peak {peak} kB",
        sizes.iter().map(|s| s.0).max()
    );
    for (n, next) in &sizes {
        assert_eq!(*n, 500, "a page is at most 500 events");
        assert!(next.as_i64().is_some(), "a full page gives the next cursor");
    }
    let grew = peak.saturating_sub(rss_before);
    assert!(
        grew < 20 * 1024,
        "the node grew by {grew} kB under 32 history reads (bound 20 MB)"
    );

    // The pages follow one another, and the CLI still reads past a page.
    let first = get(&p.url(MAIN, "/api/v1/events?limit=3")).unwrap();
    let ids: Vec<i64> = first["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    let next = first["next_before"].as_i64().unwrap();
    assert_eq!(next, ids[2]);
    let second = get(&p.url(MAIN, &format!("/api/v1/events?limit=3&before={next}"))).unwrap();
    let first_of_second = second["events"][0]["id"].as_i64().unwrap();
    assert!(first_of_second < next, "{first_of_second} follows {next}");
    let api = p.url(MAIN, "");
    let (code, out, err) = cli(&["events", "--api", &api, "--limit", "1200", "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["events"].as_array().unwrap().len(), 1200);
}

/// One raw HTTP/1.1 GET with the given `Host:`: (status, body).
fn get_with_host(to: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// Finding: the API answered any `Host:`, so a hostile page could read it
/// through DNS rebinding.
#[test]
fn a_foreign_host_is_refused_and_the_nodes_names_are_served() {
    let _g = serial();
    let mut p = Pair::new("api-host", "automatic", "policy = \"manual\"", false);
    p.set_extra(MAIN, "hosts = [\"pbx1.example.test\"]\n".into());
    start_node(&mut p, MAIN, None);
    let to = api_addr(&p, MAIN);
    let port = p.specs[MAIN].api;
    for path in ["/api/v1/status", "/api/v1/events", "/"] {
        let (code, body) = get_with_host(to, "evil.example", path);
        assert_eq!(code, 421, "{path} with Host: evil.example: {code} {body}");
        assert!(
            body.contains("evil.example") && body.contains("hosts"),
            "the refusal says why and what to configure: {body}"
        );
        let (code, _) = get_with_host(to, &format!("evil.example:{port}"), path);
        assert_eq!(code, 421, "{path} with Host: evil.example:{port}");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_owned(),
        format!("localhost:{port}"),
        format!("pbx1.example.test:{port}"),
        "PBX1.example.test".to_owned(),
        format!("pbx-main:{port}"),
    ] {
        let (code, body) = get_with_host(to, &host, "/api/v1/status");
        assert_eq!(code, 200, "Host: {host}: {code} {body}");
        assert!(body.contains("\"node\""), "Host: {host}: {body}");
    }
    // The CLI (IP literal) still reads the node.
    let (code, _, err) = cli(&["status", "--api", &p.url(MAIN, "")]);
    assert_eq!(code, 0, "{err}");
}

/// A connection that sends half a request head and then nothing is closed
/// by the node (header/idle deadline), not held for ever.
#[test]
fn a_silent_connection_is_closed() {
    let _g = serial();
    let mut p = Pair::new("api-silent", "automatic", "policy = \"manual\"", false);
    start_node(&mut p, MAIN, None);
    let mut s = TcpStream::connect(api_addr(&p, MAIN)).unwrap();
    // Far above the node's deadline: this read ends because the node closed.
    s.set_read_timeout(Some(secs(60))).unwrap();
    s.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let r = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(
        r.is_ok(),
        "the node kept a silent connection open for {:?}: {r:?}",
        t0.elapsed()
    );
    assert!(
        !text.contains("\"node\""),
        "half a request was answered: {text}"
    );
    eprintln!("a silent connection was closed after {:?}", t0.elapsed());
    // And a kept-alive connection that goes quiet after a request, too.
    let mut s = TcpStream::connect(api_addr(&p, MAIN)).unwrap();
    s.set_read_timeout(Some(secs(60))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let r = s.read_to_end(&mut buf);
    assert!(
        r.is_ok(),
        "the node kept an idle keep-alive connection open for {:?}: {r:?}",
        t0.elapsed()
    );
    assert!(String::from_utf8_lossy(&buf).contains("ok"));
    eprintln!(
        "an idle keep-alive connection was closed after {:?}",
        t0.elapsed()
    );
}
