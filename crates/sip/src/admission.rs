//! Which SIP TCP/TLS connection gets a slot at the edge, sans-IO.
//!
//! - **Per address.** At most `per_ip_cap` connections from one address.
//! - **Total.** At most `total_cap` connections at once (the runtime lowers
//!   it so the descriptor limit keeps room for the edge's own sockets).
//! - **Replacing.** At the total cap, a new connection takes the place of
//!   the oldest one that has not yet sent a whole SIP message ("unproven":
//!   an idle stranger's, never a registered phone's). When every open
//!   connection is proven, the new one is refused.
//!
//! A replaced connection is forgotten at once (its slot is the newcomer's);
//! the runtime closes it, and its later [`Admission::closed`] is a no-op.
//! Connections are named by ids the runtime gives; time is an argument
//! ("oldest" is by admission time, then id), nothing here reads a clock.
//! Lives beside [`crate::flood`]: both bound what one address may cost
//! the edge's transport, before any message reaches the relay.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Instant;

/// A connection's name, unique for the runtime's lifetime.
pub type ConnId = u64;

/// The decision for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Accept,
    /// Accepted in the place of this unproven connection, which must close.
    AcceptReplacing(ConnId),
    Refuse(Refusal),
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("over the per-address cap")]
    OverSourceCap,
    #[error("over the cap")]
    OverCap,
    /// The runtime reused an id still open: a bug, refused rather than
    /// corrupting the counts.
    #[error("connection id already in use")]
    DuplicateId,
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    ip: IpAddr,
    since: Instant,
    proven: bool,
}

/// The open connections and the caps.
#[derive(Debug)]
pub struct Admission {
    total_cap: usize,
    per_ip_cap: usize,
    conns: HashMap<ConnId, Conn>,
    per_ip: HashMap<IpAddr, usize>,
    /// Unproven connections, oldest first.
    unproven: BTreeSet<(Instant, ConnId)>,
}

impl Admission {
    pub fn new(total_cap: usize, per_ip_cap: usize) -> Admission {
        Admission {
            total_cap,
            per_ip_cap,
            conns: HashMap::new(),
            per_ip: HashMap::new(),
            unproven: BTreeSet::new(),
        }
    }

    /// Decide on connection `id` from `ip`, arriving at `now`; an accepted
    /// one is open and unproven.
    pub fn admit(&mut self, ip: IpAddr, id: ConnId, now: Instant) -> Admit {
        if self.conns.contains_key(&id) {
            return Admit::Refuse(Refusal::DuplicateId);
        }
        if self.from(ip) >= self.per_ip_cap {
            return Admit::Refuse(Refusal::OverSourceCap);
        }
        let mut replaced = None;
        if self.conns.len() >= self.total_cap {
            match self.unproven.first().copied() {
                Some((_, old)) => {
                    self.closed(old);
                    replaced = Some(old);
                }
                None => return Admit::Refuse(Refusal::OverCap),
            }
        }
        self.conns.insert(
            id,
            Conn {
                ip,
                since: now,
                proven: false,
            },
        );
        *self.per_ip.entry(ip).or_default() += 1;
        self.unproven.insert((now, id));
        match replaced {
            Some(old) => Admit::AcceptReplacing(old),
            None => Admit::Accept,
        }
    }

    /// Connection `id` sent a whole message: it is never replaced.
    pub fn proven(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id) {
            if !c.proven {
                c.proven = true;
                self.unproven.remove(&(c.since, id));
            }
        }
    }

    /// Connection `id` ended; unknown ids (already replaced) are ignored.
    pub fn closed(&mut self, id: ConnId) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        if !c.proven {
            self.unproven.remove(&(c.since, id));
        }
        if let Some(n) = self.per_ip.get_mut(&c.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&c.ip);
            }
        }
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.conns.len()
    }

    /// Open connections from `ip`.
    pub fn from(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Open connections without a whole message yet.
    pub fn unproven(&self) -> usize {
        self.unproven.len()
    }

    /// Distinct addresses with an open connection.
    pub fn sources(&self) -> usize {
        self.per_ip.len()
    }

    pub fn total_cap(&self) -> usize {
        self.total_cap
    }

    pub fn per_ip_cap(&self) -> usize {
        self.per_ip_cap
    }
}

#[cfg(test)]
mod tests;
