//! Disk work beside the TLS stream, not in turn with it.
//!
//! A sync is two kinds of work: file I/O and hashing, which block, and TLS
//! and socket I/O, which the async task does. Done one after the other in
//! one task, each waits for the other (and `block_in_place` for every chunk
//! costs a thread hand-off). Here a blocking thread does the file side and
//! hands frames over a bounded channel, so reading the next chunk overlaps
//! encrypting the last one (sender), and writing a chunk overlaps decrypting
//! the next (receiver). Buffers go back to the thread that fills them, so a
//! gigabyte costs a handful of allocations.

use super::wire::{self, Kind, WireError};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// Frames in flight between the two sides of a pipe: enough to keep both
/// busy, few enough that memory stays a few megabytes.
const DEPTH: usize = 16;

type Frame = (Kind, Vec<u8>);

/// The sending thread's end: frames to write, and spent buffers to reuse.
pub struct Out {
    tx: mpsc::Sender<Frame>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
}

/// The stream is gone (the writer stopped); the thread should stop too.
#[derive(Debug, thiserror::Error)]
#[error("the replication stream closed")]
pub struct Closed;

impl Out {
    /// An empty buffer with room for a chunk, reused when one came back.
    pub fn buffer(&self) -> Vec<u8> {
        match self.free.try_recv() {
            Ok(mut b) => {
                b.clear();
                b
            }
            Err(_) => Vec::with_capacity(wire::CHUNK),
        }
    }

    pub fn send(&self, kind: Kind, payload: Vec<u8>) -> Result<(), Closed> {
        self.tx.blocking_send((kind, payload)).map_err(|_| Closed)
    }

    pub fn json<T: Serialize>(&self, kind: Kind, v: &T) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(v)?;
        Ok(self.send(kind, bytes)?)
    }
}

/// Run `work` on a blocking thread and write every frame it sends to `s`,
/// in order. Returns what `work` returns; a write error stops `work` at its
/// next send and is the error returned.
pub async fn produce<S, T>(
    s: &mut S,
    work: impl FnOnce(&Out) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T>
where
    S: AsyncWrite + Unpin,
    T: Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Frame>(DEPTH);
    let (free_tx, free) = std::sync::mpsc::channel();
    let worker = tokio::task::spawn_blocking(move || work(&Out { tx, free }));
    let mut failed: Option<WireError> = None;
    while let Some((kind, buf)) = rx.recv().await {
        if let Err(e) = wire::write_frame(s, kind, &buf).await {
            failed = Some(e);
            break;
        }
        if buf.capacity() >= wire::CHUNK {
            let _ = free_tx.send(buf);
        }
    }
    drop(rx);
    let r = worker.await?;
    match failed {
        Some(e) => Err(e.into()),
        None => r,
    }
}

/// The receiving thread's end: frames as they arrive, and a way to hand
/// buffers back.
pub struct In {
    rx: mpsc::Receiver<Frame>,
    free: std::sync::mpsc::Sender<Vec<u8>>,
}

impl In {
    /// The next frame; an error if the stream ended without `Done` (the
    /// reader's own error, the more precise one, is what the session
    /// reports).
    pub fn next(&mut self) -> anyhow::Result<Frame> {
        self.rx
            .blocking_recv()
            .ok_or_else(|| anyhow::anyhow!("the replication stream was cut"))
    }

    pub fn recycle(&self, buf: Vec<u8>) {
        if buf.capacity() >= wire::CHUNK {
            let _ = self.free.send(buf);
        }
    }
}

/// Read frames from `s` up to and including `Done` and hand them to `work`
/// on a blocking thread. A read error (cut stream, `Error` frame, bad frame)
/// wins over what `work` says of the missing rest.
pub async fn consume<S, T>(
    s: &mut S,
    work: impl FnOnce(&mut In) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T>
where
    S: AsyncRead + Unpin,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Frame>(DEPTH);
    let (free, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let worker = tokio::task::spawn_blocking(move || work(&mut In { rx, free }));
    let mut failed: Option<WireError> = None;
    loop {
        let mut buf = free_rx
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(wire::CHUNK));
        // A worker that stopped (a refused path, a full disk) ends the
        // session now, not when the other side sends more.
        let read = tokio::select! {
            r = wire::read_frame(s, &mut buf) => r,
            () = tx.closed() => break,
        };
        let kind = match read {
            Ok(k) => k,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        // The worker stopped early: its error is the answer.
        if tx.send((kind, buf)).await.is_err() || kind == Kind::Done {
            break;
        }
    }
    drop(tx);
    let r = worker.await?;
    match failed {
        Some(e) => Err(e.into()),
        None => r,
    }
}
