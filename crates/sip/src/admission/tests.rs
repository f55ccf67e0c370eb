//! Every rule, then random sequences against a plain model.

use super::*;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
}

fn at(t0: Instant, s: u64) -> Instant {
    t0 + Duration::from_secs(s)
}

#[test]
fn accepts_under_the_caps() {
    let t0 = Instant::now();
    let mut a = Admission::new(3, 2);
    assert_eq!(a.admit(ip(1), 1, t0), Admit::Accept);
    assert_eq!(a.admit(ip(2), 2, t0), Admit::Accept);
    assert_eq!(
        (a.open(), a.unproven(), a.from(ip(1)), a.sources()),
        (2, 2, 1, 2)
    );
}

#[test]
fn refuses_over_the_per_address_cap_even_below_the_total() {
    let t0 = Instant::now();
    let mut a = Admission::new(10, 2);
    assert_eq!(a.admit(ip(1), 1, t0), Admit::Accept);
    assert_eq!(a.admit(ip(1), 2, t0), Admit::Accept);
    assert_eq!(a.admit(ip(1), 3, t0), Admit::Refuse(Refusal::OverSourceCap));
    assert_eq!(a.admit(ip(2), 4, t0), Admit::Accept);
    assert_eq!(a.from(ip(1)), 2);
}

#[test]
fn per_address_cap_is_checked_before_replacing() {
    let t0 = Instant::now();
    let mut a = Admission::new(2, 1);
    assert_eq!(a.admit(ip(1), 1, t0), Admit::Accept);
    assert_eq!(a.admit(ip(2), 2, t0), Admit::Accept);
    // At the total cap with unproven connections, but 1 holds its share.
    assert_eq!(a.admit(ip(1), 3, t0), Admit::Refuse(Refusal::OverSourceCap));
    assert_eq!(a.open(), 2);
}

#[test]
fn at_the_cap_the_oldest_unproven_is_replaced() {
    let t0 = Instant::now();
    let mut a = Admission::new(3, 10);
    // Ids out of time order: age is by time, not id.
    assert_eq!(a.admit(ip(1), 9, at(t0, 1)), Admit::Accept);
    assert_eq!(a.admit(ip(1), 5, at(t0, 2)), Admit::Accept);
    assert_eq!(a.admit(ip(1), 7, at(t0, 3)), Admit::Accept);
    a.proven(9);
    assert_eq!(a.admit(ip(2), 10, at(t0, 4)), Admit::AcceptReplacing(5));
    assert_eq!(a.admit(ip(2), 11, at(t0, 5)), Admit::AcceptReplacing(7));
    assert_eq!((a.open(), a.from(ip(1)), a.from(ip(2))), (3, 1, 2));
}

#[test]
fn at_the_cap_with_every_connection_proven_the_new_one_is_refused() {
    let t0 = Instant::now();
    let mut a = Admission::new(2, 10);
    a.admit(ip(1), 1, t0);
    a.admit(ip(2), 2, t0);
    a.proven(1);
    a.proven(2);
    assert_eq!(a.admit(ip(3), 3, t0), Admit::Refuse(Refusal::OverCap));
    assert_eq!((a.open(), a.unproven()), (2, 0));
}

#[test]
fn closing_frees_the_slot_and_the_address_share() {
    let t0 = Instant::now();
    let mut a = Admission::new(1, 1);
    a.admit(ip(1), 1, t0);
    a.proven(1);
    assert_eq!(a.admit(ip(1), 2, t0), Admit::Refuse(Refusal::OverSourceCap));
    a.closed(1);
    assert_eq!((a.open(), a.from(ip(1)), a.sources()), (0, 0, 0));
    assert_eq!(a.admit(ip(1), 2, t0), Admit::Accept);
}

#[test]
fn a_replaced_connection_closing_later_changes_nothing() {
    let t0 = Instant::now();
    let mut a = Admission::new(1, 5);
    a.admit(ip(1), 1, t0);
    assert_eq!(a.admit(ip(2), 2, t0), Admit::AcceptReplacing(1));
    a.closed(1);
    a.proven(1);
    assert_eq!(
        (a.open(), a.from(ip(1)), a.from(ip(2)), a.unproven()),
        (1, 0, 1, 1)
    );
}

#[test]
fn proving_twice_or_unknown_ids_is_harmless() {
    let t0 = Instant::now();
    let mut a = Admission::new(2, 2);
    a.admit(ip(1), 1, t0);
    a.proven(1);
    a.proven(1);
    a.proven(42);
    a.closed(42);
    assert_eq!((a.open(), a.unproven()), (1, 0));
}

#[test]
fn a_reused_open_id_is_refused() {
    let t0 = Instant::now();
    let mut a = Admission::new(5, 5);
    a.admit(ip(1), 1, t0);
    assert_eq!(a.admit(ip(2), 1, t0), Admit::Refuse(Refusal::DuplicateId));
    assert_eq!((a.open(), a.from(ip(2))), (1, 0));
}

