//! Scenario tests: each behaviour of the seeds, played in the simulator with
//! the invariants checked after every step.

mod sim;

use resilience_core::config::SplitBrainPolicy;
use resilience_core::heartbeat::{self, Flags, Frame};
use resilience_core::node::{AdminChoice, FailbackPolicy};
use resilience_core::{ClusterKey, Command, InputError, Mode, NodeType, PbxHealth, Reject, Status};
use sim::{play, secs, Cluster, Flap, Timers, MAIN, STANDBY};
use std::time::Duration;

fn status(c: &Cluster, i: usize) -> Option<Status> {
    c.hosts[i].status()
}

#[test]
fn main_starts_and_standby_stays_inactive() {
    play(1, Timers::default(), |c| {
        c.run_for(secs(10))?;
        ensure!(
            c.hosts[MAIN].is_active(),
            "main not active: {:?}",
            status(c, MAIN)
        );
        ensure!(
            status(c, STANDBY) == Some(Status::Inactive),
            "standby {:?}",
            status(c, STANDBY)
        );
        // The Main did not wait for startup_wait: it heard the Standby first.
        ensure!(
            c.hosts[MAIN].activations == 1,
            "main activations {}",
            c.hosts[MAIN].activations
        );
        Ok(())
    });
}

#[test]
fn standby_takes_over_a_dead_main_within_seconds() {
    play(2, Timers::default(), |c| {
        c.run_for(secs(10))?;
        c.crash(MAIN);
        let t0 = c.now;
        let ok = c.run_until(secs(30), |c| c.hosts[STANDBY].is_active())?;
        ensure!(ok, "standby never became active");
        let took = c.now - t0;
        // failover_after (3 s) + start latency (0.5 s) + a heartbeat.
        ensure!(
            took <= Duration::from_millis(3900),
            "failover took {took:?}"
        );
        ensure!(c.stats.failovers == 1, "failovers {}", c.stats.failovers);
        eprintln!("failover after a crash of the main: {took:?} (failover_after 3 s, start 0.5 s)");
        Ok(())
    });
}

#[test]
fn failback_waits_for_the_stable_time_then_drains_and_hands_over() {
    let timers = Timers {
        failback: FailbackPolicy::Stable(secs(60)),
        ..Timers::default()
    };
    play(3, timers, |c| {
        c.run_for(secs(10))?;
        c.crash(MAIN);
        c.run_for(secs(10))?;
        ensure!(c.hosts[STANDBY].is_active(), "no failover");
        c.hosts[STANDBY].calls = 3;
        c.boot(MAIN);
        // The returning Main does not grab the service.
        c.run_for(secs(55))?;
        ensure!(
            !c.hosts[MAIN].is_active(),
            "main grabbed the service before the stable time"
        );
        ensure!(c.hosts[STANDBY].is_active(), "standby stopped early");
        let wait = c.hosts[MAIN].node().snapshot(c.now).failback_wait;
        ensure!(
            wait.as_deref().is_some_and(|w| w.contains("stable")),
            "wait reason {wait:?}"
        );
        // After 60 s it asks; the Standby drains its 3 calls, stops, the Main starts.
        let ok = c.run_until(secs(60), |c| c.hosts[MAIN].is_active())?;
        ensure!(ok, "no failback");
        ensure!(
            status(c, STANDBY) == Some(Status::Inactive),
            "standby {:?}",
            status(c, STANDBY)
        );
        ensure!(
            c.hosts[STANDBY].calls == 0,
            "standby stopped with {} calls",
            c.hosts[STANDBY].calls
        );
        ensure!(
            c.dump_log().contains("drain started"),
            "no drain in the log"
        );
        ensure!(c.stats.failbacks == 1, "failbacks {}", c.stats.failbacks);
        Ok(())
    });
}

#[test]
fn failback_immediate_hands_over_at_once() {
    let timers = Timers {
        failback: FailbackPolicy::Immediate,
        drain: None,
        ..Timers::default()
    };
    play(4, timers, |c| {
        c.run_for(secs(10))?;
        c.crash(MAIN);
        c.run_for(secs(10))?;
        c.boot(MAIN);
        let t0 = c.now;
        let ok = c.run_until(secs(20), |c| c.hosts[MAIN].is_active())?;
        ensure!(ok, "no failback");
        ensure!(
            c.now - t0 < secs(3),
            "immediate failback took {:?}",
            c.now - t0
        );
        Ok(())
    });
}

