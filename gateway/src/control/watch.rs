//! Reload triggers that come from outside: file changes and SIGHUP.
//!
//! The watcher watches the config file's *directory*, not the file: editors
//! save by writing a new file and renaming it over the old one, and a
//! Kubernetes ConfigMap update swaps the `..data` symlink next to the file.
//! Both replace the inode a file watch would follow; a directory watch sees
//! them. The directories of every other file the config's load read (pages,
//! list files, certificates, keys) are watched the same way. Events are
//! debounced, and the config's hash and the file record decide whether
//! anything changed.

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
    // Renewed certificates, edited pages and lists are noticed in their own directories too.
    let mut dirs = WatchedDirs::default();
    dirs.follow(&mut watcher, &reloader.snapshots.load().files, &dir);
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
            dirs.follow(&mut watcher, &reloader.snapshots.load().files, &dir);
        }
    }
}

/// The directories the watcher watches besides the config's own.
#[derive(Debug, Default)]
struct WatchedDirs {
    dirs: Vec<PathBuf>,
}

impl WatchedDirs {
    /// Watch the directories of the files a load read. Runs at start and
    /// after every reload; directories are only ever added (a stray event
    /// from an old one costs one comparison). Directories, not files: a
    /// renewal that renames a new file over the old one, or a Kubernetes
    /// Secret update (a `..data` symlink swap), replaces the inode a file
    /// watch would follow.
    fn follow<W: Watcher>(&mut self, watcher: &mut W, files: &crate::config::files::FileRecord, config_dir: &Path) {
        let skip = std::fs::canonicalize(config_dir).unwrap_or_else(|_| config_dir.to_path_buf());
        for dir in files.dirs() {
            let Ok(dir) = std::fs::canonicalize(&dir) else { continue };
            if dir == skip || self.dirs.contains(&dir) {
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), "watching a directory the config reads files from");
                    self.dirs.push(dir);
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    dir = %dir.display(),
                    "cannot watch a directory the config reads files from; edits there need SIGHUP or POST /api/reload"
                ),
            }
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
