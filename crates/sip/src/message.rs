//! A SIP message as slices of the bytes it came in (RFC 3261 §7, §20).
//!
//! Written here rather than taken from `rsip` or `ezk-sip-types`: those
//! parse every header into owned, typed values and print the message anew,
//! while a relay reads five headers (Via, Route, Max-Forwards, Call-ID,
//! CSeq) and must pass every other byte through untouched — a phone's odd
//! but working header must reach the PBX as the phone wrote it. So parsing
//! here only finds where each header line starts and ends (one pass, no
//! copy); typed views of the few headers the relay needs live in
//! [`crate::header`], and [`crate::edit`] splices the changes.
//!
//! Strict where routing depends on it (a start line, Via, Call-ID, CSeq,
//! From and To must be there; Content-Length must agree with the bytes),
//! lenient where phones are sloppy (bare LF line ends, header folding,
//! any case in header names, spaces before the colon).

use std::ops::Range;

/// Largest message accepted; RFC 3261 asks UDP senders to stay under
/// 1300 bytes, TCP carries more, nothing sane comes near this.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most header lines accepted in one message.
pub const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    #[error("no blank line after the headers")]
    NoEndOfHeaders,
    #[error("the head is not UTF-8")]
    NotUtf8,
    #[error("bad start line")]
    BadStartLine,
    #[error("bad header line {0}")]
    BadHeader(usize),
    #[error("bad Content-Length")]
    BadContentLength,
    #[error("body shorter than its Content-Length")]
    Truncated,
    #[error("missing {0} header")]
    Missing(&'static str),
}

/// Headers the relay looks at, whatever their case or compact form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Name {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    ContentLength,
    ContentType,
    MaxForwards,
    Route,
    RecordRoute,
    Path,
    Expires,
    Supported,
    Require,
    Other,
}

impl Name {
    pub fn of(raw: &str) -> Name {
        if raw.len() == 1 {
            return match raw.as_bytes()[0].to_ascii_lowercase() {
                b'v' => Name::Via,
                b'f' => Name::From,
                b't' => Name::To,
                b'i' => Name::CallId,
                b'm' => Name::Contact,
                b'l' => Name::ContentLength,
                b'c' => Name::ContentType,
                b'k' => Name::Supported,
                _ => Name::Other,
            };
        }
        const NAMES: [(&str, Name); 14] = [
            ("via", Name::Via),
            ("from", Name::From),
            ("to", Name::To),
            ("call-id", Name::CallId),
            ("cseq", Name::CSeq),
            ("contact", Name::Contact),
            ("content-length", Name::ContentLength),
            ("content-type", Name::ContentType),
            ("max-forwards", Name::MaxForwards),
            ("route", Name::Route),
            ("record-route", Name::RecordRoute),
            ("path", Name::Path),
            ("expires", Name::Expires),
            ("supported", Name::Supported),
        ];
        for (n, v) in NAMES {
            if raw.eq_ignore_ascii_case(n) {
                return v;
            }
        }
        if raw.eq_ignore_ascii_case("require") {
            return Name::Require;
        }
        Name::Other
    }
}

/// One header line (folded continuation lines included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: Name,
    /// The name as written.
    pub raw_name: &'a str,
    /// The value, trimmed; folded lines keep their line breaks inside.
    pub value: &'a str,
    /// The whole line in the message, line end included.
    pub line: Range<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request { method: &'a str, uri: &'a str },
    Response { code: u16, reason: &'a str },
}

#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub raw: &'a [u8],
    pub start: StartLine<'a>,
    /// The start line, line end included.
    pub start_line: Range<usize>,
    pub headers: Vec<Header<'a>>,
    /// Where the blank line after the headers starts.
    pub head_end: usize,
    pub body: Range<usize>,
}

/// Where the head ends: the offset of the blank line and of the body.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(p) = memchr(b'\n', &buf[i..]) {
        let nl = i + p;
        let next = nl + 1;
        if buf.get(next) == Some(&b'\n') {
            return Some((next, next + 1));
        }
        if buf.get(next) == Some(&b'\r') && buf.get(next + 1) == Some(&b'\n') {
            return Some((next, next + 2));
        }
        i = next;
    }
    None
}

fn memchr(b: u8, s: &[u8]) -> Option<usize> {
    s.iter().position(|&c| c == b)
}

/// Skip the CRLFs that keep a TCP flow alive (RFC 5626 §3.5.1) and stray
/// blank lines before a message.
pub fn skip_keepalive(buf: &[u8]) -> usize {
    buf.iter()
        .position(|&c| c != b'\r' && c != b'\n')
        .unwrap_or(buf.len())
}

