//! The deployment artifacts under deploy/ agree with the gateway they deploy:
//! the Prometheus rules parse and pass their unit tests (every alert fires in
//! one case and stays silent in another), the alerts and the dashboard only
//! use metrics the gateway exports, every alert's text names `/api/status`
//! fields a live gateway really shows, the Kubernetes config is accepted by
//! `gateway check` and keeps its state out of the read-only ConfigMap volume,
//! and the systemd unit and Dockerfile keep their signal and user contracts.
//! (deploy_systemd_install follows the README's systemd steps end to end.)
//!
//! `promtool` comes from Debian's `prometheus` package (`deploy/dev.sh setup`
//! installs it). Without it the promtool tests are skipped locally, but fail
//! when the `CI` environment variable is set.
//!
//! One test binary; each module does one thing: `alerts` (rules, their unit
//! tests, the status fields their texts name), `metrics` (the dashboard and
//! the names both use against a live scrape), `manifests` (the ConfigMap, the
//! Kubernetes, systemd and Docker contracts).

#[path = "../common/mod.rs"]
mod common;

mod alerts;
mod manifests;
mod metrics;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("integration-tests lives in the workspace root").to_path_buf()
}

pub(crate) fn read_repo_file(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

/// `promtool` from PATH. `None` (with a message) when it is missing on a
/// developer machine; a panic when it is missing in CI.
pub(crate) fn promtool(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("promtool")).find(|p| p.is_file()));
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: promtool is not installed, and CI is set; install Debian's `prometheus` package (deploy/dev.sh setup)");
        }
        eprintln!(
            "SKIPPED {test}: promtool is not installed (apt-get install prometheus, or deploy/dev.sh setup); \
             with CI set this is a failure"
        );
    }
    found
}

pub(crate) fn run_promtool(promtool: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(repo_root())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("promtool stdin is piped");
        pipe.write_all(input).expect("write to promtool's stdin");
        // Dropping the pipe closes it: promtool reads until EOF.
    }
    child.wait_with_output().expect("wait for promtool")
}

pub(crate) fn output_text(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
