//! Small value types shared by the configuration, the wire codec and the node.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// What a node is configured to be (XiVO's "node type").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    /// No high availability: a standalone PBX that always serves.
    Disabled,
    /// The home of the service: Active whenever it can be.
    Main,
    /// Takes over when the Main is gone, hands back when it returns.
    Standby,
}

/// Who decides when a node becomes Active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The heartbeat decides (XiVO's "Administration in Automatic Failover Mode").
    Automatic,
    /// An admin starts and stops services (XiVO's "Administration in Manual Failover Mode"); heartbeats still flow so
    /// the page can show the peer and warn.
    Manual,
}

/// Where a node stands with its services. Sent in every heartbeat; in the
/// status documents by its [`fmt::Display`] word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Services stopped.
    Inactive,
    /// Services being started; not serving yet, but the peer must not start.
    Starting,
    /// Services up and serving.
    Active,
    /// Serving, but handing over: waiting for active calls to end.
    Draining,
    /// Services being stopped; they may still be running.
    Stopping,
}

impl Status {
    /// The XiVO "active" flag: serving calls.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Active | Status::Draining)
    }

    /// Services may be running (or about to): the peer must not start its own.
    pub fn occupies(self) -> bool {
        !matches!(self, Status::Inactive)
    }

    /// Claims the service for itself (a split brain when both do).
    pub fn claims(self) -> bool {
        matches!(self, Status::Starting | Status::Active | Status::Draining)
    }
}

/// Health of the local PBX as the runtime's probe last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PbxHealth {
    /// Not probed yet, or not running (an Inactive node's PBX is stopped).
    Unknown,
    /// Answers its probe.
    Up,
    /// Does not answer its probe.
    Down,
}

macro_rules! wire_enum {
    ($t:ty { $($v:path = $n:expr),* $(,)? }) => {
        impl $t {
            /// The byte that stands for this value on the wire.
            pub fn to_wire(self) -> u8 {
                match self { $($v => $n),* }
            }
            /// The value of a wire byte, if it names one.
            pub fn from_wire(b: u8) -> Option<Self> {
                match b { $($n => Some($v),)* _ => None }
            }
        }
    };
}

wire_enum!(NodeType { NodeType::Disabled = 0, NodeType::Main = 1, NodeType::Standby = 2 });
wire_enum!(Mode { Mode::Automatic = 0, Mode::Manual = 1 });
wire_enum!(Status {
    Status::Inactive = 0,
    Status::Starting = 1,
    Status::Active = 2,
    Status::Draining = 3,
    Status::Stopping = 4,
});
wire_enum!(PbxHealth { PbxHealth::Unknown = 0, PbxHealth::Up = 1, PbxHealth::Down = 2 });

impl fmt::Display for NodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeType::Disabled => "disabled",
            NodeType::Main => "main",
            NodeType::Standby => "standby",
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Automatic => "automatic",
            Mode::Manual => "manual",
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Inactive => "inactive",
            Status::Starting => "starting",
            Status::Active => "active",
            Status::Draining => "draining",
            Status::Stopping => "stopping",
        })
    }
}

impl fmt::Display for PbxHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PbxHealth::Unknown => "unknown",
            PbxHealth::Up => "up",
            PbxHealth::Down => "down",
        })
    }
}

/// A duration as an admin writes it in the config: `200ms`, `3.0s`, `10m`,
/// `1h5m`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        let s = d.as_secs();
        let (h, m, s) = (s / 3600, s % 3600 / 60, s % 60);
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if m > 0 {
            out.push_str(&format!("{m}m"));
        }
        if s > 0 {
            out.push_str(&format!("{s}s"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(200)), "200ms");
        assert_eq!(human(Duration::from_millis(3004)), "3.0s");
        assert_eq!(human(Duration::from_secs(600)), "10m");
        assert_eq!(human(Duration::from_secs(3900)), "1h5m");
        assert_eq!(human(Duration::from_secs(61)), "1m1s");
    }
}
