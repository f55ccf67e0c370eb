//! The heartbeat wire format: one small authenticated UDP frame.
//!
//! Written by hand because it is 80-odd bytes of fixed fields; a general
//! serialisation crate would add a dependency and hide the layout that an
//! admin reading a capture (or a fuzzer) needs to see. Layout, big-endian:
//!
//! ```text
//!  0  magic "RSHB"           4
//!  4  version (1)            1
//!  5  node type              1   0 disabled, 1 main, 2 standby
//!  6  mode                   1   0 automatic, 1 manual
//!  7  status                 1   0 inactive .. 4 stopping
//!  8  PBX health             1   0 unknown, 1 up, 2 down
//!  9  flags                  1   see [`Flags`]
//! 10  reserved, zero         2
//! 12  boot id                8   grows at every start of the sender
//! 20  sequence               8   grows at every frame within one boot
//! 28  epoch                  8   grows at every activation in the cluster
//! 36  replication generation 8
//! 44  active calls           4   u32::MAX when unknown
//! 48  name length n          1   1..=64
//! 49  name                   n   UTF-8
//! 49+n HMAC-SHA256 tag      32   over every byte before it
//! ```
//!
//! [`decode`] checks size, magic and version, then the tag (in constant time)
//! before it trusts any field. Replay and staleness need memory of the peer:
//! [`ReplayGuard`] holds it.

use crate::types::{Mode, NodeType, PbxHealth, Status};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"RSHB";
/// The only version this build speaks.
pub const VERSION: u8 = 1;
/// Length of the HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;
/// Longest node name on the wire.
pub const MAX_NAME: usize = 64;
const HEADER_LEN: usize = 49;
/// Smallest well-formed frame (one-byte name).
pub const MIN_FRAME: usize = HEADER_LEN + 1 + TAG_LEN;
/// Largest well-formed frame; anything longer is dropped before parsing.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_NAME + TAG_LEN;

/// The cluster's shared secret, from `resilience keygen`.
#[derive(Clone)]
pub struct ClusterKey {
    // Keyed once; cloning the keyed state per frame saves two hash blocks.
    mac: Hmac<Sha256>,
}

impl ClusterKey {
    /// A key from raw bytes (at least 16).
    pub fn new(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < 16 {
            return Err(KeyError::TooShort(bytes.len()));
        }
        let mac = Hmac::<Sha256>::new_from_slice(bytes).map_err(|_| KeyError::TooShort(0))?;
        Ok(ClusterKey { mac })
    }

    /// A key from the text of a key file: hex digits, surrounding blanks ignored.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let t = text.trim();
        if !t.len().is_multiple_of(2) {
            return Err(KeyError::NotHex);
        }
        if !t.is_ascii() {
            return Err(KeyError::NotHex);
        }
        let bytes = (0..t.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&t[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| KeyError::NotHex)?;
        Self::new(&bytes)
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<secret>)")
    }
}

/// Why a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Fewer than 16 bytes.
    #[error("cluster key is {0} bytes; at least 16 are needed (use `resilience keygen`)")]
    TooShort(usize),
    /// The key file is not hex text.
    #[error("cluster key file must hold hex digits (use `resilience keygen`)")]
    NotHex,
}

/// One-bit facts a node tells its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// The sender asks the receiver to hand the service over (failback).
    pub const WANT_ACTIVE: u8 = 1;
    /// The sender will not serve now (held by an admin, or faulted): take over.
    pub const YIELDING: u8 = 2;
    /// The sender hears the receiver (its last frame is recent).
    pub const HEARS_PEER: u8 = 4;
    /// The sender was started by force in manual mode.
    pub const FORCED: u8 = 8;
    const KNOWN: u8 = 0x0f;

    /// Whether a flag is set.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// A heartbeat, decoded and authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub node_type: NodeType,
    pub mode: Mode,
    pub status: Status,
    pub pbx: PbxHealth,
    pub flags: Flags,
    pub boot: u64,
    pub seq: u64,
    pub epoch: u64,
    pub replication: u64,
    /// Active calls on the sender, when it knows.
    pub calls: Option<u32>,
    pub name: String,
}

