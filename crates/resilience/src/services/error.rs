//! What can go wrong running a service's or a hook's shell command, and a
//! list of service failures. The texts are the ones the history, the API
//! and the logs showed when these were plain strings.

use std::sync::Arc;
use std::time::Duration;

/// One shell command that did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    #[error("`{cmd}` could not be run: {source}")]
    Spawn {
        cmd: String,
        source: Arc<std::io::Error>,
    },
    #[error("`{cmd}`: {source}")]
    Wait {
        cmd: String,
        source: Arc<std::io::Error>,
    },
    #[error("`{cmd}` timed out after {timeout:?} (killed)")]
    Timeout { cmd: String, timeout: Duration },
    /// `status`: "exit status N" or "killed by a signal"; `stderr`: its end.
    #[error("`{cmd}`: {status}{}", stderr_suffix(.stderr))]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("`{cmd}` printed no number: {output:?}")]
    NoNumber { cmd: String, output: String },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// As the text it shows: reports (the PBX settings' reload hook) keep the
/// JSON they had.
impl serde::Serialize for CommandError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Services (or hooks) that failed, each named with how; shown joined by "; ".
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ServicesFailed(pub Vec<String>);
