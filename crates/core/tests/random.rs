//! Randomized runs: many seeds, each a simulated hour of crashes, reboots
//! (some with the node's state lost or rolled back to an older backup),
//! daemon restarts with the services left running, daemon stops (handover),
//! partitions (one way and both), duplicating/delayed links losing 20% of
//! frames each way (even seeds) or less (odd seeds), failing services, sick PBXs, flapping PBX probes, silent arbiters and admin
//! commands, with the invariants checked after every step (and no false
//! failover: a Standby starting while it can hear a Main that does not
//! yield). A failure prints its seed; replay it with
//! `SIM_SEED=<seed> SIM_LOG=1 cargo test -p resilience-core --test random -- --nocapture`.
//!
//! Knobs: `SIM_SEEDS` (default 1000), `SIM_HOURS` (default 1),
//! `SIM_QUIET_SEEDS` (default 200, the quiet lossy link).

mod sim;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resilience_core::config::SplitBrainPolicy;
use resilience_core::node::{
    DataFailurePolicy, DataGate, DrainPolicy, FailbackPolicy, NewCallsPolicy,
};
use resilience_core::Command;
use sim::{Cluster, Flap, Stats, Timers, MAIN, STANDBY};
use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn secs_f(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> Duration {
    Duration::from_secs_f64(rng.random_range(lo..hi))
}

/// The shipped timers (200 ms / 3 s) with random policies around them.
fn random_timers(rng: &mut ChaCha8Rng) -> Timers {
    Timers {
        failback: match rng.random_range(0..3) {
            0 => FailbackPolicy::Immediate,
            1 => FailbackPolicy::Stable(secs_f(rng, 10.0, 600.0)),
            _ => FailbackPolicy::Manual,
        },
        split_brain: if rng.random_bool(0.5) {
            SplitBrainPolicy::Main
        } else {
            SplitBrainPolicy::Latest
        },
        drain: rng.random_bool(0.7).then(|| DrainPolicy {
            timeout: secs_f(rng, 5.0, 120.0),
            poll: Duration::from_secs(1),
        }),
        arbiters: rng.random_bool(0.3),
        start_attempts: rng.random_range(1..=4),
        retry_delay: secs_f(rng, 0.5, 5.0),
        fault_hold: secs_f(rng, 30.0, 300.0),
        ..Timers::default()
    }
}

/// One seed: a simulated `hours` of trouble. Returns the stats or the violation.
fn run_seed(seed: u64, hours: f64, log: bool) -> Result<Stats, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut timers = random_timers(&mut rng);
    // The failback data gate, drawn apart so the other draws of a seed
    // stay what they were.
    let mut data_rng = ChaCha8Rng::seed_from_u64(seed ^ 0xda7a_da7a);
    let gated = data_rng.random_bool(0.4);
    // Where new calls go during the failback drain, drawn apart too.
    let mut calls_rng = ChaCha8Rng::seed_from_u64(seed ^ 0xca11_ca11);
    if calls_rng.random_bool(0.5) {
        timers.new_calls = NewCallsPolicy::Main;
    }
    timers.failback_data = gated.then(|| DataGate {
        wait: secs_f(&mut data_rng, 2.0, 120.0),
        on_failure: if data_rng.random_bool(0.5) {
            DataFailurePolicy::Hold
        } else {
            DataFailurePolicy::Proceed
        },
    });
    // Faults added later (failed stops, admin holds, an arbiter silent during
    // an outage of the Main), drawn apart so the other draws of a seed stay
    // what they were.
    let mut more = ChaCha8Rng::seed_from_u64(seed ^ 0x0f00_57a1);
    let manual_failback = timers.failback == FailbackPolicy::Manual;
    let mut c = Cluster::new(seed, timers.clone());
    c.log_all = log;
    for i in 0..2 {
        c.hosts[i].start_latency = secs_f(&mut rng, 0.05, 2.0);
        c.hosts[i].stop_latency = secs_f(&mut rng, 0.05, 2.0);
    }
    if gated {
        c.hosts[MAIN].fetch_latency = secs_f(&mut data_rng, 0.05, 150.0);
        c.hosts[MAIN].fail_fetches = data_rng.random_range(0..4);
    }
    for from in 0..2 {
        let l = &mut c.links[from][1 - from];
        // Even seeds: the promise under test, a connected link losing 20%
        // of frames each way never causes a failover (checked after every
        // run). Odd seeds: any loss below that, clean links included.
        l.loss = if seed.is_multiple_of(2) {
            0.2
        } else {
            rng.random_range(0.0..0.2)
        };
        l.dup = rng.random_range(0.0..0.05);
        l.delay_min = Duration::from_micros(rng.random_range(100..5_000));
        l.delay_max = l.delay_min + Duration::from_micros(rng.random_range(0..30_000));
    }
    c.note(format!("seed {seed}: {timers:?}"));
    c.boot(MAIN);
    c.boot(STANDBY);
    let end = c.now + Duration::from_secs_f64(hours * 3600.0);
    let res: Result<(), String> = (|| {
        while c.now < end {
            let gap = Duration::from_secs_f64(-(1.0 - rng.random::<f64>()).ln() * 240.0);
            c.run_for(gap.min(end - c.now))?;
            if c.now >= end {
                break;
            }
            for i in 0..2 {
                if rng.random_bool(0.3) {
                    c.hosts[i].calls = rng.random_range(0..6);
                }
            }
            if manual_failback && rng.random_bool(0.5) && c.hosts[MAIN].alive() {
                let _ = c.command(MAIN, Command::Failback);
            }
            // A planned switchover, asked on either node (refused when the
            // peer is not ready).
            if rng.random_bool(0.2) {
                let i = rng.random_range(0..2);
                if c.hosts[i].alive() {
                    let _ = c.command(i, Command::Switchover);
                }
            }
            for i in 0..2 {
                if rng.random_bool(0.1) {
                    c.back_up(i);
                }
            }
            let lasting = secs_f(&mut rng, 1.0, 240.0);
            match more.random_range(0..12) {
                0 => {
                    let i = more.random_range(0..2);
                    let n = more.random_range(1..4);
                    c.fail_stops(i, n);
                }
                1 => {
                    // An admin holds a node (systemctl-like "stop services"
                    // in automatic mode), then releases it.
                    let i = more.random_range(0..2);
                    let hold = secs_f(&mut more, 1.0, 120.0);
                    if c.hosts[i].alive() {
                        let _ = c.command(i, Command::StopServices);
                        c.run_for(hold)?;
                        if c.hosts[i].alive() {
                            let _ = c.command(i, Command::StartServices { force: false });
                        }
                    }
                }
                2 if timers.arbiters => {
                    // The arbiter is silent for the Standby while the Main
                    // is down: no takeover until it answers again.
                    let down = secs_f(&mut more, 1.0, 60.0);
                    c.set_arbiter(STANDBY, false);
                    c.crash(MAIN);
                    c.run_for(down)?;
                    c.set_arbiter(STANDBY, true);
                    c.run_for(down)?;
                    c.boot(MAIN);
                }
                3 => {
                    // A frame of a node's earlier boot, replayed once the
                    // peer hears the new boot: refused.
                    let i = more.random_range(0..2);
                    let old = c.hosts[i].last_sent.clone();
                    if c.hosts[i].alive() && !old.is_empty() {
                        c.crash_daemon(i);
                        c.run_for(secs_f(&mut more, 0.01, 1.0))?;
                        c.boot(i);
                        let boot = c.hosts[i].boot_id;
                        // Both sides confirmed: the rebooted node has
                        // accepted its peer's frames too (the next fault must
                        // not land inside the handshake; a one-way cut
                        // inside it is a known gap, see ARCHITECTURE.md).
                        let heard = c.run_until(Duration::from_secs(10), |c| {
                            c.hosts[1 - i].heard().is_some_and(|h| h.frame.boot == boot)
                                && c.hosts[i].heard().is_some()
                        })?;
                        if heard && c.inject(1 - i, &old).is_ok() {
                            return Err(format!(
                                "{} accepted a frame of an earlier boot of its peer",
                                sim::NAMES[1 - i]
                            ));
                        }
                    }
                }
                _ => {}
            }
            // A crash that also costs the node its state, sometimes: the
            // disk is lost (first-boot facts) or restored from a backup.
            let lose_state =
                |c: &mut Cluster, rng: &mut ChaCha8Rng, i: usize| match rng.random_range(0..6) {
                    0 => c.lose_disk(i),
                    1 => c.restore_backup(i),
                    _ => {}
                };
            match rng.random_range(0..10) {
                0 => {
                    c.crash(MAIN);
                    lose_state(&mut c, &mut rng, MAIN);
                    c.run_for(lasting)?;
                    c.boot(MAIN);
                }
                1 => {
                    c.crash(STANDBY);
                    lose_state(&mut c, &mut rng, STANDBY);
                    c.run_for(lasting)?;
                    c.boot(STANDBY);
                }
                2 => {
                    c.cut();
                    c.run_for(lasting)?;
                    c.heal();
                }
                3 => {
                    let from = rng.random_range(0..2);
                    c.set_link(from, 1 - from, false);
                    c.run_for(lasting)?;
                    c.set_link(from, 1 - from, true);
                }
                4 if rng.random_bool(0.5) => {
                    // A flapping probe: single misses, or runs of them.
                    let i = rng.random_range(0..2);
                    let flap = if rng.random_bool(0.5) {
                        Flap::SingleMisses(rng.random_range(2..6))
                    } else {
                        Flap::Bursts {
                            down: rng.random_range(1..8),
                            up: rng.random_range(1..8),
                        }
                    };
                    c.flap_probe(i, Some(flap));
                    c.run_for(lasting)?;
                    c.flap_probe(i, None);
                }
                4 => {
                    let i = rng.random_range(0..2);
                    c.hosts[i].pbx_ok = false;
                    c.note(format!("== PBX of {} stops answering", sim::NAMES[i]));
                    c.run_for(lasting)?;
                    c.hosts[i].pbx_ok = true;
                    c.note(format!("== PBX of {} answers again", sim::NAMES[i]));
                }
                5 => {
                    let i = rng.random_range(0..2);
                    let n = rng.random_range(1..6);
                    c.fail_starts(i, n);
                }
                8 => {
                    // The daemon alone dies (SIGKILL, a crash, an upgrade's
                    // re-exec); its services keep running. Back soon (an
                    // upgrade, systemd's restart) or much later.
                    let i = rng.random_range(0..2);
                    c.crash_daemon(i);
                    let back = if rng.random_bool(0.7) {
                        secs_f(&mut rng, 0.01, 1.5)
                    } else {
                        lasting
                    };
                    c.run_for(back)?;
                    c.boot(i);
                }
                9 => {
                    // systemctl stop: the daemon hands over and exits.
                    let i = rng.random_range(0..2);
                    c.stop_daemon(i);
                    c.run_until(Duration::from_secs(300), |c| !c.hosts[i].alive())?;
                    c.run_for(lasting)?;
                    c.boot(i);
                }
                6 if timers.arbiters => {
                    c.set_arbiter(STANDBY, false);
                    c.run_for(lasting)?;
                    c.set_arbiter(STANDBY, true);
                }
                _ => {
                    // A crash of the Main during a partition: the worst mix.
                    c.cut();
                    c.run_for(lasting / 2)?;
                    c.crash(MAIN);
                    c.run_for(lasting / 2)?;
                    c.boot(MAIN);
                    c.run_for(lasting / 4)?;
                    c.heal();
                }
            }
        }
        Ok(())
    })();
    match res {
        Ok(()) => {
            if c.stats.false_failovers > 0 {
                return Err(format!(
                    "{} false failovers with link loss up to 20%\n{}",
                    c.stats.false_failovers,
                    c.dump_log()
                ));
            }
            Ok(c.stats)
        }
        Err(e) => Err(format!(
            "{e}\n--- last simulator log lines ---\n{}",
            c.dump_log()
        )),
    }
}