/// Why a frame was dropped. Each is counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Reject {
    #[error("truncated frame")]
    Truncated,
    #[error("oversized frame")]
    Oversized,
    #[error("not a heartbeat (bad magic)")]
    BadMagic,
    #[error("unsupported heartbeat version {0}")]
    UnsupportedVersion(u8),
    #[error("forged frame (HMAC mismatch: wrong cluster key or altered bytes)")]
    Forged,
    #[error("malformed frame ({0})")]
    Malformed(&'static str),
    #[error("replayed frame (sequence already seen)")]
    Replayed,
    #[error("stale frame (from an earlier boot of the sender)")]
    Stale,
    #[error("frame carries this node's own name")]
    FromSelf,
    #[error("frame from a node that is not the configured peer")]
    UnknownSender,
}

impl Reject {
    /// Every reason, in a fixed order (for counters and metrics).
    pub const ALL: [Reject; 10] = [
        Reject::Truncated,
        Reject::Oversized,
        Reject::BadMagic,
        Reject::UnsupportedVersion(0),
        Reject::Forged,
        Reject::Malformed(""),
        Reject::Replayed,
        Reject::Stale,
        Reject::FromSelf,
        Reject::UnknownSender,
    ];

    /// A stable label for metrics, one per reason whatever its detail.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Truncated => "truncated",
            Reject::Oversized => "oversized",
            Reject::BadMagic => "bad_magic",
            Reject::UnsupportedVersion(_) => "unsupported_version",
            Reject::Forged => "forged",
            Reject::Malformed(_) => "malformed",
            Reject::Replayed => "replayed",
            Reject::Stale => "stale",
            Reject::FromSelf => "from_self",
            Reject::UnknownSender => "unknown_sender",
        }
    }

    /// Index into [`Reject::ALL`].
    pub fn index(self) -> usize {
        Reject::ALL
            .iter()
            .position(|r| r.label() == self.label())
            .unwrap_or(0)
    }
}

/// Write `frame` authenticated under `key`.
///
/// Names longer than [`MAX_NAME`] bytes are cut at a character boundary; the
/// configuration refuses them earlier, so this only guards the format.
pub fn encode(frame: &Frame, key: &ClusterKey) -> Vec<u8> {
    let mut name = frame.name.as_str();
    while name.len() > MAX_NAME {
        let mut cut = MAX_NAME;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name = &name[..cut];
    }
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + TAG_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(frame.node_type.to_wire());
    out.push(frame.mode.to_wire());
    out.push(frame.status.to_wire());
    out.push(frame.pbx.to_wire());
    out.push(frame.flags.0);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&frame.boot.to_be_bytes());
    out.extend_from_slice(&frame.seq.to_be_bytes());
    out.extend_from_slice(&frame.epoch.to_be_bytes());
    out.extend_from_slice(&frame.replication.to_be_bytes());
    out.extend_from_slice(&frame.calls.unwrap_or(u32::MAX).to_be_bytes());
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    let mut mac = key.mac.clone();
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Read and authenticate a frame. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8], key: &ClusterKey) -> Result<Frame, Reject> {
    if bytes.len() > MAX_FRAME {
        return Err(Reject::Oversized);
    }
    if bytes.len() < 5 {
        return Err(Reject::Truncated);
    }
    if bytes[..4] != MAGIC {
        return Err(Reject::BadMagic);
    }
    if bytes[4] != VERSION {
        return Err(Reject::UnsupportedVersion(bytes[4]));
    }
    if bytes.len() < MIN_FRAME {
        return Err(Reject::Truncated);
    }
    let name_len = bytes[HEADER_LEN - 1] as usize;
    let want = HEADER_LEN + name_len + TAG_LEN;
    if bytes.len() < want {
        return Err(Reject::Truncated);
    }
    if bytes.len() > want {
        return Err(Reject::Malformed("bytes after the tag"));
    }
    let (body, tag) = bytes.split_at(HEADER_LEN + name_len);
    let mut mac = key.mac.clone();
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(tag).map_err(|_| Reject::Forged)?;

    if name_len == 0 || name_len > MAX_NAME {
        return Err(Reject::Malformed("name length"));
    }
    let node_type = NodeType::from_wire(body[5]).ok_or(Reject::Malformed("node type"))?;
    let mode = Mode::from_wire(body[6]).ok_or(Reject::Malformed("mode"))?;
    let status = Status::from_wire(body[7]).ok_or(Reject::Malformed("status"))?;
    let pbx = PbxHealth::from_wire(body[8]).ok_or(Reject::Malformed("PBX health"))?;
    if body[9] & !Flags::KNOWN != 0 {
        return Err(Reject::Malformed("unknown flags"));
    }
    if body[10] != 0 || body[11] != 0 {
        return Err(Reject::Malformed("reserved bytes"));
    }
    let calls = u32::from_be_bytes([body[44], body[45], body[46], body[47]]);
    let name = std::str::from_utf8(&body[HEADER_LEN..])
        .map_err(|_| Reject::Malformed("name is not UTF-8"))?
        .to_owned();
    Ok(Frame {
        node_type,
        mode,
        status,
        pbx,
        flags: Flags(body[9]),
        boot: u64_at(body, 12),
        seq: u64_at(body, 20),
        epoch: u64_at(body, 28),
        replication: u64_at(body, 36),
        calls: (calls != u32::MAX).then_some(calls),
        name,
    })
}

