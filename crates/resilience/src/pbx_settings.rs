//! Writes the PBX settings of `[pbx_settings]` while the node is a Main or a
//! Standby, and puts the files back when HA is disabled (XiVO's "Resilience Administration",
//! "Automatic Configuration Change"). The edits themselves are
//! `resilience_core::pbx_settings`; this module owns the files.
//!
//! - Each file is written atomically (a temporary file beside it, fsynced,
//!   renamed over it, owner and mode kept), so a crash leaves the old or the
//!   new file, never half of one.
//! - The original is kept under `<state_dir>/pbx-settings/` before the first
//!   write, and a manifest records the hash of what was written. Applying
//!   again renders from the kept original: when the result is what is
//!   there, nothing is written and the reload hook does not run.
//! - Restoring puts the original back byte for byte (or removes a file that
//!   did not exist) only while the file is still what Resilience wrote. A
//!   file changed since is left alone and reported, its original kept:
//!   nobody's edit is lost.

use crate::services::run_in;
use resilience_core::config::NodeConfig;
use resilience_core::pbx_settings::{self as edits, Expiry};
use resilience_core::NodeType;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The wanted content of a file, from its original (`None`: no file).
type Render = Box<dyn Fn(Option<&[u8]>) -> Result<Vec<u8>, String> + Send + Sync>;

/// One file the config wants changed.
pub struct Change {
    pub file: PathBuf,
    pub what: String,
    render: Render,
}

/// The files `cfg` wants changed: none when the node is `disabled` or has
/// no `[pbx_settings]` (then whatever was changed is restored).
pub fn wanted(cfg: &NodeConfig, base: &Path) -> Result<Vec<Change>, String> {
    let Some(p) = &cfg.pbx_settings else {
        return Ok(Vec::new());
    };
    if cfg.node.node_type == NodeType::Disabled {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut expiry = Expiry::default();
    if let Some(s) = &p.sip_expiry {
        expiry = s.expiry();
        let driver = s.driver;
        let e = expiry;
        out.push(Change {
            file: crate::paths::resolve(base, &s.file),
            what: format!(
                "SIP registration expiry ({driver}): min {}s, max {}s, default {}s",
                e.min, e.max, e.default
            ),
            render: Box::new(move |old| {
                let old = old.ok_or("the file does not exist")?;
                edits::set_expiry(driver, old, &e).map_err(|err| err.to_string())
            }),
        });
    }
    if let Some(pr) = &p.provisioning {
        let template = match &pr.template {
            Some(t) => {
                let t = crate::paths::resolve(base, t);
                std::fs::read_to_string(&t).map_err(|e| {
                    format!("pbx_settings.provisioning.template {}: {e}", t.display())
                })?
            }
            None => edits::DEFAULT_PROVISIONING_TEMPLATE.to_owned(),
        };
        let vars = [
            ("main_ip", pr.main.ip().to_string()),
            ("main_port", pr.main.port().to_string()),
            ("standby_ip", pr.standby.ip().to_string()),
            ("standby_port", pr.standby.port().to_string()),
            ("expiry", expiry.default.to_string()),
        ];
        // Checked now, so a typo is a config error, not a half-applied set.
        let text = edits::render(&template, &vars)
            .map_err(|e| format!("pbx_settings.provisioning.template: {e}"))?;
        out.push(Change {
            file: crate::paths::resolve(base, &pr.file),
            what: format!(
                "provisioning: proxy/registrar {}, backup {}",
                pr.main, pr.standby
            ),
            render: Box::new(move |_| Ok(text.clone().into_bytes())),
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    file: PathBuf,
    what: String,
    /// The kept original's name in the store; `None`: there was no file.
    original: Option<String>,
    /// BLAKE3 of what was written.
    written: String,
    /// While a rewrite is under way: BLAKE3 of what was there before, which
    /// still counts as ours until the new text is in place.
    #[serde(default)]
    previous: Option<String>,
    at_unix_ms: i64,
}

impl Record {
    /// Whether `bytes` (the file now) is what Resilience wrote.
    fn is_ours(&self, bytes: Option<&[u8]>) -> bool {
        let Some(b) = bytes else { return false };
        let h = hash(b);
        h == self.written || self.previous.as_deref() == Some(h.as_str())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    files: Vec<Record>,
}

/// What happened to one file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub file: PathBuf,
    pub what: String,
    /// `written`, `applied` (already so, nothing written), `restored`, `error`.
    pub state: &'static str,
    pub error: Option<String>,
    /// Where the original is kept while the change is in place.
    pub original: Option<PathBuf>,
    pub since_unix_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub files: Vec<FileReport>,
    /// The reload hook's result, when a file changed.
    pub reload: Option<Result<(), crate::services::CommandError>>,
    /// For the admin: phones take new settings only when resynchronized.
    pub warning: Option<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.files.iter().all(|f| f.error.is_none()) && !matches!(self.reload, Some(Err(_)))
    }
}

fn hash(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

fn read(p: &Path) -> Result<Option<Vec<u8>>, FileError> {
    match std::fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileError::Read(p.to_owned(), e)),
    }
}

/// Replace `path` by `bytes` atomically, keeping the old file's owner and
/// mode (`new_mode` for a new file). On any error the old file is untouched
/// and no temporary is left. A symlink is written through (the link stays a
/// link); the temporary has a random name and is created exclusively, so a
/// link planted under a guessed name is never followed.
pub fn write_atomic(path: &Path, bytes: &[u8], new_mode: u32) -> Result<(), FileError> {
    let resolved;
    let path = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            resolved =
                std::fs::canonicalize(path).map_err(|e| FileError::Link(path.to_owned(), e))?;
            resolved.as_path()
        }
        _ => path,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| FileError::NotAFileName(path.to_owned()))?
        .to_string_lossy()
        .into_owned();
    let old = std::fs::metadata(path).ok();
    let mode = old.as_ref().map_or(new_mode, |m| m.mode() & 0o7777);
    let mut tmp = PathBuf::new();
    let result = (|| -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = None;
        for _ in 0..8 {
            let mut r = [0u8; 8];
            getrandom::fill(&mut r).map_err(|e| std::io::Error::other(e.to_string()))?;
            tmp = dir.join(format!(".{name}.resilience-{}", hex::encode(r)));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
            {
                Ok(file) => {
                    f = Some(file);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    tmp = PathBuf::new();
                    return Err(e);
                }
            }
        }
        let mut f = f.ok_or_else(|| std::io::Error::other("no free temporary name"))?;
        f.write_all(bytes)?;
        if let Some(m) = &old {
            // The umask may have narrowed the mode; the owner may differ
            // (asterisk:asterisk) when we run as root.
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            let me = f.metadata()?;
            if m.uid() != me.uid() || m.gid() != me.gid() {
                std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
            }
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        if !tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&tmp);
        }
        FileError::Write(path.to_owned(), e)
    })
}

