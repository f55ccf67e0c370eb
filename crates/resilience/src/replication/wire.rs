//! The replication stream's framing: `[kind u8][length u32 BE][payload]`.
//!
//! Written by hand because it is nine lines of framing over a TLS stream;
//! control messages are JSON (serde), file contents are raw `Data` frames so
//! a gigabyte is not turned into text. A frame longer than [`MAX_FRAME`] or of
//! an unknown kind ends the session with an error, never a panic.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted (a manifest of a big tree is the largest).
pub const MAX_FRAME: usize = 64 << 20;
/// File contents travel in chunks of this size.
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
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
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
    if payload.len() > MAX_FRAME {
        return Err(WireError::TooLarge(payload.len()));
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
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
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
            Err(WireError::TooLarge(_))
        ));
        let mut r: &[u8] = &[4, 0, 0, 0, 9, 1, 2];
        assert!(matches!(
            read_frame(&mut r, &mut buf).await,
            Err(WireError::Io(_))
        ));
    }
}
