//! A TLS certificate and key from PEM files, reloaded without a restart.
//!
//! Certificates are renewed in place (certbot, an ACME client, an admin's
//! copy); the listener must pick up the new pair without dropping its
//! connections. Every [`CHECK_EVERY`] a task reads the two files (a few
//! kilobytes) and compares their contents' hash with the last load's — not
//! their modification times, which a copy may preserve (`cp -p`) and which
//! two writes in the same clock tick share; on a change the pair is loaded and checked (the key must match the certificate) and new
//! handshakes use it, open connections keep theirs. A pair that does not
//! load (a half-written renewal, a key for another certificate) is logged
//! once and the previous pair stays in use; the next change tries again.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How often the files are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path}: no PEM certificate in it ({err})")]
    NoCert { path: String, err: String },
    #[error("{path}: no PEM private key in it ({err})")]
    NoKey { path: String, err: String },
    #[error("{cert} / {key}: {err}")]
    Pair {
        cert: String,
        key: String,
        err: rustls::Error,
    },
}

/// What identifies one version of a file: its contents' hash.
type Stamp = [u8; 32];

fn stamp(p: &Path) -> Option<Stamp> {
    std::fs::read(p).ok().map(|b| *blake3::hash(&b).as_bytes())
}

/// The pair in use, and the file versions last tried.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    tried: Mutex<Option<(Stamp, Stamp)>>,
}

fn provider() -> Arc<CryptoProvider> {
    // One process-wide provider (ring); a second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|err| CertError::Read {
            path: p.display().to_string(),
            err,
        })
    };
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::NoCert {
            path: cert.display().to_string(),
            err: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCert {
            path: cert.display().to_string(),
            err: "empty".into(),
        });
    }
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::NoKey {
        path: key.display().to_string(),
        err: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|err| CertError::Pair {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        err,
    })
}

impl ReloadingCert {
    /// Load the pair now (an error here stops the start: there is nothing
    /// to fall back on).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<ReloadingCert>, CertError> {
        let stamps = stamp(cert).zip(stamp(key));
        let ck = load(cert, key)?;
        Ok(Arc::new(ReloadingCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(ck)),
            tried: Mutex::new(stamps),
        }))
    }

    /// Reload if either file changed since the last try: `Some(Ok)` when a
    /// new pair is in use, `Some(Err)` when the new files do not load.
    pub fn check(&self) -> Option<Result<(), CertError>> {
        let now = stamp(&self.cert).zip(stamp(&self.key));
        {
            let mut tried = self.tried.lock().unwrap_or_else(|e| e.into_inner());
            if now.is_none() || *tried == now {
                return None;
            }
            *tried = now;
        }
        Some(load(&self.cert, &self.key).map(|ck| {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        }))
    }

    /// Check the files every [`CHECK_EVERY`] while the listener lives.
    pub fn spawn_watch(self: &Arc<Self>, what: &'static str) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { break };
                let checked = tokio::task::spawn_blocking(move || me.check().map(|r| (r, me)))
                    .await
                    .ok()
                    .flatten();
                match checked {
                    Some((Ok(()), me)) => tracing::info!(
                        "{what}: TLS certificate reloaded from {}",
                        me.cert.display()
                    ),
                    Some((Err(e), _)) => {
                        tracing::error!("{what}: new TLS certificate not loaded, the previous one stays in use: {e}")
                    }
                    None => {}
                }
            }
        });
    }

    /// A server configuration whose handshakes use the current pair.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> rustls::ServerConfig {
        let mut c = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        c
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let k = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&k)
            .unwrap();
        let (cp, kp) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cp, c.pem()).unwrap();
        std::fs::write(&kp, k.serialize_pem()).unwrap();
        (cp, kp)
    }

    #[test]
    fn reloads_on_change_and_keeps_the_old_pair_on_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("cert-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cp, kp) = pair(&dir, "one.test");
        let r = ReloadingCert::load(&cp, &kp).unwrap();
        let first = r.current.read().unwrap().cert[0].clone();
        assert!(r.check().is_none(), "unchanged files are not reloaded");
        // A key for another certificate: refused, the first pair stays.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&kp, other.serialize_pem()).unwrap();
        assert!(matches!(r.check(), Some(Err(CertError::Pair { .. }))));
        assert_eq!(r.current.read().unwrap().cert[0], first);
        assert!(r.check().is_none(), "the same bad files are tried once");
        pair(&dir, "two.test");
        assert!(matches!(r.check(), Some(Ok(()))));
        assert_ne!(r.current.read().unwrap().cert[0], first);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
