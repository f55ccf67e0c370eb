//! Any bytes into the heartbeat decoder: never a panic; what decodes
//! re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use resilience_core::heartbeat::{decode, encode, ClusterKey};

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::new(b"fuzzing cluster key 0123456789ab").expect("key");
    if let Ok(frame) = decode(data, &key) {
        let again = encode(&frame, &key);
        assert_eq!(again.as_slice(), data);
        assert_eq!(decode(&again, &key).as_ref(), Ok(&frame));
    }
});
