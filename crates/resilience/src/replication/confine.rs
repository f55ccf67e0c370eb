//! Confinement by resolution: every path a replication session touches is
//! resolved by the kernel beneath the job's folder, never by reading its text.
//!
//! The folder is opened once; every later lookup is an `openat2` from that
//! descriptor with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: the kernel refuses
//! `..` above the folder, absolute paths, and any symlink on the way — the
//! Main's scan never follows links, so the paths it sends never go through
//! one. The last name is then acted on from its folder's descriptor with the
//! `*at` calls, which do not follow a link there either (`mkdirat`,
//! `renameat`, `unlinkat`, `symlinkat`; `O_NOFOLLOW` for opens). A folder
//! swapped for a link between two calls makes the next call fail, it never
//! redirects it.
//!
//! Symlinks are data: one is kept only if the path it names, resolved from
//! its own folder through the other links as they stand, stays beneath the
//! folder ([`Root::link_stays_inside`]). The kernel answers that too (an
//! `openat2` with `RESOLVE_BENEATH` only, which follows links inside and
//! fails with `EXDEV` on the first step out). A link whose target does not
//! exist yet is judged on what can be known: the part that exists resolves
//! inside, and what follows only descends (no `..` after a missing name), so
//! whatever is created there later is itself a checked folder or link.
//!
//! Temporary names are random (`getrandom`) and created with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`: nothing planted beforehand is opened.
//! Written by hand over `rustix` because each step is one system call; the
//! kernel does the resolving (no path walker here).

use super::manifest::TMP_MARK;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// Beneath the folder, through no symlink at all.
const STRICT: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS);
/// Beneath the folder, through links that stay inside (to judge a link).
const FOLLOW_INSIDE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);
/// Deepest tree removed recursively (one descriptor per level).
const MAX_DEPTH: usize = 256;

/// Who owns what replication creates: numeric ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// What resolving a path found, when it is not simply an I/O error.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Out of the folder, or through a symlink.
    #[error("it leaves the replicated folder or goes through a symlink")]
    Outside,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<Errno> for ResolveError {
    fn from(e: Errno) -> Self {
        match e {
            Errno::XDEV | Errno::LOOP => ResolveError::Outside,
            e => ResolveError::Io(e.into()),
        }
    }
}

/// A job's folder, held open: the anchor of every resolution.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

/// The folder holding an entry, and the entry's name in it.
pub struct Parent {
    pub dir: OwnedFd,
    pub name: String,
}

fn split(rel: &str) -> (&str, &str) {
    match rel.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", rel),
    }
}

/// A random temporary name in the receiving side's namespace.
pub fn temp_name() -> io::Result<String> {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(format!("{TMP_MARK}{}", hex::encode(b)))
}

