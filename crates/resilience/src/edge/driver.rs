//! [`EdgeDriver`]: the edge built apart from its running (the node's
//! `NodeDriver` shape). [`EdgeDriver::new`] loads the config and key, binds
//! the sockets, starts the intake, probes, API and web proxy; the relay
//! itself runs on a thread of its own once [`EdgeDriver::run`] starts it.

use super::{
    drop_log, intake, key, load_config, metrics_text, phones, probe, rowrate, spawn_api, status,
    table, tcp, tls_certs, ApiState, RelayTask, View, EDGE_API_CONNECTIONS,
};
use anyhow::Context;
use axum::routing::get;
use resilience_core::config::edge::EdgeConfig;
use resilience_core::edge::phones::Router;
use resilience_sip::{Flow, Relay};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Ends an edge (the process's signals call it; a test calls it in-process)
/// and says where it listens (the config may ask for port 0).
#[derive(Clone)]
pub struct EdgeHandle {
    stop: mpsc::UnboundedSender<()>,
    sip: SocketAddr,
    api: SocketAddr,
}

impl EdgeHandle {
    /// Stop the edge: [`EdgeDriver::run`] stops the relay's and the API's
    /// threads, joins them and returns. The tasks it spawned on the caller's
    /// runtime (SIP TCP/TLS accept loops, the web proxy, the PBX probes) end
    /// with that runtime: in the daemon the process exits; a test that
    /// needs them gone ends its runtime.
    pub fn shutdown(&self) {
        let _ = self.stop.send(());
    }

    /// The bound SIP address (UDP, and TCP on the same port).
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip
    }

    /// The bound API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api
    }
}

/// A thread running a runtime of its own until told to stop.
struct Stoppable {
    stop: oneshot::Sender<()>,
    join: std::thread::JoinHandle<()>,
}

impl Stoppable {
    /// Tell the thread to stop and wait for its end.
    async fn stop_and_join(self, what: &str) {
        let _ = self.stop.send(());
        let join = self.join;
        match tokio::task::spawn_blocking(move || join.join()).await {
            Ok(Ok(())) => {}
            _ => tracing::error!("edge: the {what} thread panicked"),
        }
    }
}

/// The edge, built and ready for its relay thread.
pub struct EdgeDriver {
    relay_task: RelayTask,
    stop_rx: mpsc::UnboundedReceiver<()>,
    api: Stoppable,
}

/// The SIP sockets and what reads them: UDP for the relay's thread, TCP
/// (and TLS) served by the intake, whose messages and drops come over
/// channels.
struct Sip {
    sock: std::net::UdpSocket,
    addr: SocketAddr,
    conns: tcp::Conns,
    tcp_rx: mpsc::Receiver<(Flow, Vec<u8>)>,
    tcp_drop_rx: mpsc::Receiver<&'static str>,
}

