//! The Main's side: push every job to the Standby, on a schedule, on a
//! change or on demand. A folder goes as the changes its manifest lacks
//! ([`manifest::plan`]); a SQLite file or a database as one snapshot the
//! Standby swaps in whole.

use super::manifest::{self, Manifest, Step};
use super::session::wait_applied;
use super::wire::{self, Applied, FileEnd, FileHead, Kind, Op};
use super::{apply, globs, load_cache, pipe, postgres, save_cache, sqlite, Job, Replicator};
use anyhow::Context;
use resilience_core::config::DirJobSection;
use std::io::Read;
use std::path::Path;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Why a push failed, with every cause on one line: the status, the log and
/// the API's answer show it as it reads.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The SQLite backup or the `pg_dump` failed: nothing was sent.
    #[error("snapshot: {0:#}")]
    Snapshot(anyhow::Error),
    /// The session (connection, TLS, stream, the Standby's answer) or the
    /// work beside it failed.
    #[error("{0:#}")]
    Session(anyhow::Error),
}

/// Send the file at `full` as `path` (FileStart, Data…, FileEnd), on the
/// sending thread of a [`pipe::produce`]; what the cache keeps of it, or
/// None if it went away since the scan.
pub(super) fn send_file(
    out: &pipe::Out,
    full: &Path,
    path: &str,
) -> anyhow::Result<Option<(u64, i64, String)>> {
    let mut f = match std::fs::File::open(full) {
        Ok(f) => f,
        // Gone since the scan: the next run deletes it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| full.display().to_string()),
    };
    let m = f.metadata()?;
    let head = FileHead {
        path: path.to_owned(),
        size: m.len(),
        // No setuid, setgid or sticky bit leaves this node (the receiver
        // clears them too).
        mode: std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & apply::PLAIN,
        mtime_ns: manifest::mtime_ns(&m),
    };
    out.json(Kind::FileStart, &head)?;
    let mut hasher = blake3::Hasher::new();
    let mut left = head.size;
    while left > 0 {
        let want = (left as usize).min(wire::CHUNK);
        let mut buf = out.buffer();
        // read_to_end through `take`: fills the buffer without zeroing it first.
        let n = (&mut f).take(want as u64).read_to_end(&mut buf)?;
        if n == 0 {
            anyhow::bail!("{}: shrank while being sent", full.display());
        }
        hasher.update(&buf);
        out.send(Kind::Data, buf)?;
        left -= n as u64;
    }
    let hash = hasher.finalize().to_hex().to_string();
    out.json(Kind::FileEnd, &FileEnd { hash: hash.clone() })?;
    Ok(Some((head.size, head.mtime_ns, hash)))
}

impl Replicator {
    /// Push every job now; one result per job.
    pub async fn push_all(&self) -> Vec<(String, Result<Applied, PushError>)> {
        let mut out = Vec::new();
        for j in self.jobs() {
            out.push((j.name().to_owned(), self.push(&j).await));
        }
        out
    }

    /// Push one job now, recording the result.
    pub async fn push(&self, j: &Job) -> Result<Applied, PushError> {
        let started = Instant::now();
        let name = j.name().to_owned();
        self.mark_running(&name, "push");
        let r = match j {
            Job::Dir(d) => self.push_dir(d).await.map_err(PushError::Session),
            other => self.push_snapshot(other).await,
        };
        match &r {
            Ok(a) => tracing::info!(
                "replication {name}: pushed {} files, {} bytes, {} deletions in {:?}",
                a.files,
                a.bytes,
                a.deleted,
                started.elapsed()
            ),
            Err(e) => tracing::warn!("replication {name}: {e}"),
        }
        self.record(&name, "push", started, r.as_ref());
        r
    }

