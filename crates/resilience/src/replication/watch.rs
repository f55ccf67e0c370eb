//! The Main's folder watch: a watched folder is pushed soon after it
//! changes, once it has been quiet for `debounce`, rather than only every
//! `interval` (the database's own watch is [`pg_watch`](super::pg_watch)).

use super::{Job, Replicator};
use anyhow::Context;
use std::sync::Arc;

impl Replicator {
    /// Main: push a watched folder soon after it changes (debounced), as
    /// long as `may_push` says this node is the one to push.
    pub fn watch(
        self: &Arc<Self>,
        may_push: impl Fn() -> bool + Send + Sync + 'static,
    ) -> anyhow::Result<Vec<notify::RecommendedWatcher>> {
        use notify::Watcher;
        let mut watchers = Vec::new();
        let may_push = Arc::new(may_push);
        self.watch_postgres(may_push.clone());
        for d in self.cfg.dirs.iter().filter(|d| d.watch) {
            let root = self.path(&d.path);
            std::fs::create_dir_all(&root)?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if let Ok(ev) = ev {
                    if !ev.kind.is_access() {
                        let _ = tx.send(());
                    }
                }
            })?;
            w.watch(&root, notify::RecursiveMode::Recursive)
                .with_context(|| format!("watch {}", root.display()))?;
            watchers.push(w);
            let (me, job, quiet, may) = (
                self.clone(),
                Job::Dir(d.clone()),
                self.cfg.debounce,
                may_push.clone(),
            );
            tokio::spawn(async move {
                while rx.recv().await.is_some() {
                    // Wait until the folder has been quiet for `debounce`.
                    while let Ok(Some(())) = tokio::time::timeout(quiet, rx.recv()).await {}
                    if may() {
                        tracing::info!("replication {}: folder changed, pushing", job.name());
                        let _ = me.push(&job).await;
                    }
                }
            });
        }
        Ok(watchers)
    }
}
