//! Any text into the config parser: an error or a config, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use resilience_core::config::NodeConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = NodeConfig::parse("fuzz.toml", text) {
            // The message is always printable.
            let _ = e.to_string();
        }
    }
});
