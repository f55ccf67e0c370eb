//! `resilience cert init|issue`: the cluster CA and the node certificates
//! (rcgen). Every node-to-node stream is TLS with both sides' certificates
//! signed by this one CA (IP Office's "Phone Resilience": identity certificates under one root).

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

fn write(path: &Path, text: &str, private: bool, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        anyhow::bail!(
            "{} exists; not overwriting it (use --force)",
            path.display()
        );
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // Opening an existing file (--force) keeps its old mode: set it.
    if private {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Create the cluster CA in `dir` (ca.pem, and ca.key readable by root only).
pub fn init(dir: &Path, name: &str, force: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key)?;
    write(&dir.join(CA_KEY), &key.serialize_pem(), true, force)?;
    write(&dir.join(CA_CERT), &cert.pem(), false, force)?;
    Ok(())
}

/// Issue `<node>.crt` and `<node>.key` in `dir`, signed by the CA there. The
/// certificate names the node (the TLS server name peers check) and any
/// extra DNS names or IP addresses; it serves as client and server identity.
pub fn issue(dir: &Path, node: &str, extra_names: &[String], force: bool) -> anyhow::Result<()> {
    let ca_pem = std::fs::read_to_string(dir.join(CA_CERT)).with_context(|| {
        format!(
            "{}: run `resilience cert init` first",
            dir.join(CA_CERT).display()
        )
    })?;
    let ca_key = KeyPair::from_pem(&crate::secret::read(&dir.join(CA_KEY), "cluster CA key")?)
        .with_context(|| format!("{}: not a private key", dir.join(CA_KEY).display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("ca.pem: not a certificate")?;
    let mut names = vec![node.to_string()];
    names.extend(extra_names.iter().cloned());
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, node);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write(
        &dir.join(format!("{node}.key")),
        &key.serialize_pem(),
        true,
        force,
    )?;
    write(&dir.join(format!("{node}.crt")), &cert.pem(), false, force)?;
    Ok(())
}
