//! Noticing renewed certificate files.
//!
//! A certificate renewed on disk (certbot, cert-manager, a Secret update)
//! leaves the config text as it was, so the config hash alone would call the
//! reload "unchanged". The reload also compares the bytes of the certificate
//! files the text names with those the running config loaded, and the file
//! watcher also watches the directories those files live in.

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher};

use super::certs::pair_fingerprint;
use crate::config::{resolve, GatewayConfig};

/// The (certificate, key) paths `[server.tls] certs` names in a config text,
/// resolved against the config file. Empty when the text has no TLS section
/// or does not parse (validation reports that).
pub fn cert_paths(config_path: &Path, text: &str) -> Vec<(PathBuf, PathBuf)> {
    let Ok(root) = toml::from_str::<toml::Table>(text) else {
        return Vec::new();
    };
    let certs = root.get("server").and_then(|s| s.get("tls")).and_then(|t| t.get("certs")).and_then(|c| c.as_array());
    certs
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let cert = item.get("cert")?.as_str()?;
            let key = item.get("key")?.as_str()?;
            Some((resolve(config_path, cert), resolve(config_path, key)))
        })
        .collect()
}

/// The certificate files named by `text` as they are on disk now, in the
/// form of [`CertSet::fingerprint`](super::CertSet::fingerprint): equal to
/// the running config's when nothing was renewed. Runs on each watcher event
/// and reload, before validation; reads a few small files.
pub fn files_fingerprint(config_path: &Path, text: &str) -> String {
    cert_paths(config_path, text)
        .iter()
        .map(|(cert, key)| match (std::fs::read(cert), std::fs::read(key)) {
            (Ok(c), Ok(k)) => pair_fingerprint(&c, &k),
            _ => "unreadable".to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The fingerprint of the certificate files as the config in use loaded them.
pub fn loaded_fingerprint(config: &GatewayConfig) -> String {
    config.server.tls.as_ref().map(|t| t.certs.fingerprint()).unwrap_or_default()
}

/// The certificate directories the file watcher watches besides the config's own.
#[derive(Debug, Default)]
pub struct WatchedCertDirs {
    dirs: Vec<PathBuf>,
}

impl WatchedCertDirs {
    /// Watch the directories of the certificate files `config` names. Runs at
    /// start and after every reload; directories are only ever added (a
    /// stray event from an old one costs one comparison). The config's own
    /// directory is watched already and skipped. Directories, not files: a
    /// renewal that writes a new file and renames it over the old one, or a
    /// Kubernetes Secret update (a `..data` symlink swap), replaces the inode a
    /// file watch would follow.
    pub fn follow<W: Watcher>(&mut self, watcher: &mut W, config: &GatewayConfig, config_dir: &Path) {
        let Some(tls) = &config.server.tls else { return };
        let skip = std::fs::canonicalize(config_dir).unwrap_or_else(|_| config_dir.to_path_buf());
        for entry in &tls.certs.entries {
            for file in [&entry.cert_path, &entry.key_path] {
                let Some(dir) = file.parent().and_then(|d| std::fs::canonicalize(d).ok()) else { continue };
                if dir == skip || self.dirs.contains(&dir) {
                    continue;
                }
                match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        tracing::info!(dir = %dir.display(), "watching the certificate directory");
                        self.dirs.push(dir);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the certificate directory; renewals need SIGHUP or POST /api/reload")
                    }
                }
            }
        }
    }
}
