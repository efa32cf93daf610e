//! Assembling the Pingora server: the proxy service, the admin service, the
//! control plane (health checks, file watch, SIGHUP), and the drain on
//! SIGTERM.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{ExecutionPhase, Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use pingora_core::services::ServiceWithDependents as ServiceTrait;

use crate::admin::AdminApp;
use crate::config::ConfigError;
use crate::control::reload::Reloader;
use crate::control::watch;
use crate::listener::connections::ConnectionLoop;
use crate::proxy::GatewayProxy;
use crate::shadow::engine::ShadowEngine;
use crate::telemetry::metrics::Metrics;
use crate::upstream;

/// How `gateway run` was asked to start.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Take the listening sockets over from a running gateway (graceful upgrade).
    pub upgrade: bool,
    pub daemon: bool,
}

/// Load the config and build a ready-to-run server. Config errors are returned
/// (all of them) before anything listens.
pub fn build(
    config_path: &Path,
    opts: &RunOptions,
    extra: Vec<Box<dyn ServiceTrait>>,
) -> Result<(Server, Arc<Reloader>), Vec<ConfigError>> {
    let metrics = Arc::new(Metrics::new());
    let shadow = Arc::new(ShadowEngine::new(Arc::clone(&metrics)));
    let reloader = Reloader::start(config_path, Arc::clone(&metrics), shadow)?;
    let cfg = reloader.snapshots.load().config.clone();
    // SIGHUP's default action is to terminate: catch it from now on, so a
    // reload asked for before the control plane listens (e.g. right after a
    // start by systemd) is remembered instead of killing the process.
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reloader.early_hup)) {
        tracing::warn!(error = %e, "cannot install the early SIGHUP handler");
    }
    crate::telemetry::logging::init(cfg.startup.server.access_log);

    let mut conf = ServerConf {
        threads: cfg.startup.server.threads,
        work_stealing: cfg.startup.server.work_stealing,
        // Pingora waits this long after SIGTERM before stopping its runtimes;
        // the drain watcher below exits earlier once nothing is in flight.
        grace_period_seconds: Some(cfg.startup.server.shutdown_grace.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: upgrade_sock_path(config_path),
        pid_file: format!("{}.pid", upgrade_sock_path(config_path).trim_end_matches(".sock")),
        ..ServerConf::default()
    };
    conf.upstream_keepalive_pool_size = 1024;
    let opt = Opt { upgrade: opts.upgrade, daemon: opts.daemon, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let gateway = GatewayProxy {
        snapshots: Arc::clone(&reloader.snapshots),
        runtime: Arc::clone(&reloader.runtime),
        shadow: Arc::clone(&reloader.shadow),
    };
    let lean = Arc::new(crate::proxy::lean::LeanPath::new(gateway.clone(), &server.configuration));
    let proxy_app = pingora_proxy::http_proxy(&server.configuration, gateway);
    let block_at_accept = Arc::new(crate::edge::accept_filter::BlockAtAccept {
        snapshots: Arc::clone(&reloader.snapshots),
        runtime: Arc::clone(&reloader.runtime),
    });
    let connections = ConnectionLoop {
        inner: Arc::new(proxy_app),
        open: Some(metrics.downstream_connections.clone()),
        snapshots: Arc::clone(&reloader.snapshots),
        account_refusals: true,
        proxy_protocol: Some(Arc::clone(&block_at_accept)),
        lean: Some(lean),
        gather_writes: true,
    };
    let mut proxy = Service::new("gateway".to_string(), connections);
    // PROXY protocol headers on the TLS listener come before the handshake.
    proxy.endpoints().set_pre_tls_callback(Arc::new(super::proxy_protocol::BeforeTls {
        snapshots: Arc::clone(&reloader.snapshots),
        block: Arc::clone(&block_at_accept),
    }));
    proxy.set_connection_filter(block_at_accept);
    let buffers = L4BufferSettings::new(cfg.startup.server.read_buffer, DEFAULT_L4_WRITE_BUFFER_SIZE);
    // Plain TCP streams get no write buffer: the connection loop gathers an
    // answer's writes in a buffer that lives only while it is written.
    let tcp_buffers = L4BufferSettings::new(cfg.startup.server.read_buffer, 0);
    for addr in &cfg.startup.server.listen {
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(tcp_buffers));
    }
    if let Some(tls) = &cfg.server.tls {
        crate::tls::add_listeners(&mut proxy, tls, &reloader.tls, buffers).map_err(|message| {
            vec![ConfigError { file: config_path.to_path_buf(), line: 0, key: "server.tls".into(), message }]
        })?;
    }

    let ready = Arc::new(AtomicBool::new(false));
    // The admin listener has the same head and body deadlines as the proxy's.
    let admin_app = AdminApp { reloader: Arc::clone(&reloader), ready: Arc::clone(&ready) };
    let admin_connections = ConnectionLoop {
        inner: Arc::new(admin_app),
        open: None,
        snapshots: Arc::clone(&reloader.snapshots),
        account_refusals: false,
        proxy_protocol: None,
        lean: None,
        gather_writes: false,
    };
    let mut admin = Service::new("admin".to_string(), admin_connections);
    admin.add_tcp(&cfg.startup.admin_listen.to_string());
    // The admin API is light; one thread keeps it off the proxy's cores.
    admin.threads = Some(1);

    let control = background_service("control", ControlPlane { reloader: Arc::clone(&reloader) });

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(control);
    for s in extra {
        server.add_boxed_service(s);
    }
    watch_phases(&server, Arc::clone(&metrics), ready);
    Ok((server, reloader))
}

