//! The node's configuration file: one TOML file per node.
//!
//! Parsing is pure (a string in, a [`NodeConfig`] or a [`ConfigError`] out);
//! reading the file is the runtime's job. Every table denies unknown keys, so a
//! misspelt key is an error that names its line, never a silent default.
//! Errors carry the file name, the line, the dotted key and what was expected.
//!
//! - `node`: the node's file ([`NodeConfig`]), with its `[replication]`
//!   (`replication.rs`) and `[pbx_settings]` (`pbx_settings.rs`) tables.
//! - [`edge`]: the edge's file ([`edge::EdgeConfig`]).
//! - [`follow`]: a follower host's file ([`follow::FollowConfig`]).
//! - `located`: [`ConfigError`] and the parse shared by the three.

pub mod edge;
pub mod follow;
mod located;
mod node;
mod pbx_settings;
mod replication;

pub(crate) use located::parse_file;
pub use located::ConfigError;
pub use node::*;
pub use pbx_settings::*;
pub use replication::*;
