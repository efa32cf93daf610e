//! Headless Chromium (Debian's `chromium`) for the tests of the admin pages.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Debian's `chromium` on PATH.
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("chromium")).find(|p| p.is_file())
}

/// Runs headless chromium on `url` with `args` (`--dump-dom` or `--screenshot=...`); its stdout.
pub async fn browse(bin: &Path, scratch: &Path, args: &[String], url: &str) -> String {
    let profile = tempfile::Builder::new().prefix("chromium-").tempdir_in(scratch).expect("profile dir");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("chromium finishes within 2 minutes")
        .expect("run chromium");
    assert!(out.status.success(), "chromium failed on {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
