//! The Main's side of "data comes home before the Main serves": the core
//! asks ([`ActionKind::FetchFailbackData`](resilience_core::ActionKind))
//! before it asks for the service back; this fetches the Standby's
//! `keep_on_failback` files, each checked against its hash and renamed into
//! place, within `failback.data_wait`. The answer is the action's result.

use super::Replicator;
use std::sync::Arc;
use std::time::Duration;

/// Fetch the kept files from the Standby, bounded by `wait`. An error says
/// why, in words for the status and the dashboard.
pub async fn fetch(r: Option<Arc<Replicator>>, wait: Duration) -> Result<u64, String> {
    let Some(r) = r else {
        return Err("no [replication] table: nothing to fetch the kept paths with".into());
    };
    match tokio::time::timeout(wait, r.fetch_kept()).await {
        Ok(Ok(files)) => {
            r.note(
                "replication",
                format!(
                    "failback: {files} keep_on_failback file(s) copied back from the standby and checked"
                ),
            );
            Ok(files)
        }
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!(
            "the copy took longer than failback.data_wait ({})",
            resilience_core::types::human(wait)
        )),
    }
}
