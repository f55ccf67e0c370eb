//! The client's side of a session: a TLS connection to the peer under the
//! cluster CA, with the deadlines every session carries (TCP keepalive,
//! `TCP_USER_TIMEOUT`, [`wire::Timed`], the handshake's limit). The Main
//! pushes over it; the Standby copies its kept data back over it.

use super::wire::{self, Applied, Hello, Kind};
use super::{tls, Replicator, VERSION};
use anyhow::Context;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// A client session: buffered TLS over a stream with deadlines.
pub(super) type Session = BufStream<tokio_rustls::client::TlsStream<wire::Timed<TcpStream>>>;

/// TCP keepalive and `TCP_USER_TIMEOUT`: a peer that vanished (power cut,
/// no FIN) is noticed by the kernel even while no read is pending.
pub(super) fn keepalive(tcp: &TcpStream, read_timeout: Duration) {
    let sock = socket2::SockRef::from(tcp);
    let every = (read_timeout / 3).max(Duration::from_secs(1));
    let ka = socket2::TcpKeepalive::new()
        .with_time(every)
        .with_interval(every)
        .with_retries(3);
    if let Err(e) = sock
        .set_tcp_keepalive(&ka)
        .and_then(|()| sock.set_tcp_user_timeout(Some(read_timeout)))
    {
        tracing::debug!("replication: cannot set TCP keepalive: {e}");
    }
}

/// The Standby's answer to `Done`. It may first restore a database for
/// minutes: no idle limit here; keepalive notices a dead peer and the
/// session's deadline still holds.
pub(super) async fn wait_applied(s: &mut Session) -> anyhow::Result<Applied> {
    s.get_mut().get_mut().0.set_idle(None);
    Ok(wire::expect(s, Kind::Applied).await?)
}

impl Replicator {
    /// A TLS session to the peer, both sides proven by the cluster CA.
    async fn connect(&self) -> anyhow::Result<Session> {
        let config = tls::client(
            &self.path(&self.cfg.ca),
            &self.path(&self.cfg.cert),
            &self.path(&self.cfg.key),
        )?;
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(self.cfg.peer))
            .await
            .context("connect: timed out")?
            .with_context(|| format!("connect {}", self.cfg.peer))?;
        tcp.set_nodelay(true)?;
        keepalive(&tcp, self.cfg.read_timeout);
        let tcp = wire::Timed::new(tcp, self.cfg.read_timeout, self.cfg.session_timeout);
        let name = rustls::pki_types::ServerName::try_from(self.peer_name.clone())
            .context("peer name is not a valid TLS server name")?;
        let tls = tokio::time::timeout(
            self.cfg.handshake_timeout,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))
        .and_then(|r| r)
        .with_context(|| format!("TLS with {} ({})", self.peer_name, self.cfg.peer))?;
        // Buffered: small frames share TLS records instead of one each.
        Ok(BufStream::with_capacity(64 << 10, 1 << 20, tls))
    }

    /// Connect and say which job this session is for.
    pub(super) async fn open_session(&self, job: &str, keep: bool) -> anyhow::Result<Session> {
        let mut s = self.connect().await?;
        let hello = Hello {
            version: VERSION,
            job: job.to_owned(),
            keep,
        };
        wire::write_json(&mut s, Kind::Hello, &hello).await?;
        s.flush().await?;
        Ok(s)
    }
}