impl Root {
    /// Open the folder `path` (the configured one, trusted as it is).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { fd })
    }

    /// The owner and group of the folder itself (the default owner).
    pub fn owner(&self) -> io::Result<Owner> {
        let st = rfs::fstat(&self.fd)?;
        Ok(Owner {
            uid: st.st_uid,
            gid: st.st_gid,
        })
    }

    fn dir_fd(&self, dir: &str) -> Result<OwnedFd, ResolveError> {
        let dir = if dir.is_empty() { "." } else { dir };
        Ok(rfs::openat2(
            &self.fd,
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            STRICT,
        )?)
    }

    /// The folder that holds `rel`, resolved beneath the root through real
    /// folders only. With `create`, missing folders on the way are made
    /// (mode 0755, owned by `create`).
    pub fn parent(&self, rel: &str, create: Option<Owner>) -> Result<Parent, ResolveError> {
        let (dir, name) = split(rel);
        if name.is_empty() {
            return Err(ResolveError::Outside);
        }
        let fd = match (self.dir_fd(dir), create) {
            (Ok(fd), _) => fd,
            (Err(ResolveError::Io(e)), Some(owner)) if e.kind() == io::ErrorKind::NotFound => {
                let mut cur = self.dir_fd("")?;
                for part in dir.split('/') {
                    cur = match sub_dir(&cur, part) {
                        Ok(fd) => fd,
                        Err(Errno::NOENT) => {
                            match rfs::mkdirat(&cur, part, Mode::from_raw_mode(0o755)) {
                                Ok(()) | Err(Errno::EXIST) => {}
                                Err(e) => return Err(e.into()),
                            }
                            let d = open_at(&cur, part, OFlags::DIRECTORY)?;
                            chown(&d, owner)?;
                            sub_dir(&cur, part)?
                        }
                        Err(e) => return Err(e.into()),
                    };
                }
                cur
            }
            (Err(e), _) => return Err(e),
        };
        Ok(Parent {
            dir: fd,
            name: name.to_owned(),
        })
    }

    /// Open the existing entry `rel` for changing its metadata: a file or a
    /// folder, never a link (refused as [`ResolveError::Outside`]).
    pub fn open_entry(&self, rel: &str) -> Result<File, ResolveError> {
        let fd = rfs::openat2(
            &self.fd,
            rel,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
            STRICT,
        )?;
        Ok(File::from(fd))
    }

    /// Whether the symlink at `rel` names something beneath the root,
    /// resolved from its folder through the other links as they stand now.
    pub fn link_stays_inside(&self, rel: &str) -> Result<bool, ResolveError> {
        let p = self.parent(rel, None)?;
        let target = rfs::readlinkat(&p.dir, p.name.as_str(), Vec::new())?;
        let target = target.to_string_lossy().into_owned();
        match rfs::openat2(
            &self.fd,
            rel,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            FOLLOW_INSIDE,
        ) {
            Ok(_) => Ok(true),
            Err(Errno::XDEV | Errno::LOOP) => Ok(false),
            // Dangling: what exists resolved inside (or the kernel would have
            // said EXDEV first); what is missing must only descend.
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(dangling_descends(split(rel).0, &target)),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove whatever is at `rel` (a folder with all it holds). Missing is fine.
    pub fn remove(&self, rel: &str) -> Result<(), ResolveError> {
        let p = match self.parent(rel, None) {
            Ok(p) => p,
            Err(ResolveError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        remove_at(&p.dir, &p.name, 0)
    }
}

/// A dangling target is accepted only as `../` steps that stay within the
/// link's depth, then plain names: nothing climbs after a name that may
/// later become a link.
fn dangling_descends(link_dir: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') {
        return false;
    }
    let mut depth = if link_dir.is_empty() {
        0
    } else {
        link_dir.split('/').count()
    };
    let mut named = false;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." if named => return false,
            ".." => {
                if depth == 0 {
                    return false;
                }
                depth -= 1;
            }
            _ => named = true,
        }
    }
    true
}

fn sub_dir(dir: &OwnedFd, name: &str) -> Result<OwnedFd, Errno> {
    rfs::openat2(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        STRICT,
    )
}

/// Open `name` in `dir` for reading its metadata, not following a link.
pub fn open_at(dir: &OwnedFd, name: &str, extra: OFlags) -> Result<File, ResolveError> {
    let fd = rfs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | extra,
        Mode::empty(),
        STRICT,
    )?;
    Ok(File::from(fd))
}

