//! The edge's stateless relay (RFC 3261 §16.11), sans-IO: bytes and where
//! they came from in, bytes and where they go out, or the reason they are
//! dropped. No socket, no clock; which PBX a phone's new request goes to is
//! the caller's answer ([`Relay::handle`]'s `route`), so the per-phone
//! failover policy stays in one place.
//!
//! What it does to a request: the top Via gets `received`/`rport` when the
//! phone is seen from another address (RFC 3581); Max-Forwards is lowered
//! (483 at zero); a top Route naming the edge is taken off; the edge's own
//! Via goes on top, with a branch derived from the incoming one so a
//! retransmission or a CANCEL gets the same branch; a dialog-creating
//! request gets a Record-Route and a REGISTER a Path (RFC 3327), both naming
//! the edge and carrying the phone's flow (`rs-flow`), so requests the PBX
//! sends later come back through the edge and reach the phone even behind
//! a NAT. To a response: the edge's Via is taken off and the response goes
//! where the next Via says.
//!
//! What the edge writes cannot be forged by someone who spoofs a PBX's
//! address: its branch carries a keyed MAC over the address the response
//! will go to, and its `rs-flow` a keyed MAC over the flow (and, in a
//! Record-Route, the Call-ID). A response or a request whose MAC does not
//! verify is dropped, so the edge neither reflects a forged response nor
//! delivers a forged request to a phone.

use crate::edit::Edit;
use crate::header::{HostPort, NameAddr, Uri, Via};
use crate::message::{
    split_values, Message, Name, ParseError, StartLine, MAX_HEADERS, MAX_MESSAGE,
};
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS over TCP (RFC 3261 §26.2): phones only; the PBX side is UDP.
    Tls,
}

impl Transport {
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// Over a connection (TCP, TLS): the reply goes back on it.
    pub fn is_stream(&self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    fn parse(s: &str) -> Option<Transport> {
        if s.eq_ignore_ascii_case("udp") {
            Some(Transport::Udp)
        } else if s.eq_ignore_ascii_case("tcp") {
            Some(Transport::Tcp)
        } else if s.eq_ignore_ascii_case("tls") {
            Some(Transport::Tls)
        } else {
            None
        }
    }
}

/// A transport and a peer address: where a message came from or goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl Flow {
    pub fn udp(addr: SocketAddr) -> Flow {
        Flow {
            transport: Transport::Udp,
            addr,
        }
    }

    /// As a URI parameter value (a token: no ':' or '[').
    fn encode(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => a.to_string().replace(':', "-"),
        };
        format!(
            "{}~{ip}~{}",
            self.transport.as_str().to_ascii_lowercase(),
            self.addr.port()
        )
    }

    fn decode(s: &str) -> Option<Flow> {
        let mut it = s.split('~');
        let transport = Transport::parse(it.next()?)?;
        let ip: IpAddr = it.next()?.replace('-', ":").parse().ok()?;
        let port: u16 = it.next()?.parse().ok()?;
        Some(Flow {
            transport,
            addr: SocketAddr::new(ip, port),
        })
    }
}

/// Why a message was not relayed. Every one is counted by the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Dropped {
    #[error("malformed: {0}")]
    Malformed(#[from] ParseError),
    #[error("bad Via")]
    BadVia,
    #[error("a response whose top Via is not the edge's")]
    NotOurs,
    #[error("no route for the request")]
    NoRoute,
    #[error("no serving PBX for the phone")]
    NoPbx,
    #[error("an ACK with nowhere to go")]
    StrayAck,
    #[error("a response whose branch the edge did not sign for its next hop")]
    ForgedBranch,
    #[error("a Route naming the edge with a flow it did not sign")]
    ForgedFlow,
    #[error("a PBX's request for a phone without a flow the edge signed")]
    UnsignedFlow,
}

