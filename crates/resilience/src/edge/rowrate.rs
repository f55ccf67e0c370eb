//! The phones list's per-client pace (`[edge] api_rows_per_second`): a
//! token bucket of rows per client address, half a second's worth deep (a
//! full page at least, the rate at most), so a client's pages come spread
//! out, not in bursts of a second's worth. A page
//! of 500 phones costs about 2 ms of CPU; two clients walking 150,000
//! phones without pause took 0.77 of the machine's two cores and tripled
//! the REGISTER round trip's p99. The cost is per row, so rows are counted,
//! not requests: a client reading one phone now and then is never held
//! back. A page is served while the bucket is not empty and its rows are
//! then taken from it (it may go below zero: the client waits longer);
//! past that, 429 with Retry-After.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Client addresses remembered at most; past it, those whose bucket is
/// full again are forgotten (they lose nothing), and all of them if that
/// is not enough (only the token's holders are counted: a few clients).
const MAX_CLIENTS: usize = 4096;

pub struct RowRate {
    per_second: u32,
    /// The bucket's depth in rows.
    depth: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RowRate {
    /// `per_second` 0: no limit.
    pub fn new(per_second: u32) -> RowRate {
        let rate = f64::from(per_second);
        RowRate {
            per_second,
            depth: (rate / 2.0).max(rate.min(crate::edge::table::PAGE_MAX as f64)),
            buckets: Mutex::default(),
        }
    }

    /// Whether `client` may have a page at `now`: Ok, or Err(how long
    /// until it may, for Retry-After).
    pub fn admit(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_second == 0 {
            return Ok(());
        }
        let (rate, depth) = (f64::from(self.per_second), self.depth);
        let mut b = self.buckets.lock().expect("row rate lock");
        if b.len() >= MAX_CLIENTS && !b.contains_key(&client) {
            b.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < depth
            });
            if b.len() >= MAX_CLIENTS {
                b.clear();
            }
        }
        let (tokens, at) = b.entry(client).or_insert((depth, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(depth);
        *at = now;
        if *tokens > 0.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(-*tokens / rate).max(Duration::from_millis(1)))
        }
    }

    /// Take the `rows` of a page served to `client` (at least one: an
    /// empty page costs a request).
    pub fn charge(&self, client: IpAddr, rows: usize) {
        if self.per_second == 0 {
            return;
        }
        if let Some((tokens, _)) = self.buckets.lock().expect("row rate lock").get_mut(&client) {
            *tokens -= rows.max(1) as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_at_once_then_the_rate_per_client() {
        let r = RowRate::new(1000);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        // A page of 500 empties the bucket; the next waits.
        assert!(r.admit(a, t).is_ok());
        r.charge(a, 500);
        assert!(r.admit(a, t).is_err());
        // Another client is not held up by the first.
        assert!(r.admit(b, t).is_ok());
        // A page taken with one row left puts the client in debt: it waits
        // for the rows it took.
        let t = t + Duration::from_millis(1);
        assert!(r.admit(a, t).is_ok());
        r.charge(a, 500);
        let wait = r.admit(a, t).unwrap_err();
        assert!(
            wait > Duration::from_millis(450) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(r.admit(a, t + wait + Duration::from_millis(2)).is_ok());
        // An idle client's bucket fills up to a page, no more.
        let t = t + Duration::from_secs(60);
        let mut pages = 0;
        while r.admit(a, t).is_ok() {
            r.charge(a, 100);
            pages += 1;
        }
        assert_eq!(pages, 5);
        // At a high rate, half a second's worth.
        let r = RowRate::new(4_000);
        let mut rows = 0;
        while r.admit(a, t).is_ok() {
            r.charge(a, 100);
            rows += 100;
        }
        assert_eq!(rows, 2_000);
    }

    #[test]
    fn one_row_reads_are_never_held_back_at_a_sane_rate() {
        let r = RowRate::new(10_000);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let t = Instant::now();
        // Fifty one-row reads a second (a client watching a phone).
        for i in 0..500u64 {
            let now = t + Duration::from_millis(20 * i);
            assert!(r.admit(a, now).is_ok(), "{i}");
            r.charge(a, 1);
        }
    }

    #[test]
    fn zero_is_no_limit_and_the_clients_remembered_are_bounded() {
        let t = Instant::now();
        let free = RowRate::new(0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10_000 {
            assert!(free.admit(a, t).is_ok());
            free.charge(a, 500);
        }
        let r = RowRate::new(1);
        for i in 0..(MAX_CLIENTS as u32 + 100) {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = r.admit(ip, t);
            r.charge(ip, 1);
        }
        assert!(r.buckets.lock().unwrap().len() <= MAX_CLIENTS);
        // Those full again are forgotten first.
        let later = t + Duration::from_secs(2);
        let _ = r.admit("10.9.9.9".parse().unwrap(), later);
        assert!(r.buckets.lock().unwrap().len() < 200);
    }
}
