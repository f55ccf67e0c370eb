//! The receiving side of a folder sync: every change lands beneath the
//! configured folder, or is refused.
//!
//! A file is written to a random temporary name in its folder, checked
//! against the BLAKE3 hash the sender computed, given its mode, owner and
//! mtime, and renamed over the old one: a stream cut at any byte leaves the
//! old file (and a temporary that the next session removes), never a
//! truncated one. Every path is resolved by the kernel beneath the folder
//! ([`super::confine`]): `..`, absolute paths, a folder on the way that is a
//! symlink, and symlinks that point out of the folder are refused.
//!
//! No privilege by replication. Modes keep their permission bits only:
//! setuid, setgid and sticky are cleared on everything created or changed
//! (rsync's default without `--perms`, `-p`, also drops them on new files).
//! Owners are not copied from the sender — user ids differ between nodes —
//! and the daemon runs as root, so like rsync without `-o`/`-g`, everything
//! created belongs to one owner: the job's `owner`/`group` when set, else
//! the owner and group of the job's folder itself (what an rsync run as
//! that folder's owner would give). Never root by accident.

use super::confine::{self, Owner, ResolveError, Root};
use super::manifest::{is_safe_relative, mtime_ns, HashCache, TMP_MARK};
use super::wire::{Applied, FileEnd, FileHead, Op};
use resilience_core::config::Principal;
use rustix::fs::FileType;
use std::fs::{File, FileTimes};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// The bits a replicated mode keeps: permissions, no setuid/setgid/sticky.
pub const PLAIN: u32 = 0o777;

/// Errors name job-relative paths only: they go back to the sender.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("refused path {0:?}: it leaves the replicated folder or goes through a symlink")]
    UnsafePath(String),
    #[error("refused symlink {path:?} -> {target:?}: it points out of the replicated folder")]
    UnsafeLink { path: String, target: String },
    #[error("refused symlinks {0:?}: they point out of the replicated folder (removed)")]
    EscapingLinks(Vec<String>),
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
    #[error("the replicated folder: {0}")]
    Root(std::io::Error),
    #[error("{0} (the job's owner or group)")]
    Owner(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

struct Incoming {
    head: FileHead,
    dir: OwnedFd,
    name: String,
    tmp: String,
    file: File,
    hasher: blake3::Hasher,
    sent: u64,
}

pub struct Applier {
    root: Root,
    owner: Owner,
    /// What replication wrote: path → (size, mtime, hash).
    pub cache: HashCache,
    current: Option<Incoming>,
    pub applied: Applied,
}

fn io(rel: &str) -> impl FnOnce(std::io::Error) -> ApplyError + '_ {
    move |e| ApplyError::Io(rel.to_owned(), e)
}

fn resolve(rel: &str) -> impl FnOnce(ResolveError) -> ApplyError + '_ {
    move |e| match e {
        ResolveError::Outside => ApplyError::UnsafePath(rel.to_owned()),
        ResolveError::Io(e) => ApplyError::Io(rel.to_owned(), e),
    }
}

fn safe(rel: &str) -> Result<(), ApplyError> {
    if is_safe_relative(rel) {
        Ok(())
    } else {
        Err(ApplyError::UnsafePath(rel.into()))
    }
}

fn time_of(ns: i64) -> std::time::SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH
    }
}

/// Mode, owner and mtime of something replication created or changed.
fn settle(f: &File, mode: u32, owner: Owner, mtime_ns: Option<i64>) -> std::io::Result<()> {
    f.set_permissions(std::fs::Permissions::from_mode(mode & PLAIN))?;
    confine::chown(f, owner)?;
    if let Some(t) = mtime_ns {
        f.set_times(FileTimes::new().set_modified(time_of(t)))?;
    }
    Ok(())
}

/// Make room for a folder (`keep_dir`) or a file at `name`: the other kind
/// is removed first.
fn clear(dir: &OwnedFd, name: &str, keep_dir: bool) -> Result<(), ResolveError> {
    match confine::kind_at(dir, name)? {
        Some(FileType::Directory) if !keep_dir => confine::remove_at(dir, name, 0),
        Some(k) if k != FileType::Directory && keep_dir => confine::remove_at(dir, name, 0),
        _ => Ok(()),
    }
}

/// The user id `p` names on this node.
pub fn uid_of(p: &Principal) -> Result<u32, ApplyError> {
    if let Some(id) = p.id() {
        return Ok(id);
    }
    match nix::unistd::User::from_name(&p.to_string()) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(ApplyError::Owner(format!(
            "no user named \"{p}\" on this node"
        ))),
        Err(e) => Err(ApplyError::Owner(format!("looking up user {p}: {e}"))),
    }
}

