//! The dashboard's timeline: who was Active when, over the last hours,
//! rebuilt from the node's event history (its own `active` changes and
//! boots, and the `peer_state` notes the runtime records when the peer's
//! status as heard changes), by the state each event stored beside its
//! text, never by parsing the text. Computed here rather than in the page
//! so it can be tested.

use crate::node_handle::StoredEvent;
use crate::status::StateWord;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Segment {
    pub from_ms: i64,
    pub to_ms: i64,
    /// `active`, `inactive`, `silent` (peer not heard) or `unknown`.
    pub state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mark {
    pub at_ms: i64,
    /// `failover` (this node took the service), `handover` (it gave it up),
    /// `boot`.
    pub kind: &'static str,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeline {
    pub from_ms: i64,
    pub to_ms: i64,
    pub this: Vec<Segment>,
    pub peer: Vec<Segment>,
    pub marks: Vec<Mark>,
}

/// What an event says about this node's state (`None`: nothing): its
/// typed state, recorded beside the text (the text ends with a reason).
fn own_state(e: &StoredEvent) -> Option<&'static str> {
    match e.kind.as_str() {
        "active" | "booted" => e.state.map(StateWord::as_str),
        _ => None,
    }
}

fn peer_state(e: &StoredEvent) -> Option<&'static str> {
    match e.kind.as_str() {
        "peer_state" => e.state.map(StateWord::as_str),
        _ => None,
    }
}

/// Segments of one row: the state at `from` is the last one said before it.
fn row(
    events: &[&StoredEvent],
    from: i64,
    to: i64,
    state_of: impl Fn(&StoredEvent) -> Option<&'static str>,
) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    let mut cur = "unknown";
    let mut since = from;
    for e in events {
        let Some(s) = state_of(e) else { continue };
        if e.at_ms <= from {
            cur = s;
            continue;
        }
        if e.at_ms > to {
            break;
        }
        if s != cur {
            out.push(Segment {
                from_ms: since,
                to_ms: e.at_ms,
                state: cur,
            });
            cur = s;
            since = e.at_ms;
        }
    }
    out.push(Segment {
        from_ms: since,
        to_ms: to,
        state: cur,
    });
    out.retain(|s| s.to_ms > s.from_ms);
    out
}

/// The timeline of `[now - window, now]` from `events` (any order).
pub fn build(events: &[StoredEvent], now_ms: i64, window_ms: i64) -> Timeline {
    let from = now_ms - window_ms;
    let mut sorted: Vec<&StoredEvent> = events.iter().collect();
    sorted.sort_by_key(|e| (e.at_ms, e.id));
    let marks = sorted
        .iter()
        .filter(|e| e.at_ms > from && e.at_ms <= now_ms)
        .filter_map(|e| {
            let kind = match (e.kind.as_str(), own_state(e)) {
                ("active", Some("active")) => "failover",
                ("active", _) => "handover",
                ("booted", _) => "boot",
                _ => return None,
            };
            Some(Mark {
                at_ms: e.at_ms,
                kind,
                text: e.text.clone(),
            })
        })
        .collect();
    Timeline {
        from_ms: from,
        to_ms: now_ms,
        this: row(&sorted, from, now_ms, own_state),
        peer: row(&sorted, from, now_ms, peer_state),
        marks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: i64, at_ms: i64, kind: &str, text: &str, state: Option<StateWord>) -> StoredEvent {
        StoredEvent {
            id,
            at_ms,
            kind: kind.into(),
            text: text.into(),
            state,
        }
    }

    #[test]
    fn rows_follow_the_history() {
        use StateWord::*;
        // Texts as the node writes them: an `active` event's ends with its reason.
        let events =
            vec![
            ev(1, 100, "booted", "node started as standby", Some(Inactive)),
            ev(2, 150, "peer_state", "peer pbx-main is active", Some(Active)),
            ev(3, 1000, "peer_state", "peer pbx-main is silent", Some(Silent)),
            ev(
                4,
                1300,
                "active",
                "Updating resilience state, from: False to: True — peer pbx-main silent for 3.0s",
                Some(Active),
            ),
            ev(5, 2000, "peer_state", "peer pbx-main is inactive", Some(Inactive)),
            ev(6, 2500, "peer_heard", "peer heard (status inactive)", None),
        ];
        let t = build(&events, 3000, 2500);
        assert_eq!(
            t.this,
            [
                Segment {
                    from_ms: 500,
                    to_ms: 1300,
                    state: "inactive"
                },
                Segment {
                    from_ms: 1300,
                    to_ms: 3000,
                    state: "active"
                },
            ]
        );
        let peer: Vec<_> = t.peer.iter().map(|s| (s.from_ms, s.state)).collect();
        assert_eq!(
            peer,
            [(500, "active"), (1000, "silent"), (2000, "inactive")]
        );
        assert_eq!(t.marks.len(), 1, "the boot is before the window");
        assert_eq!(t.marks[0].kind, "failover");
    }

    #[test]
    fn no_history_is_unknown() {
        let t = build(&[], 10_000, 1000);
        assert_eq!(t.this[0].state, "unknown");
        assert_eq!(t.peer.len(), 1);
    }

    /// The core's own events, recorded as the node records them: the
    /// texts end with a reason, and the row follows the typed flag.
    #[test]
    fn own_row_follows_the_core_events_not_their_text() {
        use resilience_core::node::{Event, EventKind};
        let at = std::time::Instant::now();
        let rec = |id: i64, at_ms: i64, kind: EventKind, reason: &str| {
            let e = Event {
                at,
                kind,
                reason: reason.into(),
            };
            let state = e.kind.sets_active().map(StateWord::active);
            ev(id, at_ms, e.kind.label(), &e.to_string(), state)
        };
        let up = rec(
            1,
            1000,
            EventKind::ActiveChanged {
                from: false,
                to: true,
            },
            "peer pbx-main silent for 3.0s",
        );
        assert!(up.text.contains("to: True") && !up.text.ends_with("to: True"));
        let down = rec(
            2,
            2000,
            EventKind::ActiveChanged {
                from: true,
                to: false,
            },
            "failback to pbx-main",
        );
        let t = build(&[up, down], 3000, 2500);
        let this: Vec<_> = t.this.iter().map(|s| (s.from_ms, s.state)).collect();
        assert_eq!(
            this,
            [(500, "unknown"), (1000, "active"), (2000, "inactive")]
        );
        let kinds: Vec<_> = t.marks.iter().map(|m| m.kind).collect();
        assert_eq!(kinds, ["failover", "handover"]);
    }
}
