//! What changed on the Standby while it was Active.
//!
//! IP Office's rule ("Phone Resilience") is that settings changed during a failover do
//! not survive failback; XiVO's hourly reload overwrites them without a word.
//! Here the Standby keeps a baseline of what the last replication left in
//! each folder (and a fingerprint of chosen tables), and when it hands the
//! service back it compares: the admin is told, by an event and in the
//! status, what the next replication will overwrite.

use super::manifest::{EntryKind, Manifest};
use super::wire::{FileHead, Op};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// How much of each list a report keeps (the counts are always whole).
const SHOWN: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub kind: EntryKind,
    pub size: u64,
    pub mtime_ns: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// What the last replication left: folder entries, or table fingerprints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Baseline {
    #[serde(default)]
    pub files: BTreeMap<String, Seen>,
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
}

impl Baseline {
    pub fn from_manifest(m: &Manifest) -> Baseline {
        Baseline {
            files: m
                .iter()
                .map(|(p, e)| {
                    (
                        p.clone(),
                        Seen {
                            kind: e.kind,
                            size: if e.kind == EntryKind::File { e.size } else { 0 },
                            mtime_ns: if e.kind == EntryKind::File {
                                e.mtime_ns
                            } else {
                                0
                            },
                            target: e.target.clone(),
                        },
                    )
                })
                .collect(),
            tables: BTreeMap::new(),
        }
    }

    pub fn tables(prints: Vec<(String, String)>) -> Baseline {
        Baseline {
            files: BTreeMap::new(),
            tables: prints.into_iter().collect(),
        }
    }

    /// A file the session wrote.
    pub fn file(&mut self, h: &FileHead) {
        self.files.insert(
            h.path.clone(),
            Seen {
                kind: EntryKind::File,
                size: h.size,
                mtime_ns: h.mtime_ns,
                target: None,
            },
        );
    }

    /// A change without content the session applied.
    pub fn op(&mut self, op: &Op) {
        match op {
            Op::Dir { path, .. } => {
                self.files.insert(
                    path.clone(),
                    Seen {
                        kind: EntryKind::Dir,
                        size: 0,
                        mtime_ns: 0,
                        target: None,
                    },
                );
            }
            Op::Symlink { path, target } => {
                self.files.insert(
                    path.clone(),
                    Seen {
                        kind: EntryKind::Symlink,
                        size: 0,
                        mtime_ns: 0,
                        target: Some(target.clone()),
                    },
                );
            }
            Op::Meta { path, mtime_ns, .. } => {
                if let Some(s) = self.files.get_mut(path) {
                    s.mtime_ns = *mtime_ns;
                }
            }
            Op::Delete { path } => {
                let prefix = format!("{path}/");
                self.files
                    .retain(|k, _| k != path && !k.starts_with(&prefix));
            }
        }
    }
}

pub fn save(path: &Path, b: &Baseline) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(b).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, path)
}

pub fn load(path: &Path) -> Option<Baseline> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Local changes of one job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobChanges {
    pub job: String,
    /// Counts: files (or tables) changed, added, deleted.
    pub changed: usize,
    pub added: usize,
    pub deleted: usize,
    /// The first paths (or table names) of each kind.
    pub paths: Vec<String>,
}

impl JobChanges {
    pub fn is_empty(&self) -> bool {
        self.changed + self.added + self.deleted == 0
    }
}

/// The whole report made when the Standby handed the service back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub at_ms: i64,
    pub jobs: Vec<JobChanges>,
    /// Paths copied back to the Main (`keep_on_failback`).
    #[serde(default)]
    pub kept: Vec<String>,
}

