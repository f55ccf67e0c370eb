//! `resilience check-config FILE`: validate a node's, an edge's or a
//! follower's configuration (told apart by an `[edge]` or `[follow]` table).
//! For a node it also checks the secret files the config names (cluster key,
//! API token, TLS private keys) with the node's own rules; an edge, its
//! `key_file` and its API token when it has them; a follower reads no secret.

use crate::secret::SecretError;
use resilience_core::config::edge::EdgeConfig;
use resilience_core::config::follow::FollowConfig;
use resilience_core::config::NodeConfig;
use resilience_core::types::human as dur;
use resilience_core::ClusterKey;
use std::path::Path;
use std::process::ExitCode;

/// Whether the file has a top-level `[name]` table.
fn has_table(text: &str, name: &str) -> bool {
    text.parse::<toml::Table>()
        .map(|t| t.contains_key(name))
        .unwrap_or(false)
}

fn follow(shown: &str, text: &str) -> ExitCode {
    match FollowConfig::parse(shown, text) {
        Ok(c) => {
            let f = &c.follow;
            println!("{shown}: OK");
            println!(
                "  follower {} polls {} every {} (acts after {} answers in a row; unreachable for {} counts as inactive)",
                f.name,
                f.node,
                dur(f.poll),
                f.confirm_polls,
                dur(f.unreachable_after)
            );
            println!(
                "  {} service(s), {} on_active and {} on_inactive hook(s), API on {}",
                c.services.len(),
                c.hooks.on_active.len(),
                c.hooks.on_inactive.len(),
                f.api_listen
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Check an edge config and the secrets it names.
fn edge(shown: &str, text: &str, base: &Path) -> ExitCode {
    match EdgeConfig::parse(shown, text) {
        Ok(c) => {
            if !edge_secrets(shown, &c, base) {
                return ExitCode::FAILURE;
            }
            println!("{shown}: OK");
            edge_summary(&c);
            edge_web(&c);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The edge's key (a missing one is a warning) and API token files; false
/// when one is unusable, with why on stderr.
fn edge_secrets(shown: &str, c: &EdgeConfig, base: &Path) -> bool {
    if let Some(k) = &c.edge.key_file {
        let path = crate::paths::resolve(base, k);
        match crate::edge::key::load(&path) {
            Ok(_) => {}
            Err(crate::edge::key::KeyError::Secret(e)) if e.is_missing() => eprintln!(
                "warning: {e}; create it with `resilience keygen --out {}`",
                path.display()
            ),
            Err(e) => {
                eprintln!("{shown}: key `edge.key_file`: {e}");
                return false;
            }
        }
    }
    if let Some(p) = &c.edge.token_file {
        let path = crate::paths::resolve(base, p);
        if let Err(e) = crate::secret::read_token(&path) {
            eprintln!(
                "{shown}: key `edge.token_file`: {e}; create it with `resilience keygen --token --out {}`",
                path.display()
            );
            return false;
        }
    }
    true
}

/// The edge's listeners, limits, PBXs and timers, as read.
fn edge_summary(c: &EdgeConfig) {
    println!(
        "  edge {} on {} (SIP) and {} (API)",
        c.edge.name, c.edge.sip_listen, c.edge.api_listen
    );
    match c.edge.api_rows_per_second {
        0 => println!("  phones list: no pace per client (api_rows_per_second = 0)"),
        n => println!("  phones list: at most {n} phones a second per client address, then 429"),
    }
    if let (Some(addr), Some(cert)) = (c.edge.sip_tls_listen, &c.edge.tls_cert) {
        println!(
            "  SIP over TLS on {addr}, certificate {} (read again when it changes)",
            cert.display()
        );
    }
    let l = &c.limits;
    println!(
        "  limits: {} messages per {} per source; at most {} TCP/TLS connections ({} per address); a message due within {}, idle connections closed after {}",
        l.max_per_window,
        dur(l.window),
        l.max_connections,
        l.max_connections_per_source,
        dur(l.message_timeout),
        dur(l.idle_timeout)
    );
    for p in &c.pbxs {
        println!(
            "  pbx {} at {}{}",
            p.name,
            p.sip,
            p.ha_url
                .as_deref()
                .map(|u| format!(", up only while {u} says active"))
                .unwrap_or_default()
        );
    }
    println!(
        "  probes every {} (down after {}, up after {}); phones fail over after {}, back after {} stable",
        dur(c.health.interval),
        c.health.down_after,
        c.health.up_after,
        dur(c.phones.failover_after),
        dur(c.phones.failback_stable)
    );
}

/// The web proxy's listeners and rules; a certificate that does not load
/// is a warning (it may be put in place after the check).
fn edge_web(c: &EdgeConfig) {
    let listens: Vec<String> = [
        c.edge.http_listen.map(|a| format!("http://{a}")),
        c.edge.https_listen.map(|a| format!("https://{a}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if listens.is_empty() {
        return;
    }
    println!(
        "  web proxy on {}; a web server is skipped for {} after {} failed requests within it",
        listens.join(" and "),
        dur(c.web.fail_timeout),
        c.web.max_fails
    );
    if let (Some(_), Some(cert), Some(key)) =
        (c.edge.https_listen, &c.edge.tls_cert, &c.edge.tls_key)
    {
        if let Err(e) = crate::cert_reload::ReloadingCert::load(cert, key) {
            eprintln!("warning: the TLS certificate does not load yet: {e}");
        }
    }
}

/// The node's secret files, through the checks the node itself applies
/// ([`crate::secret`]): an exposed or short one is an error, a missing one a
/// warning (the config may be checked before the files are put in place).
/// False when one is refused.
fn secrets(shown: &str, cfg: &NodeConfig, base: &Path) -> bool {
    let mut ok = true;
    // Prints the refusal; false when it is more than a warning.
    let report = |e: SecretError, create: String| {
        if e.is_missing() {
            eprintln!("warning: {e}; {create}");
            true
        } else {
            eprintln!("{shown}: {e}");
            false
        }
    };
    let key_path = crate::paths::resolve(base, &cfg.heartbeat.key_file);
    match crate::secret::read(&key_path, "cluster key") {
        Ok(t) => {
            if let Err(e) = ClusterKey::from_hex(&t) {
                eprintln!(
                    "{shown}: key `heartbeat.key_file`: {}: {e}",
                    key_path.display()
                );
                ok = false;
            }
        }
        // The node does not start without its key: an error, not a warning.
        Err(e) if e.is_missing() => {
            eprintln!(
                "{shown}: key `heartbeat.key_file`: {e}; the node does not start without it: create it with `resilience keygen --out {}` and copy it to both nodes (mode 0600)",
                key_path.display()
            );
            ok = false;
        }
        Err(e) => {
            ok &= report(
                e,
                format!(
                    "create it with `resilience keygen --out {}`",
                    key_path.display()
                ),
            )
        }
    }
    let token_path = crate::node_config::token_path(cfg, base);
    if let Err(e) = crate::secret::read_token(&token_path) {
        // Without `token_file` the node creates its token on first start.
        if !(e.is_missing() && cfg.api.token_file.is_none()) {
            ok &= report(
                e,
                format!(
                    "create it with `resilience keygen --token --out {}`",
                    token_path.display()
                ),
            );
        }
    }
    for (what, path) in crate::node_config::tls_keys(cfg, base) {
        if let Err(e) = crate::secret::read(&path, what) {
            ok &= report(e, "issue it with `resilience cert issue`".to_string());
        }
    }
    ok
}

pub fn run(file: &Path) -> ExitCode {
    let shown = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{shown}: cannot read: {e}");
            return ExitCode::FAILURE;
        }
    };
    if has_table(&text, "edge") {
        return edge(&shown, &text, &crate::paths::config_base(file));
    }
    if has_table(&text, "follow") {
        return follow(&shown, &text);
    }
    let cfg = match NodeConfig::parse(&shown, &text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for w in cfg.warnings(&shown, &text) {
        eprintln!("warning: {w}");
    }
    let base = &crate::paths::config_base(file);
    if !secrets(&shown, &cfg, base) {
        return ExitCode::FAILURE;
    }
    let peer = cfg.peer.as_ref().map_or("none".to_string(), |p| {
        format!("{} at {}", p.name, p.address)
    });
    let changes = match crate::pbx_settings::wanted(&cfg, base) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{shown}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{shown}: OK");
    println!(
        "  node {} ({}, {} mode), peer {peer}",
        cfg.node.name, cfg.node.node_type, cfg.node.mode
    );
    println!(
        "  heartbeat every {}, failover after {}; failback {}{}; split brain: {}",
        dur(cfg.heartbeat.interval),
        dur(cfg.heartbeat.failover_after),
        cfg.failback.policy,
        match cfg.failback.policy {
            resilience_core::config::FailbackPolicyKind::Stable =>
                format!(" (after {} stable)", dur(cfg.failback.stable_for)),
            _ => String::new(),
        },
        cfg.failback.split_brain,
    );
    if cfg.failback.new_calls == resilience_core::config::NewCallsPolicy::Main {
        println!(
            "  failback.new_calls = main: during the failback drain the Main takes new calls (only with the SIP edge in front; set it on both nodes, once both run this version: an older node drops frames carrying its flags)"
        );
    }
    println!(
        "  {} service(s), {} arbiter(s), API on {}",
        cfg.services.len(),
        cfg.arbiters.addresses.len(),
        cfg.api.listen
    );
    for c in &changes {
        println!("  pbx settings: {} in {}", c.what, c.file.display());
    }
    ExitCode::SUCCESS
}
