//! SIP over TCP and TLS for the phones: each connection's task cuts the
//! stream into messages (Content-Length framing, RFC 3261 §18.3), hands
//! them to the relay task and writes what the relay routes to that peer.
//! A connection that sends what cannot be framed (no end of headers within
//! the size limit, a bad Content-Length) is counted and closed: on a stream
//! there is no next message to resynchronise on. TLS connections take the
//! same path once their handshake is done.
//!
//! Bounded against strangers, the way the API's listener is
//! ([`crate::http_server`]):
//!
//! - **Caps.** At most `max_connections` connections at once (TCP and TLS
//!   together), lowered so that the process's descriptor limit keeps room
//!   for the edge's own sockets (probes, the HA requests, the API), and
//!   `max_connections_per_source` per address. At the cap, a new
//!   connection takes the place of the oldest one that has not yet sent a
//!   whole message (an idle stranger's, never a registered phone's); when
//!   every connection has, the new one is closed at once.
//!   These decisions are [`resilience_sip::admission::Admission`]'s
//!   (sans-IO, tested alone); here only each connection's stop signal.
//! - **Deadlines.** A connection's first message, and every message once
//!   started, must arrive whole within `message_timeout`; a connection
//!   with no byte for `idle_timeout` is closed (CRLF keep-alives count). A
//!   TLS handshake must end within `message_timeout`; a peer that stops
//!   reading what the edge writes is dropped after `message_timeout`.
//! - **Accept errors** (`EMFILE`, `ENFILE`, …) pause the accept loop, from
//!   50 ms doubling to 1 s, instead of spinning on a full table.
//! - **Memory.** A connection reads into a small buffer that grows with
//!   what arrives and is given back once a large message is relayed; all
//!   of it goes when the connection closes.
//! - **Logs.** Refusals and closings are counted per reason
//!   ([`crate::ratelog::RateLog`]): one line per reason, then a summary.

use crate::ratelog::RateLog;
use resilience_sip::admission::{Admission, Admit, ConnId, Refusal};
use resilience_sip::message::{frame_len, skip_keepalive};
use resilience_sip::{Flow, Transport};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// Messages queued for one connection before further ones are refused.
const QUEUE: usize = 64;
/// A read buffer larger than this is given back once it is empty.
const KEEP_BUFFER: usize = 16 * 1024;
/// Size of one read.
const READ_CHUNK: usize = 2048;

/// The caps and deadlines, from the edge's `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub per_source: usize,
    pub message_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Open connections by flow: where to write a message for a phone.
#[derive(Clone)]
pub struct Conns {
    map: Arc<Mutex<HashMap<Flow, mpsc::Sender<Vec<u8>>>>>,
    slots: Arc<Slots>,
    /// The caps, for the status and the logs.
    cap: usize,
    per_source: usize,
    log: Arc<RateLog>,
}

impl Conns {
    pub fn new(limits: &Limits) -> Conns {
        let log = Arc::new(RateLog::new(
            "edge SIP connections",
            "connections refused or closed",
            Duration::from_secs(10),
        ));
        log.spawn_summaries();
        Conns {
            map: Arc::default(),
            slots: Arc::new(Slots {
                inner: Mutex::new(SlotsInner {
                    admission: Admission::new(limits.max_connections, limits.per_source),
                    evict: HashMap::new(),
                    next_id: 0,
                }),
            }),
            cap: limits.max_connections,
            per_source: limits.per_source,
            log,
        }
    }

