//! Probes the runtime feeds to the core: the local PBX's health (a SIP
//! OPTIONS ping, as Kamailio's dispatcher does, and an optional command) and
//! the arbiters' reachability (a TCP connect to any witness address).
//!
//! The OPTIONS request is written by hand: it is one fixed message and the
//! probe only reads the status line of the answer. The SIP crate of the edge
//! (issue 5) will take over when it exists.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::{TcpStream, UdpSocket};

/// Why an OPTIONS probe got no SIP answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("bind: {0}")]
    Bind(std::io::Error),
    #[error("{}", .0)]
    Local(std::io::Error),
    /// What was being done ("connect", "send to", "receive from"), to whom.
    #[error("{0} {1}: {2}")]
    Io(&'static str, SocketAddr, std::io::Error),
    #[error("no answer from {0} within {1:?}")]
    NoAnswer(SocketAddr, Duration),
    #[error("{0} answered something that is not a SIP response")]
    NotSip(SocketAddr),
}

static PROBE_SEQ: AtomicU64 = AtomicU64::new(1);

/// Send one SIP OPTIONS to `target` and wait for a final answer.
/// `Ok(code)` for any SIP answer; the caller decides what is healthy.
pub async fn sip_options(target: SocketAddr, timeout: Duration) -> Result<u16, ProbeError> {
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await.map_err(ProbeError::Bind)?;
    sock.connect(target)
        .await
        .map_err(|e| ProbeError::Io("connect", target, e))?;
    let local = sock.local_addr().map_err(ProbeError::Local)?;
    let n = PROBE_SEQ.fetch_add(1, Ordering::Relaxed);
    let call_id = format!("resilience-probe-{}-{n}", std::process::id());
    let host = match local.ip() {
        ip if ip.is_unspecified() => target.ip().to_string(),
        ip => ip.to_string(),
    };
    let req = format!(
        "OPTIONS sip:{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-res-{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:resilience@{host}>;tag=res{n}\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {n} OPTIONS\r\n\
         User-Agent: resilience-probe\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n",
        port = local.port(),
    );
    sock.send(req.as_bytes())
        .await
        .map_err(|e| ProbeError::Io("send to", target, e))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 4096];
    loop {
        let len = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Err(_) => return Err(ProbeError::NoAnswer(target, timeout)),
            Ok(Err(e)) => return Err(ProbeError::Io("receive from", target, e)),
            Ok(Ok(len)) => len,
        };
        let text = String::from_utf8_lossy(&buf[..len]);
        // Only our own transaction's answer counts; 1xx is not final.
        if !text.contains(&call_id) {
            continue;
        }
        let code = text
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse::<u16>().ok());
        match code {
            Some(c) if c >= 200 => return Ok(c),
            Some(_) => continue,
            None => return Err(ProbeError::NotSip(target)),
        }
    }
}

/// Whether a SIP answer code means the PBX serves: it answered, and not with
/// a server error (503 is what a PBX says while it shuts down or is overloaded).
pub fn healthy_code(code: u16) -> bool {
    code < 500
}

/// Whether any arbiter accepts a TCP connection within `timeout`.
pub async fn any_arbiter(addrs: &[SocketAddr], timeout: Duration) -> bool {
    let tries = addrs.iter().copied().map(move |a| async move {
        matches!(
            tokio::time::timeout(timeout, TcpStream::connect(a)).await,
            Ok(Ok(_))
        )
    });
    futures_like_any(tries).await
}

/// True as soon as one future says true (all run at once).
async fn futures_like_any<F: std::future::Future<Output = bool> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> bool {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while let Some(r) = set.join_next().await {
        if matches!(r, Ok(true)) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn options_answered_by_a_responder() {
        let pbx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = pbx.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let (n, from) = pbx.recv_from(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            let call_id = req.lines().find(|l| l.starts_with("Call-ID:")).unwrap();
            let resp = format!("SIP/2.0 200 OK\r\n{call_id}\r\nContent-Length: 0\r\n\r\n");
            pbx.send_to(resp.as_bytes(), from).await.unwrap();
        });
        assert_eq!(
            sip_options(addr, Duration::from_secs(2)).await.unwrap(),
            200
        );
    }

    #[tokio::test]
    async fn silence_is_an_error() {
        let quiet = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = quiet.local_addr().unwrap();
        let e = sip_options(addr, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no answer"), "{e}");
    }

    #[tokio::test]
    async fn arbiter_reachability() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = l.local_addr().unwrap();
        let closed = {
            let t = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            t.local_addr().unwrap()
        };
        assert!(any_arbiter(&[closed, up], Duration::from_secs(1)).await);
        assert!(!any_arbiter(&[closed], Duration::from_millis(300)).await);
        assert!(!any_arbiter(&[], Duration::from_millis(300)).await);
    }
}