/// The SIP UDP socket and the TCP listener on the same address. With port
/// 0 the system picks the UDP port, which TCP must then share: another
/// process may hold that TCP port, so a few picks are tried. A configured
/// (or inherited) port is bound once: its failure is the admin's to see.
async fn sip_pair(
    listen: SocketAddr,
) -> anyhow::Result<(std::net::UdpSocket, SocketAddr, tokio::net::TcpListener)> {
    let tries = if listen.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let sock = crate::listen_fds::udp(listen)
            .and_then(|s| s.set_nonblocking(true).map(|_| s))
            .with_context(|| format!("SIP socket {listen}"))?;
        let addr = sock.local_addr().context("SIP socket's address")?;
        match crate::listen_fds::tokio_tcp(addr).await {
            Ok(l) => return Ok((sock, addr, l)),
            Err(e) => last = Some(anyhow::Error::new(e).context(format!("SIP TCP socket {addr}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("SIP TCP socket {listen}")))
}

async fn sip_sockets(cfg: &EdgeConfig, path: &Path) -> anyhow::Result<Sip> {
    // Bound here (errors at start), registered with the relay thread's
    // runtime there.
    let (sock, addr, tcp_listener) = sip_pair(cfg.edge.sip_listen).await?;
    let (tcp_tx, tcp_rx) = mpsc::channel::<(Flow, Vec<u8>)>(1024);
    let (tcp_drop_tx, tcp_drop_rx) = mpsc::channel::<&'static str>(64);
    let intake = intake(cfg, tcp_tx, tcp_drop_tx)?;
    let conns = intake.conns.clone();
    if let Some(addr) = cfg.edge.sip_tls_listen {
        let certs = tls_certs(cfg, path)?;
        let l = crate::listen_fds::tokio_tcp(addr)
            .await
            .with_context(|| format!("SIP TLS socket {addr}"))?;
        tracing::info!("edge: SIP over TLS on {addr}");
        tokio::spawn(tcp::serve(l, Some(certs), intake.clone()));
    }
    tokio::spawn(tcp::serve(tcp_listener, None, intake));
    Ok(Sip {
        sock,
        addr,
        conns,
        tcp_rx,
        tcp_drop_rx,
    })
}

/// The relay's key: the configured file, or a random one for this run.
fn relay_key(cfg: &EdgeConfig, path: &Path) -> anyhow::Result<[u8; 32]> {
    Ok(match &cfg.edge.key_file {
        Some(p) => key::load(&crate::paths::resolve(&crate::paths::config_base(path), p))?,
        None => {
            tracing::warn!("edge: no [edge] key_file, so a random key for this run: restarting the edge breaks the routing of the dialogs in progress (their BYE, re-INVITE, and the PBXs' requests to phones until they register again)");
            key::random()?
        }
    })
}

/// The phones router, owned by the relay task alone (the API reads the copy
/// it feeds); its dialog ids carry a random prefix per run.
fn router(cfg: &EdgeConfig) -> anyhow::Result<Router> {
    let mut secret_id = [0u8; 6];
    getrandom::fill(&mut secret_id).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let start = Instant::now();
    Ok(
        Router::new(cfg.phones.policy(), cfg.pbxs.len(), cfg.home_rules(), start)
            .with_id_prefix(format!("rs-{}-", hex::encode(secret_id))),
    )
}

/// The edge's own API, bounded like the node's (connection cap, header and
/// idle deadlines, Host check), on its own thread.
fn start_api(
    cfg: &EdgeConfig,
    state: ApiState,
    table: table::Table,
) -> anyhow::Result<(Stoppable, SocketAddr)> {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/phones", get(phones))
        .route("/api/v1/status", get(status))
        .with_state(state);
    let listener = crate::listen_fds::tcp(cfg.edge.api_listen)
        .and_then(|l| l.set_nonblocking(true).map(|_| l))
        .with_context(|| format!("API socket {}", cfg.edge.api_listen))?;
    let addr = listener.local_addr().context("API socket's address")?;
    let app = crate::http_server::guarded(app, crate::http_server::Hosts::new(&[]));
    let cap = crate::http_server::connection_cap(
        EDGE_API_CONNECTIONS,
        crate::http_server::nofile_limit(),
    );
    let (stop, stop_rx) = oneshot::channel();
    let join = spawn_api(listener, app, cap, table, stop_rx)?;
    Ok((Stoppable { stop, join }, addr))
}

/// The API token, when `token_file` is set (a secret file).
fn api_token(cfg: &EdgeConfig, path: &Path) -> anyhow::Result<Option<Arc<str>>> {
    Ok(match &cfg.edge.token_file {
        Some(p) => {
            let p = crate::paths::resolve(&crate::paths::config_base(path), p);
            Some(Arc::<str>::from(crate::secret::read_token(&p)?))
        }
        None => None,
    })
}

fn log_started(cfg: &EdgeConfig, handle: &EdgeHandle) {
    let pbxs: Vec<String> = cfg
        .pbxs
        .iter()
        .map(|p| format!("{} {}", p.name, p.sip))
        .collect();
    tracing::info!(
        "edge {}: SIP on {} (UDP and TCP), API on http://{}, PBXs: {}",
        cfg.edge.name,
        handle.sip_addr(),
        handle.api_addr(),
        pbxs.join(", ")
    );
}

impl EdgeDriver {
    /// Load, bind and start everything but the relay's thread.
    pub async fn new(path: &Path) -> anyhow::Result<(EdgeDriver, EdgeHandle)> {
        let cfg = load_config(path)?;
        // Before any socket: a refused token stops the start at once.
        let token = api_token(&cfg, path)?;
        let metrics = crate::metrics_export::install_metrics();
        crate::metrics_export::set_info("edge", &[]);
        let sip = sip_sockets(&cfg, path).await?;
        let names: Arc<Vec<String>> = Arc::new(cfg.pbxs.iter().map(|p| p.name.clone()).collect());
        let pbx_addrs: Vec<SocketAddr> = cfg.pbxs.iter().map(|p| p.sip).collect();
        let relay = Relay::new(sip.addr, pbx_addrs.clone(), relay_key(&cfg, path)?)
            .with_names(cfg.edge.names.clone())
            .with_retry_after(cfg.edge.retry_after.as_secs() as u32);
        drop_log().spawn_summaries();
        let router = router(&cfg)?;
        let (changes_tx, changes_rx) = mpsc::unbounded_channel::<table::Changes>();
        let phones_table = table::Table::new(changes_rx);

        let (health_tx, health_rx) = mpsc::channel(16);
        for (i, p) in cfg.pbxs.iter().enumerate() {
            tokio::spawn(probe::run(
                i,
                p.clone(),
                cfg.health.clone(),
                health_tx.clone(),
            ));
        }
        drop(health_tx);

        let view = Arc::new(Mutex::new(View::default()));
        // The probes' view of each PBX: the API shows it, the web proxy picks
        // its target from it.
        let pbx_up = Arc::new(Mutex::new(vec![false; cfg.pbxs.len()]));
        let api = ApiState {
            view: view.clone(),
            pbx_up: pbx_up.clone(),
            table: phones_table.clone(),
            token,
            conns: sip.conns.clone(),
            names: names.clone(),
            metrics,
            rows: Arc::new(rowrate::RowRate::new(cfg.edge.api_rows_per_second)),
        };
        let (api, api_addr) = start_api(&cfg, api, phones_table)?;
        // The web proxy (HTTP, HTTPS/WSS), on the same bounded listener.
        super::http::spawn(&cfg, pbx_up.clone()).await?;

        let flood = super::flood::Flood::new(&cfg.limits, pbx_addrs.clone(), Instant::now());
        let relay_task = RelayTask {
            sock: sip.sock,
            relay,
            router,
            flood,
            pbx_addrs,
            conns: sip.conns,
            view,
            changes: changes_tx,
            names,
            pbx_up,
            tcp_rx: sip.tcp_rx,
            tcp_drop_rx: sip.tcp_drop_rx,
            health_rx,
        };
        let (stop, stop_rx) = mpsc::unbounded_channel();
        let handle = EdgeHandle {
            stop,
            sip: sip.addr,
            api: api_addr,
        };
        log_started(&cfg, &handle);
        let driver = EdgeDriver {
            relay_task,
            stop_rx,
            api,
        };
        Ok((driver, handle))
    }

    /// Start the relay's thread (a current-thread runtime of its own) and
    /// wait for the handle (the process maps its signals to it) or the
    /// relay's end; then stop
    /// the relay's and the API's threads and join them.
    pub async fn run(self) -> anyhow::Result<()> {
        let EdgeDriver {
            relay_task,
            mut stop_rx,
            api,
        } = self;
        let (relay, ended_rx) = spawn_relay(relay_task)?;
        let outcome = tokio::select! {
            Some(()) = stop_rx.recv() => Ok(()),
            r = ended_rx => r.unwrap_or_else(|_| Err(anyhow::anyhow!("the relay's thread ended"))),
        };
        tracing::info!("edge stopping");
        relay.stop_and_join("relay").await;
        api.stop_and_join("API").await;
        outcome
    }
}

/// The relay on a thread of its own, a current-thread runtime that ends
/// with the relay or when told to stop; its result comes over the channel.
fn spawn_relay(
    relay_task: RelayTask,
) -> anyhow::Result<(Stoppable, oneshot::Receiver<anyhow::Result<()>>)> {
    let (ended_tx, ended_rx) = oneshot::channel::<anyhow::Result<()>>();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let join = std::thread::Builder::new()
        .name("edge-relay".into())
        .spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("the relay's runtime")
                .and_then(|rt| {
                    rt.block_on(async move {
                        tokio::select! {
                            r = relay_task.run() => r,
                            _ = stop_rx => Ok(()),
                        }
                    })
                });
            let _ = ended_tx.send(r);
        })
        .context("the relay's thread")?;
    Ok((Stoppable { stop, join }, ended_rx))
}

#[cfg(test)]
mod tests;