#[test]
fn zero_caps_refuse_everything() {
    let t0 = Instant::now();
    assert_eq!(
        Admission::new(0, 5).admit(ip(1), 1, t0),
        Admit::Refuse(Refusal::OverCap)
    );
    assert_eq!(
        Admission::new(5, 0).admit(ip(1), 1, t0),
        Admit::Refuse(Refusal::OverSourceCap)
    );
}

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The plain model: every open connection with its address, time and
/// whether it is proven.
#[derive(Default)]
struct Model {
    open: BTreeMap<ConnId, (IpAddr, u64, bool)>,
}

impl Model {
    fn from(&self, ip: IpAddr) -> usize {
        self.open.values().filter(|c| c.0 == ip).count()
    }

    fn oldest_unproven(&self) -> Option<ConnId> {
        self.open
            .iter()
            .filter(|(_, c)| !c.2)
            .min_by_key(|(id, c)| (c.1, **id))
            .map(|(id, _)| *id)
    }

    fn admit(&mut self, cap: usize, per_ip: usize, ip: IpAddr, id: ConnId, t: u64) -> Admit {
        if self.from(ip) >= per_ip {
            return Admit::Refuse(Refusal::OverSourceCap);
        }
        let mut out = Admit::Accept;
        if self.open.len() >= cap {
            match self.oldest_unproven() {
                Some(old) => {
                    self.open.remove(&old);
                    out = Admit::AcceptReplacing(old);
                }
                None => return Admit::Refuse(Refusal::OverCap),
            }
        }
        self.open.insert(id, (ip, t, false));
        out
    }
}

fn check(a: &Admission, m: &Model, cap: usize, per_ip: usize, ips: &[IpAddr]) {
    assert!(a.open() <= cap);
    assert_eq!(a.open(), m.open.len());
    assert_eq!(a.unproven(), m.open.values().filter(|c| !c.2).count());
    let mut sources = 0;
    for &ip in ips {
        assert!(a.from(ip) <= per_ip);
        assert_eq!(a.from(ip), m.from(ip));
        sources += usize::from(m.from(ip) > 0);
    }
    assert_eq!(a.sources(), sources);
}

/// One random run of `steps` operations; the caps, addresses and the mix
/// come from the seed.
fn run(seed: u64, steps: usize) {
    let mut r = Rng(seed);
    let cap = r.below(8) as usize;
    let per_ip = r.below(5) as usize;
    let ips: Vec<IpAddr> = (0..1 + r.below(5) as u8).map(ip).collect();
    let t0 = Instant::now();
    let mut a = Admission::new(cap, per_ip);
    let mut m = Model::default();
    let mut next_id: ConnId = 0;
    let mut t = 0u64;
    for _ in 0..steps {
        t += r.below(3); // equal times happen: ties go by id
        match r.below(10) {
            0..=4 => {
                let from = ips[r.below(ips.len() as u64) as usize];
                let id = next_id;
                next_id += 1;
                let proven: Vec<ConnId> = m.open.iter().filter(|c| c.1 .2).map(|c| *c.0).collect();
                let want = m.admit(cap, per_ip, from, id, t);
                let got = a.admit(from, id, at(t0, t));
                assert_eq!(got, want, "seed {seed}");
                if let Admit::AcceptReplacing(old) = got {
                    assert!(!proven.contains(&old), "seed {seed}: {old} was proven");
                }
            }
            5..=7 => {
                // Ids already replaced or closed are fair game too.
                let id = r.below(next_id.max(1));
                a.proven(id);
                if let Some(c) = m.open.get_mut(&id) {
                    c.2 = true;
                }
            }
            _ => {
                let id = r.below(next_id.max(1));
                a.closed(id);
                m.open.remove(&id);
            }
        }
        check(&a, &m, cap, per_ip, &ips);
    }
}

#[test]
fn random_sequences_keep_the_invariants_and_match_the_model() {
    for seed in 1..=3000u64 {
        run(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, 200);
    }
}

#[test]
fn a_proven_connection_is_never_replaced() {
    for seed in 1..=500u64 {
        let mut r = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
        let t0 = Instant::now();
        let mut a = Admission::new(1 + r.below(6) as usize, 1 + r.below(4) as usize);
        let mut proven = std::collections::BTreeSet::new();
        for id in 0..300u64 {
            match r.below(3) {
                0 => {
                    let cand = r.below(id.max(1));
                    a.proven(cand);
                    if a.conns.contains_key(&cand) {
                        proven.insert(cand);
                    }
                }
                1 => {
                    let cand = r.below(id.max(1));
                    a.closed(cand);
                    proven.remove(&cand);
                }
                _ => {
                    let from = ip(r.below(4) as u8);
                    if let Admit::AcceptReplacing(old) = a.admit(from, id, at(t0, id)) {
                        assert!(!proven.contains(&old), "seed {seed}: {old} was proven");
                    }
                }
            }
        }
    }
}
