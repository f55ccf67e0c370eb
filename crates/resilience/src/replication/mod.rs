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

pub mod apply;
pub mod cert;
pub mod changes;
pub mod confine;
pub mod failback;
pub mod manifest;
pub mod pg_watch;
pub mod pipe;
pub mod postgres;
pub mod sqlite;
pub mod tls;
pub mod wire;

use crate::node::resolve;
use crate::node::store::unix_ms;
use crate::ratelog::RateLog;
use anyhow::Context;
use manifest::{HashCache, Manifest, Step};
use resilience_core::config::{
    DirJobSection, PostgresJobSection, ReplicationSection, SqliteJobSection,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::watch;
use wire::{Applied, FileEnd, FileHead, Hello, Kind, Op};

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

type Session = BufStream<tokio_rustls::client::TlsStream<wire::Timed<TcpStream>>>;

/// Connections one address may hold on the listener: the peer keeps room
/// when a stranger fills its share.
pub const PER_ADDRESS: usize = 4;

/// Open connections on the listener, in all and per address.
struct Slots {
    max: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One held connection; given back when dropped.
struct Slot(Arc<Slots>, IpAddr);

impl Slots {
    fn take(me: &Arc<Slots>, ip: IpAddr) -> Result<Slot, &'static str> {
        let mut g = me.held.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 >= me.max {
            return Err("too many connections");
        }
        let n = g.1.entry(ip).or_default();
        if *n >= PER_ADDRESS {
            return Err("too many connections from one address");
        }
        *n += 1;
        g.0 += 1;
        Ok(Slot(me.clone(), ip))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.0.held.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.1);
            }
        }
    }
}

/// TCP keepalive and `TCP_USER_TIMEOUT`: a peer that vanished (power cut,
/// no FIN) is noticed by the kernel even while no read is pending.
fn keepalive(tcp: &TcpStream, read_timeout: Duration) {
    let sock = socket2::SockRef::from(tcp);
    let every = (read_timeout / 3).max(Duration::from_secs(1));
    let ka = socket2::TcpKeepalive::new()
        .with_time(every)
        .with_interval(every)
        .with_retries(3);
    if let Err(e) = sock
        .set_tcp_keepalive(&ka)
        .and_then(|()| sock.set_tcp_user_timeout(Some(read_timeout)))
    {
        tracing::debug!("replication: cannot set TCP keepalive: {e}");
    }
}

/// Why a TLS handshake failed, in a few fixed words (the rate-limited log's
/// reason).
fn handshake_reason(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            "foreign certificate"
        }
        _ if e.kind() == std::io::ErrorKind::TimedOut => "tls handshake timed out",
        _ => "tls handshake failed",
    }
}

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
    copy_back: watch::Sender<bool>,
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

