//! resilience-sip: SIP message parsing and printing, and the edge's proxy
//! decisions (Via, Record-Route, Path, Max-Forwards, dialog tracking), sans-IO
//! like the core. Empty until the edge is built (issue 5).
