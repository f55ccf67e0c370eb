//! A raw replication client for the tests that play a (compromised or
//! stalled) peer: TLS with a given identity, and the wire's framing (one
//! kind byte, a big-endian u32 length, the body).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub type Session = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Connect to `addr` as the holder of `cert`/`key` (trusting `ca`) and say
/// Hello for job "etc". The server checks the client certificate after the
/// handshake: the Hello's round trip shows whether it kept the connection.
pub async fn raw_session(
    addr: impl tokio::net::ToSocketAddrs,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> std::io::Result<Session> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("pbx-standby").unwrap(), tcp)
        .await?;
    frame(&mut s, 1, br#"{"version":1,"job":"etc"}"#).await?;
    Ok(s)
}

/// The same with the Main's identity from a `resilience cert` folder.
pub async fn main_session(
    addr: impl tokio::net::ToSocketAddrs,
    pki: &Path,
) -> std::io::Result<Session> {
    raw_session(
        addr,
        &pki.join("ca.pem"),
        &pki.join("pbx-main.crt"),
        &pki.join("pbx-main.key"),
    )
    .await
}

/// Write one frame.
pub async fn frame<S: AsyncWrite + Unpin>(s: &mut S, kind: u8, body: &[u8]) -> std::io::Result<()> {
    let mut head = vec![kind];
    head.extend_from_slice(&(body.len() as u32).to_be_bytes());
    s.write_all(&head).await?;
    s.write_all(body).await?;
    s.flush().await
}

/// Read one frame; the buffer grows with what arrives, not with what the
/// header announces.
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = Vec::new();
    (&mut *s).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok((head[0], body))
}
