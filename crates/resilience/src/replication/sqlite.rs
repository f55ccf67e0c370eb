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
}
