//! The typed documents against the hand-built JSON they replace: same
//! field names, same value shapes (a dashboard, an edge or a follower of
//! another version reads them).

use super::*;
use resilience_core::config::NodeConfig;
use resilience_core::node::{AdminChoice, PeerSnapshot, Snapshot};
use serde_json::{json, Value};
use std::time::Duration;

const CONFIG: &str = r#"
[node]
name = "pbx-main"
type = "main"

[peer]
name = "pbx-standby"
address = "127.0.0.1:7401"

[heartbeat]
interval = "200ms"
failover_after = "3s"

[pbx]
sip_options = "127.0.0.1:5060"

[arbiters]
addresses = ["127.0.0.1:9"]

[[service]]
name = "asterisk"
unit = "asterisk.service"
"#;

fn snapshot() -> Snapshot {
    Snapshot {
        name: "pbx-main".into(),
        node_type: NodeType::Main,
        mode: Mode::Automatic,
        status: Status::Active,
        active: true,
        takes_new_calls: true,
        epoch: 7,
        pbx: PbxHealth::Up,
        admin: Some(AdminChoice::SwitchedAway),
        faulted: false,
        arbiter_ok: true,
        reason: "peer silent".into(),
        failback_wait: Some("stable timer".into()),
        failback_due_in: Some(Duration::from_millis(1500)),
        want_active: false,
        calls: Some(3),
        peer: Some(PeerSnapshot {
            name: "pbx-standby".into(),
            heard: true,
            last_heard_ago: Some(Duration::from_millis(250)),
            status: Some(Status::Inactive),
            pbx: Some(PbxHealth::Unknown),
            epoch: Some(6),
            yielding: true,
            replication: Some(42),
        }),
        switchover: Some("handing over".into()),
        guard: None,
        rejected: vec![("bad_mac", 2), ("replay", 0)],
    }
}

/// What `publish` built with `json!` before the types (a copy of its code).
fn hand_built(s: &Snapshot, cfg: &NodeConfig, services: &[ServiceState], c: Counts) -> Value {
    let peer = s.peer.as_ref().map(|p| {
        json!({
            "name": p.name,
            "address": cfg.peer.as_ref().map(|x| x.address.to_string()),
            "heard": p.heard,
            "last_heard_ago_s": p.last_heard_ago.map(|d| d.as_secs_f64()),
            "status": p.status.map(|s| s.to_string()),
            "active": p.status.map(|s| s.is_active()),
            "pbx": p.pbx.map(|h| h.to_string()),
            "epoch": p.epoch,
            "yielding": p.yielding,
            "replication": p.replication,
        })
    });
    let rejected: serde_json::Map<String, Value> = s
        .rejected
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "node": {
            "name": s.name,
            "node_type": s.node_type.to_string(),
            "mode": s.mode.to_string(),
            "status": s.status.to_string(),
            "state": if s.status.is_active() { "active" } else { "inactive" },
            "active": s.active,
            "takes_new_calls": s.takes_new_calls,
            "epoch": s.epoch,
            "reason": s.reason,
            "held": s.admin == Some(AdminChoice::Stop),
            "switched_away": s.admin == Some(AdminChoice::SwitchedAway),
            "switchover": s.switchover,
            "guard": s.guard,
            "admin": s.admin.map(|a| format!("{a:?}").to_lowercase()),
            "faulted": s.faulted,
            "arbiter_ok": s.arbiter_ok,
            "arbiters": cfg.arbiters.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        },
        "pbx": { "health": s.pbx.to_string(), "probe": cfg.pbx.sip_options.map(|a| a.to_string()) },
        "peer": peer,
        "services": services,
        "failback": {
            "policy": format!("{:?}", cfg.failback.policy).to_lowercase(),
            "new_calls": format!("{:?}", cfg.failback.new_calls).to_lowercase(),
            "pending": s.failback_wait.is_some() || s.want_active,
            "requested": s.want_active,
            "waiting_because": s.failback_wait,
            "due_in_s": s.failback_due_in.map(|d| d.as_secs_f64()),
        },
        "drain": { "active_calls": s.calls },
        "lab": cfg.api.lab_url,
        "heartbeat": {
            "interval_ms": cfg.heartbeat.interval.as_millis() as u64,
            "failover_after_ms": cfg.heartbeat.failover_after.as_millis() as u64,
            "sent": c.sent,
            "received": c.received,
            "send_errors": c.send_errors,
            "rejected": rejected,
        },
        "history": { "dropped": c.history_dropped },
    })
}

/// Every key path of a document, with the JSON type of its value.
fn shape(v: &Value, path: &str, out: &mut Vec<String>) {
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    out.push(format!("{path}: {kind}"));
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| shape(v, &format!("{path}.{k}"), out)),
        Value::Array(a) => a.iter().for_each(|v| shape(v, &format!("{path}[]"), out)),
        _ => {}
    }
}

