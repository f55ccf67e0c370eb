//! `resilience keygen`: a fresh cluster key for the heartbeat HMAC, or (with
//! `--token`) an API token; both are 64 random hex digits in a 0600 file.

use std::path::Path;
use std::process::ExitCode;

/// 32 random bytes as 64 hex digits.
pub fn new_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(hex::encode(bytes))
}

pub fn run(out: Option<&Path>, force: bool, token: bool) -> anyhow::Result<ExitCode> {
    let key = new_key()?;
    let Some(path) = out else {
        println!("{key}");
        return Ok(ExitCode::SUCCESS);
    };
    let what = if token { "API token" } else { "cluster key" };
    if path.exists() && !force {
        eprintln!(
            "resilience keygen: {} exists; not overwriting a{} {what} (use --force to replace it{})",
            path.display(),
            if token { "n" } else { "" },
            if token {
                ", and give the new token to its users"
            } else {
                " on both nodes"
            }
        );
        return Ok(ExitCode::FAILURE);
    }
    crate::secret::write(path, &format!("{key}\n"), force)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    eprintln!(
        "{what} written to {} (mode 0600); {}",
        path.display(),
        if token {
            "name it in `[api] token_file`"
        } else {
            "copy it to the peer node, keeping mode 0600"
        }
    );
    Ok(ExitCode::SUCCESS)
}
