//! The API's copy of the phones table. The relay task owns the router and
//! sends each phone's change here over a channel; `/api/v1/phones` reads
//! pages of this copy, so a listing never waits on, nor holds up, the relay
//! (one `GET` over 155k phones once stalled SIP for two seconds).
//!
//! The API's thread runs at a lower priority than the relay, so a task that
//! waited on the channel could lag far behind on a busy machine. Instead a
//! read first applies whatever the relay has sent (what is read right after
//! a REGISTER is current), and a slow tick applies the rest when nobody
//! reads. Nobody waits on the channel, so a send never wakes another thread.

use resilience_core::edge::phones::{Aor, PhoneRow};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Most phones one page holds.
pub const PAGE_MAX: usize = 500;

/// One batch of changes: per phone, its new row or None (gone).
pub type Changes = Vec<(Aor, Option<PhoneRow>)>;

/// Phones by AOR, in order, for paging, and the relay's changes not yet
/// applied.
#[derive(Clone)]
pub struct Table {
    rows: Arc<Mutex<BTreeMap<Aor, PhoneRow>>>,
    pending: Arc<Mutex<mpsc::UnboundedReceiver<Changes>>>,
}

/// How often changes are applied when nobody reads (bounds the channel).
const TICK: std::time::Duration = std::time::Duration::from_millis(500);

impl Table {
    /// A table fed by the relay through `rx`.
    pub fn new(rx: mpsc::UnboundedReceiver<Changes>) -> Table {
        Table {
            rows: Arc::default(),
            pending: Arc::new(Mutex::new(rx)),
        }
    }

    /// Apply pending changes every [`TICK`], for as long as the runtime runs.
    pub fn spawn_ticker(&self) {
        let table = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                table.catch_up();
            }
        });
    }

    /// Apply everything the relay has sent so far.
    pub fn catch_up(&self) {
        let mut rx = self.pending.lock().expect("table channel lock");
        while let Ok(batch) = rx.try_recv() {
            self.apply(batch);
        }
    }

    pub fn apply(&self, batch: Changes) {
        let mut t = self.rows.lock().expect("table lock");
        for (aor, row) in batch {
            match row {
                Some(r) => {
                    t.insert(aor, r);
                }
                None => {
                    t.remove(&aor);
                }
            }
        }
    }

    /// Up to `limit` phones after `after` (from the start when None), and
    /// whether more follow. Rows are copied out so the lock is held for a
    /// page, never for the JSON.
    pub fn page(&self, after: Option<&str>, limit: usize) -> (Vec<(Aor, PhoneRow)>, bool) {
        let limit = limit.clamp(1, PAGE_MAX);
        self.catch_up();
        let t = self.rows.lock().expect("table lock");
        let start: Bound<&str> = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut it = t
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(a, r)| (a.clone(), r.clone()));
        let rows: Vec<_> = it.by_ref().take(limit).collect();
        let more = it.next().is_some();
        (rows, more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn row() -> PhoneRow {
        let now = Instant::now();
        PhoneRow {
            contact: "udp:127.0.0.1:5060".into(),
            home: 0,
            serving: 0,
            since: now,
            calls: 0,
            last_register: now,
            expires_at: now,
        }
    }

    #[test]
    fn pages_follow_the_aor_order_and_say_when_more_follow() {
        let (tx, rx) = mpsc::unbounded_channel();
        let t = Table::new(rx);
        t.apply(
            (0..7)
                .map(|i| (Aor::from(format!("sip:{i}@x")), Some(row())))
                .collect(),
        );
        // Sent, not yet applied: a read applies it first.
        tx.send(vec![(Aor::from("sip:3@x"), None)]).unwrap();
        let (p, more) = t.page(None, 4);
        let aors: Vec<&str> = p.iter().map(|(a, _)| &**a).collect();
        assert_eq!(aors, ["sip:0@x", "sip:1@x", "sip:2@x", "sip:4@x"]);
        assert!(more);
        let (p, more) = t.page(Some("sip:4@x"), 4);
        assert_eq!(p.len(), 2);
        assert!(!more);
        assert_eq!(t.page(None, 100_000).0.len(), 6, "capped, not refused");
    }
}
