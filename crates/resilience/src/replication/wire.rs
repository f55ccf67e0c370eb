//! The replication stream's framing: `[kind u8][length u32 BE][payload]`.
//!
//! Written by hand because it is nine lines of framing over a TLS stream;
//! control messages are JSON (serde), file contents are raw `Data` frames so
//! a gigabyte is not turned into text. Each kind has its own size limit
//! ([`Kind::limit`]: a chunk for `Data`, [`MAX_MANIFEST`] for a manifest,
//! [`MAX_CONTROL`] for the rest); a frame over it, or of an unknown kind,
//! ends the session with an error, never a panic. A frame's buffer grows
//! with the bytes that arrive, so a header announcing megabytes costs
//! nothing until they come.
//!
//! [`Timed`] puts deadlines under the stream: no progress on a read or a
//! write for the read timeout, or any I/O past the session's deadline, is a
//! `TimedOut` error, so a silent or black-holed peer ends the session.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Largest manifest accepted (a tree of some 100,000 files).
pub const MAX_MANIFEST: usize = 16 << 20;
/// Largest control frame (hello, file head, operation, error, result).
pub const MAX_CONTROL: usize = 1 << 20;
/// File contents travel in chunks of this size (the largest `Data` frame).
pub const CHUNK: usize = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Main → Standby: which job, and the protocol version.
    Hello = 1,
    /// Standby → Main: what the Standby holds (a JSON [`Manifest`](super::manifest::Manifest)).
    Manifest = 2,
    /// Main → Standby: a file follows ([`FileHead`]).
    FileStart = 3,
    /// Raw bytes of the current file.
    Data = 4,
    /// End of the current file ([`FileEnd`]).
    FileEnd = 5,
    /// A change that carries no content ([`Op`]).
    Op = 6,
    /// Main → Standby: no more changes.
    Done = 7,
    /// Either side: the session failed (a JSON string).
    Error = 8,
    /// Standby → Main: what was applied ([`Applied`]).
    Applied = 9,
}

impl Kind {
    /// The largest payload a frame of this kind may carry.
    pub fn limit(self) -> usize {
        match self {
            Kind::Data => CHUNK,
            Kind::Manifest => MAX_MANIFEST,
            _ => MAX_CONTROL,
        }
    }

