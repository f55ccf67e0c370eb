//! PostgreSQL (XiVO's `xivo-master-slave-db-replication`, without its hourly
//! truncate-and-reload): the Main ships a `pg_dump` of the database, the
//! Standby restores it into a staging database and swaps it in with one
//! transactional rename. Until that rename commits, the Standby's database is
//! the old one, whole: a dump cut in transit never reaches `pg_restore`, and a
//! restore that fails drops the staging copy and leaves the old one serving.
//!
//! The PostgreSQL client tools (`pg_dump`, `pg_restore`, `psql`) do the work:
//! they are what an admin of the server already trusts, they follow the
//! server's format across versions, and they read the usual libpq settings.
//!
//! Excluded tables (call logs, local settings) travel as schema only; the
//! Standby copies its own rows of them into the staging database before the
//! swap, so they are never lost to a replication.

use resilience_core::config::PostgresJobSection;
use std::path::{Path, PathBuf};
use std::process::Stdio;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{tool}: could not run it: {err}")]
    Spawn { tool: String, err: std::io::Error },
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        tool: String,
        status: String,
        stderr: String,
    },
}

/// One configured database on this node.
pub struct Pg {
    job: PostgresJobSection,
    base: PathBuf,
}

/// Quote an identifier for SQL (`"name"`); names are validated plain.
fn ident(n: &str) -> String {
    format!("\"{}\"", n.replace('"', "\"\""))
}

