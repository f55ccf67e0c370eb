//! The lab's config files: two nodes with short timers, an edge in front of
//! the stand-in PBXs, and a follower linked to each node. The nodes hear
//! each other through the lab's wire (see `control.rs`), so the link can be
//! cut without root or network namespaces.

use std::net::{TcpListener, UdpSocket};

pub const NODES: [&str; 2] = ["main", "standby"];

/// Every port of the lab, picked free on loopback.
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

fn free_udp() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_tcp() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Ports {
    pub fn pick() -> anyhow::Result<Ports> {
        Ok(Ports {
            heartbeat: [free_udp()?, free_udp()?],
            wire: [free_udp()?, free_udp()?],
            api: [free_tcp()?, free_tcp()?],
            pbx: [free_udp()?, free_udp()?],
            edge_sip: free_udp()?,
            edge_api: free_tcp()?,
            follower_api: [free_tcp()?, free_tcp()?],
            control: free_tcp()?,
        })
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
        let p = Ports::pick().unwrap();
        for i in 0..2 {
            resilience_core::config::NodeConfig::parse("node.toml", &node(i, &p, "http://x/y"))
                .unwrap();
            resilience_core::config::follow::FollowConfig::parse("f.toml", &follower(i, &p))
                .unwrap();
        }
        resilience_core::config::edge::EdgeConfig::parse("edge.toml", &edge(&p)).unwrap();
    }
}
