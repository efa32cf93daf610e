//! Server certificates: reading and checking a certificate/key pair, and
//! choosing one for a handshake by SNI.
//!
//! Everything here runs at config load (start, `gateway check`, reload), off
//! the request path. A problem is returned as a [`CertError`] that says
//! which of the two files it is about, so validation can point at it; nothing
//! panics on a bad file.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// Which file of a pair a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairFile {
    Cert,
    Key,
}

/// Why a certificate/key pair cannot be served; `message` names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    pub file: PairFile,
    pub message: String,
}

impl CertError {
    fn cert(path: &Path, what: impl fmt::Display) -> Self {
        Self { file: PairFile::Cert, message: format!("{}: {what}", path.display()) }
    }

    fn key(path: &Path, what: impl fmt::Display) -> Self {
        Self { file: PairFile::Key, message: format!("{}: {what}", path.display()) }
    }
}

/// One certificate chain with its key, checked and ready for handshakes.
#[derive(Clone)]
pub struct CertEntry {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Lower-case DNS names from the certificate's subjectAltName, wildcards
    /// (`*.example.com`) as written. These are the SNI names it is served for.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
    /// Hex, colon-separated, as `openssl x509 -serial` prints it (lower case).
    pub serial: String,
    pub key: Arc<CertifiedKey>,
    /// SHA-256 of the certificate and key files' bytes as read: a reload
    /// compares it to tell a renewed certificate from an unchanged one.
    pub fingerprint: String,
}

impl fmt::Debug for CertEntry {
    /// Never prints key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertEntry")
            .field("cert_path", &self.cert_path)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Unix seconds as an RFC 3339 date, for messages.
pub fn date(unix: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// SHA-256 (hex) of a certificate file's and a key file's bytes.
pub fn pair_fingerprint(cert: &[u8], key: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_be_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Read and check one certificate chain (PEM, leaf first) and its private
/// key (PEM, PKCS#8, PKCS#1 or SEC1). Called at every config load; `now` is
/// Unix seconds, a parameter so tests can move the clock.
///
/// Refused: unreadable files, no certificate or no key in them, a leaf that
/// is not X.509, a leaf already expired or not yet valid, a key rustls cannot
/// sign with, and a key that does not belong to the leaf.
pub fn load_pair(cert_path: &Path, key_path: &Path, now: i64) -> Result<CertEntry, CertError> {
    let cert_pem = std::fs::read(cert_path).map_err(|e| CertError::cert(cert_path, format!("cannot read: {e}")))?;
    let key_pem = std::fs::read(key_path).map_err(|e| CertError::key(key_path, format!("cannot read: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::cert(cert_path, format!("not a PEM certificate file: {e}")))?;
    let Some(leaf_der) = chain.first() else {
        return Err(CertError::cert(cert_path, "no PEM certificate (\"BEGIN CERTIFICATE\") found"));
    };
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der.as_ref())
        .map_err(|e| CertError::cert(cert_path, format!("the first certificate is not valid X.509: {e}")))?;
    let validity = leaf.validity();
    if validity.not_after.timestamp() < now {
        return Err(CertError::cert(
            cert_path,
            format!("the certificate expired on {}", date(validity.not_after.timestamp())),
        ));
    }
    if validity.not_before.timestamp() > now {
        return Err(CertError::cert(
            cert_path,
            format!("the certificate is not valid before {}", date(validity.not_before.timestamp())),
        ));
    }
    let names = dns_names(&leaf).map_err(|e| CertError::cert(cert_path, e))?;
    let serial = leaf.raw_serial_as_string();
    let not_after = validity.not_after.timestamp();

    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => CertError::key(key_path, "no PEM private key found"),
        other => CertError::key(key_path, format!("not a PEM private key file: {other}")),
    })?;
    let signing_key = default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| CertError::key(key_path, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Unknown: the key type cannot report its public half; the handshake will tell.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(CertError::key(
                key_path,
                format!("this key does not belong to the certificate in {}", cert_path.display()),
            ));
        }
        Err(e) => return Err(CertError::cert(cert_path, format!("cannot compare with the key: {e}"))),
    }
    Ok(CertEntry {
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
        names,
        not_after,
        serial,
        key: Arc::new(certified),
        fingerprint: pair_fingerprint(&cert_pem, &key_pem),
    })
}

fn dns_names(leaf: &x509_parser::certificate::X509Certificate<'_>) -> Result<Vec<String>, String> {
    let san = leaf.subject_alternative_name().map_err(|e| format!("unreadable subjectAltName: {e}"))?;
    let mut names: Vec<String> = Vec::new();
    for general in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let GeneralName::DNSName(name) = general {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// The certificates of the TLS listener and the SNI index over them.
///
/// Immutable: a reload builds a new set and swaps it into the resolver.
#[derive(Debug, Default)]
pub struct CertSet {
    pub entries: Vec<CertEntry>,
    /// Index of the certificate for clients without SNI or with a name no
    /// certificate covers; `None` only for the empty set.
    default: Option<usize>,
    exact: HashMap<String, usize>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, usize>,
}

impl CertSet {
    /// Index `entries` by their names. When two certificates cover the same
    /// name, the first listed wins. `default` must index into `entries`
    /// (validation guarantees it).
    pub fn new(entries: Vec<CertEntry>, default: usize) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            for name in &e.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        let default = (default < entries.len()).then_some(default);
        Self { entries, default, exact, wildcard }
    }

    /// The certificate for a handshake that asked for `sni`: an exact name,
    /// else a wildcard one label up (`*.example.com` covers `a.example.com`,
    /// not `example.com` or `a.b.example.com`), else the default.
    pub fn pick(&self, sni: Option<&str>) -> Option<&CertEntry> {
        let by_name = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()).and_then(|name| {
            self.exact.get(&name).or_else(|| name.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)))
        });
        by_name.or(self.default.as_ref()).and_then(|&i| self.entries.get(i))
    }

    pub fn default_entry(&self) -> Option<&CertEntry> {
        self.default.and_then(|i| self.entries.get(i))
    }

    /// What the files looked like when this set was loaded (see [`CertEntry::fingerprint`]).
    pub fn fingerprint(&self) -> String {
        self.entries.iter().map(|e| e.fingerprint.as_str()).collect::<Vec<_>>().join(",")
    }
}
