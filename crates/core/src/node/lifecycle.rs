//! The daemon's own life: what a node does when its daemon stops, and what
//! a restarted daemon does with the services it finds running.
//!
//! - **Stop = handover.** On [`Input::Shutdown`] the node sets `LEAVING`
//!   (with `YIELDING`) in a heartbeat sent at once, drains per policy (at
//!   most `stop_timeout`), stops its services, reports Inactive in a few
//!   frames and is then [done](Node::is_done). Its peer starts on that frame
//!   by the "peer yields" rules (a Standby: Main Inactive and yielding; a
//!   Main: Standby Inactive), not after `failover_after` of silence. Every
//!   mode stops its services: a stopped daemon never leaves a PBX running
//!   (services found in an unclear state at boot included). A serving
//!   Standby hands back as at failback: it serves until its Main asks,
//!   which the Main does once its data gate has brought the kept data home
//!   (`data.rs`); a node that served stays until its peer has taken the
//!   service. Both waits end at `stop_timeout`. The split-brain rule still
//!   applies while leaving.
//! - **Restart = nothing happens.** At boot the runtime reports what runs
//!   ([`ServicesAtBoot`]). Services that all run, on a node whose persisted
//!   facts say it was serving, are adopted, not restarted, once the peer is
//!   heard not claiming the service or is not heard within the boot wait
//!   (a quarter of `failover_after`, so the peer, which hears a new boot
//!   after one heartbeat each way, never sees this node silent long enough
//!   to fail over). Meanwhile the node reports Inactive with `ADOPTING`, on
//!   which a Main never starts. A claiming peer, an admin's hold, facts that
//!   say the node was not serving, or services in an unclear state: the
//!   services are stopped, as at any boot. The same rule covers an upgrade
//!   (re-exec of the new binary) and a daemon crash.

use super::*;

impl Node {
    /// The runtime may exit: the daemon was asked to stop, the services are
    /// stopped and the peer was told.
    pub fn is_done(&self) -> bool {
        self.left
    }

    /// Whether the daemon is stopping (after [`Input::Shutdown`]).
    pub fn is_leaving(&self) -> bool {
        self.leaving.is_some()
    }

    /// No service action in flight and no transition under way: the daemon
    /// may re-exec itself (an upgrade) without leaving anything half done.
    pub fn is_quiescent(&self) -> bool {
        self.service_op.is_none()
            && self.leaving.is_none()
            && self.adopt_until.is_none()
            && matches!(self.status, Status::Inactive | Status::Active)
    }

    /// How long a restarted node waits to hear its peer before it adopts
    /// services left running: long enough for a living peer to be heard (a
    /// challenge and its echo take a round or two of heartbeats, so at least
    /// three intervals, even with `failover_after` at its minimum of three
    /// intervals), and at most half the peer's `failover_after` (an older
    /// peer drops the ADOPTING frames and hears silence meanwhile).
    pub fn boot_wait(&self) -> Duration {
        (self.s.failover_after / 4)
            .max(self.s.interval * 3)
            .min(self.s.failover_after / 2)
    }

    pub(super) fn set_serving(&mut self, serving: bool) {
        if self.serving != serving {
            self.serving = serving;
            self.persist();
        }
    }

    /// The boot rule: adopt, stop, or leave to the usual rules.
    pub(super) fn reconcile_at_boot(&mut self, services: ServicesAtBoot) {
        // Nodes that start at once whatever the peer does.
        let wanted_now = self.s.node_type == NodeType::Disabled
            || (self.s.mode == Mode::Manual && self.admin == Some(AdminChoice::Start));
        match services {
            ServicesAtBoot::Stopped => {
                if self.serving {
                    // Was serving, nothing runs now: a host reboot, or the
                    // services died with the daemon.
                    self.set_serving(false);
                }
            }
            ServicesAtBoot::Running if wanted_now => {
                self.adopt("services found running".into());
            }
            // Starts at once anyway (as before: the start runs again); a
            // disabled node waits `startup_wait` first, and a stop meanwhile
            // must not leave what may run behind (`handle_shutdown`).
            ServicesAtBoot::Unclear if wanted_now => self.maybe_running = true,
            ServicesAtBoot::Running
                if self.s.mode == Mode::Automatic
                    && self.serving
                    && self.admin != Some(AdminChoice::Stop) =>
            {
                let wait = self.boot_wait();
                self.adopt_until = Some(self.now + wait);
                self.event(
                    EventKind::Adopting,
                    format!(
                        "services left running by this node's last run, which was serving: adopting them unless {} serves (waiting up to {} to hear it)",
                        self.peer_label(),
                        human(wait)
                    ),
                );
            }
            ServicesAtBoot::Running | ServicesAtBoot::Unclear => {
                let what = if services == ServicesAtBoot::Running {
                    "services run"
                } else {
                    "services run or may run (no clear state)"
                };
                let why = if self.admin == Some(AdminChoice::Stop) {
                    "an admin had stopped services"
                } else if !self.serving {
                    "this node was not serving when its daemon last ran"
                } else {
                    "this node starts inactive"
                };
                self.stop_left_running(format!("{what} while {why}: stopping them"));
            }
        }
    }