fn shapes(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    shape(v, "", &mut out);
    out.sort();
    out
}

fn config() -> NodeConfig {
    NodeConfig::parse("main.toml", CONFIG).unwrap()
}

#[test]
fn the_status_document_keeps_its_keys_and_shapes() {
    let cfg = config();
    let services = [
        ServiceState {
            name: "asterisk".into(),
            running: Some(true),
        },
        ServiceState {
            name: "cti".into(),
            running: None,
        },
    ];
    let c = Counts {
        sent: 10,
        received: 9,
        send_errors: 1,
        history_dropped: 2,
    };
    let mut s = snapshot();
    let old = hand_built(&s, &cfg, &services, c);
    let new = serde_json::to_value(NodeStatus::of(&s, &cfg, &services, c)).unwrap();
    assert_eq!(shapes(&new), shapes(&old));
    assert_eq!(new, old, "the same values too");
    // Without a peer, and with the other optional values unset.
    s.peer = None;
    s.admin = None;
    s.failback_wait = None;
    s.failback_due_in = None;
    s.calls = None;
    s.switchover = None;
    let old = hand_built(&s, &cfg, &[], c);
    let new = serde_json::to_value(NodeStatus::of(&s, &cfg, &[], c)).unwrap();
    assert_eq!(shapes(&new), shapes(&old));
    assert_eq!(new, old);
}

#[test]
fn the_ha_document_keeps_its_keys() {
    let cfg = config();
    let s = snapshot();
    let ha = serde_json::to_value(HaStatus::of(&s, &cfg)).unwrap();
    assert_eq!(
        ha,
        json!({
            "node_type": "main",
            "mode": "automatic",
            "active": true,
            "services": true,
            "draining": false,
            "remote_address": "127.0.0.1",
        })
    );
}

#[test]
fn reading_ignores_unknown_fields_and_defaults_missing_ones() {
    // An older node's /api/v1/ha (no `services`, `draining`), with a field
    // a newer one might add.
    let ha: HaStatus = serde_json::from_value(json!({
        "node_type": "standby", "mode": "manual", "active": true,
        "remote_address": "10.0.0.1", "from_the_future": 1,
    }))
    .unwrap();
    assert!(ha.active && !ha.services && !ha.draining);
    assert_eq!((ha.node_type, ha.mode), (NodeType::Standby, Mode::Manual));
    // A status document round-trips, and one missing what older versions
    // lacked still reads.
    let cfg = config();
    let doc = NodeStatus::of(&snapshot(), &cfg, &[], Counts::default());
    let mut v = serde_json::to_value(&doc).unwrap();
    assert_eq!(
        serde_json::from_value::<NodeStatus>(v.clone()).unwrap(),
        doc
    );
    let node = v["node"].as_object_mut().unwrap();
    for k in ["takes_new_calls", "switched_away", "guard", "arbiters"] {
        node.remove(k);
    }
    v["future"] = json!({"x": 1});
    v.as_object_mut().unwrap().remove("history");
    let read: NodeStatus = serde_json::from_value(v).unwrap();
    assert!(!read.node.takes_new_calls && read.node.arbiters.is_empty());
    assert_eq!(read.history.dropped, 0);
}

#[test]
fn served_additions_appear_only_when_set() {
    let cfg = config();
    let mut doc = NodeStatus::of(&snapshot(), &cfg, &[], Counts::default());
    let v = serde_json::to_value(&doc).unwrap();
    assert!(v.get("replication").is_none() && v.get("pbx_settings").is_none());
    doc.replication = Some(ReplicationStatus::default());
    doc.pbx_settings = Some(json!({"files": []}));
    let v = serde_json::to_value(&doc).unwrap();
    assert_eq!(
        v["replication"],
        json!({"peer": "", "jobs": {}, "local_changes_at_failback": null,
               "refused": {"total": 0, "by_reason": {}}})
    );
    assert_eq!(v["pbx_settings"], json!({"files": []}));
}

#[test]
fn peer_word_is_its_heard_state_or_silent() {
    let cfg = config();
    let mut s = snapshot();
    let word = |s: &Snapshot| {
        NodeStatus::of(s, &cfg, &[], Counts::default())
            .peer
            .unwrap()
            .word()
    };
    assert_eq!(word(&s), StateWord::Inactive);
    s.peer.as_mut().unwrap().status = Some(Status::Draining);
    assert_eq!(word(&s), StateWord::Active);
    s.peer.as_mut().unwrap().heard = false;
    assert_eq!(word(&s), StateWord::Silent);
    assert_eq!(StateWord::parse("silent"), Some(StateWord::Silent));
    assert_eq!(serde_json::to_value(StateWord::Active).unwrap(), "active");
}