/// What went wrong reading or writing a PBX file, a kept original or the
/// record of changes (shown in the report as its text).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}: {}", .0.display(), .1)]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cannot follow the link {}: {}", .0.display(), .1)]
    Link(PathBuf, #[source] std::io::Error),
    #[error("{}: not a file name", .0.display())]
    NotAFileName(PathBuf),
    #[error("cannot write {}: {}", .0.display(), .1)]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot create {}: {}", .0.display(), .1)]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("{}: {}", .0.display(), .1)]
    Lock(PathBuf, #[source] std::io::Error),
    #[error("{}: unreadable ({source}); the originals are still in {}", path.display(), originals.display())]
    Manifest {
        path: PathBuf,
        source: serde_json::Error,
        originals: PathBuf,
    },
    #[error("{0}")]
    Encode(serde_json::Error),
    #[error("cannot remove {}: {}", .0.display(), .1)]
    Remove(PathBuf, #[source] std::io::Error),
}

/// The kept originals and the manifest, under `<state_dir>/pbx-settings`.
struct Store {
    dir: PathBuf,
}

impl Store {
    fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    fn load(&self) -> Result<Manifest, FileError> {
        match read(&self.manifest_path())? {
            None => Ok(Manifest::default()),
            Some(b) => serde_json::from_slice(&b).map_err(|e| FileError::Manifest {
                path: self.manifest_path(),
                source: e,
                originals: self.dir.clone(),
            }),
        }
    }

    fn save(&self, m: &Manifest) -> Result<(), FileError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| FileError::CreateDir(self.dir.clone(), e))?;
        let text = serde_json::to_vec_pretty(m).map_err(FileError::Encode)?;
        write_atomic(&self.manifest_path(), &text, 0o600)
    }

    /// An exclusive lock on the store, held until the file is dropped.
    fn lock(&self) -> Result<std::fs::File, FileError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| FileError::CreateDir(self.dir.clone(), e))?;
        let p = self.dir.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| FileError::Lock(p.clone(), e))?;
        f.lock().map_err(|e| FileError::Lock(p.clone(), e))?;
        Ok(f)
    }

    fn original_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Keep `bytes` as the original of `file`; its name in the store, one
    /// per path and content, so a new original never overwrites an old one
    /// still on record.
    fn keep(&self, file: &Path, bytes: &[u8]) -> Result<String, FileError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| FileError::CreateDir(self.dir.clone(), e))?;
        let place = &hash(file.as_os_str().as_encoded_bytes())[..12];
        let content = &hash(bytes)[..12];
        let stem = file
            .file_name()
            .map_or("file".into(), |n| n.to_string_lossy().into_owned());
        let name = format!("{stem}.{place}.{content}.orig");
        // Config files hold secrets (SIP passwords): the copy is private.
        write_atomic(&self.original_path(&name), bytes, 0o600)?;
        Ok(name)
    }
}