#[test]
fn drain_timeout_bounds_the_wait() {
    let timers = Timers {
        failback: FailbackPolicy::Immediate,
        ..Timers::default()
    };
    play(5, timers, |c| {
        c.run_for(secs(10))?;
        c.crash(MAIN);
        c.run_for(secs(10))?;
        c.hosts[STANDBY].calls = 4;
        c.hosts[STANDBY].calls_end = false;
        c.boot(MAIN);
        c.run_for(secs(20))?;
        ensure!(
            status(c, STANDBY) == Some(Status::Draining),
            "standby {:?}",
            status(c, STANDBY)
        );
        ensure!(!c.hosts[MAIN].is_active(), "main active during the drain");
        let ok = c.run_until(secs(20), |c| c.hosts[MAIN].is_active())?;
        ensure!(ok, "drain did not time out");
        ensure!(
            c.dump_log().contains("drain timed out with 4 active calls"),
            "reason missing"
        );
        Ok(())
    });
}

#[test]
fn failback_manual_waits_for_an_admin_on_either_node() {
    let timers = Timers {
        failback: FailbackPolicy::Manual,
        drain: None,
        ..Timers::default()
    };
    for on in [MAIN, STANDBY] {
        play(6 + on as u64, timers.clone(), |c| {
            c.run_for(secs(10))?;
            c.crash(MAIN);
            c.run_for(secs(10))?;
            c.boot(MAIN);
            c.run_for(secs(600))?;
            ensure!(
                c.hosts[STANDBY].is_active(),
                "standby gave up without an admin"
            );
            let wait = c.hosts[MAIN].node().snapshot(c.now).failback_wait;
            ensure!(
                wait.as_deref().is_some_and(|w| w.contains("manual")),
                "wait {wait:?}"
            );
            c.command(on, Command::Failback)
                .map_err(|e| e.to_string())?;
            let ok = c.run_until(secs(10), |c| c.hosts[MAIN].is_active())?;
            ensure!(ok, "failback command on {} did nothing", sim::NAMES[on]);
            Ok(())
        });
    }
}

#[test]
fn failback_refusals_say_why() {
    play(8, Timers::default(), |c| {
        c.run_for(secs(10))?;
        let e = c.command(STANDBY, Command::Failback).unwrap_err();
        ensure!(e.to_string().contains("not active"), "{e}");
        let e = c.command(MAIN, Command::Failback).unwrap_err();
        ensure!(e.to_string().contains("already active"), "{e}");
        c.crash(MAIN);
        c.run_for(secs(10))?;
        let e = c.command(STANDBY, Command::Failback).unwrap_err();
        ensure!(e.to_string().contains("no active node"), "{e}");
        ensure!(
            c.hosts[STANDBY].is_active(),
            "refused failback changed the state"
        );
        Ok(())
    });
}

#[test]
fn no_failover_when_no_arbiter_answers_the_standby() {
    let timers = Timers {
        arbiters: true,
        ..Timers::default()
    };
    play(9, timers, |c| {
        c.run_for(secs(10))?;
        // The Standby is the one cut off: it hears neither the Main nor an arbiter.
        c.set_arbiter(STANDBY, false);
        c.cut();
        c.run_for(secs(60))?;
        ensure!(
            !c.hosts[STANDBY].is_active(),
            "standby took over while isolated"
        );
        ensure!(c.hosts[MAIN].is_active(), "main stopped");
        ensure!(
            c.dump_log().contains("no arbiter answers"),
            "no FailoverBlocked event"
        );
        // An arbiter answers again: the Main really is gone from its view.
        c.set_arbiter(STANDBY, true);
        let ok = c.run_until(secs(10), |c| c.hosts[STANDBY].is_active())?;
        ensure!(ok, "no failover once the arbiter answered");
        Ok(())
    });
}

#[test]
fn healed_partition_keeps_the_main_by_default() {
    play(10, Timers::default(), |c| {
        c.run_for(secs(10))?;
        c.cut();
        c.run_for(secs(10))?;
        ensure!(
            c.hosts[MAIN].is_active() && c.hosts[STANDBY].is_active(),
            "no split brain to heal"
        );
        c.heal();
        let ok = c.run_until(secs(5), |c| {
            c.hosts[MAIN].is_active() && c.hosts[STANDBY].status() == Some(Status::Inactive)
        })?;
        ensure!(
            ok,
            "main {:?} standby {:?}",
            status(c, MAIN),
            status(c, STANDBY)
        );
        ensure!(c.dump_log().contains("steps down"), "no split-brain event");
        // The winner says so, once.
        let won = c
            .dump_log()
            .lines()
            .filter(|l| l.contains("pbx-main: both nodes active") && l.contains("stays active"))
            .count();
        ensure!(won == 1, "the main said {won} times that it stays active");
        c.run_for(secs(120))?;
        ensure!(c.hosts[MAIN].activations == 1, "main restarted");
        Ok(())
    });
}

