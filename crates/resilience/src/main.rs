//! `resilience`: one binary for every role (see DESIGN.md).

mod api;
mod cert_reload;
mod check_config;
mod cli;
mod client;
mod clock;
mod edge;
mod follow;
mod http_client;
mod http_server;
mod journal;
mod keygen;
mod lab;
mod listen_fds;
mod manpages;
mod metrics_export;
mod node;
mod node_config;
mod node_handle;
mod paths;
mod pbx_settings;
mod ratelog;
mod replication;
mod secret;
mod services;
mod shutdown;
mod standin;
mod status;
mod web;

use clap::Parser;
use cli::{ApiArgs, CertAction, Cli, Cmd, ServicesAction};
use std::process::ExitCode;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if journal::stderr_is_journal() {
        // journald stamps each line itself and reads its priority from a
        // `<N>` prefix: `journalctl -p warning` then finds the warnings.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .event_format(journal::Prefixed)
            .with_writer(std::io::stderr)
            .init();
        return;
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(tty)
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(c.clamp(0, 255) as u8)
}

fn main() -> ExitCode {
    // Before any thread: it takes the sockets a parent handed over and
    // clears their variables from the environment.
    listen_fds::adopt_from_env();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("resilience: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A role's or admin command's configuration file that cannot be read
/// exits with its own code ([`client::EXIT_NO_INPUT`]), not the code of a
/// refusal: a script can tell a typo in a path from a bad config.
fn readable(config: &std::path::Path) -> Result<(), ExitCode> {
    match std::fs::File::open(config) {
        Ok(_) => Ok(()),
        Err(e) => {
            eprintln!("resilience: {}: cannot read: {e}", config.display());
            Err(code(client::EXIT_NO_INPUT))
        }
    }
}

/// Carry out one CLI command: one arm per command, each a line or a few.
fn run(command: Cmd) -> anyhow::Result<ExitCode> {
    let config = match &command {
        Cmd::Node { config }
        | Cmd::Follow { config }
        | Cmd::Edge { config }
        | Cmd::PbxSettings { config, .. } => Some(config.as_path()),
        Cmd::CheckConfig { file } => Some(file.as_path()),
        _ => None,
    };
    if let Some(Err(c)) = config.map(readable) {
        return Ok(c);
    }
    match command {
        Cmd::Node { config } => {
            init_logging();
            runtime()?.block_on(node::run(&config))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Lab { dir, command } if command.is_empty() => runtime()?.block_on(lab::run(dir)),
        Cmd::Lab { dir, command } => lab::control_command(dir, &command),
        Cmd::StandInPbx { listen, tcp_listen } => {
            runtime()?.block_on(standin::run(listen, tcp_listen))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckConfig { file } => Ok(check_config::run(&file)),
        Cmd::Keygen { out, force, token } => keygen::run(out.as_deref(), force, token),
        Cmd::Status { api, json } => Ok(code(client::status(&target(api)?, json))),
        Cmd::Services { action, api } => {
            let t = target(api)?;
            Ok(code(match action {
                ServicesAction::Start { force } => client::services(&t, true, force),
                ServicesAction::Stop => client::services(&t, false, false),
            }))
        }
        Cmd::Failback { api } => Ok(code(client::failback(&target(api)?))),
        Cmd::Switchover { api } => Ok(code(client::switchover(&target(api)?))),
        Cmd::Events { api, limit, json } => Ok(code(client::events(&target(api)?, limit, json))),
        Cmd::Follow { config } => {
            init_logging();
            runtime()?.block_on(follow::run(&config))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::PbxSettings { config, json } => pbx_settings_command(&config, json),
        Cmd::Edge { config } => {
            init_logging();
            runtime()?.block_on(edge::run(&config))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replicate { api } => Ok(code(client::replicate(&target(api)?))),
        Cmd::Cert { action } => cert_command(action),
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "resilience", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Manpages { out } => {
            manpages::write(&out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The node API a client command talks to.
fn target(api: ApiArgs) -> anyhow::Result<client::Target> {
    Ok(client::Target::new(api.api, api.token_file, api.config.as_deref())?.with_ca(api.ca))
}

/// `resilience pbx-settings`: apply (or undo) the PBX's HA settings now and
/// report each file, as text or JSON.
fn pbx_settings_command(config: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let (cfg, base) = node_config::load_config(config)?;
    let report = runtime()?.block_on(pbx_settings::run_for(&cfg, &base));
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for (_, l) in pbx_settings::lines(&report) {
            println!("{l}");
        }
        if report.files.is_empty() {
            println!("pbx settings: nothing to change");
        }
        if let Some(w) = &report.warning {
            println!("warning: {w}");
        }
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `resilience cert init|issue`: the cluster CA and each node's certificate.
fn cert_command(action: CertAction) -> anyhow::Result<ExitCode> {
    match action {
        CertAction::Init { dir, name, force } => {
            replication::cert::init(&dir, &name, force)?;
            println!(
                "cluster CA written to {}/{} (key {}, readable by root only)",
                dir.display(),
                replication::cert::CA_CERT,
                replication::cert::CA_KEY
            );
        }
        CertAction::Issue {
            node,
            dir,
            names,
            force,
        } => {
            replication::cert::issue(&dir, &node, &names, force)?;
            println!(
                "{0}/{node}.crt and {0}/{node}.key issued under the cluster CA",
                dir.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