/// On a stream: the length of the first message in `buf` once all of it
/// is there (`None`: wait for more). The message must start at `buf[0]`
/// (see [`skip_keepalive`]); a stream needs Content-Length (absent: no body).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let Some((_, body_start)) = find_head_end(buf) else {
        if buf.len() > MAX_MESSAGE {
            return Err(ParseError::TooLarge);
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..body_start]).map_err(|_| ParseError::NotUtf8)?;
    // The first Content-Length, as `Message::parse` reads it; folded
    // continuation lines are values, not headers.
    let len: usize = head
        .split('\n')
        .skip(1)
        .filter(|line| !line.starts_with([' ', '\t']))
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| Name::of(n.trim()) == Name::ContentLength)
        .map_or(Ok(0), |(_, v)| v.trim().parse())
        .map_err(|_| ParseError::BadContentLength)?;
    if len > MAX_MESSAGE || body_start + len > MAX_MESSAGE {
        return Err(ParseError::TooLarge);
    }
    let total = body_start + len;
    Ok((buf.len() >= total).then_some(total))
}

fn parse_start(line: &str) -> Result<StartLine<'_>, ParseError> {
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.parse().map_err(|_| ParseError::BadStartLine)?;
        if !(100..700).contains(&code) {
            return Err(ParseError::BadStartLine);
        }
        return Ok(StartLine::Response { code, reason });
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some("SIP/2.0"), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadStartLine);
    };
    if method.is_empty()
        || !method
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c))
        || uri.is_empty()
    {
        return Err(ParseError::BadStartLine);
    }
    Ok(StartLine::Request { method, uri })
}

impl<'a> Message<'a> {
    /// Parse one whole message (a datagram, or a frame cut by
    /// [`frame_len`]). Over UDP a missing Content-Length means the rest of
    /// the datagram; a longer one is an error, a shorter one cuts the body.
    pub fn parse(raw: &'a [u8]) -> Result<Message<'a>, ParseError> {
        if raw.len() > MAX_MESSAGE {
            return Err(ParseError::TooLarge);
        }
        let (head_end, body_start) = find_head_end(raw).ok_or(ParseError::NoEndOfHeaders)?;
        let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| ParseError::NotUtf8)?;
        let first_end = head.find('\n').map_or(head.len(), |i| i + 1);
        let start = parse_start(&head[..first_end])?;
        let mut headers: Vec<Header<'a>> = Vec::with_capacity(16);
        let mut pos = first_end;
        let mut n = 0;
        while pos < head_end {
            // One logical line: this line and every continuation line.
            let mut end = pos;
            loop {
                end += head[end..].find('\n').map_or(head.len() - end, |i| i + 1);
                match head.as_bytes().get(end) {
                    Some(b' ') | Some(b'\t') if end < head_end => continue,
                    _ => break,
                }
            }
            n += 1;
            if headers.len() == MAX_HEADERS {
                return Err(ParseError::TooManyHeaders);
            }
            let text = &head[pos..end];
            let (name, value) = text.split_once(':').ok_or(ParseError::BadHeader(n))?;
            let raw_name = name.trim_end_matches([' ', '\t']);
            if raw_name.is_empty() || raw_name.bytes().any(|c| c <= b' ' || c >= 0x7f) {
                return Err(ParseError::BadHeader(n));
            }
            let value = value.trim_matches([' ', '\t', '\r', '\n']);
            headers.push(Header {
                name: Name::of(raw_name),
                raw_name,
                value,
                line: pos..end,
            });
            pos = end;
        }
        let available = raw.len() - body_start;
        let body_len = match headers.iter().find(|h| h.name == Name::ContentLength) {
            Some(h) => {
                let l: usize = h.value.parse().map_err(|_| ParseError::BadContentLength)?;
                if l > available {
                    return Err(ParseError::Truncated);
                }
                l
            }
            None => available,
        };
        let msg = Message {
            raw,
            start,
            start_line: 0..first_end,
            headers,
            head_end,
            body: body_start..body_start + body_len,
        };
        for (name, what) in [
            (Name::Via, "Via"),
            (Name::CallId, "Call-ID"),
            (Name::CSeq, "CSeq"),
            (Name::From, "From"),
            (Name::To, "To"),
        ] {
            if msg.header(name).is_none() {
                return Err(ParseError::Missing(what));
            }
        }
        Ok(msg)
    }

    pub fn header(&self, name: Name) -> Option<&Header<'a>> {
        self.headers.iter().find(|h| h.name == name)
    }

    /// Every header line of that name, in order.
    pub fn all(&self, name: Name) -> impl Iterator<Item = &Header<'a>> + '_ {
        self.headers.iter().filter(move |h| h.name == name)
    }

    pub fn value(&self, name: Name) -> Option<&'a str> {
        self.header(name).map(|h| h.value)
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The method named in CSeq (what a response answers).
    pub fn cseq_method(&self) -> Option<&'a str> {
        self.value(Name::CSeq)?.split_whitespace().nth(1)
    }

    pub fn body(&self) -> &'a [u8] {
        &self.raw[self.body.clone()]
    }
}