#[test]
fn healed_partition_with_latest_policy_keeps_the_standby_then_fails_back() {
    let timers = Timers {
        split_brain: SplitBrainPolicy::Latest,
        failback: FailbackPolicy::Stable(secs(30)),
        ..Timers::default()
    };
    play(11, timers, |c| {
        c.run_for(secs(10))?;
        c.cut();
        c.run_for(secs(10))?;
        let (em, es) = (
            c.hosts[MAIN].node().epoch(),
            c.hosts[STANDBY].node().epoch(),
        );
        ensure!(es > em, "standby epoch {es} not above main's {em}");
        c.heal();
        let ok = c.run_until(secs(5), |c| {
            c.hosts[STANDBY].is_active() && c.hosts[MAIN].status() == Some(Status::Inactive)
        })?;
        ensure!(
            ok,
            "main {:?} standby {:?}",
            status(c, MAIN),
            status(c, STANDBY)
        );
        // Then the normal failback policy brings the service home.
        let ok = c.run_until(secs(60), |c| c.hosts[MAIN].is_active())?;
        ensure!(ok, "no failback after the heal");
        Ok(())
    });
}

#[test]
fn one_way_cut_fails_over_and_heals_to_one_active() {
    play(12, Timers::default(), |c| {
        c.run_for(secs(10))?;
        c.set_link(MAIN, STANDBY, false);
        c.run_for(secs(10))?;
        ensure!(
            c.hosts[STANDBY].is_active(),
            "standby cannot hear the main but did not take over"
        );
        c.set_link(MAIN, STANDBY, true);
        let ok = c.run_until(secs(5), |c| {
            c.hosts.iter().filter(|h| h.is_active()).count() == 1
        })?;
        ensure!(ok, "two actives after the heal");
        // The other direction: the Main cannot hear the Standby; nothing changes.
        c.set_link(STANDBY, MAIN, false);
        c.run_for(secs(60))?;
        ensure!(
            c.hosts[MAIN].is_active() && !c.hosts[STANDBY].is_active(),
            "changed on a one-way cut"
        );
        Ok(())
    });
}

#[test]
fn unhealthy_pbx_on_the_main_moves_the_service() {
    let timers = Timers {
        failback: FailbackPolicy::Immediate,
        fault_hold: secs(120),
        ..Timers::default()
    };
    play(13, timers, |c| {
        c.run_for(secs(10))?;
        c.hosts[MAIN].pbx_ok = false;
        let t0 = c.now;
        let ok = c.run_until(secs(20), |c| c.hosts[STANDBY].is_active())?;
        ensure!(
            ok,
            "standby did not take over from a main whose PBX is down"
        );
        ensure!(c.now - t0 >= secs(3), "took over before failover_after");
        ensure!(!c.hosts[MAIN].is_active(), "both active");
        let snap = c.hosts[MAIN].node().snapshot(c.now);
        ensure!(snap.faulted, "main not faulted");
        // The Main stays out for the fault hold, even with an immediate policy.
        c.hosts[MAIN].pbx_ok = true;
        c.run_for(secs(100))?;
        ensure!(
            c.hosts[STANDBY].is_active(),
            "failback during the fault hold"
        );
        let ok = c.run_until(secs(60), |c| c.hosts[MAIN].is_active())?;
        ensure!(ok, "no failback after the fault hold");
        Ok(())
    });
}

