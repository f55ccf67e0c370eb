//! `resilience keygen`: a fresh cluster key for the heartbeat HMAC.

use anyhow::Context;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;

/// 32 random bytes as 64 hex digits.
pub fn new_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(hex::encode(bytes))
}

pub fn run(out: Option<&Path>, force: bool) -> anyhow::Result<ExitCode> {
    let key = new_key()?;
    let Some(path) = out else {
        println!("{key}");
        return Ok(ExitCode::SUCCESS);
    };
    if path.exists() && !force {
        eprintln!(
            "resilience keygen: {} exists; not overwriting a cluster key (use --force to replace it on both nodes)",
            path.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{key}").with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "cluster key written to {} (mode 0600); copy it to the peer node",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
