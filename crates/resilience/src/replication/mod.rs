//! Replication Main → Standby (XiVO's `xivo-sync`, done without a root SSH
//! key): folders pushed over TLS under the cluster CA, only what changed,
//! every file either old or new on the Standby, never half written.
//!
//! The Main pushes on a schedule and on demand (`resilience replicate`); the
//! Standby only accepts, and refuses while it is Active — the Standby never
//! pushes and is never overwritten while it serves.
//!
//! Sessions end on their own: every socket has TCP keepalive and
//! `TCP_USER_TIMEOUT`, every stream sits on a [`wire::Timed`] (no progress
//! for `read_timeout`, or past `session_timeout`, is an error), the TLS
//! handshake has `handshake_timeout`; so a silent client or a link that
//! went dark mid-push frees the job (the `busy` lock) within a read
//! deadline, and the event says so. The listener holds at most
//! `max_connections` connections ([`PER_ADDRESS`] from one address), and
//! what strangers send (garbage, foreign certificates, other names) is
//! counted and logged through [`RateLog`](crate::ratelog::RateLog), never a
//! line per connection.
//!
//! The work is split by idea: [`session`] opens the TLS session to the peer,
//! [`push`] is the Main's side, [`listen`] the Standby's listener and
//! [`receive`] what it does with a session, [`handback`] the Standby's
//! copy-back of kept data when it stops serving, [`failback`] the Main's
//! fetch of it, [`watch`] the folder watch, [`status`] what the API shows.

pub mod apply;
pub mod cert;
pub mod changes;
pub mod confine;
pub mod failback;
mod handback;
mod listen;
pub mod manifest;
pub mod pg_watch;
pub mod pipe;
pub mod postgres;
mod push;
mod receive;
mod session;
pub mod sqlite;
mod status;
pub mod tls;
mod watch;
pub mod wire;

pub use status::JobStatus;

use crate::paths::resolve;
use crate::ratelog::RateLog;
use manifest::HashCache;
use resilience_core::config::{
    DirJobSection, PostgresJobSection, ReplicationSection, SqliteJobSection,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The replication protocol's version, said in every `Hello`.
const VERSION: u32 = 1;

/// One configured job, whichever its kind.
#[derive(Debug, Clone)]
pub enum Job {
    Dir(DirJobSection),
    Sqlite(SqliteJobSection),
    Postgres(PostgresJobSection),
}

impl Job {
    pub fn name(&self) -> &str {
        match self {
            Job::Dir(d) => &d.name,
            Job::Sqlite(j) => &j.name,
            Job::Postgres(j) => &j.name,
        }
    }
}

/// One node's replication: its jobs, its sessions' state and results, on
/// either side (the Main pushes, the Standby receives).
pub struct Replicator {
    cfg: ReplicationSection,
    base: PathBuf,
    state_dir: PathBuf,
    peer_name: String,
    pub status: Mutex<BTreeMap<String, JobStatus>>,
    /// One session per job at a time, on either side.
    busy: tokio::sync::Mutex<()>,
    /// Whether this node is the Standby (the side that receives).
    standby: bool,
    /// What changed on this Standby while it was Active, found when it
    /// handed the service back (shown until the next one).
    pub local_changes: Mutex<Option<changes::Report>>,
    /// Standby: kept paths the Main fetched before it asked for the service
    /// (`JOB/path`), for the failback report.
    fetched: Mutex<Vec<String>>,
    /// Where the replication events go (the node's event history).
    notes: Option<tokio::sync::mpsc::UnboundedSender<(&'static str, String)>>,
    /// Connections refused before a session (strangers), counted and
    /// logged at a bounded rate.
    refused: Arc<RateLog>,
    /// Standby: the copy-back of kept data after it stopped serving is due
    /// or under way; the daemon waits for it before it exits or re-executes
    /// (cutting it would leave voicemail on this node).
    copy_back: tokio::sync::watch::Sender<bool>,
}

fn globs(patterns: &[String]) -> globset::GlobSet {
    let mut b = globset::GlobSetBuilder::new();
    for p in patterns {
        if let Ok(g) = globset::Glob::new(p) {
            b.add(g);
        }
    }
    b.build().unwrap_or_else(|_| globset::GlobSet::empty())
}

fn load_cache(path: &Path) -> HashCache {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_cache(path: &Path, cache: &HashCache) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(cache).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

/// Whether `path` is `prefix` or lies under it.
fn under(path: &str, prefix: &str) -> bool {
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl Replicator {
    pub fn new(
        cfg: ReplicationSection,
        base: &Path,
        state_dir: &Path,
        peer_name: &str,
        standby: bool,
        notes: Option<tokio::sync::mpsc::UnboundedSender<(&'static str, String)>>,
    ) -> Replicator {
        Replicator {
            cfg,
            base: base.to_owned(),
            state_dir: state_dir.to_owned(),
            peer_name: peer_name.to_owned(),
            status: Mutex::new(BTreeMap::new()),
            busy: tokio::sync::Mutex::new(()),
            standby,
            local_changes: Mutex::new(None),
            fetched: Mutex::new(Vec::new()),
            notes,
            refused: Arc::new(RateLog::new(
                "replication",
                "connections refused",
                Duration::from_secs(10),
            )),
            copy_back: tokio::sync::watch::channel(false).0,
        }
    }

    /// Count a refused connection (status, metrics) and log it at a bounded rate.
    fn refuse(&self, reason: &'static str, detail: impl FnOnce() -> String) {
        metrics::counter!("resilience_replication_refused_total", "reason" => reason).increment(1);
        self.refused.event(reason, detail);
    }

    fn note(&self, kind: &'static str, text: String) {
        tracing::info!("{text}");
        if let Some(n) = &self.notes {
            let _ = n.send((kind, text));
        }
    }

    /// Every configured job: folders, then SQLite files, then databases.
    pub fn jobs(&self) -> Vec<Job> {
        let c = &self.cfg;
        c.dirs
            .iter()
            .cloned()
            .map(Job::Dir)
            .chain(c.sqlite.iter().cloned().map(Job::Sqlite))
            .chain(c.postgres.iter().cloned().map(Job::Postgres))
            .collect()
    }

    fn find(&self, name: &str) -> Option<Job> {
        self.jobs().into_iter().find(|j| j.name() == name)
    }

    /// The `keep_on_failback` paths of folder job `job`, relative to it.
    fn keep_prefixes(&self, job: &str) -> Vec<String> {
        self.cfg
            .keep_on_failback
            .iter()
            .filter_map(|k| k.split_once('/'))
            .filter(|(j, _)| *j == job)
            .map(|(_, rel)| rel.trim_end_matches('/').to_owned())
            .collect()
    }

    fn baseline_file(&self, job: &str) -> PathBuf {
        self.state_dir
            .join(format!("replication-baseline-{job}.json"))
    }

    fn path(&self, p: &Path) -> PathBuf {
        resolve(&self.base, p)
    }

    fn cache_file(&self, side: &str, job: &str) -> PathBuf {
        self.state_dir
            .join(format!("replication-{side}-{job}.json"))
    }
}
