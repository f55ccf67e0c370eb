//! resilience-core: the sans-IO heart of Resilience.
//!
//! Everything here is a plain value or a state machine that takes inputs and
//! time as arguments and hands back outputs. No sockets, no clocks, no threads:
//! the runtime (`crates/resilience`) does the I/O, so every decision can be
//! replayed exactly in the simulator (`tests/sim`).
//!
//! - [`config`]: the node's, the edge's and the follower's TOML files,
//!   parsed and validated with line numbers.
//! - [`edge`]: the edge's rules (per-phone routing, web upstreams).
//! - [`follower`]: what a follower host does with its node's answers.
//! - [`heartbeat`]: the authenticated heartbeat frame and its replay guard.
//! - [`node`]: the node state machine (failover, failback, drain, manual mode).
//! - [`pbx_probe`]: the PBX probe's debounce (two misses in a row for Down).
//! - [`pbx_settings`]: the SIP expiry and provisioning edits for fast failover.
//! - [`types`]: node type, mode, status, PBX health.

pub mod config;
pub mod edge;
pub mod follower;
pub mod heartbeat;
pub mod node;
pub mod pbx_probe;
pub mod pbx_settings;
pub mod types;

pub use heartbeat::{ClusterKey, Frame, Reject};
pub use node::{
    Action, ActionError, ActionId, ActionKind, ActionOutcome, Command, Event, EventKind, Input,
    InputError, Node, Output, Persisted, ServicesAtBoot, Settings, Transmit, Wake,
};
pub use pbx_probe::PbxProbe;
pub use types::{Mode, NodeType, PbxHealth, Status};
