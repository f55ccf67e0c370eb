//! The heartbeat wire format: one small authenticated UDP frame.
//!
//! Written by hand because it is about a hundred bytes of fixed fields; a
//! general serialisation crate would add a dependency and hide the layout
//! that an admin reading a capture (or a fuzzer) needs to see. Layout,
//! big-endian:
//!
//! ```text
//!  0  magic "RSHB"           4
//!  4  version (2)            1
//!  5  node type              1   0 disabled, 1 main, 2 standby
//!  6  mode                   1   0 automatic, 1 manual
//!  7  status                 1   0 inactive .. 4 stopping
//!  8  PBX health             1   0 unknown, 1 up, 2 down
//!  9  flags                  1   see [`Flags`] (want-active, yielding, hears-peer, forced, leaving, adopting, offers-new-calls, released-new-calls)
//! 10  reserved, zero         2
//! 12  boot id                8   random, drawn at every start of the sender
//! 20  sequence               8   grows at every frame within one boot
//! 28  epoch                  8   grows at every activation in the cluster
//! 36  replication generation 8
//! 44  challenge              8   the sender's nonce, for the receiver to echo
//! 52  echo                   8   the last challenge the sender heard (0: none)
//! 60  active calls           4   u32::MAX when unknown
//! 64  name length n          1   1..=64
//! 65  name                   n   UTF-8
//! 65+n HMAC-SHA256 tag      32   over every byte before it
//! ```
//!
//! [`decode`] checks size, magic and version, then the tag (in constant time)
//! before it trusts any field. Replay and staleness need memory of the peer:
//! [`ReplayGuard`] holds it.
//!
//! ## Freshness without persisted state
//!
//! A receiver must refuse a captured frame sent again, also one from an
//! earlier life of the sender, and it must accept the sender again after
//! *anything* happened to either side's disk. A persisted, growing boot
//! counter gets the second part wrong: a node whose state was lost (a new
//! disk, a reinstall, a restore from an old backup) comes back with a lower
//! counter and its peer refuses it as stale for ever, while both serve.
//!
//! So nothing here depends on what a node persisted (as in corosync/knet,
//! whose nodes rejoin with fresh state):
//!
//! - the boot id is random, drawn by the runtime at every start;
//! - within a boot that the receiver has confirmed, the sequence must grow;
//! - a frame of any *other* boot is accepted only if it echoes the
//!   receiver's current challenge. Challenges are unique (a hash of the
//!   receiver's own random boot id and a counter) and every frame carries
//!   the sender's one, so the handshake costs one heartbeat each way and
//!   also completes when both nodes restart at once;
//! - on confirming a new boot the receiver moves to a new challenge. A frame
//!   captured earlier echoes a challenge the receiver no longer holds (or
//!   never held, if the receiver restarted since), so no old frame can ever
//!   be confirmed again, whatever either side remembers.
//!
//! The receiver echoes the challenge of the last authenticated frame of a
//! boot it is not sure of yet; an attacker replaying old frames can at most
//! delay the handshake, as dropping packets would. Until the echo comes
//! back, the peer's frames count for nothing: a node that restarts while it
//! hears its peer but is not heard by it (a one-way cut) sees the peer as
//! silent, as in a cut both ways — trusting an unconfirmed "I am Active"
//! would let a replayed frame stop a failover for good.

