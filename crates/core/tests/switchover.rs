//! Planned switchover and the disabled-node guard, played in the simulator
//! with the invariants checked after every step.

mod sim;

use resilience_core::node::{AdminChoice, FailbackPolicy};
use resilience_core::{Command, InputError, Mode, NodeType, Status};
use sim::{play, secs, Cluster, Timers, MAIN, STANDBY};

fn refused(r: Result<(), InputError>) -> Result<String, String> {
    match r {
        Err(InputError::Refused { reason, .. }) => Ok(reason),
        other => Err(format!("expected a refusal, got {other:?}")),
    }
}

/// Main Active, Standby Inactive, both heard.
fn settled(c: &mut Cluster) -> Result<(), String> {
    c.run_for(secs(10))?;
    ensure!(
        c.hosts[MAIN].is_active() && c.hosts[STANDBY].status() == Some(Status::Inactive),
        "not settled: main {:?}, standby {:?}",
        c.hosts[MAIN].status(),
        c.hosts[STANDBY].status()
    );
    Ok(())
}

#[test]
fn switchover_on_the_main_drains_then_the_standby_serves_and_keeps_it() {
    play(101, Timers::default(), |c| {
        settled(c)?;
        c.hosts[MAIN].calls = 3;
        c.command(MAIN, Command::Switchover)
            .map_err(|e| e.to_string())?;
        ensure!(
            c.hosts[MAIN].status() == Some(Status::Draining),
            "main {:?}",
            c.hosts[MAIN].status()
        );
        // The Standby does not start while the Main still has calls.
        let ok = c.run_until(secs(60), |c| c.hosts[STANDBY].is_active())?;
        ensure!(ok, "standby never became active");
        ensure!(
            c.hosts[MAIN].calls == 0,
            "main stopped with {} calls",
            c.hosts[MAIN].calls
        );
        ensure!(
            c.hosts[MAIN].disk.admin == Some(AdminChoice::SwitchedAway),
            "main's hold not persisted: {:?}",
            c.hosts[MAIN].disk.admin
        );
        // Well past the stable failback time (60 s): the Main stays away.
        c.run_for(secs(180))?;
        ensure!(
            c.hosts[STANDBY].is_active() && !c.hosts[MAIN].is_active(),
            "service moved back by itself"
        );
        ensure!(c.stats.failovers == 0, "a failover was counted");
        // Even after a reboot of the Main (planned maintenance).
        c.crash(MAIN);
        c.run_for(secs(1))?;
        c.boot(MAIN);
        c.run_for(secs(180))?;
        ensure!(
            c.hosts[STANDBY].is_active() && !c.hosts[MAIN].is_active(),
            "rebooted main took the service back"
        );
        let snap = c.hosts[MAIN].node().snapshot(c.now);
        ensure!(
            snap.switchover
                .as_deref()
                .is_some_and(|t| t.contains("switched over")),
            "{:?}",
            snap.switchover
        );
        Ok(())
    });
}

#[test]
fn switchover_back_from_either_node() {
    for back_on in [MAIN, STANDBY] {
        play(102 + back_on as u64, Timers::default(), |c| {
            settled(c)?;
            c.command(MAIN, Command::Switchover)
                .map_err(|e| e.to_string())?;
            ensure!(
                c.run_until(secs(60), |c| c.hosts[STANDBY].is_active())?,
                "standby never active"
            );
            c.run_for(secs(5))?;
            c.hosts[STANDBY].calls = 2;
            c.command(back_on, Command::Switchover)
                .map_err(|e| e.to_string())?;
            let ok = c.run_until(secs(60), |c| {
                c.hosts[MAIN].is_active() && c.hosts[STANDBY].status() == Some(Status::Inactive)
            })?;
            ensure!(ok, "service not back on the main (run on {back_on})");
            ensure!(
                c.hosts[STANDBY].calls == 0,
                "standby stopped with {} calls",
                c.hosts[STANDBY].calls
            );
            ensure!(
                c.hosts[MAIN].disk.admin.is_none(),
                "main still held: {:?}",
                c.hosts[MAIN].disk.admin
            );
            c.run_for(secs(120))?;
            ensure!(c.hosts[MAIN].is_active(), "main lost the service");
            Ok(())
        });
    }
}

#[test]
fn switchover_asked_on_the_standby_makes_the_main_drain_and_hand_over() {
    play(104, Timers::default(), |c| {
        settled(c)?;
        c.hosts[MAIN].calls = 2;
        c.command(STANDBY, Command::Switchover)
            .map_err(|e| e.to_string())?;
        let drained = c.run_until(secs(10), |c| {
            c.hosts[MAIN].status() == Some(Status::Draining)
        })?;
        ensure!(drained, "main never drained");
        let ok = c.run_until(secs(60), |c| c.hosts[STANDBY].is_active())?;
        ensure!(ok, "standby never active");
        ensure!(c.hosts[MAIN].calls == 0, "main cut calls");
        ensure!(
            c.dump_log()
                .contains("asks for the service (an admin's switchover)"),
            "reason missing"
        );
        Ok(())
    });
}

