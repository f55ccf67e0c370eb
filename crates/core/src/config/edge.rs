//! The edge's configuration file (`resilience edge --config FILE`): where it
//! listens, the PBXs behind it and how they are probed, and the per-phone
//! rules. Same error rules as the node's file: unknown keys are errors, and
//! every error names the line and the key.

use crate::config::{parse_file, ConfigError};
use crate::edge::phones::Policy;
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
    pub web: WebSection,
    /// What a stranger may cost: per-source rate, connections, deadlines.
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
    /// Other names phones give the edge in a Route (RFC 3261 §16.4): its
    /// DNS names, or the public address a NAT maps to `sip_listen`.
    #[serde(default)]
    pub names: Vec<String>,
    /// Retry-After of the 503 a phone gets when no PBX can serve it.
    #[serde(with = "humantime_serde", default = "default_retry_after")]
    pub retry_after: Duration,
    /// 32 random bytes as hex (`resilience keygen --out FILE`), mode 0600:
    /// the key of the edge's branches and flows, so a restarted edge still
    /// routes the dialogs in progress. Without it, a random key per start.
    pub key_file: Option<PathBuf>,
    /// The API token (a secret file, like the node's): `/api/v1/phones`
    /// lists user identities and answers only `Authorization: Bearer`.
    /// Without it, the list is refused to everyone.
    pub token_file: Option<std::path::PathBuf>,
    /// Phones (rows) of `/api/v1/phones` one client address may read per
    /// second (half a second's worth, at least a page, at once):
    /// past it, 429 with Retry-After. A
    /// client walking a large table without pause would otherwise take a
    /// core from the machine the relay runs on. 0: no limit.
    #[serde(default = "default_api_rows_per_second")]
    pub api_rows_per_second: u32,
    /// SIP over TLS for the phones (RFC 3261 §26.2), with `tls_cert` and
    /// `tls_key`. The files are read again when they change: a renewed
    /// certificate is served to the next connection, no restart.
    pub sip_tls_listen: Option<SocketAddr>,
    /// The same web proxy over TLS (HTTPS and WSS), with `tls_cert` and
    /// `tls_key`.
    pub https_listen: Option<SocketAddr>,
    /// PEM certificate chain of the edge's TLS listeners; reloaded when
    /// the file changes.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

fn default_name() -> String {
    "edge".into()
}
/// 20 full pages a second: about 40 ms of CPU a second per client.
fn default_api_rows_per_second() -> u32 {
    10_000
}
fn default_retry_after() -> Duration {
    Duration::from_secs(5)
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
    /// A path on `web` polled every `[health] interval` (a 2xx or 3xx
    /// passes): a web server that fails it gets no requests.
    pub web_health: Option<String>,
}

/// The web listeners' bounds and the web upstreams' health (nginx's
/// `max_fails`/`fail_timeout`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSection {
    /// Connections served at once, on each web listener (lowered to the
    /// descriptor limit less a reserve).
    #[serde(default = "d_web_connections")]
    pub max_connections: usize,
    /// Connections one source address may hold (a site behind one NAT
    /// shares it).
    #[serde(default = "d_web_per_source")]
    pub max_per_source: usize,
    /// Time to send a request head, counted from the connection's opening
    /// or the end of its previous response: also the keep-alive idle limit.
    #[serde(with = "humantime_serde", default = "d_header_timeout")]
    pub header_timeout: Duration,
    /// Time to send a whole request body.
    #[serde(with = "humantime_serde", default = "d_body_timeout")]
    pub body_timeout: Duration,
    /// Largest request body, in bytes.
    #[serde(default = "d_max_body")]
    pub max_body: u64,
    /// Time for the web server to answer (connect included).
    #[serde(with = "humantime_serde", default = "d_upstream_timeout")]
    pub upstream_timeout: Duration,
    /// An open WebSocket with no traffic either way for this long is closed.
    #[serde(with = "humantime_serde", default = "d_websocket_idle")]
    pub websocket_idle: Duration,
    /// Failed requests within `fail_timeout` that take a web server out of
    /// the rotation for `fail_timeout` (0: never).
    #[serde(default = "d_max_fails")]
    pub max_fails: u32,
    #[serde(with = "humantime_serde", default = "d_fail_timeout")]
    pub fail_timeout: Duration,
}

fn d_web_connections() -> usize {
    4096
}
fn d_web_per_source() -> usize {
    512
}
fn d_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn d_body_timeout() -> Duration {
    Duration::from_secs(60)
}
fn d_max_body() -> u64 {
    16 * 1024 * 1024
}
fn d_upstream_timeout() -> Duration {
    Duration::from_secs(60)
}
fn d_websocket_idle() -> Duration {
    Duration::from_secs(600)
}
fn d_max_fails() -> u32 {
    crate::edge::web_upstreams::Policy::default().max_fails
}
fn d_fail_timeout() -> Duration {
    crate::edge::web_upstreams::Policy::default().fail_timeout
}

