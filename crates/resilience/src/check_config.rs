//! `resilience check-config FILE`: validate a node configuration.

use resilience_core::config::NodeConfig;
use resilience_core::ClusterKey;
use std::path::Path;
use std::process::ExitCode;

pub fn run(file: &Path) -> ExitCode {
    let shown = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{shown}: cannot read: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = match NodeConfig::parse(&shown, &text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let key_path = crate::node::resolve(base, &cfg.heartbeat.key_file);
    match std::fs::read_to_string(&key_path) {
        Ok(t) => {
            if let Err(e) = ClusterKey::from_hex(&t) {
                eprintln!("{shown}: key `heartbeat.key_file`: {}: {e}", key_path.display());
                return ExitCode::FAILURE;
            }
        }
        Err(e) => eprintln!(
            "warning: cluster key {} cannot be read ({e}); create it with `resilience keygen --out {}`",
            key_path.display(),
            key_path.display()
        ),
    }
    let peer = cfg.peer.as_ref().map_or("none".to_string(), |p| {
        format!("{} at {}", p.name, p.address)
    });
    println!("{shown}: OK");
    println!(
        "  node {} ({}, {} mode), peer {peer}",
        cfg.node.name, cfg.node.node_type, cfg.node.mode
    );
    println!(
        "  heartbeat every {:?}, failover after {:?}; failback {:?}{}; split brain: {:?}",
        cfg.heartbeat.interval,
        cfg.heartbeat.failover_after,
        cfg.failback.policy,
        match cfg.failback.policy {
            resilience_core::config::FailbackPolicyKind::Stable =>
                format!(" ({:?})", cfg.failback.stable_for),
            _ => String::new(),
        },
        cfg.failback.split_brain,
    );
    println!(
        "  {} service(s), {} arbiter(s), API on {}",
        cfg.services.len(),
        cfg.arbiters.addresses.len(),
        cfg.api.listen
    );
    ExitCode::SUCCESS
}
