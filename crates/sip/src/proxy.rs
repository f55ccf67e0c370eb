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

/// What to send, and to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub to: Flow,
    pub bytes: Vec<u8>,
    /// A response the edge made itself (483) rather than relayed.
    pub generated: bool,
    pub notes: Vec<Note>,
}

/// The relay: the edge's address, which peers are PBXs, and a secret for
/// branches.
#[derive(Debug, Clone)]
pub struct Relay {
    pub me: SocketAddr,
    pub pbxs: Vec<SocketAddr>,
    secret: [u8; 32],
}

const COOKIE: &str = "z9hG4bK";
/// Most header lines the relay adds to a message.
const ADDED_HEADERS: usize = 3;

impl Relay {
    pub fn new(me: SocketAddr, pbxs: Vec<SocketAddr>, secret: [u8; 32]) -> Relay {
        Relay { me, pbxs, secret }
    }

    fn is_pbx(&self, addr: SocketAddr) -> bool {
        self.pbxs.contains(&addr)
    }

    fn is_me(&self, h: &HostPort<'_>) -> bool {
        h.ip() == Some(self.me.ip()) && h.port.unwrap_or(5060) == self.me.port()
    }

    /// Relay one message that came from `from`. `route` answers, for a new
    /// request from a phone, which PBX gets it.
    pub fn handle(
        &self,
        from: Flow,
        bytes: &[u8],
        route: impl FnOnce(&NewRequest<'_>) -> Option<SocketAddr>,
    ) -> Result<Send, Dropped> {
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
    ) -> Result<Send, Dropped> {
        let via_h = msg.header(Name::Via).ok_or(Dropped::BadVia)?;
        let top = split_values(via_h.value).next().ok_or(Dropped::BadVia)?;
        let via = Via::parse(top).ok_or(Dropped::BadVia)?;
        let call_id = msg.value(Name::CallId).unwrap_or_default();
        let branch = self.branch(&via, msg, from);
        // Loops end at Max-Forwards zero; the edge never sends to itself.
        let mf = msg
            .header(Name::MaxForwards)
            .map(|h| (h, h.value.parse::<u32>().unwrap_or(70)));
        if let Some((_, 0)) = mf {
            if method != "ACK" {
                return Ok(self.reply(msg, from, &via, 483, "Too Many Hops"));
            }
            return Err(Dropped::NoRoute);
        }
        let mut e = Edit::new(msg);
        let from_pbx = self.is_pbx(from.addr);
        // RFC 3581: say where the request was seen from.
        // What a phone wrote in `received`/`rport` is never trusted (it
        // would send the PBX's answers anywhere): the edge writes both.
        let rport = via.params.get("rport").is_some() || from.transport.is_stream();
        if !from_pbx {
            let mut v = strip_param(&strip_param(top, "received"), "rport");
            v.push_str(&format!(";received={}", from.addr.ip()));
            if rport {
                v.push_str(&format!(";rport={}", from.addr.port()));
            }
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
        // Our own Route (from a Record-Route or a Path) comes off; its flow
        // says where the phone is.
        let mut flow_of_phone: Option<Flow> = None;
        let mut through_us = false;
        let mut next_route: Option<&str> = None;
        if let Some(rh) = msg.header(Name::Route) {
            let mut values = split_values(rh.value);
            let first = values.next().and_then(NameAddr::parse);
            let first_uri = first.and_then(|n| Uri::parse(n.uri));
            if let Some(u) = first_uri.filter(|u| self.is_me(&u.host)) {
                through_us = true;
                flow_of_phone = u.params.get("rs-flow").flatten().and_then(Flow::decode);
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
            Flow::udp(route(&req).ok_or(Dropped::NoPbx)?)
        };
        // Not an open relay: what comes from outside goes to a PBX.
        if to.addr == self.me || (!from_pbx && !self.is_pbx(to.addr)) {
            return Err(Dropped::NoRoute);
        }
        let mut notes = Vec::new();
        let me = self.me_hostport();
        e.prepend(&format!(
            "Via: SIP/2.0/{} {me};branch={branch}",
            to.transport.as_str()
        ));
        let flow_param = phone_flow.map(|f| format!(";rs-flow={}", f.encode()));
        let to_tag = msg
            .value(Name::To)
            .and_then(NameAddr::parse)
            .and_then(|n| n.tag());
        if to_tag.is_none() && matches!(method, "INVITE" | "SUBSCRIBE" | "REFER" | "NOTIFY") {
            e.prepend(&format!(
                "Record-Route: <sip:{me};lr{}>",
                flow_param.as_deref().unwrap_or("")
            ));
        }
        if method == "REGISTER" && !from_pbx {
            e.prepend(&format!(
                "Path: <sip:{me};lr{}>",
                flow_param.as_deref().unwrap_or("")
            ));
            if let Some(aor) = msg
                .value(Name::To)
                .and_then(NameAddr::parse)
                .and_then(|n| Uri::parse(n.uri))
            {
                notes.push(Note::Register {
                    aor: aor.aor(),
                    from,
                    to,
                    call_id: call_id.to_owned(),
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
        Ok(Send {
            to,
            bytes: e.finish(),
            generated: false,
            notes,
        })
    }

    fn me_hostport(&self) -> String {
        match self.me {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        }
    }

    fn response(&self, msg: &Message<'_>, from: Flow, code: u16) -> Result<Send, Dropped> {
        let via_h = msg.header(Name::Via).ok_or(Dropped::BadVia)?;
        let mut values = split_values(via_h.value);
        let top = values.next().and_then(Via::parse).ok_or(Dropped::BadVia)?;
        if !self.is_me(&top.sent_by) || !top.branch().is_some_and(|b| b.starts_with(COOKIE)) {
            return Err(Dropped::NotOurs);
        }
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
        let to = Flow {
            transport: Transport::parse(next.transport).unwrap_or(Transport::Udp),
            addr: next.reply_to().ok_or(Dropped::BadVia)?,
        };
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
        Ok(Send {
            to,
            bytes: e.finish(),
            generated: false,
            notes,
        })
    }

    /// The branch for the request's next hop: the same for a
    /// retransmission, a CANCEL or a non-2xx ACK of one request (they carry
    /// its top Via branch), different for every other request.
    fn branch(&self, via: &Via<'_>, msg: &Message<'_>, from: Flow) -> String {
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
        format!("{COOKIE}-rs-{}", &hex[..20])
    }

    /// A response the edge makes itself, to the request's sender.
    fn reply(&self, msg: &Message<'_>, from: Flow, via: &Via<'_>, code: u16, reason: &str) -> Send {
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
        out.push_str("Server: resilience-edge\r\nContent-Length: 0\r\n\r\n");
        let to = Flow {
            transport: from.transport,
            addr: if self.is_pbx(from.addr) {
                via.reply_to().unwrap_or(from.addr)
            } else {
                from.addr
            },
        };
        Send {
            to,
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

/// The expiry a REGISTER response grants: the Contact's `expires`, else
/// the Expires header.
fn register_expires(msg: &Message<'_>) -> Option<u32> {
    msg.all(Name::Contact)
        .flat_map(|h| split_values(h.value))
        .filter_map(NameAddr::parse)
        .find_map(|n| n.params.get("expires").flatten()?.parse().ok())
        .or_else(|| msg.value(Name::Expires)?.parse().ok())
}

#[cfg(test)]
mod tests;
