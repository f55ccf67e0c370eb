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

//! - The table is bounded: a phone has an entry only once a PBX has answered
//!   its REGISTER with a 2xx; the entry goes when the registration expires
//!   (plus [`GRACE`]) or when the phone unregisters, and beyond
//!   `max_phones` a new phone is relayed but not tracked. Routing a phone
//!   with no entry computes its target without remembering it.
//! - When the rules move a registered phone, the router asks the edge to
//!   register it at its new PBX from its last REGISTER
//!   ([`Router::poll_reregister`]), so it can be called there at once, as
//!   IP Office's home and backup share registrations.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A PBX the edge relays to; the index in the edge's list (0: Main).
pub type System = usize;

/// A phone's address of record, shared by the table and its indexes.
pub type Aor = Arc<str>;

/// How long an entry outlives its registration's expiry: a phone that
/// re-registers a little late keeps its place and its state.
pub const GRACE: Duration = Duration::from_secs(10);

/// The expiry assumed when a 2xx to a REGISTER names none.
const DEFAULT_EXPIRES: u32 = 3600;

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
    /// Most phones tracked; also the most REGISTERs awaiting an answer and
    /// the most calls counted.
    pub max_phones: usize,
    /// Register a moved phone at its new PBX from its last REGISTER (the
    /// PBX must take REGISTERs from the edge without authentication).
    pub register_moved: bool,
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
            max_phones: 30_000,
            register_moved: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Health {
    up: bool,
    since: Instant,
}

/// What the edge knows of one registered phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone {
    pub home: System,
    pub backup: System,
    pub serving: System,
    pub since: Instant,
    /// The phone's flow as last registered (`udp:1.2.3.4:5060`).
    pub contact: Arc<str>,
    pub last_register: Instant,
    /// When the registration the PBX granted runs out.
    pub expires_at: Instant,
    /// Calls in progress through the edge.
    pub calls: u32,
    /// Failing back: until then a failed REGISTER at home sends it back.
    pub homeless_until: Option<Instant>,
    /// What the edge needs to register the phone at another PBX (built and
    /// read by the edge; opaque here).
    pub template: Option<Box<str>>,
    /// A REGISTER sent home during the window, not answered yet.
    pending_register: Option<Instant>,
    /// Sent back by the homeless-prevention rule: no new failback before
    /// this, so a home that accepts probes but not phones is not ping-ponged.
    hold_until: Option<Instant>,
    /// This phone's entry in `Router::timers`.
    wake: Option<Instant>,
}

impl Phone {
    /// Served by its backup (IP Office's "guest" phone).
    pub fn is_guest(&self) -> bool {
        self.serving != self.home
    }
}

/// A phone as the API shows it: what the relay hands over on each change,
/// so the API never reads the relay's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneRow {
    pub contact: Arc<str>,
    pub home: System,
    pub serving: System,
    pub since: Instant,
    pub calls: u32,
    pub last_register: Instant,
    pub expires_at: Instant,
}

#[derive(Debug, Clone)]
struct Call {
    phones: Vec<Aor>,
    until: Instant,
}

/// A REGISTER relayed (or sent by the edge) and not answered yet.
#[derive(Debug)]
struct Pending {
    aor: Aor,
    contact: Arc<str>,
    /// The expiry the phone asked for (0: it unregisters).
    requested: Option<u32>,
    template: Option<Box<str>>,
    /// Sent by the edge itself (a re-registration after a move).
    own: bool,
    seq: u64,
}

/// A REGISTER on its way to a PBX, as the router needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterSent<'a> {
    pub call_id: &'a str,
    pub aor: &'a str,
    /// The phone's flow as text (`udp:1.2.3.4:5060`).
    pub contact: &'a str,
    pub to: System,
    /// The expiry asked for (Contact `expires` or Expires); 0 unregisters.
    pub requested: Option<u32>,
    pub template: Option<Box<str>>,
}

/// A REGISTER the edge must send for a phone the rules just moved: its
/// binding at the new PBX, from its last REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reregister {
    pub aor: Aor,
    pub to: System,
    pub call_id: String,
    pub template: Box<str>,
    /// Seconds left of the phone's registration.
    pub expires: u32,
}

