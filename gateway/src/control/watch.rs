//! Reload triggers that come from outside: file changes and SIGHUP.
//!
//! The watcher watches the config file's *directory*, not the file: editors
//! save by writing a new file and renaming it over the old one, and a
//! Kubernetes ConfigMap update swaps the `..data` symlink next to the file.
//! Both replace the inode a file watch would follow; a directory watch sees
//! them. Events are debounced, and the file's hash decides whether anything
//! changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::control::reload::{ReloadOutcome, Reloader};

const DEBOUNCE: Duration = Duration::from_millis(150);

pub async fn watch_config(reloader: Arc<Reloader>, mut shutdown: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let dir: PathBuf = reloader.path().parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the config file watcher; use SIGHUP or POST /api/reload");
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::error!(error = %e, dir = %dir.display(), "cannot watch the config directory; use SIGHUP or POST /api/reload");
        return;
    }
    // Renewed certificates are noticed in their own directories too.
    let mut cert_dirs = crate::tls::files::WatchedCertDirs::default();
    cert_dirs.follow(&mut watcher, &reloader.snapshots.load().config, &dir);
    loop {
        tokio::select! {
            got = rx.recv() => if got.is_none() { return },
            _ = shutdown.changed() => return,
        }
        // Let the burst of events of one save settle.
        tokio::time::sleep(DEBOUNCE).await;
        while rx.try_recv().is_ok() {}
        let r = Arc::clone(&reloader);
        let outcome = tokio::task::spawn_blocking(move || r.reload("file-watch", true)).await;
        if let Ok(ReloadOutcome::Applied { generation, .. }) = outcome {
            tracing::debug!(generation, "reloaded after a file change");
            cert_dirs.follow(&mut watcher, &reloader.snapshots.load().config, &dir);
        }
    }
}

pub async fn watch_sighup(reloader: Arc<Reloader>, mut shutdown: watch::Receiver<bool>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP");
            return;
        }
    };
    reloader.control_ready.store(true, std::sync::atomic::Ordering::Relaxed);
    // A SIGHUP that came between start and now was caught by the early handler.
    if reloader.early_hup.swap(false, std::sync::atomic::Ordering::Relaxed) {
        let r = Arc::clone(&reloader);
        let _ = tokio::task::spawn_blocking(move || r.reload("sighup", false)).await;
    }
    loop {
        tokio::select! {
            got = hup.recv() => if got.is_none() { return },
            _ = shutdown.changed() => return,
        }
        let r = Arc::clone(&reloader);
        let _ = tokio::task::spawn_blocking(move || r.reload("sighup", false)).await;
    }
}
