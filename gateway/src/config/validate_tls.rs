//! Validation of the TLS keys: `[server.tls]`, a pool's `tls`/`sni`/`verify`/
//! `ca_file`, a route's `https_redirect`. Same rules as `validate.rs`:
//! collect every error, each with its line and key.
//!
//! Certificate and key files are read and checked here, at load: a missing,
//! unparsable or expired certificate, or a key that is not the
//! certificate's, is a config error naming the file, so `gateway check`
//! catches it and a reload with it is rejected while the old certificates
//! keep serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::utils::tls::{parse_x509, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::error::Diagnostics;
use super::file::*;
use super::validate::resolve;
use super::values;
use crate::tls::certs::{date, load_pair, unix_now, PairFile};
use crate::tls::{CertSet, TlsListenerSpec, UpstreamTlsSpec};

/// `gateway check` warns about certificates that expire sooner than this.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// `[server.tls]`. `Some` whenever the section is present, even with errors
/// (they are recorded), so routes' `https_redirect` is not reported as well.
pub fn server_tls(d: &mut Diagnostics, f: Option<&Sp<TlsFile>>, plain: &[SocketAddr]) -> Option<TlsListenerSpec> {
    let section = f?;
    let span = section.span();
    let f = section.get_ref();
    if f.listen.is_empty() {
        d.error(Some(span.clone()), "server.tls.listen", "needs at least one address, e.g. [\"0.0.0.0:8443\"]");
    }
    let mut listen: Vec<SocketAddr> = Vec::new();
    for (i, a) in f.listen.iter().enumerate() {
        let key = format!("server.tls.listen[{i}]");
        match values::socket_addr(a.get_ref()) {
            Ok(addr) if plain.contains(&addr) => d.error(
                Some(a.span()),
                key,
                format!("{addr} is also in server.listen; one port serves either TLS or plain HTTP"),
            ),
            Ok(addr) if listen.contains(&addr) => d.error(Some(a.span()), key, format!("{addr} is listed twice")),
            Ok(addr) => listen.push(addr),
            Err(e) => d.error(Some(a.span()), key, e),
        }
    }
    if f.certs.is_empty() {
        d.error(Some(span), "server.tls.certs", "needs at least one { cert = \"...\", key = \"...\" }");
    }
    let now = unix_now();
    let mut entries = Vec::new();
    let mut default: Option<(usize, usize)> = None;
    for (i, c) in f.certs.iter().enumerate() {
        let key = format!("server.tls.certs[{i}]");
        let cf = c.get_ref();
        if cf.default {
            if let Some((first, _)) = default {
                d.error(
                    Some(c.span()),
                    format!("{key}.default"),
                    format!("only one certificate can be the default; certs[{first}] already is"),
                );
            }
        }
        let (cert_path, key_path) = (resolve(d.file(), &cf.cert), resolve(d.file(), &cf.key));
        d.files.note(&cert_path);
        d.files.note(&key_path);
        match load_pair(&cert_path, &key_path, now) {
            Ok(entry) => {
                if entry.names.is_empty() && !cf.default {
                    d.warn(
                        Some(c.span()),
                        format!("{key}.cert"),
                        format!(
                            "{}: lists no DNS name (subjectAltName); it can only serve as the default",
                            cert_path.display()
                        ),
                    );
                }
                if entry.not_after < now + EXPIRY_WARNING.as_secs() as i64 {
                    d.warn(
                        Some(c.span()),
                        format!("{key}.cert"),
                        format!("{}: expires on {}; renew it", cert_path.display(), date(entry.not_after)),
                    );
                }
                if cf.default && default.is_none() {
                    default = Some((i, entries.len()));
                }
                entries.push(entry);
            }
            Err(e) => {
                let field = match e.file {
                    PairFile::Cert => "cert",
                    PairFile::Key => "key",
                };
                d.error(Some(c.span()), format!("{key}.{field}"), e.message);
            }
        }
    }
    // Without a `default = true`, the first certificate listed is the default.
    let default = default.map(|(_, loaded)| loaded).unwrap_or(0);
    Some(TlsListenerSpec { listen, http2: f.http2.unwrap_or(false), certs: Arc::new(CertSet::new(entries, default)) })
}

