//! What the API shows of replication: each job's last results
//! ([`JobStatus`]), how stale they are, and the failback report. Kept apart
//! from the sessions so that pushing and receiving only record outcomes.

use super::wire::Applied;
use super::{Job, Replicator};
use crate::clock::unix_ms;
use crate::status::{ReplicationJob, ReplicationStatus};
use serde::Serialize;
use std::fmt::Display;
use std::time::{Instant, SystemTime};

/// One job's last results, for `/api/v1/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobStatus {
    /// "push" on the Main, "receive" on the Standby.
    pub role: &'static str,
    pub last_success_ms: Option<i64>,
    pub last_attempt_ms: Option<i64>,
    pub duration_ms: Option<u64>,
    pub files: u64,
    pub bytes: u64,
    pub deleted: u64,
    pub last_error: Option<String>,
    pub running: bool,
    /// Symlinks leading out of the folder, not sent (Main).
    pub links_skipped: u64,
    #[serde(skip)]
    skipped_links: Vec<String>,
}

impl Replicator {
    /// A session of `job` ended: its outcome, for the status.
    pub(super) fn record(
        &self,
        job: &str,
        role: &'static str,
        started: Instant,
        r: Result<&Applied, impl Display>,
    ) {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let s = st.entry(job.to_owned()).or_default();
        s.role = role;
        s.running = false;
        s.last_attempt_ms = Some(unix_ms(SystemTime::now()));
        s.duration_ms = Some(started.elapsed().as_millis() as u64);
        let result = if r.is_ok() { "ok" } else { "failed" };
        let job_label = job.to_owned();
        metrics::counter!("resilience_replication_sessions_total", "name" => job_label.clone(), "role" => role, "result" => result)
            .increment(1);
        metrics::gauge!("resilience_replication_failing", "name" => job_label.clone(), "role" => role)
            .set(if r.is_ok() { 0.0 } else { 1.0 });
        if r.is_ok() {
            metrics::gauge!("resilience_replication_last_success_timestamp_seconds", "name" => job_label, "role" => role)
                .set(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()));
        }
        match r {
            Ok(a) => {
                s.last_success_ms = s.last_attempt_ms;
                s.files = a.files;
                s.bytes = a.bytes;
                s.deleted = a.deleted;
                s.last_error = None;
            }
            Err(e) => s.last_error = Some(e.to_string()),
        }
    }

    /// A session of `job` started.
    pub(super) fn mark_running(&self, job: &str, role: &'static str) {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let s = st.entry(job.to_owned()).or_default();
        s.role = role;
        s.running = true;
    }

    /// The status of every job, with how stale the last success is.
    pub fn status_doc(&self) -> ReplicationStatus {
        let now = unix_ms(SystemTime::now());
        let st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let jobs = self
            .jobs()
            .iter()
            .map(|j| {
                let s = st.get(j.name()).cloned().unwrap_or_default();
                let (kind, path) = match j {
                    Job::Dir(d) => ("dir", self.path(&d.path).display().to_string()),
                    Job::Sqlite(q) => ("sqlite", self.path(&q.path).display().to_string()),
                    Job::Postgres(p) => ("postgres", p.database.clone()),
                };
                let doc = ReplicationJob {
                    kind: kind.to_owned(),
                    path,
                    role: s.role.to_owned(),
                    last_success_ms: s.last_success_ms,
                    last_attempt_ms: s.last_attempt_ms,
                    duration_ms: s.duration_ms,
                    files: s.files,
                    bytes: s.bytes,
                    deleted: s.deleted,
                    last_error: s.last_error,
                    running: s.running,
                    links_skipped: s.links_skipped,
                    stale_s: s.last_success_ms.map(|t| (now - t) as f64 / 1000.0),
                };
                (j.name().to_owned(), doc)
            })
            .collect();
        let local = self
            .local_changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        ReplicationStatus {
            peer: self.cfg.peer.to_string(),
            jobs,
            local_changes_at_failback: local.and_then(|r| serde_json::to_value(r).ok()),
            refused: self.refused.totals_doc(),
        }
    }

    /// Symlinks of folder `job` that lead out of it are not sent: counted in
    /// the status, and told once in the events each time the list changes
    /// (not once per push for as long as they stay).
    pub(super) fn report_skipped_links(&self, job: &str, skipped: Vec<String>) {
        let changed = {
            let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
            let s = st.entry(job.to_owned()).or_default();
            s.links_skipped = skipped.len() as u64;
            let changed = s.skipped_links != skipped;
            s.skipped_links = skipped.clone();
            changed
        };
        if changed && !skipped.is_empty() {
            const SHOWN: usize = 10;
            let more = skipped.len().saturating_sub(SHOWN);
            self.note(
                "replication",
                format!(
                    "replication {job}: {} symlink(s) not sent, they lead out of the folder: {}{}",
                    skipped.len(),
                    skipped[..skipped.len().min(SHOWN)].join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ),
            );
        }
    }
}
