//! `[replication]` and its jobs: what the Main copies to the Standby, and
//! how (TLS under the cluster CA, deadlines, limits).

use super::node::default_true;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[replication]`: Main → Standby copies over TLS under the cluster CA.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationSection {
    /// Where this node accepts pushes (used while it is the Standby).
    pub listen: SocketAddr,
    /// The peer's replication address (pushed to while this node is the Main).
    pub peer: SocketAddr,
    /// The cluster CA (`resilience cert init`) and this node's certificate
    /// and key (`resilience cert issue NAME`).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often the Main pushes every job. Default: 1h
    #[serde(with = "humantime_serde", default = "default_replication_interval")]
    pub interval: Duration,
    /// How long a changed watched folder stays quiet before it is pushed.
    #[serde(with = "humantime_serde", default = "default_debounce")]
    pub debounce: Duration,
    /// Longest wait for the peer's next bytes (or for it to take ours) in a
    /// session; then the session ends and the job is free again. It also
    /// covers the peer's scan of a folder before it answers. Default: 30s
    #[serde(with = "humantime_serde", default = "default_read_timeout")]
    pub read_timeout: Duration,
    /// Longest a whole session may last, however it trickles. Default: 6h
    #[serde(with = "humantime_serde", default = "default_session_timeout")]
    pub session_timeout: Duration,
    /// Longest a TLS handshake may take. Default: 10s
    #[serde(with = "humantime_serde", default = "default_handshake_timeout")]
    pub handshake_timeout: Duration,
    /// Connections the replication listener holds at once; more are closed
    /// at once (and counted). Default: 16
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default, rename = "dir")]
    pub dirs: Vec<DirJobSection>,
    #[serde(default, rename = "sqlite")]
    pub sqlite: Vec<SqliteJobSection>,
    #[serde(default, rename = "postgres")]
    pub postgres: Vec<PostgresJobSection>,
    /// Paths (under a replicated folder's `path`, written `JOB/relative`)
    /// that the Main fetches from the Standby at failback before it asks
    /// for the service (`failback.data_wait`, `failback.on_data_failure`),
    /// and that the Standby copies back once stopped (what its drain
    /// recorded): what it recorded while Active (voicemail, recordings)
    /// survives.
    #[serde(default)]
    pub keep_on_failback: Vec<String>,
}

/// One SQLite file (Asterisk's astdb), `[[replication.sqlite]]`: a snapshot
/// by SQLite's online backup, swapped in whole on the Standby.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteJobSection {
    pub name: String,
    /// The database file on this node.
    pub path: PathBuf,
}

/// One PostgreSQL database, `[[replication.postgres]]`: `pg_dump` on the
/// Main, restored on the Standby into a staging database that is swapped in
/// by a transactional rename, so the old copy stays until the new is whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresJobSection {
    pub name: String,
    /// The database name, same on both nodes.
    pub database: String,
    /// The local server: host name or socket folder. Default: 127.0.0.1
    #[serde(default = "default_pg_host")]
    pub host: String,
    /// Default: 5432
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// A superuser or the database's owner. Default: postgres
    #[serde(default = "default_pg_user")]
    pub user: String,
    /// A libpq password file (PGPASSFILE). Default: none
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Folder of pg_dump, pg_restore and psql. Default: found on PATH
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
    /// Tables whose rows are not copied (call logs, local settings): their
    /// schema is, and the Standby keeps its own rows.
    #[serde(default)]
    pub exclude_tables: Vec<String>,
    /// Tables fingerprinted after each restore; at failback the Standby
    /// reports those that changed while it was Active.
    #[serde(default)]
    pub report_tables: Vec<String>,
    /// Push soon after a commit writes to the database (its write counters
    /// are read every `watch_poll`; pushed once quiet for
    /// `replication.debounce`), not only every `replication.interval`.
    /// Default: true
    #[serde(default = "default_true")]
    pub watch: bool,
    /// How often the write counters are read. Default: 1s
    #[serde(with = "humantime_serde", default = "default_pg_watch_poll")]
    pub watch_poll: Duration,
}

fn default_pg_watch_poll() -> Duration {
    Duration::from_secs(1)
}

fn default_pg_host() -> String {
    "127.0.0.1".into()
}
fn default_pg_port() -> u16 {
    5432
}
fn default_pg_user() -> String {
    "postgres".into()
}

/// One replicated folder, `[[replication.dir]]`; same name on both nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirJobSection {
    pub name: String,
    /// The folder on this node.
    pub path: PathBuf,
    /// Glob patterns of paths (relative to `path`) or names left out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Push as soon as something changes in it (debounced), besides the schedule.
    #[serde(default)]
    pub watch: bool,
    /// Who owns what replication creates in this folder on the receiving
    /// node: a user name or a numeric id. Default: the folder's own owner
    /// (owners are never copied from the other node, so never root by
    /// accident).
    #[serde(default)]
    pub owner: Option<Principal>,
    /// The group of what replication creates: a group name or a numeric id.
    /// Default: the folder's own group.
    #[serde(default)]
    pub group: Option<Principal>,
}

/// A user or a group, by name (`"asterisk"`) or numeric id (`1000` or `"1000"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Principal {
    Id(u32),
    Name(String),
}

impl Principal {
    /// The numeric id, when it is one (a name of digits counts, as for chown).
    pub fn id(&self) -> Option<u32> {
        match self {
            Principal::Id(n) => Some(*n),
            Principal::Name(s) => s.parse().ok(),
        }
    }

    /// Whether this can name a user or group: a numeric id, or a name of 1
    /// to 32 letters, digits, `_`, `.` or `-` (not first), `$` last allowed.
    pub fn is_valid(&self) -> bool {
        match self {
            Principal::Id(_) => true,
            Principal::Name(s) => {
                let body = s.strip_suffix('$').unwrap_or(s);
                !body.is_empty()
                    && s.len() <= 32
                    && !body.starts_with('-')
                    && body
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            }
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Id(n) => write!(f, "{n}"),
            Principal::Name(s) => write!(f, "{s}"),
        }
    }
}

fn default_replication_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_debounce() -> Duration {
    Duration::from_secs(2)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_connections() -> usize {
    16
}
