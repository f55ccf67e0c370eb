//! Service control: the PBX services a node starts when it becomes Active
//! and stops when it hands over (XiVO's `xivo-manage-slave-services`).
//!
//! Each service is a systemd unit (`systemctl start|stop|is-active`) or a set
//! of shell commands. Services start in file order and stop in reverse; a
//! failed start stops what was already started, so an error always means
//! "nothing is running". Every command has a timeout, and its exit code and
//! stderr end up in the error the core turns into an event.
//!
//! Spawning needs file descriptors (a pipe per captured stream, the exec
//! status pipe), and a failover must not fail for want of one: the process
//! holds [`RESERVE_FDS`] descriptors on `/dev/null`, closes them just before
//! each spawn and takes them again right after. Whatever else exhausted the
//! table, the commands that make this node serve can still start.

mod error;

pub use error::{CommandError, ServicesFailed};
use resilience_core::config::ServiceSection;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};

/// How much of a failing command's stderr is kept in the error.
const STDERR_KEEP: usize = 400;

/// Descriptors held back for spawning (one spawn takes about 7).
pub const RESERVE_FDS: usize = 16;

/// The held-back descriptors; the lock also makes spawns take turns.
static RESERVE: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());

/// Open the reserve up to [`RESERVE_FDS`] (as many as the table allows).
fn refill(held: &mut Vec<std::fs::File>) {
    while held.len() < RESERVE_FDS {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(_) => break,
        }
    }
}

/// Take the reserve now (at start, while descriptors are plenty).
pub fn reserve_fds() {
    refill(&mut RESERVE.lock().unwrap_or_else(|e| e.into_inner()));
}

/// How many descriptors the reserve holds now.
#[cfg(test)]
fn reserved_fds() -> usize {
    RESERVE.lock().unwrap_or_else(|e| e.into_inner()).len()
}

#[derive(Debug, Clone)]
pub struct Services {
    list: Vec<ServiceSection>,
    /// Commands run here (the config file's folder), so relative paths in
    /// them mean what they mean in the file.
    dir: PathBuf,
}

/// Whether one service runs: a status document type.
pub use crate::status::ServiceState;

impl Services {
    pub fn new(list: Vec<ServiceSection>, dir: PathBuf) -> Services {
        reserve_fds();
        Services { list, dir }
    }

