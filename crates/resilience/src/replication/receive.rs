//! The Standby's side of a session: check its `Hello` (version, job, role,
//! one session per job), then apply a folder's changes (confined, atomic, a
//! baseline kept for the failback report) or take a snapshot whole, check
//! its hash and swap it in. A Main fetching kept data is answered by
//! [`handback`](super::handback).

use super::changes::{self, Baseline};
use super::manifest::{self, HashCache, Manifest};
use super::wire::{self, Applied, FileEnd, FileHead, Hello, Kind, Op};
use super::{
    apply, globs, load_cache, pipe, postgres, save_cache, sqlite, under, Job, Replicator, VERSION,
};
use resilience_core::config::DirJobSection;
use std::path::Path;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Why the Standby refuses a session; the words go back to the Main in an
/// `Error` frame and into its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("protocol version {got} is not {}", VERSION)]
    Version { got: u32 },
    #[error("no replication job named {0:?} here")]
    NoJob(String),
    #[error("no keep_on_failback paths of job {0:?} are taken here")]
    NoKeptPaths(String),
    #[error("this node is active: it takes no push while it serves")]
    Active,
    #[error("a replication session is already running")]
    Busy,
}

/// The symlinks a baseline holds.
fn links(b: &Baseline) -> Vec<String> {
    b.files
        .iter()
        .filter(|(_, s)| s.kind == manifest::EntryKind::Symlink)
        .map(|(p, _)| p.clone())
        .collect()
}

/// Apply a folder session's frames up to `Done`, on the blocking thread of
/// [`pipe::consume`]; `baseline` follows what is applied. `keep`: only
/// files and folders under these paths, nothing deleted.
fn apply_frames(
    rx: &mut pipe::In,
    mut a: apply::Applier,
    keep: Option<&[String]>,
    mut baseline: Baseline,
) -> anyhow::Result<(Applied, HashCache, Baseline)> {
    // Links that already led out (a local user's) are not this
    // session's doing: judged only if the session touches them.
    let before = a.escaping(&links(&baseline));
    let mut head: Option<FileHead> = None;
    loop {
        let (kind, buf) = rx.next()?;
        match kind {
            Kind::FileStart => {
                let h: FileHead = wire::parse(kind, &buf)?;
                if let Some(k) = keep {
                    if !k.iter().any(|p| under(&h.path, p)) {
                        anyhow::bail!("{}: not a keep_on_failback path", h.path);
                    }
                }
                head = Some(h.clone());
                a.start_file(h)?
            }
            Kind::Data => a.data(&buf)?,
            Kind::FileEnd => {
                a.end_file(wire::parse(kind, &buf)?)?;
                if let Some(h) = head.take() {
                    baseline.file(&h);
                }
            }
            Kind::Op => {
                let op: Op = wire::parse(kind, &buf)?;
                if keep.is_some() && !matches!(op, Op::Dir { .. }) {
                    anyhow::bail!("a keep_on_failback session only adds files");
                }
                baseline.op(&op);
                a.op(op)?
            }
            Kind::Done => break,
            Kind::Error => {
                let why: String = wire::parse(kind, &buf).unwrap_or_default();
                anyhow::bail!("the peer refused: {why}")
            }
            other => anyhow::bail!("unexpected {other:?} frame"),
        }
        rx.recycle(buf);
    }
    a.check_links(links(&baseline).iter().filter(|l| !before.contains(*l)))?;
    let cache = std::mem::take(&mut a.cache);
    Ok((a.applied.clone(), cache, baseline))
}

/// Tell the Main how the session ended: `Applied`, or an `Error` with why.
async fn answer<S>(s: &mut S, name: &str, r: anyhow::Result<Applied>) -> anyhow::Result<()>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    match r {
        Ok(a) => {
            tracing::info!(
                "replication {name}: received {} files, {} bytes, {} deletions",
                a.files,
                a.bytes,
                a.deleted
            );
            wire::write_json(s, Kind::Applied, &a).await?;
            s.flush().await?;
            Ok(())
        }
        Err(e) => {
            let _ = wire::write_json(s, Kind::Error, &format!("{e:#}")).await;
            let _ = s.flush().await;
            Err(e)
        }
    }
}

