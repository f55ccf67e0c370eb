//! The edge's configuration file (`resilience edge --config FILE`): where it
//! listens, the PBXs behind it and how they are probed, and the per-phone
//! rules. Same error rules as the node's file: unknown keys are errors, and
//! every error names the line and the key.

use crate::config::{parse_file, ConfigError};
use crate::phones::Policy;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    pub edge: EdgeSection,
    /// The PBXs, Main first: a phone's default home is the first.
    #[serde(rename = "pbx")]
    pub pbxs: Vec<PbxTarget>,
    #[serde(default)]
    pub health: HealthSection,
    #[serde(default)]
    pub phones: PhonesSection,
    #[serde(default)]
    pub limits: LimitsSection,
    /// Phones whose home is not the first PBX.
    #[serde(default, rename = "home")]
    pub homes: Vec<HomeRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSection {
    #[serde(default = "default_name")]
    pub name: String,
    /// SIP, UDP and TCP, for phones and PBXs alike; the address written in
    /// Via, Record-Route and Path, so an address the PBXs can reach.
    pub sip_listen: SocketAddr,
    /// `/healthz`, `/metrics`, `/api/v1/phones`.
    pub api_listen: SocketAddr,
    /// HTTP and WebSocket for the web applications (CC, UC apps), proxied
    /// to the web server of the first PBX that is up (with `ha_url`: the
    /// Active node's).
    pub http_listen: Option<SocketAddr>,
    /// SIP over TLS for the phones (RFC 3261 §26.2), with `tls_cert` and
    /// `tls_key`. The files are read again when they change: a renewed
    /// certificate is served to the next connection, no restart.
    pub sip_tls_listen: Option<SocketAddr>,
    /// The certificate chain, PEM (leaf first).
    pub tls_cert: Option<PathBuf>,
    /// Its private key, PEM.
    pub tls_key: Option<PathBuf>,
}

fn default_name() -> String {
    "edge".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PbxTarget {
    pub name: String,
    /// The PBX's SIP address (UDP).
    pub sip: SocketAddr,
    /// The node's `GET /api/v1/ha`: when set, the PBX counts as up only
    /// while its node says it is Active.
    pub ha_url: Option<String>,
    /// The node's web server, for `http_listen`.
    pub web: Option<SocketAddr>,
}

/// Kamailio dispatcher's model: OPTIONS every `interval`; down after
/// `down_after` unanswered in a row, up after `up_after` answered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    #[serde(with = "humantime_serde", default = "default_probe_interval")]
    pub interval: Duration,
    #[serde(with = "humantime_serde", default = "default_probe_timeout")]
    pub timeout: Duration,
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    #[serde(default = "default_up_after")]
    pub up_after: u32,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_down_after() -> u32 {
    2
}
fn default_up_after() -> u32 {
    1
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            interval: default_probe_interval(),
            timeout: default_probe_timeout(),
            down_after: default_down_after(),
            up_after: default_up_after(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhonesSection {
    #[serde(with = "humantime_serde", default = "d_failover")]
    pub failover_after: Duration,
    #[serde(with = "humantime_serde", default = "d_stable")]
    pub failback_stable: Duration,
    #[serde(with = "humantime_serde", default = "d_homeless")]
    pub homeless_window: Duration,
    #[serde(with = "humantime_serde", default = "d_register_timeout")]
    pub register_timeout: Duration,
    /// Expiry granted to a phone away from home, in seconds (0: leave it).
    #[serde(default = "d_away")]
    pub away_expires: u32,
}

fn d_failover() -> Duration {
    Policy::default().failover_after
}
fn d_stable() -> Duration {
    Policy::default().failback_stable
}
fn d_homeless() -> Duration {
    Policy::default().homeless_window
}
fn d_register_timeout() -> Duration {
    Policy::default().register_timeout
}
fn d_away() -> u32 {
    Policy::default().away_expires.unwrap_or(0)
}

impl Default for PhonesSection {
    fn default() -> Self {
        PhonesSection {
            failover_after: d_failover(),
            failback_stable: d_stable(),
            homeless_window: d_homeless(),
            register_timeout: d_register_timeout(),
            away_expires: d_away(),
        }
    }
}

impl PhonesSection {
    pub fn policy(&self) -> Policy {
        Policy {
            failover_after: self.failover_after,
            failback_stable: self.failback_stable,
            homeless_window: self.homeless_window,
            register_timeout: self.register_timeout,
            away_expires: (self.away_expires > 0).then_some(self.away_expires),
            ..Policy::default()
        }
    }
}

/// What one stranger may cost the edge: Kamailio pike's per-source
/// message rate, and the SIP TCP/TLS connections' caps and deadlines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Counting window of the per-source rate (pike's `sampling_time_unit`).
    #[serde(with = "humantime_serde", default = "d_window")]
    pub window: Duration,
    /// Messages one source address may send per window (pike's
    /// `reqs_density_per_unit`); the rest of the window is dropped. PBXs
    /// are exempt.
    #[serde(default = "d_max_per_window")]
    pub max_per_window: u32,
    /// A source silent this long is forgotten (pike's `remove_latency`).
    #[serde(with = "humantime_serde", default = "d_forget")]
    pub forget_after: Duration,
    /// Most source addresses the rate table remembers.
    #[serde(default = "d_max_sources")]
    pub max_sources: usize,
    /// SIP TCP and TLS connections at once (lowered to fit the process's
    /// descriptor limit).
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    /// SIP TCP and TLS connections one address may hold.
    #[serde(default = "d_max_per_source")]
    pub max_connections_per_source: usize,
    /// A message, and a new connection's first message, must arrive whole
    /// within this.
    #[serde(with = "humantime_serde", default = "d_message_timeout")]
    pub message_timeout: Duration,
    /// A connection with no byte for this long is closed (CRLF keep-alives
    /// count).
    #[serde(with = "humantime_serde", default = "d_idle_timeout")]
    pub idle_timeout: Duration,
}

fn d_window() -> Duration {
    Duration::from_secs(2)
}
fn d_max_per_window() -> u32 {
    100
}
fn d_forget() -> Duration {
    Duration::from_secs(120)
}
fn d_max_sources() -> usize {
    100_000
}
fn d_max_connections() -> usize {
    10_000
}
fn d_max_per_source() -> usize {
    128
}
fn d_message_timeout() -> Duration {
    Duration::from_secs(10)
}
fn d_idle_timeout() -> Duration {
    Duration::from_secs(600)
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            window: d_window(),
            max_per_window: d_max_per_window(),
            forget_after: d_forget(),
            max_sources: d_max_sources(),
            max_connections: d_max_connections(),
            max_connections_per_source: d_max_per_source(),
            message_timeout: d_message_timeout(),
            idle_timeout: d_idle_timeout(),
        }
    }
}