/// A new request from a phone (not inside a dialog through the edge): the
/// caller picks the PBX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRequest<'a> {
    pub method: &'a str,
    /// The phone's address of record: the To URI of a REGISTER, the From
    /// URI of anything else, as `sip:user@host`.
    pub aor: String,
    pub call_id: &'a str,
}

/// What the edge learns from a message it relays, for its phones table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// A phone's REGISTER sent to a PBX.
    Register {
        aor: String,
        from: Flow,
        to: Flow,
        call_id: String,
        /// The expiry asked for (Contact `expires`, else Expires): 0 is an
        /// unregistration.
        requested: Option<u32>,
        /// What [`Relay::register`] needs to register this phone at
        /// another PBX (None for an unregistration, a `*` or several
        /// contacts).
        template: Option<String>,
    },
    /// A final response to a REGISTER, on its way back to the phone.
    Registered {
        aor: String,
        code: u16,
        call_id: String,
        expires: Option<u32>,
    },
    /// A new INVITE to or from a phone (its flow).
    Invite { call_id: String, phone: Flow },
    /// A 2xx to an INVITE: a dialog is up.
    DialogUp { call_id: String },
    /// A BYE, or a final non-2xx to an INVITE: the dialog is over.
    DialogDown { call_id: String },
}

/// What to send, and to whom. (Not `Send`: that name is the marker trait.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: Flow,
    pub bytes: Vec<u8>,
    /// A response the edge made itself (483, 503) rather than relayed.
    pub generated: bool,
    pub notes: Vec<Note>,
}

/// The relay: the edge's address, which peers are PBXs, and a secret for
/// branches and flows.
#[derive(Debug, Clone)]
pub struct Relay {
    pub me: SocketAddr,
    pub pbxs: Vec<SocketAddr>,
    /// Other names of the edge in a Route (RFC 3261 §16.4): host names, or
    /// the public address a NAT maps to `me`.
    names: Vec<String>,
    /// Seconds in the 503's Retry-After when no PBX serves a phone.
    retry_after: u32,
    secret: [u8; 32],
}

/// Retry-After when nothing else is configured.
pub const DEFAULT_RETRY_AFTER: u32 = 5;
/// Hex digits of a MAC the edge writes (80 bits).
const MAC_HEX: usize = 20;

const COOKIE: &str = "z9hG4bK";
/// The branch prefix of requests the edge makes itself: their answers are
/// the edge's, never relayed.
const OWN: &str = "z9hG4bK-rs-own-";

/// The answer to a request the edge made itself ([`Relay::register`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnAnswer {
    pub code: u16,
    pub call_id: String,
    pub aor: String,
}
/// Most header lines the relay adds to a message.
const ADDED_HEADERS: usize = 3;

impl Relay {
    pub fn new(me: SocketAddr, pbxs: Vec<SocketAddr>, secret: [u8; 32]) -> Relay {
        Relay {
            me,
            pbxs,
            names: Vec::new(),
            retry_after: DEFAULT_RETRY_AFTER,
            secret,
        }
    }

    /// Names a Route may give the edge besides its address.
    pub fn with_names(mut self, names: Vec<String>) -> Relay {
        self.names = names;
        self
    }

    /// The Retry-After of the 503 sent when no PBX serves a phone.
    pub fn with_retry_after(mut self, secs: u32) -> Relay {
        self.retry_after = secs;
        self
    }

    fn is_pbx(&self, addr: SocketAddr) -> bool {
        self.pbxs.contains(&addr)
    }

    /// The edge's address and port, or one of its names (any port: a name
    /// is resolved, and maybe port-mapped, before it reaches the edge).
    fn is_me(&self, h: &HostPort<'_>) -> bool {
        if h.ip() == Some(self.me.ip()) {
            return h.port.unwrap_or(5060) == self.me.port();
        }
        let host = h.host.trim_start_matches('[').trim_end_matches(']');
        self.names.iter().any(|n| n.eq_ignore_ascii_case(host))
    }

