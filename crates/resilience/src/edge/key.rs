//! The relay's key: what signs the edge's branches and `rs-flow` values.
//! From `[edge] key_file` it is the same after a restart, so the dialogs in
//! progress keep their routes; without it, a random key per start.

use std::path::Path;

/// Shortest key accepted, in bytes (as for the cluster key).
const MIN_KEY: usize = 16;

/// Why the key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    #[error("edge key {0}: expected hex digits (make one with `resilience keygen --out {0}`)")]
    NotHex(String),
    #[error("edge key {0}: {1} bytes; a key needs at least {MIN_KEY}")]
    TooShort(String, usize),
}

/// The relay key from a key file (a secret file: see [`crate::secret`]),
/// derived so that the file may be shared with another use (the cluster
/// key) without the two keys being the same.
pub fn load(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = crate::secret::read(path, "edge key")?;
    let shown = path.display().to_string();
    let bytes = hex::decode(text.trim()).map_err(|_| KeyError::NotHex(shown.clone()))?;
    if bytes.len() < MIN_KEY {
        return Err(KeyError::TooShort(shown, bytes.len()));
    }
    Ok(blake3::derive_key("resilience edge relay key v1", &bytes))
}

/// A fresh key for this run only.
pub fn random() -> anyhow::Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_gives_the_same_key_and_bad_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("rs-edge-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("edge.key");
        crate::secret::write(&p, &format!("{}\n", "ab".repeat(32)), true).unwrap();
        let k = load(&p).unwrap();
        assert_eq!(k, load(&p).unwrap());
        assert_ne!(k, [0xab; 32], "derived, not the file's bytes");
        crate::secret::write(&p, "abcd\n", true).unwrap();
        assert!(matches!(load(&p), Err(KeyError::TooShort(_, 2))));
        crate::secret::write(&p, "not hex\n", true).unwrap();
        assert!(matches!(load(&p), Err(KeyError::NotHex(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
