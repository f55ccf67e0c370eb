//! The daemon's own restarts and stops, over many seeds: a restart (an
//! upgrade's re-exec, a crash followed by systemd's restart) within
//! `failover_after` cuts nothing and moves nothing; a stop hands the service
//! over at once and leaves no services behind. `SIM_SEEDS` (default 1000).

mod sim;

use resilience_core::node::FailbackPolicy;
use resilience_core::Status;
use sim::{Cluster, Timers, MAIN, STANDBY};
use std::time::Duration;

fn seeds() -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// A pair on a link losing up to 10% of frames, settled with `serving`
/// Active (the Standby after a failover, its Main back and waiting).
fn settled(seed: u64, serving: usize) -> Cluster {
    let timers = Timers {
        failback: FailbackPolicy::Manual,
        ..Timers::default()
    };
    let mut c = Cluster::new(seed, timers);
    c.set_loss((seed % 11) as f64 / 100.0);
    c.boot(MAIN);
    if serving == STANDBY {
        c.run_for(Duration::from_secs(10)).unwrap();
        c.boot(STANDBY);
        c.run_for(Duration::from_secs(10)).unwrap();
        c.crash(MAIN);
        c.run_for(Duration::from_secs(10)).unwrap();
        c.boot(MAIN);
    } else {
        c.boot(STANDBY);
    }
    c.run_for(Duration::from_secs(30)).unwrap();
    assert_eq!(
        c.hosts[serving].status(),
        Some(Status::Active),
        "{}",
        c.dump_log()
    );
    assert_eq!(c.hosts[1 - serving].status(), Some(Status::Inactive));
    c
}

#[test]
fn daemon_restart_within_failover_after_moves_nothing() {
    for seed in 0..seeds() {
        for serving in [MAIN, STANDBY] {
            let mut c = settled(seed, serving);
            let (starts, stops) = (
                c.hosts[serving].service_starts,
                c.hosts[serving].service_stops,
            );
            let other_starts = c.hosts[1 - serving].service_starts;
            c.crash_daemon(serving);
            // Back within half of failover_after (systemd's RestartSec=1s,
            // or a re-exec in milliseconds).
            let back = Duration::from_millis(10 + seed % 1490);
            c.run_for(back).unwrap();
            c.boot(serving);
            let r = c.run_for(Duration::from_secs(60));
            let log = c.dump_log();
            r.unwrap_or_else(|e| panic!("seed {seed}: {e}\n{log}"));
            let h = &c.hosts[serving];
            assert_eq!(h.status(), Some(Status::Active), "seed {seed}\n{log}");
            assert_eq!(
                (h.service_starts, h.service_stops),
                (starts, stops),
                "seed {seed}: services adopted, neither stopped nor started\n{log}"
            );
            assert_eq!(
                c.hosts[1 - serving].service_starts,
                other_starts,
                "seed {seed}: the peer never took over\n{log}"
            );
        }
    }
}

#[test]
fn daemon_restart_after_a_takeover_stops_the_services_left_running() {
    for seed in 0..seeds() {
        let mut c = settled(seed, MAIN);
        c.crash_daemon(MAIN);
        // Gone long enough for the Standby to take over: both PBXs run
        // until the Main's daemon is back.
        c.run_for(Duration::from_secs(10)).unwrap();
        assert!(
            c.hosts[STANDBY].is_active(),
            "seed {seed}\n{}",
            c.dump_log()
        );
        c.boot(MAIN);
        let r = c.run_for(Duration::from_secs(30));
        let log = c.dump_log();
        r.unwrap_or_else(|e| panic!("seed {seed}: {e}\n{log}"));
        assert!(!c.hosts[MAIN].services, "seed {seed}\n{log}");
        assert!(c.hosts[STANDBY].is_active(), "seed {seed}\n{log}");
    }
}

#[test]
fn daemon_stop_hands_over_before_failover_after() {
    for seed in 0..seeds() {
        for serving in [MAIN, STANDBY] {
            let mut c = settled(seed, serving);
            let other = 1 - serving;
            c.stop_daemon(serving);
            // Handover within the heartbeat, stop and start times: well
            // before the peer would notice a silence (failover_after = 3 s).
            let ok = c
                .run_until(Duration::from_millis(2_900), |c| {
                    c.hosts[other].is_active() && !c.hosts[serving].alive()
                })
                .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", c.dump_log()));
            assert!(ok, "seed {seed}: no handover\n{}", c.dump_log());
            assert!(!c.hosts[serving].services, "seed {seed}");
            c.run_for(Duration::from_secs(30)).unwrap();
            assert!(c.hosts[other].is_active());
        }
    }
}
