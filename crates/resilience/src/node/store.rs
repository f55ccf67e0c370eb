//! The node's durable state, in SQLite under the state directory: the facts
//! the core restarts from (epoch, start count, an admin's choice) and the
//! event history (bounded, newest first). None of it is needed for the peer
//! to hear this node again (see the heartbeat module): losing it costs the
//! admin's hold and the history, never a second Active.
//!
//! A damaged database (not SQLite, or failing SQLite's `quick_check`) is
//! moved aside (`state.db.corrupt-<unix time>`) and recreated; the node
//! starts as on a first boot and says so, rather than crash-looping. Any
//! other failure (unreadable, locked by another process past the busy
//! timeout, read-only, disk full) is an error that stops the start and
//! leaves the file alone: its facts (epoch, an admin's hold) are sound, and
//! forgetting them would be worse than not starting.

use crate::status::StateWord;
use resilience_core::node::AdminChoice;
use resilience_core::Persisted;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "state.db";
/// Events kept; older ones are pruned.
pub const KEEP_EVENTS: i64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("state database {0}: {1}")]
    Sql(PathBuf, rusqlite::Error),
    #[error("moving the damaged state database {0} aside: {1}")]
    MoveAside(PathBuf, std::io::Error),
    #[error("state database {0}: damaged ({1})")]
    Damaged(PathBuf, String),
    /// Kept apart from [`StoreError::Sql`]: a database this version cannot
    /// extend (read-only, disk full, locked) is not damaged, and is never
    /// moved aside — its facts (epoch, an admin's hold) stay.
    #[error("state database {0}: cannot add the events' state column ({1}); the database is left as it was")]
    Migrate(PathBuf, rusqlite::Error),
}

pub use crate::node_handle::{EventsPage, StoredEvent};

/// One `SELECT id, at_ms, kind, text, state` row.
fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    let state: Option<String> = r.get(4)?;
    Ok(StoredEvent {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        kind: r.get(2)?,
        text: r.get(3)?,
        state: state.as_deref().and_then(StateWord::parse),
    })
}

/// Adds the `state` column to an events table made before it, and fills it
/// for the rows the timeline reads, from their text (the only record an
/// older version kept; its own `active` rows are matched without the
/// reason the text ends with).
fn migrate_state_column(conn: &mut Connection) -> rusqlite::Result<()> {
    let has: bool = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = 'state'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if has {
        return Ok(());
    }
    // One transaction: a failure part way leaves the table as it was.
    let tx = conn.transaction()?;
    tx.execute_batch(
        "ALTER TABLE events ADD COLUMN state TEXT;
         UPDATE events SET state = CASE
             WHEN kind = 'active' AND text LIKE '%from: false to: true%' THEN 'active'
             WHEN kind IN ('active', 'booted') THEN 'inactive'
             WHEN kind = 'peer_state' AND text LIKE '% active' THEN 'active'
             WHEN kind = 'peer_state' AND text LIKE '% inactive' THEN 'inactive'
             WHEN kind = 'peer_state' AND text LIKE '% silent' THEN 'silent'
           END
           WHERE kind IN ('active', 'booted', 'peer_state');",
    )?;
    tx.commit()
}

impl StoreError {
    /// The file is not a sound SQLite database: only then is it moved aside.
    fn is_damage(&self) -> bool {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        match self {
            StoreError::Damaged(..) => true,
            StoreError::Sql(_, rusqlite::Error::SqliteFailure(f, _)) => {
                matches!(f.code, DatabaseCorrupt | NotADatabase)
            }
            _ => false,
        }
    }
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    appended: u64,
}

use crate::clock::unix_ms;

