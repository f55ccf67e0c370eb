//! What a replicated directory holds: one entry per path (kind, size, mode,
//! mtime, BLAKE3 hash when known), and the plan that turns the Standby's
//! manifest into the Main's.
//!
//! Hashes come from a cache kept beside the node's state, reused while size
//! and mtime are unchanged (rsync's quick check); a file is hashed only while
//! it is sent. The Standby's cache records what replication wrote, which is
//! also how it tells, at failback, what changed locally while it was Active.
//!
//! The sender plans with modes stripped of setuid, setgid and sticky
//! ([`strip_special_bits`]) while the receiver's manifest keeps them, so a
//! special bit left on the receiving side (by an older version) is a
//! difference that the next push clears. A scan's errors name paths
//! relative to the folder: they may travel to the other node.

use globset::GlobSet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

/// Marks a file being received; never part of a manifest.
pub const TMP_MARK: &str = ".resilience-tmp.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub mtime_ns: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Relative path (`/`-separated) → entry; sorted, so a folder comes before
/// what it holds.
pub type Manifest = BTreeMap<String, Entry>;

/// Known hashes: path → (size, mtime_ns, BLAKE3 hex).
pub type HashCache = BTreeMap<String, (u64, i64, String)>;

pub fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

/// Whether a path from the other side is a plain relative path inside the
/// root: no `..`, no absolute path, no empty or `.` parts.
pub fn is_safe_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\0')
        && p.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// An I/O error about `path`, named relative to `root`.
fn rel_error(root: &Path, path: Option<&Path>, e: impl std::fmt::Display) -> std::io::Error {
    let rel = path
        .and_then(|p| p.strip_prefix(root).ok())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    // walkdir's message repeats the absolute path: keep only the cause.
    let cause = e.to_string();
    let cause = cause.rsplit(": ").next().unwrap_or(&cause).to_owned();
    std::io::Error::other(format!("scan {rel:?}: {cause}"))
}

/// The sender's side: no special bit is planned or sent.
pub fn strip_special_bits(m: &mut Manifest) {
    for e in m.values_mut() {
        e.mode &= super::apply::PLAIN;
    }
}

/// Remove from `m` the symlinks of the folder `root` that lead out of it
/// (see [`super::confine::Root::link_stays_inside`]); returns their paths.
pub fn drop_escaping_links(root: &Path, m: &mut Manifest) -> std::io::Result<Vec<String>> {
    let links: Vec<String> = m
        .iter()
        .filter(|(_, e)| e.kind == EntryKind::Symlink)
        .map(|(p, _)| p.clone())
        .collect();
    if links.is_empty() {
        return Ok(links);
    }
    let r = super::confine::Root::open(root)?;
    let mut out = Vec::new();
    for l in links {
        if !matches!(r.link_stays_inside(&l), Ok(true)) {
            m.remove(&l);
            out.push(l);
        }
    }
    Ok(out)
}

/// Scan `root` (symlinks are not followed; `excludes` match relative paths).
pub fn scan(root: &Path, excludes: &GlobSet, cache: &HashCache) -> std::io::Result<Manifest> {
    let mut out = Manifest::new();
    if !root.exists() {
        return Ok(out);
    }
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name();
    let mut it = walker.into_iter();
    while let Some(entry) = it.next() {
        let entry = entry.map_err(|e| rel_error(root, e.path(), &e))?;
        let rel = entry
            .path()
            .strip_prefix(root)
            .map_err(std::io::Error::other)?
            .to_string_lossy()
            .into_owned();
        let name = entry.file_name().to_string_lossy();
        if name.contains(TMP_MARK) || excludes.is_match(&rel) || excludes.is_match(name.as_ref()) {
            if entry.file_type().is_dir() {
                it.skip_current_dir();
            }
            continue;
        }
        let m = entry
            .path()
            .symlink_metadata()
            .map_err(|e| rel_error(root, Some(entry.path()), e))?;
        let ft = m.file_type();
        let (kind, target) = if ft.is_symlink() {
            let t = std::fs::read_link(entry.path())
                .map_err(|e| rel_error(root, Some(entry.path()), e))?;
            (EntryKind::Symlink, Some(t.to_string_lossy().into_owned()))
        } else if ft.is_dir() {
            (EntryKind::Dir, None)
        } else if ft.is_file() {
            (EntryKind::File, None)
        } else {
            continue; // sockets, fifos, devices: not replicated
        };
        let mtime = mtime_ns(&m);
        let size = if kind == EntryKind::File { m.len() } else { 0 };
        let hash = match cache.get(&rel) {
            Some((s, t, h)) if kind == EntryKind::File && *s == size && *t == mtime => {
                Some(h.clone())
            }
            _ => None,
        };
        out.insert(
            rel,
            Entry {
                kind,
                size,
                mode: m.mode() & 0o7777,
                mtime_ns: mtime,
                hash,
                target,
            },
        );
    }
    Ok(out)
}