    /// While adopting: adopt when the peer is heard not claiming the service
    /// or the boot wait ends; stop when the peer claims it.
    pub(super) fn decide_adoption(&mut self) {
        let Some(until) = self.adopt_until else {
            return;
        };
        let peer = self.peer_label().to_owned();
        match self.peer_frame() {
            // A Main restarted (an upgrade, a crash) during the planned
            // overlap of `failback.new_calls = "main"` keeps the calls it
            // took: the draining Standby is no rival (`new_calls.rs`).
            Some(f)
                if f.status.occupies()
                    && !(self.s.node_type == NodeType::Main && self.planned_overlap(f)) =>
            {
                let why = format!(
                    "{peer} is {} (epoch {}): stopping the services this node left running",
                    f.status, f.epoch
                );
                self.adopt_until = None;
                self.stop_left_running(why);
            }
            Some(f) => {
                let why = format!("{peer} is {}", f.status);
                self.adopt_until = None;
                self.adopt(why);
            }
            None if self.now >= until => {
                let why = format!("{peer} not heard within {}", human(self.boot_wait()));
                self.adopt_until = None;
                self.adopt(why);
            }
            None => {}
        }
    }

    /// Take services that run as this node's own, without touching them.
    fn adopt(&mut self, why: String) {
        let peer_epoch = self.peer.frame().map_or(0, |f| f.epoch);
        if peer_epoch >= self.epoch {
            self.epoch = peer_epoch + 1;
        }
        self.serving = true;
        self.persist();
        self.set_status(
            Status::Active,
            format!("adopted the services left running, not restarted ({why})"),
        );
        self.resume_after_restart();
    }

    /// Stop services that run while the node is Inactive.
    fn stop_left_running(&mut self, why: String) {
        self.retry_at = None;
        let id = self.action(ActionKind::StopServices);
        self.service_op = Some((id, ServiceOp::Stop));
        self.set_status(Status::Stopping, why);
    }

    pub(super) fn handle_shutdown(&mut self) {
        if self.leaving.is_some() {
            return;
        }
        let until = self.now + self.s.stop_timeout;
        self.leaving = Some(until);
        self.leave_wait = self.status.claims();
        self.want_active = false;
        self.failback_now = false;
        if let Some(d) = self.drain.as_mut() {
            d.deadline = d.deadline.min(until);
        }
        let peer = self.peer_label().to_owned();
        let mut why = match self.status {
            Status::Inactive if self.adopt_until.is_none() => {
                "the daemon is stopping; services are not running".to_string()
            }
            _ => format!(
                "the daemon is stopping: handing over to {peer} (drain at most {}), then stopping services",
                human(self.s.stop_timeout)
            ),
        };
        if self.s.peer_name.is_some() && self.status != Status::Inactive {
            match self.peer_frame() {
                None => why.push_str(&format!(
                    "; {peer} is not heard: no node will serve until it is"
                )),
                Some(f) if f.flags.has(Flags::YIELDING) => why.push_str(&format!(
                    "; {peer} yields (held or faulted): no node will serve"
                )),
                Some(_) => {}
            }
        }
        self.event(EventKind::Leaving, why);
        if self.adopt_until.take().is_some() {
            self.stop_left_running("the daemon is stopping before it adopted the services".into());
        } else if self.maybe_running && self.status == Status::Inactive {
            // Never exit leaving a PBX running behind (only a restart that
            // adopts may).
            self.stop_left_running(
                "the daemon is stopping; services found in an unclear state at boot may run: stopping them"
                    .into(),
            );
        }
        // A failed stop waiting for its retry keeps it: the daemon exits
        // only once its services are stopped.
        if self.status != Status::Stopping {
            self.retry_at = None;
        }
        // Tell the peer now, not at the next tick.
        self.send_heartbeat();
    }

    /// A node that served when told to stop stays (sending heartbeats) until
    /// its peer takes the service, at most until the stop timeout: the
    /// peer, a Main, first fetches the `keep_on_failback` data from it, as
    /// at failback (`data.rs`), which needs this daemon to answer. A peer
    /// not heard, yielding or not hearing this node will not take it: no
    /// wait then.
    fn awaits_taker(&self) -> bool {
        if !self.leave_wait || self.leaving.is_none_or(|t| self.now >= t) {
            return false;
        }
        self.peer_frame().is_some_and(|f| {
            f.status == Status::Inactive
                && !f.flags.has(Flags::YIELDING)
                && f.flags.has(Flags::HEARS_PEER)
        })
    }

    /// A serving Standby told to stop hands back as at failback: it keeps
    /// serving until its Main asks (`WANT_ACTIVE`), which the Main does once
    /// its data gate has brought the kept data home (`data.rs`), so the
    /// copy never runs with no one serving. At most until the stop timeout;
    /// no wait for a Main that cannot take the service.
    fn awaits_ask(&self) -> bool {
        if self.s.node_type != NodeType::Standby || self.leaving.is_none_or(|t| self.now >= t) {
            return false;
        }
        self.peer_frame().is_some_and(|f| {
            f.node_type == NodeType::Main
                && f.mode == Mode::Automatic
                && f.status == Status::Inactive
                && f.flags.has(Flags::HEARS_PEER)
                && !f.flags.has(Flags::YIELDING)
                && !f.flags.has(Flags::WANT_ACTIVE)
        })
    }

    /// The stopping daemon: drain, stop, then done.
    pub(super) fn decide_leaving(&mut self) {
        match self.status {
            Status::Inactive if self.service_op.is_none() && !self.left && self.awaits_taker() => {}
            Status::Inactive if self.service_op.is_none() && !self.left => {
                self.left = true;
                self.set_serving(false);
                self.event(
                    EventKind::Left,
                    "services stopped and the peer told: the daemon exits".into(),
                );
                // The last word, sent a few times: a lost datagram would
                // leave the peer waiting for failover_after.
                for _ in 0..3 {
                    self.send_heartbeat();
                }
            }
            Status::Inactive => {}
            Status::Starting => self.begin_stop("the daemon is stopping".into()),
            Status::Active if self.awaits_ask() => {}
            Status::Active => self.begin_drain("the daemon is stopping".into()),
            Status::Draining => self.continue_drain(),
            Status::Stopping => {}
        }
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