/// Run `f` over seeds on every core; collect the failures.
fn par_seeds<T: Send>(
    seeds: Vec<u64>,
    f: impl Fn(u64) -> Result<T, String> + Sync,
) -> (Vec<T>, Vec<(u64, String)>) {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let chunks: Vec<Vec<u64>> = (0..threads)
        .map(|t| seeds.iter().copied().skip(t).step_by(threads).collect())
        .collect();
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                let f = &f;
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|&seed| (seed, f(seed)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (seed, r) in h.join().expect("simulation thread panicked") {
                match r {
                    Ok(v) => ok.push(v),
                    Err(e) => failed.push((seed, e)),
                }
            }
        }
    });
    failed.sort_by_key(|(s, _)| *s);
    (ok, failed)
}

#[test]
fn random_seeds_keep_the_invariants() {
    let hours = env_u64("SIM_HOURS", 1) as f64;
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        if let Err(e) = run_seed(seed, hours, std::env::var_os("SIM_LOG").is_some()) {
            panic!("seed {seed}: {e}");
        }
        return;
    }
    let n = env_u64("SIM_SEEDS", 1000);
    let started = Instant::now();
    let (stats, failed) = par_seeds((0..n).collect(), |seed| run_seed(seed, hours, false));
    let total: Stats = stats.iter().fold(Stats::default(), |mut a, s| {
        a.failovers += s.failovers;
        a.failbacks += s.failbacks;
        a.new_calls_handoffs += s.new_calls_handoffs;
        a.false_failovers += s.false_failovers;
        a.frames_sent += s.frames_sent;
        a.frames_rejected += s.frames_rejected;
        a
    });
    eprintln!(
        "simulator: {n} seeds x {hours} simulated hour(s) = {} simulated hours, links losing 20% (even seeds) or less, in {:.1}s wall; \
         {} failovers, {} failbacks ({} with new calls handed to the main during the drain), {} false failovers, {} frames sent, {} dropped by the receiver",
        n as f64 * hours,
        started.elapsed().as_secs_f64(),
        total.failovers,
        total.failbacks,
        total.new_calls_handoffs,
        total.false_failovers,
        total.frames_sent,
        total.frames_rejected,
    );
    // The runs must exercise what they claim to: failovers and failbacks,
    // and the hand-off of new calls, played, not only configured.
    if failed.is_empty() && n >= 100 {
        assert!(
            u64::from(total.failovers) >= n && u64::from(total.failbacks) >= n / 2,
            "too few transitions to mean anything: {} failovers, {} failbacks over {n} seeds",
            total.failovers,
            total.failbacks
        );
        assert!(
            total.new_calls_handoffs > 0,
            "no seed handed new calls to the main"
        );
    }
    if let Some((seed, e)) = failed.first() {
        let seeds: Vec<u64> = failed.iter().map(|(s, _)| *s).collect();
        panic!(
            "{} of {n} seeds failed: {seeds:?}\nfirst, seed {seed}: {e}\n\
             replay: SIM_SEED={seed} SIM_LOG=1 cargo test -p resilience-core --test random -- --nocapture",
            failed.len()
        );
    }
}