/// One step of a sync, in the order it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// Send the content.
    File {
        path: String,
    },
    /// Same content, other mode or mtime.
    Meta {
        path: String,
        mode: u32,
        mtime_ns: i64,
    },
    Delete {
        path: String,
    },
}

/// What to send so that `theirs` becomes `ours`. Deletions come last,
/// deepest first.
pub fn plan(ours: &Manifest, theirs: &Manifest) -> Vec<Step> {
    let mut steps = Vec::new();
    for (path, e) in ours {
        let t = theirs.get(path);
        match e.kind {
            EntryKind::Dir => {
                if t.is_none_or(|t| t.kind != EntryKind::Dir || t.mode != e.mode) {
                    steps.push(Step::Dir {
                        path: path.clone(),
                        mode: e.mode,
                    });
                }
            }
            EntryKind::Symlink => {
                let target = e.target.clone().unwrap_or_default();
                if t.is_none_or(|t| {
                    t.kind != EntryKind::Symlink || t.target.as_deref() != Some(&target)
                }) {
                    steps.push(Step::Symlink {
                        path: path.clone(),
                        target,
                    });
                }
            }
            EntryKind::File => match t {
                Some(t)
                    if t.kind == EntryKind::File
                        && t.size == e.size
                        && t.mtime_ns == e.mtime_ns =>
                {
                    if t.mode != e.mode {
                        steps.push(Step::Meta {
                            path: path.clone(),
                            mode: e.mode,
                            mtime_ns: e.mtime_ns,
                        });
                    }
                }
                Some(t)
                    if t.kind == EntryKind::File
                        && t.size == e.size
                        && e.hash.is_some()
                        && t.hash == e.hash =>
                {
                    steps.push(Step::Meta {
                        path: path.clone(),
                        mode: e.mode,
                        mtime_ns: e.mtime_ns,
                    });
                }
                _ => steps.push(Step::File { path: path.clone() }),
            },
        }
    }
    let mut gone: Vec<&String> = theirs.keys().filter(|p| !ours.contains_key(*p)).collect();
    gone.sort_by(|a, b| b.cmp(a));
    // A folder that goes takes what it holds: no need to delete the children one by one.
    let mut deleted: Vec<&String> = Vec::new();
    for p in gone.into_iter().rev() {
        if deleted
            .iter()
            .any(|d| p.starts_with(d.as_str()) && p.as_bytes().get(d.len()) == Some(&b'/'))
        {
            continue;
        }
        deleted.push(p);
    }
    deleted.sort_by(|a, b| b.cmp(a));
    steps.extend(
        deleted
            .into_iter()
            .map(|p| Step::Delete { path: p.clone() }),
    );
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, mtime: i64, hash: Option<&str>) -> Entry {
        Entry {
            kind: EntryKind::File,
            size,
            mode: 0o644,
            mtime_ns: mtime,
            hash: hash.map(Into::into),
            target: None,
        }
    }

    #[test]
    fn safe_paths() {
        assert!(is_safe_relative("a/b.conf"));
        for bad in [
            "",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "./a",
            "a/./b",
            "a\0b",
        ] {
            assert!(!is_safe_relative(bad), "{bad:?}");
        }
    }

    #[test]
    fn plan_quick_check_hash_reuse_and_deletions() {
        let mut ours = Manifest::new();
        let mut theirs = Manifest::new();
        ours.insert("same".into(), file(3, 1, None));
        theirs.insert("same".into(), file(3, 1, None));
        ours.insert("touched".into(), file(3, 2, Some("h")));
        theirs.insert("touched".into(), file(3, 1, Some("h")));
        ours.insert("changed".into(), file(4, 2, None));
        theirs.insert("changed".into(), file(3, 1, Some("h")));
        ours.insert("new".into(), file(1, 1, None));
        theirs.insert(
            "old".into(),
            Entry {
                kind: EntryKind::Dir,
                size: 0,
                mode: 0o755,
                mtime_ns: 0,
                hash: None,
                target: None,
            },
        );
        theirs.insert("old/inner".into(), file(1, 1, None));
        let steps = plan(&ours, &theirs);
        assert_eq!(
            steps,
            vec![
                Step::File {
                    path: "changed".into()
                },
                Step::File { path: "new".into() },
                Step::Meta {
                    path: "touched".into(),
                    mode: 0o644,
                    mtime_ns: 2
                },
                Step::Delete { path: "old".into() },
            ]
        );
    }
}
