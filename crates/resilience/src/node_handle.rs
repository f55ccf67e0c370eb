//! The narrow handle other tasks hold on the node's loop: the messages it
//! hears ([`Msg`]), the history types they ask for, and the state the API and
//! dashboard read ([`ApiState`]). The API and the dashboard depend on this,
//! not on the node's internals, so the node can start the API without a
//! cycle between them.

use crate::services::ServiceState;
use metrics_exporter_prometheus::PrometheusHandle;
use resilience_core::{ActionError, ActionId, ActionOutcome, Command, PbxHealth};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// What the loop hears from the other tasks.
pub enum Msg {
    Datagram(SocketAddr, Vec<u8>),
    Command(Command, oneshot::Sender<Result<String, Refused>>),
    Events(EventsPage, oneshot::Sender<Vec<StoredEvent>>),
    /// The state events the timeline needs since a time (unix ms).
    StateEvents(i64, oneshot::Sender<Vec<StoredEvent>>),
    ActionDone(ActionId, Result<ActionOutcome, ActionError>),
    /// The store's thread wrote (or failed to write) the core's facts.
    Persisted(ActionId, Result<ActionOutcome, ActionError>),
    Pbx(PbxHealth),
    Arbiter(bool),
    ServiceStates(Vec<ServiceState>),
    /// An event of the runtime's own (replication), for the history.
    Note(&'static str, String),
    /// The new binary's check of the config before a re-exec (SIGHUP).
    RestartChecked(Result<(), RestartCheckError>),
}

/// Why the node refused a command (the core's reason, shown to the admin).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Why the new binary's check of the config (before a re-exec) failed.
#[derive(Debug, thiserror::Error)]
pub enum RestartCheckError {
    #[error("`{} check-config` did not answer within 20s", .0.display())]
    NoAnswer(PathBuf),
    #[error("cannot run {}: {source}", exe.display())]
    Run {
        exe: PathBuf,
        source: std::io::Error,
    },
    /// What the binary printed (stdout then stderr).
    #[error("`{} check-config {}` failed: {output}", exe.display(), config.display())]
    Refused {
        exe: PathBuf,
        config: PathBuf,
        output: String,
    },
}

/// One event as stored: the history's row is the API's ([`EventRow`](crate::status::EventRow)).
pub use crate::status::EventRow as StoredEvent;

/// Which page of the history to read: the API pages it so that no
/// request makes the node hold more than one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsPage {
    pub limit: usize,
    /// Only events whose id is below this (the cursor of the previous page).
    pub before: Option<i64>,
}

/// What the API and the dashboard read and where they send commands.
#[derive(Clone)]
pub struct ApiState {
    pub tx: mpsc::Sender<Msg>,
    /// Typed, with the core's snapshot: the push permission is the
    /// core's rule over it. `None` until the loop's first step.
    pub status: watch::Receiver<Option<crate::status::NodeView>>,
    pub ha: watch::Receiver<Option<crate::status::HaStatus>>,
    pub token: Arc<String>,
    pub metrics: PrometheusHandle,
    pub replicator: Option<Arc<crate::replication::Replicator>>,
    /// What `[pbx_settings]` changed at start (files, reload, warning).
    pub pbx_settings: Arc<serde_json::Value>,
}
