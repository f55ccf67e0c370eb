//! Typed views of the few headers a relay reads: Via (RFC 3261 §20.42,
//! RFC 3581 `rport`), SIP URIs and name-addrs (§19.1, §20.10). Each borrows
//! from the message; nothing is copied.

use std::net::{IpAddr, SocketAddr};

/// `;name=value` parameters, in order; a flag parameter has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params<'a>(pub &'a str);

impl<'a> Params<'a> {
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
        self.0.split(';').filter_map(|p| {
            let p = p.trim();
            if p.is_empty() {
                return None;
            }
            Some(match p.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (p, None),
            })
        })
    }

    /// `Some(None)`: present as a flag; `Some(Some(v))`: with a value.
    pub fn get(&self, name: &str) -> Option<Option<&'a str>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// A host and an optional port, as written (`[::1]` keeps its brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort<'a> {
    pub host: &'a str,
    pub port: Option<u16>,
}

impl<'a> HostPort<'a> {
    pub fn parse(s: &'a str) -> Option<HostPort<'a>> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let end = rest.find(']')?;
            let host = &s[..end + 2];
            match &rest[end + 1..] {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':')?.parse().ok()?)),
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p.parse().ok()?)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(HostPort { host, port })
    }

    /// The address, if the host is an IP literal (the relay does no DNS).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
    }

    pub fn socket(&self, default_port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            self.ip()?,
            self.port.unwrap_or(default_port),
        ))
    }
}

/// One Via value: `SIP/2.0/UDP host:port;branch=…;rport;received=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    pub transport: &'a str,
    pub sent_by: HostPort<'a>,
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    pub fn parse(v: &'a str) -> Option<Via<'a>> {
        // "SIP / 2.0 / UDP" may carry spaces around the slashes.
        let mut rest = v.trim();
        let mut proto = [""; 3];
        for (i, slot) in proto.iter_mut().enumerate() {
            let end = if i < 2 {
                rest.find('/')?
            } else {
                rest.find(|c: char| c.is_ascii_whitespace())?
            };
            *slot = rest[..end].trim();
            rest = rest[end + 1..].trim_start();
        }
        if !proto[0].eq_ignore_ascii_case("SIP") || proto[1] != "2.0" || proto[2].is_empty() {
            return None;
        }
        let (sent_by, params) = match rest.find(';') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        Some(Via {
            transport: proto[2],
            sent_by: HostPort::parse(sent_by)?,
            params: Params(params),
        })
    }

    pub fn branch(&self) -> Option<&'a str> {
        self.params.get("branch").flatten()
    }

    /// Where a response to this hop goes (RFC 3261 §18.2.2, RFC 3581):
    /// `received` and `rport` when the hop was seen from elsewhere, else
    /// `sent-by`.
    pub fn reply_to(&self) -> Option<SocketAddr> {
        let default_port = if self.transport.eq_ignore_ascii_case("TLS") {
            5061
        } else {
            5060
        };
        let ip = match self.params.get("received").flatten() {
            Some(r) => r.trim_matches(['[', ']']).parse().ok()?,
            None => self.sent_by.ip()?,
        };
        let port = match self.params.get("rport").flatten() {
            Some(p) => p.parse().ok()?,
            None => self.sent_by.port.unwrap_or(default_port),
        };
        Some(SocketAddr::new(ip, port))
    }
}

/// A SIP or SIPS URI: `sip:user@host:port;params?headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: &'a str,
    pub user: Option<&'a str>,
    pub host: HostPort<'a>,
    pub params: Params<'a>,
}

impl<'a> Uri<'a> {
    pub fn parse(s: &'a str) -> Option<Uri<'a>> {
        let s = s.trim();
        let (scheme, rest) = s.split_once(':')?;
        if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
            return None;
        }
        let rest = rest.split('?').next().unwrap_or(rest);
        let (user, hostpart) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let (hostport, params) = match hostpart.find(';') {
            Some(i) => (&hostpart[..i], &hostpart[i + 1..]),
            None => (hostpart, ""),
        };
        Some(Uri {
            scheme,
            user,
            host: HostPort::parse(hostport)?,
            params: Params(params),
        })
    }

