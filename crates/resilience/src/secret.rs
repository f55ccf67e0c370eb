//! Secrets on disk: the cluster key, the API token and the TLS private keys
//! (replication, API, cluster CA).
//!
//! Every loader reads them through [`read`] (or [`read_token`]), and
//! `check-config` checks them through the same function, so the rules live
//! here only. The file is opened once and the checks run on what was opened
//! (`fstat` on the descriptor), so swapping the file between check and read
//! changes nothing. A secret is refused when:
//! - it is not a regular file (a FIFO would block the start), or larger
//!   than [`MAX_LEN`] (a key is a few hundred bytes);
//! - group or others have any permission on it (`mode & 0o077 != 0`): a
//!   cluster key others can read lets them forge heartbeats, a token lets
//!   them stop the services, a private key lets them pose as the node; one
//!   they can write lets them replace it;
//! - it is owned by anyone but the user the process runs as or root: another
//!   unprivileged owner can reopen its mode or rewrite it at any time. Root
//!   is accepted because root can do that anyway (and packages install
//!   `/etc` files as root for a daemon that runs as root);
//! - for the API token, it holds fewer than [`MIN_TOKEN`] characters.
//!
//! Each refusal names the file and the command that fixes it. A missing
//! file is [`SecretError::Unreadable`] with `NotFound`, which callers may
//! treat differently ([`SecretError::is_missing`]).

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Longest secret file read: far above any key, far below harm.
pub const MAX_LEN: u64 = 64 * 1024;

/// Shortest API token accepted (characters, surrounding whitespace trimmed):
/// 32 hex digits are 128 bits.
pub const MIN_TOKEN: usize = 32;

/// Why a secret file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("{what} {}: cannot read: {source}", .path.display())]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {}: not a regular file", .path.display())]
    NotAFile { what: &'static str, path: PathBuf },
    #[error("{what} {}: {len} bytes; a secret file holds at most {max}", .path.display(), max = MAX_LEN)]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        len: u64,
    },
    #[error(
        "{what} {}: mode {mode:04o} lets {}; run `chmod 600 {}`",
        .path.display(),
        exposure(.mode),
        .path.display()
    )]
    Exposed {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error(
        "{what} {}: owned by uid {owner}, who can reopen or rewrite it; it must belong to the user running resilience (uid {me}) or root: run `chown {me} {}`",
        .path.display(),
        .path.display()
    )]
    Owner {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        me: u32,
    },
    #[error(
        "{what} {}: {len} characters; a token needs at least {min} (make one with `resilience keygen --token --force --out {}`)",
        .path.display(),
        .path.display(),
        min = MIN_TOKEN
    )]
    ShortToken {
        what: &'static str,
        path: PathBuf,
        len: usize,
    },
}

impl SecretError {
    /// The file does not exist (as opposed to existing and being unsafe).
    pub fn is_missing(&self) -> bool {
        matches!(self, SecretError::Unreadable { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// "others read it", "its group read and write it and others read it".
fn exposure(mode: &u32) -> String {
    let mode = *mode;
    fn rights(bits: u32) -> String {
        let words: Vec<&str> = [(4, "read"), (2, "write"), (1, "run")]
            .into_iter()
            .filter(|(b, _)| bits & b != 0)
            .map(|(_, w)| w)
            .collect();
        match words.as_slice() {
            [] => String::new(),
            [one] => (*one).to_string(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
        }
    }
    let (g, o) = ((mode >> 3) & 7, mode & 7);
    match (g, o) {
        (0, _) => format!("others {} it", rights(o)),
        (_, 0) => format!("its group {} it", rights(g)),
        _ if g == o => format!("its group and others {} it", rights(g)),
        _ => format!("its group {} it and others {} it", rights(g), rights(o)),
    }
}

/// Read a secret file, refusing one that others can read or change (see
/// the module doc). `what` names it in errors ("cluster key", "API token").
pub fn read(path: &Path, what: &'static str) -> Result<String, SecretError> {
    let unreadable = |source| SecretError::Unreadable {
        what,
        path: path.to_owned(),
        source,
    };
    // Refuse a FIFO or a device before opening it: opening a FIFO blocks.
    if !std::fs::metadata(path).map_err(unreadable)?.is_file() {
        return Err(SecretError::NotAFile {
            what,
            path: path.to_owned(),
        });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    check_meta(path, what, &meta)?;
    let mut text = String::new();
    file.take(MAX_LEN)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    Ok(text)
}

/// The checks on an opened file's metadata.
fn check_meta(
    path: &Path,
    what: &'static str,
    meta: &std::fs::Metadata,
) -> Result<(), SecretError> {
    let path = path.to_owned();
    if !meta.is_file() {
        return Err(SecretError::NotAFile { what, path });
    }
    if meta.len() > MAX_LEN {
        let len = meta.len();
        return Err(SecretError::TooLarge { what, path, len });
    }
    let me = rustix::process::geteuid().as_raw();
    let owner = meta.uid();
    if owner != me && owner != 0 {
        return Err(SecretError::Owner {
            what,
            path,
            owner,
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Exposed { what, path, mode });
    }
    Ok(())
}

/// Read the API token in `path`: a secret file (see [`read`]) holding at
/// least [`MIN_TOKEN`] characters, returned trimmed.
pub fn read_token(path: &Path) -> Result<String, SecretError> {
    const WHAT: &str = "API token";
    let text = read(path, WHAT)?;
    let token = text.trim();
    let len = token.chars().count();
    if len < MIN_TOKEN {
        return Err(SecretError::ShortToken {
            what: WHAT,
            path: path.to_owned(),
            len,
        });
    }
    Ok(token.to_owned())
}

/// Write `text` to a new file only its owner can read (mode 0600), or
/// replace an existing one when `replace`; a replaced file gets mode 0600
/// too (opening an existing file keeps its old mode).
pub fn write(path: &Path, text: &str, replace: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if replace {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_says_who_may_do_what() {
        assert_eq!(exposure(&0o604), "others read it");
        assert_eq!(exposure(&0o644), "its group and others read it");
        assert_eq!(exposure(&0o640), "its group read it");
        assert_eq!(exposure(&0o666), "its group and others read and write it");
        assert_eq!(
            exposure(&0o675),
            "its group read, write and run it and others read and run it"
        );
    }
}
