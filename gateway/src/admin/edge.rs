//! Admin endpoints for ops: run-time blocks and the degrade level.
//!
//! `POST /api/blacklist` `{"cidr": "203.0.113.0/24", "reason": "card testing", "ttl": "1h"}` (ttl at most 10 years)
//! `DELETE /api/blacklist/{cidr}` (a `/` in the CIDR may be sent as `%2F`)
//! `GET /api/blacklist` — every entry, run-time and static, with its source
//! `GET /api/degrade`, `PUT /api/degrade {"level": 2}`, `DELETE /api/degrade` (back to the config's level)
//!
//! Every change is written to the state file before it answers, so an
//! answered block survives a crash. In a fleet it is then pushed to the
//! cluster store before the answer, whose `applied` field says how far it
//! reached: `cluster` (every replica within a second), `replica` (the store
//! is unreachable: applied here, pushed when it returns; `warning` says so),
//! or `gateway` (a single gateway).

use std::time::SystemTime;

use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cluster::Reach;
use crate::config::values;
use crate::config::MAX_DEGRADE_LEVEL;
use crate::control::reload::Reloader;
use crate::edge::blacklist::{BlockEntry, BlockError};

use super::{json_reply, Reply};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockRequest {
    cidr: String,
    reason: Option<String>,
    ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DegradeRequest {
    level: Option<u8>,
}

fn bad(msg: impl Into<String>) -> Reply {
    json_reply(StatusCode::BAD_REQUEST, &json!({"error": msg.into()}))
}

/// Push a change just made to the fleet, and say how far it reached.
async fn reach(reloader: &Reloader) -> Reach {
    match &reloader.cluster {
        None => Reach::ThisGateway,
        Some(link) => link.push().await,
    }
}

fn with_reach(mut body: Value, reach: Reach) -> Value {
    body["applied"] = Value::from(reach.label());
    if let Some(warning) = reach.warning() {
        body["warning"] = Value::from(warning);
    }
    body
}

pub async fn add_block(reloader: &Reloader, body: &[u8]) -> Reply {
    let req: BlockRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad(format!("expected {{\"cidr\": \"...\", \"reason\": \"...\", \"ttl\": \"1h\"}}: {e}")),
    };
    let cidr = match values::cidr(&req.cidr) {
        Ok(c) => c,
        Err(e) => return bad(e),
    };
    let ttl = match req.ttl.as_deref().map(values::duration) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return bad(e),
    };
    let reason = req.reason.filter(|r| !r.trim().is_empty());
    match reloader.runtime.blacklist.add(cidr, reason, ttl) {
        Ok(entry) => {
            tracing::warn!(target: "blacklist", cidr = %entry.cidr, reason = entry.reason.as_deref().unwrap_or(""), "blocked by admin API");
            let reach = reach(reloader).await;
            json_reply(StatusCode::CREATED, &with_reach(entry_json(&entry), reach))
        }
        Err(e @ BlockError::TtlTooLong(_)) => bad(e.to_string()),
        Err(e @ BlockError::State(_)) => {
            json_reply(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": e.to_string()}))
        }
    }
}