#[test]
fn single_missed_probes_never_move_the_service() {
    play(41, Timers::default(), |c| {
        c.run_for(secs(10))?;
        ensure!(c.hosts[MAIN].is_active(), "main not active");
        // Up and down alternating, then rarer single misses.
        for flap in [
            Flap::SingleMisses(2),
            Flap::SingleMisses(3),
            Flap::SingleMisses(7),
        ] {
            c.flap_probe(MAIN, Some(flap));
            c.run_for(secs(120))?;
            ensure!(
                c.hosts[MAIN].is_active(),
                "main lost the service to {flap:?}"
            );
            ensure!(
                c.hosts[STANDBY].activations == 0,
                "standby took over on {flap:?}"
            );
            ensure!(
                c.longest_probe_misses(MAIN) == Some(1),
                "not single misses: {:?}",
                c.longest_probe_misses(MAIN)
            );
            ensure!(
                c.probe_downs(MAIN) == Some(0),
                "{flap:?} reported the PBX down {:?} times",
                c.probe_downs(MAIN)
            );
        }
        ensure!(
            c.hosts[MAIN].node().snapshot(c.now).pbx == PbxHealth::Up,
            "the PBX is not up after single misses"
        );
        Ok(())
    });
}

#[test]
fn a_flapping_probe_never_runs_both_nodes() {
    let timers = Timers {
        failback: FailbackPolicy::Immediate,
        fault_hold: secs(20),
        ..Timers::default()
    };
    play(42, timers, |c| {
        c.run_for(secs(10))?;
        // The Main's PBX misses long enough to move the service, over and
        // over; the Standby's misses twice in a row, too briefly to.
        c.flap_probe(MAIN, Some(Flap::Bursts { down: 6, up: 4 }));
        c.flap_probe(STANDBY, Some(Flap::Bursts { down: 2, up: 3 }));
        // Never both active: checked after every step.
        c.run_for(secs(600))?;
        ensure!(
            c.hosts[STANDBY].activations > 0,
            "the main's long runs of misses never moved the service"
        );
        c.flap_probe(MAIN, None);
        c.flap_probe(STANDBY, None);
        let ok = c.run_until(secs(120), |c| c.hosts[MAIN].is_active())?;
        ensure!(ok, "main not serving once its probe is steady");
        Ok(())
    });
}

#[test]
fn start_failures_are_retried_reported_and_never_claimed() {
    play(14, Timers::default(), |c| {
        c.run_for(secs(10))?;
        c.fail_starts(STANDBY, 2);
        c.crash(MAIN);
        let ok = c.run_until(secs(30), |c| c.hosts[STANDBY].is_active())?;
        ensure!(ok, "standby not active after two failed starts");
        let log = c.dump_log();
        ensure!(
            log.contains("attempt 1 of 3") && log.contains("attempt 2 of 3"),
            "failures not reported"
        );
        Ok(())
    });
}

#[test]
fn main_that_cannot_start_yields_to_the_standby() {
    play(15, Timers::default(), |c| {
        c.run_for(secs(10))?;
        c.crash(MAIN);
        c.run_for(secs(10))?;
        c.fail_starts(MAIN, 100);
        c.boot(MAIN);
        // With the 60 s stable policy, the Main asks, the Standby hands over,
        // the Main fails three times, faults and yields: the Standby is back.
        c.run_for(secs(120))?;
        let log = c.dump_log();
        ensure!(log.contains("services failed to start 3 times"), "no fault");
        ensure!(
            c.hosts[STANDBY].is_active(),
            "nobody serves: standby {:?}",
            status(c, STANDBY)
        );
        ensure!(!c.hosts[MAIN].is_active(), "main claims active");
        Ok(())
    });
}

#[test]
fn manual_mode_refuses_start_over_an_active_peer_unless_forced() {
    let timers = Timers {
        mode: Mode::Manual,
        ..Timers::default()
    };
    play(16, timers, |c| {
        c.run_for(secs(10))?;
        ensure!(
            !c.hosts[MAIN].is_active() && !c.hosts[STANDBY].is_active(),
            "manual node started alone"
        );
        c.command(MAIN, Command::StartServices { force: false })
            .map_err(|e| e.to_string())?;
        c.run_for(secs(2))?;
        ensure!(c.hosts[MAIN].is_active(), "main not started");
        let e = c
            .command(STANDBY, Command::StartServices { force: false })
            .unwrap_err();
        ensure!(matches!(e, InputError::Refused { .. }), "{e:?}");
        ensure!(e.to_string().contains("pbx-main is active"), "reason: {e}");
        // Even with the Main gone, manual mode never fails over by itself.
        c.crash(MAIN);
        c.run_for(secs(60))?;
        ensure!(
            !c.hosts[STANDBY].is_active(),
            "manual standby started by itself"
        );
        c.boot(MAIN);
        c.run_for(secs(2))?;
        // The persisted override restarts the Main's services after its reboot.
        ensure!(
            c.hosts[MAIN].is_active(),
            "main forgot the admin's start: {:?}",
            status(c, MAIN)
        );
        c.command(STANDBY, Command::StartServices { force: true })
            .map_err(|e| e.to_string())?;
        c.run_for(secs(2))?;
        ensure!(
            c.hosts[STANDBY].is_active() && c.hosts[MAIN].is_active(),
            "forced start did not start"
        );
        // Failback in manual mode is an admin's two steps, refused as a command.
        let e = c.command(MAIN, Command::Failback).unwrap_err();
        ensure!(e.to_string().contains("manual mode"), "{e}");
        c.command(STANDBY, Command::StopServices)
            .map_err(|e| e.to_string())?;
        c.run_for(secs(2))?;
        ensure!(!c.hosts[STANDBY].is_active(), "stop did not stop");
        Ok(())
    });
}