/// A change worth a log line and a row in the event history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub aor: String,
    pub from: System,
    pub to: System,
    pub reason: String,
}

/// Counts kept as events come in: neither the API nor `/metrics` walks the
/// table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub phones: usize,
    pub away: usize,
    pub flows: usize,
    pub pending: usize,
    pub calls: usize,
    /// Entries gone at the end of their registration (plus the grace).
    pub expired: u64,
    /// Entries past their expiry removed to admit a new phone.
    pub evicted: u64,
    /// New phones relayed but not tracked: the table was full of
    /// registered phones.
    pub over_cap: u64,
    /// Entries gone because the phone unregistered.
    pub unregistered: u64,
    /// REGISTERs never answered within `register_timeout`.
    pub register_timeouts: u64,
    /// REGISTERs forgotten unanswered because too many were pending.
    pub pending_dropped: u64,
    /// Registrations the edge made for moved phones, and those answered 2xx.
    pub reregisters_sent: u64,
    pub reregisters_ok: u64,
}

#[derive(Debug)]
pub struct Router {
    policy: Policy,
    health: Vec<Health>,
    /// Home of a phone by exact AOR or by user-part prefix; else system 0.
    homes: Vec<(String, System)>,
    phones: HashMap<Aor, Phone>,
    /// Which phone a flow belongs to (the contact text): the phone's own
    /// flow, while it is registered.
    flows: HashMap<Arc<str>, Aor>,
    /// Every phone by the end of its registration: expiry and eviction in
    /// O(log n).
    expiries: BTreeSet<(Instant, Aor)>,
    /// Phones with a rule deadline (failover, failback, homeless window):
    /// few in steady state.
    timers: BTreeSet<(Instant, Aor)>,
    /// Which phones are in which call (Call-ID), and until when it counts.
    calls: HashMap<Arc<str>, Call>,
    call_timers: BTreeSet<(Instant, Arc<str>)>,
    /// REGISTERs awaiting an answer, by Call-ID, and their deadlines in
    /// the order sent (one timeout for all, so that order is the deadline
    /// order).
    pending: HashMap<Box<str>, Pending>,
    pending_order: VecDeque<(Instant, u64, Box<str>)>,
    seq: u64,
    /// Call-IDs of the edge's own REGISTERs start with this (the edge makes
    /// it random, so they differ from one run to the next).
    id_prefix: String,
    moves: Vec<Move>,
    rereg: Vec<Reregister>,
    changed: Vec<Aor>,
    counts: Counts,
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
            flows: HashMap::new(),
            expiries: BTreeSet::new(),
            timers: BTreeSet::new(),
            calls: HashMap::new(),
            call_timers: BTreeSet::new(),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            seq: 0,
            id_prefix: "rs-".into(),
            moves: Vec::new(),
            rereg: Vec::new(),
            changed: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// The Call-ID prefix of the edge's own REGISTERs.
    pub fn with_id_prefix(mut self, prefix: impl Into<String>) -> Router {
        self.id_prefix = prefix.into();
        self
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn is_up(&self, s: System) -> bool {
        self.health.get(s).is_some_and(|h| h.up)
    }

    pub fn counts(&self) -> Counts {
        Counts {
            phones: self.phones.len(),
            flows: self.flows.len(),
            pending: self.pending.len(),
            calls: self.calls.len(),
            ..self.counts
        }
    }

    /// A system's health as the probes see it (OPTIONS and, where
    /// configured, the node's Active flag).
    pub fn handle_health(&mut self, now: Instant, s: System, up: bool) {
        let mut changed = false;
        if let Some(h) = self.health.get_mut(s) {
            if h.up != up {
                *h = Health { up, since: now };
                changed = true;
            }
        }
        if changed {
            // Every phone's rule deadline may have changed: once per health
            // change, not per message.
            let all: Vec<Aor> = self.phones.keys().cloned().collect();
            for aor in all {
                self.reschedule(&aor);
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

    /// (home, backup, serving) of a phone the table does not hold: a phone
    /// first seen while home is down starts on the backup, as it has
    /// nowhere else to register.
    fn fresh(&self, aor: &str) -> (System, System, System) {
        let home = self.home_of(aor);
        let backup = self.backup_of(home);
        let serving = if !self.is_up(home) && self.is_up(backup) {
            backup
        } else {
            home
        };
        (home, backup, serving)
    }

    fn down_for(&self, s: System, now: Instant) -> Option<Duration> {
        let h = self.health.get(s)?;
        (!h.up).then(|| now.saturating_duration_since(h.since))
    }

    fn up_for(&self, s: System, now: Instant) -> Option<Duration> {
        let h = self.health.get(s)?;
        h.up.then(|| now.saturating_duration_since(h.since))
    }

    /// Where a new request (REGISTER, INVITE, …) from the phone goes: its
    /// serving system, or None when no PBX can take it. Remembers nothing.
    pub fn route(&self, _now: Instant, aor: &str) -> Option<System> {
        let (home, backup, serving) = match self.phones.get(aor) {
            Some(p) => (p.home, p.backup, p.serving),
            None => self.fresh(aor),
        };
        let other = if serving == home { backup } else { home };
        if self.is_up(serving) {
            Some(serving)
        } else if self.is_up(other) {
            // Both ends of the rules are waiting (failover delay not over),
            // but the serving one is down: the request still goes where it
            // is answered rather than nowhere.
            Some(other)
        } else {
            None
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn add_pending(&mut self, now: Instant, call_id: &str, p: Pending) {
        let cap = self.policy.max_phones.max(1);
        if !self.pending.contains_key(call_id) {
            while self.pending.len() >= cap {
                let Some((_, seq, id)) = self.pending_order.pop_front() else {
                    break;
                };
                if self.pending.get(&id).is_some_and(|q| q.seq == seq) {
                    self.pending.remove(&id);
                    self.counts.pending_dropped += 1;
                }
            }
        }
        if self.pending_order.len() >= 2 * cap {
            // Answered ones linger in the queue until they reach its front:
            // clear them out now and then, so it stays within twice the cap.
            let pending = &self.pending;
            self.pending_order
                .retain(|(_, seq, id)| pending.get(id).is_some_and(|q| q.seq == *seq));
        }
        let deadline = now + self.policy.register_timeout;
        self.pending_order
            .push_back((deadline, p.seq, call_id.into()));
        self.pending.insert(call_id.into(), p);
    }

    /// Drop answered REGISTERs from the front of the queue, so its front is
    /// a real deadline.
    fn tidy_pending(&mut self) {
        while let Some((_, seq, id)) = self.pending_order.front() {
            if self.pending.get(id).is_some_and(|q| q.seq == *seq) {
                break;
            }
            self.pending_order.pop_front();
        }
    }

    /// A REGISTER of the phone was sent to `to`: remembered (bounded, for
    /// `register_timeout`) until its answer.
    pub fn handle_register_sent(&mut self, now: Instant, reg: RegisterSent<'_>) {
        let seq = self.next_seq();
        let aor: Aor = match self.phones.get_key_value(reg.aor) {
            Some((k, _)) => k.clone(),
            None => reg.aor.into(),
        };
        let contact: Arc<str> = match self.flows.get_key_value(reg.contact) {
            Some((k, _)) => k.clone(),
            None => reg.contact.into(),
        };
        self.add_pending(
            now,
            reg.call_id,
            Pending {
                aor: aor.clone(),
                contact,
                requested: reg.requested,
                template: reg.template,
                own: false,
                seq,
            },
        );
        if let Some(p) = self.phones.get_mut(reg.aor) {
            if reg.to == p.home
                && p.homeless_until.is_some_and(|u| now < u)
                && p.pending_register.is_none()
            {
                p.pending_register = Some(now);
                self.reschedule(&aor);
            }
        }
    }

    /// The final answer to a REGISTER (by its Call-ID) and the expiry the
    /// PBX granted. Returns the expiry the phone must be given instead,
    /// when shorter (a guest re-registers sooner).
    pub fn handle_register_answer(
        &mut self,
        now: Instant,
        call_id: &str,
        aor: &str,
        code: u16,
        granted: Option<u32>,
    ) -> Option<u32> {
        let pend = self.pending.remove(call_id)?;
        self.tidy_pending();
        if &*pend.aor != aor {
            return None;
        }
        if let Some(p) = self.phones.get_mut(aor) {
            if p.pending_register.take().is_some() {
                self.reschedule(aor);
            }
        }
        if (200..300).contains(&code) {
            if pend.own {
                self.counts.reregisters_ok += 1;
                return None;
            }
            let granted = granted.or(pend.requested).unwrap_or(DEFAULT_EXPIRES);
            if pend.requested == Some(0) || granted == 0 {
                if self.remove(aor) {
                    self.counts.unregistered += 1;
                }
                return None;
            }
            return self.registered(now, pend, granted);
        }
        if (code >= 500 || code == 408)
            && self
                .phones
                .get(aor)
                .is_some_and(|p| p.serving == p.home && p.homeless_until.is_some_and(|u| now < u))
        {
            let backup = self.phones[aor].backup;
            self.move_phone(
                now,
                aor,
                backup,
                format!(
                    "home answered its REGISTER with {code} during the homeless-prevention window"
                ),
            );
        }
        None
    }

    /// A 2xx to the phone's REGISTER: its entry made or refreshed.
    fn registered(&mut self, now: Instant, pend: Pending, granted: u32) -> Option<u32> {
        let aor = pend.aor;
        if !self.phones.contains_key(&aor) && !self.admit(now) {
            self.counts.over_cap += 1;
            return None;
        }
        if !self.phones.contains_key(&aor) {
            let (home, backup, serving) = self.fresh(&aor);
            if serving != home {
                self.counts.away += 1;
            }
            self.phones.insert(
                aor.clone(),
                Phone {
                    home,
                    backup,
                    serving,
                    since: now,
                    contact: pend.contact.clone(),
                    last_register: now,
                    expires_at: now,
                    calls: 0,
                    homeless_until: None,
                    template: None,
                    pending_register: None,
                    hold_until: None,
                    wake: None,
                },
            );
            self.expiries.insert((now, aor.clone()));
            self.reschedule(&aor);
        }
        let p = self.phones.get_mut(&aor).expect("inserted above");
        let old_contact = std::mem::replace(&mut p.contact, pend.contact.clone());
        p.last_register = now;
        if pend.template.is_some() {
            p.template = pend.template;
        }
        let given = match (p.is_guest(), self.policy.away_expires) {
            (true, Some(away)) => granted.min(away),
            _ => granted,
        };
        let old_expiry = std::mem::replace(
            &mut p.expires_at,
            now + Duration::from_secs(u64::from(given)),
        );
        let new_expiry = p.expires_at;
        if old_contact != pend.contact && self.flows.get(&old_contact).is_some_and(|a| *a == aor) {
            self.flows.remove(&old_contact);
        }
        self.flows.insert(pend.contact, aor.clone());
        self.expiries.remove(&(old_expiry, aor.clone()));
        self.expiries.insert((new_expiry, aor.clone()));
        self.changed.push(aor);
        (given < granted).then_some(given)
    }

    /// Room for one more phone: an entry past its expiry (in its grace)
    /// goes; a registered phone never does.
    fn admit(&mut self, now: Instant) -> bool {
        if self.phones.len() < self.policy.max_phones {
            return true;
        }
        let Some((t, victim)) = self.expiries.first().cloned() else {
            return false;
        };
        if t > now {
            return false;
        }
        self.remove(&victim);
        self.counts.evicted += 1;
        true
    }

    /// Forget a phone: its entry, its flow, its deadlines.
    fn remove(&mut self, aor: &str) -> bool {
        let Some((key, p)) = self.phones.remove_entry(aor) else {
            return false;
        };
        if p.is_guest() {
            self.counts.away -= 1;
        }
        if self.flows.get(&p.contact).is_some_and(|a| *a == key) {
            self.flows.remove(&p.contact);
        }
        self.expiries.remove(&(p.expires_at, key.clone()));
        if let Some(w) = p.wake {
            self.timers.remove(&(w, key.clone()));
        }
        self.changed.push(key);
        true
    }

    /// The phone a flow (`udp:1.2.3.4:5060`) belongs to, if registered.
    pub fn phone_of_flow(&self, contact: &str) -> Option<&Aor> {
        self.flows.get(contact)
    }

    /// A call began (INVITE relayed) for this phone. Only registered phones
    /// are counted.
    pub fn handle_call(&mut self, now: Instant, call_id: &str, aor: &str) {
        let Some((key, _)) = self.phones.get_key_value(aor) else {
            return;
        };
        let key = key.clone();
        let until = now + self.policy.call_unanswered;
        if !self.calls.contains_key(call_id) {
            if self.calls.len() >= self.policy.max_phones {
                return;
            }
            let id: Arc<str> = call_id.into();
            self.call_timers.insert((until, id.clone()));
            self.calls.insert(
                id,
                Call {
                    phones: Vec::new(),
                    until,
                },
            );
        }
        let call = self.calls.get_mut(call_id).expect("inserted above");
        if call.phones.iter().any(|a| **a == *aor) || call.phones.len() >= 2 {
            return;
        }
        call.phones.push(key.clone());
        if let Some(p) = self.phones.get_mut(aor) {
            p.calls += 1;
        }
        self.changed.push(key.clone());
        self.reschedule(&key);
    }

    /// The call was answered (a 2xx to its INVITE): it now counts until
    /// its BYE, or `call_max`.
    pub fn handle_call_answered(&mut self, now: Instant, call_id: &str) {
        let Some((id, c)) = self.calls.get_key_value(call_id) else {
            return;
        };
        let (id, old) = (id.clone(), c.until);
        let until = now + self.policy.call_max;
        self.call_timers.remove(&(old, id.clone()));
        self.call_timers.insert((until, id));
        if let Some(c) = self.calls.get_mut(call_id) {
            c.until = until;
        }
    }

    /// The call ended (BYE, or the INVITE failed).
    pub fn handle_call_end(&mut self, now: Instant, call_id: &str) {
        let Some((id, call)) = self.calls.remove_entry(call_id) else {
            return;
        };
        self.call_timers.remove(&(call.until, id));
        for aor in call.phones {
            if let Some(p) = self.phones.get_mut(&aor) {
                p.calls = p.calls.saturating_sub(1);
                self.changed.push(aor.clone());
            }
            self.check(now, &aor);
        }
    }

    fn move_phone(&mut self, now: Instant, aor: &str, to: System, reason: String) {
        let window = self.policy.homeless_window;
        let stable = self.policy.failback_stable;
        let Some((key, p)) = self.phones.get_key_value(aor) else {
            return;
        };
        let key = key.clone();
        if p.serving == to {
            return;
        }
        let was_guest = p.is_guest();
        let seq = self.seq + 1;
        let call_id = format!("{}{seq}", self.id_prefix);
        let p = self.phones.get_mut(aor).expect("found above");
        let from = p.serving;
        if from == p.home && p.homeless_until.is_some_and(|u| now < u) {
            p.hold_until = Some(now + stable);
        }
        p.serving = to;
        p.since = now;
        p.pending_register = None;
        p.homeless_until = (to == p.home).then_some(now + window);
        let is_guest = p.is_guest();
        // Its binding at the new PBX, for what is left of its registration.
        let left = p.expires_at.saturating_duration_since(now).as_secs();
        let register = self.policy.register_moved && left >= 1;
        // (Home refusing it sends the phone back like a refused REGISTER of
        // its own; no answer does not: the edge paces these, a failback
        // of thousands of phones takes longer than `register_timeout`.)
        let rereg = p
            .template
            .clone()
            .filter(|_| register)
            .map(|template| Reregister {
                aor: key.clone(),
                to,
                call_id,
                template,
                expires: u32::try_from(left).unwrap_or(u32::MAX),
            });
        let contact = p.contact.clone();
        match (was_guest, is_guest) {
            (false, true) => self.counts.away += 1,
            (true, false) => self.counts.away -= 1,
            _ => {}
        }
        if let Some(r) = rereg {
            self.seq = seq;
            self.add_pending(
                now,
                &r.call_id,
                Pending {
                    aor: key.clone(),
                    contact,
                    requested: Some(r.expires),
                    template: None,
                    own: true,
                    seq,
                },
            );
            self.counts.reregisters_sent += 1;
            self.rereg.push(r);
        }
        self.moves.push(Move {
            aor: aor.to_owned(),
            from,
            to,
            reason,
        });
        self.changed.push(key.clone());
        self.reschedule(&key);
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

    /// Put the phone's rule deadline in `timers` (or take it out).
    fn reschedule(&mut self, aor: &str) {
        let Some((key, p)) = self.phones.get_key_value(aor) else {
            return;
        };
        let wake = self.deadline_of(p);
        if wake == p.wake {
            return;
        }
        let (key, old) = (key.clone(), p.wake);
        if let Some(w) = old {
            self.timers.remove(&(w, key.clone()));
        }
        if let Some(w) = wake {
            self.timers.insert((w, key.clone()));
        }
        if let Some(p) = self.phones.get_mut(aor) {
            p.wake = wake;
        }
    }

    /// Apply the rules to one phone now.
    fn check(&mut self, now: Instant, aor: &str) {
        let due = self.phones.get(aor).and_then(|p| self.due(p, now));
        match due {
            Some((to, why)) => self.move_phone(now, aor, to, why),
            None => self.reschedule(aor),
        }
    }

    /// What is due at `now`: calls that no longer count, REGISTERs left
    /// unanswered, registrations over, failovers whose delay is over,
    /// failbacks whose stable time is over and whose phone is idle.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((t, id)) = self.call_timers.first().cloned() {
            if t > now {
                break;
            }
            self.handle_call_end(now, &id);
        }
        while let Some((t, seq, _)) = self.pending_order.front() {
            if *t > now {
                break;
            }
            let seq = *seq;
            let (_, _, id) = self.pending_order.pop_front().expect("front above");
            if self.pending.get(&id).is_some_and(|q| q.seq == seq) {
                self.pending.remove(&id);
                self.counts.register_timeouts += 1;
            }
        }
        self.tidy_pending();
        while let Some((t, aor)) = self.expiries.first().cloned() {
            if t + GRACE > now {
                break;
            }
            self.remove(&aor);
            self.counts.expired += 1;
        }
        let due: Vec<Aor> = self
            .timers
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, a)| a.clone())
            .collect();
        for aor in due {
            self.check(now, &aor);
        }
    }

    /// When the rules next need [`Router::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.call_timers.first().map(|(t, _)| *t),
            self.pending_order.front().map(|(t, _, _)| *t),
            self.expiries.first().map(|(t, _)| *t + GRACE),
            self.timers.first().map(|(t, _)| *t),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Moves since the last call, oldest first.
    pub fn poll_moves(&mut self) -> Vec<Move> {
        std::mem::take(&mut self.moves)
    }

    /// REGISTERs the edge must send for phones just moved.
    pub fn poll_reregister(&mut self) -> Vec<Reregister> {
        std::mem::take(&mut self.rereg)
    }

    /// Phones changed since the last call (None: gone), for a copy of the
    /// table kept off the relay's path. Call after every event.
    pub fn poll_changes(&mut self) -> Vec<(Aor, Option<PhoneRow>)> {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .map(|aor| {
                let row = self.phones.get(&aor).map(|p| PhoneRow {
                    contact: p.contact.clone(),
                    home: p.home,
                    serving: p.serving,
                    since: p.since,
                    calls: p.calls,
                    last_register: p.last_register,
                    expires_at: p.expires_at,
                });
                (aor, row)
            })
            .collect()
    }

    /// The expiry to grant a phone's registration: shorter while away.
    pub fn expires_for(&self, aor: &str, granted: u32) -> u32 {
        match (self.phones.get(aor), self.policy.away_expires) {
            (Some(p), Some(away)) if p.is_guest() => granted.min(away),
            _ => granted,
        }
    }

    pub fn phone_of(&self, aor: &str) -> Option<&Phone> {
        self.phones.get(aor)
    }
}

#[cfg(test)]
mod tests;
