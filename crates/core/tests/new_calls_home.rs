//! New calls go home during the failback drain (`failback.new_calls =
//! "main"`), played in the simulator with the invariants checked after every
//! step: the planned overlap of services, and never two nodes taking new
//! calls while they hear each other.

mod sim;

use resilience_core::node::{DrainPolicy, FailbackPolicy, NewCallsPolicy};
use resilience_core::Status;
use sim::{play, secs, Cluster, Timers, MAIN, STANDBY};
use std::time::Duration;

fn timers() -> Timers {
    Timers {
        failback: FailbackPolicy::Immediate,
        drain: Some(DrainPolicy {
            timeout: secs(60),
            poll: Duration::from_secs(1),
        }),
        new_calls: NewCallsPolicy::Main,
        ..Timers::default()
    }
}

fn status(c: &Cluster, i: usize) -> Option<Status> {
    c.hosts[i].status()
}

/// Failover with calls that do not end by themselves, then the Main back:
/// runs until the Main takes the new calls, checking the order on the way.
fn fail_over_and_back_into_the_overlap(c: &mut Cluster) -> Result<(), String> {
    c.run_for(secs(10))?;
    c.crash(MAIN);
    c.run_for(secs(10))?;
    ensure!(c.hosts[STANDBY].takes_new_calls(), "no failover");
    c.hosts[STANDBY].calls = 3;
    c.hosts[STANDBY].calls_end = false;
    c.boot(MAIN);
    let mut released_first = false;
    let ok = c.run_until(secs(20), |c| {
        if !c.hosts[STANDBY].takes_new_calls() && !c.hosts[MAIN].takes_new_calls() {
            released_first = true;
        }
        c.hosts[MAIN].takes_new_calls()
    })?;
    ensure!(ok, "the main never took the new calls");
    ensure!(
        released_first,
        "the main took the new calls before the standby released them"
    );
    ensure!(
        status(c, STANDBY) == Some(Status::Draining) && c.hosts[STANDBY].services,
        "standby {:?} (services {}) when the main took the new calls",
        status(c, STANDBY),
        c.hosts[STANDBY].services
    );
    ensure!(
        !c.hosts[STANDBY].takes_new_calls(),
        "standby still takes new calls"
    );
    Ok(())
}

#[test]
fn the_main_takes_new_calls_while_the_standby_drains_its_own() {
    play(1, timers(), |c| {
        fail_over_and_back_into_the_overlap(c)?;
        // The calls in progress keep the Standby running, not the new ones.
        c.run_for(secs(10))?;
        ensure!(
            status(c, STANDBY) == Some(Status::Draining) && c.hosts[MAIN].takes_new_calls(),
            "overlap ended early: standby {:?}, main {:?}",
            status(c, STANDBY),
            status(c, MAIN)
        );
        let snap = c.hosts[STANDBY].node().snapshot(c.now);
        ensure!(
            snap.active && !snap.takes_new_calls,
            "standby snapshot active {} takes_new_calls {}",
            snap.active,
            snap.takes_new_calls
        );
        // Its calls end: it stops, the Main goes on alone.
        c.hosts[STANDBY].calls_end = true;
        let ok = c.run_until(secs(30), |c| status(c, STANDBY) == Some(Status::Inactive))?;
        ensure!(ok, "standby did not stop once its calls ended");
        ensure!(
            c.hosts[STANDBY].calls == 0,
            "standby stopped with {} calls",
            c.hosts[STANDBY].calls
        );
        ensure!(
            c.hosts[MAIN].takes_new_calls() && !c.hosts[STANDBY].services,
            "main {:?}, standby services {}",
            status(c, MAIN),
            c.hosts[STANDBY].services
        );
        ensure!(
            c.dump_log().contains("new calls released to the main"),
            "no release in the log"
        );
        c.run_for(secs(60))?;
        Ok(())
    });
}