#[test]
fn admin_stop_in_automatic_mode_holds_across_reboot_and_yields() {
    play(17, Timers::default(), |c| {
        c.run_for(secs(10))?;
        c.command(MAIN, Command::StopServices)
            .map_err(|e| e.to_string())?;
        let ok = c.run_until(secs(5), |c| c.hosts[STANDBY].is_active())?;
        ensure!(ok, "standby did not take over from a held main");
        ensure!(
            c.hosts[MAIN].disk.admin == Some(AdminChoice::Stop),
            "hold not persisted"
        );
        c.crash(MAIN);
        c.run_for(secs(5))?;
        c.boot(MAIN);
        c.run_for(secs(120))?;
        ensure!(
            !c.hosts[MAIN].is_active(),
            "held main restarted after reboot"
        );
        c.command(MAIN, Command::StartServices { force: false })
            .map_err(|e| e.to_string())?;
        let ok = c.run_until(secs(120), |c| c.hosts[MAIN].is_active())?;
        ensure!(ok, "released main never failed back");
        Ok(())
    });
}

#[test]
fn reboot_restores_the_epoch() {
    play(18, Timers::default(), |c| {
        c.run_for(secs(10))?;
        for _ in 0..3 {
            c.crash(MAIN);
            c.run_for(secs(10))?;
            c.boot(MAIN);
            c.run_for(secs(120))?;
        }
        let before = c.hosts[STANDBY].node().epoch();
        ensure!(before >= 6, "epoch {before}");
        c.crash(STANDBY);
        c.boot(STANDBY);
        ensure!(
            c.hosts[STANDBY].node().epoch() == before,
            "epoch lost at reboot"
        );
        Ok(())
    });
}

/// The Main restarts a few times, then comes back with its state lost (a
/// new disk) or restored from an old backup: the Standby must accept it at
/// once and the pair settle on one Active, the Main (failback is immediate
/// here), instead of refusing every frame as stale while both serve.
#[test]
fn a_node_with_lost_or_old_state_is_heard_again() {
    for restore in [false, true] {
        let timers = Timers {
            failback: FailbackPolicy::Immediate,
            ..Timers::default()
        };
        play(23, timers, |c| {
            c.run_for(secs(10))?;
            c.back_up(MAIN);
            for _ in 0..4 {
                c.crash(MAIN);
                c.run_for(secs(1))?;
                c.boot(MAIN);
                c.run_for(secs(30))?;
            }
            ensure!(c.hosts[MAIN].is_active(), "main not active after restarts");
            c.crash(MAIN);
            if restore {
                c.restore_backup(MAIN);
            } else {
                c.lose_disk(MAIN);
            }
            c.run_for(secs(10))?;
            ensure!(c.hosts[STANDBY].is_active(), "standby did not take over");
            let rejected_before = c.stats.frames_rejected;
            c.boot(MAIN);
            let heard = c.run_until(secs(2), |c| {
                c.hosts[STANDBY]
                    .node()
                    .snapshot(c.now)
                    .peer
                    .is_some_and(|p| p.heard)
            })?;
            ensure!(heard, "the standby does not hear the main back");
            let ok = c.run_until(c.settle() * 2, |c| {
                c.hosts[MAIN].is_active() && !c.hosts[STANDBY].is_active()
            })?;
            ensure!(
                ok,
                "not back to one active: main {:?}, standby {:?}",
                c.hosts[MAIN].status(),
                c.hosts[STANDBY].status()
            );
            c.run_for(secs(60))?;
            ensure!(
                c.hosts[MAIN].is_active() && !c.hosts[STANDBY].is_active(),
                "did not stay with one active"
            );
            let rejected = c.stats.frames_rejected - rejected_before;
            ensure!(rejected <= 4, "{rejected} frames rejected after the reboot");
            Ok(())
        });
    }
}

