//! Replication Main → Standby (XiVO's `xivo-sync`, done without a root SSH
//! key): folders pushed over TLS under the cluster CA, only what changed,
//! every file either old or new on the Standby, never half written.
//!
//! The Main pushes on a schedule and on demand (`resilience replicate`); the
//! Standby only accepts, and refuses while it is Active — the Standby never
//! pushes and is never overwritten while it serves.

pub mod apply;
pub mod cert;
pub mod manifest;
pub mod tls;
pub mod wire;

use crate::node::resolve;
use crate::node::store::unix_ms;
use anyhow::Context;
use manifest::{HashCache, Manifest, Step};
use resilience_core::config::{DirJobSection, ReplicationSection};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use wire::{Applied, FileEnd, FileHead, Hello, Kind, Op};

const VERSION: u32 = 1;

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
}

pub struct Replicator {
    cfg: ReplicationSection,
    base: PathBuf,
    state_dir: PathBuf,
    peer_name: String,
    pub status: Mutex<BTreeMap<String, JobStatus>>,
    /// One session per job at a time, on either side.
    busy: tokio::sync::Mutex<()>,
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

impl Replicator {
    pub fn new(
        cfg: ReplicationSection,
        base: &Path,
        state_dir: &Path,
        peer_name: &str,
    ) -> Replicator {
        Replicator {
            cfg,
            base: base.to_owned(),
            state_dir: state_dir.to_owned(),
            peer_name: peer_name.to_owned(),
            status: Mutex::new(BTreeMap::new()),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    fn path(&self, p: &Path) -> PathBuf {
        resolve(&self.base, p)
    }

    fn cache_file(&self, side: &str, job: &str) -> PathBuf {
        self.state_dir
            .join(format!("replication-{side}-{job}.json"))
    }

    fn job(&self, name: &str) -> Option<&DirJobSection> {
        self.cfg.dirs.iter().find(|d| d.name == name)
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
            .cfg
            .dirs
            .iter()
            .map(|d| {
                let s = st.get(&d.name).cloned().unwrap_or_default();
                let mut v = serde_json::to_value(&s).unwrap_or_default();
                v["stale_s"] =
                    serde_json::json!(s.last_success_ms.map(|t| (now - t) as f64 / 1000.0));
                v["path"] = serde_json::json!(self.path(&d.path).display().to_string());
                (d.name.clone(), v)
            })
            .collect();
        serde_json::json!({ "peer": self.cfg.peer.to_string(), "jobs": jobs })
    }

    // ---- Main: push ---------------------------------------------------

    /// Push every job now; one result per job.
    pub async fn push_all(&self) -> Vec<(String, Result<Applied, String>)> {
        let mut out = Vec::new();
        for d in &self.cfg.dirs {
            let started = Instant::now();
            self.mark_running(&d.name, "push");
            let r = self.push_job(d).await.map_err(|e| format!("{e:#}"));
            match &r {
                Ok(a) => tracing::info!(
                    "replication {}: pushed {} files, {} bytes, {} deletions in {:?}",
                    d.name,
                    a.files,
                    a.bytes,
                    a.deleted,
                    started.elapsed()
                ),
                Err(e) => tracing::warn!("replication {}: {e}", d.name),
            }
            self.record(&d.name, "push", started, &r);
            out.push((d.name.clone(), r));
        }
        out
    }

    async fn push_job(&self, d: &DirJobSection) -> anyhow::Result<Applied> {
        let _one = self.busy.lock().await;
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
        let name = rustls::pki_types::ServerName::try_from(self.peer_name.clone())
            .context("peer name is not a valid TLS server name")?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with {} ({})", self.peer_name, self.cfg.peer))?;
        // Buffered: small frames share TLS records instead of one each.
        let mut s = tokio::io::BufStream::with_capacity(64 << 10, 1 << 20, tls);
        wire::write_json(
            &mut s,
            Kind::Hello,
            &Hello {
                version: VERSION,
                job: d.name.clone(),
            },
        )
        .await?;
        s.flush().await?;
        let theirs: Manifest = wire::expect(&mut s, Kind::Manifest).await?;
        let root = self.path(&d.path);
        let cache_path = self.cache_file("sent", &d.name);
        let mut cache = load_cache(&cache_path);
        let excludes = globs(&d.exclude);
        let ours = {
            let (root, cache) = (root.clone(), cache.clone());
            tokio::task::spawn_blocking(move || manifest::scan(&root, &excludes, &cache)).await??
        };
        let mut buf = vec![0u8; wire::CHUNK];
        for step in manifest::plan(&ours, &theirs) {
            match step {
                Step::File { path } => {
                    let full = root.join(&path);
                    let mut f = match std::fs::File::open(&full) {
                        Ok(f) => f,
                        // Gone since the scan: the next run deletes it.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e).with_context(|| full.display().to_string()),
                    };
                    let m = f.metadata()?;
                    let head = FileHead {
                        path: path.clone(),
                        size: m.len(),
                        mode: std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777,
                        mtime_ns: manifest::mtime_ns(&m),
                    };
                    wire::write_json(&mut s, Kind::FileStart, &head).await?;
                    let mut hasher = blake3::Hasher::new();
                    let mut left = head.size;
                    while left > 0 {
                        let want = (left as usize).min(buf.len());
                        let n = tokio::task::block_in_place(|| f.read(&mut buf[..want]))?;
                        if n == 0 {
                            anyhow::bail!("{}: shrank while being sent", full.display());
                        }
                        hasher.update(&buf[..n]);
                        wire::write_frame(&mut s, Kind::Data, &buf[..n]).await?;
                        left -= n as u64;
                    }
                    let hash = hasher.finalize().to_hex().to_string();
                    cache.insert(path, (head.size, head.mtime_ns, hash.clone()));
                    wire::write_json(&mut s, Kind::FileEnd, &FileEnd { hash }).await?;
                }
                Step::Dir { path, mode } => {
                    wire::write_json(&mut s, Kind::Op, &Op::Dir { path, mode }).await?
                }
                Step::Symlink { path, target } => {
                    wire::write_json(&mut s, Kind::Op, &Op::Symlink { path, target }).await?
                }
                Step::Meta {
                    path,
                    mode,
                    mtime_ns,
                } => {
                    wire::write_json(
                        &mut s,
                        Kind::Op,
                        &Op::Meta {
                            path,
                            mode,
                            mtime_ns,
                        },
                    )
                    .await?
                }
                Step::Delete { path } => {
                    wire::write_json(&mut s, Kind::Op, &Op::Delete { path }).await?
                }
            }
        }
        wire::write_frame(&mut s, Kind::Done, b"{}").await?;
        s.flush().await?;
        let applied: Applied = wire::expect(&mut s, Kind::Applied).await?;
        cache.retain(|k, _| ours.contains_key(k));
        let _ = tokio::task::spawn_blocking(move || save_cache(&cache_path, &cache)).await;
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
        let listener = TcpListener::bind(self.cfg.listen)
            .await
            .with_context(|| format!("replication socket {}", self.cfg.listen))?;
        tracing::info!(
            "replication: accepting pushes on {} (TLS, cluster CA)",
            self.cfg.listen
        );
        loop {
            let (tcp, from) = listener.accept().await?;
            let (me, acceptor, active) = (self.clone(), acceptor.clone(), active.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let stream = match acceptor.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("replication: refused connection from {from}: {e}");
                        return;
                    }
                };
                let serving = *active.borrow();
                let stream = tokio::io::BufStream::with_capacity(1 << 20, 64 << 10, stream);
                if let Err(e) = me.receive(stream, serving).await {
                    tracing::warn!("replication: session from {from} failed: {e:#}");
                }
            });
        }
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
        } else if self.job(&hello.job).is_none() {
            Some(format!("no replication job named {:?} here", hello.job))
        } else if active {
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
        let Some(d) = self.job(&hello.job).cloned() else {
            anyhow::bail!("no job")
        };
        let started = Instant::now();
        self.mark_running(&d.name, "receive");
        let r = self.receive_job(&mut s, &d).await;
        let r2 = r.as_ref().map(|a| a.clone()).map_err(|e| format!("{e:#}"));
        self.record(&d.name, "receive", started, &r2);
        match r {
            Ok(a) => {
                tracing::info!(
                    "replication {}: received {} files, {} bytes, {} deletions",
                    d.name,
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

    async fn receive_job<S>(&self, s: &mut S, d: &DirJobSection) -> anyhow::Result<Applied>
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
        let mut a = tokio::task::block_in_place(|| apply::Applier::new(&root, cache))?;
        let mut buf = Vec::with_capacity(wire::CHUNK);
        loop {
            let kind = wire::read_frame(s, &mut buf).await?;
            tokio::task::block_in_place(|| -> anyhow::Result<()> {
                match kind {
                    Kind::FileStart => a.start_file(wire::parse(kind, &buf)?)?,
                    Kind::Data => a.data(&buf)?,
                    Kind::FileEnd => a.end_file(wire::parse(kind, &buf)?)?,
                    Kind::Op => a.op(wire::parse(kind, &buf)?)?,
                    Kind::Done => {}
                    other => anyhow::bail!("unexpected {other:?} frame"),
                }
                Ok(())
            })?;
            if kind == Kind::Done {
                break;
            }
        }
        let applied = a.applied.clone();
        let cache = std::mem::take(&mut a.cache);
        tokio::task::spawn_blocking(move || save_cache(&cache_path, &cache)).await??;
        Ok(applied)
    }
}