/// A pool's TLS keys: `Some` when `tls = true`.
pub fn upstream(d: &mut Diagnostics, key: &str, f: &UpstreamFile) -> Option<UpstreamTlsSpec> {
    let on = f.tls.as_ref().is_some_and(|t| *t.get_ref());
    if !on {
        let set = [
            ("sni", f.sni.as_ref().map(|v| v.span())),
            ("verify", f.verify.as_ref().map(|v| v.span())),
            ("ca_file", f.ca_file.as_ref().map(|v| v.span())),
        ];
        for (name, span) in set {
            if let Some(span) = span {
                d.error(Some(span), format!("{key}.{name}"), "only applies with tls = true");
            }
        }
        return None;
    }
    let sni = f.sni.as_ref().and_then(|s| {
        let name = s.get_ref().trim().trim_end_matches('.').to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            && !name.split('.').any(str::is_empty);
        if !valid {
            d.error(Some(s.span()), format!("{key}.sni"), format!("{:?} is not a host name", s.get_ref()));
        }
        valid.then_some(name)
    });
    let verify = f.verify.as_ref().is_none_or(|v| *v.get_ref());
    if let Some(v) = f.verify.as_ref().filter(|v| !*v.get_ref()) {
        d.warn(
            Some(v.span()),
            format!("{key}.verify"),
            "false: the backends' certificates are not checked; anyone on the path can impersonate them",
        );
    }
    let mut ca = None;
    let mut ca_file = None;
    if let Some(file) = &f.ca_file {
        let path = resolve(d.file(), file.get_ref());
        d.files.note(&path);
        match read_ca_file(&path) {
            Ok(list) => ca = Some(list),
            Err(e) => d.error(Some(file.span()), format!("{key}.ca_file"), format!("{}: {e}", path.display())),
        }
        if !verify {
            d.warn(Some(file.span()), format!("{key}.ca_file"), "is not used with verify = false");
        }
        ca_file = Some(path);
    }
    let ca_key = ca.as_ref().map_or(0, |list: &Arc<[WrappedX509]>| {
        let ders: Vec<u8> = list.iter().flat_map(|c| c.borrow_raw_cert().iter().copied()).collect();
        xxhash_rust::xxh3::xxh3_64(&ders)
    });
    Some(UpstreamTlsSpec { sni, verify, ca, ca_file, ca_key })
}

/// A `ca_file` checked like an upstream's, returned as the PEM bytes (the
/// cluster store's client takes PEM).
pub fn read_ca_pem(path: &std::path::Path) -> Result<Vec<u8>, String> {
    read_ca_file(path)?;
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

/// The PEM certificates of a `ca_file`, each checked to be X.509.
fn read_ca_file(path: &std::path::Path) -> Result<Arc<[WrappedX509]>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if ders.is_empty() {
        return Err("no PEM certificate (\"BEGIN CERTIFICATE\") found".to_string());
    }
    let mut out = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        // Checked here because Pingora's `parse_x509` below panics on bad DER.
        x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("certificate #{} is not valid X.509: {e}", i + 1))?;
        out.push(WrappedX509::new(der.to_vec(), parse_x509));
    }
    Ok(out.into())
}

/// A route's `https_redirect`; needs a TLS listener to redirect to.
pub fn https_redirect(d: &mut Diagnostics, key: &str, v: &Option<Sp<bool>>, has_tls: bool) -> bool {
    let Some(v) = v else { return false };
    if *v.get_ref() && !has_tls {
        d.error(Some(v.span()), format!("{key}.https_redirect"), "needs a [server.tls] listener to redirect to");
        return false;
    }
    *v.get_ref()
}
