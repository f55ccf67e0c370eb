//! Any bytes from the network into the SIP parser and the edge's relay:
//! an error or a message to send, never a panic; what is sent parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resilience_sip::{Flow, Message, Relay};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let _ = m.body();
        let _ = m.cseq_method();
    }
    let _ = resilience_sip::message::frame_len(data);
    let relay = Relay::new(
        "127.0.0.1:5060".parse().unwrap(),
        vec!["127.0.0.2:5060".parse().unwrap()],
        [1; 32],
    );
    for from in ["127.0.0.9:5070", "127.0.0.2:5060"] {
        let from = Flow::udp(from.parse().unwrap());
        if let Ok(out) = relay.handle(from, data, |_| "127.0.0.2:5060".parse().ok()) {
            assert!(
                Message::parse(&out.bytes).is_ok(),
                "the relay sent what it cannot parse"
            );
        }
    }
});