    fn from_u8(b: u8) -> Option<Kind> {
        use Kind::*;
        [
            Hello, Manifest, FileStart, Data, FileEnd, Op, Done, Error, Applied,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("{kind:?} frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { kind: Kind, len: usize, max: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("bad {kind:?} message: {err}")]
    Json { kind: Kind, err: serde_json::Error },
    #[error("expected {want:?}, got {got:?}")]
    Unexpected { want: Kind, got: Kind },
    #[error("peer reported: {0}")]
    Remote(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub job: String,
    /// A Standby copying its `keep_on_failback` paths back to the Main.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileHead {
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub mtime_ns: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEnd {
    /// BLAKE3 of the bytes sent, hex.
    pub hash: String,
}

/// Changes without content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    Meta {
        path: String,
        mode: u32,
        mtime_ns: i64,
    },
    Delete {
        path: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Applied {
    pub files: u64,
    pub bytes: u64,
    pub deleted: u64,
    pub other: u64,
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    payload: &[u8],
) -> Result<(), WireError> {
    if payload.len() > kind.limit() {
        return Err(WireError::TooLarge {
            kind,
            len: payload.len(),
            max: kind.limit(),
        });
    }
    let mut head = [0u8; 5];
    head[0] = kind as u8;
    head[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    // Callers wrap the stream in a buffer: these two writes become one TLS
    // record with their neighbours, not two tiny ones.
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    Ok(())
}

pub async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    kind: Kind,
    v: &T,
) -> Result<(), WireError> {
    let bytes = serde_json::to_vec(v).map_err(|err| WireError::Json { kind, err })?;
    write_frame(w, kind, &bytes).await
}

/// Read one frame into `buf`; returns its kind.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Kind, WireError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    let kind = Kind::from_u8(head[0]).ok_or(WireError::UnknownKind(head[0]))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > kind.limit() {
        return Err(WireError::TooLarge {
            kind,
            len,
            max: kind.limit(),
        });
    }
    // Grown as bytes arrive (read_to_end reserves as it goes), never sized
    // from the header alone.
    buf.clear();
    let got = (&mut *r).take(len as u64).read_to_end(buf).await?;
    if got < len {
        return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if kind == Kind::Error {
        return Err(WireError::Remote(
            serde_json::from_slice(buf).unwrap_or_else(|_| "unreadable error".into()),
        ));
    }
    Ok(kind)
}

pub fn parse<T: DeserializeOwned>(kind: Kind, buf: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(buf).map_err(|err| WireError::Json { kind, err })
}

/// Read a frame that must be of kind `want`, parsed as JSON.
pub async fn expect<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    want: Kind,
) -> Result<T, WireError> {
    let mut buf = Vec::new();
    let got = read_frame(r, &mut buf).await?;
    if got != want {
        return Err(WireError::Unexpected { want, got });
    }
    parse(want, &buf)
}

/// A stream whose reads and writes fail with `TimedOut` when they make no
/// progress for `idle`, or go on past the session's deadline.
pub struct Timed<S> {
    inner: S,
    /// No progress for this long ends the session (None: the session's
    /// deadline only, while the peer works for longer, e.g. a restore).
    idle: Option<Duration>,
    /// The session's deadline.
    until: Instant,
    read: Option<Pin<Box<Sleep>>>,
    write: Option<Pin<Box<Sleep>>>,
}

impl<S> Timed<S> {
    pub fn new(inner: S, idle: Duration, session: Duration) -> Timed<S> {
        Timed {
            inner,
            idle: Some(idle),
            until: Instant::now() + session,
            read: None,
            write: None,
        }
    }

    /// Change the idle limit; applies from the next wait on.
    pub fn set_idle(&mut self, idle: Option<Duration>) {
        self.idle = idle;
        self.read = None;
        self.write = None;
    }

    /// Ready with an error when the pending operation's timer ran out.
    fn expired(
        timer: &mut Option<Pin<Box<Sleep>>>,
        idle: Option<Duration>,
        until: Instant,
        what: &str,
        cx: &mut Context<'_>,
    ) -> Option<std::io::Error> {
        let deadline = idle.map_or(until, |d| (Instant::now() + d).min(until));
        let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if t.as_mut().poll(cx).is_pending() {
            return None;
        }
        *timer = None;
        let why = match idle {
            Some(d) if Instant::now() < until => {
                format!("read deadline: no {what} for {}s", d.as_secs_f64())
            }
            _ => "session deadline reached".to_string(),
        };
        Some(std::io::Error::new(std::io::ErrorKind::TimedOut, why))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Timed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                me.read = None;
                Poll::Ready(r)
            }
            Poll::Pending => match Self::expired(&mut me.read, me.idle, me.until, "data", cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> Timed<S> {
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match op(Pin::new(&mut self.inner), cx) {
            Poll::Ready(r) => {
                self.write = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                match Self::expired(&mut self.write, self.idle, self.until, "progress", cx) {
                    Some(e) => Poll::Ready(Err(e)),
                    None => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().timed(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().timed(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().timed(cx, |s, cx| s.poll_shutdown(cx))
    }
}

/// Whether `e` (or what caused it) is a deadline of [`Timed`].
pub fn timed_out(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let mut out = Vec::new();
        write_json(
            &mut out,
            Kind::Hello,
            &Hello {
                version: 1,
                job: "etc".into(),
                keep: false,
            },
        )
        .await
        .unwrap();
        write_frame(&mut out, Kind::Data, b"abc").await.unwrap();
        let mut r = out.as_slice();
        let h: Hello = expect(&mut r, Kind::Hello).await.unwrap();
        assert_eq!(h.job, "etc");
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut r, &mut buf).await.unwrap(), Kind::Data);
        assert_eq!(buf, b"abc");
        // Unknown kind, oversized length, truncated stream: errors, no panic.
        let mut r: &[u8] = &[42, 0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut r, &mut buf).await,
            Err(WireError::UnknownKind(42))
        ));
        let mut r: &[u8] = &[4, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut r, &mut buf).await,
            Err(WireError::TooLarge { .. })
        ));
        // A Data frame is one chunk at most; a manifest may be larger.
        let mut r: &[u8] = &[4, 0, 4, 0, 1];
        assert!(matches!(
            read_frame(&mut r, &mut buf).await,
            Err(WireError::TooLarge {
                kind: Kind::Data,
                ..
            })
        ));
        assert!(
            write_frame(&mut Vec::new(), Kind::Data, &vec![0; CHUNK + 1])
                .await
                .is_err()
        );
        // A header announcing 16 MiB with 2 bytes behind it: an error, and
        // the buffer holds what came, not what was announced.
        let mut r: &[u8] = &[2, 1, 0, 0, 0, 1, 2];
        let mut buf = Vec::new();
        assert!(matches!(
            read_frame(&mut r, &mut buf).await,
            Err(WireError::Io(_))
        ));
        assert!(buf.capacity() < 1 << 20, "{}", buf.capacity());
        let mut r: &[u8] = &[4, 0, 0, 0, 9, 1, 2];
        assert!(matches!(
            read_frame(&mut r, &mut buf).await,
            Err(WireError::Io(_))
        ));
    }
}

#[cfg(test)]
mod timed_tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_peer_times_out_and_a_session_ends() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut t = Timed::new(a, Duration::from_millis(200), Duration::from_secs(2));
        let mut byte = [0u8; 1];
        // Data in time: read; then silence: TimedOut after the idle limit.
        b.write_all(b"x").await.unwrap();
        t.read_exact(&mut byte).await.unwrap();
        let e = t.read_exact(&mut byte).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("no data for 0.2s"), "{e}");
        // A peer that takes nothing: the write times out too.
        let e = t.write_all(&[0; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        // Without an idle limit, the session's deadline still holds.
        t.set_idle(None);
        let e = t.read_exact(&mut byte).await.unwrap_err();
        assert!(e.to_string().contains("session deadline"), "{e}");
        assert!(Instant::now() >= t.until);
    }
}
