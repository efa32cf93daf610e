//! `GET /api/status`: what is running, as JSON.

use serde_json::{json, Value};

use crate::cluster::StoreState;
use crate::control::reload::Reloader;

pub fn render(reloader: &Reloader) -> Value {
    let snapshot = reloader.snapshots.load();
    let reload = reloader.status();
    let routes: Vec<Value> = snapshot
        .routes
        .iter()
        .map(|r| {
            let s = &r.spec;
            json!({
                "name": s.name,
                "path_prefix": s.path_prefix,
                "hosts": s.hosts,
                "default": s.versions.get(s.default_version).map(|v| v.name.as_str()),
                "versions": s.versions.iter().enumerate().map(|(i, v)| {
                    let range = r.plan.lanes.range_of(i);
                    json!({
                        "name": v.name,
                        "upstream": v.upstream,
                        "percent": if i == s.default_version { 100.0 - s.canary_percent() } else { f64::from(v.basis_points) / 100.0 },
                        "buckets": range.map(|r| [r.start, r.end]),
                        "whitelist_users": v.whitelist_users.len(),
                        "whitelist_ips": v.whitelist_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    })
                }).collect::<Vec<_>>(),
                "canary_percent": s.canary_percent(),
                "rules": (s.rules.count() > 0).then(|| s.rules.canonical()),
                "salt": s.salt,
                "degrade_at": s.degrade_at,
                "fallback": s.fallback.as_ref().map(|f| json!({
                    "status": f.page.status,
                    "on": f.on.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                    "canary_failover": f.canary_failover,
                })),
            })
        })
        .collect();
    let mut upstreams: Vec<Value> = snapshot
        .pools
        .values()
        .map(|p| {
            json!({
                "name": p.name,
                "health_check": p.health_check.is_some(),
                "healthy_backends": p.healthy_count(),
                "backends": p.backends.iter().map(|b| json!({
                    "addr": b.addr.to_string(),
                    "weight": b.weight,
                    "healthy": b.health.is_healthy(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    upstreams.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({
        "config_file": reloader.path().display().to_string(),
        "config_hash": snapshot.hash,
        "generation": snapshot.generation,
        "loaded_at": super::times::rfc3339_seconds(snapshot.loaded_at),
        "last_reload_error": reload.last_error,
        "last_reload_error_at": reload.last_error_at.map(super::times::rfc3339_seconds),
        "restart_needed": reload.restart_needed,
        "routes": routes,
        "upstreams": upstreams,
        "degrade": super::edge::degrade_json(reloader),
        "blacklist": {
            "dry_run": snapshot.config.blacklist.dry_run,
            "static_entries": snapshot.static_blacklist.len(),
            "runtime_entries": reloader.runtime.blacklist.len(),
        },
        "state_file": reloader.runtime.state.path().display().to_string(),
        "cluster": cluster(reloader),
        "rollouts": rollouts(reloader),
    })
}

/// Each rolled-out route in one line: state, step, share in force, the last event's reason.
fn rollouts(reloader: &Reloader) -> Value {
    let snapshot = reloader.snapshots.load();
    let all: Vec<Value> = snapshot
        .routes
        .iter()
        .filter_map(|r| super::rollouts::rollout_json(reloader, r))
        .map(|r| {
            json!({
                "route": r["route"],
                "version": r["version"],
                "phase": r["phase"],
                "step": r["step"],
                "percent": r["percent"],
                "reason": r["events"].get(0).map_or(Value::Null, |e| e["reason"].clone()),
            })
        })
        .collect();
    Value::Array(all)
}

/// `null` for a single gateway; else the store's state as this replica sees it.
fn cluster(reloader: &Reloader) -> Value {
    let Some(link) = &reloader.cluster else { return Value::Null };
    let runtime = &reloader.runtime;
    let store = match link.health.state() {
        StoreState::Ok => "ok",
        // Before the first call completes the store is not known to be reachable.
        StoreState::Unreachable | StoreState::Starting => "unreachable",
    };
    json!({
        "store": store,
        "redis": link.spec.redis_display(),
        "key_prefix": link.spec.key_prefix,
        "replica": link.origin,
        "since": super::times::rfc3339_seconds(link.health.since()),
        "last_sync": link.health.last_sync().map(super::times::rfc3339_seconds),
        "pending_changes": runtime.blacklist.pending().len() + usize::from(runtime.pending_degrade().is_some()),
    })
}