    /// Queue `bytes` for the connection of `to`; false when there is none
    /// (the phone went away; a PBX is reached over UDP) or it is not
    /// reading.
    pub fn send(&self, to: Flow, bytes: Vec<u8>) -> bool {
        let tx = self.lock().get(&to).cloned();
        match tx {
            Some(tx) => tx.try_send(bytes).is_ok(),
            None => false,
        }
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// For the status API: open connections, the cap, refusals by reason.
    pub fn status(&self) -> crate::status::EdgeConnections {
        crate::status::EdgeConnections {
            open: self.slots.open(),
            cap: self.cap,
            per_source_cap: self.per_source,
            refused_or_closed: self.log.totals_doc(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Flow, mpsc::Sender<Vec<u8>>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event(&self, reason: &'static str, detail: impl FnOnce() -> String) {
        metrics::counter!("resilience_edge_connections_refused_total", "reason" => reason)
            .increment(1);
        self.log.event(reason, detail);
    }
}

/// Connection slots: the decisions are [`Admission`]'s; this keeps, per
/// connection id, only the signal that tells a replaced connection to go.
struct Slots {
    inner: Mutex<SlotsInner>,
}

struct SlotsInner {
    admission: Admission,
    /// Woken when a newer connection takes this one's place; only for
    /// connections not yet proven (the others are never replaced).
    evict: HashMap<ConnId, Arc<Notify>>,
    next_id: ConnId,
}

/// One connection's place, given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    id: ConnId,
    /// Woken when a newer connection takes this one's place.
    evicted: Arc<Notify>,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) -> usize {
        self.lock().admission.open()
    }

    /// A slot for a connection from `ip`, whether it replaced a silent
    /// one (told to go here), or why not.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<(Slot, bool), Refusal> {
        let mut g = self.lock();
        let id = g.next_id;
        g.next_id += 1;
        let replaced = match g.admission.admit(ip, id, std::time::Instant::now()) {
            Admit::Accept => false,
            Admit::AcceptReplacing(old) => {
                if let Some(n) = g.evict.remove(&old) {
                    n.notify_one();
                }
                true
            }
            Admit::Refuse(why) => return Err(why),
        };
        let evicted = Arc::new(Notify::new());
        g.evict.insert(id, evicted.clone());
        let slots = self.clone();
        Ok((Slot { slots, id, evicted }, replaced))
    }
}

impl Slot {
    /// The connection sent a whole message: no longer replaceable.
    fn proven(&self) {
        let mut g = self.slots.lock();
        g.admission.proven(self.id);
        g.evict.remove(&self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.slots.lock();
        g.admission.closed(self.id);
        g.evict.remove(&self.id);
    }
}

/// What a connection's task needs besides its stream.
#[derive(Clone)]
pub struct Intake {
    pub conns: Conns,
    pub limits: Limits,
    pub to_relay: mpsc::Sender<(Flow, Vec<u8>)>,
    pub dropped: mpsc::Sender<&'static str>,
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Accept phones' connections on `listener` for as long as the edge runs:
/// plain TCP, or TLS with `tls`.
pub async fn serve(listener: TcpListener, tls: Option<Arc<super::tls::Certs>>, intake: Intake) {
    let mut pause = Duration::from_millis(50);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                intake
                    .conns
                    .event("accept error", || format!("accept: {e}; pausing {pause:?}"));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        pause = Duration::from_millis(50);
        let Some(slot) = take_slot(&intake.conns, peer) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let intake = intake.clone();
        match &tls {
            None => {
                tokio::spawn(connection(stream, Transport::Tcp, peer, slot, intake));
            }
            Some(certs) => {
                let acceptor = certs.acceptor();
                tokio::spawn(async move {
                    let limit = intake.limits.message_timeout;
                    let hs = tokio::select! {
                        r = tokio::time::timeout(limit, acceptor.accept(stream)) => r,
                        _ = slot.evicted.notified() => return,
                    };
                    match hs {
                        Ok(Ok(s)) => connection(s, Transport::Tls, peer, slot, intake).await,
                        Ok(Err(e)) => intake
                            .conns
                            .event("tls handshake failed", || format!("TLS from {peer}: {e}")),
                        Err(_) => intake.conns.event("tls handshake timeout", || {
                            format!("TLS from {peer}: no handshake within {limit:?}")
                        }),
                    }
                });
            }
        }
    }
}

/// A slot for `peer`, counting a replacement or a refusal.
fn take_slot(conns: &Conns, peer: SocketAddr) -> Option<Slot> {
    let (slot, replaced) = match conns.slots.admit(peer.ip()) {
        Ok(s) => s,
        Err(why) => {
            conns.event(refusal_reason(why), || match why {
                Refusal::OverSourceCap => format!(
                    "{} already holds {} connections: refused",
                    peer.ip(),
                    conns.per_source
                ),
                Refusal::OverCap => format!(
                    "{} connections open, every one has sent a message: {peer} refused",
                    conns.cap
                ),
                Refusal::DuplicateId => format!("{peer}: {why}: refused"),
            });
            return None;
        }
    };
    if replaced {
        conns.event("replaced a silent connection", || {
            format!(
                "at the cap of {} connections: the oldest without a message closed for {peer}",
                conns.cap
            )
        });
    }
    Some(slot)
}

/// The counter label of a refusal (the metrics and the status keep these).
fn refusal_reason(why: Refusal) -> &'static str {
    match why {
        Refusal::OverSourceCap => "over the per-address cap",
        Refusal::OverCap => "over the cap",
        Refusal::DuplicateId => "duplicate connection id",
    }
}

/// Why a connection ended (for the counters; a peer's close is not counted).
enum End {
    Peer,
    Relay,
    Malformed,
    MessageTimeout,
    Idle,
    Evicted,
    WriteStalled,
}

async fn connection<S>(
    stream: S,
    transport: Transport,
    peer: SocketAddr,
    slot: Slot,
    intake: Intake,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let flow = Flow {
        transport,
        addr: peer,
    };
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let mine = tx.clone();
    intake.conns.lock().insert(flow, tx);
    let end = pump(stream, flow, &slot, &intake, &mut rx).await;
    // Only this connection's entry: a phone that reconnected from the same
    // address already has a newer one.
    {
        let mut map = intake.conns.lock();
        if map.get(&flow).is_some_and(|t| t.same_channel(&mine)) {
            map.remove(&flow);
        }
    }
    let l = &intake.limits;
    match end {
        End::Peer | End::Relay => {}
        End::Malformed => {
            let _ = intake.dropped.send("malformed").await;
        }
        End::MessageTimeout => intake.conns.event("message timeout", || {
            format!(
                "{peer}: no whole message within {:?}: closed",
                l.message_timeout
            )
        }),
        End::Idle => intake.conns.event("idle timeout", || {
            format!("{peer}: silent for {:?}: closed", l.idle_timeout)
        }),
        End::Evicted => {}
        End::WriteStalled => intake.conns.event("not reading", || {
            format!("{peer}: did not read for {:?}: closed", l.message_timeout)
        }),
    }
}

/// What a connection has read and which deadline applies to it.
struct Reading {
    buf: Vec<u8>,
    last_byte: Instant,
    /// Since when a message is due: from the start for the first one.
    due_since: Option<Instant>,
    proven: bool,
}

impl Reading {
    fn new() -> Reading {
        let now = Instant::now();
        Reading {
            buf: Vec::new(),
            last_byte: now,
            due_since: Some(now),
            proven: false,
        }
    }

