//! The failback data gate (`node/data.rs`) played in the simulator, the
//! invariants checked after every step: the Main asks for the service back
//! only once its kept data is home (or per `on_data_failure`), and the
//! Standby serves all the while.

mod sim;

use resilience_core::node::{DataFailurePolicy, DataGate, FailbackPolicy};
use sim::{secs, Cluster, Timers, MAIN, STANDBY};
use std::time::Duration;

fn timers(on_failure: DataFailurePolicy) -> Timers {
    Timers {
        failback: FailbackPolicy::Immediate,
        drain: None,
        failback_data: Some(DataGate {
            wait: secs(30),
            on_failure,
        }),
        ..Timers::default()
    }
}

/// The Main crashes and comes back while the Standby serves.
fn failed_over(seed: u64, t: Timers, fail_fetches: u32, fetch: Duration) -> Cluster {
    let mut c = Cluster::started(seed, t);
    c.hosts[MAIN].fail_fetches = fail_fetches;
    c.hosts[MAIN].fetch_latency = fetch;
    c.run_for(secs(10)).unwrap();
    c.crash(MAIN);
    c.run_for(secs(10)).unwrap();
    assert!(c.hosts[STANDBY].is_active());
    c.boot(MAIN);
    c
}

#[test]
fn held_copies_keep_the_standby_serving_until_one_succeeds() {
    // Two failed copies, each 2 s; the retry every 2 s (retry_delay).
    let mut c = failed_over(21, timers(DataFailurePolicy::Hold), 2, secs(2));
    let t0 = c.now;
    // While the copies fail, the Standby serves and the Main stays out.
    let moved = c
        .run_until(secs(7), |c| {
            !c.hosts[STANDBY].is_active() || c.hosts[MAIN].is_active()
        })
        .unwrap();
    assert!(
        !moved,
        "failback before the data was home\n{}",
        c.dump_log()
    );
    // The third copy succeeds: failback.
    let ok = c
        .run_until(secs(20), |c| c.hosts[MAIN].is_active())
        .unwrap();
    assert!(ok, "no failback after the copy\n{}", c.dump_log());
    assert!(c.now - t0 >= secs(6), "{:?}", c.now - t0);
    assert!(!c.hosts[STANDBY].is_active());
}

#[test]
fn proceed_fails_back_at_the_bound_when_the_copy_hangs() {
    // A copy that would take 10 minutes; data_wait is 30 s.
    let mut c = failed_over(22, timers(DataFailurePolicy::Proceed), 0, secs(600));
    let t0 = c.now;
    let ok = c
        .run_until(secs(60), |c| c.hosts[MAIN].is_active())
        .unwrap();
    assert!(ok, "no failback at the bound\n{}", c.dump_log());
    let took = c.now - t0;
    assert!(took >= secs(30) && took < secs(40), "{took:?}");
}

#[test]
fn a_held_copy_that_never_succeeds_never_leaves_the_pair_without_service() {
    let mut c = failed_over(23, timers(DataFailurePolicy::Hold), u32::MAX, secs(1));
    let moved = c
        .run_until(secs(600), |c| {
            !c.hosts[STANDBY].is_active() || c.hosts[MAIN].is_active()
        })
        .unwrap();
    assert!(!moved, "{}", c.dump_log());
}
