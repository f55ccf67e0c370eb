//! The PBX probe's debounce: raw probe results in, a health change out.
//!
//! One lost UDP OPTIONS (or one slow health command) is noise, not a dead
//! PBX: the PBX is Down only after [`MISSES_BEFORE_DOWN`] misses in a row,
//! and Up again at the first answer. Only changes come out, so the node
//! hears each once. Counted in probes, not time: the runtime probes at
//! `pbx.interval`, and the node's `failover_after` does the waiting.

use crate::types::PbxHealth;

/// Misses in a row before the PBX is reported Down.
pub const MISSES_BEFORE_DOWN: u32 = 2;

/// One PBX's probe results, debounced.
#[derive(Debug, Clone, Default)]
pub struct PbxProbe {
    misses: u32,
    reported: Option<PbxHealth>,
}

impl PbxProbe {
    /// No result yet: the health is Unknown until the first answer or the
    /// second miss.
    pub fn new() -> PbxProbe {
        PbxProbe::default()
    }

    /// One probe's result (`ok`: the PBX answered well); the new health
    /// when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<PbxHealth> {
        self.misses = if ok { 0 } else { self.misses.saturating_add(1) };
        let health = if ok {
            PbxHealth::Up
        } else if self.misses >= MISSES_BEFORE_DOWN {
            PbxHealth::Down
        } else {
            return None;
        };
        if self.reported == Some(health) {
            return None;
        }
        self.reported = Some(health);
        Some(health)
    }

    /// The health last reported (Unknown before any).
    pub fn health(&self) -> PbxHealth {
        self.reported.unwrap_or(PbxHealth::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(p: &mut PbxProbe, results: &[bool]) -> Vec<PbxHealth> {
        results.iter().filter_map(|&ok| p.observe(ok)).collect()
    }

    #[test]
    fn a_single_miss_is_noise() {
        let mut p = PbxProbe::new();
        assert_eq!(
            feed(&mut p, &[true, false, true, false, true]),
            [PbxHealth::Up]
        );
        assert_eq!(p.health(), PbxHealth::Up);
    }

    #[test]
    fn two_misses_in_a_row_are_down_and_one_answer_is_up() {
        let mut p = PbxProbe::new();
        assert_eq!(
            feed(&mut p, &[true, false, false, false, true, true]),
            [PbxHealth::Up, PbxHealth::Down, PbxHealth::Up]
        );
    }

    #[test]
    fn unknown_until_an_answer_or_two_misses() {
        let mut p = PbxProbe::new();
        assert_eq!(p.observe(false), None);
        assert_eq!(p.health(), PbxHealth::Unknown);
        assert_eq!(p.observe(false), Some(PbxHealth::Down));
        assert_eq!(p.observe(false), None);
    }
}
