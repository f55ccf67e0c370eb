//! Which PBX each phone is served by (IP Office's "Phone Resilience" and "When Does Failback Occur"),
//! sans-IO: health changes, relayed REGISTERs and dialogs come in with the
//! time; the serving system of a phone comes out, and every move is an
//! event with its reason.
//!
//! - A phone has a home (the Main unless the config says otherwise) and a
//!   backup. It moves to the backup once its home has been down for
//!   `failover_after` — not at the first lost probe.
//! - It moves back once home has been up for `failback_stable` and the
//!   phone has no call in progress through the edge (calls continue where
//!   they are; new ones start at home).
//! - For `homeless_window` after a failback, a REGISTER that home rejects
//!   (5xx, 408) or does not answer within `register_timeout` sends the
//!   phone back to the backup, so a phone is never left registered nowhere.
//! - A phone away from home may be given a shorter registration expiry
//!   (`away_expires`), so it re-registers, and comes home, sooner.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A PBX the edge relays to; the index in the edge's list (0: Main).
pub type System = usize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub failover_after: Duration,
    pub failback_stable: Duration,
    pub homeless_window: Duration,
    pub register_timeout: Duration,
    pub away_expires: Option<u32>,
    /// A call never answered (its final response lost, the PBX died under
    /// it) stops counting after this: RFC 3261's Timer C.
    pub call_unanswered: Duration,
    /// An answered call whose BYE the edge never saw stops counting after
    /// this; a real longer call is not cut (its requests follow its route),
    /// only its phone may fail back.
    pub call_max: Duration,
}

