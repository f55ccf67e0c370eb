//! `resilience stand-in-pbx`: a tiny SIP responder that plays a PBX's SIP side
//! for the lab and the end-to-end tests (Asterisk is not packaged here). It
//! answers OPTIONS and REGISTER with `200 OK` (echoing Via, From, To,
//! Call-ID and CSeq, and the Contact and Expires of a REGISTER), and anything
//! else with `501 Not Implemented`. Datagrams that are not SIP requests are
//! counted and dropped.

use std::net::SocketAddr;

/// Build the answer to one request, if it is one.
pub fn answer(req: &str) -> Option<String> {
    let first = req.lines().next()?;
    let mut parts = first.split_whitespace();
    let method = parts.next()?;
    let _uri = parts.next()?;
    if parts.next() != Some("SIP/2.0") {
        return None;
    }
    let (code, reason) = match method {
        "OPTIONS" | "REGISTER" => (200, "OK"),
        _ => (501, "Not Implemented"),
    };
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for line in req.lines().skip(1) {
        if line.is_empty() {
            break;
        }
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let keep = matches!(
            name.as_str(),
            "via" | "v" | "from" | "f" | "to" | "t" | "call-id" | "i" | "cseq"
        ) || (method == "REGISTER"
            && matches!(name.as_str(), "contact" | "m" | "expires"));
        if keep {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Server: resilience-stand-in-pbx\r\nContent-Length: 0\r\n\r\n");
    Some(out)
}

/// Answer on `listen` until the process is stopped; with `tcp`, also accept
/// and close TCP connections there (what an arbiter probe needs).
pub async fn run(listen: SocketAddr, tcp: Option<SocketAddr>) -> anyhow::Result<()> {
    if let Some(addr) = tcp {
        let l = crate::listen_fds::tokio_tcp(addr).await?;
        eprintln!("stand-in PBX accepting TCP on {}", l.local_addr()?);
        tokio::spawn(async move {
            while let Ok((conn, _)) = l.accept().await {
                drop(conn);
            }
        });
    }
    let sock = crate::listen_fds::tokio_udp(listen).await?;
    eprintln!("stand-in PBX answering SIP on udp/{}", sock.local_addr()?);
    let mut buf = vec![0u8; 65_536];
    let mut dropped = 0u64;
    loop {
        let (n, from) = sock.recv_from(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf[..n]);
        match answer(&text) {
            Some(resp) => {
                let _ = sock.send_to(resp.as_bytes(), from).await;
            }
            None => {
                dropped += 1;
                if dropped.is_power_of_two() {
                    eprintln!("stand-in PBX: {dropped} datagrams dropped (not SIP requests)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_options_and_register() {
        let req = "OPTIONS sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bK1\r\nCall-ID: abc\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\r\n";
        let a = answer(req).unwrap();
        assert!(a.starts_with("SIP/2.0 200 OK\r\n"));
        assert!(a.contains("Call-ID: abc") && a.contains("branch=z9hG4bK1"));
        assert!(!a.contains("Max-Forwards"));
        let reg = "REGISTER sip:pbx SIP/2.0\r\nContact: <sip:1000@1.2.3.4>\r\nExpires: 120\r\n\r\n";
        let a = answer(reg).unwrap();
        assert!(a.contains("Contact: <sip:1000@1.2.3.4>") && a.contains("Expires: 120"));
        assert!(answer("INVITE sip:x SIP/2.0\r\n\r\n")
            .unwrap()
            .starts_with("SIP/2.0 501"));
        assert!(answer("SIP/2.0 200 OK\r\n\r\n").is_none());
        assert!(answer("garbage").is_none());
    }
}
