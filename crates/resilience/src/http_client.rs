//! The HTTP(S) client transport shared by the CLI, the follower, the edge's
//! probes and the lab: an agent that trusts the cluster CA when given one.

use std::path::Path;
use std::time::Duration;

/// An HTTP(S) client that reports HTTP errors as answers and, given the
/// cluster CA, trusts the certificates it signed (a node's API). Without
/// `reuse`, every call opens its own connection.
pub fn http_agent(
    ca: Option<&Path>,
    timeout: Option<Duration>,
    reuse: bool,
) -> Result<ureq::Agent, String> {
    let mut b = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections(if reuse { 10 } else { 0 })
        .timeout_connect(Some(timeout.unwrap_or(Duration::from_secs(10))))
        .timeout_global(timeout);
    if let Some(ca) = ca {
        use ureq::tls::{PemItem, RootCerts, TlsConfig};
        let pem = std::fs::read(ca).map_err(|e| format!("CA {}: {e}", ca.display()))?;
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(format!("CA {}: no PEM certificate in it", ca.display()));
        }
        b = b.tls_config(
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    Ok(b.build().into())
}
