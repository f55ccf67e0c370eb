//! Where a config's relative paths point: every role resolves them against
//! the config file's folder, so this sits below all of them.

use std::path::{Path, PathBuf};

/// Resolve a path from the config against the config file's folder.
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// The folder a config file's relative paths (and commands) start from:
/// absolute, so what is recorded (changed files, kept originals) means the
/// same whichever folder the next command runs from.
pub fn config_base(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}