    /// Start every service in order; on failure stop those started, in
    /// reverse, and report which one failed and how.
    ///
    /// The first command is spawned when this is called (inside a tokio
    /// runtime), not when the future is first polled: the node loop writes
    /// its state to disk right after, and a failover does not wait for it.
    pub fn start_all(
        &self,
    ) -> impl std::future::Future<Output = Result<(), ServicesFailed>> + Send + 'static {
        let this = self.clone();
        let mut first = this.list.first().map(|s| {
            let cmd = start_cmd(s);
            let child = spawn_in(&this.dir, &cmd, true);
            (cmd, child)
        });
        async move {
            for (i, s) in this.list.iter().enumerate() {
                let r = match first.take() {
                    Some((cmd, Ok(child))) => finish(&cmd, child, s.timeout).await,
                    Some((_, Err(e))) => Err(e),
                    None => run_in(&this.dir, &start_cmd(s), s.timeout).await,
                };
                if let Err(e) = r {
                    let mut msg = format!("service {}: start failed: {e}", s.name);
                    for done in this.list[..i].iter().rev() {
                        if let Err(e2) = run_in(&this.dir, &stop_cmd(done), done.timeout).await {
                            msg.push_str(&format!(
                                "; rolling back {} also failed: {e2}",
                                done.name
                            ));
                        }
                    }
                    return Err(ServicesFailed(vec![msg]));
                }
            }
            Ok(())
        }
    }

    /// Stop every service in reverse order; try them all, report every failure.
    pub async fn stop_all(&self) -> Result<(), ServicesFailed> {
        let mut errors = Vec::new();
        for s in self.list.iter().rev() {
            if let Err(e) = run_in(&self.dir, &stop_cmd(s), s.timeout).await {
                errors.push(format!("service {}: stop failed: {e}", s.name));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ServicesFailed(errors))
        }
    }

    /// Bring every service to `active` (start in order, stop in reverse),
    /// leaving alone those whose state is clearly the wanted one already: a
    /// follower never restarts what runs. A state that is not clear (a unit
    /// activating, a status command that timed out) is acted on. Every
    /// service is tried; the lines say what was done, the error lists what
    /// failed.
    pub async fn ensure(&self, active: bool) -> (Vec<String>, Result<(), ServicesFailed>) {
        let (mut lines, mut errors) = (Vec::new(), Vec::new());
        let word = if active { "started" } else { "stopped" };
        let order: Vec<&ServiceSection> = if active {
            self.list.iter().collect()
        } else {
            self.list.iter().rev().collect()
        };
        for s in order {
            let name = capitalized(&s.name);
            if running(&self.dir, s).await == Some(active) {
                lines.push(format!("{name} already {word}"));
                continue;
            }
            let cmd = if active { start_cmd(s) } else { stop_cmd(s) };
            match run_in(&self.dir, &cmd, s.timeout).await {
                Ok(_) => lines.push(format!("{name} {word}")),
                Err(e) => errors.push(format!("service {}: {e}", s.name)),
            }
        }
        let r = if errors.is_empty() {
            Ok(())
        } else {
            Err(ServicesFailed(errors))
        };
        (lines, r)
    }

    /// What runs, for the core's boot rule: every service clearly running,
    /// every one clearly stopped, or anything else (a unit activating, a
    /// service without a status command: it may run).
    pub async fn observe(&self) -> (resilience_core::ServicesAtBoot, Vec<ServiceState>) {
        use resilience_core::ServicesAtBoot;
        let mut states = Vec::with_capacity(self.list.len());
        for s in &self.list {
            states.push(ServiceState {
                name: s.name.clone(),
                running: running(&self.dir, s).await,
            });
        }
        let seen = ServicesAtBoot::from_states(states.iter().map(|s| s.running));
        (seen, states)
    }

    /// Ask each service whether it runs.
    pub async fn states(&self) -> Vec<ServiceState> {
        let mut out = Vec::with_capacity(self.list.len());
        for s in &self.list {
            let running = match status_cmd(s) {
                Some(cmd) => Some(run_in(&self.dir, &cmd, s.timeout).await.is_ok()),
                None => None,
            };
            out.push(ServiceState {
                name: s.name.clone(),
                running,
            });
        }
        out
    }
}

fn start_cmd(s: &ServiceSection) -> String {
    match (&s.unit, &s.start) {
        (Some(unit), _) => format!("systemctl start {}", shell_quote(unit)),
        (None, Some(cmd)) => cmd.clone(),
        (None, None) => "false".into(),
    }
}

fn stop_cmd(s: &ServiceSection) -> String {
    match (&s.unit, &s.stop) {
        (Some(unit), _) => format!("systemctl stop {}", shell_quote(unit)),
        (None, Some(cmd)) => cmd.clone(),
        (None, None) => "false".into(),
    }
}

fn status_cmd(s: &ServiceSection) -> Option<String> {
    match (&s.unit, &s.status) {
        (Some(unit), _) => Some(format!("systemctl is-active --quiet {}", shell_quote(unit))),
        (None, cmd) => cmd.clone(),
    }
}

