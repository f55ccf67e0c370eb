//! The state database on a thread of its own.
//!
//! SQLite calls block, and a commit waits for an fsync: a fraction of a
//! millisecond usually, tens of milliseconds on a busy disk, forever on a
//! hung one. The node loop must keep sending heartbeats whatever the disk
//! does (a node that serves but falls silent makes its peer start too), so
//! it never touches the database: it hands writes and queries to this
//! thread, and results come back as messages. The queue is bounded: when
//! the disk cannot keep up, history lines are dropped and counted, a facts
//! write is reported failed, and a query goes unanswered (the API says so).

use super::store::{EventsPage, Store, StoredEvent};
use super::Msg;
use crate::status::StateWord;
use resilience_core::{ActionError, ActionId, ActionOutcome, Persisted};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Jobs waiting for the disk, at most.
const QUEUE: usize = 4096;

enum Job {
    Event {
        at_ms: i64,
        kind: String,
        text: String,
        state: Option<StateWord>,
    },
    Facts(ActionId, Persisted),
    Events(EventsPage, oneshot::Sender<Vec<StoredEvent>>),
    StateEvents(i64, oneshot::Sender<Vec<StoredEvent>>),
    /// Answered once every job before it is done.
    Flush(mpsc::Sender<()>),
}

/// The loop's handle on the store's thread; the thread ends when this is
/// dropped and the queue is empty.
pub struct StoreThread {
    jobs: SyncSender<Job>,
    dropped: Arc<AtomicU64>,
}

impl StoreThread {
    /// Move `store` to its own thread; facts results go to `done` as
    /// [`Msg::Persisted`].
    pub fn spawn(mut store: Store, done: tokio::sync::mpsc::Sender<Msg>) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("resilience-store".into())
            .spawn(move || {
                for job in queue {
                    match job {
                        Job::Event {
                            at_ms,
                            kind,
                            text,
                            state,
                        } => {
                            if let Err(err) = store.append_event(at_ms, &kind, &text, state) {
                                tracing::error!("event history: {err}");
                            }
                        }
                        Job::Facts(id, facts) => {
                            let r = store
                                .save_facts(&facts)
                                .map(|_| ActionOutcome::Done)
                                .map_err(|e| ActionError(e.to_string()));
                            if done.blocking_send(Msg::Persisted(id, r)).is_err() {
                                return;
                            }
                        }
                        Job::Events(limit, reply) => {
                            let _ = reply.send(store.events(limit).unwrap_or_default());
                        }
                        Job::StateEvents(since, reply) => {
                            let _ = reply.send(store.state_events(since).unwrap_or_default());
                        }
                        Job::Flush(reply) => {
                            let _ = reply.send(());
                        }
                    }
                }
            })?;
        Ok(StoreThread {
            jobs,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Append a line to the history (dropped and counted when the disk is behind).
    pub fn event(&self, at_ms: i64, kind: &str, text: &str) {
        self.append(at_ms, kind, text, None);
    }

    /// Append a line that puts a timeline row in `state` (this node's
    /// serving flag, or the peer's state as heard).
    pub fn state_event(&self, at_ms: i64, kind: &str, text: &str, state: StateWord) {
        self.append(at_ms, kind, text, Some(state));
    }

    fn append(&self, at_ms: i64, kind: &str, text: &str, state: Option<StateWord>) {
        let job = Job::Event {
            at_ms,
            kind: kind.to_owned(),
            text: text.to_owned(),
            state,
        };
        if self.jobs.try_send(job).is_err() && self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::error!(
                "event history: the state database is not keeping up; dropping history lines"
            );
        }
    }

    /// Write the core's facts; the result comes back as [`Msg::Persisted`].
    /// An error now means the write could not even be queued.
    pub fn facts(&self, id: ActionId, facts: Persisted) -> Result<(), ActionError> {
        self.jobs.try_send(Job::Facts(id, facts)).map_err(|e| {
            ActionError(match e {
                TrySendError::Full(_) => "the state database is not keeping up".into(),
                TrySendError::Disconnected(_) => "the state database thread stopped".into(),
            })
        })
    }

    /// One page of events, to `reply` (dropped when the disk is behind).
    pub fn events(&self, page: EventsPage, reply: oneshot::Sender<Vec<StoredEvent>>) {
        let _ = self.jobs.try_send(Job::Events(page, reply));
    }

    /// The timeline's events since `since_ms`, to `reply`.
    pub fn state_events(&self, since_ms: i64, reply: oneshot::Sender<Vec<StoredEvent>>) {
        let _ = self.jobs.try_send(Job::StateEvents(since_ms, reply));
    }

    /// Wait (at most `timeout`) until what was queued before is on disk: the
    /// daemon calls it before it exits or re-executes itself. Whether it
    /// finished in time.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        if self.jobs.try_send(Job::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }

    /// History lines dropped because the disk was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_in_order_and_answers_through_messages() {
        let dir =
            std::env::temp_dir().join(format!("resilience-store-thread-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, _) = Store::open(&dir).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let st = StoreThread::spawn(store, tx).unwrap();
        st.event(1, "booted", "first");
        st.event(2, "active", "second");
        let facts = Persisted {
            epoch: 7,
            starts: 3,
            admin: None,
            serving: false,
        };
        st.facts(ActionId(9), facts).unwrap();
        match rx.recv().await {
            Some(Msg::Persisted(ActionId(9), Ok(ActionOutcome::Done))) => {}
            _ => panic!("facts result expected"),
        }
        let (reply, answer) = oneshot::channel();
        st.events(
            EventsPage {
                limit: 10,
                before: None,
            },
            reply,
        );
        let texts: Vec<String> = answer.await.unwrap().into_iter().map(|e| e.text).collect();
        assert_eq!(texts, ["second", "first"]);
        assert_eq!(st.dropped(), 0);
        drop(st);
        let (store, _) = Store::open(&dir).unwrap();
        assert_eq!(store.load_facts().unwrap(), facts);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