/// A connected pair on a link that loses 20% of frames each way, with the
/// shipped timers and nothing else going on: the Standby never even starts,
/// in any seed. (The 500 even seeds above run at the same loss between their
/// faults; this is the plain statement, on fewer seeds to keep the suite fast.)
#[test]
fn twenty_percent_loss_never_fails_over_with_default_timers() {
    let n = env_u64("SIM_QUIET_SEEDS", 200);
    let hours = env_u64("SIM_HOURS", 1);
    let started = Instant::now();
    let (stats, failed) = par_seeds((0..n).collect(), |seed| {
        let mut c = Cluster::started(seed, Timers::default());
        c.set_loss(0.2);
        c.run_for(Duration::from_secs(3600 * hours))?;
        if c.stats.false_failovers > 0 || c.hosts[STANDBY].starts > 0 {
            return Err(format!("failover on a lossy link\n{}", c.dump_log()));
        }
        Ok(c.stats.frames_sent)
    });
    eprintln!(
        "20% loss, default timers (200 ms / 3 s): {n} seeds x {hours} h, {} frames, {} failed seeds, {:.1}s wall",
        stats.iter().sum::<u64>(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some((seed, e)) = failed.first() {
        panic!("seed {seed}: {e}");
    }
}

/// The figure: false failovers per simulated hour on a lossy but connected
/// link, for a keepalived-like tight window (advert 200 ms, master down after
/// 3 x 200 ms + VRRP skew) and for Resilience's defaults. Not an assertion on
/// the tight window: it shows why the default is what it is.
#[test]
fn false_failover_rate_by_loss() {
    let seeds = env_u64("SIM_FIGURE_SEEDS", 20);
    // VRRP skew time for a backup of priority 100: (256 - 100) / 256 x advert.
    let skew = Duration::from_secs_f64((256.0 - 100.0) / 256.0 * 0.2);
    let tight = Timers {
        failover_after: Duration::from_millis(600) + skew,
        startup_wait: Duration::from_millis(600) + skew,
        ..Timers::default()
    };
    let windows = [
        ("tight 200 ms / 722 ms (keepalived-like)", tight),
        ("default 200 ms / 3 s", Timers::default()),
    ];
    let mut table = String::from(
        "| window | loss | simulated hours | false failovers | per hour |\n|---|---|---|---|---|\n",
    );
    for (name, timers) in windows.iter() {
        for loss in [0.1, 0.2, 0.3] {
            let (counts, failed) = par_seeds((0..seeds).collect(), |seed| {
                let mut c = Cluster::started(seed, timers.clone());
                // Both nodes may serve after a false failover: that is what is measured.
                c.check = false;
                c.set_loss(loss);
                c.run_for(Duration::from_secs(3600))?;
                Ok(c.hosts[STANDBY].starts)
            });
            assert!(failed.is_empty(), "{failed:?}");
            let total: u32 = counts.iter().sum();
            table.push_str(&format!(
                "| {name} | {:.0}% | {seeds} | {total} | {:.2} |\n",
                loss * 100.0,
                total as f64 / seeds as f64
            ));
            if timers.failover_after == Duration::from_secs(3) && loss <= 0.2 {
                assert_eq!(total, 0, "default timers failed over at {loss} loss");
            }
        }
    }
    eprintln!("false failovers per simulated hour on a connected, lossy link:\n{table}");
}
