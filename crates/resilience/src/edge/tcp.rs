//! SIP over TCP for the phones: each connection's reader cuts the stream
//! into messages (Content-Length framing, RFC 3261 §18.3) and hands them to
//! the relay task; a writer per connection sends what the relay routes to
//! that peer. A connection that sends what cannot be framed (no end of
//! headers within the size limit, a bad Content-Length) is counted and
//! closed: on a stream there is no next message to resynchronise on.

use resilience_sip::message::{frame_len, skip_keepalive};
use resilience_sip::{Flow, Transport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Open connections by peer address: where to write a message for a flow.
#[derive(Clone, Default)]
pub struct Conns(Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>);

impl Conns {
    /// Queue `bytes` for the connection to `to`; false when there is none
    /// (the phone went away; a PBX is reached over UDP).
    pub fn send(&self, to: SocketAddr, bytes: Vec<u8>) -> bool {
        let tx = self.0.lock().expect("conns lock").get(&to).cloned();
        match tx {
            Some(tx) => tx.try_send(bytes).is_ok(),
            None => false,
        }
    }

    pub fn count(&self) -> usize {
        self.0.lock().expect("conns lock").len()
    }
}

/// Accept phones' connections on `listener` for as long as the edge runs.
pub async fn serve(
    listener: TcpListener,
    conns: Conns,
    to_relay: mpsc::Sender<(Flow, Vec<u8>)>,
    dropped: mpsc::Sender<&'static str>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            conns.clone(),
            to_relay.clone(),
            dropped.clone(),
        ));
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    conns: Conns,
    to_relay: mpsc::Sender<(Flow, Vec<u8>)>,
    dropped: mpsc::Sender<&'static str>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    let mine = tx.clone();
    conns.0.lock().expect("conns lock").insert(peer, tx);
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let flow = Flow {
        transport: Transport::Tcp,
        addr: peer,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16 * 1024];
    'read: loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let skip = skip_keepalive(&buf);
            buf.drain(..skip);
            if buf.is_empty() {
                break;
            }
            match frame_len(&buf) {
                Ok(Some(len)) => {
                    let msg: Vec<u8> = buf.drain(..len).collect();
                    if to_relay.send((flow, msg)).await.is_err() {
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("TCP from {peer}: {e}; closing the connection");
                    let _ = dropped.send("malformed").await;
                    break 'read;
                }
            }
        }
    }
    // Only this connection's entry: a phone that reconnected from the same
    // address already has a newer one.
    {
        let mut map = conns.0.lock().expect("conns lock");
        if map.get(&peer).is_some_and(|t| t.same_channel(&mine)) {
            map.remove(&peer);
        }
    }
    writer.abort();
}