/// The values of a comma-separated header (`Via: a, b`), commas inside
/// quotes or `<…>` left alone.
pub fn split_values(v: &str) -> impl Iterator<Item = &str> {
    let b = v.as_bytes();
    let mut start = 0;
    let mut i = 0;
    let mut quoted = false;
    let mut angle = false;
    std::iter::from_fn(move || {
        if start > b.len() {
            return None;
        }
        while i < b.len() {
            match b[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'<' if !quoted => angle = true,
                b'>' if !quoted => angle = false,
                b',' if !quoted && !angle => {
                    let part = &v[start..i];
                    i += 1;
                    start = i;
                    return Some(part.trim_matches([' ', '\t', '\r', '\n']));
                }
                _ => {}
            }
            i += 1;
        }
        let part = &v[start.min(b.len())..];
        start = b.len() + 1;
        Some(part.trim_matches([' ', '\t', '\r', '\n']))
    })
    .filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
f: \"Doe, Alice\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
i: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@10.0.0.2>\r\n\
X-Odd:   kept as is \r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

    #[test]
    fn parses_a_request_with_compact_forms() {
        let m = Message::parse(INVITE.as_bytes()).unwrap();
        assert_eq!(
            m.start,
            StartLine::Request {
                method: "INVITE",
                uri: "sip:bob@biloxi.example.com"
            }
        );
        assert_eq!(
            m.value(Name::CallId),
            Some("a84b4c76e66710@pc33.atlanta.example.com")
        );
        assert_eq!(m.header(Name::From).unwrap().raw_name, "f");
        assert_eq!(m.cseq_method(), Some("INVITE"));
        assert_eq!(m.body(), b"v=0\n");
        let odd = m.headers.iter().find(|h| h.raw_name == "X-Odd").unwrap();
        assert_eq!(odd.value, "kept as is");
        assert_eq!(&INVITE[odd.line.clone()], "X-Odd:   kept as is \r\n");
    }

    #[test]
    fn lenient_with_bare_lf_folding_and_case() {
        let raw = "OPTIONS sip:pbx SIP/2.0\nvIA : SIP/2.0/UDP 1.2.3.4\n ;branch=z9hG4bKx\ncall-id: 1\ncseq: 1 OPTIONS\nfrom: <sip:a@b>;tag=1\nTO: <sip:pbx>\n\n";
        let m = Message::parse(raw.as_bytes()).unwrap();
        let via = m.header(Name::Via).unwrap();
        assert!(via.value.ends_with(";branch=z9hG4bKx"), "{:?}", via.value);
        assert_eq!(m.body(), b"");
    }

    #[test]
    fn strict_where_routing_depends_on_it() {
        let cases: [(&str, ParseError); 6] = [
            ("INVITE sip:x SIP/2.0\r\nVia: a\r\n", ParseError::NoEndOfHeaders),
            ("INVITE sip:x\r\n\r\n", ParseError::BadStartLine),
            ("SIP/2.0 99 Odd\r\n\r\n", ParseError::BadStartLine),
            (
                "INVITE sip:x SIP/2.0\r\nno colon here\r\n\r\n",
                ParseError::BadHeader(1),
            ),
            (
                "INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nCall-ID: 1\r\nCSeq: 1 INVITE\r\nFrom: <sip:a>\r\nTo: <sip:b>\r\nContent-Length: 10\r\n\r\nshort",
                ParseError::Truncated,
            ),
            (
                "INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nCSeq: 1 INVITE\r\nFrom: <sip:a>\r\nTo: <sip:b>\r\n\r\n",
                ParseError::Missing("Call-ID"),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(Message::parse(raw.as_bytes()).unwrap_err(), want, "{raw:?}");
        }
        let big = vec![b'a'; MAX_MESSAGE + 1];
        assert_eq!(Message::parse(&big).unwrap_err(), ParseError::TooLarge);
    }

    #[test]
    fn content_length_shorter_than_the_datagram_cuts_the_body() {
        let raw = INVITE.replace("Content-Length: 4", "Content-Length: 2");
        let m = Message::parse(raw.as_bytes()).unwrap();
        assert_eq!(m.body(), b"v=");
    }

    #[test]
    fn stream_framing_waits_for_the_whole_message() {
        let b = INVITE.as_bytes();
        assert_eq!(frame_len(&b[..40]).unwrap(), None);
        assert_eq!(frame_len(&b[..b.len() - 1]).unwrap(), None);
        assert_eq!(frame_len(b).unwrap(), Some(b.len()));
        let mut two = b.to_vec();
        two.extend_from_slice(b);
        assert_eq!(frame_len(&two).unwrap(), Some(b.len()));
        assert_eq!(skip_keepalive(b"\r\n\r\nINVITE"), 4);
        // A Content-Length that would wrap around is too large, not zero.
        let evil = b"OPTIONS sip:a SIP/2.0\r\nl: 18446744073709551566\r\n\r\n";
        assert_eq!(frame_len(evil), Err(ParseError::TooLarge));
        // A folded line is not a header.
        let folded = b"OPTIONS sip:a SIP/2.0\r\nX-A: 1\r\n l: 999\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(frame_len(folded), Ok(Some(folded.len())));
    }

    #[test]
    fn values_split_on_commas_outside_quotes_and_brackets() {
        let v: Vec<_> =
            split_values("\"Doe, J\" <sip:a@b;x=1,2>;q=1, <sip:c@d> ,sip:e@f").collect();
        assert_eq!(
            v,
            ["\"Doe, J\" <sip:a@b;x=1,2>;q=1", "<sip:c@d>", "sip:e@f"]
        );
        assert_eq!(split_values("").count(), 0);
    }
}