/// Make the files match `wanted`: apply each wanted change, restore every
/// file changed earlier that is no longer wanted, run `reload` once if a
/// file changed.
pub async fn reconcile(
    wanted: &[Change],
    state_dir: &Path,
    reload: Option<(&str, std::time::Duration)>,
    cwd: &Path,
) -> Report {
    let store = Store {
        dir: state_dir.join("pbx-settings"),
    };
    let mut files = Vec::new();
    let mut changed = false;
    // One run at a time (the node at start, an admin's command): each
    // loads, changes and saves the manifest.
    let _lock = match store.lock() {
        Ok(l) => l,
        Err(e) => {
            files.push(FileReport {
                file: store.dir.join("lock"),
                what: "the lock of the record of changed files".into(),
                state: "error",
                error: Some(e.to_string()),
                original: None,
                since_unix_ms: None,
            });
            return Report {
                files,
                reload: None,
                warning: None,
            };
        }
    };
    match store.load() {
        Err(e) => files.push(FileReport {
            file: store.manifest_path(),
            what: "the record of changed files".into(),
            state: "error",
            error: Some(e.to_string()),
            original: None,
            since_unix_ms: None,
        }),
        Ok(mut m) => {
            for c in wanted {
                files.push(apply(&store, &mut m, c, &mut changed));
            }
            let stale: Vec<Record> = m
                .files
                .iter()
                .filter(|r| !wanted.iter().any(|c| c.file == r.file))
                .cloned()
                .collect();
            for r in stale {
                files.push(restore(&store, &mut m, &r, &mut changed));
            }
        }
    }
    let reload = match (changed, reload) {
        (true, Some((cmd, timeout))) => Some(run_in(cwd, cmd, timeout).await.map(|_| ())),
        _ => None,
    };
    let warning = files
        .iter()
        .any(|f| matches!(f.state, "written" | "applied"))
        .then(|| {
            "HA settings are in place: resynchronize or restart the phones so they take the new registration expiry and backup proxy/registrar; do not change these values while HA is configured".to_string()
        });
    Report {
        files,
        reload,
        warning,
    }
}

/// Bring one file to what is wanted: keep its original, record the change
/// in the manifest first, then write it, undoing the record on failure.
fn apply(store: &Store, m: &mut Manifest, c: &Change, changed: &mut bool) -> FileReport {
    let mut report = FileReport {
        file: c.file.clone(),
        what: c.what.clone(),
        state: "error",
        error: None,
        original: None,
        since_unix_ms: None,
    };
    if let Err(e) = apply_steps(store, m, c, changed, &mut report) {
        report.error = Some(e);
    }
    report
}

/// The steps of [`apply`], in order; an error leaves `report` in state
/// "error" with what was found so far.
fn apply_steps(
    store: &Store,
    m: &mut Manifest,
    c: &Change,
    changed: &mut bool,
    report: &mut FileReport,
) -> Result<(), String> {
    let cur = read(&c.file).map_err(|e| e.to_string())?;
    let idx = m.files.iter().position(|r| r.file == c.file);
    let ours = idx.filter(|&i| m.files[i].is_ours(cur.as_deref()));
    if let (Some(i), None, Some(now)) = (idx, ours, &cur) {
        refuse_hand_edited(store, &m.files[i], c, now, report)?;
    }
    let base = render_base(store, ours.map(|i| &m.files[i]), &cur)?;
    let desired = (c.render)(base.as_deref()).map_err(|e| format!("{}: {e}", c.file.display()))?;
    if let Some(i) = ours {
        let r = &m.files[i];
        if cur.as_deref() == Some(&desired[..]) && r.previous.is_none() {
            report.state = "applied";
            report.original = r.original.as_ref().map(|n| store.original_path(n));
            report.since_unix_ms = Some(r.at_unix_ms);
            return Ok(());
        }
    }
    let previous = m.files.clone();
    let a = Attempt {
        store,
        c,
        cur: &cur,
        desired: &desired,
    };
    let i = record_change(&a, m, idx, ours, &previous)?;
    write_recorded(&a, m, i, previous, changed, report)
}

