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
mod keygen;
mod lab;
mod listen_fds;
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
use cli::{CertAction, Cli, Cmd, ServicesAction};
use std::process::ExitCode;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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

/// Long because it is one `match` arm per CLI command, each a few lines.
fn main() -> ExitCode {
    // Before any thread: it takes the sockets a parent handed over and
    // clears their variables from the environment.
    listen_fds::adopt_from_env();
    let cli = Cli::parse();
    let result: anyhow::Result<ExitCode> = (|| match cli.command {
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
        Cmd::Status { api, json } => {
            let t = client::Target::new(api.api, api.token_file, api.config.as_deref())?
                .with_ca(api.ca);
            Ok(code(client::status(&t, json)))
        }
        Cmd::Services { action, api } => {
            let t = client::Target::new(api.api, api.token_file, api.config.as_deref())?
                .with_ca(api.ca);
            Ok(code(match action {
                ServicesAction::Start { force } => client::services(&t, true, force),
                ServicesAction::Stop => client::services(&t, false, false),
            }))
        }
        Cmd::Failback { api } => {
            let t = client::Target::new(api.api, api.token_file, api.config.as_deref())?
                .with_ca(api.ca);
            Ok(code(client::failback(&t)))
        }
        Cmd::Switchover { api } => {
            let t = client::Target::new(api.api, api.token_file, api.config.as_deref())?
                .with_ca(api.ca);
            Ok(code(client::switchover(&t)))
        }
        Cmd::Events { api, limit, json } => {
            let t = client::Target::new(api.api, api.token_file, api.config.as_deref())?
                .with_ca(api.ca);
            Ok(code(client::events(&t, limit, json)))
        }
        Cmd::Follow { config } => {
            init_logging();
            runtime()?.block_on(follow::run(&config))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::PbxSettings { config, json } => {
            let (cfg, base) = node_config::load_config(&config)?;
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
        Cmd::Edge { config } => {
            init_logging();
            runtime()?.block_on(edge::run(&config))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replicate { api } => {
            let t = client::Target::new(api.api, api.token_file, api.config.as_deref())?
                .with_ca(api.ca);
            Ok(code(client::replicate(&t)))
        }
        Cmd::Cert {
            action: CertAction::Init { dir, name, force },
        } => {
            replication::cert::init(&dir, &name, force)?;
            println!(
                "cluster CA written to {}/{} (key {}, readable by root only)",
                dir.display(),
                replication::cert::CA_CERT,
                replication::cert::CA_KEY
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cert {
            action:
                CertAction::Issue {
                    node,
                    dir,
                    names,
                    force,
                },
        } => {
            replication::cert::issue(&dir, &node, &names, force)?;
            println!(
                "{0}/{node}.crt and {0}/{node}.key issued under the cluster CA",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    })();
    match result {
        Ok(c) => c,
        Err(e) => {
            eprintln!("resilience: {e:#}");
            ExitCode::FAILURE
        }
    }
}
