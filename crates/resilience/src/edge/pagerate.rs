//! The phones list's per-client page rate (`[edge] api_pages_per_second`):
//! a token bucket per client address, a second's worth of pages deep. A
//! page of 500 phones costs about 2 ms of CPU; two clients walking 150,000
//! phones without pause took 0.77 of the machine's two cores and tripled
//! the REGISTER round trip's p99. Past the rate: 429 with Retry-After.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Client addresses remembered at most; past it, those whose bucket is
/// full again are forgotten (they lose nothing), and all of them if that
/// is not enough (only the token's holders are counted: a few clients).
const MAX_CLIENTS: usize = 4096;

pub struct PageRate {
    per_second: u32,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl PageRate {
    /// `per_second` 0: no limit.
    pub fn new(per_second: u32) -> PageRate {
        PageRate {
            per_second,
            buckets: Mutex::default(),
        }
    }

    /// Take a page for `client` at `now`: Ok, or Err(how long until one is
    /// free, for Retry-After).
    pub fn take(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_second == 0 {
            return Ok(());
        }
        let rate = f64::from(self.per_second);
        let mut b = self.buckets.lock().expect("page rate lock");
        if b.len() >= MAX_CLIENTS && !b.contains_key(&client) {
            b.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < rate
            });
            if b.len() >= MAX_CLIENTS {
                b.clear();
            }
        }
        let (tokens, at) = b.entry(client).or_insert((rate, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_of_pages_at_once_then_the_rate_per_client() {
        let r = PageRate::new(10);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        assert!((0..10).all(|_| r.take(a, t).is_ok()));
        let wait = r.take(a, t).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        // Another client is not held up by the first.
        assert!(r.take(b, t).is_ok());
        // A tenth of a second later, one more page, not two.
        let t = t + Duration::from_millis(100);
        assert!(r.take(a, t).is_ok());
        assert!(r.take(a, t).is_err());
        // An idle client's bucket fills up to a second's worth, no more.
        let t = t + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| r.take(a, t).is_ok()).count(), 10);
    }

    #[test]
    fn zero_is_no_limit_and_the_clients_remembered_are_bounded() {
        let t = Instant::now();
        assert!((0..10_000).all(|_| PageRate::new(0)
            .take("10.0.0.1".parse().unwrap(), t)
            .is_ok()));
        let r = PageRate::new(1);
        for i in 0..(MAX_CLIENTS as u32 + 100) {
            let _ = r.take(IpAddr::from(i.to_be_bytes()), t);
        }
        assert!(r.buckets.lock().unwrap().len() <= MAX_CLIENTS);
        // Those full again are forgotten first.
        let later = t + Duration::from_secs(2);
        let _ = r.take("10.9.9.9".parse().unwrap(), later);
        assert!(r.buckets.lock().unwrap().len() < 200);
    }
}
