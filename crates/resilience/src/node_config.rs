//! Loading a node's config and the secrets it names (cluster key, API token,
//! TLS keys): shared by the daemon, `check-config`, the CLI and
//! `pbx-settings`, so it lives outside the node role.

use crate::paths::{config_base, resolve};
use anyhow::Context;
use resilience_core::config::NodeConfig;
use resilience_core::ClusterKey;
use std::path::{Path, PathBuf};

/// Read and validate a node config file.
pub fn load_config(path: &Path) -> anyhow::Result<(NodeConfig, PathBuf)> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("{shown}: cannot read"))?;
    let cfg = NodeConfig::parse(&shown, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in cfg.warnings(&shown, &text) {
        tracing::warn!("{w}");
    }
    let base = config_base(path);
    Ok((cfg, base))
}

/// Read the cluster key named by the config (a secret file: see [`crate::secret`]).
pub fn load_key(cfg: &NodeConfig, base: &Path) -> anyhow::Result<ClusterKey> {
    let path = resolve(base, &cfg.heartbeat.key_file);
    let text = crate::secret::read(&path, "cluster key").map_err(|e| {
        if e.is_missing() {
            anyhow::anyhow!(
                "{e} (create it with `resilience keygen --out {}` and copy it to both nodes with mode 0600)",
                path.display()
            )
        } else {
            e.into()
        }
    })?;
    ClusterKey::from_hex(&text).map_err(|e| anyhow::anyhow!("cluster key {}: {e}", path.display()))
}

/// Where the API token lives: the configured file, or `<state_dir>/api.token`.
pub fn token_path(cfg: &NodeConfig, base: &Path) -> PathBuf {
    match &cfg.api.token_file {
        Some(p) => resolve(base, p),
        None => resolve(base, &cfg.node.state_dir).join("api.token"),
    }
}

/// The API token: the configured file, or `<state_dir>/api.token`, created
/// (mode 0600) on first start. Either must pass [`crate::secret::read_token`].
pub fn load_or_create_token(cfg: &NodeConfig, base: &Path) -> anyhow::Result<(String, PathBuf)> {
    let path = token_path(cfg, base);
    match crate::secret::read_token(&path) {
        Ok(t) => Ok((t, path)),
        Err(e) if e.is_missing() && cfg.api.token_file.is_none() => {
            let mut bytes = [0u8; 24];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random token: {e}"))?;
            let token = hex::encode(bytes);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            crate::secret::write(&path, &format!("{token}\n"), false)
                .with_context(|| format!("creating {}", path.display()))?;
            Ok((token, path))
        }
        Err(e) => Err(e.into()),
    }
}

/// The private keys read later by TLS (replication's on each session, the
/// API's when it starts): checked at start so a node with an exposed key
/// refuses to start instead of serving with it. (what, path) for each.
pub fn tls_keys(cfg: &NodeConfig, base: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut keys = Vec::new();
    if let Some(r) = &cfg.replication {
        keys.push(("replication key", resolve(base, &r.key)));
    }
    if let Some(k) = &cfg.api.tls_key {
        keys.push(("API TLS key", resolve(base, k)));
    }
    keys
}