/// A per-config socket path, so several gateways on one host do not collide.
fn upgrade_sock_path(config_path: &Path) -> String {
    let abs = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    let tag = xxhash_rust::xxh3::xxh3_64(abs.to_string_lossy().as_bytes());
    format!("/tmp/gateway-{tag:016x}.sock")
}

/// Readiness follows the server's phases; on SIGTERM the process exits as
/// soon as in-flight requests are done instead of always sleeping the whole
/// grace period (Pingora's default).
fn watch_phases(server: &Server, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    let mut phases = server.watch_execution_phase();
    std::thread::spawn(move || {
        while let Ok(phase) = phases.blocking_recv() {
            match phase {
                ExecutionPhase::Running => ready.store(true, Ordering::Relaxed),
                ExecutionPhase::GracefulTerminate | ExecutionPhase::GracefulUpgradeTransferringFds => {
                    ready.store(false, Ordering::Relaxed)
                }
                ExecutionPhase::ShutdownGracePeriod => {
                    drain_then_exit(&metrics);
                }
                _ => {}
            }
        }
    });
}

fn drain_then_exit(metrics: &Metrics) {
    // Listeners are closed by now. Give just-accepted connections a moment to
    // register their request, then wait for the in-flight count to reach zero.
    std::thread::sleep(Duration::from_millis(200));
    loop {
        let n = metrics.in_flight.get();
        if n <= 0 {
            tracing::info!("drained: no request in flight, exiting");
            // Let the last responses leave the socket buffers.
            std::thread::sleep(Duration::from_millis(100));
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Background work that follows the current snapshot.
struct ControlPlane {
    reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for ControlPlane {
    async fn start(&self, shutdown: ShutdownWatch) {
        let snapshots = Arc::clone(&self.reloader.snapshots);
        let fleet_shutdown = shutdown.clone();
        let fleet = async move {
            if let Some(link) = &self.reloader.cluster {
                crate::cluster::sync::run(Arc::clone(&self.reloader), Arc::clone(link), fleet_shutdown).await;
            }
        };
        let release = crate::release::controller::run(Arc::clone(&self.reloader), shutdown.clone());
        tokio::join!(
            fleet,
            release,
            sweep_expired_blocks(Arc::clone(&self.reloader.runtime), shutdown.clone()),
            upstream::health::run(snapshots, shutdown.clone()),
            watch::watch_config(Arc::clone(&self.reloader), shutdown.clone()),
            watch::watch_sighup(Arc::clone(&self.reloader), shutdown),
        );
    }
}

/// Drop run-time blocks whose TTL passed (lookups already ignore them; this
/// keeps the list and the state file tidy).
async fn sweep_expired_blocks(runtime: Arc<crate::control::runtime::RuntimeState>, mut shutdown: ShutdownWatch) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let rt = Arc::clone(&runtime);
        if let Ok(n) = tokio::task::spawn_blocking(move || rt.blacklist.sweep_expired()).await {
            if n > 0 {
                tracing::info!(target: "blacklist", expired = n, "run-time blocks expired");
            }
        }
    }
}