/// Compare a folder now with its baseline. Folders' own mtimes are ignored
/// (they move with every file); files compare by kind, size and mtime.
pub fn diff_files(job: &str, base: &Baseline, now: &Manifest) -> JobChanges {
    let mut c = JobChanges {
        job: job.to_owned(),
        ..JobChanges::default()
    };
    let show = |p: &str, tag: &str, c: &mut JobChanges| {
        if c.paths.len() < SHOWN {
            c.paths.push(format!("{tag} {p}"));
        }
    };
    for (p, e) in now {
        match base.files.get(p) {
            None => {
                c.added += 1;
                show(p, "added", &mut c);
            }
            Some(s) => {
                let same = s.kind == e.kind
                    && match e.kind {
                        EntryKind::File => s.size == e.size && s.mtime_ns == e.mtime_ns,
                        EntryKind::Symlink => s.target == e.target,
                        EntryKind::Dir => true,
                    };
                if !same {
                    c.changed += 1;
                    show(p, "changed", &mut c);
                }
            }
        }
    }
    for p in base.files.keys().filter(|p| !now.contains_key(*p)) {
        c.deleted += 1;
        show(p, "deleted", &mut c);
    }
    c
}

/// Compare table fingerprints now with the baseline's.
pub fn diff_tables(job: &str, base: &Baseline, now: &[(String, String)]) -> JobChanges {
    let mut c = JobChanges {
        job: job.to_owned(),
        ..JobChanges::default()
    };
    for (t, h) in now {
        match base.tables.get(t) {
            Some(old) if old == h => {}
            Some(_) => {
                c.changed += 1;
                c.paths.push(format!("changed table {t}"));
            }
            None => {
                c.added += 1;
                c.paths.push(format!("new table {t}"));
            }
        }
    }
    for t in base.tables.keys() {
        if !now.iter().any(|(n, _)| n == t) {
            c.deleted += 1;
            c.paths.push(format!("deleted table {t}"));
        }
    }
    c
}

/// One line for the event history.
pub fn summary(r: &Report) -> String {
    let mut parts: Vec<String> = r
        .jobs
        .iter()
        .filter(|j| !j.is_empty())
        .map(|j| {
            format!(
                "{}: {} changed, {} added, {} deleted ({})",
                j.job,
                j.changed,
                j.added,
                j.deleted,
                j.paths
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    if parts.is_empty() {
        return "failback: nothing changed on this standby while it was active".into();
    }
    if !r.kept.is_empty() {
        parts.push(format!(
            "copied back to the main first: {}",
            r.kept.join(", ")
        ));
    }
    format!(
        "failback: changed on this standby while it was active, overwritten by the next replication unless kept — {}",
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::manifest::Entry;

    fn file(size: u64, t: i64) -> Entry {
        Entry {
            kind: EntryKind::File,
            size,
            mode: 0o644,
            mtime_ns: t,
            hash: None,
            target: None,
        }
    }

    #[test]
    fn finds_changed_added_and_deleted_files() {
        let mut m = Manifest::new();
        m.insert("a.conf".into(), file(3, 1));
        m.insert("b.conf".into(), file(3, 1));
        m.insert("gone.conf".into(), file(3, 1));
        let mut b = Baseline::from_manifest(&m);
        // The session then wrote c.conf and deleted gone.conf.
        b.file(&FileHead {
            path: "c.conf".into(),
            size: 5,
            mode: 0o644,
            mtime_ns: 9,
        });
        b.op(&Op::Delete {
            path: "gone.conf".into(),
        });
        let mut now = m.clone();
        now.remove("gone.conf");
        now.insert("c.conf".into(), file(5, 9));
        assert!(diff_files("etc", &b, &now).is_empty());
        // While Active: a.conf edited, d.conf created, b.conf deleted.
        now.insert("a.conf".into(), file(4, 2));
        now.insert("d.conf".into(), file(1, 3));
        now.remove("b.conf");
        let c = diff_files("etc", &b, &now);
        assert_eq!((c.changed, c.added, c.deleted), (1, 1, 1), "{c:?}");
        assert!(c.paths.contains(&"changed a.conf".to_string()));
        let r = Report {
            at_ms: 0,
            jobs: vec![c],
            kept: vec![],
        };
        assert!(summary(&r).contains("etc: 1 changed, 1 added, 1 deleted"));
    }

    #[test]
    fn finds_changed_tables() {
        let b = Baseline::tables(vec![("users".into(), "aa".into())]);
        assert!(diff_tables("db", &b, &[("users".into(), "aa".into())]).is_empty());
        let c = diff_tables("db", &b, &[("users".into(), "bb".into())]);
        assert_eq!(c.changed, 1);
    }
}