/// Quote a string literal for SQL.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Pg {
    pub fn new(job: &PostgresJobSection, base: &Path) -> Pg {
        Pg {
            job: job.clone(),
            base: base.to_owned(),
        }
    }

    fn staging(&self) -> String {
        format!("{}__resilience_staging", self.job.database)
    }

    fn old(&self) -> String {
        format!("{}__resilience_old", self.job.database)
    }

    // TODO(layers): `resolve` comes from `node`, which depends on
    // replication (a cycle); it moves to the leaf module `paths.rs`.
    fn command(&self, tool: &str) -> tokio::process::Command {
        let exe = match &self.job.bin_dir {
            Some(d) => crate::paths::resolve(&self.base, d).join(tool),
            None => PathBuf::from(tool),
        };
        let mut c = tokio::process::Command::new(exe);
        c.env("PGHOST", &self.job.host)
            .env("PGPORT", self.job.port.to_string())
            .env("PGUSER", &self.job.user)
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGDATABASE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(f) = &self.job.password_file {
            c.env("PGPASSFILE", crate::paths::resolve(&self.base, f));
        }
        c
    }

    async fn run(&self, tool: &str, args: &[&str]) -> Result<String, PgError> {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .await
            .map_err(|err| PgError::Spawn {
                tool: tool.into(),
                err,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(PgError::Failed {
                tool: tool.into(),
                status: out.status.to_string(),
                stderr: stderr.trim().chars().take(2000).collect(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Run SQL against database `db`, stopping at the first error.
    async fn psql(&self, db: &str, sql: &str) -> Result<String, PgError> {
        let args = [
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-c",
            sql,
        ];
        self.run("psql", &args).await
    }

    /// Run SQL against the maintenance database.
    async fn admin(&self, sql: &str) -> Result<String, PgError> {
        self.psql("postgres", sql).await
    }

    async fn exists(&self, db: &str) -> Result<bool, PgError> {
        let out = self
            .admin(&format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                literal(db)
            ))
            .await?;
        Ok(out.trim() == "1")
    }

    /// Main: dump the database to `out` (custom format), excluded tables'
    /// rows left out.
    pub async fn dump(&self, out: &Path) -> Result<(), PgError> {
        let out_s = out.display().to_string();
        let mut args = vec!["-F", "c", "-f", &out_s, "-d", &self.job.database];
        let excl: Vec<String> = self
            .job
            .exclude_tables
            .iter()
            .map(|t| format!("--exclude-table-data={t}"))
            .collect();
        args.extend(excl.iter().map(String::as_str));
        self.run("pg_dump", &args).await.map(|_| ())
    }

    /// Standby: restore `dump` into staging, carry over the excluded tables'
    /// own rows, and swap it in. On any error the staging copy is dropped and
    /// the database in service is the old one.
    pub async fn install(&self, dump: &Path, scratch: &Path) -> Result<(), PgError> {
        let r = self.install_inner(dump, scratch).await;
        if r.is_err() {
            let _ = self
                .admin(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    ident(&self.staging())
                ))
                .await;
        }
        let _ = std::fs::remove_file(scratch);
        r
    }

    async fn install_inner(&self, dump: &Path, scratch: &Path) -> Result<(), PgError> {
        let (db, staging, old) = (&self.job.database, self.staging(), self.old());
        // Leftovers of a session cut before: a staging copy never swapped in,
        // an old copy whose drop did not run.
        for leftover in [&staging, &old] {
            self.admin(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                ident(leftover)
            ))
            .await?;
        }
        let had_db = self.exists(db).await?;
        let owner = if had_db {
            self.admin(&format!(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = {}",
                literal(db)
            ))
            .await?
            .trim()
            .to_owned()
        } else {
            self.job.user.clone()
        };
        self.admin(&format!(
            "CREATE DATABASE {} OWNER {} TEMPLATE template0",
            ident(&staging),
            ident(&owner)
        ))
        .await?;
        let dump_s = dump.display().to_string();
        self.run("pg_restore", &["--exit-on-error", "-d", &staging, &dump_s])
            .await?;
        if had_db && !self.job.exclude_tables.is_empty() {
            self.keep_own_rows(&staging, scratch).await?;
        }
        self.swap_in(had_db).await
    }

    /// Copy this node's own rows of the excluded tables (call logs, local
    /// settings) into `staging`, through the dump file `scratch`: the push
    /// brought their schema only.
    async fn keep_own_rows(&self, staging: &str, scratch: &Path) -> Result<(), PgError> {
        let db = &self.job.database;
        let scratch_s = scratch.display().to_string();
        let mut args = vec!["-F", "c", "--data-only", "-f", &scratch_s, "-d", db];
        let tables: Vec<String> = self
            .job
            .exclude_tables
            .iter()
            .map(|t| format!("--table={t}"))
            .collect();
        args.extend(tables.iter().map(String::as_str));
        self.run("pg_dump", &args).await?;
        self.run(
            "pg_restore",
            &[
                "--exit-on-error",
                "--data-only",
                "--disable-triggers",
                "-d",
                staging,
                &scratch_s,
            ],
        )
        .await?;
        Ok(())
    }

    /// Put `staging` in the database's place, in one transaction when the
    /// database existed, then drop the old copy.
    async fn swap_in(&self, had_db: bool) -> Result<(), PgError> {
        let (db, staging, old) = (&self.job.database, self.staging(), self.old());
        // The swap: both renames commit together or not at all.
        let swap = if had_db {
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = {} AND pid <> pg_backend_pid(); \
                 BEGIN; ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}; COMMIT;",
                literal(db),
                ident(db),
                ident(&old),
                ident(&staging),
                ident(db)
            )
        } else {
            format!("ALTER DATABASE {} RENAME TO {}", ident(&staging), ident(db))
        };
        self.admin(&swap).await?;
        if had_db {
            if let Err(e) = self
                .admin(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    ident(&old)
                ))
                .await
            {
                tracing::warn!("replication: the old copy of {db} stays as {old}: {e}");
            }
        }
        Ok(())
    }

    /// Rows written so far to the tables whose rows are replicated (the
    /// server's own counters, `pg_stat_user_tables`; excluded tables left
    /// out, so call logs written at every call do not trigger a push). A
    /// change between two readings means something committed (or rolled
    /// back) since: see `pg_watch`.
    pub async fn writes(&self) -> Result<u64, PgError> {
        let excluded: Vec<String> = self.job.exclude_tables.iter().map(|t| literal(t)).collect();
        let filter = if excluded.is_empty() {
            String::new()
        } else {
            let list = excluded.join(", ");
            format!(
                " WHERE relname NOT IN ({list}) AND schemaname || '.' || relname NOT IN ({list})"
            )
        };
        let sql = format!(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables{filter}"
        );
        let out = self.psql(&self.job.database, &sql).await?;
        out.trim().parse().map_err(|_| PgError::Failed {
            tool: "psql".into(),
            status: "unexpected answer".into(),
            stderr: out.trim().chars().take(200).collect(),
        })
    }

    /// A fingerprint of each report table (md5 over its rows), to tell after
    /// a failover which of them changed. Missing tables are left out.
    pub async fn fingerprints(&self) -> Result<Vec<(String, String)>, PgError> {
        let mut out = Vec::new();
        for t in &self.job.report_tables {
            let sql = format!(
                "SELECT md5(coalesce(string_agg(r::text, E'\\n' ORDER BY r::text), '')) FROM {} r",
                t.split('.').map(ident).collect::<Vec<_>>().join(".")
            );
            match self.psql(&self.job.database, &sql).await {
                Ok(h) => out.push((t.clone(), h.trim().to_owned())),
                Err(e) => tracing::debug!("replication: no fingerprint of {t}: {e}"),
            }
        }
        Ok(out)
    }
}
