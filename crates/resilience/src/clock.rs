//! Wall-clock conversions for what is stored and shown (history rows,
//! status documents).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
