//! The lab's config files: two nodes with short timers, an edge in front of
//! the stand-in PBXs, and a follower linked to each node. The nodes hear
//! each other through the lab's wire (see `control.rs`), so the link can be
//! cut without root or network namespaces.

use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

pub const NODES: [&str; 2] = ["main", "standby"];

/// Every port of the lab: those of [`Sockets`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ports {
    pub heartbeat: [u16; 2],
    /// Where each node's heartbeats to its peer go: the wire's end.
    pub wire: [u16; 2],
    pub api: [u16; 2],
    pub pbx: [u16; 2],
    pub edge_sip: u16,
    pub edge_api: u16,
    pub follower_api: [u16; 2],
    pub control: u16,
}

/// Every socket of the lab, bound by the lab itself on port 0 (it is the
/// parent of every process it starts): each process is handed its own
/// (`crate::listen_fds`), so no port is picked by binding and releasing
/// it, and a process the lab boots again gets the same sockets.
pub struct Sockets {
    heartbeat: [UdpSocket; 2],
    pub wire: [UdpSocket; 2],
    api: [TcpListener; 2],
    pbx: [UdpSocket; 2],
    /// The edge's SIP: UDP and TCP on one port.
    edge_sip: (UdpSocket, TcpListener),
    edge_api: TcpListener,
    follower_api: [TcpListener; 2],
    pub control: TcpListener,
}

fn udp() -> std::io::Result<UdpSocket> {
    UdpSocket::bind("127.0.0.1:0")
}

fn tcp() -> std::io::Result<TcpListener> {
    listener(0)
}

