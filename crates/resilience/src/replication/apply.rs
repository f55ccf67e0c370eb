//! The Standby's side of a directory sync: every change lands inside the
//! configured root, or is refused.
//!
//! A file is written to a temporary name in its folder, checked against the
//! BLAKE3 hash the Main computed while sending, given its mode and mtime, and
//! renamed over the old one: a stream cut at any byte leaves the old file
//! (and a temporary that the next session removes), never a truncated one.
//! Paths that leave the root (`..`, absolute paths, a folder on the way that
//! is a symlink) and symlinks pointing out of the root are refused.

use super::manifest::{is_safe_relative, mtime_ns, HashCache, TMP_MARK};
use super::wire::{Applied, FileEnd, FileHead, Op};
use std::fs::{File, FileTimes};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("refused path {0:?}: it leaves the replicated folder")]
    UnsafePath(String),
    #[error("refused symlink {path:?} -> {target:?}: it points out of the replicated folder")]
    UnsafeLink { path: String, target: String },
    #[error("{path}: content does not match (sent {sent} bytes for {size}, hash {got} vs {want})")]
    Mismatch {
        path: String,
        size: u64,
        sent: u64,
        got: String,
        want: String,
    },
    #[error("data outside a file")]
    NoFile,
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

struct Incoming {
    head: FileHead,
    target: PathBuf,
    tmp: PathBuf,
    file: File,
    hasher: blake3::Hasher,
    sent: u64,
}

pub struct Applier {
    root: PathBuf,
    /// What replication wrote: path → (size, mtime, hash).
    pub cache: HashCache,
    current: Option<Incoming>,
    pub applied: Applied,
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> ApplyError + '_ {
    move |e| ApplyError::Io(p.display().to_string(), e)
}

fn time_of(ns: i64) -> std::time::SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH
    }
}