/// The group id `p` names on this node.
pub fn gid_of(p: &Principal) -> Result<u32, ApplyError> {
    if let Some(id) = p.id() {
        return Ok(id);
    }
    match nix::unistd::Group::from_name(&p.to_string()) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(ApplyError::Owner(format!(
            "no group named \"{p}\" on this node"
        ))),
        Err(e) => Err(ApplyError::Owner(format!("looking up group {p}: {e}"))),
    }
}

impl Applier {
    /// Start a session on `root`, removing temporaries a cut session left.
    /// `owner`, `group`: who owns what is created (default: the folder's
    /// owner and group).
    pub fn new(
        root: &Path,
        cache: HashCache,
        owner: Option<&Principal>,
        group: Option<&Principal>,
    ) -> Result<Applier, ApplyError> {
        std::fs::create_dir_all(root).map_err(ApplyError::Root)?;
        let r = Root::open(root).map_err(ApplyError::Root)?;
        let folder = r.owner().map_err(ApplyError::Root)?;
        let owner = Owner {
            uid: match owner {
                Some(p) => uid_of(p)?,
                None => folder.uid,
            },
            gid: match group {
                Some(p) => gid_of(p)?,
                None => folder.gid,
            },
        };
        for e in walkdir::WalkDir::new(root)
            .follow_links(false)
            .into_iter()
            .flatten()
        {
            if e.file_name().to_string_lossy().contains(TMP_MARK) {
                if let Ok(rel) = e.path().strip_prefix(root) {
                    let _ = r.remove(&rel.to_string_lossy());
                }
            }
        }
        Ok(Applier {
            root: r,
            owner,
            cache,
            current: None,
            applied: Applied::default(),
        })
    }

