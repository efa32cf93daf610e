//! `gateway check`: every load step `run` takes, then a summary of what
//! would run: listeners, upstreams, and per route its match, versions with
//! their bucket ranges, rules, limits, fallback and shadow.

use std::process::ExitCode;

use crate::config;

/// Every load step `run` takes before it listens (config, state file, list
/// files, diff store, snapshot), so that exit 0 means `run` will start.
pub fn run(path: &std::path::Path) -> ExitCode {
    match crate::control::reload::check(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                println!("{w}");
            }
            print!("{}", summary(&loaded));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            super::print_errors(&errors);
            ExitCode::FAILURE
        }
    }
}

fn summary(loaded: &config::LoadedConfig) -> String {
    let c = &loaded.config;
    let mut s = format!("{}: OK (hash {})\n", c.source.display(), loaded.hash);
    let listen: Vec<String> = c.startup.server.listen.iter().map(ToString::to_string).collect();
    s.push_str(&format!(
        "listen {}  admin {}  threads {}\n",
        listen.join(", "),
        c.startup.admin_listen,
        c.startup.server.threads
    ));
    if let Some(tls) = &c.server.tls {
        s.push_str(&tls_summary(tls, crate::tls::certs::unix_now()));
    }
    s.push_str("upstreams:\n");
    for u in c.upstreams.values() {
        let backends: Vec<String> = u
            .backends
            .iter()
            .map(|b| if b.weight == 1 { b.addr.to_string() } else { format!("{} (weight {})", b.addr, b.weight) })
            .collect();
        let hc = match &u.health_check {
            Some(h) => format!("  health {:?} every {:?}", h.probe, h.interval),
            None => String::new(),
        };
        s.push_str(&format!("  {:<16} {}{hc}\n", u.name, backends.join(", ")));
    }
    let bl = &c.blacklist;
    s.push_str(&format!(
        "blacklist: {} cidr(s), {} file(s){}{}; state file {}; degrade level {}\n",
        bl.cidrs.len(),
        bl.files.len(),
        if bl.dry_run { ", DRY RUN" } else { "" },
        if bl.at_accept { ", dropped at accept" } else { "" },
        c.startup.state_path.display(),
        c.degrade_level
    ));
    match &c.startup.cluster {
        Some(k) => s.push_str(&format!(
            "cluster: {} (prefix {:?}, timeout {:?}; not contacted by check: run starts while it is down)\n",
            k.redis_display(),
            k.key_prefix,
            k.timeout
        )),
        None => s.push_str("cluster: none (a single gateway: run-time blocks and degrade level stay on this one)\n"),
    }
    s.push_str("routes:\n");
    for r in &c.routes {
        let hosts = if r.hosts.is_empty() { "*".to_string() } else { r.hosts.join(",") };
        s.push_str(&format!("  {:<12} {hosts}{}\n", r.name, r.path_prefix));
        if r.rules.count() > 0 {
            s.push_str(&format!("               rules {}\n", r.rules.canonical()));
        }
        let lanes = crate::routing::VersionPlan::compile(r).lanes;
        for (i, v) in r.versions.iter().enumerate() {
            let share = match (i == r.default_version, lanes.range_of(i)) {
                (true, _) => format!("default, {:.2}% (every other bucket)", 100.0 - r.canary_percent()),
                (false, Some(range)) => {
                    format!("{:.2}%, buckets [{}, {})", f64::from(v.basis_points) / 100.0, range.start, range.end)
                }
                (false, None) => "0%".to_string(),
            };
            let mut users: Vec<&str> = v.whitelist_users.iter().map(String::as_str).collect();
            users.sort_unstable();
            let whitelist = match (users.is_empty(), v.whitelist_ips.is_empty()) {
                (true, true) => String::new(),
                _ => {
                    let ips: Vec<String> = v.whitelist_ips.iter().map(ToString::to_string).collect();
                    format!("  whitelist users [{}] ips [{}]", users.join(", "), ips.join(", "))
                }
            };
            s.push_str(&format!("               version {:<10} -> {:<14} {share}{whitelist}\n", v.name, v.upstream));
        }
        if let Some(ro) = &r.rollout {
            let steps: Vec<String> = ro.steps.iter().map(|bp| format!("{}%", f64::from(*bp) / 100.0)).collect();
            let name = r.versions.get(ro.version).map_or("?", |v| v.name.as_str());
            let file = r.versions.get(ro.version).map_or(0, |v| v.basis_points);
            s.push_str(&format!(
                "               rollout {name}: {} each held {:?}, checked every {:?}; the file's {}% is the \
                 starting point, in force until `gateway rollout start {}`\n",
                steps.join(" -> "),
                ro.hold,
                ro.interval,
                f64::from(file) / 100.0,
                r.name
            ));
        }
        let mut extras = Vec::new();
        if !r.rate_limit.is_empty() {
            let fmt = |name: &str, l: &Option<crate::config::LimitSpec>| {
                l.map(|l| format!("{name} {}/{:?} burst {}", l.rate, l.per, l.burst))
            };
            let limits: Vec<String> = [
                fmt("ip", &r.rate_limit.per_ip),
                fmt("user", &r.rate_limit.per_user),
                fmt("route", &r.rate_limit.per_route),
            ]
            .into_iter()
            .flatten()
            .collect();
            extras.push(format!("limits [{}]", limits.join(", ")));
        }
        if let Some(c) = &r.cache {
            let degrade: Vec<String> = c.degrade_ttl.iter().map(|(l, d)| format!("level {l}: {d:?}")).collect();
            extras.push(format!(
                "cache ttl {:?}{}{}",
                c.ttl,
                c.stale_if_error.map(|s| format!(", stale_if_error {s:?}")).unwrap_or_default(),
                if degrade.is_empty() { String::new() } else { format!(", degrade [{}]", degrade.join(", ")) }
            ));
        }
        if let Some(f) = &r.fallback {
            let on: Vec<&str> = f.on.iter().map(|c| c.as_str()).collect();
            extras.push(format!(
                "fallback {} on [{}]{}",
                f.page.status,
                on.join(", "),
                if f.canary_failover { " +canary failover" } else { "" }
            ));
        }
        if let Some(at) = r.degrade_at {
            extras.push(format!("degrade_at {at}"));
        }
        if let Some(sh) = &r.shadow {
            let methods: Vec<&str> = sh.methods.iter().map(|m| m.as_str()).collect();
            extras.push(format!(
                "shadow {:.2}% [{}] against {} noise_check {}",
                f64::from(sh.basis_points) / 100.0,
                methods.join(","),
                r.versions.get(r.shadow_against).map_or("?", |v| v.name.as_str()),
                sh.noise_check
            ));
        }
        if let Some(o) = &r.override_ {
            let via: Vec<String> = o
                .header
                .iter()
                .map(|h| format!("header {h}"))
                .chain(o.cookie.iter().map(|c| format!("cookie {c}")))
                .collect();
            let ips: Vec<String> = o.allow_from.iter().map(ToString::to_string).collect();
            extras.push(format!(
                "override by {} from [{}]{}",
                via.join(", "),
                ips.join(", "),
                if o.key.is_some() { " or signed" } else { "" }
            ));
        }
        match r.anonymous {
            crate::config::AnonymousPolicy::Version(v) if v == r.default_version => {}
            crate::config::AnonymousPolicy::Version(v) => {
                extras.push(format!("anonymous -> {}", r.versions.get(v).map_or("?", |x| x.name.as_str())))
            }
            crate::config::AnonymousPolicy::IpHash => extras.push("anonymous by ip hash".into()),
            crate::config::AnonymousPolicy::Cookie => extras.push("anonymous by signed cookie".into()),
        }
        if !extras.is_empty() {
            s.push_str(&format!("               {}\n", extras.join("; ")));
        }
    }
    s
}

/// The TLS listener and, per certificate, what ops check before a deploy:
/// which file, which names it serves, when it expires, whether it is the
/// default (served to clients without a matching SNI).
fn tls_summary(tls: &crate::tls::TlsListenerSpec, now: i64) -> String {
    let listen: Vec<String> = tls.listen.iter().map(ToString::to_string).collect();
    let protocols = if tls.http2 { "h2, http/1.1" } else { "http/1.1" };
    let mut s = format!("tls listen {}  ({protocols})\n", listen.join(", "));
    let default = tls.certs.default_entry();
    for e in &tls.certs.entries {
        let names = if e.names.is_empty() { "(no DNS names)".to_string() } else { e.names.join(", ") };
        let days = (e.not_after - now).div_euclid(86_400);
        s.push_str(&format!(
            "  {}  {names}  expires {} (in {days} days)  serial {}{}\n",
            e.cert_path.display(),
            crate::tls::certs::date(e.not_after),
            e.serial,
            if default.is_some_and(|d| std::ptr::eq(d, e)) { "  default" } else { "" },
        ));
    }
    s
}
