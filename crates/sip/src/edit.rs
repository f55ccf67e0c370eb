//! Changes to a parsed message, printed by splicing: the bytes between the
//! changes are copied as they came, in one pass.

use crate::message::{Header, Message};
use std::ops::Range;

#[derive(Debug)]
pub struct Edit<'m> {
    msg: &'m Message<'m>,
    /// (range replaced, text put there); an empty range inserts.
    ops: Vec<(Range<usize>, String)>,
}

impl<'m> Edit<'m> {
    pub fn new(msg: &'m Message<'m>) -> Edit<'m> {
        Edit {
            msg,
            ops: Vec::new(),
        }
    }

    /// Add a header line at the top of the headers (`"Via: …"`, no line
    /// end). Lines added earlier stay above lines added later.
    pub fn prepend(&mut self, line: &str) {
        let at = self.msg.start_line.end;
        self.ops.push((at..at, format!("{line}\r\n")));
    }

    /// Add a header line after the last header.
    pub fn append(&mut self, line: &str) {
        let at = self.msg.head_end;
        self.ops.push((at..at, format!("{line}\r\n")));
    }

    /// Replace the value of a header line (its name kept as written).
    pub fn set_value(&mut self, h: &Header<'_>, value: &str) {
        self.ops
            .push((h.line.clone(), format!("{}: {value}\r\n", h.raw_name)));
    }

    pub fn remove(&mut self, h: &Header<'_>) {
        self.ops.push((h.line.clone(), String::new()));
    }

    /// Print the message with the changes; Content-Length stays right
    /// because the body is never touched.
    pub fn finish(mut self) -> Vec<u8> {
        self.ops.sort_by_key(|(r, _)| (r.start, r.end));
        let raw = self.msg.raw;
        let extra: usize = self.ops.iter().map(|(_, t)| t.len()).sum();
        let mut out = Vec::with_capacity(self.msg.body.end + extra);
        let mut at = 0;
        for (r, text) in &self.ops {
            // Two changes of one line: the first wins (callers avoid it).
            if r.start < at {
                continue;
            }
            out.extend_from_slice(&raw[at..r.start]);
            out.extend_from_slice(text.as_bytes());
            at = r.end;
        }
        out.extend_from_slice(&raw[at..self.msg.body.end]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Name;

    #[test]
    fn splices_changes_and_keeps_the_rest_byte_for_byte() {
        let raw = "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b\r\nX-Odd :  v \r\nMax-Forwards: 70\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nFrom: <sip:a>;tag=1\r\nTo: <sip:x>\r\nContent-Length: 2\r\n\r\nhi";
        let m = Message::parse(raw.as_bytes()).unwrap();
        let mut e = Edit::new(&m);
        e.prepend("Via: SIP/2.0/UDP edge;branch=z9hG4bKe");
        e.prepend("Record-Route: <sip:edge;lr>");
        e.set_value(m.header(Name::MaxForwards).unwrap(), "69");
        e.remove(m.header(Name::To).unwrap());
        e.append("To: <sip:y>");
        let out = String::from_utf8(e.finish()).unwrap();
        assert_eq!(
            out,
            "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP edge;branch=z9hG4bKe\r\nRecord-Route: <sip:edge;lr>\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b\r\nX-Odd :  v \r\nMax-Forwards: 69\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nFrom: <sip:a>;tag=1\r\nContent-Length: 2\r\nTo: <sip:y>\r\n\r\nhi"
        );
    }
}