/// `match`: a whole AOR (`sip:2001@pbx`) or a user prefix (`2`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeRule {
    #[serde(rename = "match")]
    pub pattern: String,
    /// The name of a `[[pbx]]`.
    pub pbx: String,
}

impl EdgeConfig {
    pub fn parse(file: &str, src: &str) -> Result<EdgeConfig, ConfigError> {
        parse_file(file, src, EdgeConfig::validate)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_owned(), m.to_owned()));
        if self.edge.sip_listen.ip().is_unspecified() {
            return bad(
                "edge.sip_listen",
                "expected a specific address: it goes into Via, Record-Route and Path, where the PBXs must reach it",
            );
        }
        if self.pbxs.is_empty() {
            return bad(
                "pbx",
                "expected at least one [[pbx]] (the Main, then the Standby)",
            );
        }
        for (i, p) in self.pbxs.iter().enumerate() {
            if p.name.is_empty() {
                return bad(&format!("pbx[{i}].name"), "expected a name");
            }
            if self.pbxs[..i].iter().any(|q| q.name == p.name) {
                return bad(&format!("pbx[{i}].name"), "two PBXs have this name");
            }
            if p.sip == self.edge.sip_listen {
                return bad(&format!("pbx[{i}].sip"), "is the edge's own address");
            }
            if let Some(u) = &p.ha_url {
                if !u.starts_with("http://") && !u.starts_with("https://") {
                    return bad(
                        &format!("pbx[{i}].ha_url"),
                        "expected an http:// or https:// URL",
                    );
                }
            }
        }
        if self.edge.http_listen.is_some() && self.pbxs.iter().all(|p| p.web.is_none()) {
            return bad(
                "edge.http_listen",
                "no [[pbx]] has a `web` address to proxy to",
            );
        }
        let tls = [
            self.edge.sip_tls_listen.is_some(),
            self.edge.tls_cert.is_some(),
            self.edge.tls_key.is_some(),
        ];
        if tls.contains(&true) && tls.contains(&false) {
            let missing = ["edge.sip_tls_listen", "edge.tls_cert", "edge.tls_key"]
                [tls.iter().position(|x| !x).unwrap_or(0)];
            return bad(
                missing,
                "SIP over TLS needs sip_tls_listen, tls_cert and tls_key together",
            );
        }
        if self.edge.sip_tls_listen == Some(self.edge.sip_listen) {
            return bad("edge.sip_tls_listen", "is sip_listen's address");
        }
        let l = &self.limits;
        if l.window.is_zero() || l.forget_after.is_zero() {
            return bad("limits.window", "expected durations above zero");
        }
        if l.message_timeout.is_zero() || l.idle_timeout.is_zero() {
            return bad("limits.message_timeout", "expected durations above zero");
        }
        if l.max_per_window == 0 {
            return bad("limits.max_per_window", "expected 1 or more");
        }
        if l.max_sources == 0 || l.max_connections == 0 || l.max_connections_per_source == 0 {
            return bad("limits.max_connections", "expected counts of 1 or more");
        }
        if self.health.interval.is_zero() || self.health.timeout.is_zero() {
            return bad("health.interval", "expected durations above zero");
        }
        if self.health.down_after == 0 || self.health.up_after == 0 {
            return bad("health.down_after", "expected counts of 1 or more");
        }
        for (i, h) in self.homes.iter().enumerate() {
            if !self.pbxs.iter().any(|p| p.name == h.pbx) {
                return bad(&format!("home[{i}].pbx"), "names no [[pbx]]");
            }
            if h.pattern.is_empty() {
                return bad(
                    &format!("home[{i}].match"),
                    "expected an AOR or a user prefix",
                );
            }
        }
        Ok(())
    }

    /// The home rules as the router takes them.
    pub fn home_rules(&self) -> Vec<(String, usize)> {
        self.homes
            .iter()
            .filter_map(|h| {
                let i = self.pbxs.iter().position(|p| p.name == h.pbx)?;
                Some((h.pattern.clone(), i))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[edge]
sip_listen = "127.0.0.1:5060"
api_listen = "127.0.0.1:8090"

[[pbx]]
name = "main"
sip = "127.0.0.1:5070"
ha_url = "http://127.0.0.1:8080/api/v1/ha"

[[pbx]]
name = "standby"
sip = "127.0.0.1:5071"

[health]
interval = "500ms"

[phones]
failover_after = "3s"

[[home]]
match = "2"
pbx = "standby"
"#;

    #[test]
    fn parses_and_fills_defaults() {
        let c = EdgeConfig::parse("edge.toml", GOOD).unwrap();
        assert_eq!(c.pbxs.len(), 2);
        assert_eq!(c.health.interval, Duration::from_millis(500));
        assert_eq!(c.health.down_after, 2);
        let p = c.phones.policy();
        assert_eq!(p.failover_after, Duration::from_secs(3));
        assert_eq!(p.failback_stable, Duration::from_secs(600));
        assert_eq!(c.home_rules(), [("2".to_string(), 1)]);
        assert_eq!(c.limits.max_per_window, 100);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(600));
        assert!(c.edge.sip_tls_listen.is_none());
    }

    #[test]
    fn limits_and_tls_keys() {
        let with = GOOD.replace(
            "[health]",
            "[limits]\nmax_per_window = 30\nidle_timeout = \"2s\"\n\n[health]",
        );
        let c = EdgeConfig::parse("edge.toml", &with).unwrap();
        assert_eq!(c.limits.max_per_window, 30);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.window, Duration::from_secs(2));
        let e = EdgeConfig::parse("edge.toml", &with.replace("= 30", "= 0")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.max_per_window"), "{e}");
        let e = EdgeConfig::parse(
            "edge.toml",
            &with.replace("max_per_window", "max_per_windw"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_per_windw"), "{e}");
        let tls = GOOD.replace(
            "api_listen = \"127.0.0.1:8090\"",
            "api_listen = \"127.0.0.1:8090\"\nsip_tls_listen = \"127.0.0.1:5061\"\ntls_cert = \"edge.crt\"",
        );
        let e = EdgeConfig::parse("edge.toml", &tls).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("edge.tls_key"), "{e}");
        let c = EdgeConfig::parse(
            "edge.toml",
            &tls.replace("\"edge.crt\"", "\"edge.crt\"\ntls_key = \"edge.key\""),
        )
        .unwrap();
        assert_eq!(c.edge.tls_key, Some(PathBuf::from("edge.key")));
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let e =
            EdgeConfig::parse("edge.toml", &GOOD.replace("interval =", "intreval =")).unwrap_err();
        assert_eq!(e.line, Some(16), "{e}");
        assert!(e.to_string().contains("intreval"), "{e}");
        let e = EdgeConfig::parse(
            "edge.toml",
            &GOOD.replace("pbx = \"standby\"", "pbx = \"nope\""),
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("home[0].pbx"), "{e}");
        assert_eq!(e.line, Some(23), "{e}");
        let e =
            EdgeConfig::parse("edge.toml", &GOOD.replace("http://127", "ftp://127")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("pbx[0].ha_url"), "{e}");
    }
}
