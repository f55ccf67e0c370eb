//! The Standby's hand-back of `keep_on_failback` data: what it recorded
//! while it served (voicemail, say) goes to the Main, never the other way
//! round. Twice: when the Main fetches it before it asks for the service
//! back, and when this node stops serving (the copy-back, which the daemon
//! waits for before it exits). Then the failback report says what changed
//! here while this node was Active.

use super::changes::{self, Baseline, JobChanges, Report};
use super::manifest::{self, HashCache, Manifest};
use super::push::send_file;
use super::wire::{self, Applied, Kind, Op};
use super::{globs, pipe, postgres, sqlite, under, Job, Replicator};
use crate::clock::unix_ms;
use resilience_core::config::DirJobSection;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

impl Replicator {
    /// Standby: when this node stops serving, run the copy-back and the
    /// failback report, with `copy_back` raised the while.
    pub(super) fn copy_back_on_handback(self: Arc<Self>, mut active: watch::Receiver<bool>) {
        tokio::spawn(async move {
            let mut was = *active.borrow();
            while active.changed().await.is_ok() {
                let now = *active.borrow_and_update();
                if was && !now {
                    self.copy_back.send_replace(true);
                    self.report_local_changes().await;
                    self.copy_back.send_replace(false);
                }
                was = now;
            }
        });
    }

    /// Standby: it has just stopped serving, so the copy-back of kept data
    /// is due (said at once by the node's loop: the replication task that
    /// runs it may not have woken yet). `false`: it serves again.
    pub fn expect_copy_back(&self, due: bool) {
        if self.standby {
            self.copy_back.send_replace(due);
        }
    }

    /// Whether a copy-back is due or under way.
    pub fn copying_back(&self) -> bool {
        *self.copy_back.borrow()
    }

    /// Wait for the copy-back to end, at most `within`; false if it did not.
    pub async fn copy_back_finished(&self, within: Duration) -> bool {
        let mut rx = self.copy_back.subscribe();
        let done = tokio::time::timeout(within, rx.wait_for(|due| !*due))
            .await
            .is_ok_and(|r| r.is_ok());
        done
    }

    /// Standby, on handing the service back: compare every job with what
    /// the last replication left, before a push may overwrite it.
    pub async fn report_local_changes(&self) {
        // Pushes wait (are refused) until the report is made.
        let _one = self.busy.lock().await;
        let mut report = Report {
            at_ms: unix_ms(SystemTime::now()),
            ..Report::default()
        };
        for j in self.jobs() {
            let Some(base) = changes::load(&self.baseline_file(j.name())) else {
                continue; // never replicated here: nothing to compare with
            };
            if let Some(c) = self.changes_since(&j, &base).await {
                report.jobs.push(c);
            }
        }
        report
            .kept
            .append(&mut self.fetched.lock().unwrap_or_else(|e| e.into_inner()));
        self.copy_kept_back(&mut report).await;
        self.note("replication", changes::summary(&report));
        *self.local_changes.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }

    /// What changed in job `j` since `base`; None if it cannot be read now.
    async fn changes_since(&self, j: &Job, base: &Baseline) -> Option<JobChanges> {
        match j {
            Job::Dir(d) => {
                let root = self.path(&d.path);
                let excludes = globs(&d.exclude);
                let now = tokio::task::spawn_blocking(move || {
                    manifest::scan(&root, &excludes, &HashCache::new())
                })
                .await;
                match now {
                    Ok(Ok(now)) => Some(changes::diff_files(&d.name, base, &now)),
                    _ => None,
                }
            }
            Job::Postgres(p) => {
                let pg = postgres::Pg::new(p, &self.base);
                match pg.fingerprints().await {
                    Ok(now) => Some(changes::diff_tables(&p.name, base, &now)),
                    Err(_) => None,
                }
            }
            // Per table, and per key family for Asterisk's astdb (the
            // PBX writes some families itself: registrations show too).
            Job::Sqlite(q) => {
                let path = self.path(&q.path);
                match tokio::task::spawn_blocking(move || sqlite::fingerprints(&path)).await {
                    Ok(Ok(now)) => Some(changes::diff_tables(&q.name, base, &now)),
                    _ => None,
                }
            }
        }
    }