/// A listening socket on 127.0.0.1 with the queue a role gives its own
/// (tokio's 1,024; std's bind would give 128).
fn listener(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// UDP and TCP on one port: the UDP port from the kernel, TCP bound on the
/// same number (another number drawn when that one is busy for TCP).
fn udp_tcp() -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..100 {
        let u = udp()?;
        match listener(u.local_addr()?.port()) {
            Ok(t) => return Ok((u, t)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port for UDP and TCP")))
}

fn port_udp(s: &UdpSocket) -> u16 {
    s.local_addr().map_or(0, |a| a.port())
}

fn port_tcp(s: &TcpListener) -> u16 {
    s.local_addr().map_or(0, |a| a.port())
}

impl Sockets {
    pub fn bind() -> std::io::Result<Sockets> {
        Ok(Sockets {
            heartbeat: [udp()?, udp()?],
            wire: [udp()?, udp()?],
            api: [tcp()?, tcp()?],
            pbx: [udp()?, udp()?],
            edge_sip: udp_tcp()?,
            edge_api: tcp()?,
            follower_api: [tcp()?, tcp()?],
            control: tcp()?,
        })
    }

    pub fn ports(&self) -> Ports {
        Ports {
            heartbeat: self.heartbeat.each_ref().map(port_udp),
            wire: self.wire.each_ref().map(port_udp),
            api: self.api.each_ref().map(port_tcp),
            pbx: self.pbx.each_ref().map(port_udp),
            edge_sip: port_udp(&self.edge_sip.0),
            edge_api: port_tcp(&self.edge_api),
            follower_api: self.follower_api.each_ref().map(port_tcp),
            control: port_tcp(&self.control),
        }
    }

    /// The sockets handed to the process of `role` (see `control::ROLES`).
    pub fn of_role(&self, role: &str) -> Vec<RawFd> {
        match role {
            "main" | "standby" => {
                let i = usize::from(role == "standby");
                vec![self.heartbeat[i].as_raw_fd(), self.api[i].as_raw_fd()]
            }
            "main-pbx" | "standby-pbx" => {
                vec![self.pbx[usize::from(role == "standby-pbx")].as_raw_fd()]
            }
            "edge" => vec![
                self.edge_sip.0.as_raw_fd(),
                self.edge_sip.1.as_raw_fd(),
                self.edge_api.as_raw_fd(),
            ],
            "cc-main" | "cc-standby" => {
                vec![self.follower_api[usize::from(role == "cc-standby")].as_raw_fd()]
            }
            _ => Vec::new(),
        }
    }
}

/// `control`: the lab's control URL (with its secret), for the dashboard.
pub fn node(me: usize, p: &Ports, control: &str) -> String {
    let (name, peer) = (NODES[me], NODES[1 - me]);
    format!(
        r#"# Lab node {name}: short timers so failover and failback show in seconds.
[node]
name = "pbx-{name}"
type = "{name}"
mode = "automatic"
state_dir = "state-{name}"

[peer]
name = "pbx-{peer}"
# The lab's wire to the peer (cut and healed from the dashboard).
address = "127.0.0.1:{wire}"
api = "http://127.0.0.1:{peer_api}"

[heartbeat]
listen = "127.0.0.1:{hb}"
interval = "200ms"
failover_after = "3s"
key_file = "cluster.key"

[failback]
policy = "stable"
stable_for = "30s"

[drain]
timeout = "20s"
poll = "1s"
# Write a number into calls-{name} to pretend calls are up during a handover.
active_calls_command = "cat calls-{name} 2>/dev/null || echo 0"

[pbx]
sip_options = "127.0.0.1:{pbx}"
interval = "500ms"

[[service]]
name = "pbx"
start = "touch {name}.pbx-running"
stop = "rm -f {name}.pbx-running"
status = "test -f {name}.pbx-running"
timeout = "10s"

[service_policy]
retry_delay = "2s"
fault_hold = "60s"

[api]
listen = "127.0.0.1:{api}"
token_file = "api.token"
lab_url = "{control}"
"#,
        wire = p.wire[me],
        peer_api = p.api[1 - me],
        hb = p.heartbeat[me],
        pbx = p.pbx[me],
        api = p.api[me],
    )
}

pub fn edge(p: &Ports) -> String {
    format!(
        r#"# Lab edge: phones register here and follow the Active node.
[edge]
name = "lab-edge"
sip_listen = "127.0.0.1:{sip}"
api_listen = "127.0.0.1:{api}"
# The relay key is derived from the lab's cluster key: a restarted edge
# keeps the calls in progress.
key_file = "cluster.key"

[[pbx]]
name = "main"
sip = "127.0.0.1:{pbx0}"
ha_url = "http://127.0.0.1:{api0}/api/v1/ha"

[[pbx]]
name = "standby"
sip = "127.0.0.1:{pbx1}"
ha_url = "http://127.0.0.1:{api1}/api/v1/ha"

[health]
interval = "1s"
timeout = "500ms"

[phones]
failover_after = "5s"
failback_stable = "30s"
homeless_window = "30s"
"#,
        sip = p.edge_sip,
        api = p.edge_api,
        pbx0 = p.pbx[0],
        pbx1 = p.pbx[1],
        api0 = p.api[0],
        api1 = p.api[1],
    )
}

/// The contact-center host linked to node `me`: its "nginx" is a marker file.
pub fn follower(me: usize, p: &Ports) -> String {
    let name = NODES[me];
    format!(
        r#"# Lab follower: the contact center linked to the {name} node.
[follow]
name = "cc-{name}"
node = "http://127.0.0.1:{api}/api/v1/ha"
poll = "1s"
confirm_polls = 2
unreachable_after = "10s"
api_listen = "127.0.0.1:{fapi}"

[[service]]
name = "nginx"
start = "touch cc-{name}.nginx-running"
stop = "rm -f cc-{name}.nginx-running"
status = "test -f cc-{name}.nginx-running"
"#,
        api = p.api[me],
        fapi = p.follower_api[me],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lab_config_is_valid() {
        let s = Sockets::bind().unwrap();
        let p = s.ports();
        assert!(s.of_role("edge").len() == 3 && p.edge_sip != 0);
        for i in 0..2 {
            resilience_core::config::NodeConfig::parse("node.toml", &node(i, &p, "http://x/y"))
                .unwrap();
            resilience_core::config::follow::FollowConfig::parse("f.toml", &follower(i, &p))
                .unwrap();
        }
        resilience_core::config::edge::EdgeConfig::parse("edge.toml", &edge(&p)).unwrap();
    }
}