/// One file's attempt: where originals go, the change, the file's current
/// text and the text wanted.
struct Attempt<'a> {
    store: &'a Store,
    c: &'a Change,
    cur: &'a Option<Vec<u8>>,
    desired: &'a [u8],
}

/// A file changed since we wrote it that still holds our settings was
/// edited while HA was on: it is neither ours nor an original, so it is
/// left alone, and so is its record.
fn refuse_hand_edited(
    store: &Store,
    r: &Record,
    c: &Change,
    now: &[u8],
    report: &mut FileReport,
) -> Result<(), String> {
    if !(c.render)(Some(now)).is_ok_and(|again| again == now) {
        return Ok(());
    }
    report.original = r.original.as_ref().map(|n| store.original_path(n));
    report.since_unix_ms = Some(r.at_unix_ms);
    let kept = report
        .original
        .as_ref()
        .map_or("none (the file did not exist)".into(), |p| {
            p.display().to_string()
        });
    Err(format!(
        "{} was edited since Resilience wrote it and still holds the HA settings: left as is (the original is kept at {kept}); put the original back or merge by hand, then run again",
        c.file.display()
    ))
}

/// What to render from: the kept original while the file is ours (its
/// record given); otherwise what is there now is the original (first time,
/// or its owner regenerated it).
fn render_base(
    store: &Store,
    ours: Option<&Record>,
    cur: &Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>, String> {
    let Some(r) = ours else {
        return Ok(cur.clone());
    };
    let Some(name) = &r.original else {
        return Ok(None);
    };
    match read(&store.original_path(name)) {
        Ok(Some(b)) => Ok(Some(b)),
        Ok(None) => Err(format!(
            "the kept original {} is missing",
            store.original_path(name).display()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Record the change in the manifest (in memory): a file already ours gets
/// its new hash in two phases, any other gets its original kept and a new
/// record. The record's index; on failure the manifest is as it was.
fn record_change(
    a: &Attempt,
    m: &mut Manifest,
    idx: Option<usize>,
    ours: Option<usize>,
    previous: &[Record],
) -> Result<usize, String> {
    let (store, c, desired) = (a.store, a.c, a.desired);
    if let Some(i) = ours {
        // Two phases: until the new text is in place, what was there
        // still counts as ours (a crash in between loses nothing).
        let r = &mut m.files[i];
        r.previous = a.cur.as_deref().map(hash);
        r.written = hash(desired);
        r.what = c.what.clone();
        return Ok(i);
    }
    if let Some(i) = idx {
        // Regenerated by its owner: the old original stays in the
        // store (nothing is deleted), the new file is the original.
        let old = m.files.remove(i);
        tracing::warn!(
            "{} was replaced since Resilience wrote it: taking the current file as the original{}",
            c.file.display(),
            old.original
                .map(|n| format!(
                    " (the previous one stays at {})",
                    store.original_path(&n).display()
                ))
                .unwrap_or_default()
        );
    }
    let original = match a.cur {
        Some(b) => match store.keep(&c.file, b) {
            Ok(n) => Some(n),
            Err(e) => {
                m.files = previous.to_vec();
                return Err(e.to_string());
            }
        },
        None => None,
    };
    m.files.push(Record {
        file: c.file.clone(),
        what: c.what.clone(),
        original,
        written: hash(desired),
        previous: None,
        at_unix_ms: crate::clock::unix_ms(SystemTime::now()),
    });
    Ok(m.files.len() - 1)
}

/// Save the manifest, then write the file; a failed write puts the
/// manifest back to `previous` and drops a copy kept for this attempt only.
fn write_recorded(
    a: &Attempt,
    m: &mut Manifest,
    i: usize,
    previous: Vec<Record>,
    changed: &mut bool,
    report: &mut FileReport,
) -> Result<(), String> {
    let (store, c, desired) = (a.store, a.c, a.desired);
    // The manifest first: a crash before the file is written leaves a
    // record that still recognises the file as it was.
    if let Err(e) = store.save(m) {
        m.files = previous;
        return Err(e.to_string());
    }
    report.original = m.files[i].original.as_ref().map(|n| store.original_path(n));
    report.since_unix_ms = Some(m.files[i].at_unix_ms);
    if a.cur.as_deref() != Some(desired) {
        if let Err(e) = write_atomic(&c.file, desired, 0o644) {
            let kept = m.files[i].original.clone();
            m.files = previous;
            let _ = store.save(m);
            // A copy made for this attempt only is not an original of anything.
            if let Some(n) = kept {
                if !m.files.iter().any(|r| r.original.as_ref() == Some(&n)) {
                    let _ = std::fs::remove_file(store.original_path(&n));
                }
            }
            report.original = None;
            report.since_unix_ms = None;
            return Err(e.to_string());
        }
        *changed = true;
        report.state = "written";
    } else {
        report.state = "applied";
    }
    m.files[i].previous = None;
    if let Err(e) = store.save(m) {
        tracing::warn!("pbx settings: {e} (the next run finishes the record)");
    }
    Ok(())
}

fn restore(store: &Store, m: &mut Manifest, r: &Record, changed: &mut bool) -> FileReport {
    let mut report = FileReport {
        file: r.file.clone(),
        what: r.what.clone(),
        state: "error",
        error: None,
        original: r.original.as_ref().map(|n| store.original_path(n)),
        since_unix_ms: Some(r.at_unix_ms),
    };
    let original = match &r.original {
        Some(n) => match read(&store.original_path(n)) {
            Ok(Some(b)) => Some(b),
            Ok(None) => {
                report.error = Some(format!(
                    "the kept original {} is missing; {} left as is",
                    store.original_path(n).display(),
                    r.file.display()
                ));
                return report;
            }
            Err(e) => {
                report.error = Some(e.to_string());
                return report;
            }
        },
        None => None,
    };
    let cur = match read(&r.file) {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    if cur == original {
        // Already the original (a write that never happened, or put back by hand).
    } else if r.is_ours(cur.as_deref()) {
        let put_back = match &original {
            Some(b) => write_atomic(&r.file, b, 0o644),
            None => std::fs::remove_file(&r.file).map_err(|e| FileError::Remove(r.file.clone(), e)),
        };
        if let Err(e) = put_back {
            report.error = Some(e.to_string());
            return report;
        }
        *changed = true;
    } else {
        report.error = Some(format!(
            "{} changed since Resilience wrote it: left as is; the original is kept at {}",
            r.file.display(),
            report
                .original
                .as_ref()
                .map_or("(none: the file did not exist)".into(), |p| p
                    .display()
                    .to_string())
        ));
        return report;
    }
    m.files.retain(|x| x.file != r.file);
    if let Err(e) = store.save(m) {
        report.error = Some(e.to_string());
        return report;
    }
    if let Some(p) = &report.original {
        let _ = std::fs::remove_file(p);
    }
    report.state = "restored";
    report.original = None;
    report
}

/// Apply or restore as `cfg` says, from the node (at start) or the CLI.
pub async fn run_for(cfg: &NodeConfig, base: &Path) -> Report {
    let state_dir = crate::paths::resolve(base, &cfg.node.state_dir);
    let wanted = match wanted(cfg, base) {
        Ok(w) => w,
        Err(e) => {
            return Report {
                files: vec![FileReport {
                    file: PathBuf::from("[pbx_settings]"),
                    what: "the configured changes".into(),
                    state: "error",
                    error: Some(e.to_string()),
                    original: None,
                    since_unix_ms: None,
                }],
                reload: None,
                warning: None,
            }
        }
    };
    let reload = cfg
        .pbx_settings
        .as_ref()
        .and_then(|p| p.reload.as_deref().map(|r| (r, p.reload_timeout)));
    reconcile(&wanted, &state_dir, reload, base).await
}

/// How a report line is logged: `Same` (nothing changed) is left out of
/// the event history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Same,
    Changed,
    Failed,
}

/// One line per file (and for the reload hook), for the log, the event
/// history and the CLI.
pub fn lines(r: &Report) -> Vec<(Level, String)> {
    let mut out: Vec<(Level, String)> = r
        .files
        .iter()
        .map(|f| match &f.error {
            Some(e) => (
                Level::Failed,
                format!("pbx settings: {}: {} failed: {e}", f.file.display(), f.what),
            ),
            None => (
                if f.state == "applied" {
                    Level::Same
                } else {
                    Level::Changed
                },
                format!(
                    "pbx settings: {}: {} ({})",
                    f.file.display(),
                    f.what,
                    f.state
                ),
            ),
        })
        .collect();
    match &r.reload {
        Some(Ok(())) => out.push((Level::Changed, "pbx settings: reload hook done".into())),
        Some(Err(e)) => out.push((
            Level::Failed,
            format!("pbx settings: reload hook failed: {e}"),
        )),
        None => {}
    }
    out
}
