//! The Standby's listener: TLS under the cluster CA, at most
//! `max_connections` connections ([`PER_ADDRESS`] from one address), each
//! with its deadlines, and only the peer node past the handshake. What
//! strangers send is counted and logged at a bounded rate, never a line per
//! connection; a session that gets through goes to [`receive`](super::receive).

use super::session::keepalive;
use super::{tls, wire, Replicator};
use anyhow::Context;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Connections one address may hold on the listener: the peer keeps room
/// when a stranger fills its share.
pub const PER_ADDRESS: usize = 4;

/// Why a connection got no slot; the words are the refusal's reason in the
/// metrics and the rate-limited log.
#[derive(Debug, Clone, Copy)]
enum Crowded {
    Total,
    OneAddress,
}

impl Crowded {
    fn reason(self) -> &'static str {
        match self {
            Crowded::Total => "too many connections",
            Crowded::OneAddress => "too many connections from one address",
        }
    }
}

impl std::fmt::Display for Crowded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for Crowded {}

/// Why a client that passed TLS is not this node's peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("no client certificate")]
    NoCertificate,
    #[error("{0}")]
    Unreadable(rustls::Error),
    #[error("{0}")]
    PeerName(rustls::pki_types::InvalidDnsNameError),
    #[error("its certificate is not {0}'s")]
    NotThePeer(String),
}

/// Open connections on the listener, in all and per address.
struct Slots {
    max: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One held connection; given back when dropped.
struct Slot(Arc<Slots>, IpAddr);

impl Slots {
    fn take(me: &Arc<Slots>, ip: IpAddr) -> Result<Slot, Crowded> {
        let mut g = me.held.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 >= me.max {
            return Err(Crowded::Total);
        }
        let n = g.1.entry(ip).or_default();
        if *n >= PER_ADDRESS {
            return Err(Crowded::OneAddress);
        }
        *n += 1;
        g.0 += 1;
        Ok(Slot(me.clone(), ip))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.0.held.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.1);
            }
        }
    }
}

/// Why a TLS handshake failed, in a few fixed words (the rate-limited log's
/// reason).
fn handshake_reason(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            "foreign certificate"
        }
        _ if e.kind() == std::io::ErrorKind::TimedOut => "tls handshake timed out",
        _ => "tls handshake failed",
    }
}

impl Replicator {
    /// Accept pushes on `listen` for as long as the node runs. `active` says
    /// whether this node serves (then every push is refused).
    pub async fn serve(self: Arc<Self>, active: watch::Receiver<bool>) -> anyhow::Result<()> {
        let config = tls::server(
            &self.path(&self.cfg.ca),
            &self.path(&self.cfg.cert),
            &self.path(&self.cfg.key),
        )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        if self.standby {
            self.clone().copy_back_on_handback(active.clone());
        }
        let listener = crate::listen_fds::tokio_tcp(self.cfg.listen)
            .await
            .with_context(|| format!("replication socket {}", self.cfg.listen))?;
        let bound = listener.local_addr().unwrap_or(self.cfg.listen);
        tracing::info!("replication: accepting pushes on {bound} (TLS, cluster CA)");
        self.refused.spawn_summaries();
        let slots = Arc::new(Slots {
            max: self.cfg.max_connections,
            held: Mutex::new((0, HashMap::new())),
        });
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of fds, most likely: wait for some to close
                    // rather than spin or stop serving.
                    self.refuse("accept failed", || {
                        format!("cannot accept a connection: {e}")
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let slot = match Slots::take(&slots, from.ip()) {
                Ok(s) => s,
                Err(why) => {
                    self.refuse(why.reason(), || {
                        format!("refused connection from {from}: {why}")
                    });
                    continue;
                }
            };
            let (me, acceptor, active) = (self.clone(), acceptor.clone(), active.clone());
            tokio::spawn(async move {
                let _slot = slot;
                me.connection(tcp, from, acceptor, active).await;
            });
        }
    }

    /// One accepted connection: its deadlines, the TLS handshake, the check
    /// that the client is the peer, then the session.
    async fn connection(
        &self,
        tcp: TcpStream,
        from: SocketAddr,
        acceptor: tokio_rustls::TlsAcceptor,
        active: watch::Receiver<bool>,
    ) {
        let _ = tcp.set_nodelay(true);
        keepalive(&tcp, self.cfg.read_timeout);
        let tcp = wire::Timed::new(tcp, self.cfg.read_timeout, self.cfg.session_timeout);
        let accepted = tokio::time::timeout(self.cfg.handshake_timeout, acceptor.accept(tcp)).await;
        let stream = match accepted {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let reason = handshake_reason(&e);
                self.refuse(reason, || format!("refused connection from {from}: {e}"));
                return;
            }
            Err(_) => {
                self.refuse("tls handshake timed out", || {
                    format!("refused connection from {from}: TLS handshake timed out")
                });
                return;
            }
        };
        // Any certificate of the cluster CA gets through TLS (a
        // follower holds one too); only the peer node may push.
        if let Err(why) = self.is_peer(stream.get_ref().1.peer_certificates()) {
            self.refuse("not the peer", || {
                format!("refused connection from {from}: {why}")
            });
            return;
        }
        let serving = *active.borrow();
        let stream = tokio::io::BufStream::with_capacity(1 << 20, 64 << 10, stream);
        if let Err(e) = self.receive(stream, serving).await {
            tracing::warn!("replication: session from {from} failed: {e:#}");
        }
    }

    /// Whether the client's certificate names this node's peer.
    fn is_peer(
        &self,
        chain: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    ) -> Result<(), PeerError> {
        let leaf = chain
            .and_then(|c| c.first())
            .ok_or(PeerError::NoCertificate)?;
        let cert =
            rustls::server::ParsedCertificate::try_from(leaf).map_err(PeerError::Unreadable)?;
        let name = rustls::pki_types::ServerName::try_from(self.peer_name.as_str())
            .map_err(PeerError::PeerName)?;
        rustls::client::verify_server_name(&cert, &name)
            .map_err(|_| PeerError::NotThePeer(self.peer_name.clone()))
    }
}
