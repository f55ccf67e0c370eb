//! Push a PostgreSQL job soon after a commit changes it, not only every
//! `replication.interval` (XiVO's hourly rhythm, which loses up to an hour
//! of an admin's changes when the Main dies).
//!
//! How a change is seen: the server's own write counters for the job's
//! database (`pg_stat_user_tables`: rows inserted, updated, deleted), read
//! every `watch_poll` with one short `psql` query. Chosen over the
//! alternatives:
//! - LISTEN/NOTIFY needs a trigger on every table of the PBX's schema
//!   (changing the database we replicate, and lost on each schema upgrade);
//! - `pg_current_wal_lsn()` moves for the whole cluster (other databases,
//!   vacuum, checkpoints), so it would push for nothing;
//! - `pg_stat_database.xact_commit` counts read-only transactions too,
//!   this poll's own included.
//!
//! The counters leave out `exclude_tables` (call logs written at every
//! call, whose rows are not copied anyway), so a busy PBX does not push
//! non-stop. The server publishes a session's counters when it commits
//! and goes idle (within a second) or ends, so a commit is seen within
//! about `watch_poll` + 1 s. Like watched folders, the push waits until
//! the counters have been still for `replication.debounce` (a burst of
//! changes is one push), but never more than [`MAX_DEFER`] × debounce after
//! the first change it has not pushed. Every push stays the usual atomic
//! one (dump, staging restore, transactional rename); a failed push is
//! retried at the next change or the next scheduled push.

use super::{postgres::Pg, Job, Replicator};
use resilience_core::config::PostgresJobSection;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A stream of changes waits at most this many debounce periods.
pub const MAX_DEFER: u32 = 10;

/// What the poller does after a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Wait,
    Push,
}

/// Debounce of counter readings, time as an argument.
#[derive(Debug, Default)]
pub struct Debounce {
    last: Option<u64>,
    /// First unpushed change, and the last change.
    pending: Option<(Instant, Instant)>,
}

impl Debounce {
    /// A new reading at `now`. `None`: the baseline is dropped (this node
    /// does not push now, or the server did not answer); the next reading
    /// is then a change.
    pub fn reading(&mut self, now: Instant, value: Option<u64>, quiet: Duration) -> Step {
        let Some(v) = value else {
            self.last = None;
            self.pending = None;
            return Step::Wait;
        };
        // The first reading after a gap counts as a change: a commit made
        // before this node became the one to push (or while the server
        // did not answer) is pushed too.
        let changed = self.last != Some(v);
        self.last = Some(v);
        if changed {
            let first = self.pending.map_or(now, |(f, _)| f);
            self.pending = Some((first, now));
        }
        match self.pending {
            Some((first, last)) if now >= last + quiet || now >= first + quiet * MAX_DEFER => {
                self.pending = None;
                Step::Push
            }
            _ => Step::Wait,
        }
    }
}

impl Replicator {
    /// Main: watch each PostgreSQL job with `watch = true` and push it soon
    /// after it changes, as long as `may_push` says this node is the one.
    pub(super) fn watch_postgres(self: &Arc<Self>, may_push: Arc<dyn Fn() -> bool + Send + Sync>) {
        for j in self.cfg.postgres.iter().filter(|j| j.watch) {
            let (me, j, may) = (self.clone(), j.clone(), may_push.clone());
            tokio::spawn(async move { me.poll_postgres(j, may).await });
        }
    }

    async fn poll_postgres(
        self: Arc<Self>,
        j: PostgresJobSection,
        may_push: Arc<dyn Fn() -> bool + Send + Sync>,
    ) {
        let pg = Pg::new(&j, &self.base);
        let quiet = self.cfg.debounce;
        let mut tick = tokio::time::interval(j.watch_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut d = Debounce::default();
        let mut warned = false;
        let job = Job::Postgres(j.clone());
        tracing::info!(
            "replication {}: pushed soon after a change (write counters read every {})",
            j.name,
            resilience_core::types::human(j.watch_poll)
        );
        loop {
            tick.tick().await;
            let value = if may_push() {
                match pg.writes().await {
                    Ok(v) => {
                        warned = false;
                        Some(v)
                    }
                    Err(e) => {
                        if !warned {
                            warned = true;
                            tracing::warn!(
                                "replication {}: cannot read the write counters: {e}",
                                j.name
                            );
                        }
                        None
                    }
                }
            } else {
                None
            };
            tracing::trace!("replication {}: write counter {value:?}", j.name);
            if d.reading(Instant::now(), value, quiet) == Step::Push && may_push() {
                tracing::info!("replication {}: database changed, pushing", j.name);
                let _ = self.push(&job).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Duration = Duration::from_secs(2);

    #[test]
    fn pushes_once_quiet_and_never_defers_for_ever() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = Debounce::default();
        // The first reading is pushed (what changed before it is unknown).
        assert_eq!(d.reading(s(0), Some(5), Q), Step::Wait);
        assert_eq!(d.reading(s(1000), Some(5), Q), Step::Wait);
        assert_eq!(d.reading(s(2000), Some(5), Q), Step::Push);
        assert_eq!(d.reading(s(3000), Some(5), Q), Step::Wait);
        // A change, then quiet: pushed once quiet for the debounce.
        assert_eq!(d.reading(s(4000), Some(6), Q), Step::Wait);
        assert_eq!(d.reading(s(5000), Some(6), Q), Step::Wait);
        assert_eq!(d.reading(s(6000), Some(6), Q), Step::Push);
        assert_eq!(d.reading(s(7000), Some(6), Q), Step::Wait);
        // Changes at every reading: pushed at MAX_DEFER × debounce.
        let mut pushed = None;
        for k in 0..30u64 {
            let at = 8000 + k * 1000;
            if d.reading(s(at), Some(7 + k), Q) == Step::Push {
                pushed = Some(at);
                break;
            }
        }
        assert_eq!(pushed, Some(8000 + u64::from(MAX_DEFER) * 2000));
        // No answer (or not this node's turn): no push; the next answer is
        // a change.
        assert_eq!(d.reading(s(40_000), None, Q), Step::Wait);
        assert_eq!(d.reading(s(45_000), None, Q), Step::Wait);
        assert_eq!(d.reading(s(46_000), Some(100), Q), Step::Wait);
        assert_eq!(d.reading(s(48_000), Some(100), Q), Step::Push);
    }
}
