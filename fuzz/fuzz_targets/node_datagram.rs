//! Any bytes as heartbeats to a running node: counted and dropped, or
//! accepted, never a panic; the node keeps answering with a deadline.
#![no_main]
use libfuzzer_sys::fuzz_target;
use resilience_core::config::SplitBrainPolicy;
use resilience_core::node::{FailbackPolicy, NewCallsPolicy};
use resilience_core::{ClusterKey, Input, Mode, Node, NodeType, Output, Persisted, Settings};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let settings = Settings {
        name: "pbx-standby".into(),
        node_type: NodeType::Standby,
        mode: Mode::Automatic,
        peer_name: Some("pbx-main".into()),
        peer_addrs: vec!["127.0.0.1:7400".parse().expect("addr")],
        interval: Duration::from_millis(200),
        failover_after: Duration::from_secs(3),
        startup_wait: Duration::from_secs(3),
        failback: FailbackPolicy::Immediate,
        split_brain: SplitBrainPolicy::Main,
        drain: None,
        arbiters: false,
        start_attempts: 3,
        retry_delay: Duration::from_secs(1),
        fault_hold: Duration::from_secs(60),
        key: ClusterKey::new(b"fuzzing cluster key 0123456789ab").expect("key"),
        failback_data: None,
        stop_timeout: Duration::from_secs(60),
        new_calls: NewCallsPolicy::Standby,
    };
    let mut node = Node::new(settings, Persisted::default(), 1, now);
    let from = "127.0.0.1:9".parse().expect("addr");
    for (i, chunk) in data.split(|&b| b == 0xff).enumerate() {
        let t = now + Duration::from_millis(50 * i as u64);
        let _ = node.handle_input(Input::Datagram(t, from, chunk));
        while !matches!(node.poll_output(), Output::Timeout(_)) {}
    }
});