    /// When the connection is closed if nothing arrives, and whether that
    /// is the idle deadline (else a message's).
    fn deadline(&self, l: &Limits) -> (Instant, bool) {
        let idle_at = self.last_byte + l.idle_timeout;
        match self.due_since {
            Some(t) if t + l.message_timeout < idle_at => (t + l.message_timeout, false),
            _ => (idle_at, true),
        }
    }

    /// Take in `bytes` just read and relay every whole message in the
    /// buffer; why the connection must end, if it must.
    async fn take(
        &mut self,
        bytes: &[u8],
        flow: Flow,
        slot: &Slot,
        intake: &Intake,
    ) -> Result<(), End> {
        self.last_byte = Instant::now();
        self.buf.extend_from_slice(bytes);
        loop {
            let skip = skip_keepalive(&self.buf);
            self.buf.drain(..skip);
            if self.buf.is_empty() {
                if self.proven {
                    self.due_since = None;
                }
                if self.buf.capacity() > KEEP_BUFFER {
                    self.buf = Vec::new();
                }
                return Ok(());
            }
            if self.proven && self.due_since.is_none() {
                self.due_since = Some(self.last_byte);
            }
            match frame_len(&self.buf) {
                Ok(Some(len)) => {
                    let msg: Vec<u8> = self.buf.drain(..len).collect();
                    if !self.proven {
                        self.proven = true;
                        slot.proven();
                    }
                    self.due_since = None;
                    if intake.to_relay.send((flow, msg)).await.is_err() {
                        return Err(End::Relay);
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::debug!(
                        "{} from {}: {e}; closing the connection",
                        flow.transport.as_str(),
                        flow.addr
                    );
                    return Err(End::Malformed);
                }
            }
        }
    }
}

/// Read and write one connection until it ends; why it ended. Its one
/// `select!` weighs the deadline ([`Reading::deadline`]) against reads,
/// writes and being replaced.
async fn pump<S>(
    stream: S,
    flow: Flow,
    slot: &Slot,
    intake: &Intake,
    rx: &mut mpsc::Receiver<Vec<u8>>,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let l = intake.limits;
    let mut chunk = [0u8; READ_CHUNK];
    let mut reading = Reading::new();
    loop {
        let (deadline, idle) = reading.deadline(&l);
        let n = tokio::select! {
            r = tokio::time::timeout_at(deadline, rd.read(&mut chunk)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => return End::Peer,
                Ok(Ok(n)) => n,
                Err(_) if idle => return End::Idle,
                Err(_) => return End::MessageTimeout,
            },
            Some(b) = rx.recv() => {
                match tokio::time::timeout(l.message_timeout, wr.write_all(&b)).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return End::Peer,
                    Err(_) => return End::WriteStalled,
                }
            }
            _ = slot.evicted.notified() => return End::Evicted,
        };
        if let Err(end) = reading.take(&chunk[..n], flow, slot, intake).await {
            return end;
        }
    }
}