#[test]
fn a_long_drain_is_bounded_by_the_drain_timeout() {
    play(2, timers(), |c| {
        fail_over_and_back_into_the_overlap(c)?;
        let t0 = c.now;
        let ok = c.run_until(secs(90), |c| !c.hosts[STANDBY].services)?;
        ensure!(ok, "standby services still run after the drain bound");
        ensure!(
            c.now - t0 <= secs(61),
            "drain lasted {:?} past the overlap",
            c.now - t0
        );
        ensure!(
            c.dump_log().contains("drain timed out with 3 active calls"),
            "reason missing"
        );
        ensure!(
            c.hosts[MAIN].takes_new_calls(),
            "main {:?}",
            status(c, MAIN)
        );
        Ok(())
    });
}

#[test]
fn a_main_crash_during_the_overlap_gives_the_new_calls_back_to_the_standby() {
    play(3, timers(), |c| {
        fail_over_and_back_into_the_overlap(c)?;
        c.crash(MAIN);
        let t0 = c.now;
        let ok = c.run_until(secs(10), |c| c.hosts[STANDBY].takes_new_calls())?;
        ensure!(ok, "standby did not take the new calls back");
        ensure!(
            c.now - t0 <= secs(4),
            "took {:?} (failover_after is 3 s)",
            c.now - t0
        );
        ensure!(
            c.hosts[STANDBY].services && status(c, STANDBY) == Some(Status::Active),
            "standby {:?}",
            status(c, STANDBY)
        );
        // The Main comes back: the hand-off plays again.
        c.boot(MAIN);
        let ok = c.run_until(secs(30), |c| c.hosts[MAIN].takes_new_calls())?;
        ensure!(ok, "second hand-off did not happen");
        Ok(())
    });
}

#[test]
fn a_standby_crash_during_the_overlap_leaves_the_main_taking_new_calls() {
    play(4, timers(), |c| {
        fail_over_and_back_into_the_overlap(c)?;
        c.crash(STANDBY);
        c.run_for(secs(10))?;
        ensure!(
            c.hosts[MAIN].takes_new_calls(),
            "main {:?} does not take new calls",
            status(c, MAIN)
        );
        c.boot(STANDBY);
        c.run_for(secs(30))?;
        ensure!(
            c.hosts[MAIN].takes_new_calls() && !c.hosts[STANDBY].services,
            "main {:?}, standby {:?}",
            status(c, MAIN),
            status(c, STANDBY)
        );
        Ok(())
    });
}

#[test]
fn a_main_that_offers_too_waits_until_its_standby_released() {
    // The Main starts on the offer; while it is Starting and then Active
    // but not yet told, the Standby still takes the new calls.
    play(5, timers(), |c| {
        c.run_for(secs(10))?;
        c.crash(MAIN);
        c.run_for(secs(10))?;
        c.hosts[STANDBY].calls = 2;
        c.hosts[STANDBY].calls_end = false;
        c.boot(MAIN);
        let ok = c.run_until(secs(20), |c| c.hosts[MAIN].is_active())?;
        ensure!(ok, "main never started alongside");
        ensure!(
            !c.hosts[MAIN].takes_new_calls() && c.hosts[STANDBY].takes_new_calls(),
            "main active and taking new calls before the standby heard it"
        );
        Ok(())
    });
}

#[test]
fn a_link_cut_during_the_overlap_heals_to_one_node_taking_new_calls() {
    play(6, timers(), |c| {
        fail_over_and_back_into_the_overlap(c)?;
        c.cut();
        // The Standby no longer hears its Main: it takes the new calls
        // again, as a cut Standby would.
        let ok = c.run_until(secs(10), |c| c.hosts[STANDBY].takes_new_calls())?;
        ensure!(ok, "cut standby did not take the new calls back");
        c.heal();
        c.run_for(secs(20))?;
        let taking: Vec<bool> = (0..2).map(|i| c.hosts[i].takes_new_calls()).collect();
        ensure!(
            taking == [true, false],
            "after the heal: main {:?}, standby {:?}",
            status(c, MAIN),
            status(c, STANDBY)
        );
        Ok(())
    });
}

