//! The `gateway` command: run, check, explain, demo.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gateway::cli::ops as ops_cli;
use gateway::config;
use gateway::listener::server::{self, RunOptions};
use gateway::pipeline::explain::{explain, ExplainRequest};
use gateway::routing::Router;

/// mimalloc unless built with `--no-default-features`: glibc's malloc was
/// about 11% of the proxy's CPU under load, mostly in its slow paths for the
/// request's larger buffers (`_int_malloc`, `malloc_consolidate`). Measured
/// with the load harness; see benches/README.md.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_CONFIG: &str = "config/gateway.toml";

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "Gray-release edge gateway: stable/canary by user ID, hot reload, metrics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Take over the listening sockets of a running gateway (then send it SIGQUIT).
        #[arg(long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(long)]
        daemon: bool,
    },
    /// Validate a config: print a summary and exit 0, or every error and exit 1.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show which route and version a request would get, and why.
    Explain {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Request path, optionally with ?query.
        #[arg(long)]
        path: String,
        /// The user ID (as if found in the route's first user_id source).
        #[arg(long)]
        user: Option<String>,
        /// The client's IP address (the TCP peer).
        #[arg(long)]
        ip: Option<IpAddr>,
        /// A request header, `name:value`; repeatable.
        #[arg(long = "header", value_name = "NAME:VALUE")]
        headers: Vec<String>,
        /// The Host header.
        #[arg(long)]
        host: Option<String>,
    },
    /// Start demo backends for the config's loopback upstreams, then the gateway.
    Demo {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Block an address or range on a running gateway (persisted across restarts).
    Block {
        /// An IPv4/IPv6 address or CIDR, e.g. 203.0.113.0/24.
        cidr: String,
        /// Lift the block after this long, e.g. 1h.
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Lift a run-time block.
    Unblock {
        cidr: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the blocks of a running gateway.
    Blocks {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the degrade level, set it (0..=10), or `clear` it back to the config's.
    Degrade {
        level: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Shadow diffs for QA: per route, which fields differ between stable and canary, how often, and which are noise.
    Diffs {
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// Only records since then: a duration ago (1h, 30m) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Print one record (its id, from the summary's EXAMPLE column) with both values per field.
        #[arg(long, value_name = "ID")]
        show: Option<i64>,
        /// Print the admin API's JSON instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How the ops commands find the running gateway.
#[derive(clap::Args)]
struct AdminArgs {
    /// The config the gateway runs with (its [admin] section gives address and token).
    #[arg(short, long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The admin API's URL, overriding the config's admin.listen.
    #[arg(long)]
    admin: Option<String>,
}

fn admin_client(args: AdminArgs) -> Result<ops_cli::AdminClient, ExitCode> {
    ops_cli::AdminClient::new(&args.config, args.admin).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, upgrade, daemon } => run(&config, RunOptions { upgrade, daemon }, false),
        Command::Demo { config } => run(&config, RunOptions::default(), true),
        Command::Check { config } => check(&config),
        Command::Block { cidr, ttl, reason, admin } => match admin_client(admin) {
            Ok(c) => ops_cli::block(&c, &cidr, ttl, reason),
            Err(code) => code,
        },
        Command::Unblock { cidr, admin } => match admin_client(admin) {
            Ok(c) => ops_cli::unblock(&c, &cidr),
            Err(code) => code,
        },
        Command::Blocks { json, admin } => match admin_client(admin) {
            Ok(c) => ops_cli::blocks(&c, json),
            Err(code) => code,
        },
        Command::Degrade { level, admin } => match admin_client(admin) {
            Ok(c) => ops_cli::degrade(&c, level),
            Err(code) => code,
        },
        Command::Diffs { route, since, show, json, admin } => match admin_client(admin) {
            Ok(c) => gateway::cli::diffs::run(&c, &gateway::cli::diffs::DiffsArgs { route, since, show, json }),
            Err(code) => code,
        },
        Command::Explain { config, path, user, ip, headers, host } => {
            let headers = headers
                .iter()
                .map(|h| match h.split_once(':') {
                    Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
                    None => Err(format!("--header {h:?} must be NAME:VALUE")),
                })
                .collect::<Result<Vec<_>, _>>();
            match headers {
                Ok(headers) => explain_cmd(&config, ExplainRequest { host, path, user, ip, headers }),
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn print_errors(errors: &[config::ConfigError]) {
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!("{} error(s); nothing was started", errors.len());
}

fn run(path: &std::path::Path, opts: RunOptions, demo: bool) -> ExitCode {
    let extra = if demo {
        match config::load_file(path) {
            Ok(loaded) => {
                eprintln!("{}", gateway::cli::demo::banner(&loaded.config));
                gateway::cli::demo::services(&loaded.config)
            }
            Err(errors) => {
                print_errors(&errors);
                return ExitCode::FAILURE;
            }
        }
    } else {
        Vec::new()
    };
    match server::build(path, &opts, extra) {
        Ok((server, _reloader)) => server.run_forever(),
        Err(errors) => {
            print_errors(&errors);
            ExitCode::FAILURE
        }
    }
}

/// Every load step `run` takes before it listens (config, state file, list
/// files, diff store, snapshot), so that exit 0 means `run` will start.
fn check(path: &std::path::Path) -> ExitCode {
    match gateway::control::reload::check(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                println!("{w}");
            }
            print!("{}", summary(&loaded));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&errors);
            ExitCode::FAILURE
        }
    }
}

fn summary(loaded: &config::LoadedConfig) -> String {
    let c = &loaded.config;
    let mut s = format!("{}: OK (hash {})\n", c.source.display(), loaded.hash);
    let listen: Vec<String> = c.server.listen.iter().map(ToString::to_string).collect();
    s.push_str(&format!("listen {}  admin {}  threads {}\n", listen.join(", "), c.admin.listen, c.server.threads));
    if let Some(tls) = &c.server.tls {
        s.push_str(&tls_summary(tls, gateway::tls::certs::unix_now()));
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
        c.state_path.display(),
        c.degrade_level
    ));
    s.push_str("routes:\n");
    for r in &c.routes {
        let hosts = if r.hosts.is_empty() { "*".to_string() } else { r.hosts.join(",") };
        let canary = match &r.canary {
            Some(canary) => format!("canary {canary} {:.2}%", r.canary_percent()),
            None => "no canary".to_string(),
        };
        s.push_str(&format!("  {:<12} {hosts}{}  stable {}  {canary}\n", r.name, r.path_prefix, r.stable));
        let mut extras = Vec::new();
        if !r.rate_limit.is_empty() {
            let fmt = |name: &str, l: &Option<gateway::config::LimitSpec>| {
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
                "shadow {:.2}% [{}] noise_check {}",
                f64::from(sh.basis_points) / 100.0,
                methods.join(","),
                sh.noise_check
            ));
        }
        if !extras.is_empty() {
            s.push_str(&format!("               {}\n", extras.join("; ")));
        }
        let mut users: Vec<&String> = r.whitelist_users.iter().collect();
        users.sort();
        if !users.is_empty() || !r.whitelist_ips.is_empty() {
            let ips: Vec<String> = r.whitelist_ips.iter().map(ToString::to_string).collect();
            s.push_str(&format!(
                "               whitelist users [{}] ips [{}]\n",
                users.iter().map(|u| u.as_str()).collect::<Vec<_>>().join(", "),
                ips.join(", ")
            ));
        }
    }
    s
}

/// The TLS listener and, per certificate, what ops check before a deploy:
/// which file, which names it serves, when it expires, whether it is the
/// default (served to clients without a matching SNI).
fn tls_summary(tls: &gateway::tls::TlsListenerSpec, now: i64) -> String {
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
            gateway::tls::certs::date(e.not_after),
            e.serial,
            if default.is_some_and(|d| std::ptr::eq(d, e)) { "  default" } else { "" },
        ));
    }
    s
}

fn explain_cmd(path: &std::path::Path, req: ExplainRequest) -> ExitCode {
    let loaded = match config::load_file(path) {
        Ok(l) => l,
        Err(errors) => {
            print_errors(&errors);
            return ExitCode::FAILURE;
        }
    };
    let router = Router::new(&loaded.config.routes);
    match explain(&loaded.config, &router, &req) {
        Ok(answer) => {
            println!("{}", answer.text);
            println!("  pool {}  client ip {}", answer.pool, answer.client_ip);
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::from(3)
        }
    }
}