/// Remembers the newest (boot, sequence) seen from the peer, so a captured
/// frame sent again is refused. The boot id survives restarts of the
/// receiver through the persisted facts, so old captures stay refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplayGuard {
    boot: u64,
    seq: Option<u64>,
}

impl ReplayGuard {
    /// A guard that already knows the peer's last boot id.
    pub fn new(peer_boot: u64) -> Self {
        ReplayGuard {
            boot: peer_boot,
            seq: None,
        }
    }

    /// The newest boot id accepted.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Accept the frame's (boot, seq) if it is newer than all seen; remember it.
    pub fn check(&mut self, boot: u64, seq: u64) -> Result<(), Reject> {
        if boot < self.boot {
            return Err(Reject::Stale);
        }
        if boot == self.boot && self.seq.is_some_and(|s| seq <= s) {
            return Err(Reject::Replayed);
        }
        self.boot = boot;
        self.seq = Some(seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::new(&[7u8; 32]).unwrap()
    }

    fn frame() -> Frame {
        Frame {
            node_type: NodeType::Main,
            mode: Mode::Automatic,
            status: Status::Active,
            pbx: PbxHealth::Up,
            flags: Flags(Flags::HEARS_PEER),
            boot: 3,
            seq: 42,
            epoch: 9,
            replication: 1234,
            calls: Some(17),
            name: "pbx-main".into(),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&frame(), &key());
        assert_eq!(bytes.len(), HEADER_LEN + 8 + TAG_LEN);
        assert_eq!(decode(&bytes, &key()), Ok(frame()));
        let mut f = frame();
        f.calls = None;
        assert_eq!(decode(&encode(&f, &key()), &key()), Ok(f));
    }

    #[test]
    fn rejects_truncated_at_every_length() {
        let bytes = encode(&frame(), &key());
        for n in 0..bytes.len() {
            let r = decode(&bytes[..n], &key());
            assert!(
                matches!(r, Err(Reject::Truncated) | Err(Reject::BadMagic)),
                "{n}: {r:?}"
            );
        }
        assert_eq!(
            decode(&bytes[..bytes.len() - 1], &key()),
            Err(Reject::Truncated)
        );
    }

    #[test]
    fn rejects_oversized() {
        assert_eq!(
            decode(&[0u8; MAX_FRAME + 1], &key()),
            Err(Reject::Oversized)
        );
        let mut big = encode(&frame(), &key());
        big.resize(MAX_FRAME + 100, 0);
        assert_eq!(decode(&big, &key()), Err(Reject::Oversized));
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        let mut bytes = encode(&frame(), &key());
        bytes[0] = b'X';
        assert_eq!(decode(&bytes, &key()), Err(Reject::BadMagic));
        let mut bytes = encode(&frame(), &key());
        bytes[4] = 2;
        assert_eq!(decode(&bytes, &key()), Err(Reject::UnsupportedVersion(2)));
    }

    #[test]
    fn rejects_forged_wrong_key_and_every_flipped_bit() {
        let bytes = encode(&frame(), &key());
        let other = ClusterKey::new(&[8u8; 32]).unwrap();
        assert_eq!(decode(&bytes, &other), Err(Reject::Forged));
        // Any single altered bit after the version byte is caught by the tag
        // (the name length byte may turn it into a truncation instead).
        for i in 5..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let r = decode(&b, &key());
                assert!(
                    matches!(
                        r,
                        Err(Reject::Forged) | Err(Reject::Truncated) | Err(Reject::Malformed(_))
                    ),
                    "byte {i} bit {bit}: {r:?}"
                );
                if i != HEADER_LEN - 1 {
                    assert_eq!(r, Err(Reject::Forged), "byte {i} bit {bit}");
                }
            }
        }
    }

    #[test]
    fn rejects_malformed_fields_under_a_valid_tag() {
        // A sender holding the key but writing values this build does not know
        // (a newer peer, or a bug) is refused without trusting the fields.
        let k = key();
        let resign = |mut b: Vec<u8>| {
            let n = b.len() - TAG_LEN;
            b.truncate(n);
            let mut mac = k.mac.clone();
            mac.update(&b);
            b.extend_from_slice(&mac.finalize().into_bytes());
            b
        };
        for (at, what) in [
            (5, "node type"),
            (6, "mode"),
            (7, "status"),
            (8, "PBX health"),
        ] {
            let mut b = encode(&frame(), &k);
            b[at] = 0xee;
            assert_eq!(decode(&resign(b), &k), Err(Reject::Malformed(what)));
        }
        let mut b = encode(&frame(), &k);
        b[9] = 0x80;
        assert_eq!(
            decode(&resign(b), &k),
            Err(Reject::Malformed("unknown flags"))
        );
        let mut b = encode(&frame(), &k);
        b[10] = 1;
        assert_eq!(
            decode(&resign(b), &k),
            Err(Reject::Malformed("reserved bytes"))
        );
        let mut b = encode(&frame(), &k);
        b[HEADER_LEN] = 0xff;
        assert_eq!(
            decode(&resign(b), &k),
            Err(Reject::Malformed("name is not UTF-8"))
        );
        let mut b = encode(&frame(), &k);
        b.push(0);
        assert_eq!(
            decode(&b, &k),
            Err(Reject::Malformed("bytes after the tag"))
        );
    }

    #[test]
    fn replay_guard_refuses_replayed_and_stale() {
        let mut g = ReplayGuard::new(0);
        assert_eq!(g.check(5, 1), Ok(()));
        assert_eq!(g.check(5, 2), Ok(()));
        assert_eq!(g.check(5, 2), Err(Reject::Replayed));
        assert_eq!(g.check(5, 1), Err(Reject::Replayed));
        assert_eq!(g.check(4, 99), Err(Reject::Stale));
        // The peer rebooted: its sequence starts again.
        assert_eq!(g.check(6, 0), Ok(()));
        assert_eq!(g.check(5, 3), Err(Reject::Stale));
        // A receiver that restarts keeps refusing the old boot.
        let mut g = ReplayGuard::new(6);
        assert_eq!(g.check(5, 100), Err(Reject::Stale));
        assert_eq!(g.check(6, 100), Ok(()));
    }

    #[test]
    fn key_from_hex() {
        let k = ClusterKey::from_hex(" 00112233445566778899aabbccddeeff\n").unwrap();
        let f = frame();
        assert_eq!(decode(&encode(&f, &k), &k), Ok(f));
        assert_eq!(ClusterKey::from_hex("abc").unwrap_err(), KeyError::NotHex);
        assert_eq!(ClusterKey::from_hex("zz").unwrap_err(), KeyError::NotHex);
        assert_eq!(
            ClusterKey::from_hex("0011").unwrap_err(),
            KeyError::TooShort(2)
        );
    }

    #[test]
    fn reject_labels_are_distinct() {
        let mut labels: Vec<_> = Reject::ALL.iter().map(|r| r.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Reject::ALL.len());
        for (i, r) in Reject::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