#[test]
fn replayed_stale_and_forged_heartbeats_change_nothing() {
    play(19, Timers::default(), |c| {
        c.run_for(secs(10))?;
        let key = ClusterKey::new(b"simulated cluster key, 32 bytes!").unwrap();
        let boot = c.hosts[MAIN].boot_id;
        let unconfirmed = c.hosts[STANDBY]
            .node()
            .snapshot(c.now)
            .rejected
            .iter()
            .find(|(l, _)| *l == "unconfirmed")
            .map_or(0, |(_, n)| *n);
        let fake = |seq, boot, status, key: &ClusterKey| {
            heartbeat::encode(
                &Frame {
                    node_type: NodeType::Main,
                    mode: Mode::Automatic,
                    status,
                    pbx: PbxHealth::Up,
                    flags: Flags(Flags::HEARS_PEER | Flags::YIELDING),
                    boot,
                    seq,
                    epoch: 99,
                    replication: 0,
                    challenge: 1,
                    echo: 0,
                    calls: None,
                    name: "pbx-main".into(),
                },
                key,
            )
        };
        // A frame with a sequence already used by the live Main.
        let e = c
            .inject(STANDBY, &fake(1, boot, Status::Inactive, &key))
            .unwrap_err();
        ensure!(e == InputError::Rejected(Reject::Replayed), "{e:?}");
        let e = c
            .inject(STANDBY, &fake(1 << 40, boot ^ 1, Status::Inactive, &key))
            .unwrap_err();
        ensure!(e == InputError::Rejected(Reject::Unconfirmed), "{e:?}");
        let other = ClusterKey::new(b"an attacker's key, not the real!").unwrap();
        let e = c
            .inject(STANDBY, &fake(1 << 40, boot, Status::Inactive, &other))
            .unwrap_err();
        ensure!(e == InputError::Rejected(Reject::Forged), "{e:?}");
        c.run_for(secs(30))?;
        ensure!(
            c.hosts[MAIN].is_active() && !c.hosts[STANDBY].is_active(),
            "state changed"
        );
        let snap = c.hosts[STANDBY].node().snapshot(c.now);
        let count = |l| {
            snap.rejected
                .iter()
                .find(|(x, _)| *x == l)
                .map_or(0, |(_, n)| *n)
        };
        ensure!(
            count("forged") == 1
                && count("unconfirmed") == unconfirmed + 1
                && count("replayed") >= 1,
            "{:?}",
            snap.rejected
        );
        Ok(())
    });
}

#[test]
fn standby_crash_while_active_lets_the_main_serve() {
    play(20, Timers::default(), |c| {
        c.run_for(secs(10))?;
        c.crash(MAIN);
        c.run_for(secs(10))?;
        c.crash(STANDBY);
        c.boot(MAIN);
        // The Main hears nobody: it starts after its startup wait.
        let ok = c.run_until(secs(10), |c| c.hosts[MAIN].is_active())?;
        ensure!(ok, "main did not start alone");
        c.boot(STANDBY);
        c.run_for(secs(30))?;
        ensure!(
            c.hosts[MAIN].is_active() && !c.hosts[STANDBY].is_active(),
            "wrong roles after reboot"
        );
        Ok(())
    });
}

#[test]
fn main_serves_when_a_deaf_standby_cannot_take_over() {
    // The Standby cannot hear the Main and no arbiter answers it, so it may
    // not take over; the rebooted Main cannot confirm the Standby's frames
    // (they never echo its new challenge), counts it as silent, and serves.
    let timers = Timers {
        arbiters: true,
        ..Timers::default()
    };
    play(21, timers, |c| {
        c.run_for(secs(10))?;
        c.set_arbiter(STANDBY, false);
        c.crash(MAIN);
        c.set_link(MAIN, STANDBY, false);
        c.run_for(secs(5))?;
        c.boot(MAIN);
        let ok = c.run_until(secs(15), |c| c.hosts[MAIN].is_active())?;
        ensure!(ok, "nobody serves: main {:?}", status(c, MAIN));
        ensure!(
            c.dump_log().contains("pbx-standby not heard for"),
            "reason missing"
        );
        Ok(())
    });
}