use crate::types::{Mode, NodeType, PbxHealth, Status};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"RSHB";
/// The only version this build speaks.
pub const VERSION: u8 = 2;
/// Length of the HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;
/// Longest node name on the wire.
pub const MAX_NAME: usize = 64;
const HEADER_LEN: usize = 65;
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
    /// The sender's daemon is stopping (SIGTERM, `systemctl stop`): it drains,
    /// stops its services and exits, so its peer need not wait for
    /// `failover_after` of silence. Sent with [`Flags::YIELDING`].
    pub const LEAVING: u8 = 16;
    /// The sender's daemon has just restarted with its services left running
    /// and will adopt them unless its peer serves: though it reports
    /// Inactive, its peer must not start on that (a Main would otherwise
    /// take the service from a Standby whose daemon was only upgraded).
    pub const ADOPTING: u8 = 32;
    /// The sender (a Standby with `failback.new_calls = "main"`) drains for
    /// a failback and offers the new calls to the Main: the Main may start
    /// its services alongside, while the calls in progress end here.
    pub const OFFERS_NEW_CALLS: u8 = 64;
    /// The sender drains with [`Flags::OFFERS_NEW_CALLS`], has heard the
    /// Main Active, and no longer takes new calls: the Main takes them.
    pub const RELEASED_NEW_CALLS: u8 = 128;
    /// The bits this version knows: all eight, so a new one-bit fact needs
    /// a new version (or the reserved bytes).
    pub const KNOWN: u8 = Flags::WANT_ACTIVE
        | Flags::YIELDING
        | Flags::HEARS_PEER
        | Flags::FORCED
        | Flags::LEAVING
        | Flags::ADOPTING
        | Flags::OFFERS_NEW_CALLS
        | Flags::RELEASED_NEW_CALLS;

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
    /// The sender's current challenge: a frame of a new boot of the receiver
    /// is confirmed fresh when it echoes it.
    pub challenge: u64,
    /// The last challenge the sender heard from the receiver (0: none yet).
    pub echo: u64,
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
    /// A frame of another boot of the sender that does not echo our
    /// challenge: the sender restarted and has not heard us yet, or it
    /// cannot hear us (a one-way cut), or the frame is an old one replayed.
    #[error("frame of another boot of the sender, not confirmed fresh (it has not echoed our challenge: restarting, not hearing us, or replayed)")]
    Unconfirmed,
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
        Reject::Unconfirmed,
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
            Reject::Unconfirmed => "unconfirmed",
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
    out.extend_from_slice(&frame.challenge.to_be_bytes());
    out.extend_from_slice(&frame.echo.to_be_bytes());
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
    // Every flag bit is assigned ([`Flags::KNOWN`]): none is unknown to
    // this version. The previous one refuses the two new-calls bits, which
    // are sent only with `failback.new_calls = "main"`.
    if body[10] != 0 || body[11] != 0 {
        return Err(Reject::Malformed("reserved bytes"));
    }
    let calls = u32::from_be_bytes([body[60], body[61], body[62], body[63]]);
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
        challenge: u64_at(body, 44),
        echo: u64_at(body, 52),
        calls: (calls != u32::MAX).then_some(calls),
        name,
    })
}

/// The challenge number `n` of a node whose boot id is `boot_id`: unique
/// across boots (the boot id is random) and never 0 (0 means "none").
pub fn challenge(boot_id: u64, n: u64) -> u64 {
    use sha2::Digest;
    let mut h = Sha256::new();
    h.update(b"resilience heartbeat challenge");
    h.update(boot_id.to_be_bytes());
    h.update(n.to_be_bytes());
    let d = h.finalize();
    u64_at(&d, 0).max(1)
}

/// What a receiver knows of its peer's boots: the confirmed boot and its
/// newest sequence, its own challenge, and the challenge to echo. See the
/// module doc for why this holds nothing from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayGuard {
    own_boot: u64,
    rotations: u64,
    challenge: u64,
    confirmed: Option<(u64, u64)>,
    echo: u64,
}

/// A frame the guard let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// The next frame of the boot already confirmed.
    Next,
    /// The first frame of a boot, confirmed by its echo of our challenge.
    NewBoot,
}

impl ReplayGuard {
    /// The guard of a node whose own boot id is `own_boot`.
    pub fn new(own_boot: u64) -> Self {
        ReplayGuard {
            own_boot,
            rotations: 0,
            challenge: challenge(own_boot, 0),
            confirmed: None,
            echo: 0,
        }
    }

    /// The challenge to send in our frames.
    pub fn challenge(&self) -> u64 {
        self.challenge
    }

    /// The peer's challenge to echo in our frames.
    pub fn echo(&self) -> u64 {
        self.echo
    }

    /// The peer's confirmed boot id, if any.
    pub fn boot(&self) -> Option<u64> {
        self.confirmed.map(|(b, _)| b)
    }