    /// Copy every folder's kept paths back to the Main, a few tries each,
    /// adding what was sent to `report`.
    async fn copy_kept_back(&self, report: &mut Report) {
        for d in &self.cfg.dirs {
            let prefixes = self.keep_prefixes(&d.name);
            if prefixes.is_empty() {
                continue;
            }
            // What was recorded during the drain, after the Main's fetch.
            // The Main has just started; a push of its own may hold it busy.
            let mut last = None;
            for _ in 0..5 {
                match self.keep_back(d, &prefixes).await {
                    Ok(sent) => {
                        for p in sent.into_iter().map(|p| format!("{}/{p}", d.name)) {
                            if !report.kept.contains(&p) {
                                report.kept.push(p);
                            }
                        }
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(format!("{e:#}")),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if let Some(e) = last {
                self.note(
                    "replication",
                    format!(
                        "failback: could not copy {}'s kept paths back to the main: {e}",
                        d.name
                    ),
                );
            }
        }
    }

    /// Standby at failback: copy the files under `prefixes` that the Main
    /// lacks or holds older to the Main. Returns the paths sent.
    async fn keep_back(
        &self,
        d: &DirJobSection,
        prefixes: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let mut s = self.open_session(&d.name, true).await?;
        let sent = self.send_kept(&mut s, d, prefixes).await?;
        let _ = s.shutdown().await;
        Ok(sent)
    }

    /// Standby: the Main fetches what this Standby recorded while it
    /// served, before it asks for the service back. The paths sent.
    pub(super) async fn send_fetched<S>(&self, s: &mut S, job: &Job) -> anyhow::Result<Vec<String>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let Job::Dir(d) = job else {
            anyhow::bail!("{}: keep_on_failback applies to folders only", job.name())
        };
        let prefixes = self.keep_prefixes(&d.name);
        self.send_kept(s, d, &prefixes).await
    }

    /// Paths of `job` the Main fetched, kept for the failback report.
    pub(super) fn remember_fetched(&self, job: &str, sent: Vec<String>) {
        let mut f = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
        for p in sent {
            let p = format!("{job}/{p}");
            if !f.contains(&p) {
                f.push(p);
            }
        }
    }

    /// Send the files under `prefixes` that the receiver (its manifest
    /// first) lacks or holds older, then wait for its `Applied`.
    pub(super) async fn send_kept<S>(
        &self,
        s: &mut S,
        d: &DirJobSection,
        prefixes: &[String],
    ) -> anyhow::Result<Vec<String>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let theirs: Manifest = wire::expect(s, Kind::Manifest).await?;
        let root = self.path(&d.path);
        let excludes = globs(&d.exclude);
        let ours = {
            let root = root.clone();
            tokio::task::spawn_blocking(move || manifest::scan(&root, &excludes, &HashCache::new()))
                .await??
        };
        let prefixes = prefixes.to_vec();
        let sent = pipe::produce(s, move |out| {
            let mut sent = Vec::new();
            for (path, e) in ours
                .iter()
                .filter(|(p, _)| prefixes.iter().any(|k| under(p, k)))
            {
                let t = theirs.get(path);
                let newer = t.is_none_or(|t| {
                    t.kind == manifest::EntryKind::File
                        && t.mtime_ns < e.mtime_ns
                        && (t.size, t.mtime_ns) != (e.size, e.mtime_ns)
                });
                if e.kind == manifest::EntryKind::Dir && t.is_none() {
                    let op = Op::Dir {
                        path: path.clone(),
                        mode: e.mode,
                    };
                    out.json(Kind::Op, &op)?;
                } else if e.kind == manifest::EntryKind::File
                    && newer
                    && send_file(out, &root.join(path), path)?.is_some()
                {
                    sent.push(path.clone());
                }
            }
            Ok(sent)
        })
        .await?;
        wire::write_frame(s, Kind::Done, b"{}").await?;
        s.flush().await?;
        let _: Applied = wire::expect(s, Kind::Applied).await?;
        Ok(sent)
    }
}
