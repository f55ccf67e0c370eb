//! Manual mode: an admin's start is refused while the peer's services run
//! or may run, whatever the transition it is in (not only when it is Active).

mod sim;

use resilience_core::{Command, InputError, Mode, Status};
use sim::{play, secs, Cluster, Timers, MAIN, STANDBY};
use std::time::Duration;

fn manual() -> Timers {
    Timers {
        mode: Mode::Manual,
        ..Timers::default()
    }
}

/// Run until node `i` reports `s` (at most a minute).
fn until_status(c: &mut Cluster, i: usize, s: Status) -> Result<(), String> {
    let ok = c.run_until(secs(60), |c| c.hosts[i].status() == Some(s))?;
    ok.then_some(())
        .ok_or_else(|| format!("{} never reached {s:?}", sim::NAMES[i]))
}

/// The peer's status is known to this node once a frame carrying it lands.
fn heard_as(c: &mut Cluster, i: usize, s: Status) -> Result<(), String> {
    let ok = c.run_until(secs(2), |c| {
        c.hosts[i]
            .node()
            .snapshot(c.now)
            .peer
            .is_some_and(|p| p.status == Some(s))
    })?;
    ok.then_some(())
        .ok_or_else(|| format!("{} never heard its peer {s:?}", sim::NAMES[i]))
}

fn refused(c: &mut Cluster, i: usize) -> Result<(), String> {
    match c.command(i, Command::StartServices { force: false }) {
        Err(InputError::Refused { reason, .. }) => {
            c.note(format!("refused as expected: {reason}"));
            Ok(())
        }
        r => Err(format!(
            "start accepted beside a peer whose services may run: {r:?}"
        )),
    }
}

#[test]
fn a_start_is_refused_while_the_peer_is_starting() {
    play(31, manual(), |c| {
        c.hosts[MAIN].start_latency = secs(20);
        c.run_for(secs(5))?;
        c.command(MAIN, Command::StartServices { force: false })
            .map_err(|e| e.to_string())?;
        until_status(c, MAIN, Status::Starting)?;
        heard_as(c, STANDBY, Status::Starting)?;
        refused(c, STANDBY)
    });
}

#[test]
fn a_start_is_refused_while_the_peer_is_stopping() {
    play(32, manual(), |c| {
        c.hosts[MAIN].stop_latency = secs(20);
        c.run_for(secs(5))?;
        c.command(MAIN, Command::StartServices { force: false })
            .map_err(|e| e.to_string())?;
        until_status(c, MAIN, Status::Active)?;
        c.command(MAIN, Command::StopServices)
            .map_err(|e| e.to_string())?;
        until_status(c, MAIN, Status::Stopping)?;
        heard_as(c, STANDBY, Status::Stopping)?;
        refused(c, STANDBY)?;
        // Once the Main's services are stopped, the start goes through.
        until_status(c, MAIN, Status::Inactive)?;
        heard_as(c, STANDBY, Status::Inactive)?;
        c.command(STANDBY, Command::StartServices { force: false })
            .map_err(|e| e.to_string())?;
        c.run_for(Duration::from_secs(2))?;
        ensure!(c.hosts[STANDBY].is_active(), "standby did not start");
        Ok(())
    });
}