    /// A keyed MAC over `parts` (each length-prefixed), as hex digits.
    fn mac(&self, parts: &[&[u8]]) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.secret);
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        h.finalize().to_hex()[..MAC_HEX].to_owned()
    }

    /// The MAC in the branch of the edge's own REGISTER for `call_id`.
    fn own_branch_mac(&self, call_id: &str) -> String {
        self.mac(&[b"rs-own", call_id.as_bytes()])
    }

    /// The `rs-flow` value for `flow`: in a Path (`call_id` None) it holds
    /// for any request the PBX sends the phone; in a Record-Route only for
    /// that dialog, so a party to one call cannot reuse it for another.
    fn seal_flow(&self, flow: Flow, call_id: Option<&str>) -> String {
        let enc = flow.encode();
        let kind = if call_id.is_some() { "d" } else { "p" };
        let mac = self.mac(&[
            b"rs-flow",
            kind.as_bytes(),
            enc.as_bytes(),
            call_id.unwrap_or_default().as_bytes(),
        ]);
        format!("{enc}~{kind}{mac}")
    }

    /// The flow in an `rs-flow` value, if the edge signed it.
    fn open_flow(&self, value: &str, call_id: &str) -> Option<Flow> {
        let (enc, tail) = value.rsplit_once('~')?;
        let kind = tail.get(..1)?;
        let cid = match kind {
            "p" => "",
            "d" => call_id,
            _ => return None,
        };
        let mac = self.mac(&[b"rs-flow", kind.as_bytes(), enc.as_bytes(), cid.as_bytes()]);
        same(&mac, &tail[1..]).then(|| Flow::decode(enc)).flatten()
    }

    /// The MAC half of the edge's branch: binds the transaction `id` and
    /// the previous hop's branch to `back`, where the response goes.
    fn branch_mac(&self, id: &str, prev_branch: &str, back: Option<Flow>) -> String {
        let back = back.map(|f| format!("{}/{}", f.transport.as_str(), f.addr));
        self.mac(&[
            b"rs-branch",
            id.as_bytes(),
            prev_branch.as_bytes(),
            back.unwrap_or_default().as_bytes(),
        ])
    }

    /// Relay one message that came from `from`. `route` answers, for a new
    /// request from a phone, which PBX gets it.
    pub fn handle(
        &self,
        from: Flow,
        bytes: &[u8],
        route: impl FnOnce(&NewRequest<'_>) -> Option<SocketAddr>,
    ) -> Result<Outgoing, Dropped> {
        let msg = Message::parse(bytes)?;
        // Room for what the edge adds (Via, Record-Route or Path,
        // Max-Forwards): what it sends must pass its own limits.
        if msg.headers.len() + ADDED_HEADERS > MAX_HEADERS {
            return Err(Dropped::Malformed(ParseError::TooManyHeaders));
        }
        let out = match msg.start {
            StartLine::Request { method, uri } => self.request(&msg, from, method, uri, route),
            StartLine::Response { code, .. } => self.response(&msg, from, code),
        }?;
        if out.bytes.len() > MAX_MESSAGE {
            return Err(Dropped::Malformed(ParseError::TooLarge));
        }
        Ok(out)
    }

    fn request(
        &self,
        msg: &Message<'_>,
        from: Flow,
        method: &str,
        uri: &str,
        route: impl FnOnce(&NewRequest<'_>) -> Option<SocketAddr>,
    ) -> Result<Outgoing, Dropped> {
        let via_h = msg.header(Name::Via).ok_or(Dropped::BadVia)?;
        let top = split_values(via_h.value).next().ok_or(Dropped::BadVia)?;
        let via = Via::parse(top).ok_or(Dropped::BadVia)?;
        let call_id = msg.value(Name::CallId).unwrap_or_default();
        // Loops end at Max-Forwards zero; the edge never sends to itself.
        let mf = msg
            .header(Name::MaxForwards)
            .map(|h| (h, h.value.parse::<u32>().unwrap_or(70)));
        if let Some((_, 0)) = mf {
            if method != "ACK" {
                return Ok(self.reply(msg, from, 483, "Too Many Hops"));
            }
            return Err(Dropped::NoRoute);
        }
        let mut e = Edit::new(msg);
        let from_pbx = self.is_pbx(from.addr);
        // RFC 3581: say where the request was seen from.
        // What a phone wrote in `received`/`rport` is never trusted (it
        // would send the PBX's answers anywhere): the edge writes both.
        let rport = via.params.get("rport").is_some() || from.transport.is_stream();
        // Where the response goes, as the next Via will say.
        let mut back = via_flow(&via);
        if !from_pbx {
            let mut v = strip_param(&strip_param(top, "received"), "rport");
            v.push_str(&format!(";received={}", from.addr.ip()));
            if rport {
                v.push_str(&format!(";rport={}", from.addr.port()));
            }
            back = Via::parse(&v).as_ref().and_then(via_flow);
            let rest: Vec<&str> = split_values(via_h.value).skip(1).collect();
            if rest.is_empty() {
                e.set_value(via_h, &v);
            } else {
                e.set_value(via_h, &format!("{v}, {}", rest.join(", ")));
            }
        }
        match mf {
            Some((h, n)) => e.set_value(h, &(n - 1).to_string()),
            None => e.append("Max-Forwards: 69"),
        }
        // A Route naming the edge comes off (RFC 3261 §16.4). One the edge
        // wrote (a Record-Route or a Path) carries the phone's flow, signed;
        // one without a flow was pre-loaded by a phone using the edge as
        // its outbound proxy, and the request is routed like a new one.
        let mut flow_of_phone: Option<Flow> = None;
        let mut through_us = false;
        let mut preloaded = false;
        let mut next_route: Option<&str> = None;
        if let Some(rh) = msg.header(Name::Route) {
            let mut values = split_values(rh.value);
            let first = values.next().and_then(NameAddr::parse);
            let first_uri = first.and_then(|n| Uri::parse(n.uri));
            if let Some(u) = first_uri.filter(|u| self.is_me(&u.host)) {
                match u.params.get("rs-flow") {
                    Some(v) => {
                        let f = v.and_then(|v| self.open_flow(v, call_id));
                        flow_of_phone = Some(f.ok_or(Dropped::ForgedFlow)?);
                        through_us = true;
                    }
                    None => preloaded = true,
                }
                let rest: Vec<&str> = values.collect();
                if rest.is_empty() {
                    e.remove(rh);
                } else {
                    e.set_value(rh, &rest.join(", "));
                }
                next_route = rest.first().copied().or_else(|| {
                    msg.all(Name::Route)
                        .nth(1)
                        .and_then(|h| split_values(h.value).next())
                });
            } else {
                next_route = first.map(|n| n.uri);
            }
        }
        let phone_flow = if from_pbx { flow_of_phone } else { Some(from) };
        // Where it goes.
        let to: Flow = if let (true, Some(f)) = (from_pbx, flow_of_phone) {
            // The edge's own Route names the phone's flow: that is where
            // the phone is (RFC 5626 §5.3), whatever a phone-written Path
            // or Contact after it says.
            f
        } else if let Some(r) = next_route {
            uri_flow(NameAddr::parse(r).map_or(r, |n| n.uri)).ok_or(Dropped::NoRoute)?
        } else if from_pbx {
            match flow_of_phone {
                Some(f) => f,
                None => uri_flow(uri).ok_or(Dropped::NoRoute)?,
            }
        } else if through_us {
            // In a dialog through the edge: the R-URI is the PBX's contact,
            // so a call in progress stays on the PBX that has it.
            uri_flow(uri).ok_or(Dropped::NoRoute)?
        } else if let Some(f) = uri_flow(uri).filter(|f| preloaded && self.is_pbx(f.addr)) {
            // A pre-loaded Route and a PBX's own contact as R-URI.
            f
        } else {
            let who = if method == "REGISTER" {
                Name::To
            } else {
                Name::From
            };
            let aor = msg
                .value(who)
                .and_then(NameAddr::parse)
                .and_then(|n| Uri::parse(n.uri))
                .map(|u| u.aor())
                .ok_or(Dropped::NoRoute)?;
            let req = NewRequest {
                method,
                aor,
                call_id,
            };
            match route(&req) {
                Some(pbx) => Flow::udp(pbx),
                None if method == "ACK" => return Err(Dropped::NoPbx),
                // Tell the phone, and when to try again (RFC 3261 §21.5.4).
                None => return Ok(self.reply(msg, from, 503, "Service Unavailable")),
            }
        };
        // Not an open relay: what comes from outside goes to a PBX.
        if to.addr == self.me || (!from_pbx && !self.is_pbx(to.addr)) {
            return Err(Dropped::NoRoute);
        }
        // A PBX reaches a phone only through a flow the edge signed: a
        // request spoofed from a PBX's address has none.
        if from_pbx && flow_of_phone.is_none() && !self.is_pbx(to.addr) {
            return Err(Dropped::UnsignedFlow);
        }
        let mut notes = Vec::new();
        let me = self.me_hostport();
        let branch = self.branch(&via, msg, from, back);
        e.prepend(&format!(
            "Via: SIP/2.0/{} {me};branch={branch}",
            to.transport.as_str()
        ));
        let rr_param = phone_flow.map(|f| format!(";rs-flow={}", self.seal_flow(f, Some(call_id))));
        let path_param = phone_flow.map(|f| format!(";rs-flow={}", self.seal_flow(f, None)));
        let to_tag = msg
            .value(Name::To)
            .and_then(NameAddr::parse)
            .and_then(|n| n.tag());
        if to_tag.is_none() && matches!(method, "INVITE" | "SUBSCRIBE" | "REFER" | "NOTIFY") {
            e.prepend(&format!(
                "Record-Route: <sip:{me};lr{}>",
                rr_param.as_deref().unwrap_or("")
            ));
        }
        if method == "REGISTER" && !from_pbx {
            e.prepend(&format!(
                "Path: <sip:{me};lr{}>",
                path_param.as_deref().unwrap_or("")
            ));
            if let Some(aor) = msg
                .value(Name::To)
                .and_then(NameAddr::parse)
                .and_then(|n| Uri::parse(n.uri))
            {
                let requested = register_expires(msg);
                notes.push(Note::Register {
                    aor: aor.aor(),
                    from,
                    to,
                    call_id: call_id.to_owned(),
                    requested,
                    template: template(msg, uri, from).filter(|_| requested != Some(0)),
                });
            }
        }
        if method == "INVITE" && to_tag.is_none() {
            if let Some(phone) = phone_flow {
                notes.push(Note::Invite {
                    call_id: call_id.to_owned(),
                    phone,
                });
            }
        }
        if method == "BYE" {
            notes.push(Note::DialogDown {
                call_id: call_id.to_owned(),
            });
        }
        Ok(Outgoing {
            to,
            bytes: e.finish(),
            generated: false,
            notes,
        })
    }

    /// A REGISTER the edge sends on a phone's behalf, from the template of
    /// its last REGISTER ([`Note::Register`]): the phone's R-URI, To, From
    /// and Contact, a Path naming the edge with the phone's flow (so the
    /// PBX's calls come back through the edge to the phone), the edge's
    /// own Via branch (so the answer is the edge's: [`Relay::own_answer`]),
    /// Call-ID and CSeq, and `expires` seconds. None for a bad template.
    pub fn register(&self, template: &str, call_id: &str, expires: u32) -> Option<Vec<u8>> {
        let mut parts = template.split('\n');
        let (uri, to, from, contact, flow) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        let hex = self.own_branch_mac(call_id);
        let flow = self.seal_flow(Flow::decode(flow)?, None);
        let me = self.me_hostport();
        let from = strip_param(from, "tag");
        let contact = strip_param(contact, "expires");
        let text = format!(
            "REGISTER {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch={OWN}{}\r\n\
             Max-Forwards: 70\r\n\
             From: {from};tag=rs{}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 REGISTER\r\n\
             Contact: {contact}\r\n\
             Path: <sip:{me};lr;rs-flow={flow}>\r\n\
             Expires: {expires}\r\n\
             User-Agent: resilience-edge\r\n\
             Content-Length: 0\r\n\r\n",
            hex,
            &hex[..10],
        );
        Message::parse(text.as_bytes()).ok()?;
        Some(text.into_bytes())
    }

    /// The answer to one of the edge's own requests, from a PBX: the edge
    /// consumes it. None for anything else (relay it as usual).
    pub fn own_answer(&self, from: Flow, bytes: &[u8]) -> Option<OwnAnswer> {
        // A scan for the edge's own branch before any parsing: every
        // response from a PBX comes this way first.
        if !self.is_pbx(from.addr)
            || !bytes.starts_with(b"SIP/2.0 ")
            || memchr::memmem::find(bytes, OWN.as_bytes()).is_none()
        {
            return None;
        }
        let msg = Message::parse(bytes).ok()?;
        let StartLine::Response { code, .. } = msg.start else {
            return None;
        };
        let top = split_values(msg.value(Name::Via)?)
            .next()
            .and_then(Via::parse)?;
        if !self.is_me(&top.sent_by) || !top.branch().is_some_and(|b| b.starts_with(OWN)) {
            return None;
        }
        // Only an answer to a REGISTER the edge sent: its branch is a MAC of
        // the Call-ID (a forged one is dropped as a forged branch).
        let call_id = msg.value(Name::CallId)?;
        let mac = top.branch()?.strip_prefix(OWN)?;
        if !same(&self.own_branch_mac(call_id), mac) {
            return None;
        }
        let aor = msg
            .value(Name::To)
            .and_then(NameAddr::parse)
            .and_then(|n| Uri::parse(n.uri))?
            .aor();
        Some(OwnAnswer {
            code,
            call_id: msg.value(Name::CallId)?.to_owned(),
            aor,
        })
    }

    fn me_hostport(&self) -> String {
        match self.me {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        }
    }

    fn response(&self, msg: &Message<'_>, from: Flow, code: u16) -> Result<Outgoing, Dropped> {
        let via_h = msg.header(Name::Via).ok_or(Dropped::BadVia)?;
        let mut values = split_values(via_h.value);
        let top = values.next().and_then(Via::parse).ok_or(Dropped::BadVia)?;
        // The answers to the edge's own requests are [`Relay::own_answer`]'s.
        if !self.is_me(&top.sent_by) || top.branch().is_some_and(|b| b.starts_with(OWN)) {
            return Err(Dropped::NotOurs);
        }
        let (id, mac) = top
            .branch()
            .and_then(|b| {
                b.strip_prefix(COOKIE)?
                    .strip_prefix("-rs-")?
                    .split_once('-')
            })
            .ok_or(Dropped::ForgedBranch)?;
        let rest: Vec<&str> = values.collect();
        let mut e = Edit::new(msg);
        let next = if rest.is_empty() {
            e.remove(via_h);
            msg.all(Name::Via)
                .nth(1)
                .and_then(|h| split_values(h.value).next())
        } else {
            e.set_value(via_h, &rest.join(", "));
            rest.first().copied()
        };
        let next = next.and_then(Via::parse).ok_or(Dropped::BadVia)?;
        let to = via_flow(&next).ok_or(Dropped::BadVia)?;
        // Only where the edge itself sent the request from: a response
        // forged with the edge's Via on top is not reflected.
        let want = self.branch_mac(id, next.branch().unwrap_or_default(), Some(to));
        if !same(&want, mac) {
            return Err(Dropped::ForgedBranch);
        }
        // Responses flow between phones and PBXs only: one from elsewhere
        // may go to a PBX (a phone answering a call), never anywhere else,
        // and only a PBX's answers teach the router anything.
        let from_pbx = self.is_pbx(from.addr);
        if !from_pbx && !self.is_pbx(to.addr) {
            return Err(Dropped::NotOurs);
        }
        let call_id = msg.value(Name::CallId).unwrap_or_default().to_owned();
        let mut notes = Vec::new();
        match msg.cseq_method().filter(|_| from_pbx) {
            Some("REGISTER") if code >= 200 => {
                let aor = msg
                    .value(Name::To)
                    .and_then(NameAddr::parse)
                    .and_then(|n| Uri::parse(n.uri))
                    .map(|u| u.aor())
                    .unwrap_or_default();
                notes.push(Note::Registered {
                    aor,
                    code,
                    call_id,
                    expires: register_expires(msg),
                });
            }
            Some("INVITE") if (200..300).contains(&code) => notes.push(Note::DialogUp { call_id }),
            Some("INVITE") if code >= 300 => notes.push(Note::DialogDown { call_id }),
            _ => {}
        }
        Ok(Outgoing {
            to,
            bytes: e.finish(),
            generated: false,
            notes,
        })
    }

    /// The branch for the request's next hop: the same for a
    /// retransmission, a CANCEL or a non-2xx ACK of one request (they carry
    /// its top Via branch), different for every other request; signed for
    /// `back`, where its responses go.
    fn branch(&self, via: &Via<'_>, msg: &Message<'_>, from: Flow, back: Option<Flow>) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.secret);
        match via.branch().filter(|b| b.starts_with(COOKIE)) {
            Some(b) => {
                h.update(b.as_bytes());
                h.update(via.sent_by.host.as_bytes());
            }
            // RFC 2543 peers: what identifies their transaction.
            None => {
                // The CSeq number but not its method, and not the To tag,
                // so a CANCEL or non-2xx ACK matches its INVITE.
                let cseq = msg.value(Name::CSeq).unwrap_or_default();
                let number = cseq.split_whitespace().next().unwrap_or_default();
                for v in [msg.value(Name::CallId).unwrap_or_default(), number] {
                    h.update(v.as_bytes());
                    h.update(b"\n");
                }
                let from_tag = msg
                    .value(Name::From)
                    .and_then(NameAddr::parse)
                    .and_then(|n| n.tag());
                h.update(from_tag.unwrap_or_default().as_bytes());
                if let StartLine::Request { uri, .. } = msg.start {
                    h.update(uri.as_bytes());
                }
            }
        }
        h.update(from.addr.to_string().as_bytes());
        let hex = h.finalize().to_hex();
        let id = &hex[..MAC_HEX];
        let mac = self.branch_mac(id, via.branch().unwrap_or_default(), back);
        format!("{COOKIE}-rs-{id}-{mac}")
    }

    /// A response the edge makes itself, to the address the request came
    /// from (never to what its Via says: a request spoofed from a PBX's
    /// address must not make the edge answer someone else).
    fn reply(&self, msg: &Message<'_>, from: Flow, code: u16, reason: &str) -> Outgoing {
        let mut out = format!("SIP/2.0 {code} {reason}\r\n");
        for h in msg.all(Name::Via) {
            out.push_str(&format!("Via: {}\r\n", h.value));
        }
        for n in [Name::From, Name::CallId, Name::CSeq] {
            if let Some(h) = msg.header(n) {
                out.push_str(&format!("{}: {}\r\n", h.raw_name, h.value));
            }
        }
        if let Some(to) = msg.value(Name::To) {
            let tagged = NameAddr::parse(to).and_then(|n| n.tag()).is_some();
            if tagged {
                out.push_str(&format!("To: {to}\r\n"));
            } else {
                out.push_str(&format!("To: {to};tag=rs{code}\r\n"));
            }
        }
        if code == 503 {
            out.push_str(&format!("Retry-After: {}\r\n", self.retry_after));
        }
        out.push_str("Server: resilience-edge\r\nContent-Length: 0\r\n\r\n");
        Outgoing {
            to: from,
            bytes: out.into_bytes(),
            generated: true,
            notes: Vec::new(),
        }
    }
}

