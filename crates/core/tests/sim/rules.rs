//! Checks of the rules themselves, from what the checker saw on the wire
//! rather than from the nodes' own reasoning: every decision is checked
//! against the frames its node had accepted when it took it.
//!
//! Each check here was written against a bug injected into the core that
//! every other test let through (a takeover after half of `failover_after`,
//! a failed stop reported as Inactive, a handover to a yielding peer, a
//! stable timer not reset by a silence, both nodes stepping down in one split
//! brain, an epoch not persisted).

use super::*;

impl Cluster {
    /// State that must hold after every step.
    pub(super) fn check_state(&mut self) -> Result<(), String> {
        let now = self.now;
        // A switchover may wait failover_after more for a switched-away
        // Main to drop its hold, or for a silent receiver to be called so.
        let drain_bound = self
            .timers
            .drain
            .map_or(Duration::ZERO, |d| d.timeout + d.poll)
            + self.timers.failover_after
            + Duration::from_secs(1);
        for (i, h) in self.hosts.iter_mut().enumerate() {
            let Some(n) = h.node.as_ref() else { continue };
            // Epochs only go up within a boot.
            if n.epoch() < h.last_epoch {
                return Err(format!(
                    "{}'s epoch went down from {} to {}",
                    NAMES[i],
                    h.last_epoch,
                    n.epoch()
                ));
            }
            h.last_epoch = n.epoch();
            // A drain ends by its timeout (the stop that follows is bounded
            // by the "stuck" check).
            if let Some((Status::Draining, since)) = h.seen {
                if now - since > drain_bound {
                    return Err(format!(
                        "{} drained for {:.1}s (bound {drain_bound:?})",
                        NAMES[i],
                        (now - since).as_secs_f64()
                    ));
                }
            }
            // The peer starts when this node says Inactive: it must be true.
            if n.status() == Status::Inactive && h.services && !h.left_at_boot {
                return Err(format!(
                    "{} reports Inactive while its services may run",
                    NAMES[i]
                ));
            }
            // What the node would boot from is what it means to keep.
            if h.persists_in_flight == 0 && h.disk != n.facts() {
                return Err(format!(
                    "{} persisted {:?} but holds {:?}",
                    NAMES[i],
                    h.disk,
                    n.facts()
                ));
            }
        }
        Ok(())
    }

    /// A decision (an event of node `i`), checked against the frames node
    /// `i` had accepted when it took it. A violation is reported by the
    /// next invariant check.
    pub(super) fn check_decision(&mut self, i: usize, e: &Event) {
        if self.violation.is_some() || !self.check {
            return;
        }
        if let Some(v) = self.decision_violation(i, e) {
            self.violation = Some(v);
        }
    }

