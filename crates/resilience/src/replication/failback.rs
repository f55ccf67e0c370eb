//! The Main's side of "data comes home before the Main serves": the core
//! asks ([`ActionKind::FetchFailbackData`](resilience_core::ActionKind))
//! before it asks for the service back; this fetches the Standby's
//! `keep_on_failback` files, each checked against its hash and renamed into
//! place, within `failback.data_wait`. The answer is the action's result.

use super::wire::{self, Kind};
use super::Replicator;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Why the kept files did not come home; the words go to the status and the
/// dashboard.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no [replication] table: nothing to fetch the kept paths with")]
    NoReplication,
    /// The session failed; every cause on one line.
    #[error("{0:#}")]
    Failed(anyhow::Error),
    #[error("the copy took longer than failback.data_wait ({})", resilience_core::types::human(*.0))]
    TimedOut(Duration),
}

/// Fetch the kept files from the Standby, bounded by `wait`.
pub async fn fetch(r: Option<Arc<Replicator>>, wait: Duration) -> Result<u64, FetchError> {
    let Some(r) = r else {
        return Err(FetchError::NoReplication);
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
        Ok(Err(e)) => Err(FetchError::Failed(e)),
        Err(_) => Err(FetchError::TimedOut(wait)),
    }
}

impl Replicator {
    /// Main, before it asks for the service back: fetch the Standby's
    /// `keep_on_failback` files that this node lacks or holds older, each
    /// checked against its hash before it is renamed into place. The number
    /// of files copied.
    pub async fn fetch_kept(&self) -> anyhow::Result<u64> {
        let _one = self.busy.lock().await;
        let mut files = 0;
        for d in &self.cfg.dirs {
            let prefixes = self.keep_prefixes(&d.name);
            if prefixes.is_empty() {
                continue;
            }
            let mut s = self.open_session(&d.name, true).await?;
            match self.receive_job(&mut s, d, Some(prefixes)).await {
                Ok(a) => {
                    wire::write_json(&mut s, Kind::Applied, &a).await?;
                    s.flush().await?;
                    let _ = s.shutdown().await;
                    files += a.files;
                }
                Err(e) => {
                    let _ = wire::write_json(&mut s, Kind::Error, &format!("{e:#}")).await;
                    let _ = s.flush().await;
                    return Err(e.context(format!("{}: keep_on_failback", d.name)));
                }
            }
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::FetchError;
    use std::time::Duration;

    /// The dashboard shows these words: every cause, and the limit.
    #[test]
    fn fetch_errors_say_why() {
        let e = anyhow::anyhow!("refused").context("spool: keep_on_failback");
        assert_eq!(
            FetchError::Failed(e).to_string(),
            "spool: keep_on_failback: refused"
        );
        assert!(FetchError::TimedOut(Duration::from_secs(30))
            .to_string()
            .starts_with("the copy took longer than failback.data_wait ("));
        assert_eq!(
            FetchError::NoReplication.to_string(),
            "no [replication] table: nothing to fetch the kept paths with"
        );
    }
}
