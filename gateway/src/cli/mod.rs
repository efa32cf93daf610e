//! The `gateway` command: run, check, explain, override-token, the ops
//! commands that talk to a running gateway's admin API, and the demo.

pub mod check;
pub mod demo;
pub mod diffs;
pub mod explain;
pub mod ops;
pub mod override_token;
pub mod rollout;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;
use crate::listener::server::RunOptions;
use crate::pipeline::explain::ExplainRequest;

pub const DEFAULT_CONFIG: &str = "config/gateway.toml";

#[derive(Parser)]
#[command(name = "gateway", version, about = "Gray-release edge gateway: versions by user ID, hot reload, metrics")]
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
    /// Show what the proxy would do with a request, and why: it runs the
    /// proxy's own pipeline (blacklist, route, version, redirect, degrade,
    /// rate limits) without counting anything.
    Explain {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Request path, optionally with ?query.
        #[arg(long)]
        path: String,
        /// The request method (default GET).
        #[arg(long)]
        method: Option<String>,
        /// As if the request came over the TLS listener.
        #[arg(long)]
        tls: bool,
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
    /// Print a signed tester override value for a route's `[routes.override]`
    /// header or cookie: it forces VERSION from any client until it expires.
    OverrideToken {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        route: String,
        #[arg(long)]
        version: String,
        /// How long it is valid, e.g. 8h (at most 30 days).
        #[arg(long, default_value = "8h")]
        ttl: String,
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
    /// The response cache: `purge` a route's copies (`--route`) under a path prefix (`--prefix`, default /).
    Cache {
        /// purge
        action: String,
        #[arg(long)]
        route: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The release guard: `status [ROUTE]`, or `start`, `pause`, `resume`, `promote` (to 100%), `abort` a route's rollout.
    Rollout {
        /// status, start, pause, resume, promote, abort.
        action: String,
        /// The route (required but for `status`).
        route: Option<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
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

fn admin_client(args: AdminArgs) -> Result<ops::AdminClient, ExitCode> {
    ops::AdminClient::new(&args.config, args.admin).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// Parse the command line and run the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, upgrade, daemon } => run(&config, RunOptions { upgrade, daemon }, false),
        Command::Demo { config } => run(&config, RunOptions::default(), true),
        Command::Check { config } => check::run(&config),
        Command::OverrideToken { config, route, version, ttl } => override_token::run(&config, &route, &version, &ttl),
        Command::Block { cidr, ttl, reason, admin } => match admin_client(admin) {
            Ok(c) => ops::block(&c, &cidr, ttl, reason),
            Err(code) => code,
        },
        Command::Unblock { cidr, admin } => match admin_client(admin) {
            Ok(c) => ops::unblock(&c, &cidr),
            Err(code) => code,
        },
        Command::Blocks { json, admin } => match admin_client(admin) {
            Ok(c) => ops::blocks(&c, json),
            Err(code) => code,
        },
        Command::Degrade { level, admin } => match admin_client(admin) {
            Ok(c) => ops::degrade(&c, level),
            Err(code) => code,
        },
        Command::Cache { action, route, prefix, admin } => match (action.as_str(), admin_client(admin)) {
            ("purge", Ok(c)) => ops::purge_cache(&c, route, prefix),
            (_, Ok(_)) => {
                eprintln!("`gateway cache {action}`: the only action is purge");
                ExitCode::from(2)
            }
            (_, Err(code)) => code,
        },
        Command::Rollout { action, route, json, admin } => match admin_client(admin) {
            Ok(c) => rollout::run(&c, &action, route.as_deref(), json),
            Err(code) => code,
        },
        Command::Diffs { route, since, show, json, admin } => match admin_client(admin) {
            Ok(c) => diffs::run(&c, &diffs::DiffsArgs { route, since, show, json }),
            Err(code) => code,
        },
        Command::Explain { config, path, method, tls, user, ip, headers, host } => {
            let headers = headers
                .iter()
                .map(|h| match h.split_once(':') {
                    Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
                    None => Err(format!("--header {h:?} must be NAME:VALUE")),
                })
                .collect::<Result<Vec<_>, _>>();
            match headers {
                Ok(headers) => explain::run(&config, ExplainRequest { host, path, method, user, ip, headers, tls }),
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

pub(crate) fn print_errors(errors: &[config::ConfigError]) {
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!("{} error(s); nothing was started", errors.len());
}

fn run(path: &std::path::Path, opts: RunOptions, demo: bool) -> ExitCode {
    let extra = if demo {
        match config::load_file(path) {
            Ok(loaded) => {
                eprintln!("{}", demo::banner(&loaded.config));
                demo::services(&loaded.config)
            }
            Err(errors) => {
                print_errors(&errors);
                return ExitCode::FAILURE;
            }
        }
    } else {
        Vec::new()
    };
    match crate::listener::server::build(path, &opts, extra) {
        Ok((server, _reloader)) => server.run_forever(),
        Err(errors) => {
            print_errors(&errors);
            ExitCode::FAILURE
        }
    }
}
