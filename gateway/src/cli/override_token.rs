//! `gateway override-token`: a signed value a tester sends in the route's
//! override header or cookie to force a version from anywhere, until it
//! expires. Signed with the route's `[routes.override] secret_file`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config;
use crate::routing::signed;

/// The longest validity: a leaked value must not work for long.
const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);

pub fn run(path: &std::path::Path, route: &str, version: &str, ttl: &str) -> ExitCode {
    let loaded = match config::load_file(path) {
        Ok(l) => l,
        Err(errors) => {
            super::print_errors(&errors);
            return ExitCode::FAILURE;
        }
    };
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::FAILURE
    };
    let ttl = match config::values::duration(ttl) {
        Ok(t) if t > Duration::ZERO && t <= MAX_TTL => t,
        Ok(_) => return fail(format!("--ttl must be more than 0 and at most {}", humantime::format_duration(MAX_TTL))),
        Err(e) => return fail(format!("--ttl: {e}")),
    };
    let Some(spec) = loaded.config.routes.iter().find(|r| r.name == route) else {
        let names: Vec<&str> = loaded.config.routes.iter().map(|r| r.name.as_str()).collect();
        return fail(format!("no route {route:?} (routes: {})", names.join(", ")));
    };
    if spec.version_index(version).is_none() {
        let names: Vec<&str> = spec.versions.iter().map(|v| v.name.as_str()).collect();
        return fail(format!("route {route:?} has no version {version:?} (versions: {})", names.join(", ")));
    }
    let Some(key) = spec.override_.as_ref().and_then(|o| o.key.as_ref()) else {
        return fail(format!("route {route:?} has no [routes.override] secret_file to sign with"));
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    println!("{}", signed::override_token(&key.0, route, version, now + ttl.as_secs()));
    ExitCode::SUCCESS
}
