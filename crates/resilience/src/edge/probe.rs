//! Health of one PBX, Kamailio dispatcher's way: a SIP OPTIONS every
//! interval from the edge's probe socket; down after `down_after`
//! unanswered (or non-2xx) in a row, up after `up_after` answered. Where
//! the config gives the node's `/api/v1/ha`, the PBX also has to be on the
//! Active node: a Standby's PBX that answers OPTIONS is not where phones go.

use resilience_core::edge_config::{HealthSection, PbxTarget};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// One probe round: did the PBX answer OPTIONS with a 2xx?
async fn options(sock: &UdpSocket, to: SocketAddr, n: u64, timeout: Duration) -> bool {
    let Ok(local) = sock.local_addr() else {
        return false;
    };
    let call_id = format!("rs-probe-{n}-{}", local.port());
    let req = format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-rs-probe-{n}\r\nMax-Forwards: 70\r\nFrom: <sip:resilience-edge@{local}>;tag=rsprobe\r\nTo: <sip:{to}>\r\nCall-ID: {call_id}\r\nCSeq: {n} OPTIONS\r\nUser-Agent: resilience-edge\r\nContent-Length: 0\r\n\r\n"
    );
    if sock.send_to(req.as_bytes(), to).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await;
        let Ok(Ok((len, from))) = got else {
            return false;
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
                return (200..300).contains(&code);
            }
        }
    }
}

/// The node's Active flag, from `GET ha_url`.
async fn node_active(url: String, timeout: Duration) -> bool {
    tokio::task::spawn_blocking(move || -> Option<bool> {
        let agent = crate::client::http_agent(None, Some(timeout), true).ok()?;
        let v: serde_json::Value = agent.get(&url).call().ok()?.body_mut().read_json().ok()?;
        v["active"].as_bool()
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Probe `pbx` (index `i`) for as long as the edge runs; report each change
/// of state on `tx`.
pub async fn run(i: usize, pbx: PbxTarget, h: HealthSection, tx: mpsc::Sender<(usize, bool)>) {
    let bind: SocketAddr = if pbx.sip.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("probe of {}: cannot open a socket: {e}", pbx.name);
            return;
        }
    };
    let mut up = false;
    let (mut oks, mut fails) = (0u32, 0u32);
    let mut tick = tokio::time::interval(h.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 1u64.. {
        tick.tick().await;
        let mut ok = options(&sock, pbx.sip, n, h.timeout).await;
        if ok {
            if let Some(url) = &pbx.ha_url {
                ok = node_active(url.clone(), h.timeout).await;
            }
        }
        if ok {
            oks += 1;
            fails = 0;
        } else {
            fails += 1;
            oks = 0;
        }
        let now_up = if up {
            fails < h.down_after
        } else {
            oks >= h.up_after
        };
        if now_up != up {
            up = now_up;
            if up {
                tracing::info!("Destination up: sip:{} ({})", pbx.sip, pbx.name);
            } else {
                tracing::warn!("Destination down: sip:{} ({})", pbx.sip, pbx.name);
            }
            if tx.send((i, up)).await.is_err() {
                return;
            }
        }
    }
}
