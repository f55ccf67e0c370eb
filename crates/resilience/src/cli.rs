//! The command line: one binary, a subcommand per role and per admin action.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The exit codes, in `--help` (the same as `client`'s constants).
pub const EXIT_CODES: &str = "Exit codes:
  0   done (check-config: the file is valid)
  1   refused: by the node (the reason is printed), or an invalid
      configuration or secret file (check-config, and a role at start)
  2   bad command line
  3   the node's API could not be reached
  4   the API token was refused
  66  a configuration file could not be read";

#[derive(Parser, Debug)]
#[command(
    name = "resilience",
    version,
    about = "High-availability manager for telephony servers (Main/Standby PBX pairs)",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

/// Where the node's API is, for the admin commands.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Node API base URL (default http://127.0.0.1:7480, or the one in --config).
    #[arg(long, global = true)]
    pub api: Option<String>,
    /// File holding the API token (default: the node's, from --config, else
    /// /var/lib/resilience/api.token).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Take the API address and token file from this node config.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Trust this CA (PEM) for an https API (the cluster CA).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the HA daemon on a PBX host (Main or Standby).
    Node {
        /// The role's configuration file (TOML; `resilience check-config` checks it).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Follow a node's Active/Inactive status on a CC/UC/media host.
    Follow {
        /// The role's configuration file (TOML; `resilience check-config` checks it).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write (Main, Standby) or restore (disabled) the PBX settings of the
    /// node config's [pbx_settings] now, as the node does at start.
    PbxSettings {
        /// The role's configuration file (TOML; `resilience check-config` checks it).
        #[arg(long, short)]
        config: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the SIP and HTTP edge in front of both nodes.
    Edge {
        /// The role's configuration file (TOML; `resilience check-config` checks it).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The whole cluster on loopback, for a first look.
    Lab {
        /// Folder for the lab's configs, key, state and logs (default: a new
        /// folder under the system's temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// A fault for the lab running in --dir: `crash main`, `boot main`,
        /// `pbx-down standby`, `pbx-up standby`, `link-cut`, `link-heal`,
        /// or `state`. Without it, start a lab.
        command: Vec<String>,
    },
    /// Show a node's state (peer, PBX health, services, failback).
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Start or stop the PBX services on a node.
    Services {
        #[command(subcommand)]
        action: ServicesAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Move the service back to the Main now, whatever the failback policy.
    Failback {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Planned switchover: move the service to the peer now, after a drain
    /// (run on either node; run again to move it back). Refused with the
    /// reason when the peer is not ready.
    Switchover {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Replicate the Main's data to the Standby now.
    Replicate {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show the node's event history, newest first.
    Events {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Manage the cluster CA and node certificates.
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
    /// Create a cluster key for the heartbeat HMAC (64 hex digits), or with
    /// --token an API token.
    Keygen {
        /// Write the key to this file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Overwrite an existing file (it gets mode 0600 too).
        #[arg(long)]
        force: bool,
        /// Make an API token (`[api] token_file`) rather than a cluster key:
        /// the same 64 random hex digits, named so in messages.
        #[arg(long)]
        token: bool,
    },
    /// Print the completion script of SHELL (bash, zsh, fish, elvish,
    /// powershell) for this command line.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (resilience.1 and one per command) into --out:
    /// the Debian package's build runs it.
    #[command(hide = true)]
    Manpages {
        #[arg(long)]
        out: PathBuf,
    },
    /// Validate a node's, an edge's or a follower's configuration file and
    /// the key, token and TLS key files it names, with the rules the role
    /// applies at start. Prints what it read; exit 0 when valid.
    #[command(after_help = EXIT_CODES)]
    CheckConfig {
        /// The configuration file (told apart by its [edge] or [follow] table).
        file: PathBuf,
    },
    /// A stand-in PBX for labs and tests: answers SIP OPTIONS and REGISTER.
    #[command(hide = true)]
    StandInPbx {
        #[arg(long)]
        listen: SocketAddr,
        /// Also accept (and close) TCP connections here: a witness for arbiters.
        #[arg(long)]
        tcp_listen: Option<SocketAddr>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServicesAction {
    /// Start the services (manual mode; in automatic mode, release an admin hold).
    Start {
        /// Start even though the peer is seen Active (manual mode).
        #[arg(long)]
        force: bool,
    },
    /// Stop the services and keep them stopped.
    Stop,
}

#[derive(Subcommand, Debug)]
pub enum CertAction {
    /// Create the cluster CA (ca.pem, ca.key) in --dir.
    Init {
        #[arg(long, default_value = "/etc/resilience/pki")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Resilience cluster CA")]
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Issue NODE.crt and NODE.key, signed by the cluster CA in --dir. The
    /// certificate names NODE (the node's name in its config) and any --name.
    Issue {
        node: String,
        #[arg(long, default_value = "/etc/resilience/pki")]
        dir: PathBuf,
        /// Extra DNS names or IP addresses for the certificate.
        #[arg(long = "name")]
        names: Vec<String>,
        #[arg(long)]
        force: bool,
    },
}
