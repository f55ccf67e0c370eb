//! SQLite files (Asterisk keeps its astdb in one): a consistent snapshot
//! taken with SQLite's online backup API while writers go on, shipped as one
//! file and swapped in whole on the Standby.
//!
//! The snapshot is copied in one backup step, so it is one committed state of
//! the database, never a mix of two. It is switched to the rollback journal
//! before it is shipped, so the Standby's copy is a single self-contained
//! file; the swap is a rename, after which a stale `-wal`/`-shm` of the old
//! file is removed so that it cannot be replayed onto the new one.

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("{path}: {err}")]
    Db { path: String, err: rusqlite::Error },
    #[error("{path}: integrity check failed: {report}")]
    Corrupt { path: String, report: String },
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
}

fn db(p: &Path) -> impl FnOnce(rusqlite::Error) -> SqliteError + '_ {
    move |err| SqliteError::Db {
        path: p.display().to_string(),
        err,
    }
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> SqliteError + '_ {
    move |err| SqliteError::Io {
        path: p.display().to_string(),
        err,
    }
}

fn quick_check(conn: &Connection, p: &Path) -> Result<(), SqliteError> {
    let report: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(db(p))?;
    if report != "ok" {
        return Err(SqliteError::Corrupt {
            path: p.display().to_string(),
            report,
        });
    }
    Ok(())
}

/// Copy a consistent snapshot of `src` into `out` (replaced if present).
pub fn snapshot(src: &Path, out: &Path) -> Result<(), SqliteError> {
    let _ = std::fs::remove_file(out);
    let from = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db(src))?;
    from.busy_timeout(Duration::from_secs(10))
        .map_err(db(src))?;
    let mut to = Connection::open(out).map_err(db(out))?;
    {
        let backup = rusqlite::backup::Backup::new(&from, &mut to).map_err(db(out))?;
        // All pages in one step (-1): one read transaction, so one
        // committed state. A writer holding the lock means a retry.
        let mut tries = 0;
        loop {
            match backup.step(-1).map_err(db(src))? {
                rusqlite::backup::StepResult::Done => break,
                _ if tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    return Err(SqliteError::Db {
                        path: src.display().to_string(),
                        err: rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                            Some("still locked after 10 s".into()),
                        ),
                    })
                }
            }
        }
    }
    let mode: String = to
        .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
        .map_err(db(out))?;
    debug_assert_eq!(mode.to_ascii_lowercase(), "delete");
    quick_check(&to, out)?;
    drop(to);
    std::fs::File::open(out)
        .and_then(|f| f.sync_all())
        .map_err(io(out))
}

/// Where the Standby writes an incoming snapshot of `target`: beside it, so
/// the swap is a rename within one file system.
pub fn incoming_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into());
    target.with_file_name(format!(".{name}.resilience-tmp.incoming"))
}