    /// The address of `user@host` without port or parameters, for the
    /// phones table (`sip:alice@pbx`).
    pub fn aor(&self) -> String {
        match self.user {
            Some(u) => format!("sip:{u}@{}", self.host.host),
            None => format!("sip:{}", self.host.host),
        }
    }
}

/// A name-addr or addr-spec value (`"Alice" <sip:a@b>;tag=1`): the URI
/// and the header parameters after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub uri: &'a str,
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    pub fn parse(v: &'a str) -> Option<NameAddr<'a>> {
        let v = v.trim();
        // Skip a quoted display name, which may hold '<'.
        let mut i = 0;
        let b = v.as_bytes();
        if b.first() == Some(&b'"') {
            i = 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
        }
        match v[i.min(v.len())..].find('<') {
            Some(lt) => {
                let lt = i + lt;
                let gt = lt + v[lt..].find('>')?;
                let after = &v[gt + 1..];
                Some(NameAddr {
                    uri: &v[lt + 1..gt],
                    params: Params(after.trim_start().trim_start_matches(';')),
                })
            }
            // addr-spec: parameters after the URI belong to the header.
            None => {
                let (uri, params) = match v.find(';') {
                    Some(i) => (&v[..i], &v[i + 1..]),
                    None => (v, ""),
                };
                Some(NameAddr {
                    uri: uri.trim(),
                    params: Params(params),
                })
            }
        }
    }

    pub fn tag(&self) -> Option<&'a str> {
        self.params.get("tag").flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_rport_and_received() {
        let v = Via::parse(
            "SIP / 2.0 / UDP 10.0.0.2:5062;branch=z9hG4bKabc;rport=40000;received=192.0.2.9",
        )
        .unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.sent_by.host, "10.0.0.2");
        assert_eq!(v.branch(), Some("z9hG4bKabc"));
        assert_eq!(v.reply_to(), Some("192.0.2.9:40000".parse().unwrap()));
        let v = Via::parse("SIP/2.0/TCP [::1]:5070;branch=z9hG4bKx;rport").unwrap();
        assert_eq!(v.reply_to(), Some("[::1]:5070".parse().unwrap()));
        let v = Via::parse("SIP/2.0/TLS 127.0.0.1").unwrap();
        assert_eq!(v.reply_to(), Some("127.0.0.1:5061".parse().unwrap()));
        assert_eq!(Via::parse("SIP/3.0/UDP h"), None);
        assert_eq!(Via::parse("garbage"), None);
        let v = Via::parse("SIP/2.0/UDP pbx.example.com;branch=z9hG4bKx").unwrap();
        assert_eq!(v.reply_to(), None, "no DNS in the relay");
    }

    #[test]
    fn uris_and_name_addrs() {
        let u = Uri::parse("sip:alice@127.0.0.1:5070;transport=tcp;lr").unwrap();
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.host.socket(5060), Some("127.0.0.1:5070".parse().unwrap()));
        assert_eq!(u.params.get("lr"), Some(None));
        assert_eq!(u.params.get("transport"), Some(Some("tcp")));
        assert_eq!(u.aor(), "sip:alice@127.0.0.1");
        assert_eq!(Uri::parse("tel:+331"), None);
        let n = NameAddr::parse("\"Doe <J>\" <sip:a@b;lr>;tag=x;q=1").unwrap();
        assert_eq!(n.uri, "sip:a@b;lr");
        assert_eq!(n.tag(), Some("x"));
        let n = NameAddr::parse("sip:a@b;tag=9").unwrap();
        assert_eq!((n.uri, n.tag()), ("sip:a@b", Some("9")));
        assert_eq!(NameAddr::parse("<sip:a@b"), None);
    }
}
