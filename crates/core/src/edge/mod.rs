//! The edge's rules, sans-IO: the edge is the SIP relay (and web proxy) in
//! front of the two PBXs. Its configuration file is [`crate::config::edge`].
//!
//! - [`phones`]: which PBX serves each phone (failover delay, stable
//!   failback of idle phones, homeless prevention), in a bounded table.
//! - [`web_upstreams`]: which PBX's web server the web proxy uses.

pub mod phones;
pub mod web_upstreams;
