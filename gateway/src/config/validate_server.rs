//! Validation of `[server]` and `[admin]`: listeners, threads, timeouts and
//! deadlines, buffers, logging, the admin token. Same rules as
//! `validate.rs`: collect every error, each with its line and key.

use std::time::Duration;

use http::HeaderName;

use super::error::Diagnostics;
use super::file::*;
use super::model::*;
use super::startup::{ServerStartup, TlsBinding, TlsStartup};
use super::validate::resolve;
use super::validate_tls;
use super::values;

/// No L4 read buffer by default: the keep-alive loop (proxy/connections.rs)
/// reads a request's first bytes into a buffer on the stack and the session
/// reads the rest into its own, so a per-connection buffer would only copy
/// bytes twice and stay with every idle connection (Pingora's 64 KiB
/// measured 67 KiB per idle connection, none 3.65; benches/README.md,
/// variant d). Throughput was the same with 0 and 4 KiB.
const DEFAULT_READ_BUFFER: usize = 0;
/// nginx's `client_header_timeout` is 60 s; 10 s is ample for a head of at
/// most a few KiB on any real link and frees a slowloris slot six times sooner.
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A gap between body bytes, as nginx's `client_body_timeout` (60 s there).
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn duration_or(d: &mut Diagnostics, key: &str, value: &Option<Sp<String>>, default: Duration) -> Duration {
    match value {
        None => default,
        Some(v) => match values::duration(v.get_ref()) {
            Ok(dur) => dur,
            Err(e) => {
                d.error(Some(v.span()), key, e);
                default
            }
        },
    }
}

/// A duration that must be above zero (a deadline of zero would refuse everything).
fn positive_duration(d: &mut Diagnostics, key: &str, value: &Option<Sp<String>>, default: Duration) -> Duration {
    match value {
        Some(v) if matches!(values::duration(v.get_ref()), Ok(dur) if dur.is_zero()) => {
            d.error(Some(v.span()), key, "must be above 0");
            default
        }
        _ => duration_or(d, key, value, default),
    }
}

/// The live part of `[server]`, and the part bound at start.
pub(super) fn server(d: &mut Diagnostics, f: ServerFile) -> (ServerSettings, ServerStartup) {
    let default_listen = || vec!["0.0.0.0:8080".parse().expect("literal address")];
    let listen = match &f.listen {
        None => default_listen(),
        Some(list) if list.is_empty() => {
            d.error(None, "server.listen", "needs at least one address");
            default_listen()
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match values::socket_addr(a.get_ref()) {
                Ok(addr) => Some(addr),
                Err(e) => {
                    d.error(Some(a.span()), format!("server.listen[{i}]"), e);
                    None
                }
            })
            .collect(),
    };
    let threads = match &f.threads {
        None => 2,
        Some(t) if (1..=256).contains(t.get_ref()) => *t.get_ref() as usize,
        Some(t) => {
            d.error(Some(t.span()), "server.threads", format!("{} is outside 1..=256", t.get_ref()));
            2
        }
    };
    // Off by default: one single-threaded runtime per thread did 13% more
    // requests per second than Pingora's work-stealing runtime on the load
    // benchmark (benches/README.md).
    let work_stealing = f.work_stealing.as_ref().is_some_and(|w| *w.get_ref());
    let shutdown_grace = duration_or(d, "server.shutdown_grace", &f.shutdown_grace, Duration::from_secs(30));
    let version_header = header_name(d, "server.version_header", &f.version_header);
    let version_request_header = header_name(d, "server.version_request_header", &f.version_request_header);
    let access_log = match f.access_log.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("text", _)) => AccessLogFormat::Text,
        Some(("json", _)) => AccessLogFormat::Json,
        Some(("off", _)) => AccessLogFormat::Off,
        Some((other, span)) => {
            d.error(Some(span), "server.access_log", format!("{other:?} must be \"text\", \"json\" or \"off\""));
            AccessLogFormat::Text
        }
    };
    let tls = validate_tls::server_tls(d, f.tls.as_ref(), &listen);
    let read_buffer = match &f.read_buffer {
        None => DEFAULT_READ_BUFFER,
        Some(v) => match values::size(v.get_ref()) {
            Ok(n) if n == 0 || (1024..=1 << 20).contains(&n) => n,
            Ok(n) => {
                d.error(Some(v.span()), "server.read_buffer", format!("{n} bytes: use 0 (no buffer) or 1KiB..=1MiB"));
                DEFAULT_READ_BUFFER
            }
            Err(e) => {
                d.error(Some(v.span()), "server.read_buffer", e);
                DEFAULT_READ_BUFFER
            }
        },
    };
    let normalize_path = f.normalize_path.as_ref().is_none_or(|v| *v.get_ref());
    let lean_http1 = f.lean_http1.as_ref().is_none_or(|v| *v.get_ref());
    let header_timeout = positive_duration(d, "server.header_timeout", &f.header_timeout, DEFAULT_HEADER_TIMEOUT);
    let body_timeout = positive_duration(d, "server.body_timeout", &f.body_timeout, DEFAULT_BODY_TIMEOUT);
    let proxy_protocol_from = match &f.proxy_protocol {
        None => Vec::new(),
        Some(pp) => {
            let items: Vec<Sp<String>> = pp.get_ref().from.iter().map(|c| Sp::new(pp.span(), c.clone())).collect();
            if items.is_empty() {
                d.error(Some(pp.span()), "server.proxy_protocol.from", "lists no peer; remove proxy_protocol instead");
            }
            super::validate::cidrs(d, "server.proxy_protocol.from", &items)
        }
    };
    let tls_startup = TlsStartup(tls.as_ref().map(|t| TlsBinding { listen: t.listen.clone(), http2: t.http2 }));
    let settings = ServerSettings {
        version_header,
        version_request_header,
        normalize_path,
        lean_http1,
        header_timeout,
        body_timeout,
        tls,
        proxy_protocol_from,
    };
    let startup =
        ServerStartup { listen, threads, work_stealing, shutdown_grace, access_log, read_buffer, tls: tls_startup };
    (settings, startup)
}

/// The live part of `[admin]` (its token), and its listen address.
pub(super) fn admin(d: &mut Diagnostics, f: AdminFile) -> (AdminSettings, std::net::SocketAddr) {
    let default_listen = "127.0.0.1:9900".parse().expect("literal address");
    let listen = match &f.listen {
        None => default_listen,
        Some(a) => values::socket_addr(a.get_ref()).unwrap_or_else(|e| {
            d.error(Some(a.span()), "admin.listen", e);
            default_listen
        }),
    };
    let token = f.token_file.as_ref().and_then(|tf| {
        let path = resolve(d.file(), tf.get_ref());
        d.files.note(&path);
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            Ok(_) => {
                d.error(Some(tf.span()), "admin.token_file", format!("{} is empty", path.display()));
                None
            }
            Err(e) => {
                d.error(Some(tf.span()), "admin.token_file", format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    });
    (AdminSettings { token }, listen)
}

/// An optional header name, lower-cased.
pub(super) fn header_name(d: &mut Diagnostics, key: &str, value: &Option<Sp<String>>) -> Option<HeaderName> {
    let h = value.as_ref()?;
    HeaderName::from_bytes(h.get_ref().trim().to_ascii_lowercase().as_bytes())
        .map_err(|_| d.error(Some(h.span()), key, format!("{:?} is not a valid header name", h.get_ref())))
        .ok()
}