/// Create a new temporary file in `dir`: random name, exclusive, never
/// through a link. Returns the file and its name.
pub fn create_temp(dir: &OwnedFd) -> io::Result<(File, String)> {
    loop {
        let name = temp_name()?;
        match rfs::openat(
            dir,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => return Ok((File::from(fd), name)),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Give `f` its owner.
pub fn chown(f: &impl AsFd, owner: Owner) -> io::Result<()> {
    rfs::fchown(
        f,
        Some(rfs::Uid::from_raw(owner.uid)),
        Some(rfs::Gid::from_raw(owner.gid)),
    )?;
    Ok(())
}

/// Set a symlink's owner (links have no mode of their own on Linux).
pub fn chown_link(dir: &OwnedFd, name: &str, owner: Owner) -> io::Result<()> {
    rfs::chownat(
        dir,
        name,
        Some(rfs::Uid::from_raw(owner.uid)),
        Some(rfs::Gid::from_raw(owner.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// What kind of entry `name` in `dir` is, without following a link.
pub fn kind_at(dir: &OwnedFd, name: &str) -> io::Result<Option<FileType>> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Remove `name` in `dir` and, for a folder, all it holds (no link followed).
pub fn remove_at(dir: &OwnedFd, name: &str, depth: usize) -> Result<(), ResolveError> {
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            if depth >= MAX_DEPTH {
                return Err(ResolveError::Io(io::Error::other(format!(
                    "more than {MAX_DEPTH} folders deep"
                ))));
            }
            let sub = File::from(rfs::openat2(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                STRICT,
            )?);
            let sub = OwnedFd::from(sub);
            let names: Vec<String> = rfs::Dir::read_from(&sub)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "." && n != "..")
                .collect();
            for n in names {
                remove_at(&sub, &n, depth + 1)?;
            }
            rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
            Ok(())
        }
        Some(_) => {
            rfs::unlinkat(dir, name, AtFlags::empty())?;
            Ok(())
        }
    }
}

/// Rename `from` to `to`, both in `dir`.
pub fn rename_in(dir: &OwnedFd, from: &str, to: &str) -> io::Result<()> {
    rfs::renameat(dir, from, dir, to)?;
    Ok(())
}

/// Create folder `name` in `dir` if missing; open it (never through a link).
pub fn ensure_dir(dir: &OwnedFd, name: &str) -> Result<File, ResolveError> {
    match rfs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    open_at(dir, name, OFlags::DIRECTORY)
}

/// Create symlink `name` -> `target` in `dir` (fails if `name` exists).
pub fn symlink_at(dir: &OwnedFd, target: &str, name: &str) -> io::Result<()> {
    rfs::symlinkat(target, dir, name)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("resilience-confine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("root")).unwrap();
        d
    }

    #[test]
    fn paths_resolve_beneath_and_through_no_link() {
        let d = scratch("paths");
        let root = Root::open(&d.join("root")).unwrap();
        std::fs::create_dir_all(d.join("root/a/b")).unwrap();
        std::fs::create_dir_all(d.join("outside")).unwrap();
        std::os::unix::fs::symlink("../outside", d.join("root/out")).unwrap();
        std::os::unix::fs::symlink("a", d.join("root/in")).unwrap();
        assert!(root.parent("a/b/f", None).is_ok());
        // Through a link, inside or out: refused.
        for bad in ["out/f", "in/b/f", "../outside/f", "/etc/passwd"] {
            assert!(
                matches!(root.parent(bad, None), Err(ResolveError::Outside)),
                "{bad}"
            );
        }
        // Creating folders on the way never goes through a link either.
        let owner = root.owner().unwrap();
        assert!(matches!(
            root.parent("out/new/f", Some(owner)),
            Err(ResolveError::Outside)
        ));
        assert!(!d.join("outside/new").exists());
        root.parent("x/y/f", Some(owner)).unwrap();
        assert!(d.join("root/x/y").is_dir());
        // A link is never opened for its metadata.
        assert!(matches!(root.open_entry("out"), Err(ResolveError::Outside)));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn links_are_judged_by_resolution_through_other_links() {
        let d = scratch("links");
        let r = d.join("root");
        let root = Root::open(&r).unwrap();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::create_dir_all(d.join("outside")).unwrap();
        std::fs::write(d.join("outside/secret"), b"s").unwrap();
        let link = |t: &str, p: &str| std::os::unix::fs::symlink(t, r.join(p)).unwrap();
        link("..", "a/b/l1");
        // Lexically inside, really outside: the chain from the issue.
        link("a/b/l1/../../outside/secret", "esc");
        link("a/b/l1/../../outside", "esc_dir");
        link("../x", "a/up");
        link("/etc/passwd", "abs");
        link("missing/../../x", "dangling_climb");
        link("../missing/deeper", "a/dangling_ok");
        link("a/b", "plain");
        let ok = |p: &str| root.link_stays_inside(p).unwrap();
        assert!(ok("a/b/l1"));
        assert!(!ok("esc"));
        assert!(!ok("esc_dir"));
        assert!(ok("a/up"));
        assert!(!ok("abs"));
        assert!(!ok("dangling_climb"));
        assert!(ok("a/dangling_ok"));
        assert!(ok("plain"));
        assert!(dangling_descends("a/b", "../../x"));
        assert!(!dangling_descends("a/b", "../../../x"));
        assert!(!dangling_descends("", "x/../y"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn temporaries_are_random_exclusive_and_removal_stays_inside() {
        let d = scratch("tmp");
        let r = d.join("root");
        let root = Root::open(&r).unwrap();
        let p = root.parent("f", None).unwrap();
        let (_f, a) = create_temp(&p.dir).unwrap();
        let (_g, b) = create_temp(&p.dir).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TMP_MARK) && !a.contains(&std::process::id().to_string()));
        // A folder holding a link to outside: removing it removes the link,
        // not what it points to.
        std::fs::create_dir_all(r.join("gone/deep")).unwrap();
        std::fs::create_dir_all(d.join("outside")).unwrap();
        std::fs::write(d.join("outside/keep"), b"k").unwrap();
        std::os::unix::fs::symlink("../../outside", r.join("gone/deep/l")).unwrap();
        root.remove("gone").unwrap();
        assert!(!r.join("gone").exists());
        assert_eq!(std::fs::read(d.join("outside/keep")).unwrap(), b"k");
        root.remove("never-there").unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }
}