impl Replicator {
    /// Why a session that says `hello` is refused, a running one aside.
    fn refusal(&self, hello: &Hello, active: bool) -> Option<Refusal> {
        if hello.version != VERSION {
            Some(Refusal::Version { got: hello.version })
        } else if self.find(&hello.job).is_none() {
            Some(Refusal::NoJob(hello.job.clone()))
        } else if hello.keep && self.keep_prefixes(&hello.job).is_empty() {
            Some(Refusal::NoKeptPaths(hello.job.clone()))
        } else if active && !hello.keep {
            Some(Refusal::Active)
        } else {
            None
        }
    }

    /// One session from the peer, whose certificate was checked: a push to
    /// apply, or the Main's fetch of kept data.
    pub(super) async fn receive<S>(&self, mut s: S, active: bool) -> anyhow::Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let hello: Hello = wire::expect(&mut s, Kind::Hello).await?;
        let refusal = self.refusal(&hello, active);
        let guard = self.busy.try_lock();
        let refusal = refusal.or_else(|| guard.is_err().then_some(Refusal::Busy));
        if let Some(why) = refusal {
            let _ = wire::write_json(&mut s, Kind::Error, &why.to_string()).await;
            let _ = s.flush().await;
            return Err(why.into());
        }
        let Some(job) = self.find(&hello.job) else {
            anyhow::bail!("no job")
        };
        if hello.keep && self.standby {
            // The Main fetches what this Standby recorded while it served,
            // before it asks for the service back.
            let sent = self.send_fetched(&mut s, &job).await;
            drop(guard);
            self.remember_fetched(job.name(), sent?);
            return Ok(());
        }
        let started = Instant::now();
        let name = job.name().to_owned();
        self.mark_running(&name, "receive");
        let keep = hello.keep.then(|| self.keep_prefixes(&name));
        let r = match &job {
            Job::Dir(d) => self.receive_job(&mut s, d, keep).await,
            other => self.receive_snapshot(&mut s, other).await,
        };
        if let Err(e) = &r {
            if wire::timed_out(e) {
                // The guard goes with this function: say the job is free.
                self.note(
                    "replication",
                    format!(
                        "replication {name}: session ended after {:.1}s: {e:#}; the job is free again",
                        started.elapsed().as_secs_f64()
                    ),
                );
            }
        }
        // The job's work is over: a new session may start while this one
        // still says goodbye to a peer that may not listen.
        drop(guard);
        self.record(
            &name,
            "receive",
            started,
            r.as_ref().map_err(|e| format!("{e:#}")),
        );
        answer(&mut s, &name, r).await
    }

    /// Apply a folder session. `keep`: a Standby copying back its
    /// `keep_on_failback` paths — only files and folders under them, nothing
    /// deleted.
    pub(super) async fn receive_job<S>(
        &self,
        s: &mut S,
        d: &DirJobSection,
        keep: Option<Vec<String>>,
    ) -> anyhow::Result<Applied>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let root = self.path(&d.path);
        let cache_path = self.cache_file("received", &d.name);
        let cache = load_cache(&cache_path);
        let excludes = globs(&d.exclude);
        let theirs = {
            let (root, cache) = (root.clone(), cache.clone());
            tokio::task::spawn_blocking(move || manifest::scan(&root, &excludes, &cache)).await??
        };
        wire::write_json(s, Kind::Manifest, &theirs).await?;
        s.flush().await?;
        // What the folder holds once this session is applied: the baseline
        // against which a failover's local changes are found.
        let baseline = Baseline::from_manifest(&theirs);
        let (owner, group) = (d.owner.clone(), d.group.clone());
        let (applied, cache, baseline) = pipe::consume(s, move |rx| {
            let a = apply::Applier::new(&root, cache, owner.as_ref(), group.as_ref())?;
            apply_frames(rx, a, keep.as_deref(), baseline)
        })
        .await?;
        let base_path = self.baseline_file(&d.name);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            save_cache(&cache_path, &cache)?;
            changes::save(&base_path, &baseline)
        })
        .await??;
        Ok(applied)
    }

    /// Standby: receive a snapshot into a temporary file, check its size and
    /// hash, then swap it in (SQLite) or restore and swap (PostgreSQL).
    async fn receive_snapshot<S>(&self, s: &mut S, job: &Job) -> anyhow::Result<Applied>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let incoming = match job {
            Job::Sqlite(q) => sqlite::incoming_path(&self.path(&q.path)),
            _ => self
                .state_dir
                .join(format!("incoming-{}{}", job.name(), manifest::TMP_MARK)),
        };
        if let Some(dir) = incoming.parent() {
            std::fs::create_dir_all(dir)?;
        }
        wire::write_json(s, Kind::Manifest, &Manifest::new()).await?;
        s.flush().await?;
        let r = self.receive_file(s, &incoming).await;
        let r = match r {
            Ok(size) => self
                .install_snapshot(job, &incoming)
                .await
                .map(|()| Applied {
                    files: 1,
                    bytes: size,
                    ..Applied::default()
                }),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&incoming);
        r
    }

    /// Read one whole file of the stream into `to`; its size on success.
    async fn receive_file<S>(&self, s: &mut S, to: &Path) -> anyhow::Result<u64>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use std::io::Write;
        let to = to.to_owned();
        pipe::consume(s, move |rx| {
            let mut f = std::fs::File::create(&to)?;
            let (kind, buf) = rx.next()?;
            if kind != Kind::FileStart {
                anyhow::bail!("expected a snapshot, got {kind:?}");
            }
            let head: FileHead = wire::parse(kind, &buf)?;
            let mut hasher = blake3::Hasher::new();
            let mut got = 0u64;
            let end: FileEnd = loop {
                let (kind, buf) = rx.next()?;
                match kind {
                    Kind::Data => {
                        got += buf.len() as u64;
                        if got > head.size {
                            anyhow::bail!("snapshot longer than the {} bytes announced", head.size);
                        }
                        hasher.update(&buf);
                        f.write_all(&buf)?;
                        rx.recycle(buf);
                    }
                    Kind::FileEnd => break wire::parse(kind, &buf)?,
                    other => anyhow::bail!("unexpected {other:?} frame in a snapshot"),
                }
            };
            let hash = hasher.finalize().to_hex().to_string();
            if got != head.size || hash != end.hash {
                anyhow::bail!(
                    "snapshot does not match: {got} of {} bytes, hash {hash} vs {}",
                    head.size,
                    end.hash
                );
            }
            let (done, _) = rx.next()?;
            if done != Kind::Done {
                anyhow::bail!("expected the end of the session, got {done:?}");
            }
            f.sync_all()?;
            Ok(got)
        })
        .await
    }

    async fn install_snapshot(&self, job: &Job, incoming: &Path) -> anyhow::Result<()> {
        match job {
            Job::Sqlite(q) => {
                let (from, to) = (incoming.to_owned(), self.path(&q.path));
                let base_path = self.baseline_file(&q.name);
                tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                    sqlite::install(&from, &to)?;
                    // What the next failback report compares with.
                    match sqlite::fingerprints(&to) {
                        Ok(prints) => {
                            changes::save(&base_path, &changes::Baseline::tables(prints))?
                        }
                        Err(e) => {
                            tracing::warn!("replication: no fingerprint of {}: {e}", to.display())
                        }
                    }
                    Ok(())
                })
                .await??;
            }
            Job::Postgres(p) => {
                let pg = postgres::Pg::new(p, &self.base);
                let scratch =
                    self.state_dir
                        .join(format!("own-rows-{}{}", p.name, manifest::TMP_MARK));
                pg.install(incoming, &scratch).await?;
                let prints = pg.fingerprints().await.unwrap_or_default();
                let base_path = self.baseline_file(&p.name);
                let b = changes::Baseline::tables(prints);
                tokio::task::spawn_blocking(move || changes::save(&base_path, &b)).await??;
            }
            Job::Dir(_) => anyhow::bail!("not a snapshot job"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Refusal;

    /// The Main shows these words in its status: they read as they did.
    #[test]
    fn refusals_read_as_before() {
        let cases = [
            (Refusal::Version { got: 2 }, "protocol version 2 is not 1"),
            (
                Refusal::NoJob("spool".into()),
                "no replication job named \"spool\" here",
            ),
            (
                Refusal::NoKeptPaths("spool".into()),
                "no keep_on_failback paths of job \"spool\" are taken here",
            ),
            (
                Refusal::Active,
                "this node is active: it takes no push while it serves",
            ),
            (Refusal::Busy, "a replication session is already running"),
        ];
        for (r, words) in cases {
            assert_eq!(r.to_string(), words);
        }
    }
}
