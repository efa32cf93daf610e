//! A Pingora proxy with no logic at all: every request, whatever its path,
//! goes to one upstream address over a pooled keep-alive connection. The load
//! benchmark (`benches/load/run.sh`) runs it beside the gateway as the
//! gateway's own ceiling: whatever the gateway loses against this binary is
//! the cost of its routing, metrics and logging, not of Pingora.
//!
//! Usage: `bare-pingora [--sessions] LISTEN UPSTREAM [THREADS]`, e.g.
//! `bare-pingora 127.0.0.1:18040 127.0.0.1:18001` (THREADS defaults to 1).
//! With `--sessions` it serves with Pingora's HTTP/1 sessions in a plain
//! loop instead of `pingora-proxy` (`sessions.rs`): the ceiling of the
//! gateway's lean HTTP/1 path.

mod sessions;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_proxy::{ProxyHttp, Session};

/// The gateway's default allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Same as the gateway: an idle upstream connection is kept this long for reuse.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Same as the gateway's `upstream_keepalive_pool_size`.
const UPSTREAM_POOL_SIZE: usize = 1024;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    /// Runs once per request: always the one upstream, plain HTTP, keep-alive.
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        Ok(Box::new(peer))
    }
}

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    threads: usize,
    sessions: bool,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let sessions = args.first().is_some_and(|a| a == "--sessions");
    if sessions {
        args.remove(0);
    }
    if args.len() < 2 || args.len() > 3 {
        return Err("usage: bare-pingora [--sessions] LISTEN UPSTREAM [THREADS]".to_string());
    }
    let listen = args[0].parse().map_err(|e| format!("LISTEN {:?}: {e}", args[0]))?;
    let upstream = args[1].parse().map_err(|e| format!("UPSTREAM {:?}: {e}", args[1]))?;
    let threads = match args.get(2) {
        Some(t) => t.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(|| format!("THREADS {t:?}: not a count"))?,
        None => 1,
    };
    Ok(Args { listen, upstream, threads, sessions })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Per-process paths so that several instances (or a gateway) never share them.
    let tag = std::env::temp_dir().join(format!("bare-pingora-{}", std::process::id()));
    let conf = ServerConf {
        threads: args.threads,
        upstream_keepalive_pool_size: UPSTREAM_POOL_SIZE,
        pid_file: format!("{}.pid", tag.display()),
        upgrade_sock: format!("{}.sock", tag.display()),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        // The gateway's default (`server.work_stealing = false`), so the
        // ceiling runs on the same runtime model.
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
    server.bootstrap();
    if args.sessions {
        let mut upstream = HttpPeer::new(args.upstream, false, String::new());
        upstream.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        let connector = TransportConnector::new(Some(ConnectorOptions::from_server_conf(&server.configuration)));
        let app = sessions::Sessions { upstream, connector };
        let mut service = pingora_core::services::listening::Service::new("bare-sessions".to_string(), app);
        service.add_tcp(&args.listen.to_string());
        server.add_service(service);
    } else {
        let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Bare { upstream: args.upstream });
        proxy.add_tcp(&args.listen.to_string());
        server.add_service(proxy);
    }
    let mode = if args.sessions { "Pingora's sessions in a loop" } else { "pingora-proxy" };
    eprintln!("bare-pingora: {} -> {} ({} thread(s), {mode})", args.listen, args.upstream, args.threads);
    server.run_forever()
}