impl Default for WebSection {
    fn default() -> Self {
        WebSection {
            max_connections: d_web_connections(),
            max_per_source: d_web_per_source(),
            header_timeout: d_header_timeout(),
            body_timeout: d_body_timeout(),
            max_body: d_max_body(),
            upstream_timeout: d_upstream_timeout(),
            websocket_idle: d_websocket_idle(),
            max_fails: d_max_fails(),
            fail_timeout: d_fail_timeout(),
        }
    }
}

impl EdgeConfig {
    /// The web upstreams' policy: `[web]` counts and window, `[health]`
    /// counts for the active checks.
    pub fn web_policy(&self) -> crate::edge::web_upstreams::Policy {
        crate::edge::web_upstreams::Policy {
            max_fails: self.web.max_fails,
            fail_timeout: self.web.fail_timeout,
            down_after: self.health.down_after,
            up_after: self.health.up_after,
        }
    }
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
    /// Most phones tracked (and REGISTERs awaiting an answer, and calls
    /// counted); a new phone beyond it is relayed but not tracked.
    #[serde(default = "d_max_phones")]
    pub max_phones: usize,
    /// When the rules move a phone, register it at its new PBX from its
    /// last REGISTER, so it can be called there at once. The PBX must
    /// accept REGISTERs from the edge without a challenge.
    #[serde(default = "d_register_moved")]
    pub register_moved: bool,
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
fn d_register_moved() -> bool {
    true
}
fn d_max_phones() -> usize {
    Policy::default().max_phones
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
            max_phones: d_max_phones(),
            register_moved: d_register_moved(),
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
            max_phones: self.max_phones,
            register_moved: self.register_moved,
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
        if !(1..=3600).contains(&self.edge.retry_after.as_secs()) {
            return bad(
                "edge.retry_after",
                "expected whole seconds from 1s to 1h (a 503's Retry-After)",
            );
        }
        if self.edge.api_rows_per_second > 10_000_000 {
            return bad(
                "edge.api_rows_per_second",
                "expected 0 (no limit) to 10000000 phones a second per client",
            );
        }
        for (i, n) in self.edge.names.iter().enumerate() {
            let ok = !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
            if !ok {
                return bad(
                    &format!("edge.names[{i}]"),
                    "expected a host name or an IP address, as a Route URI writes it",
                );
            }
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
        for (key, set) in [
            ("edge.http_listen", self.edge.http_listen.is_some()),
            ("edge.https_listen", self.edge.https_listen.is_some()),
        ] {
            if set && self.pbxs.iter().all(|p| p.web.is_none()) {
                return bad(key, "no [[pbx]] has a `web` address to proxy to");
            }
        }
        if self.edge.https_listen.is_some()
            && (self.edge.tls_cert.is_none() || self.edge.tls_key.is_none())
        {
            return bad(
                "edge.https_listen",
                "expected `tls_cert` and `tls_key` (PEM files) in [edge]",
            );
        }
        match (&self.edge.tls_cert, &self.edge.tls_key) {
            (Some(_), None) => {
                return bad(
                    "edge.tls_key",
                    "expected both `tls_cert` and `tls_key`, or neither",
                )
            }
            (None, Some(_)) => {
                return bad(
                    "edge.tls_cert",
                    "expected both `tls_cert` and `tls_key`, or neither",
                )
            }
            _ => {}
        }
        if self.edge.sip_tls_listen.is_some() && self.edge.tls_cert.is_none() {
            return bad(
                "edge.tls_cert",
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
        for (i, p) in self.pbxs.iter().enumerate() {
            if let Some(path) = &p.web_health {
                if p.web.is_none() {
                    return bad(
                        &format!("pbx[{i}].web_health"),
                        "expected a `web` address to check",
                    );
                }
                if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace()) {
                    return bad(
                        &format!("pbx[{i}].web_health"),
                        "expected a path such as \"/healthz\"",
                    );
                }
            }
        }
        let w = &self.web;
        for (key, n) in [
            ("web.max_connections", w.max_connections),
            ("web.max_per_source", w.max_per_source),
        ] {
            if n == 0 {
                return bad(key, "expected 1 or more");
            }
        }
        for (key, d) in [
            ("web.header_timeout", w.header_timeout),
            ("web.body_timeout", w.body_timeout),
            ("web.upstream_timeout", w.upstream_timeout),
            ("web.websocket_idle", w.websocket_idle),
            ("web.fail_timeout", w.fail_timeout),
        ] {
            if d.is_zero() {
                return bad(key, "expected a duration above zero");
            }
        }
        if self.health.interval.is_zero() || self.health.timeout.is_zero() {
            return bad("health.interval", "expected durations above zero");
        }
        if self.health.down_after == 0 || self.health.up_after == 0 {
            return bad("health.down_after", "expected counts of 1 or more");
        }
        if self.phones.max_phones == 0 {
            return bad("phones.max_phones", "expected 1 or more");
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
    use std::path::Path;

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
        assert_eq!(p.max_phones, 30_000);
        assert!(c.edge.token_file.is_none());
        assert_eq!(c.edge.retry_after, Duration::from_secs(5));
        assert!(c.edge.names.is_empty() && c.edge.key_file.is_none());
        assert_eq!(c.limits.max_per_window, 100);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(600));
        assert!(c.edge.sip_tls_listen.is_none());
    }

    #[test]
    fn names_retry_after_and_key_file() {
        let with = |lines: &str| {
            GOOD.replace(
                "api_listen = \"127.0.0.1:8090\"\n",
                &format!("api_listen = \"127.0.0.1:8090\"\n{lines}\n"),
            )
        };
        let c = EdgeConfig::parse(
            "edge.toml",
            &with("names = [\"edge.example.com\", \"203.0.113.7\"]\nretry_after = \"30s\"\nkey_file = \"/etc/resilience/edge.key\""),
        )
        .unwrap();
        assert_eq!(c.edge.names, ["edge.example.com", "203.0.113.7"]);
        assert_eq!(c.edge.retry_after, Duration::from_secs(30));
        assert_eq!(
            c.edge.key_file.as_deref(),
            Some(std::path::Path::new("/etc/resilience/edge.key"))
        );
        let e = EdgeConfig::parse("edge.toml", &with("retry_after = \"0s\"")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("edge.retry_after"), "{e}");
        let e = EdgeConfig::parse("edge.toml", &with("names = [\"a b\"]")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("edge.names[0]"), "{e}");
    }

    #[test]
    fn api_rows_per_second_has_a_default_and_a_bound_named_with_its_line() {
        assert_eq!(
            EdgeConfig::parse("edge.toml", GOOD)
                .unwrap()
                .edge
                .api_rows_per_second,
            10_000
        );
        let with = |v: &str| {
            GOOD.replace(
                "api_listen = \"127.0.0.1:8090\"\n",
                &format!("api_listen = \"127.0.0.1:8090\"\napi_rows_per_second = {v}\n"),
            )
        };
        let c = EdgeConfig::parse("edge.toml", &with("0")).unwrap();
        assert_eq!(c.edge.api_rows_per_second, 0);
        let e = EdgeConfig::parse("edge.toml", &with("20000000")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("edge.api_rows_per_second"), "{e}");
        let line = with("1")
            .lines()
            .position(|l| l.starts_with("api_rows"))
            .unwrap()
            + 1;
        assert_eq!(e.line, Some(line), "{e}");
        let e = EdgeConfig::parse("edge.toml", &with("\"fast\"")).unwrap_err();
        assert_eq!(e.line, Some(line), "{e}");
        assert!(e.to_string().contains("api_rows_per_second"), "{e}");
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

    #[test]
    fn web_keys_parse_and_are_checked() {
        let c = EdgeConfig::parse("edge.toml", GOOD).unwrap();
        assert_eq!(c.web.max_fails, 3);
        assert_eq!(c.web.fail_timeout, Duration::from_secs(10));
        assert!(c.edge.tls_cert.is_none());
        let with_web = GOOD
            .replace(
                "api_listen = \"127.0.0.1:8090\"",
                "api_listen = \"127.0.0.1:8090\"\nhttps_listen = \"127.0.0.1:8443\"\ntls_cert = \"/etc/edge/cert.pem\"\ntls_key = \"/etc/edge/key.pem\"",
            )
            .replace(
                "sip = \"127.0.0.1:5070\"",
                "sip = \"127.0.0.1:5070\"\nweb = \"127.0.0.1:80\"\nweb_health = \"/healthz\"",
            )
            + "\n[web]\nmax_fails = 2\nfail_timeout = \"30s\"\nwebsocket_idle = \"1h\"\n";
        let c = EdgeConfig::parse("edge.toml", &with_web).unwrap();
        assert_eq!(
            c.edge.tls_key.as_deref(),
            Some(Path::new("/etc/edge/key.pem"))
        );
        assert_eq!(c.pbxs[0].web_health.as_deref(), Some("/healthz"));
        let p = c.web_policy();
        assert_eq!((p.max_fails, p.fail_timeout), (2, Duration::from_secs(30)));
        assert_eq!(c.web.websocket_idle, Duration::from_secs(3600));
        let e = EdgeConfig::parse(
            "edge.toml",
            &with_web.replace("tls_key = \"/etc/edge/key.pem\"", ""),
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("edge.https_listen"), "{e}");
        let e = EdgeConfig::parse(
            "edge.toml",
            &with_web.replace("\"/healthz\"", "\"healthz\""),
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("pbx[0].web_health"), "{e}");
        let e = EdgeConfig::parse("edge.toml", &with_web.replace("\"1h\"", "\"0s\"")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("web.websocket_idle"), "{e}");
        let e =
            EdgeConfig::parse("edge.toml", &with_web.replace("max_fails", "max_fail")).unwrap_err();
        assert!(e.to_string().contains("max_fail"), "{e}");
    }
}