/// Swap the verified snapshot at `incoming` in as `target`.
pub fn install(incoming: &Path, target: &Path) -> Result<(), SqliteError> {
    {
        let c = Connection::open_with_flags(incoming, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(db(incoming))?;
        quick_check(&c, incoming)?;
    }
    if target.exists() {
        // Fold a WAL left by the old file into it first; then its -wal is
        // empty and cannot be replayed onto the new file.
        if let Ok(c) = Connection::open(target) {
            let _ = c.busy_timeout(Duration::from_secs(5));
            let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
    }
    std::fs::rename(incoming, target).map_err(io(target))?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = target.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(side));
    }
    if let Some(dir) = target.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// A fingerprint of each table (BLAKE3 over its rows, in any order), for
/// the failback report: which of them changed on the Standby while it
/// served. Asterisk's `astdb` table (one key-value table for everything)
/// is fingerprinted per key family (`/CF/1001` is family `CF`), so the
/// report says "call forwarding changed", not just "astdb changed".
pub fn fingerprints(path: &Path) -> Result<Vec<(String, String)>, SqliteError> {
    use rusqlite::types::ValueRef;
    use std::collections::BTreeMap;
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(db(path))?;
    c.busy_timeout(Duration::from_secs(10)).map_err(db(path))?;
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(db(path))?;
    // Row hashes per fingerprinted name, sorted before the final hash.
    let mut rows: BTreeMap<String, Vec<[u8; 32]>> = BTreeMap::new();
    for t in &tables {
        let mut st = c
            .prepare(&format!("SELECT * FROM \"{}\"", t.replace('"', "\"\"")))
            .map_err(db(path))?;
        let cols: Vec<String> = st.column_names().iter().map(|n| n.to_string()).collect();
        let key_col = (t == "astdb")
            .then(|| cols.iter().position(|n| n == "key"))
            .flatten();
        rows.entry(t.clone()).or_default();
        let mut q = st.query([]).map_err(db(path))?;
        while let Some(r) = q.next().map_err(db(path))? {
            let mut h = blake3::Hasher::new();
            let mut family = None;
            for i in 0..cols.len() {
                let v = r.get_ref(i).map_err(db(path))?;
                let (tag, bytes): (u8, Vec<u8>) = match v {
                    ValueRef::Null => (0, Vec::new()),
                    ValueRef::Integer(n) => (1, n.to_le_bytes().to_vec()),
                    ValueRef::Real(f) => (2, f.to_le_bytes().to_vec()),
                    ValueRef::Text(b) => (3, b.to_vec()),
                    ValueRef::Blob(b) => (4, b.to_vec()),
                };
                if Some(i) == key_col {
                    family = std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(|k| k.trim_start_matches('/').split('/').next())
                        .map(|f| format!("{t} family {f}"));
                }
                h.update(&[tag]);
                h.update(&(bytes.len() as u64).to_le_bytes());
                h.update(&bytes);
            }
            let name = family.unwrap_or_else(|| t.clone());
            rows.entry(name).or_default().push(*h.finalize().as_bytes());
        }
    }
    Ok(rows
        .into_iter()
        .map(|(name, mut hs)| {
            hs.sort_unstable();
            let mut h = blake3::Hasher::new();
            for r in &hs {
                h.update(r);
            }
            (name, h.finalize().to_hex().to_string())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_of_a_wal_database_swaps_in_whole() {
        let dir = std::env::temp_dir().join(format!("res-sqlite-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("astdb.sqlite3");
        let c = Connection::open(&src).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE astdb(key TEXT PRIMARY KEY, value TEXT);
             INSERT INTO astdb VALUES('/SIP/1001', 'x');",
        )
        .unwrap();
        let snap = dir.join("snap");
        snapshot(&src, &snap).unwrap();
        // The Standby's old copy, in WAL mode with an open writer's leftovers.
        let target = dir.join("standby.sqlite3");
        let t = Connection::open(&target).unwrap();
        t.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE astdb(key TEXT PRIMARY KEY, value TEXT);
             INSERT INTO astdb VALUES('/old', 'y');",
        )
        .unwrap();
        drop(t);
        let inc = incoming_path(&target);
        std::fs::copy(&snap, &inc).unwrap();
        install(&inc, &target).unwrap();
        let t = Connection::open(&target).unwrap();
        let keys: Vec<String> = t
            .prepare("SELECT key FROM astdb")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(keys, vec!["/SIP/1001".to_string()]);
        // A file that is not a database is refused and the target kept.
        std::fs::write(&inc, b"not a database at all, not even close").unwrap();
        assert!(install(&inc, &target).is_err());
        drop(t);
        let t = Connection::open(&target).unwrap();
        let n: i64 = t
            .query_row("SELECT count(*) FROM astdb", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fingerprints_tell_which_astdb_families_changed() {
        let d = std::env::temp_dir().join(format!("res-sqlite-fp-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("astdb.sqlite3");
        let _ = std::fs::remove_file(&p);
        let c = Connection::open(&p).unwrap();
        c.execute_batch(
            "CREATE TABLE astdb(key VARCHAR(256) PRIMARY KEY, value VARCHAR(256));
             INSERT INTO astdb VALUES ('/CF/1001', '1002'), ('/DND/1001', 'YES'), ('/DND/1002', 'YES');
             CREATE TABLE other(x INTEGER);",
        )
        .unwrap();
        let before = fingerprints(&p).unwrap();
        let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["astdb", "astdb family CF", "astdb family DND", "other"]
        );
        // Row order does not matter; a change in one family shows in it alone.
        c.execute_batch("DELETE FROM astdb WHERE key = '/DND/1001'; INSERT INTO astdb VALUES ('/DND/1001', 'YES');").unwrap();
        assert_eq!(fingerprints(&p).unwrap(), before);
        c.execute("UPDATE astdb SET value = '1003' WHERE key = '/CF/1001'", [])
            .unwrap();
        let after = fingerprints(&p).unwrap();
        let changed: Vec<&str> = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a.0.as_str())
            .collect();
        assert_eq!(changed, ["astdb family CF"]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