    async fn push_dir(&self, d: &DirJobSection) -> anyhow::Result<Applied> {
        let _one = self.busy.lock().await;
        let mut s = self.open_session(&d.name, false).await?;
        let theirs: Manifest = wire::expect(&mut s, Kind::Manifest).await?;
        let root = self.path(&d.path);
        let cache_path = self.cache_file("sent", &d.name);
        let mut cache = load_cache(&cache_path);
        let excludes = globs(&d.exclude);
        let (ours, skipped) = {
            let (root, cache) = (root.clone(), cache.clone());
            tokio::task::spawn_blocking(move || {
                let mut m = manifest::scan(&root, &excludes, &cache)?;
                manifest::strip_special_bits(&mut m);
                let skipped = manifest::drop_escaping_links(&root, &mut m)?;
                std::io::Result::Ok((m, skipped))
            })
            .await??
        };
        self.report_skipped_links(&d.name, skipped);
        let steps = manifest::plan(&ours, &theirs);
        let mut cache = {
            let root = root.clone();
            pipe::produce(&mut s, move |out| {
                for step in steps {
                    match step {
                        Step::File { path } => {
                            if let Some(hash) = send_file(out, &root.join(&path), &path)? {
                                cache.insert(path, hash);
                            }
                        }
                        Step::Dir { path, mode } => out.json(Kind::Op, &Op::Dir { path, mode })?,
                        Step::Symlink { path, target } => {
                            out.json(Kind::Op, &Op::Symlink { path, target })?
                        }
                        Step::Meta {
                            path,
                            mode,
                            mtime_ns,
                        } => out.json(
                            Kind::Op,
                            &Op::Meta {
                                path,
                                mode,
                                mtime_ns,
                            },
                        )?,
                        Step::Delete { path } => out.json(Kind::Op, &Op::Delete { path })?,
                    }
                }
                Ok(cache)
            })
            .await?
        };
        wire::write_frame(&mut s, Kind::Done, b"{}").await?;
        s.flush().await?;
        let applied = wait_applied(&mut s).await?;
        cache.retain(|k, _| ours.contains_key(k));
        let _ = tokio::task::spawn_blocking(move || save_cache(&cache_path, &cache)).await;
        let _ = s.shutdown().await;
        Ok(applied)
    }

    /// Main: take a snapshot (SQLite backup, `pg_dump`) into the state
    /// folder, then send it as one file; the Standby swaps it in only once
    /// it has all of it and its hash matches.
    async fn push_snapshot(&self, j: &Job) -> Result<Applied, PushError> {
        let _one = self.busy.lock().await;
        let snap = self
            .state_dir
            .join(format!("snapshot-{}{}", j.name(), manifest::TMP_MARK));
        let taken = match j {
            Job::Sqlite(q) => {
                let (src, out) = (self.path(&q.path), snap.clone());
                tokio::task::spawn_blocking(move || sqlite::snapshot(&src, &out))
                    .await
                    .map_err(|e| PushError::Session(e.into()))?
                    .map_err(anyhow::Error::from)
            }
            Job::Postgres(p) => postgres::Pg::new(p, &self.base)
                .dump(&snap)
                .await
                .map_err(anyhow::Error::from),
            Job::Dir(_) => return Err(PushError::Session(anyhow::anyhow!("not a snapshot job"))),
        };
        let r = match taken {
            Ok(()) => self
                .send_snapshot(j, &snap)
                .await
                .map_err(PushError::Session),
            Err(e) => Err(PushError::Snapshot(e)),
        };
        let _ = std::fs::remove_file(&snap);
        r
    }

    async fn send_snapshot(&self, j: &Job, snap: &Path) -> anyhow::Result<Applied> {
        let mut s = self.open_session(j.name(), false).await?;
        // The Standby answers an empty manifest when it is ready, or an error.
        let _ready: Manifest = wire::expect(&mut s, Kind::Manifest).await?;
        let (snap, name) = (snap.to_owned(), j.name().to_owned());
        pipe::produce(&mut s, move |out| match send_file(out, &snap, &name)? {
            Some(_) => Ok(()),
            None => anyhow::bail!("{}: the snapshot went away", snap.display()),
        })
        .await?;
        wire::write_frame(&mut s, Kind::Done, b"{}").await?;
        s.flush().await?;
        let applied = wait_applied(&mut s).await?;
        let _ = s.shutdown().await;
        Ok(applied)
    }
}

#[cfg(test)]
mod tests {
    use super::PushError;

    /// Every cause on one line, the snapshot's prefixed as before.
    #[test]
    fn push_errors_show_every_cause() {
        let e = || anyhow::anyhow!("disk full").context("write /x");
        assert_eq!(
            PushError::Snapshot(e()).to_string(),
            "snapshot: write /x: disk full"
        );
        assert_eq!(PushError::Session(e()).to_string(), "write /x: disk full");
    }
}
