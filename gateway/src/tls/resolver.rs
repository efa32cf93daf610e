//! The listener's certificate resolver: the current [`CertSet`] behind an
//! `ArcSwap`, so a reload can renew certificates without a restart.
//!
//! rustls asks [`CertResolver::resolve`] once per handshake. A reload stores
//! a new set with [`CertResolver::install`]; handshakes after the store get
//! the new certificates, connections already established keep the session
//! they negotiated and are not touched.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::{IntGaugeVec, Opts, Registry};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::CertSet;
use super::TlsListenerSpec;

pub struct CertResolver {
    current: ArcSwap<CertSet>,
    /// `gateway_tls_certificate_expiry_timestamp_seconds{name}`, one series per certificate file.
    expiry: IntGaugeVec,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver").field("current", &self.current.load()).finish_non_exhaustive()
    }
}

impl CertResolver {
    /// Made once at start with the config's certificates (an empty set when
    /// the config has no `[server.tls]`); registers the expiry metric.
    pub fn new(registry: &Registry, initial: Option<&TlsListenerSpec>) -> Arc<Self> {
        let expiry = IntGaugeVec::new(
            Opts::new(
                "gateway_tls_certificate_expiry_timestamp_seconds",
                "When each served certificate expires (Unix seconds), by certificate file",
            ),
            &["name"],
        )
        .expect("static metric definition is valid");
        if let Err(e) = registry.register(Box::new(expiry.clone())) {
            tracing::warn!(error = %e, "cannot register the certificate expiry metric");
        }
        let resolver = Arc::new(Self { current: ArcSwap::from_pointee(CertSet::default()), expiry });
        if let Some(spec) = initial {
            resolver.install(Arc::clone(&spec.certs));
        }
        resolver
    }

    /// Serve `set` to new handshakes from now on. Called after a reload was
    /// accepted as a whole, so a rejected config never reaches here.
    pub fn install(&self, set: Arc<CertSet>) {
        self.expiry.reset();
        for e in &set.entries {
            self.expiry.with_label_values(&[&e.cert_path.display().to_string()]).set(e.not_after);
        }
        let changed = self.current.load().fingerprint() != set.fingerprint();
        self.current.store(Arc::clone(&set));
        if changed {
            for e in &set.entries {
                tracing::info!(cert = %e.cert_path.display(), serial = %e.serial, names = ?e.names, "serving certificate");
            }
        }
    }

    /// Follow a newly applied config. A config without `[server.tls]` keeps
    /// the certificates serving: the listener itself lives until a restart.
    pub fn follow(&self, spec: Option<&TlsListenerSpec>) {
        if let Some(spec) = spec {
            self.install(Arc::clone(&spec.certs));
        }
    }

    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    /// Runs in every handshake: a lock-free load and at most two map lookups.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.load();
        set.pick(hello.server_name()).map(|e| Arc::clone(&e.key))
    }
}
