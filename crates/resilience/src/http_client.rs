//! The HTTP(S) client transport shared by the CLI, the follower, the edge's
//! probes and the lab: an agent that trusts the cluster CA when given one.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the cluster CA given to a client could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA {}: no PEM certificate in it", .0.display())]
    NoCertificate(PathBuf),
}

/// An HTTP(S) client that reports HTTP errors as answers and, given the
/// cluster CA, trusts the certificates it signed (a node's API). Without
/// `reuse`, every call opens its own connection.
pub fn http_agent(
    ca: Option<&Path>,
    timeout: Option<Duration>,
    reuse: bool,
) -> Result<ureq::Agent, CaError> {
    let mut b = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections(if reuse { 10 } else { 0 })
        .timeout_connect(Some(timeout.unwrap_or(Duration::from_secs(10))))
        .timeout_global(timeout);
    if let Some(ca) = ca {
        use ureq::tls::{PemItem, RootCerts, TlsConfig};
        let pem = std::fs::read(ca).map_err(|e| CaError::Read {
            path: ca.to_owned(),
            source: e,
        })?;
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(CaError::NoCertificate(ca.to_owned()));
        }
        b = b.tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    Ok(b.build().into())
}
