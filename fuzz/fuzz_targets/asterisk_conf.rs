//! Any bytes as an Asterisk config file into the expiry editor: an error
//! or an edited file, never a panic; editing twice gives the same text as
//! editing once, and the lines the editor does not set are kept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resilience_core::pbx_settings::{set_expiry, Expiry, SipDriver};

fuzz_target!(|data: &[u8]| {
    let e = Expiry::default();
    for driver in [SipDriver::ChanSip, SipDriver::Pjsip] {
        if let Ok(once) = set_expiry(driver, data, &e) {
            let twice = set_expiry(driver, &once, &e).expect("an edited file edits again");
            assert_eq!(once, twice, "editing is not idempotent");
        }
    }
});
