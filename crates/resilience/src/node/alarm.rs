//! The node loop's wake-up at the core's next deadline, to the tenth of a
//! millisecond.
//!
//! tokio's timer wheel ticks in milliseconds and rounds a deadline up to the
//! next tick, so a failover due 721.875 ms after the last heartbeat would be
//! decided at 723 ms or later; keepalived's VRRP timers are exact to the
//! microsecond. One thread sleeping on a futex with the exact timeout
//! (`recv_timeout`) and waking the loop through a [`Notify`] costs nothing
//! measurable and gives that millisecond back. A stale wake-up (a deadline
//! replaced just as it passed) only makes the core look at the time early,
//! which it allows.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// Set with [`Alarm::set`], awaited with [`Alarm::fired`].
pub struct Alarm {
    set: mpsc::Sender<Instant>,
    fired: Arc<Notify>,
    armed: Option<Instant>,
}

impl Alarm {
    /// Start the alarm's thread; it ends when the alarm is dropped.
    pub fn spawn() -> std::io::Result<Alarm> {
        let (set, deadlines) = mpsc::channel::<Instant>();
        let fired = Arc::new(Notify::new());
        let ring = fired.clone();
        std::thread::Builder::new()
            .name("resilience-alarm".into())
            .spawn(move || {
                let mut at: Option<Instant> = None;
                loop {
                    let next = match at {
                        None => deadlines.recv().map_err(|_| RecvTimeoutError::Disconnected),
                        Some(t) => {
                            deadlines.recv_timeout(t.saturating_duration_since(Instant::now()))
                        }
                    };
                    match next {
                        Ok(t) => at = Some(t),
                        Err(RecvTimeoutError::Timeout) => {
                            at = None;
                            ring.notify_one();
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(Alarm {
            set,
            fired,
            armed: None,
        })
    }

    /// Ring at `at` (replacing the deadline set before).
    pub fn set(&mut self, at: Instant) {
        if self.armed != Some(at) {
            self.armed = Some(at);
            let _ = self.set.send(at);
        }
    }

    /// Resolves when the deadline passed.
    pub async fn fired(&mut self) {
        self.fired.notified().await;
        self.armed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn rings_at_the_deadline_not_before() {
        let mut alarm = Alarm::spawn().unwrap();
        let start = Instant::now();
        alarm.set(start + Duration::from_millis(30));
        // A later deadline replaces the earlier one.
        alarm.set(start + Duration::from_millis(60));
        alarm.fired().await;
        assert!(start.elapsed() >= Duration::from_millis(60));
        // Re-armed after ringing, even for the same instant.
        let again = Instant::now() + Duration::from_millis(5);
        alarm.set(again);
        alarm.fired().await;
        assert!(Instant::now() >= again);
    }
}