impl Store {
    /// Open (or create) the store in `dir`. The second value, when present,
    /// says what was wrong with the old database and where it was moved.
    pub fn open(dir: &Path) -> Result<(Store, Option<String>), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir(dir.to_owned(), e))?;
        let path = dir.join(DB_FILE);
        match Self::open_checked(&path) {
            Ok(s) => Ok((s.migrated()?, None)),
            Err(e) if path.exists() && e.is_damage() => {
                let aside = dir.join(format!("{DB_FILE}.corrupt-{}", unix_ms(SystemTime::now())));
                std::fs::rename(&path, &aside)
                    .map_err(|io| StoreError::MoveAside(path.clone(), io))?;
                for ext in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(dir.join(format!("{DB_FILE}{ext}")));
                }
                let s = Self::open_checked(&path)?.migrated()?;
                Ok((
                    s,
                    Some(format!(
                        "state database {} was unreadable ({e}); moved to {} and recreated: starting from first-boot facts",
                        path.display(),
                        aside.display()
                    )),
                ))
            }
            Err(e) => Err(e),
        }
    }

    fn open_checked(path: &Path) -> Result<Store, StoreError> {
        let sql = |e| StoreError::Sql(path.to_owned(), e);
        let conn = Connection::open(path).map_err(sql)?;
        // Another process holding the database (an admin's sqlite3, a
        // backup) delays a write instead of failing it; the node loop never
        // waits for the store (store_thread.rs).
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(sql)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(sql)?;
        if check != "ok" {
            return Err(StoreError::Damaged(
                path.to_owned(),
                format!("quick_check: {check}"),
            ));
        }
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS facts (
                 key TEXT PRIMARY KEY,
                 value TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS events (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 at_ms INTEGER NOT NULL,
                 kind TEXT NOT NULL,
                 text TEXT NOT NULL
             );",
        )
        .map_err(sql)?;
        Ok(Store {
            conn,
            path: path.to_owned(),
            appended: 0,
        })
    }

    /// The schema of this version, after the database was found sound (a
    /// failure here is [`StoreError::Migrate`], never a reason to recreate).
    fn migrated(mut self) -> Result<Store, StoreError> {
        migrate_state_column(&mut self.conn)
            .map_err(|e| StoreError::Migrate(self.path.clone(), e))?;
        Ok(self)
    }

    fn sql(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Sql(self.path.clone(), e)
    }

    fn fact(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT value FROM facts WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// The facts the core restarts from (defaults on a first boot).
    pub fn load_facts(&self) -> Result<Persisted, StoreError> {
        let num = |k| -> Result<u64, StoreError> {
            Ok(self.fact(k)?.and_then(|v| v.parse().ok()).unwrap_or(0))
        };
        let admin = match self.fact("admin")?.as_deref() {
            Some("start") => Some(AdminChoice::Start),
            Some("stop") => Some(AdminChoice::Stop),
            Some("switched_away") => Some(AdminChoice::SwitchedAway),
            _ => None,
        };
        Ok(Persisted {
            epoch: num("epoch")?,
            starts: num("boot")?,
            admin,
            serving: self.fact("serving")?.as_deref() == Some("1"),
        })
    }

    /// Write the facts in one transaction, synchronously.
    pub fn save_facts(&mut self, p: &Persisted) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sql = |e| StoreError::Sql(path.clone(), e);
        let tx = self.conn.transaction().map_err(sql)?;
        let admin = match p.admin {
            Some(AdminChoice::Start) => "start",
            Some(AdminChoice::Stop) => "stop",
            Some(AdminChoice::SwitchedAway) => "switched_away",
            None => "",
        };
        for (k, v) in [
            ("epoch", p.epoch.to_string()),
            ("boot", p.starts.to_string()),
            ("admin", admin.to_string()),
            ("serving", if p.serving { "1" } else { "0" }.to_string()),
        ] {
            tx.execute(
                "INSERT INTO facts (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![k, v],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }

    /// Append an event (with the state it puts its timeline row in, if
    /// any); prune the oldest now and then.
    pub fn append_event(
        &mut self,
        at_ms: i64,
        kind: &str,
        text: &str,
        state: Option<StateWord>,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO events (at_ms, kind, text, state) VALUES (?1, ?2, ?3, ?4)",
                params![at_ms, kind, text, state.map(StateWord::as_str)],
            )
            .map_err(|e| self.sql(e))?;
        self.appended += 1;
        if self.appended.is_multiple_of(100) {
            self.conn
                .execute(
                    "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?1",
                    [KEEP_EVENTS],
                )
                .map_err(|e| self.sql(e))?;
        }
        Ok(())
    }

    /// What the timeline needs since `since_ms`: the state events (own
    /// `active`/`booted`, `peer_state`) in the window, plus the last of each
    /// row before it (the state the window opens with). Other events, however
    /// many, do not push these out.
    pub fn state_events(&self, since_ms: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, at_ms, kind, text, state FROM events
                   WHERE at_ms >= ?1 AND kind IN ('active', 'booted', 'peer_state')
                 UNION ALL
                 SELECT * FROM (SELECT id, at_ms, kind, text, state FROM events
                   WHERE at_ms < ?1 AND kind IN ('active', 'booted') ORDER BY id DESC LIMIT 1)
                 UNION ALL
                 SELECT * FROM (SELECT id, at_ms, kind, text, state FROM events
                   WHERE at_ms < ?1 AND kind = 'peer_state' ORDER BY id DESC LIMIT 1)",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([since_ms], event_row)
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.sql(e))
    }

    /// One page of the history, newest first: the newest `page.limit`
    /// events older than `page.before` (all when `None`).
    pub fn events(&self, page: EventsPage) -> Result<Vec<StoredEvent>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, at_ms, kind, text, state FROM events WHERE id < ?2 ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(
                [page.limit as i64, page.before.unwrap_or(i64::MAX)],
                event_row,
            )
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("resilience-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn facts_survive_reopen() {
        let d = tmp("facts");
        let (mut s, warn) = Store::open(&d).unwrap();
        assert!(warn.is_none());
        assert_eq!(s.load_facts().unwrap(), Persisted::default());
        let p = Persisted {
            epoch: 9,
            starts: 3,
            admin: Some(AdminChoice::Stop),
            serving: true,
        };
        s.save_facts(&p).unwrap();
        drop(s);
        let (s, _) = Store::open(&d).unwrap();
        assert_eq!(s.load_facts().unwrap(), p);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn state_events_outlive_a_flood_of_others() {
        let d = tmp("state-events");
        let (mut s, _) = Store::open(&d).unwrap();
        s.append_event(
            100,
            "active",
            "Updating resilience state, from: False to: True",
            Some(StateWord::Active),
        )
        .unwrap();
        s.append_event(
            150,
            "peer_state",
            "peer b is silent",
            Some(StateWord::Silent),
        )
        .unwrap();
        for i in 0..6000 {
            s.append_event(200 + i, "frame_rejected", "noise", None)
                .unwrap();
        }
        s.append_event(
            7000,
            "peer_state",
            "peer b is inactive",
            Some(StateWord::Inactive),
        )
        .unwrap();
        let got = s.state_events(1000).unwrap();
        let kinds: Vec<(i64, &str)> = got.iter().map(|e| (e.at_ms, e.kind.as_str())).collect();
        assert_eq!(
            kinds.len(),
            3,
            "the window's event and the state each row opens with: {kinds:?}"
        );
        assert!(kinds.contains(&(100, "active")) && kinds.contains(&(150, "peer_state")));
        assert!(kinds.contains(&(7000, "peer_state")));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn events_newest_first_and_bounded_listing() {
        let d = tmp("events");
        let (mut s, _) = Store::open(&d).unwrap();
        for i in 0..5 {
            s.append_event(i, "status", &format!("event {i}"), None)
                .unwrap();
        }
        let ev = s
            .events(EventsPage {
                limit: 3,
                before: None,
            })
            .unwrap();
        assert_eq!(
            ev.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            vec![4, 3, 2]
        );
        let next = s
            .events(EventsPage {
                limit: 3,
                before: ev.last().map(|e| e.id),
            })
            .unwrap();
        assert_eq!(
            next.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            vec![1, 0],
            "the next page starts below the cursor"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A database that cannot be opened but is not damaged (here: the path
    /// is a folder; in life: unreadable, locked, read-only) is an error and
    /// is left where it is, never moved aside.
    #[test]
    fn an_unopenable_database_is_an_error_and_stays_in_place() {
        let d = tmp("unopenable");
        std::fs::create_dir_all(d.join(DB_FILE)).unwrap();
        match Store::open(&d) {
            Err(e) => assert!(!e.is_damage(), "{e}"),
            Ok(_) => panic!("a folder opened as a database"),
        }
        assert!(d.join(DB_FILE).is_dir());
        let aside = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
        assert!(!aside, "moved aside");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Garbage where the database should be is damage: moved aside, and
    /// the node starts as on a first boot.
    #[test]
    fn a_file_that_is_not_sqlite_is_moved_aside_and_recreated() {
        let d = tmp("garbage");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(DB_FILE), [b'x'; 4096]).unwrap();
        let (s, warn) = Store::open(&d).unwrap();
        assert!(warn.is_some_and(|w| w.contains("moved to")));
        assert_eq!(s.load_facts().unwrap(), Persisted::default());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A sound database this version cannot extend is left in place with
    /// its facts, never moved aside as damaged (that would forget the
    /// epoch and an admin's hold). The failure is forced by an `events`
    /// that is a view: SQLite cannot add a column to one.
    #[test]
    fn a_failed_migration_keeps_the_database_and_its_facts() {
        let d = tmp("migrate-fails");
        std::fs::create_dir_all(&d).unwrap();
        {
            let c = Connection::open(d.join(DB_FILE)).unwrap();
            c.execute_batch(
                "CREATE TABLE facts (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO facts VALUES ('epoch', '7');
                 CREATE TABLE old_events (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL,
                                          kind TEXT NOT NULL, text TEXT NOT NULL);
                 CREATE VIEW events AS SELECT * FROM old_events;",
            )
            .unwrap();
        }
        match Store::open(&d) {
            Err(StoreError::Migrate(..)) => {}
            Err(e) => panic!("expected a migration error, got {e}"),
            Ok(_) => panic!("a view cannot gain a column"),
        }
        let aside: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .collect();
        assert!(aside.is_empty(), "moved aside: {aside:?}");
        let c = Connection::open(d.join(DB_FILE)).unwrap();
        let epoch: String = c
            .query_row("SELECT value FROM facts WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(epoch, "7");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A database of a version without the `state` column opens, and its
    /// state rows get their state from their text.
    #[test]
    fn an_older_events_table_gains_its_state_column() {
        let d = tmp("migrate");
        std::fs::create_dir_all(&d).unwrap();
        {
            let c = Connection::open(d.join(DB_FILE)).unwrap();
            c.execute_batch(
                "CREATE TABLE events (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     at_ms INTEGER NOT NULL,
                     kind TEXT NOT NULL,
                     text TEXT NOT NULL
                 );
                 INSERT INTO events (at_ms, kind, text) VALUES
                   (1, 'booted', 'node started'),
                   (2, 'active', 'Updating resilience state, from: false to: true — peer silent'),
                   (3, 'active', 'Updating resilience state, from: true to: false — failback'),
                   (4, 'peer_state', 'peer b is silent'),
                   (5, 'status', 'status active');",
            )
            .unwrap();
        }
        let (mut s, warn) = Store::open(&d).unwrap();
        assert!(warn.is_none(), "{warn:?}");
        s.append_event(6, "peer_state", "peer b is active", Some(StateWord::Active))
            .unwrap();
        let mut got = s
            .events(EventsPage {
                limit: 10,
                before: None,
            })
            .unwrap();
        got.reverse();
        let states: Vec<_> = got.iter().map(|e| (e.at_ms, e.state)).collect();
        use StateWord::*;
        assert_eq!(
            states,
            [
                (1, Some(Inactive)),
                (2, Some(Active)),
                (3, Some(Inactive)),
                (4, Some(Silent)),
                (5, None),
                (6, Some(Active)),
            ]
        );
        drop(s);
        // Opening it again does not migrate twice.
        let (s, _) = Store::open(&d).unwrap();
        assert_eq!(s.state_events(0).unwrap().len(), 5);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_database_is_moved_aside_and_recreated() {
        let d = tmp("corrupt");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join(DB_FILE),
            b"this is not a database, just garbage bytes ....",
        )
        .unwrap();
        let (s, warn) = Store::open(&d).unwrap();
        let warn = warn.expect("a warning");
        assert!(warn.contains("moved to"), "{warn}");
        assert_eq!(s.load_facts().unwrap(), Persisted::default());
        let aside = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
        assert!(aside, "old file kept for inspection");
        let _ = std::fs::remove_dir_all(&d);
    }
}
