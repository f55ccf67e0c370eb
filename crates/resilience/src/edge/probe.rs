//! Health of one PBX, Kamailio dispatcher's way: a SIP OPTIONS every
//! interval from the edge's probe socket; down after `down_after`
//! unanswered (or non-2xx) in a row, up after `up_after` answered. Where
//! the config gives the node's `/api/v1/ha`, the PBX also has to be on the
//! Active node: a Standby's PBX that answers OPTIONS is not where phones go.
//!
//! A round the edge could not run for want of its own resources (no socket,
//! no descriptor for the HA request) is "unknown" and changes nothing: the
//! edge's trouble must not send every phone away from a healthy PBX. The
//! lines are Kamailio dispatcher's, both at WARN
//! (`Destination down: OPTIONS sip:10.0.0.2:5060;transport=udp (main)`), so
//! `grep "WAR.*Destination"` finds them as it finds Kamailio's.

use crate::status::HaRoute;
use resilience_core::config::edge::{HealthSection, PbxTarget};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// What one probe round found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    Up,
    Down,
    /// The edge could not ask (no socket, no descriptor): says nothing of
    /// the PBX, so it changes nothing.
    Unknown,
}

/// An error of this machine's, not of the PBX: out of descriptors, memory,
/// buffers or local ports.
fn is_local(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    let local = [
        Errno::MFILE,
        Errno::NFILE,
        Errno::NOBUFS,
        Errno::NOMEM,
        Errno::ADDRNOTAVAIL,
    ];
    e.raw_os_error()
        .is_some_and(|n| local.iter().any(|l| l.raw_os_error() == n))
}

/// One probe round: did the PBX answer OPTIONS with a 2xx?
async fn options(sock: &UdpSocket, to: SocketAddr, n: u64, timeout: Duration) -> Round {
    let Ok(local) = sock.local_addr() else {
        return Round::Unknown;
    };
    let call_id = format!("rs-probe-{n}-{}", local.port());
    let req = format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-rs-probe-{n}\r\nMax-Forwards: 70\r\nFrom: <sip:resilience-edge@{local}>;tag=rsprobe\r\nTo: <sip:{to}>\r\nCall-ID: {call_id}\r\nCSeq: {n} OPTIONS\r\nUser-Agent: resilience-edge\r\nContent-Length: 0\r\n\r\n"
    );
    if let Err(e) = sock.send_to(req.as_bytes(), to).await {
        return if is_local(&e) {
            Round::Unknown
        } else {
            Round::Down
        };
    }
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
        let Ok(Ok((len, from))) = got else {
            return Round::Down;
        };
        if from != to {
            continue;
        }
        // Only the answer to this round counts (a late one is ignored).
        let Ok(msg) = resilience_sip::Message::parse(&buf[..len]) else {
            continue;
        };
        if msg.value(resilience_sip::Name::CallId) != Some(call_id.as_str()) {
            continue;
        }
        if let resilience_sip::message::StartLine::Response { code, .. } = msg.start {
            if code >= 200 {
                return if (200..300).contains(&code) {
                    Round::Up
                } else {
                    Round::Down
                };
            }
        }
    }
}

/// The node's Active flag, from `GET ha_url`: Unknown when this machine
/// could not even open the connection.
async fn node_active(url: String, timeout: Duration) -> Round {
    tokio::task::spawn_blocking(move || -> Round {
        let Ok(agent) = crate::http_client::http_agent(None, Some(timeout), true) else {
            return Round::Unknown;
        };
        match agent.get(&url).call() {
            Ok(mut r) => match r.body_mut().read_json::<HaRoute>() {
                Ok(ha) if ha.active => Round::Up,
                _ => Round::Down,
            },
            Err(ureq::Error::Io(e)) if is_local(&e) => Round::Unknown,
            Err(_) => Round::Down,
        }
    })
    .await
    .unwrap_or(Round::Unknown)
}

/// The probe's socket, opened again on the next round when it could not
/// be (a full descriptor table is the edge's trouble, not the PBX's).
async fn socket(pbx: &SocketAddr) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr = if pbx.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    UdpSocket::bind(bind).await
}

/// Probe `pbx` (index `i`) for as long as the edge runs; report each change
/// of state on `tx`. The first round runs at once, and its answer counts
/// at once: a PBX that answers at start is up without waiting `up_after`
/// rounds (nothing has flapped yet).
pub async fn run(i: usize, pbx: PbxTarget, h: HealthSection, tx: mpsc::Sender<(usize, bool)>) {
    let mut sock: Option<UdpSocket> = None;
    let mut up = false;
    let mut first = true;
    let (mut oks, mut fails) = (0u32, 0u32);
    let mut unknown_said = false;
    let target = format!("OPTIONS sip:{};transport=udp", pbx.sip);
    let mut tick = tokio::time::interval(h.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 1u64.. {
        tick.tick().await;
        if sock.is_none() {
            match socket(&pbx.sip).await {
                Ok(s) => sock = Some(s),
                Err(e) => {
                    if !unknown_said {
                        tracing::error!(
                            "probe of {}: cannot open a socket ({e}): the PBX's state is unknown, left as it was",
                            pbx.name
                        );
                        unknown_said = true;
                    }
                    metrics::counter!("resilience_edge_probe_unknown_total", "pbx" => pbx.name.clone()).increment(1);
                    continue;
                }
            }
        }
        let Some(s) = sock.as_ref() else { continue };
        let mut round = options(s, pbx.sip, n, h.timeout).await;
        if round == Round::Up {
            if let Some(url) = &pbx.ha_url {
                round = node_active(url.clone(), h.timeout).await;
            }
        }
        match round {
            Round::Unknown => {
                if !unknown_said {
                    tracing::error!(
                        "probe of {}: the edge is out of resources for its HA request: the PBX's state is unknown, left as it was",
                        pbx.name
                    );
                    unknown_said = true;
                }
                metrics::counter!("resilience_edge_probe_unknown_total", "pbx" => pbx.name.clone())
                    .increment(1);
                continue;
            }
            Round::Up => {
                oks += 1;
                fails = 0;
            }
            Round::Down => {
                fails += 1;
                oks = 0;
            }
        }
        unknown_said = false;
        let now_up = if first {
            round == Round::Up
        } else if up {
            fails < h.down_after
        } else {
            oks >= h.up_after
        };
        first = false;
        if now_up != up {
            up = now_up;
            // Kamailio dispatcher's words, both at WARNING, so the same
            // `grep "WAR.*Destination"` finds them.
            if up {
                tracing::warn!("Destination up: {target} ({})", pbx.name);
            } else {
                tracing::warn!("Destination down: {target} ({})", pbx.name);
            }
            if tx.send((i, up)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_s_own_shortages_are_told_from_the_pbx_s_failures() {
        use rustix::io::Errno;
        let err = |e: Errno| std::io::Error::from_raw_os_error(e.raw_os_error());
        for e in [
            Errno::MFILE,
            Errno::NFILE,
            Errno::NOBUFS,
            Errno::ADDRNOTAVAIL,
        ] {
            assert!(is_local(&err(e)), "{e:?}");
        }
        for e in [Errno::CONNREFUSED, Errno::HOSTUNREACH, Errno::TIMEDOUT] {
            assert!(!is_local(&err(e)), "{e:?}");
        }
        assert!(!is_local(&std::io::Error::other("no errno")));
    }
}