/// Send the file at `full` as `path` (FileStart, Data…, FileEnd), on the
/// sending thread of a [`pipe::produce`]; what the cache keeps of it, or
/// None if it went away since the scan.
fn send_file(
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

/// The Standby's answer to `Done`. It may first restore a database for
/// minutes: no idle limit here; keepalive notices a dead peer and the
/// session's deadline still holds.
async fn wait_applied(s: &mut Session) -> anyhow::Result<Applied> {
    s.get_mut().get_mut().0.set_idle(None);
    Ok(wire::expect(s, Kind::Applied).await?)
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
            copy_back: watch::channel(false).0,
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

    fn record(&self, job: &str, role: &'static str, started: Instant, r: &Result<Applied, String>) {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let s = st.entry(job.to_owned()).or_default();
        s.role = role;
        s.running = false;
        s.last_attempt_ms = Some(unix_ms(SystemTime::now()));
        s.duration_ms = Some(started.elapsed().as_millis() as u64);
        match r {
            Ok(a) => {
                s.last_success_ms = s.last_attempt_ms;
                s.files = a.files;
                s.bytes = a.bytes;
                s.deleted = a.deleted;
                s.last_error = None;
            }
            Err(e) => s.last_error = Some(e.clone()),
        }
    }

    fn mark_running(&self, job: &str, role: &'static str) {
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let s = st.entry(job.to_owned()).or_default();
        s.role = role;
        s.running = true;
    }

    /// The status of every job, with how stale the last success is.
    pub fn status_json(&self) -> serde_json::Value {
        let now = unix_ms(SystemTime::now());
        let st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let jobs: serde_json::Map<String, serde_json::Value> = self
            .jobs()
            .iter()
            .map(|j| {
                let s = st.get(j.name()).cloned().unwrap_or_default();
                let mut v = serde_json::to_value(&s).unwrap_or_default();
                v["stale_s"] =
                    serde_json::json!(s.last_success_ms.map(|t| (now - t) as f64 / 1000.0));
                let (kind, what) = match j {
                    Job::Dir(d) => ("dir", self.path(&d.path).display().to_string()),
                    Job::Sqlite(q) => ("sqlite", self.path(&q.path).display().to_string()),
                    Job::Postgres(p) => ("postgres", p.database.clone()),
                };
                v["kind"] = serde_json::json!(kind);
                v["path"] = serde_json::json!(what);
                (j.name().to_owned(), v)
            })
            .collect();
        let local = self
            .local_changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        serde_json::json!({
            "peer": self.cfg.peer.to_string(),
            "jobs": jobs,
            "local_changes_at_failback": local,
            "refused": self.refused.totals_json(),
        })
    }

    // ---- Main: push ---------------------------------------------------

    /// Push every job now; one result per job.
    pub async fn push_all(&self) -> Vec<(String, Result<Applied, String>)> {
        let mut out = Vec::new();
        for j in self.jobs() {
            out.push((j.name().to_owned(), self.push(&j).await));
        }
        out
    }

    /// Push one job now, recording the result.
    pub async fn push(&self, j: &Job) -> Result<Applied, String> {
        let started = Instant::now();
        let name = j.name().to_owned();
        self.mark_running(&name, "push");
        let r = match j {
            Job::Dir(d) => self.push_dir(d).await,
            other => self.push_snapshot(other).await,
        }
        .map_err(|e| format!("{e:#}"));
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
        self.record(&name, "push", started, &r);
        r
    }

    /// A TLS session to the peer, both sides proven by the cluster CA.
    async fn connect(&self) -> anyhow::Result<Session> {
        let config = tls::client(
            &self.path(&self.cfg.ca),
            &self.path(&self.cfg.cert),
            &self.path(&self.cfg.key),
        )?;
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(self.cfg.peer))
            .await
            .context("connect: timed out")?
            .with_context(|| format!("connect {}", self.cfg.peer))?;
        tcp.set_nodelay(true)?;
        keepalive(&tcp, self.cfg.read_timeout);
        let tcp = wire::Timed::new(tcp, self.cfg.read_timeout, self.cfg.session_timeout);
        let name = rustls::pki_types::ServerName::try_from(self.peer_name.clone())
            .context("peer name is not a valid TLS server name")?;
        let tls = tokio::time::timeout(
            self.cfg.handshake_timeout,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))
        .and_then(|r| r)
        .with_context(|| format!("TLS with {} ({})", self.peer_name, self.cfg.peer))?;
        // Buffered: small frames share TLS records instead of one each.
        Ok(BufStream::with_capacity(64 << 10, 1 << 20, tls))
    }

    /// Connect and say which job this session is for.
    async fn open_session(&self, job: &str, keep: bool) -> anyhow::Result<Session> {
        let mut s = self.connect().await?;
        let hello = Hello {
            version: VERSION,
            job: job.to_owned(),
            keep,
        };
        wire::write_json(&mut s, Kind::Hello, &hello).await?;
        s.flush().await?;
        Ok(s)
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

    /// Symlinks of folder `job` that lead out of it are not sent: counted in
    /// the status, and told once in the events each time the list changes
    /// (not once per push for as long as they stay).
    fn report_skipped_links(&self, job: &str, skipped: Vec<String>) {
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

    /// Main: take a snapshot (SQLite backup, `pg_dump`) into the state
    /// folder, then send it as one file; the Standby swaps it in only once
    /// it has all of it and its hash matches.
    async fn push_snapshot(&self, j: &Job) -> anyhow::Result<Applied> {
        let _one = self.busy.lock().await;
        let snap = self
            .state_dir
            .join(format!("snapshot-{}{}", j.name(), manifest::TMP_MARK));
        let taken = match j {
            Job::Sqlite(q) => {
                let (src, out) = (self.path(&q.path), snap.clone());
                tokio::task::spawn_blocking(move || sqlite::snapshot(&src, &out))
                    .await?
                    .map_err(anyhow::Error::from)
            }
            Job::Postgres(p) => postgres::Pg::new(p, &self.base)
                .dump(&snap)
                .await
                .map_err(anyhow::Error::from),
            Job::Dir(_) => anyhow::bail!("not a snapshot job"),
        };
        let r = match taken {
            Ok(()) => self.send_snapshot(j, &snap).await,
            Err(e) => Err(e.context("snapshot")),
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

    // ---- Standby: receive ---------------------------------------------

    /// Accept pushes on `listen` for as long as the node runs. `active` says
    /// whether this node serves (then every push is refused).
    pub async fn serve(self: Arc<Self>, active: watch::Receiver<bool>) -> anyhow::Result<()> {
        let config = tls::server(
            &self.path(&self.cfg.ca),
            &self.path(&self.cfg.cert),
            &self.path(&self.cfg.key),
        )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        if self.standby {
            let (me, mut active) = (self.clone(), active.clone());
            tokio::spawn(async move {
                let mut was = *active.borrow();
                while active.changed().await.is_ok() {
                    let now = *active.borrow_and_update();
                    if was && !now {
                        me.copy_back.send_replace(true);
                        me.report_local_changes().await;
                        me.copy_back.send_replace(false);
                    }
                    was = now;
                }
            });
        }
        let listener = crate::listen_fds::tokio_tcp(self.cfg.listen)
            .await
            .with_context(|| format!("replication socket {}", self.cfg.listen))?;
        let bound = listener.local_addr().unwrap_or(self.cfg.listen);
        tracing::info!("replication: accepting pushes on {bound} (TLS, cluster CA)");
        self.refused.spawn_summaries();
        let slots = Arc::new(Slots {
            max: self.cfg.max_connections,
            held: Mutex::new((0, HashMap::new())),
        });
        let (read_timeout, session_timeout) = (self.cfg.read_timeout, self.cfg.session_timeout);
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of fds, most likely: wait for some to close
                    // rather than spin or stop serving.
                    self.refuse("accept failed", || {
                        format!("cannot accept a connection: {e}")
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let slot = match Slots::take(&slots, from.ip()) {
                Ok(s) => s,
                Err(why) => {
                    self.refuse(why, || format!("refused connection from {from}: {why}"));
                    continue;
                }
            };
            let (me, acceptor, active) = (self.clone(), acceptor.clone(), active.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let _ = tcp.set_nodelay(true);
                keepalive(&tcp, read_timeout);
                let tcp = wire::Timed::new(tcp, read_timeout, session_timeout);
                let accepted =
                    tokio::time::timeout(me.cfg.handshake_timeout, acceptor.accept(tcp)).await;
                let stream = match accepted {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        let reason = handshake_reason(&e);
                        me.refuse(reason, || format!("refused connection from {from}: {e}"));
                        return;
                    }
                    Err(_) => {
                        me.refuse("tls handshake timed out", || {
                            format!("refused connection from {from}: TLS handshake timed out")
                        });
                        return;
                    }
                };
                // Any certificate of the cluster CA gets through TLS (a
                // follower holds one too); only the peer node may push.
                if let Err(why) = me.is_peer(stream.get_ref().1.peer_certificates()) {
                    me.refuse("not the peer", || {
                        format!("refused connection from {from}: {why}")
                    });
                    return;
                }
                let serving = *active.borrow();
                let stream = tokio::io::BufStream::with_capacity(1 << 20, 64 << 10, stream);
                if let Err(e) = me.receive(stream, serving).await {
                    tracing::warn!("replication: session from {from} failed: {e:#}");
                }
            });
        }
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

    /// Whether the client's certificate names this node's peer.
    fn is_peer(
        &self,
        chain: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    ) -> Result<(), String> {
        let leaf = chain
            .and_then(|c| c.first())
            .ok_or("no client certificate")?;
        let cert = rustls::server::ParsedCertificate::try_from(leaf).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(self.peer_name.as_str())
            .map_err(|e| e.to_string())?;
        rustls::client::verify_server_name(&cert, &name)
            .map_err(|_| format!("its certificate is not {}'s", self.peer_name))
    }

    async fn receive<S>(&self, mut s: S, active: bool) -> anyhow::Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let hello: Hello = wire::expect(&mut s, Kind::Hello).await?;
        let refusal = if hello.version != VERSION {
            Some(format!(
                "protocol version {} is not {VERSION}",
                hello.version
            ))
        } else if self.find(&hello.job).is_none() {
            Some(format!("no replication job named {:?} here", hello.job))
        } else if hello.keep && self.keep_prefixes(&hello.job).is_empty() {
            Some(format!(
                "no keep_on_failback paths of job {:?} are taken here",
                hello.job
            ))
        } else if active && !hello.keep {
            Some("this node is active: it takes no push while it serves".to_string())
        } else {
            None
        };
        let guard = self.busy.try_lock();
        let refusal = refusal.or_else(|| {
            guard
                .is_err()
                .then(|| "a replication session is already running".to_string())
        });
        if let Some(why) = refusal {
            let _ = wire::write_json(&mut s, Kind::Error, &why).await;
            let _ = s.flush().await;
            anyhow::bail!("{why}");
        }
        let Some(job) = self.find(&hello.job) else {
            anyhow::bail!("no job")
        };
        let started = Instant::now();
        let name = job.name().to_owned();
        if hello.keep && self.standby {
            // The Main fetches what this Standby recorded while it served,
            // before it asks for the service back.
            let Job::Dir(d) = &job else {
                anyhow::bail!("{name}: keep_on_failback applies to folders only")
            };
            let prefixes = self.keep_prefixes(&name);
            let sent = self.send_kept(&mut s, d, &prefixes).await;
            drop(guard);
            let sent = sent?;
            let mut f = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
            for p in sent {
                let p = format!("{name}/{p}");
                if !f.contains(&p) {
                    f.push(p);
                }
            }
            return Ok(());
        }
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
        let r2 = r.as_ref().map(|a| a.clone()).map_err(|e| format!("{e:#}"));
        self.record(&name, "receive", started, &r2);
        match r {
            Ok(a) => {
                tracing::info!(
                    "replication {name}: received {} files, {} bytes, {} deletions",
                    a.files,
                    a.bytes,
                    a.deleted
                );
                wire::write_json(&mut s, Kind::Applied, &a).await?;
                s.flush().await?;
                Ok(())
            }
            Err(e) => {
                let _ = wire::write_json(&mut s, Kind::Error, &format!("{e:#}")).await;
                let _ = s.flush().await;
                Err(e)
            }
        }
    }

    /// Apply a folder session. `keep`: a Standby copying back its
    /// `keep_on_failback` paths — only files and folders under them, nothing
    /// deleted.
    async fn receive_job<S>(
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
        let mut baseline = changes::Baseline::from_manifest(&theirs);
        let (owner, group) = (d.owner.clone(), d.group.clone());
        let (applied, cache, baseline) = pipe::consume(s, move |rx| {
            let mut a = apply::Applier::new(&root, cache, owner.as_ref(), group.as_ref())?;
            let links = |b: &changes::Baseline| -> Vec<String> {
                b.files
                    .iter()
                    .filter(|(_, s)| s.kind == manifest::EntryKind::Symlink)
                    .map(|(p, _)| p.clone())
                    .collect()
            };
            // Links that already led out (a local user's) are not this
            // session's doing: judged only if the session touches them.
            let before = a.escaping(&links(&baseline));
            let mut head: Option<FileHead> = None;
            loop {
                let (kind, buf) = rx.next()?;
                match kind {
                    Kind::FileStart => {
                        let h: FileHead = wire::parse(kind, &buf)?;
                        if let Some(k) = &keep {
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

    /// Standby, on handing the service back: compare every job with what
    /// the last replication left, before a push may overwrite it.
    pub async fn report_local_changes(&self) {
        // Pushes wait (are refused) until the report is made.
        let _one = self.busy.lock().await;
        let mut report = changes::Report {
            at_ms: unix_ms(SystemTime::now()),
            ..changes::Report::default()
        };
        for j in self.jobs() {
            let Some(base) = changes::load(&self.baseline_file(j.name())) else {
                continue; // never replicated here: nothing to compare with
            };
            let c = match &j {
                Job::Dir(d) => {
                    let root = self.path(&d.path);
                    let excludes = globs(&d.exclude);
                    let now = tokio::task::spawn_blocking(move || {
                        manifest::scan(&root, &excludes, &HashCache::new())
                    })
                    .await;
                    match now {
                        Ok(Ok(now)) => changes::diff_files(&d.name, &base, &now),
                        _ => continue,
                    }
                }
                Job::Postgres(p) => {
                    let pg = postgres::Pg::new(p, &self.base);
                    match pg.fingerprints().await {
                        Ok(now) => changes::diff_tables(&p.name, &base, &now),
                        Err(_) => continue,
                    }
                }
                // Per table, and per key family for Asterisk's astdb (the
                // PBX writes some families itself: registrations show too).
                Job::Sqlite(q) => {
                    let path = self.path(&q.path);
                    match tokio::task::spawn_blocking(move || sqlite::fingerprints(&path)).await {
                        Ok(Ok(now)) => changes::diff_tables(&q.name, &base, &now),
                        _ => continue,
                    }
                }
            };
            report.jobs.push(c);
        }
        report
            .kept
            .append(&mut self.fetched.lock().unwrap_or_else(|e| e.into_inner()));
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
        self.note("replication", changes::summary(&report));
        *self.local_changes.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }

    /// Main: push a watched folder soon after it changes (debounced), as
    /// long as `may_push` says this node is the one to push.
    pub fn watch(
        self: &Arc<Self>,
        may_push: impl Fn() -> bool + Send + Sync + 'static,
    ) -> anyhow::Result<Vec<notify::RecommendedWatcher>> {
        use notify::Watcher;
        let mut watchers = Vec::new();
        let may_push = Arc::new(may_push);
        self.watch_postgres(may_push.clone());
        for d in self.cfg.dirs.iter().filter(|d| d.watch) {
            let root = self.path(&d.path);
            std::fs::create_dir_all(&root)?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if let Ok(ev) = ev {
                    if !ev.kind.is_access() {
                        let _ = tx.send(());
                    }
                }
            })?;
            w.watch(&root, notify::RecursiveMode::Recursive)
                .with_context(|| format!("watch {}", root.display()))?;
            watchers.push(w);
            let (me, job, quiet, may) = (
                self.clone(),
                Job::Dir(d.clone()),
                self.cfg.debounce,
                may_push.clone(),
            );
            tokio::spawn(async move {
                while rx.recv().await.is_some() {
                    // Wait until the folder has been quiet for `debounce`.
                    while let Ok(Some(())) = tokio::time::timeout(quiet, rx.recv()).await {}
                    if may() {
                        tracing::info!("replication {}: folder changed, pushing", job.name());
                        let _ = me.push(&job).await;
                    }
                }
            });
        }
        Ok(watchers)
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

    /// Main, before it asks for the service back: fetch the Standby's
    /// `keep_on_failback` files that this node lacks or holds older, each
    /// checked against its hash before it is renamed into place. The number
    /// of files copied.
    pub async fn fetch_kept(&self) -> anyhow::Result<u64> {
        let _one = self.busy.lock().await;
        let mut files = 0;
        for d in &self.cfg.dirs {
            let prefixes = self.keep_prefixes(&d.name);
            if prefixes.is_empty() {
                continue;
            }
            let mut s = self.open_session(&d.name, true).await?;
            match self.receive_job(&mut s, d, Some(prefixes)).await {
                Ok(a) => {
                    wire::write_json(&mut s, Kind::Applied, &a).await?;
                    s.flush().await?;
                    let _ = s.shutdown().await;
                    files += a.files;
                }
                Err(e) => {
                    let _ = wire::write_json(&mut s, Kind::Error, &format!("{e:#}")).await;
                    let _ = s.flush().await;
                    return Err(e.context(format!("{}: keep_on_failback", d.name)));
                }
            }
        }
        Ok(files)
    }

    /// Send the files under `prefixes` that the receiver (its manifest
    /// first) lacks or holds older, then wait for its `Applied`.
    async fn send_kept<S>(
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