/// `nginx` → `Nginx`, as XiVO's follower logs it (`Nginx already stopped`).
fn capitalized(name: &str) -> String {
    let mut c = name.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Whether a service runs: `Some` only when its state is clear. A unit is
/// asked for its ActiveState (`activating`, `deactivating`, … are not
/// clear); a status command's exit code says yes (0) or no (other), and a
/// command that could not run or timed out says nothing.
async fn running(dir: &Path, s: &ServiceSection) -> Option<bool> {
    if let Some(unit) = &s.unit {
        let cmd = format!(
            "systemctl show --property=ActiveState --value {}",
            shell_quote(unit)
        );
        return match run_in(dir, &cmd, s.timeout).await.ok()?.trim() {
            "active" => Some(true),
            "inactive" | "failed" => Some(false),
            _ => None,
        };
    }
    let cmd = s.status.as_ref()?;
    let child = spawn_in(dir, cmd, false).ok()?;
    match tokio::time::timeout(s.timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out.status.code().map(|c| c == 0),
        _ => None,
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Start `sh -c cmd` in `dir`, its output piped when `capture`.
fn spawn_in(dir: &Path, cmd: &str, capture: bool) -> Result<Child, CommandError> {
    let out = || {
        if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    // Close the reserve for the spawn's pipes, take it again after.
    let mut held = RESERVE.lock().unwrap_or_else(|e| e.into_inner());
    held.clear();
    let child = Command::new("sh")
        .current_dir(dir)
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(out())
        .stderr(out())
        .kill_on_drop(true)
        .spawn();
    refill(&mut held);
    child.map_err(|e| CommandError::Spawn {
        cmd: cmd.into(),
        source: Arc::new(e),
    })
}

/// Run a shell command in `dir` with a timeout. `Ok` (its stdout) on exit
/// status 0; otherwise the exit status and the end of stderr.
pub async fn run_in(dir: &Path, cmd: &str, timeout: Duration) -> Result<String, CommandError> {
    finish(cmd, spawn_in(dir, cmd, true)?, timeout).await
}

/// Wait for a command started by [`spawn_in`]; what [`run_in`] returns.
async fn finish(cmd: &str, child: Child, timeout: Duration) -> Result<String, CommandError> {
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Err(CommandError::Wait {
                cmd: cmd.into(),
                source: Arc::new(e),
            })
        }
        Err(_) => {
            return Err(CommandError::Timeout {
                cmd: cmd.into(),
                timeout,
            })
        }
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        let tail = if stderr.len() > STDERR_KEEP {
            let mut cut = stderr.len() - STDERR_KEEP;
            while !stderr.is_char_boundary(cut) {
                cut += 1;
            }
            &stderr[cut..]
        } else {
            stderr
        };
        let status = match out.status.code() {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".into(),
        };
        Err(CommandError::Failed {
            cmd: cmd.into(),
            status,
            stderr: tail.to_string(),
        })
    }
}

/// The active calls, from the configured command's output: the number on
/// the line that says "active call" (`asterisk -rx "core show channels
/// count"`), else the first number printed.
pub async fn count_calls(dir: &Path, cmd: &str, timeout: Duration) -> Result<u32, CommandError> {
    let out = run_in(dir, cmd, timeout).await?;
    let first_number = |s: &str| {
        s.split(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty())
            .and_then(|w| w.parse().ok())
    };
    out.lines()
        .find(|l| l.contains("active call"))
        .and_then(first_number)
        .or_else(|| first_number(&out))
        .ok_or_else(|| CommandError::NoNumber {
            cmd: cmd.into(),
            output: out.trim().to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, start: &str, stop: &str) -> ServiceSection {
        ServiceSection {
            name: name.into(),
            unit: None,
            start: Some(start.into()),
            stop: Some(stop.into()),
            status: None,
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn failed_start_rolls_back_in_reverse_and_names_the_service() {
        let dir = std::env::temp_dir().join(format!("resilience-svc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let l = log.display();
        let s = Services::new(
            vec![
                svc(
                    "a",
                    &format!("echo start-a >> {l}"),
                    &format!("echo stop-a >> {l}"),
                ),
                svc(
                    "b",
                    &format!("echo start-b >> {l}"),
                    &format!("echo stop-b >> {l}"),
                ),
                svc("c", "echo boom >&2; exit 3", "true"),
            ],
            dir.clone(),
        );
        let e = s.start_all().await.unwrap_err().to_string();
        assert!(
            e.contains("service c") && e.contains("exit status 3") && e.contains("boom"),
            "{e}"
        );
        let got = std::fs::read_to_string(&log).unwrap();
        assert_eq!(got, "start-a\nstart-b\nstop-b\nstop-a\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn reserve_is_held_again_after_a_spawn() {
        reserve_fds();
        assert_eq!(reserved_fds(), RESERVE_FDS);
        run_in(Path::new("."), "true", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(reserved_fds(), RESERVE_FDS);
    }

    #[tokio::test]
    async fn timeout_kills_and_reports() {
        let e = run_in(Path::new("."), "sleep 5", Duration::from_millis(100))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("timed out"), "{e}");
    }

    #[tokio::test]
    async fn counts_calls_from_asterisk_output() {
        let cmd = "printf '3 active channels\\n2 active calls\\n7 calls processed\\n'";
        assert_eq!(
            count_calls(Path::new("."), cmd, Duration::from_secs(5))
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            count_calls(Path::new("."), "echo 4", Duration::from_secs(5))
                .await
                .unwrap(),
            4
        );
        assert!(
            count_calls(Path::new("."), "echo none", Duration::from_secs(5))
                .await
                .is_err()
        );
    }
}