    pub fn start_file(&mut self, head: FileHead) -> Result<(), ApplyError> {
        self.abort();
        safe(&head.path)?;
        let p = self
            .root
            .parent(&head.path, Some(self.owner))
            .map_err(resolve(&head.path))?;
        let (file, tmp) = confine::create_temp(&p.dir).map_err(io(&head.path))?;
        self.current = Some(Incoming {
            head,
            dir: p.dir,
            name: p.name,
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
        cur.file.write_all(bytes).map_err(io(&cur.head.path))
    }

    pub fn end_file(&mut self, end: FileEnd) -> Result<(), ApplyError> {
        let cur = self.current.take().ok_or(ApplyError::NoFile)?;
        let got = cur.hasher.finalize().to_hex().to_string();
        let rel = cur.head.path.as_str();
        if got != end.hash || cur.sent != cur.head.size {
            let _ = confine::remove_at(&cur.dir, &cur.tmp, 0);
            return Err(ApplyError::Mismatch {
                path: cur.head.path,
                size: cur.head.size,
                sent: cur.sent,
                got,
                want: end.hash,
            });
        }
        let done = settle(
            &cur.file,
            cur.head.mode,
            self.owner,
            Some(cur.head.mtime_ns),
        )
        .and_then(|()| cur.file.metadata());
        let m = match done {
            Ok(m) => m,
            Err(e) => {
                let _ = confine::remove_at(&cur.dir, &cur.tmp, 0);
                return Err(ApplyError::Io(rel.to_owned(), e));
            }
        };
        drop(cur.file);
        clear(&cur.dir, &cur.name, false).map_err(resolve(rel))?;
        confine::rename_in(&cur.dir, &cur.tmp, &cur.name).map_err(io(rel))?;
        self.cache
            .insert(cur.head.path.clone(), (cur.head.size, mtime_ns(&m), got));
        self.applied.files += 1;
        self.applied.bytes += cur.head.size;
        Ok(())
    }

    /// Drop a file in progress (its temporary goes; the old file stays).
    pub fn abort(&mut self) {
        if let Some(cur) = self.current.take() {
            let _ = confine::remove_at(&cur.dir, &cur.tmp, 0);
        }
    }

    pub fn op(&mut self, op: Op) -> Result<(), ApplyError> {
        match op {
            Op::Dir { path, mode } => {
                safe(&path)?;
                let p = self
                    .root
                    .parent(&path, Some(self.owner))
                    .map_err(resolve(&path))?;
                clear(&p.dir, &p.name, true).map_err(resolve(&path))?;
                let f = confine::ensure_dir(&p.dir, &p.name).map_err(resolve(&path))?;
                settle(&f, mode, self.owner, None).map_err(io(&path))?;
            }
            Op::Symlink { path, target } => {
                safe(&path)?;
                if target.is_empty() || target.starts_with('/') || target.contains('\0') {
                    return Err(ApplyError::UnsafeLink { path, target });
                }
                let p = self
                    .root
                    .parent(&path, Some(self.owner))
                    .map_err(resolve(&path))?;
                let tmp = confine::temp_name().map_err(io(&path))?;
                confine::symlink_at(&p.dir, &target, &tmp).map_err(io(&path))?;
                // Judged where it will live (same folder), before it is there.
                let tmp_rel = match path.rsplit_once('/') {
                    Some((d, _)) => format!("{d}/{tmp}"),
                    None => tmp.clone(),
                };
                let inside = matches!(self.root.link_stays_inside(&tmp_rel), Ok(true));
                let placed = if inside {
                    confine::chown_link(&p.dir, &tmp, self.owner)
                        .map_err(io(&path))
                        .and_then(|()| clear(&p.dir, &p.name, false).map_err(resolve(&path)))
                        .and_then(|()| confine::rename_in(&p.dir, &tmp, &p.name).map_err(io(&path)))
                } else {
                    Err(ApplyError::UnsafeLink {
                        path: path.clone(),
                        target,
                    })
                };
                if placed.is_err() {
                    let _ = confine::remove_at(&p.dir, &tmp, 0);
                }
                placed?;
                self.cache.remove(&path);
            }
            Op::Meta {
                path,
                mode,
                mtime_ns: t,
            } => {
                safe(&path)?;
                let f = self.root.open_entry(&path).map_err(resolve(&path))?;
                let kind = f.metadata().map_err(io(&path))?;
                if !kind.is_file() {
                    return Err(ApplyError::Io(
                        path,
                        std::io::Error::other("not a regular file"),
                    ));
                }
                settle(&f, mode, self.owner, Some(t)).map_err(io(&path))?;
                let m = f.metadata().map_err(io(&path))?;
                if let Some(c) = self.cache.get_mut(&path) {
                    c.1 = mtime_ns(&m);
                }
            }
            Op::Delete { path } => {
                safe(&path)?;
                self.root.remove(&path).map_err(resolve(&path))?;
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

    /// The symlinks among `links` that lead out of the folder now (taken at
    /// the start of a session: those were not made by it).
    pub fn escaping<'a>(&self, links: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        links
            .into_iter()
            .filter(|l| {
                matches!(
                    self.root.link_stays_inside(l),
                    Ok(false) | Err(ResolveError::Outside)
                )
            })
            .cloned()
            .collect()
    }

    /// At the end of a session: every symlink in `links` still resolves
    /// inside, now that every change is in place — a link sent later, or a
    /// link replaced by a folder, can change where an earlier one leads.
    /// Those that no longer do are removed, and the session fails naming them.
    pub fn check_links<'a>(
        &mut self,
        links: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), ApplyError> {
        let mut out = Vec::new();
        for l in links {
            match self.root.link_stays_inside(l) {
                Ok(true) => {}
                Ok(false) | Err(ResolveError::Outside) => {
                    let _ = self.root.remove(l);
                    out.push(l.clone());
                }
                // Gone or not a link any more: nothing to judge.
                Err(ResolveError::Io(_)) => {}
            }
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(ApplyError::EscapingLinks(out))
        }
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("resilience-apply-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("root")).unwrap();
        d
    }

    fn head(path: &str, body: &[u8], mode: u32) -> FileHead {
        FileHead {
            path: path.into(),
            size: body.len() as u64,
            mode,
            mtime_ns: 1_000_000_000,
        }
    }

    fn put(a: &mut Applier, path: &str, body: &[u8], mode: u32) -> Result<(), ApplyError> {
        a.start_file(head(path, body, mode))?;
        a.data(body)?;
        a.end_file(FileEnd {
            hash: blake3::hash(body).to_hex().to_string(),
        })
    }

    #[test]
    fn unsafe_paths_and_symlinked_folders_are_refused() {
        let d = scratch("paths");
        let root = d.join("root");
        let mut a = Applier::new(&root, HashCache::new(), None, None).unwrap();
        for bad in ["../evil", "/etc/evil", "a/../../evil"] {
            assert!(
                matches!(
                    a.start_file(head(bad, b"x", 0o644)),
                    Err(ApplyError::UnsafePath(_))
                ),
                "{bad}"
            );
        }
        // A folder replaced by a symlink pointing outside cannot be written through.
        std::fs::create_dir_all(d.join("outside")).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("via")).unwrap();
        let e = put(&mut a, "via/evil", b"x", 0o644).unwrap_err();
        assert!(matches!(e, ApplyError::UnsafePath(_)), "{e}");
        let e = a
            .op(Op::Meta {
                path: "via".into(),
                mode: 0o777,
                mtime_ns: 0,
            })
            .unwrap_err();
        assert!(matches!(e, ApplyError::UnsafePath(_)), "{e}");
        assert_eq!(std::fs::read_dir(d.join("outside")).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_lexical_escape_chain_is_refused_and_nothing_outside_changes() {
        let d = scratch("chain");
        let root = d.join("root");
        std::fs::create_dir_all(d.join("outside")).unwrap();
        std::fs::write(d.join("outside/secret"), b"s").unwrap();
        std::fs::set_permissions(
            d.join("outside/secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let mut a = Applier::new(&root, HashCache::new(), None, None).unwrap();
        a.op(Op::Dir {
            path: "a".into(),
            mode: 0o755,
        })
        .unwrap();
        a.op(Op::Dir {
            path: "a/b".into(),
            mode: 0o755,
        })
        .unwrap();
        let link = |p: &str, t: &str| Op::Symlink {
            path: p.into(),
            target: t.into(),
        };
        a.op(link("a/b/l1", "..")).unwrap();
        let e = a
            .op(link("esc", "a/b/l1/../../outside/secret"))
            .unwrap_err();
        assert!(matches!(e, ApplyError::UnsafeLink { .. }), "{e}");
        assert!(root.join("esc").symlink_metadata().is_err());
        // Order trick: a link judged inside when sent, pointed out by a later one.
        a.op(link("z/late", "m/../../outside/secret")).unwrap_err();
        a.op(Op::Dir {
            path: "m".into(),
            mode: 0o755,
        })
        .unwrap();
        a.op(link("q", "m/x")).unwrap();
        a.op(Op::Delete { path: "m".into() }).unwrap();
        a.op(link("m", "a/b/l1/..")).unwrap();
        a.op(link("p", "m/../outside")).unwrap_err();
        // `q` now leads to root/x, still inside; an escaping rewire is caught
        // at the end even when each step looked fine.
        a.op(Op::Dir {
            path: "c".into(),
            mode: 0o755,
        })
        .unwrap();
        a.op(link("c/up", "../m/q")).unwrap();
        a.check_links(&["a/b/l1".to_string(), "q".into(), "m".into(), "c/up".into()])
            .unwrap();
        a.op(Op::Delete {
            path: "a/b/l1".into(),
        })
        .unwrap();
        a.op(link("a/b/l1", "../..")).unwrap();
        let e = a
            .check_links(&["a/b/l1".to_string(), "m".into()])
            .unwrap_err();
        assert!(
            matches!(e, ApplyError::EscapingLinks(ref l) if l.contains(&"m".to_string())),
            "{e}"
        );
        assert!(root.join("m").symlink_metadata().is_err());
        assert_eq!(std::fs::read(d.join("outside/secret")).unwrap(), b"s");
        assert_eq!(
            std::fs::metadata(d.join("outside/secret")).unwrap().mode() & 0o7777,
            0o600
        );
        assert_eq!(std::fs::read_dir(d.join("outside")).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn special_bits_are_cleared_and_owner_is_set() {
        let d = scratch("owner");
        let root = d.join("root");
        let (uid, gid) = (Principal::Id(4242), Principal::Name("4343".into()));
        let mut a = Applier::new(&root, HashCache::new(), Some(&uid), Some(&gid)).unwrap();
        put(&mut a, "bin/tool", b"#!/bin/sh\n", 0o4755).unwrap();
        a.op(Op::Dir {
            path: "spool".into(),
            mode: 0o3775,
        })
        .unwrap();
        put(&mut a, "plain", b"p", 0o644).unwrap();
        a.op(Op::Meta {
            path: "plain".into(),
            mode: 0o6755,
            mtime_ns: 5,
        })
        .unwrap();
        let unknown = Principal::Name("no-such-user-here".into());
        let e = Applier::new(&root, HashCache::new(), Some(&unknown), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("no user named"), "{e}");
        for (p, mode) in [
            ("bin/tool", 0o755),
            ("bin", 0o755),
            ("spool", 0o775),
            ("plain", 0o755),
        ] {
            let m = std::fs::symlink_metadata(root.join(p)).unwrap();
            assert_eq!(m.mode() & 0o7777, mode, "{p}");
            if rustix::process::geteuid().is_root() {
                assert_eq!((m.uid(), m.gid()), (4242, 4343), "{p}");
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_is_renamed_into_place_only_when_complete_and_verified() {
        let d = scratch("file");
        let root = d.join("root");
        std::fs::write(root.join("f"), b"old").unwrap();
        let mut a = Applier::new(&root, HashCache::new(), None, None).unwrap();
        let body = b"new content";
        a.start_file(head("f", body, 0o600)).unwrap();
        a.data(&body[..4]).unwrap();
        // Cut here: the old file is intact, the temporary goes.
        a.abort();
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"old");
        // A wrong hash is refused too.
        a.start_file(head("f", body, 0o600)).unwrap();
        a.data(body).unwrap();
        assert!(a.end_file(FileEnd { hash: "00".into() }).is_err());
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"old");
        put(&mut a, "f", body, 0o600).unwrap();
        assert_eq!(std::fs::read(root.join("f")).unwrap(), body);
        let m = std::fs::metadata(root.join("f")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(mtime_ns(&m), 1_000_000_000);
        let leftovers: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }
}
