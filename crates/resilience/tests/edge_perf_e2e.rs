//! End-to-end: what keeps the edge's API off the relay's CPU — the phones
//! list at a per-client pace in rows (`[edge] api_rows_per_second`: 429 with
//! Retry-After past it, the token still checked first), and the API served
//! by a thread of its own at a lower scheduling priority than the relay's.
//! Kamailio plays the PBXs (the lab of common/edge.rs).

mod common;

use common::edge::*;
use common::*;
use std::time::{Duration, Instant};

/// (status, Retry-After, body) of a GET of the phones list.
fn list(api: u16, token: Option<&str>) -> (u16, Option<String>, String) {
    let mut req = agent().get(&format!("http://127.0.0.1:{api}/api/v1/phones?limit=10"));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut r = req.call().expect("the edge's API answers");
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = r.body_mut().read_to_string().unwrap_or_default();
    (r.status().as_u16(), retry, body)
}

#[test]
fn the_phones_list_is_paced_per_client_by_rows_and_the_token_still_comes_first() {
    let _g = serial();
    let lab = Lab::start_opts(
        "edge-perf-rows",
        LabOpts {
            edge_extra: "api_rows_per_second = 3\n".into(),
            ..LabOpts::default()
        },
    );
    for user in ["1001", "1002"] {
        let (code, out) = lab.register(user);
        assert_eq!(code, 0, "{out}");
    }
    // Both in the list's copy (the status, unpaced, tells; the list's
    // bucket is untouched so far).
    assert!(
        wait_until(Duration::from_secs(5), || {
            lab.get_auth("/api/v1/status", None).1["table"]["phones"] == 2
        }),
        "{}",
        lab.logs()
    );
    // A page of the 2 phones (3 rows a second, a second's worth at once:
    // 1 left), a second page (served while rows are left: now 1 in debt),
    // then 429 with Retry-After.
    let t0 = Instant::now();
    let first = list(lab.api, Some(EDGE_TOKEN));
    let second = list(lab.api, Some(EDGE_TOKEN));
    let third = list(lab.api, Some(EDGE_TOKEN));
    let took = t0.elapsed();
    assert_eq!(first.0, 200, "{}", first.2);
    assert!(
        first.2.contains("sip:1001@pbx.test") && first.2.contains("sip:1002@pbx.test"),
        "{}",
        first.2
    );
    assert_eq!(second.0, 200, "{}", second.2);
    if took < Duration::from_millis(300) {
        assert_eq!(third.0, 429, "{}", third.2);
        let secs: u64 = third
            .1
            .as_deref()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("429 without a Retry-After in seconds: {:?}", third.1));
        assert!((1..=2).contains(&secs), "{secs}");
        assert!(third.2.contains("api_rows_per_second"), "{}", third.2);
    }
    // Over the pace or not, no token or a wrong one is 401, not 429.
    assert_eq!(list(lab.api, None).0, 401);
    assert_eq!(list(lab.api, Some("wrong-token")).0, 401);
    // The status stays open, unpaced.
    assert!((0..10).all(|_| get_status(lab.api) == 200));
    // Within the time the edge asks for, the list is served again.
    let mut last = String::new();
    let served = wait_until(Duration::from_secs(3), || {
        let (code, _, body) = list(lab.api, Some(EDGE_TOKEN));
        last = body;
        code == 200
    });
    assert!(served, "{last}");
    assert!(last.contains("sip:1001@pbx.test"), "{last}");
}

fn get_status(api: u16) -> u16 {
    agent()
        .get(&format!("http://127.0.0.1:{api}/api/v1/status"))
        .call()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// The nice value of each of `pid`'s threads, by thread name.
fn thread_nices(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let dir = e.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // Fields after the ")" that closes comm: state is the 1st, nice
        // the 17th (proc(5): field 19).
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if let Some(nice) = rest.split_whitespace().nth(16).and_then(|n| n.parse().ok()) {
            out.push((comm.trim().to_string(), nice));
        }
    }
    out
}

#[test]
fn the_api_runs_on_its_own_thread_below_the_relay() {
    let _g = serial();
    let lab = Lab::start("edge-perf-threads");
    let threads = thread_nices(lab.edge.pid());
    let nice_of = |name: &str| {
        threads
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name} thread: {threads:?}"))
    };
    assert_eq!(nice_of("edge-relay"), 0, "{threads:?}");
    assert_eq!(nice_of("edge-api"), 10, "{threads:?}");
    // And that thread serves the API (the token's holder gets the list).
    let (code, _, body) = list(lab.api, Some(EDGE_TOKEN));
    assert_eq!(code, 200, "{body}");
}
