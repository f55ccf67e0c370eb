//! The follower's configuration file (`resilience follow --config FILE`):
//! which node it follows, how often and how patiently, and the local
//! services and hooks it drives. Same error rules as the node's file.

use crate::config::{parse_file, validate_services, ConfigError, ServiceSection};
use crate::follower::Policy;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowConfig {
    pub follow: FollowSection,
    #[serde(default)]
    pub hooks: HooksSection,
    /// Started in file order when the node is Active, stopped in reverse.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowSection {
    /// This host's name, in logs and on the status page.
    #[serde(default = "default_name")]
    pub name: String,
    /// The linked node's `GET /api/v1/ha` URL.
    pub node: String,
    /// The cluster CA that signed the node's API certificate (https).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(with = "humantime_serde", default = "default_poll")]
    pub poll: Duration,
    /// Longest wait for one answer.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// Answers in a row a change must hold for before anything is done.
    #[serde(default = "default_confirm")]
    pub confirm_polls: u32,
    /// How long the node may not answer before it counts as Inactive.
    #[serde(with = "humantime_serde", default = "default_unreachable")]
    pub unreachable_after: Duration,
    /// Wait before a failed start/stop is tried again.
    #[serde(with = "humantime_serde", default = "default_retry")]
    pub retry_after: Duration,
    /// `/healthz`, `/metrics`, `/api/v1/status`.
    #[serde(default = "default_api_listen")]
    pub api_listen: SocketAddr,
}

/// Commands run after the services are started (`on_active`) or stopped
/// (`on_inactive`), in order; e.g. a media server re-registering to the
/// other side's MDS. They run on every change the follower applies, so
/// they should be safe to run twice.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksSection {
    #[serde(default)]
    pub on_active: Vec<String>,
    #[serde(default)]
    pub on_inactive: Vec<String>,
    #[serde(with = "humantime_serde", default = "default_hook_timeout")]
    pub timeout: Duration,
}

impl Default for HooksSection {
    fn default() -> Self {
        HooksSection {
            on_active: Vec::new(),
            on_inactive: Vec::new(),
            timeout: default_hook_timeout(),
        }
    }
}

fn default_name() -> String {
    "follower".into()
}
fn default_poll() -> Duration {
    Duration::from_secs(2)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_confirm() -> u32 {
    Policy::default().confirm_polls
}
fn default_unreachable() -> Duration {
    Policy::default().unreachable_after
}
fn default_retry() -> Duration {
    Policy::default().retry_after
}
fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7482))
}
fn default_hook_timeout() -> Duration {
    Duration::from_secs(60)
}

impl FollowConfig {
    pub fn parse(file: &str, src: &str) -> Result<FollowConfig, ConfigError> {
        parse_file(file, src, FollowConfig::validate)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_owned(), m.to_owned()));
        let f = &self.follow;
        let https = f.node.starts_with("https://");
        if !https && !f.node.starts_with("http://") {
            return bad(
                "follow.node",
                "expected the node's http:// or https:// URL of /api/v1/ha",
            );
        }
        if f.ca.is_some() && !https {
            return bad(
                "follow.ca",
                "a CA only checks https: make `node` an https:// URL or drop `ca`",
            );
        }
        if f.poll.is_zero() || f.timeout.is_zero() {
            return bad("follow.poll", "expected durations above zero");
        }
        if f.confirm_polls == 0 {
            return bad("follow.confirm_polls", "expected 1 or more");
        }
        if f.unreachable_after < f.poll {
            return bad(
                "follow.unreachable_after",
                "expected at least one poll interval; shorter turns one lost poll into a stop",
            );
        }
        validate_services(&self.services)?;
        // Without a way to ask, "never restart what runs" cannot hold.
        if let Some(i) = self
            .services
            .iter()
            .position(|s| s.unit.is_none() && s.status.is_none())
        {
            return bad(
                &format!("service[{i}]"),
                "a follower's service needs a `status` command (exit 0 while it runs), or a systemd `unit`",
            );
        }
        if self.services.is_empty()
            && self.hooks.on_active.is_empty()
            && self.hooks.on_inactive.is_empty()
        {
            return bad(
                "follow",
                "nothing to do: add a [[service]] or [hooks] on_active / on_inactive",
            );
        }
        Ok(())
    }

    pub fn policy(&self) -> Policy {
        Policy {
            confirm_polls: self.follow.confirm_polls,
            unreachable_after: self.follow.unreachable_after,
            retry_after: self.follow.retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[follow]
name = "cc-main"
node = "https://127.0.0.1:7480/api/v1/ha"
ca = "ca.pem"
poll = "1s"

[hooks]
on_inactive = ["echo bye"]

[[service]]
name = "nginx"
unit = "nginx.service"
"#;

    #[test]
    fn parses_with_defaults() {
        let c = FollowConfig::parse("f.toml", GOOD).unwrap();
        assert_eq!(c.follow.poll, Duration::from_secs(1));
        assert_eq!(c.policy().confirm_polls, 2);
        assert_eq!(c.hooks.on_inactive, ["echo bye"]);
        assert_eq!(c.services[0].name, "nginx");
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let e = FollowConfig::parse("f.toml", &GOOD.replace("poll =", "pol =")).unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.to_string().contains("pol"), "{e}");
        let e = FollowConfig::parse("f.toml", &GOOD.replace("https://", "http://")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("follow.ca"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
        let e = FollowConfig::parse(
            "f.toml",
            &GOOD.replace(
                "poll = \"1s\"",
                "poll = \"1s\"\nunreachable_after = \"100ms\"",
            ),
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("follow.unreachable_after"), "{e}");
        let e = FollowConfig::parse(
            "f.toml",
            &GOOD.replace("unit = \"nginx.service\"", "start = \"x\""),
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("service[0]"), "{e}");
        assert_eq!(e.line, Some(11), "{e}");
    }
}
