//! The certificate and key of SIP over TLS, read again when they change.
//!
//! Certificates are renewed on disk (certbot, an ACME client, an admin's
//! copy) while the edge runs: before each new connection's handshake the
//! two files' modification time, size and inode are compared with those
//! of the loaded pair (two `stat` calls, nothing read while they match).
//! A changed pair is loaded for that connection and the ones after; a pair
//! that does not load (half-written, key not matching) leaves the previous
//! one in service and is said once per change in the log.

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio_rustls::TlsAcceptor;

/// What identifies one version of a file on disk.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// The TLS identity, reloaded when its files change.
pub struct Certs {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<State>,
}

struct State {
    stamps: (Stamp, Stamp),
    acceptor: TlsAcceptor,
    /// The stamps of a pair that failed to load (said once).
    refused: Option<(Stamp, Stamp)>,
}

fn build(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("SIP TLS certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("SIP TLS certificate {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "SIP TLS certificate {}: no certificate in it",
            cert.display()
        );
    }
    // A secret file: refused when others may read or change it.
    let pem = crate::secret::read(key, "SIP TLS key")?;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .with_context(|| format!("SIP TLS key {}", key.display()))?;
    let mut cfg = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("SIP TLS certificate and key")?;
    cfg.alpn_protocols.clear();
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

impl Certs {
    /// Load the pair now: a pair that does not load stops the edge at start.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Certs> {
        let stamps = (stamp(cert), stamp(key));
        let acceptor = build(cert, key)?;
        Ok(Certs {
            cert: cert.to_owned(),
            key: key.to_owned(),
            state: Mutex::new(State {
                stamps,
                acceptor,
                refused: None,
            }),
        })
    }

    /// The acceptor for the next handshake, from the files as they are now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let now = (stamp(&self.cert), stamp(&self.key));
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now != st.stamps && st.refused != Some(now) {
            match build(&self.cert, &self.key) {
                Ok(a) => {
                    tracing::info!("SIP TLS: certificate {} reloaded", self.cert.display());
                    st.acceptor = a;
                    st.stamps = now;
                    st.refused = None;
                }
                Err(e) => {
                    tracing::error!("SIP TLS: keeping the previous certificate: {e:#}");
                    st.refused = Some(now);
                }
            }
        }
        st.acceptor.clone()
    }
}
