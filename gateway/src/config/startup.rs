//! Settings bound when the process starts, apart from the ones that apply
//! live. The types say which is which: a field of [`StartupSettings`] (or of
//! a section nested in it) is bound at start; everything else in the
//! config applies on reload. `restart_needed` is `StartupSettings::changed`,
//! generated from the same field list, so a new startup field cannot be
//! forgotten in it.
//!
//! A reload that changes a startup field keeps the value in force (the new
//! snapshot carries the started settings) and reports the key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::model::AccessLogFormat;

/// Declares a settings struct whose fields each name their config key, and
/// `changed`, the keys whose value differs between two of them. `nested`
/// fields are settings structs of their own, compared key by key.
macro_rules! bound_at_start {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $key:literal => $field:ident : $ty:ty, )*
            $( nested $(#[$nmeta:meta])* $nfield:ident : $nty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            $( $(#[$nmeta])* pub $nfield: $nty, )*
        }

        impl $name {
            /// The config keys whose value differs between `self` (in force) and `other`.
            pub fn changed(&self, other: &Self) -> Vec<&'static str> {
                #[allow(unused_mut)]
                let mut out: Vec<&'static str> = Vec::new();
                $( if self.$field != other.$field { out.push($key); } )*
                $( out.extend(self.$nfield.changed(&other.$nfield)); )*
                out
            }
        }
    };
}

bound_at_start! {
    /// What the process binds at start: sockets, threads, files, the log format.
    pub struct StartupSettings {
        "admin.listen" => admin_listen: SocketAddr,
        /// The run-time state file (blocks added through the API, degrade level).
        "state.path" => state_path: PathBuf,
        /// `[cluster]` as a whole: the store connection is made once.
        "cluster" => cluster: Option<super::model::ClusterSpec>,
        nested server: ServerStartup,
        nested shadow_store: ShadowStoreSpec,
    }
}

bound_at_start! {
    /// The part of `[server]` bound at start.
    pub struct ServerStartup {
        "server.listen" => listen: Vec<SocketAddr>,
        "server.threads" => threads: usize,
        /// Off: each proxy thread runs its own single-threaded runtime and keeps
        /// the connections it accepted (nginx's worker model).
        "server.work_stealing" => work_stealing: bool,
        "server.shutdown_grace" => shutdown_grace: Duration,
        /// The subscriber's format is set up once; `off` is honoured at start too,
        /// so a reload never leaves the log in a state the key does not say.
        "server.access_log" => access_log: AccessLogFormat,
        /// Bytes of the per-connection read buffer.
        "server.read_buffer" => read_buffer: usize,
        nested tls: TlsStartup,
    }
}

/// The part of `[server.tls]` bound at start; `None` without the section.
/// A listener added or removed is one change, `server.tls`, not one per key
/// of it.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsStartup(pub Option<TlsBinding>);

impl TlsStartup {
    /// The config keys whose value differs between `self` (in force) and `other`.
    pub fn changed(&self, other: &Self) -> Vec<&'static str> {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => a.changed(b),
            (None, None) => Vec::new(),
            _ => vec!["server.tls"],
        }
    }
}

bound_at_start! {
    /// A TLS listener's sockets and what they offer by ALPN. Certificates
    /// apply live.
    pub struct TlsBinding {
        "server.tls.listen" => listen: Vec<SocketAddr>,
        "server.tls.http2" => http2: bool,
    }
}

bound_at_start! {
    /// `[shadow]`: the diff store, opened once.
    pub struct ShadowStoreSpec {
        "shadow.store" => path: PathBuf,
        /// `max_age` and `max_records` together.
        "shadow.max_age/max_records" => retention: crate::shadow::Retention,
        "shadow.queue" => queue: usize,
        /// At most this many records stored per second per route and outcome.
        "shadow.store_per_second" => store_per_second: u32,
        "shadow.max_stored_body" => max_stored_body: usize,
        "shadow.redact_headers" => redact_headers: Vec<String>,
    }
}