#[test]
fn without_the_setting_on_both_nodes_the_main_waits_for_the_stop() {
    // Default on both: today's drain, the Main starts after the Standby stops.
    let default = Timers {
        new_calls: NewCallsPolicy::Standby,
        ..timers()
    };
    for (seed, main_policy, timers) in [
        (7, NewCallsPolicy::Standby, default.clone()),
        // The Standby offers, the Main (default) does not take the offer.
        (8, NewCallsPolicy::Standby, timers()),
        // The Main would take it, the Standby (default) does not offer.
        (9, NewCallsPolicy::Main, default.clone()),
    ] {
        play(seed, timers, |c| {
            c.run_for(secs(10))?;
            c.crash(MAIN);
            c.run_for(secs(10))?;
            c.hosts[STANDBY].calls = 2;
            c.hosts[STANDBY].calls_end = false;
            c.hosts[MAIN].settings.new_calls = main_policy;
            c.boot(MAIN);
            c.run_for(secs(30))?;
            ensure!(
                status(c, STANDBY) == Some(Status::Draining)
                    && c.hosts[STANDBY].takes_new_calls()
                    && !c.hosts[MAIN].services,
                "standby {:?}, main {:?}",
                status(c, STANDBY),
                status(c, MAIN)
            );
            let told = c
                .dump_log()
                .contains("drains without offering the new calls");
            ensure!(
                told == (main_policy == NewCallsPolicy::Main),
                "mismatch told: {told}"
            );
            c.hosts[STANDBY].calls_end = true;
            let ok = c.run_until(secs(40), |c| c.hosts[MAIN].takes_new_calls())?;
            ensure!(ok, "no failback");
            ensure!(
                status(c, STANDBY) == Some(Status::Inactive),
                "standby {:?}",
                status(c, STANDBY)
            );
            Ok(())
        });
    }
}

/// An upgrade (re-exec) or crash of the Main's daemon during the overlap:
/// the restarted daemon adopts its PBX with the calls it took, instead of
/// stopping it because the Standby still runs.
#[test]
fn a_main_restarted_during_the_overlap_keeps_its_pbx() {
    play(41, timers(), |c| {
        fail_over_and_back_into_the_overlap(c)?;
        let stops = c.hosts[MAIN].service_stops;
        c.crash_daemon(MAIN);
        c.run_for(Duration::from_millis(300))?;
        c.boot(MAIN);
        let ok = c.run_until(secs(15), |c| c.hosts[MAIN].takes_new_calls())?;
        ensure!(ok, "the restarted main never took the new calls again");
        ensure!(
            c.hosts[MAIN].service_stops == stops,
            "the restarted main stopped its PBX (and the calls it took)"
        );
        ensure!(
            c.hosts[STANDBY].services && status(c, STANDBY) == Some(Status::Draining),
            "the standby's calls in progress were cut: {:?}",
            status(c, STANDBY)
        );
        Ok(())
    });
}

/// The Main's PBX fails during the overlap: it hands the new calls back to
/// the Standby, which still runs, rather than keep them with a dead PBX.
#[test]
fn a_main_whose_pbx_fails_during_the_overlap_hands_the_new_calls_back() {
    play(43, timers(), |c| {
        fail_over_and_back_into_the_overlap(c)?;
        c.hosts[MAIN].pbx_ok = false;
        let ok = c.run_until(secs(30), |c| c.hosts[STANDBY].takes_new_calls())?;
        ensure!(
            ok,
            "main pbx down 30 s: main {:?} takes {}; standby {:?} takes {}",
            status(c, MAIN),
            c.hosts[MAIN].takes_new_calls(),
            status(c, STANDBY),
            c.hosts[STANDBY].takes_new_calls()
        );
        ensure!(!c.hosts[MAIN].takes_new_calls(), "both take new calls");
        Ok(())
    });
}