impl Applier {
    /// Start a session on `root`, removing temporaries a cut session left.
    pub fn new(root: &Path, cache: HashCache) -> Result<Applier, ApplyError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        for e in walkdir::WalkDir::new(root)
            .follow_links(false)
            .into_iter()
            .flatten()
        {
            if e.file_name().to_string_lossy().contains(TMP_MARK) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Applier {
            root: root.to_owned(),
            cache,
            current: None,
            applied: Applied::default(),
        })
    }

    /// The absolute path for `rel`, if it stays inside the root: no `..`,
    /// and no existing folder on the way is a symlink.
    fn resolve(&self, rel: &str) -> Result<PathBuf, ApplyError> {
        if !is_safe_relative(rel) {
            return Err(ApplyError::UnsafePath(rel.into()));
        }
        let mut p = self.root.clone();
        let parts: Vec<_> = Path::new(rel).components().collect();
        for (i, c) in parts.iter().enumerate() {
            p.push(c.as_os_str());
            if i + 1 < parts.len() {
                if let Ok(m) = p.symlink_metadata() {
                    if m.file_type().is_symlink() {
                        return Err(ApplyError::UnsafePath(rel.into()));
                    }
                }
            }
        }
        Ok(p)
    }

    /// Make room for a new entry at `p`: a folder where a file must go (or
    /// the reverse) is removed first.
    fn clear(&self, p: &Path, keep_dir: bool) -> Result<(), ApplyError> {
        match p.symlink_metadata() {
            Ok(m) if m.file_type().is_dir() && !keep_dir => {
                std::fs::remove_dir_all(p).map_err(io(p))
            }
            Ok(m) if !m.file_type().is_dir() && keep_dir => std::fs::remove_file(p).map_err(io(p)),
            _ => Ok(()),
        }
    }

    pub fn start_file(&mut self, head: FileHead) -> Result<(), ApplyError> {
        self.abort();
        let target = self.resolve(&head.path)?;
        let parent = target
            .parent()
            .ok_or_else(|| ApplyError::UnsafePath(head.path.clone()))?;
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{name}{TMP_MARK}{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        self.current = Some(Incoming {
            head,
            target,
            tmp,
            file,
            hasher: blake3::Hasher::new(),
            sent: 0,
        });
        Ok(())
    }

    pub fn data(&mut self, bytes: &[u8]) -> Result<(), ApplyError> {
        let cur = self.current.as_mut().ok_or(ApplyError::NoFile)?;
        cur.sent += bytes.len() as u64;
        if cur.sent > cur.head.size {
            let (path, size, sent) = (cur.head.path.clone(), cur.head.size, cur.sent);
            self.abort();
            return Err(ApplyError::Mismatch {
                path,
                size,
                sent,
                got: "-".into(),
                want: "-".into(),
            });
        }
        cur.hasher.update(bytes);
        cur.file.write_all(bytes).map_err(io(&cur.tmp))
    }

    pub fn end_file(&mut self, end: FileEnd) -> Result<(), ApplyError> {
        let cur = self.current.take().ok_or(ApplyError::NoFile)?;
        let got = cur.hasher.finalize().to_hex().to_string();
        if got != end.hash || cur.sent != cur.head.size {
            let _ = std::fs::remove_file(&cur.tmp);
            return Err(ApplyError::Mismatch {
                path: cur.head.path,
                size: cur.head.size,
                sent: cur.sent,
                got,
                want: end.hash,
            });
        }
        let f = &cur.file;
        f.set_permissions(std::fs::Permissions::from_mode(cur.head.mode))
            .map_err(io(&cur.tmp))?;
        f.set_times(FileTimes::new().set_modified(time_of(cur.head.mtime_ns)))
            .map_err(io(&cur.tmp))?;
        drop(cur.file);
        self.clear(&cur.target, false)?;
        std::fs::rename(&cur.tmp, &cur.target).map_err(io(&cur.target))?;
        let m = cur.target.symlink_metadata().map_err(io(&cur.target))?;
        self.cache
            .insert(cur.head.path.clone(), (cur.head.size, mtime_ns(&m), got));
        self.applied.files += 1;
        self.applied.bytes += cur.head.size;
        Ok(())
    }

    /// Drop a file in progress (its temporary goes; the old file stays).
    pub fn abort(&mut self) {
        if let Some(cur) = self.current.take() {
            let _ = std::fs::remove_file(&cur.tmp);
        }
    }

    pub fn op(&mut self, op: Op) -> Result<(), ApplyError> {
        match op {
            Op::Dir { path, mode } => {
                let p = self.resolve(&path)?;
                self.clear(&p, true)?;
                std::fs::create_dir_all(&p).map_err(io(&p))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                    .map_err(io(&p))?;
            }
            Op::Symlink { path, target } => {
                let p = self.resolve(&path)?;
                if !link_stays_inside(&path, &target) {
                    return Err(ApplyError::UnsafeLink { path, target });
                }
                let parent = p
                    .parent()
                    .ok_or_else(|| ApplyError::UnsafePath(path.clone()))?;
                std::fs::create_dir_all(parent).map_err(io(parent))?;
                let tmp = parent.join(format!(".link{TMP_MARK}{}", std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(&target, &tmp).map_err(io(&tmp))?;
                self.clear(&p, false)?;
                std::fs::rename(&tmp, &p).map_err(io(&p))?;
                self.cache.remove(&path);
            }
            Op::Meta {
                path,
                mode,
                mtime_ns: t,
            } => {
                let p = self.resolve(&path)?;
                let f = File::options().write(true).open(&p).map_err(io(&p))?;
                f.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(io(&p))?;
                f.set_times(FileTimes::new().set_modified(time_of(t)))
                    .map_err(io(&p))?;
                let m = p.symlink_metadata().map_err(io(&p))?;
                if let Some(c) = self.cache.get_mut(&path) {
                    c.1 = mtime_ns(&m);
                }
            }
            Op::Delete { path } => {
                let p = self.resolve(&path)?;
                match p.symlink_metadata() {
                    Ok(m) if m.file_type().is_dir() => {
                        std::fs::remove_dir_all(&p).map_err(io(&p))?
                    }
                    Ok(_) => std::fs::remove_file(&p).map_err(io(&p))?,
                    Err(_) => {}
                }
                let prefix = format!("{path}/");
                self.cache
                    .retain(|k, _| k != &path && !k.starts_with(&prefix));
                self.applied.deleted += 1;
                return Ok(());
            }
        }
        self.applied.other += 1;
        Ok(())
    }
}

/// Whether a relative symlink at `path` pointing to `target` resolves inside
/// the root (lexically). Absolute targets are refused.
pub fn link_stays_inside(path: &str, target: &str) -> bool {
    let t = Path::new(target);
    if t.is_absolute() || target.is_empty() {
        return false;
    }
    // Depth of the link's folder below the root.
    let mut depth: i64 = Path::new(path).components().count() as i64 - 1;
    for c in t.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

impl Drop for Applier {
    fn drop(&mut self) {
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_that_leave_the_root_are_refused() {
        assert!(link_stays_inside("a/link", "../b"));
        assert!(link_stays_inside("link", "b/c"));
        assert!(!link_stays_inside("link", "../outside"));
        assert!(!link_stays_inside("a/link", "../../outside"));
        assert!(!link_stays_inside("a/link", "/etc/passwd"));
        assert!(!link_stays_inside("a/link", "b/../../../x"));
    }

    #[test]
    fn unsafe_paths_and_symlinked_folders_are_refused() {
        let root = std::env::temp_dir().join(format!("resilience-apply-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut a = Applier::new(&root, HashCache::new()).unwrap();
        for bad in ["../evil", "/etc/evil", "a/../../evil"] {
            let head = FileHead {
                path: bad.into(),
                size: 1,
                mode: 0o644,
                mtime_ns: 0,
            };
            assert!(
                matches!(a.start_file(head), Err(ApplyError::UnsafePath(_))),
                "{bad}"
            );
        }
        // A folder replaced by a symlink pointing outside cannot be written through.
        std::os::unix::fs::symlink("/tmp", root.join("via")).unwrap();
        let head = FileHead {
            path: "via/evil".into(),
            size: 1,
            mode: 0o644,
            mtime_ns: 0,
        };
        assert!(matches!(a.start_file(head), Err(ApplyError::UnsafePath(_))));
        assert!(!Path::new("/tmp/evil").exists() || std::fs::read_to_string("/tmp/evil").is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_file_is_renamed_into_place_only_when_complete_and_verified() {
        let root = std::env::temp_dir().join(format!("resilience-apply2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("f"), b"old").unwrap();
        let mut a = Applier::new(&root, HashCache::new()).unwrap();
        let body = b"new content";
        let hash = blake3::hash(body).to_hex().to_string();
        a.start_file(FileHead {
            path: "f".into(),
            size: body.len() as u64,
            mode: 0o600,
            mtime_ns: 1_000_000_000,
        })
        .unwrap();
        a.data(&body[..4]).unwrap();
        // Cut here: the old file is intact, the temporary goes.
        a.abort();
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"old");
        // A wrong hash is refused too.
        a.start_file(FileHead {
            path: "f".into(),
            size: body.len() as u64,
            mode: 0o600,
            mtime_ns: 0,
        })
        .unwrap();
        a.data(body).unwrap();
        assert!(a.end_file(FileEnd { hash: "00".into() }).is_err());
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"old");
        a.start_file(FileHead {
            path: "f".into(),
            size: body.len() as u64,
            mode: 0o600,
            mtime_ns: 1_000_000_000,
        })
        .unwrap();
        a.data(body).unwrap();
        a.end_file(FileEnd { hash }).unwrap();
        assert_eq!(std::fs::read(root.join("f")).unwrap(), body);
        let m = std::fs::metadata(root.join("f")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(mtime_ns(&m), 1_000_000_000);
        let leftovers: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1);
        let _ = std::fs::remove_dir_all(&root);
    }
}