impl Default for Policy {
    /// IP Office's figures: 3 minutes before failover, 10 stable minutes
    /// before failback, a 5-minute homeless-prevention window.
    fn default() -> Policy {
        Policy {
            failover_after: Duration::from_secs(180),
            failback_stable: Duration::from_secs(600),
            homeless_window: Duration::from_secs(300),
            register_timeout: Duration::from_secs(4),
            away_expires: Some(120),
            call_unanswered: Duration::from_secs(180),
            call_max: Duration::from_secs(4 * 3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Health {
    up: bool,
    since: Instant,
}

/// What the edge knows of one phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone {
    pub aor: String,
    pub home: System,
    pub backup: System,
    pub serving: System,
    pub since: Instant,
    /// The phone's contact as last registered (its flow, as text).
    pub contact: Option<String>,
    pub last_register: Option<Instant>,
    /// Calls in progress through the edge.
    pub calls: usize,
    /// Failing back: until then a failed REGISTER at home sends it back.
    pub homeless_until: Option<Instant>,
    /// A REGISTER sent home during the window, not answered yet.
    pending_register: Option<Instant>,
    /// Sent back by the homeless-prevention rule: no new failback before
    /// this, so a home that accepts probes but not phones is not ping-ponged.
    hold_until: Option<Instant>,
}

impl Phone {
    /// Served by its backup (IP Office's "guest" phone).
    pub fn is_guest(&self) -> bool {
        self.serving != self.home
    }
}

#[derive(Debug, Clone)]
struct Call {
    phones: Vec<String>,
    until: Instant,
}

/// A change worth a log line and a row in the event history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub aor: String,
    pub from: System,
    pub to: System,
    pub reason: String,
}

#[derive(Debug)]
pub struct Router {
    policy: Policy,
    health: Vec<Health>,
    /// Home of a phone by exact AOR or by user-part prefix; else system 0.
    homes: Vec<(String, System)>,
    phones: HashMap<String, Phone>,
    /// Which phones are in which call (Call-ID), and until when it counts.
    calls: HashMap<String, Call>,
    moves: Vec<Move>,
    /// The earliest deadline of any phone: kept as events come in, so
    /// neither a request nor `poll_timeout` walks the whole table (a storm
    /// of 10,000 REGISTERs would otherwise cost 10,000 × 10,000 checks).
    next: Option<Instant>,
}

impl Router {
    /// `systems`: how many PBXs; all start down until a probe says
    /// otherwise. `homes`: (AOR or user prefix, system).
    pub fn new(
        policy: Policy,
        systems: usize,
        homes: Vec<(String, System)>,
        now: Instant,
    ) -> Router {
        Router {
            policy,
            health: vec![
                Health {
                    up: false,
                    since: now
                };
                systems.max(1)
            ],
            homes,
            phones: HashMap::new(),
            calls: HashMap::new(),
            moves: Vec::new(),
            next: None,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn is_up(&self, s: System) -> bool {
        self.health.get(s).is_some_and(|h| h.up)
    }

    /// A system's health as the probes see it (OPTIONS and, where
    /// configured, the node's Active flag).
    pub fn handle_health(&mut self, now: Instant, s: System, up: bool) {
        if let Some(h) = self.health.get_mut(s) {
            if h.up != up {
                *h = Health { up, since: now };
            }
        }
        self.handle_timeout(now);
    }

    fn home_of(&self, aor: &str) -> System {
        let user = aor
            .strip_prefix("sip:")
            .unwrap_or(aor)
            .split('@')
            .next()
            .unwrap_or_default();
        self.homes
            .iter()
            .find(|(k, _)| k == aor || (!k.contains(':') && user.starts_with(k.as_str())))
            .map_or(0, |(_, s)| *s)
            .min(self.health.len() - 1)
    }

    fn backup_of(&self, home: System) -> System {
        if self.health.len() < 2 {
            home
        } else {
            (home + 1) % self.health.len()
        }
    }

    fn down_for(&self, s: System, now: Instant) -> Option<Duration> {
        let h = self.health.get(s)?;
        (!h.up).then(|| now.saturating_duration_since(h.since))
    }

    fn up_for(&self, s: System, now: Instant) -> Option<Duration> {
        let h = self.health.get(s)?;
        h.up.then(|| now.saturating_duration_since(h.since))
    }

    fn phone(&mut self, now: Instant, aor: &str) -> &mut Phone {
        if !self.phones.contains_key(aor) {
            let home = self.home_of(aor);
            let backup = self.backup_of(home);
            // A phone first seen while home is down starts on the backup:
            // nothing to wait for, it has nowhere else to register.
            let serving = if !self.is_up(home) && self.is_up(backup) {
                backup
            } else {
                home
            };
            self.phones.insert(
                aor.to_owned(),
                Phone {
                    aor: aor.to_owned(),
                    home,
                    backup,
                    serving,
                    since: now,
                    contact: None,
                    last_register: None,
                    calls: 0,
                    homeless_until: None,
                    pending_register: None,
                    hold_until: None,
                },
            );
            self.remember_deadline(aor);
        }
        self.phones.get_mut(aor).expect("inserted above")
    }

    /// Where a new request (REGISTER, INVITE, …) from the phone goes: its
    /// serving system, or None when no PBX can take it.
    pub fn route(&mut self, now: Instant, aor: &str) -> Option<System> {
        let p = self.phone(now, aor);
        let s = p.serving;
        let other = if s == p.home { p.backup } else { p.home };
        if self.is_up(s) {
            Some(s)
        } else if self.is_up(other) {
            // Both ends of the rules are waiting (failover delay not over),
            // but the serving one is down: the request still goes where it
            // is answered rather than nowhere.
            Some(other)
        } else {
            None
        }
    }

    /// A REGISTER of the phone was sent to `to`.
    pub fn handle_register_sent(&mut self, now: Instant, aor: &str, contact: &str, to: System) {
        let p = self.phone(now, aor);
        p.contact = Some(contact.to_owned());
        if to == p.home && p.homeless_until.is_some_and(|u| now < u) && p.pending_register.is_none()
        {
            p.pending_register = Some(now);
            self.remember_deadline(aor);
        }
    }

    /// The final answer to the phone's REGISTER.
    pub fn handle_register_answer(&mut self, now: Instant, aor: &str, code: u16) {
        let Some(p) = self.phones.get_mut(aor) else {
            return;
        };
        p.pending_register = None;
        if (200..300).contains(&code) {
            p.last_register = Some(now);
            return;
        }
        if (code >= 500 || code == 408)
            && p.serving == p.home
            && p.homeless_until.is_some_and(|u| now < u)
        {
            let backup = p.backup;
            self.move_phone(
                now,
                aor,
                backup,
                format!(
                    "home answered its REGISTER with {code} during the homeless-prevention window"
                ),
            );
        }
    }

    /// A call began (INVITE relayed) for this phone.
    pub fn handle_call(&mut self, now: Instant, call_id: &str, aor: &str) {
        let until = now + self.policy.call_unanswered;
        let call = self
            .calls
            .entry(call_id.to_owned())
            .or_insert_with(|| Call {
                phones: Vec::new(),
                until,
            });
        if call.phones.iter().any(|a| a == aor) {
            return;
        }
        call.phones.push(aor.to_owned());
        let until = call.until;
        self.phone(now, aor).calls += 1;
        self.next = Some(self.next.map_or(until, |n| n.min(until)));
    }

    /// The call was answered (a 2xx to its INVITE): it now counts until
    /// its BYE, or `call_max`.
    pub fn handle_call_answered(&mut self, now: Instant, call_id: &str) {
        if let Some(c) = self.calls.get_mut(call_id) {
            c.until = now + self.policy.call_max;
        }
    }

    /// The call ended (BYE, or the INVITE failed).
    pub fn handle_call_end(&mut self, now: Instant, call_id: &str) {
        let phones = self
            .calls
            .remove(call_id)
            .map(|c| c.phones)
            .unwrap_or_default();
        for aor in phones {
            if let Some(p) = self.phones.get_mut(&aor) {
                p.calls = p.calls.saturating_sub(1);
            }
            self.check(now, &aor);
        }
    }

    fn move_phone(&mut self, now: Instant, aor: &str, to: System, reason: String) {
        let window = self.policy.homeless_window;
        let Some(p) = self.phones.get_mut(aor) else {
            return;
        };
        if p.serving == to {
            return;
        }
        let from = p.serving;
        if from == p.home && p.homeless_until.is_some_and(|u| now < u) {
            p.hold_until = Some(now + self.policy.failback_stable);
        }
        p.serving = to;
        p.since = now;
        p.pending_register = None;
        p.homeless_until = (to == p.home).then_some(now + window);
        self.moves.push(Move {
            aor: aor.to_owned(),
            from,
            to,
            reason,
        });
        self.remember_deadline(aor);
    }

    /// What the rules say of one phone at `now`: where it must go, and why.
    fn due(&self, p: &Phone, now: Instant) -> Option<(System, String)> {
        let policy = &self.policy;
        if p.serving == p.home {
            if let Some(sent) = p.pending_register {
                if now.saturating_duration_since(sent) >= policy.register_timeout
                    && p.homeless_until.is_some()
                {
                    return Some((
                        p.backup,
                        format!(
                            "home did not answer its REGISTER within {:?} during the homeless-prevention window",
                            policy.register_timeout
                        ),
                    ));
                }
            }
            let down = self.down_for(p.home, now)?;
            (p.backup != p.home && self.is_up(p.backup) && down >= policy.failover_after).then(
                || {
                    (
                        p.backup,
                        format!(
                            "home down for {down:?} (failover after {:?})",
                            policy.failover_after
                        ),
                    )
                },
            )
        } else {
            let up = self.up_for(p.home, now)?;
            (up >= policy.failback_stable && p.calls == 0 && p.hold_until.is_none_or(|h| now >= h))
                .then(|| {
                    (
                        p.home,
                        format!(
                            "home up for {up:?} (stable after {:?}) and the phone is idle",
                            policy.failback_stable
                        ),
                    )
                })
        }
    }

    /// When the rules may next move this phone. (A down backup, or a busy
    /// phone, waits for a health change or a hang-up, which re-run them.)
    fn deadline_of(&self, p: &Phone) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut consider = |t: Instant| at = Some(at.map_or(t, |a: Instant| a.min(t)));
        if p.serving == p.home {
            if let Some(sent) = p.pending_register {
                consider(sent + self.policy.register_timeout);
            }
            if let Some(h) = self.health.get(p.home).filter(|h| !h.up) {
                if self.is_up(p.backup) && p.backup != p.home {
                    consider(h.since + self.policy.failover_after);
                }
            }
        } else if let Some(h) = self.health.get(p.home).filter(|h| h.up) {
            if p.calls == 0 {
                let t = h.since + self.policy.failback_stable;
                consider(p.hold_until.map_or(t, |hold| hold.max(t)));
            }
        }
        at
    }

    fn remember_deadline(&mut self, aor: &str) {
        if let Some(t) = self.phones.get(aor).and_then(|p| self.deadline_of(p)) {
            self.next = Some(self.next.map_or(t, |n| n.min(t)));
        }
    }

    /// Apply the rules to one phone now.
    fn check(&mut self, now: Instant, aor: &str) {
        let due = self.phones.get(aor).and_then(|p| self.due(p, now));
        match due {
            Some((to, why)) => self.move_phone(now, aor, to, why),
            None => self.remember_deadline(aor),
        }
    }

    /// Apply the rules at `now` to every phone: failovers whose delay is
    /// over, failbacks whose stable time is over and whose phone is idle,
    /// REGISTERs home left unanswered.
    pub fn handle_timeout(&mut self, now: Instant) {
        let stale: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| c.until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.handle_call_end(now, &id);
        }
        let todo: Vec<(String, System, String)> = self
            .phones
            .values()
            .filter_map(|p| self.due(p, now).map(|(to, why)| (p.aor.clone(), to, why)))
            .collect();
        for (aor, to, why) in todo {
            self.move_phone(now, &aor, to, why);
        }
        self.next = self
            .phones
            .values()
            .filter_map(|p| self.deadline_of(p))
            .chain(self.calls.values().map(|c| c.until))
            .min();
    }

    /// When the rules next need [`Router::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    /// Moves since the last call, oldest first.
    pub fn poll_moves(&mut self) -> Vec<Move> {
        std::mem::take(&mut self.moves)
    }

    /// The expiry to grant a phone's registration: shorter while away.
    pub fn expires_for(&self, aor: &str, granted: u32) -> u32 {
        match (self.phones.get(aor), self.policy.away_expires) {
            (Some(p), Some(away)) if p.is_guest() => granted.min(away),
            _ => granted,
        }
    }

    pub fn phones(&self) -> impl Iterator<Item = &Phone> {
        self.phones.values()
    }

    pub fn phone_of(&self, aor: &str) -> Option<&Phone> {
        self.phones.get(aor)
    }
}

#[cfg(test)]
mod tests;
