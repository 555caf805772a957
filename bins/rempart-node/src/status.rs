//! `rempart-node status` for people: the JSON document laid out as `drbdadm status` and
//! keepalived's data dump are (one line per object, `key:value` pairs).

use std::fmt::Write as _;

use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn secs(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |x| format!("{x:.3}s"))
}

/// The status document as text.
pub(crate) fn text(v: &Value) -> String {
    let mut o = String::new();
    let maint = if v["maintenance"].as_bool() == Some(true) { " MAINTENANCE (no automatic failover)" } else { "" };
    let _ = writeln!(o, "{} phase:{}{maint}", s(&v["node"]), s(&v["phase"]));
    if let Some(r) = v["gave_up"].as_str() {
        let _ = writeln!(o, "  gave up: {r} (FAULT held {} more)", secs(&v["fault_hold_remaining_s"]));
    }
    if v["priority_lowered"].as_bool() == Some(true) {
        let _ = writeln!(o, "  priority lowered until this node serves again");
    }
    for i in v["vrrp"].as_array().into_iter().flatten() {
        let held = if i["vips_held"].as_bool() == Some(true) { "held" } else { "not held" };
        let _ = writeln!(
            o,
            "  vrrp {} state:{} priority:{} effective:{} vips:{} ({held})",
            s(&i["name"]),
            s(&i["state"]),
            s(&i["priority"]),
            s(&i["effective_priority"]),
            i["vips"].as_array().map(|a| a.iter().map(s).collect::<Vec<_>>().join(",")).unwrap_or_default(),
        );
    }
    for r in v["resources"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "  {} role:{}", s(&r["name"]), s(&r["role"]));
        let _ = writeln!(o, "    disk:{} open:{}", s(&r["disk"]), s(&r["open_clients"]));
        let peer = &r["peer"];
        let _ = writeln!(
            o,
            "    peer connection:{} role:{} peer-disk:{} replication:{} out-of-sync:{}",
            s(&r["connection"]),
            s(&peer["role"]),
            s(&peer["disk"]),
            s(&r["replication"]),
            s(&r["out_of_sync_bytes"]),
        );
        let q = &r["quorum"];
        let _ = writeln!(
            o,
            "    quorum:{} suspended-writes:{}",
            if q["held"].as_bool() == Some(true) { "yes" } else { "no" },
            s(&q["suspended_writes"])
        );
    }
    let q = &v["quorum"];
    let _ = writeln!(
        o,
        "  witness {} connected:{} lease:{} fence:{} may-ack-alone:{}",
        s(&q["witness"]),
        s(&q["witness_connected"]),
        q["lease_remaining_s"].as_f64().map_or_else(|| "none".into(), |x| format!("{x:.3}s left")),
        s(&q["fence"]),
        s(&q["may_ack_alone"]),
    );
    for m in v["mounts"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "  mount {} on {} mounted:{}", s(&m["resource"]), s(&m["mount_point"]), s(&m["mounted"]));
    }
    for x in v["services"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "  service {} started:{}", s(&x["name"]), s(&x["started"]));
    }
    let _ = writeln!(o, "  vip allowed:{}", s(&v["vip_allowed"]));
    let t = &v["last_transition"];
    if !t.is_null() {
        let _ = writeln!(
            o,
            "  last transition: {} ({}) {} ago, took {}",
            s(&t["direction"]),
            s(&t["reason"]),
            secs(&t["started_ago_s"]),
            if t["duration_s"].is_null() { "(running)".into() } else { secs(&t["duration_s"]) },
        );
        for st in t["steps"].as_array().into_iter().flatten() {
            let _ = writeln!(o, "    {:<28} {:>9} {}", s(&st["step"]), secs(&st["duration_s"]), s(&st["outcome"]));
        }
    }
    let b = &v["backup"];
    if b["enabled"].as_bool() == Some(true) {
        let _ = writeln!(
            o,
            "  backup running:{} last-success-unix:{} (from:{}) next-due-in:{} failures:{} cancelled:{}",
            s(&b["running"]),
            s(&b["last_success_unix"]),
            s(&b["last_success_from"]),
            secs(&b["next_due_in_s"]),
            s(&b["failures"]),
            s(&b["cancelled"]),
        );
    }
    o
}