    fn decision_violation(&mut self, i: usize, e: &Event) -> Option<String> {
        let now = self.now;
        let t = self.timers.clone();
        let h = &self.hosts[i];
        // A disabled node has its own rule (the guard), tested apart.
        let automatic = t.mode == Mode::Automatic && h.settings.node_type != NodeType::Disabled;
        // The frame the node acts on: accepted within failover_after.
        let alive = h.heard.as_ref().filter(|p| now - p.at < t.failover_after);
        let silent_for = now
            - h.heard
                .as_ref()
                .map_or(h.booted_at, |p| p.at.max(h.booted_at));
        let since_boot = now - h.booted_at;
        match &e.kind {
            EventKind::StatusChanged {
                from: Status::Inactive,
                to: Status::Starting,
            } if automatic => {
                let own = h.node.as_ref().map_or(0, |n| n.epoch());
                if let Some(p) = h.heard.as_ref().filter(|p| own <= p.frame.epoch) {
                    return Some(format!(
                        "{} started with epoch {own}, not above its peer's {}",
                        NAMES[i], p.frame.epoch
                    ));
                }
                if i == STANDBY && alive.is_none() && t.arbiters && !h.arbiter {
                    return Some(
                        "standby took over a silent main with no arbiter answering".into(),
                    );
                }
                if i == STANDBY {
                    match alive {
                        // Only a Main that says it yields hands over early.
                        Some(p) => {
                            let f = &p.frame;
                            (f.status != Status::Inactive || !f.flags.has(Flags::YIELDING)).then(
                                || {
                                    format!(
                                        "standby started while hearing the main {} without yielding ({:?})",
                                        f.status, f.flags
                                    )
                                },
                            )
                        }
                        // No takeover before failover_after of silence.
                        None => (silent_for < t.failover_after || since_boot < t.failover_after)
                            .then(|| {
                                format!(
                                    "standby took over after {:.3}s of silence (failover_after {:?})",
                                    silent_for.as_secs_f64(),
                                    t.failover_after
                                )
                            }),
                    }
                } else {
                    match alive {
                        Some(p) => {
                            let f = &p.frame;
                            // `new_calls = "main"`: the Main starts beside a
                            // Standby that drains and offers it the new calls.
                            let offered = f.status == Status::Draining
                                && f.flags.has(Flags::OFFERS_NEW_CALLS)
                                && t.new_calls == NewCallsPolicy::Main;
                            let ready =
                                f.status == Status::Inactive && !f.flags.has(Flags::ADOPTING);
                            (!offered && !ready).then(|| {
                                format!(
                                    "main started while hearing the standby {} ({:?})",
                                    f.status, f.flags
                                )
                            })
                        }
                        None => (silent_for < t.startup_wait).then(|| {
                            format!(
                                "main started after {:.3}s of silence (startup_wait {:?})",
                                silent_for.as_secs_f64(),
                                t.startup_wait
                            )
                        }),
                    }
                }
            }
            // No failback before the stable time of unbroken hearing.
            EventKind::FailbackRequested if i == MAIN => {
                let FailbackPolicy::Stable(d) = t.failback else {
                    return None;
                };
                let heard_for = alive.map_or(Duration::ZERO, |p| now - p.since.max(h.booted_at));
                // An admin's failback skips the stable time: only the
                // policy's own request is bound by it.
                let by_policy = e.reason.starts_with("failback policy");
                (by_policy && heard_for < d).then(|| {
                    format!(
                        "failback asked after {:.3}s of unbroken hearing (stable time {d:?})",
                        heard_for.as_secs_f64()
                    )
                })
            }
            // A flapping probe that never missed twice in a row never
            // moves the service: a single miss is noise.
            EventKind::Faulted { .. }
                if e.reason.starts_with("local PBX down")
                    && h.probe
                        .as_ref()
                        .is_some_and(|p| p.longest_misses < PROBE_MISSES_FOR_DOWN) =>
            {
                Some(format!(
                    "{} handed over on single missed probes ({})",
                    NAMES[i], e.reason
                ))
            }
            // A node whose PBX is down hands over only to a ready peer.
            EventKind::Faulted { .. } if !h.pbx_ok && h.services => {
                let ready = alive.is_some_and(|p| {
                    let overlap = t.new_calls == NewCallsPolicy::Main
                        && p.frame.status == Status::Draining
                        && p.frame.flags.has(Flags::OFFERS_NEW_CALLS);
                    (p.frame.status == Status::Inactive || overlap)
                        && p.frame.flags.has(Flags::HEARS_PEER)
                        && !p.frame.flags.has(Flags::YIELDING)
                });
                (!ready).then(|| {
                    format!(
                        "{} handed its service over to a peer that cannot serve ({:?})",
                        NAMES[i],
                        alive.map(|p| (p.frame.status, p.frame.flags))
                    )
                })
            }
            // A peer is silent after failover_after without a frame, not
            // before: every rule that starts or hands over builds on it.
            EventKind::PeerSilent { .. } => (silent_for < t.failover_after).then(|| {
                format!(
                    "{} called its peer silent after {:.3}s without a frame (failover_after {:?})",
                    NAMES[i],
                    silent_for.as_secs_f64(),
                    t.failover_after
                )
            }),
            // One split brain: exactly one of the two steps down, the one
            // the policy names.
            EventKind::SplitBrain { winner, .. } => {
                let winner = *winner;
                if let Some(p) = alive {
                    let own = h.node.as_ref().map_or(0, |n| n.epoch());
                    let theirs = p.frame.epoch;
                    let me_main = i == MAIN;
                    let by_type = t.split_brain == SplitBrainPolicy::Main
                        && p.frame.node_type != h.settings.node_type;
                    let should_lose = if by_type {
                        !me_main
                    } else {
                        (own, me_main) < (theirs, !me_main)
                    };
                    if winner == should_lose {
                        let did = if winner {
                            "stayed active in"
                        } else {
                            "stepped down in"
                        };
                        let it = if winner { "loses" } else { "wins" };
                        return Some(format!(
                            "{} {did} a split brain it {it} ({:?}: epoch {own} here, {theirs} on the peer)",
                            NAMES[i], t.split_brain
                        ));
                    }
                }
                if winner {
                    return None;
                }
                let other = self.hosts[1 - i].split_step_down;
                self.hosts[i].split_step_down = Some(now);
                other
                    .is_some_and(|o| now - o < t.failover_after)
                    .then(|| "both nodes stepped down in one split brain".to_string())
            }
            _ => None,
        }
    }
}