pub async fn remove_block(reloader: &Reloader, raw_cidr: &str) -> Reply {
    let cidr = match values::cidr(raw_cidr) {
        Ok(c) => c,
        Err(e) => return bad(e),
    };
    match reloader.runtime.blacklist.remove(cidr) {
        Ok(true) => {
            tracing::warn!(target: "blacklist", %cidr, "unblocked by admin API");
            let reach = reach(reloader).await;
            json_reply(StatusCode::OK, &with_reach(json!({"removed": cidr.to_string()}), reach))
        }
        Ok(false) => {
            let snapshot = reloader.snapshots.load();
            let static_hit = snapshot.static_blacklist.lookup(cidr.network()).filter(|e| e.cidr == cidr);
            let msg = match static_hit {
                Some(e) => format!("{cidr} comes from {}; remove it there and reload", e.source.label()),
                None => format!("{cidr} is not blocked at run time"),
            };
            json_reply(StatusCode::NOT_FOUND, &json!({"error": msg}))
        }
        Err(e) => json_reply(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": e.to_string()})),
    }
}

pub fn list_blocks(reloader: &Reloader) -> Reply {
    let snapshot = reloader.snapshots.load();
    let runtime: Vec<Value> = reloader.runtime.blacklist.list().iter().map(entry_json).collect();
    let spec = &snapshot.config.blacklist;
    json_reply(
        StatusCode::OK,
        &json!({
            "dry_run": spec.dry_run,
            "runtime": runtime,
            "config_cidrs": spec.cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "files": spec.files.iter().map(|(p, _)| p.display().to_string()).collect::<Vec<_>>(),
            "static_entries": snapshot.static_blacklist.len(),
        }),
    )
}

pub fn degrade(reloader: &Reloader) -> Reply {
    json_reply(StatusCode::OK, &degrade_json(reloader))
}

pub async fn set_degrade(reloader: &Reloader, body: Option<&[u8]>) -> Reply {
    let level = match body {
        None => None,
        Some(body) => match serde_json::from_slice::<DegradeRequest>(body) {
            Ok(DegradeRequest { level: Some(l) }) if l <= MAX_DEGRADE_LEVEL => Some(l),
            Ok(DegradeRequest { level: None }) => None,
            Ok(_) => return bad(format!("level must be 0..={MAX_DEGRADE_LEVEL}")),
            Err(e) => return bad(format!("expected {{\"level\": 2}}: {e}")),
        },
    };
    if let Err(e) = reloader.runtime.set_degrade(level) {
        return json_reply(StatusCode::INTERNAL_SERVER_ERROR, &json!({"error": e.to_string()}));
    }
    let in_force = reloader.runtime.degrade_level(reloader.snapshots.load().config.degrade_level);
    reloader.metrics.degrade_level.set(i64::from(in_force));
    tracing::warn!(level = in_force, "degrade level changed by admin API");
    let reach = reach(reloader).await;
    json_reply(StatusCode::OK, &with_reach(degrade_json(reloader), reach))
}

pub fn degrade_json(reloader: &Reloader) -> Value {
    let snapshot = reloader.snapshots.load();
    let config = snapshot.config.degrade_level;
    let level = reloader.runtime.degrade_level(config);
    let degraded: Vec<&str> =
        snapshot.routes.iter().filter(|r| r.degraded(level)).map(|r| r.spec.name.as_str()).collect();
    json!({
        "level": level,
        "config_level": config,
        "runtime_override": reloader.runtime.degrade_override(),
        "degraded_routes": degraded,
    })
}

fn unix(t: Option<SystemTime>) -> Value {
    t.map(|t| Value::String(super::times::rfc3339_seconds(t))).unwrap_or(Value::Null)
}

fn entry_json(e: &BlockEntry) -> Value {
    json!({
        "cidr": e.cidr.to_string(),
        "source": e.source.label(),
        "reason": e.reason,
        "added_at": unix(e.added_at),
        "expires_at": unix(e.expires_at),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    route: Option<String>,
    path_prefix: Option<String>,
}

/// `POST /api/cache/purge {"route": "cart", "path_prefix": "/cart/items"}`: drop
/// the cached copies of a route (every route without `route`) under a path prefix (default `/`).
pub fn purge_cache(reloader: &Reloader, body: &[u8]) -> Reply {
    let req: PurgeRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return bad(format!("expected {{\"route\": \"cart\", \"path_prefix\": \"/cart\"}}: {e}")),
    };
    let snapshot = reloader.snapshots.load();
    if let Some(route) = &req.route {
        if snapshot.route_named(route).is_none_or(|r| r.spec.cache.is_none()) {
            return json_reply(
                StatusCode::NOT_FOUND,
                &json!({"error": format!("route {route:?} has no [routes.cache]")}),
            );
        }
    }
    let prefix = req.path_prefix.unwrap_or_else(|| "/".to_string());
    let purged = snapshot.cache.store.purge(req.route.as_deref(), &prefix);
    snapshot.cache.update_gauges();
    tracing::warn!(route = req.route.as_deref().unwrap_or("*"), %prefix, purged, "cache purged by admin API");
    json_reply(StatusCode::OK, &json!({"purged": purged, "route": req.route, "path_prefix": prefix}))
}
