//! resilience-sip: SIP message parsing and printing, and the edge's relay
//! decisions (Via, Record-Route, Path, Max-Forwards), sans-IO like the
//! core: bytes in, bytes and their destination out, no sockets, no clock.

pub mod admission;
pub mod edit;
pub mod flood;
pub mod header;
pub mod message;
pub mod proxy;

pub use message::{Message, Name, ParseError};
pub use proxy::{Dropped, Flow, NewRequest, Note, Outgoing, OwnAnswer, Relay, Transport};