#[test]
fn switchover_is_refused_when_the_peer_is_not_ready() {
    play(105, Timers::default(), |c| {
        settled(c)?;
        // Peer down.
        c.crash(STANDBY);
        c.run_for(secs(5))?;
        let why = refused(c.command(MAIN, Command::Switchover))?;
        ensure!(why.contains("pbx-standby is not heard"), "{why}");
        c.boot(STANDBY);
        c.run_for(secs(5))?;
        // Peer held by an admin (yields).
        c.command(STANDBY, Command::StopServices)
            .map_err(|e| e.to_string())?;
        c.run_for(secs(2))?;
        let why = refused(c.command(MAIN, Command::Switchover))?;
        ensure!(why.contains("yields"), "{why}");
        c.command(STANDBY, Command::StartServices { force: false })
            .map_err(|e| e.to_string())?;
        c.run_for(secs(2))?;
        // Nothing moved.
        ensure!(c.hosts[MAIN].is_active(), "main not active");
        ensure!(
            c.hosts[MAIN].status() == Some(Status::Active),
            "main {:?}",
            c.hosts[MAIN].status()
        );
        // The Standby, inactive, cannot hand anything over to an active peer
        // except by asking; asking a peer that is not heard is refused.
        c.crash(MAIN);
        c.run_for(secs(5))?;
        let why = refused(c.command(STANDBY, Command::Switchover))?;
        ensure!(why.contains("pbx-main is not heard"), "{why}");
        Ok(())
    });
    let manual = Timers {
        mode: Mode::Manual,
        ..Timers::default()
    };
    play(106, manual, |c| {
        c.command(MAIN, Command::StartServices { force: false })
            .map_err(|e| e.to_string())?;
        c.run_for(secs(5))?;
        let why = refused(c.command(MAIN, Command::Switchover))?;
        ensure!(why.contains("manual mode"), "{why}");
        Ok(())
    });
}

#[test]
fn peer_lost_during_the_drain_cancels_the_switchover() {
    play(107, Timers::default(), |c| {
        settled(c)?;
        c.hosts[MAIN].calls = 5;
        c.hosts[MAIN].calls_end = false;
        c.command(MAIN, Command::Switchover)
            .map_err(|e| e.to_string())?;
        c.run_for(secs(2))?;
        c.crash(STANDBY);
        let ok = c.run_until(secs(10), |c| c.hosts[MAIN].status() == Some(Status::Active))?;
        ensure!(ok, "main never went back to active");
        c.run_for(secs(1))?;
        ensure!(
            c.hosts[MAIN].disk.admin.is_none(),
            "hold left behind: {:?}",
            c.hosts[MAIN].disk.admin
        );
        ensure!(
            c.dump_log().contains("switchover to pbx-standby cancelled"),
            "no cancel event"
        );
        Ok(())
    });
}

#[test]
fn a_switched_away_main_still_takes_over_a_dead_standby() {
    play(108, Timers::default(), |c| {
        settled(c)?;
        c.command(MAIN, Command::Switchover)
            .map_err(|e| e.to_string())?;
        ensure!(
            c.run_until(secs(60), |c| c.hosts[STANDBY].is_active())?,
            "standby never active"
        );
        c.run_for(secs(5))?;
        c.crash(STANDBY);
        let ok = c.run_until(secs(30), |c| c.hosts[MAIN].is_active())?;
        ensure!(ok, "main did not take over");
        ensure!(
            c.hosts[MAIN].disk.admin.is_none(),
            "hold kept while serving: {:?}",
            c.hosts[MAIN].disk.admin
        );
        Ok(())
    });
}

/// The hold suppresses failback, never failover: a Standby whose PBX fails
/// after a switchover hands the service back (the Main stops yielding once
/// the Standby serves, so the Standby's release rule finds it ready).
#[test]
fn a_switched_away_main_takes_over_when_the_standbys_pbx_fails() {
    play(112, Timers::default(), |c| {
        settled(c)?;
        c.command(MAIN, Command::Switchover)
            .map_err(|e| e.to_string())?;
        ensure!(
            c.run_until(secs(60), |c| c.hosts[STANDBY].is_active())?,
            "standby never active"
        );
        c.run_for(secs(5))?;
        c.hosts[STANDBY].pbx_ok = false;
        let ok = c.run_until(secs(60), |c| c.hosts[MAIN].is_active())?;
        ensure!(
            ok,
            "no one serves: main {:?}, standby {:?}",
            c.hosts[MAIN].status(),
            c.hosts[STANDBY].status()
        );
        ensure!(
            !c.hosts[STANDBY].is_active(),
            "standby still active beside the main"
        );
        Ok(())
    });
}

