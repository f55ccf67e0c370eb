//! Node-to-node TLS: both sides present a certificate signed by the cluster
//! CA and accept only a peer whose certificate is signed by it too.

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

fn provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn roots(ca: &Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("cluster CA {}", ca.display()))?
    {
        store.add(c.with_context(|| format!("cluster CA {}", ca.display()))?)?;
    }
    if store.is_empty() {
        anyhow::bail!("cluster CA {}: no certificate in it", ca.display());
    }
    Ok(Arc::new(store))
}

fn identity(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("node certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("node certificate {}", cert.display()))?;
    // A secret file: refused when others may read or change it.
    let pem = crate::secret::read(key, "replication key")?;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .with_context(|| format!("node key {}", key.display()))?;
    Ok((chain, key))
}

/// The Standby's side: client certificates required, from the cluster CA.
pub fn server(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    provider();
    let verifier = WebPkiClientVerifier::builder(roots(ca)?).build()?;
    let (chain, key) = identity(cert, key)?;
    Ok(Arc::new(
        ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?,
    ))
}

/// The Main's side: the server must prove the peer's name under the cluster CA.
pub fn client(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    provider();
    let (chain, key) = identity(cert, key)?;
    Ok(Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots(ca)?)
            .with_client_auth_cert(chain, key)?,
    ))
}