/// Drop `;name` or `;name=value` from a Via value.
fn strip_param(v: &str, name: &str) -> String {
    let mut parts = v.split(';');
    let mut out = parts.next().unwrap_or_default().to_owned();
    for p in parts {
        let n = p.split('=').next().unwrap_or_default().trim();
        if !n.eq_ignore_ascii_case(name) {
            out.push(';');
            out.push_str(p);
        }
    }
    out
}

/// Two MACs as hex, compared in constant time.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Where a response to this Via goes.
fn via_flow(v: &Via<'_>) -> Option<Flow> {
    Some(Flow {
        transport: Transport::parse(v.transport).unwrap_or(Transport::Udp),
        addr: v.reply_to()?,
    })
}

/// The flow a SIP URI names (no DNS: the host must be an IP).
fn uri_flow(uri: &str) -> Option<Flow> {
    let u = Uri::parse(uri)?;
    let transport = match u.params.get("transport").flatten() {
        Some(t) => Transport::parse(t)?,
        None => Transport::Udp,
    };
    Some(Flow {
        transport,
        addr: u.host.socket(5060)?,
    })
}

/// A REGISTER response with every granted expiry capped at `max` seconds
/// (the Contact `expires` parameters and the Expires header): a phone away
/// from home re-registers sooner, and so comes home sooner. None when
/// nothing was above `max`, or the bytes are not a message.
pub fn cap_expires(bytes: &[u8], max: u32) -> Option<Vec<u8>> {
    let msg = Message::parse(bytes).ok()?;
    let mut e = Edit::new(&msg);
    let mut changed = false;
    for h in msg.all(Name::Contact) {
        let mut values = Vec::new();
        let mut this = false;
        for v in split_values(h.value) {
            let capped = NameAddr::parse(v)
                .and_then(|n| n.params.get("expires").flatten())
                .and_then(|x| x.parse::<u32>().ok())
                .filter(|&x| x > max);
            match capped {
                Some(_) => {
                    this = true;
                    let mut s = strip_param(v, "expires");
                    s.push_str(&format!(";expires={max}"));
                    values.push(s);
                }
                None => values.push(v.to_owned()),
            }
        }
        if this {
            changed = true;
            e.set_value(h, &values.join(", "));
        }
    }
    if let Some(h) = msg.header(Name::Expires) {
        if h.value.parse::<u32>().is_ok_and(|x| x > max) {
            changed = true;
            e.set_value(h, &max.to_string());
        }
    }
    changed.then(|| e.finish())
}

/// What the edge keeps of a phone's REGISTER to register it elsewhere:
/// R-URI, To, From, Contact and the phone's flow, one per line. None when
/// it has no single plain contact.
fn template(msg: &Message<'_>, uri: &str, from: Flow) -> Option<String> {
    let mut contacts = msg.all(Name::Contact).flat_map(|h| split_values(h.value));
    let contact = contacts.next()?;
    if contacts.next().is_some() || contact.trim() == "*" {
        return None;
    }
    let fields = [uri, msg.value(Name::To)?, msg.value(Name::From)?, contact];
    if fields.iter().any(|f| f.contains(['\r', '\n'])) {
        return None;
    }
    Some(format!("{}\n{}", fields.join("\n"), from.encode()))
}

/// The expiry a REGISTER (or its response) names: the Contact's
/// `expires`, else the Expires header.
fn register_expires(msg: &Message<'_>) -> Option<u32> {
    msg.all(Name::Contact)
        .flat_map(|h| split_values(h.value))
        .filter_map(NameAddr::parse)
        .find_map(|n| n.params.get("expires").flatten()?.parse().ok())
        .or_else(|| msg.value(Name::Expires)?.parse().ok())
}

#[cfg(test)]
mod tests;