#[test]
fn standby_handing_back_to_a_main_held_by_an_admin_gives_up_and_keeps_serving() {
    play(109, Timers::default(), |c| {
        settled(c)?;
        c.command(MAIN, Command::StopServices)
            .map_err(|e| e.to_string())?;
        ensure!(
            c.run_until(secs(30), |c| c.hosts[STANDBY].is_active())?,
            "standby never active"
        );
        c.run_for(secs(5))?;
        c.command(STANDBY, Command::Switchover)
            .map_err(|e| e.to_string())?;
        c.run_for(secs(10))?;
        ensure!(
            c.hosts[STANDBY].status() == Some(Status::Active),
            "standby {:?}",
            c.hosts[STANDBY].status()
        );
        ensure!(
            c.dump_log().contains("still yields"),
            "no reason for the cancel"
        );
        Ok(())
    });
}

#[test]
fn failback_policy_immediate_does_not_undo_a_switchover() {
    let t = Timers {
        failback: FailbackPolicy::Immediate,
        ..Timers::default()
    };
    play(110, t, |c| {
        settled(c)?;
        c.command(MAIN, Command::Switchover)
            .map_err(|e| e.to_string())?;
        ensure!(
            c.run_until(secs(60), |c| c.hosts[STANDBY].is_active())?,
            "standby never active"
        );
        c.run_for(secs(60))?;
        ensure!(
            c.hosts[STANDBY].is_active() && c.hosts[STANDBY].activations == 1,
            "service bounced"
        );
        Ok(())
    });
}

#[test]
fn disabled_node_beside_a_live_main_keeps_its_services_stopped() {
    play(111, Timers::default(), |c| {
        settled(c)?;
        // The Standby's file now says `disabled` (the peer section kept).
        c.crash(STANDBY);
        c.hosts[STANDBY].settings.node_type = NodeType::Disabled;
        c.boot(STANDBY);
        c.run_for(secs(30))?;
        ensure!(
            !c.hosts[STANDBY].services,
            "disabled node runs services beside the main"
        );
        ensure!(c.hosts[MAIN].is_active(), "main not active");
        let snap = c.hosts[STANDBY].node().snapshot(c.now);
        ensure!(
            snap.guard
                .as_deref()
                .is_some_and(|g| g.contains("main pbx-main (active")),
            "{:?}",
            snap.guard
        );
        ensure!(
            c.dump_log()
                .contains("disabled node keeps its services stopped"),
            "no event"
        );
        // The Main goes away for good: the disabled node serves alone.
        c.crash(MAIN);
        let ok = c.run_until(secs(30), |c| c.hosts[STANDBY].is_active())?;
        ensure!(ok, "disabled node never served alone");
        // The Main comes back: the disabled node stops (never two PBXs).
        c.boot(MAIN);
        let ok = c.run_until(secs(30), |c| !c.hosts[STANDBY].services)?;
        ensure!(ok, "disabled node kept serving beside the main");
        Ok(())
    });
}

#[test]
fn disabled_node_alone_serves_after_listening_for_startup_wait() {
    play(112, Timers::default(), |c| {
        c.crash(MAIN);
        c.crash(STANDBY);
        c.hosts[STANDBY].settings.node_type = NodeType::Disabled;
        c.boot(STANDBY);
        let t0 = c.now;
        let ok = c.run_until(secs(30), |c| c.hosts[STANDBY].is_active())?;
        ensure!(ok, "disabled node never served");
        let took = c.now - t0;
        ensure!(
            took >= secs(3) && took < secs(5),
            "served after {took:?} (startup_wait 3 s)"
        );
        Ok(())
    });
}

#[test]
fn a_standby_that_cannot_start_after_a_switchover_gives_the_service_back() {
    play(113, Timers::default(), |c| {
        settled(c)?;
        // Every start attempt of the Standby fails: it faults and yields.
        c.fail_starts(STANDBY, 3);
        c.command(MAIN, Command::Switchover)
            .map_err(|e| e.to_string())?;
        let ok = c.run_until(secs(60), |c| {
            c.hosts[MAIN].is_active() && c.hosts[MAIN].activations == 2
        })?;
        ensure!(ok, "main never took the service back");
        ensure!(
            c.dump_log().contains("standby pbx-standby yields")
                || c.dump_log().contains("standby pbx-standby is inactive"),
            "no reason"
        );
        c.run_for(secs(1))?;
        ensure!(
            c.hosts[MAIN].disk.admin.is_none(),
            "hold kept while serving: {:?}",
            c.hosts[MAIN].disk.admin
        );
        Ok(())
    });
}