    /// Let an authenticated frame through if it is fresh; remember it.
    pub fn check(&mut self, frame: &Frame) -> Result<Fresh, Reject> {
        if let Some((boot, seq)) = self.confirmed {
            if frame.boot == boot {
                if frame.seq <= seq {
                    return Err(Reject::Replayed);
                }
                self.confirmed = Some((boot, frame.seq));
                self.echo = frame.challenge;
                return Ok(Fresh::Next);
            }
        }
        // Another boot: echo its challenge (so it can confirm us), and take
        // it only if it proves it heard our current challenge.
        self.echo = frame.challenge;
        if frame.echo != self.challenge {
            return Err(Reject::Unconfirmed);
        }
        self.confirmed = Some((frame.boot, frame.seq));
        self.rotations += 1;
        self.challenge = challenge(self.own_boot, self.rotations);
        Ok(Fresh::NewBoot)
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
            challenge: 0x1122,
            echo: 0x3344,
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
        bytes[4] = 1;
        assert_eq!(decode(&bytes, &key()), Err(Reject::UnsupportedVersion(1)));
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
        // Every flag bit is assigned: a frame with all of them decodes (a
        // new one-bit fact needs a new version).
        assert_eq!(Flags::KNOWN, u8::MAX);
        let mut b = encode(&frame(), &k);
        b[9] = Flags::KNOWN;
        assert_eq!(
            decode(&resign(b), &k).map(|f| f.flags),
            Ok(Flags(Flags::KNOWN))
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

    /// A sender: a boot id, a sequence, and the guard that gives it the
    /// challenge and the echo to put in its frames.
    struct Sender {
        boot: u64,
        seq: u64,
        guard: ReplayGuard,
    }

    impl Sender {
        fn new(boot: u64) -> Sender {
            Sender {
                boot,
                seq: 0,
                guard: ReplayGuard::new(boot),
            }
        }
        fn frame(&mut self) -> Frame {
            self.seq += 1;
            Frame {
                boot: self.boot,
                seq: self.seq,
                challenge: self.guard.challenge(),
                echo: self.guard.echo(),
                ..frame()
            }
        }
    }

    /// Frames both ways until each confirms the other; the frames `a` sent.
    fn handshake(a: &mut Sender, b: &mut Sender) -> Vec<Frame> {
        let mut sent = Vec::new();
        for _ in 0..3 {
            let fa = a.frame();
            let _ = b.guard.check(&fa);
            sent.push(fa);
            let fb = b.frame();
            let _ = a.guard.check(&fb);
        }
        assert!(a.guard.boot() == Some(b.boot) && b.guard.boot() == Some(a.boot));
        sent
    }

    #[test]
    fn replay_guard_refuses_replayed_frames_within_a_boot() {
        let (mut a, mut b) = (Sender::new(11), Sender::new(22));
        handshake(&mut a, &mut b);
        let f1 = a.frame();
        let f2 = a.frame();
        assert_eq!(b.guard.check(&f1), Ok(Fresh::Next));
        assert_eq!(b.guard.check(&f2), Ok(Fresh::Next));
        assert_eq!(b.guard.check(&f2), Err(Reject::Replayed));
        assert_eq!(b.guard.check(&f1), Err(Reject::Replayed));
    }

    #[test]
    fn a_new_boot_is_confirmed_by_its_echo_whatever_its_id() {
        let (mut a, mut b) = (Sender::new(1_000), Sender::new(22));
        handshake(&mut a, &mut b);
        // `a` restarts with lost state: a boot id lower than before. Its
        // first frame does not echo b's challenge yet: refused, but b
        // echoes a's challenge at once, and a's next frame is confirmed.
        let mut a2 = Sender::new(3);
        let first = a2.frame();
        assert_eq!(b.guard.check(&first), Err(Reject::Unconfirmed));
        let fb = b.frame();
        assert_eq!(a2.guard.check(&fb), Ok(Fresh::NewBoot));
        let second = a2.frame();
        assert_eq!(b.guard.check(&second), Ok(Fresh::NewBoot));
        assert_eq!(b.guard.boot(), Some(3));
    }

    #[test]
    fn captured_frames_of_an_earlier_boot_are_refused_forever() {
        let (mut a, mut b) = (Sender::new(7), Sender::new(8));
        let mut captured = handshake(&mut a, &mut b);
        for _ in 0..5 {
            captured.push(a.frame());
        }
        for f in &captured[captured.len() - 5..] {
            assert_eq!(b.guard.check(f), Ok(Fresh::Next));
        }
        // `a` reboots (any id, here a higher one) and is confirmed.
        let mut a2 = Sender::new(9);
        handshake(&mut a2, &mut b);
        for f in &captured {
            assert_eq!(b.guard.check(f), Err(Reject::Unconfirmed), "{f:?}");
        }
        // `b` reboots too, with nothing remembered: the old frames are
        // still refused, a2's current frames are confirmed after the echo.
        let mut b2 = Sender::new(10);
        for f in &captured {
            assert_eq!(b2.guard.check(f), Err(Reject::Unconfirmed));
        }
        handshake(&mut a2, &mut b2);
        for f in &captured {
            assert_eq!(b2.guard.check(f), Err(Reject::Unconfirmed));
        }
        // And a2's own frames from before b's reboot are refused as well.
        let before = a2.frame();
        let mut b3 = Sender::new(12);
        handshake(&mut a2, &mut b3);
        assert_eq!(b3.guard.check(&before), Err(Reject::Replayed));
    }

    #[test]
    fn challenges_differ_across_boots_and_rotations() {
        let mut seen = std::collections::HashSet::new();
        for boot in 0..50 {
            for n in 0..50 {
                assert!(seen.insert(challenge(boot, n)));
            }
        }
        assert!(!seen.contains(&0));
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
