//! deploy/README.md's systemd steps, followed in a temp root: the line of the
//! README's block that runs `deploy/systemd/install.sh` is run as written,
//! with `--root <temp>` (and the test build's binary), then the installed
//! gateway is started the way the installed unit starts it: its
//! `ExecStartPre` (`gateway check`) must pass, its `ExecStart` must become
//! ready and proxy, and everything it writes (the state file, the shadow diff
//! store) must land in `var/lib/gateway` while `etc/gateway`, read-only under
//! the unit's `ProtectSystem=strict`, stays untouched. SIGTERM (`systemctl
//! stop`) must end it cleanly within the unit's `TimeoutStopSec`.
//!
//! The steps come from the README itself, so the README and this test cannot
//! drift apart: change the block and this test runs the new one.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{free_addr, gateway_bin, http_client, is_listening, temp_dir, wait_until, Backend};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("integration-tests lives in the workspace root").to_path_buf()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

/// The lines of the first fenced block under the `## systemd` heading.
fn systemd_block(readme: &str) -> Vec<String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("systemd\n"))
        .expect("deploy/README.md has a `## systemd` section");
    let mut lines = section.lines().skip_while(|l| !l.starts_with("```")).skip(1);
    let block: Vec<String> = lines.by_ref().take_while(|l| !l.starts_with("```")).map(str::to_string).collect();
    assert!(!block.is_empty(), "the `## systemd` section of deploy/README.md has no fenced block:\n{section}");
    block
}

/// The block's `install.sh` line as words, without `sudo` and the comment.
fn install_line(block: &[String]) -> Vec<String> {
    let runs: Vec<Vec<String>> = block
        .iter()
        .map(|l| l.split('#').next().unwrap_or("").split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .map(|words| if words.first().map(String::as_str) == Some("sudo") { words[1..].to_vec() } else { words })
        .filter(|words| words.first().is_some_and(|w| w.ends_with("deploy/systemd/install.sh")))
        .collect();
    assert_eq!(
        runs.len(),
        1,
        "deploy/README.md's systemd steps should run deploy/systemd/install.sh exactly once \
         (it installs the whole config directory and the state directory):\n{}",
        block.join("\n")
    );
    runs.into_iter().next().unwrap_or_default()
}

/// Runs the README's install line from the repository root, into `root`.
fn run_install(words: &[String], root: &Path) {
    let script = repo_root().join(&words[0]);
    let out = Command::new("bash")
        .arg(&script)
        .args(&words[1..])
        .arg("--root")
        .arg(root)
        // The README builds target/release/gateway; the tests run the debug build.
        .arg("--binary")
        .arg(gateway_bin())
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .expect("run deploy/systemd/install.sh");
    assert!(
        out.status.success(),
        "{} {} --root {} failed: {}\n{}{}",
        script.display(),
        words[1..].join(" "),
        root.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir`, relative, with its bytes; symlinks as their target.
/// Not followed, so a link to the state directory is one entry.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|err| panic!("list {}: {err}", dir.display())) {
            let path = entry.expect("directory entry").path();
            let relative = path.strip_prefix(base).expect("under base").to_path_buf();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).expect("read link");
                out.insert(relative, format!("-> {}", target.display()).into_bytes());
            } else if meta.is_dir() {
                walk(base, &path, out);
            } else {
                out.insert(relative, fs::read(&path).expect("read file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// `Key=value` settings of a unit file (comments skipped).
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .collect()
}

/// A unit command line with its absolute paths moved under `root`.
fn rooted_command(line: &str, root: &Path) -> Command {
    let words: Vec<PathBuf> = line
        .split_whitespace()
        .map(|w| match w.strip_prefix('/') {
            Some(rest) => root.join(rest),
            None => PathBuf::from(w),
        })
        .collect();
    let mut command = Command::new(&words[0]);
    command.args(&words[1..]).stdin(Stdio::null());
    command
}

/// The operator's edit after installing ("your upstreams and routes"): the
/// listeners on free test addresses, each pool's backends on a test backend.
/// Section-aware, and every replacement must happen exactly once.
fn point_config_at(config: &str, listen: SocketAddr, admin: SocketAddr, pools: &[(&str, SocketAddr)]) -> String {
    let mut section = String::new();
    let mut done: Vec<String> = Vec::new();
    let mut out = String::new();
    for line in config.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed.trim_matches(['[', ']']).to_string();
        }
        let replacement = if trimmed.starts_with("listen =") && section == "server" {
            Some(format!("listen = [\"{listen}\"]"))
        } else if trimmed.starts_with("listen =") && section == "admin" {
            Some(format!("listen = \"{admin}\""))
        } else if trimmed.starts_with("backends =") {
            let pool = section.strip_prefix("upstreams.").unwrap_or("");
            pools.iter().find(|(name, _)| *name == pool).map(|(_, addr)| format!("backends = [\"{addr}\"]"))
        } else {
            None
        };
        match replacement {
            Some(new) => {
                done.push(section.clone());
                out.push_str(&new);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    let mut expected: Vec<String> = ["server", "admin"].iter().map(|s| s.to_string()).collect();
    expected.extend(pools.iter().map(|(name, _)| format!("upstreams.{name}")));
    let (mut got, mut want) = (done.clone(), expected.clone());
    got.sort();
    want.sort();
    assert_eq!(got, want, "the installed gateway.toml no longer has the sections this test edits:\n{config}");
    out
}

/// The installed gateway process; killed on drop if still running.
struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the gateway") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_systemd_steps_install_a_gateway_that_starts_serves_and_writes_only_its_state_dir() {
    let repo = repo_root();
    let block = systemd_block(&read(&repo.join("deploy/README.md")));
    let install = install_line(&block);
    let scratch = temp_dir();
    let root = scratch.path().join("root");
    fs::create_dir(&root).expect("create the temp root");
    run_install(&install, &root);

    // What was installed: the binary, the whole config directory, the unit.
    let bin = root.join("usr/local/bin/gateway");
    let mode = fs::metadata(&bin).unwrap_or_else(|err| panic!("{}: {err}", bin.display())).permissions().mode();
    assert!(mode & 0o111 != 0, "{} is not executable ({mode:o})", bin.display());
    let etc = root.join("etc/gateway");
    let installed = tree(&etc);
    for (file, bytes) in tree(&repo.join("config")) {
        if file.starts_with("state") {
            continue; // a developer's `gateway demo` state, never shipped
        }
        assert_eq!(
            installed.get(&file),
            Some(&bytes),
            "config/{} was not installed as etc/gateway/{0} (installed: {:?})",
            file.display(),
            installed.keys().collect::<Vec<_>>()
        );
    }
    let unit_path = root.join("etc/systemd/system/gateway.service");
    let unit = read(&unit_path);
    assert_eq!(unit, read(&repo.join("deploy/systemd/gateway.service")), "the installed unit differs from deploy/");
    assert_eq!(unit_values(&unit, "StateDirectory"), ["gateway"], "the unit must own /var/lib/gateway");
    let state_dir = root.join("var/lib/gateway");
    assert!(state_dir.is_dir(), "{} was not created", state_dir.display());

    // The operator's edit: upstreams on test backends, listeners on free addresses.
    let pools = [("cart-v1", "cart-v1"), ("cart-v2", "cart-v2"), ("reco-v1", "reco-v1")];
    let mut backends = Vec::new();
    for (_, name) in pools {
        backends.push(Backend::start(name).await);
    }
    let pool_addrs: Vec<(&str, SocketAddr)> = pools.iter().zip(&backends).map(|((p, _), b)| (*p, b.addr())).collect();
    let (listen, admin) = (free_addr(), free_addr());
    let config_path = etc.join("gateway.toml");
    fs::write(&config_path, point_config_at(&read(&config_path), listen, admin, &pool_addrs))
        .expect("edit the installed config");
    let config_before = tree(&etc);

    // ExecStartPre: `gateway check` on the installed config.
    let pre = unit_values(&unit, "ExecStartPre");
    assert_eq!(pre.len(), 1, "one ExecStartPre (the check): {pre:?}");
    let out = rooted_command(pre[0], &root).output().expect("run ExecStartPre");
    assert!(
        out.status.success(),
        "ExecStartPre `{}` fails on the installed layout: {}\n{}{}",
        pre[0],
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // ExecStart, in the unit's WorkingDirectory.
    let start = unit_values(&unit, "ExecStart");
    assert_eq!(start.len(), 1, "one ExecStart: {start:?}");
    let workdir = unit_values(&unit, "WorkingDirectory");
    let cwd = workdir.first().map_or(root.clone(), |d| root.join(d.trim_start_matches('/')));
    let log = scratch.path().join("gateway.log");
    let log_file = fs::File::create(&log).expect("create the log");
    let child = rooted_command(start[0], &root)
        .current_dir(&cwd)
        .stdout(log_file.try_clone().expect("clone the log handle"))
        .stderr(log_file)
        .spawn()
        .expect("start ExecStart");
    let mut service = Service { child, log };

    let client = http_client();
    let ready = wait_until(
        || async {
            let probe = client.get(format!("http://{admin}/readyz")).timeout(Duration::from_secs(1)).send().await;
            // Ready, and the proxy listener bound: Pingora announces Running
            // while it may still be binding (see Gateway::wait_ready).
            probe.is_ok_and(|r| r.status() == 200) && is_listening(listen)
        },
        Duration::from_secs(30),
    )
    .await;
    assert!(ready, "the installed gateway never answered /readyz 200:\n{}", service.log_tail());

    // Proxied as the sample config says: user 7 is in the stable cohort,
    // 1001 a whitelisted tester on the canary.
    for (user, backend, version) in [("7", "cart-v1", "stable"), ("1001", "cart-v2", "canary")] {
        let resp = client
            .get(format!("http://{listen}/cart/items"))
            .header("x-user-id", user)
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET /cart/items: {err}\n{}", service.log_tail()));
        assert_eq!(resp.status(), 200, "user {user}:\n{}", service.log_tail());
        let header = resp.headers().get("x-gateway-version").and_then(|v| v.to_str().ok()).map(str::to_string);
        assert_eq!(header.as_deref(), Some(version), "user {user}'s version header");
        let body: Value = resp.json().await.expect("the backend's JSON echo");
        assert_eq!(body["backend"], backend, "user {user} reached {}", body["backend"]);
    }

    // A run-time block is written to the state file, in the state directory.
    let resp = client
        .post(format!("http://{admin}/api/blacklist"))
        .json(&serde_json::json!({"cidr": "198.51.100.7", "reason": "deploy test"}))
        .send()
        .await
        .expect("POST /api/blacklist");
    assert_eq!(
        resp.status(),
        201,
        "POST /api/blacklist: {}\n{}",
        resp.text().await.unwrap_or_default(),
        service.log_tail()
    );
    let state_file = state_dir.join("gateway-state.json");
    let state = fs::read_to_string(&state_file)
        .unwrap_or_else(|err| panic!("{}: {err}\n{}", state_file.display(), service.log_tail()));
    assert!(state.contains("198.51.100.7"), "the block is not in {}:\n{state}", state_file.display());
    // The sample shadows the cart route: its diff store is there too.
    let store = state_dir.join("diffs.sqlite");
    assert!(
        wait_until(|| async { store.is_file() }, Duration::from_secs(10)).await,
        "no shadow diff store at {}:\n{}",
        store.display(),
        service.log_tail()
    );
    assert_eq!(tree(&etc), config_before, "the gateway wrote into its config directory {}", etc.display());

    // systemctl stop: SIGTERM drains and exits within TimeoutStopSec.
    let stop = unit_values(&unit, "TimeoutStopSec");
    let stop_secs: u64 =
        stop.first().and_then(|v| v.trim_end_matches('s').parse().ok()).expect("TimeoutStopSec in seconds");
    // SAFETY: kill(2) on the child's pid, which is still ours to signal (not reaped).
    let rc = unsafe { libc::kill(service.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "send SIGTERM");
    let status = service.wait_exit(Duration::from_secs(stop_secs)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "after SIGTERM: {status:?} within TimeoutStopSec={stop_secs}s\n{}",
        service.log_tail()
    );
}

#[test]
fn the_install_line_is_found_with_sudo_and_comments() {
    let block: Vec<String> = [
        "cargo build --release -p gateway",
        "sudo deploy/systemd/install.sh   # all of it",
        "sudo systemctl enable --now gateway",
    ]
    .map(String::from)
    .into();
    assert_eq!(install_line(&block), ["deploy/systemd/install.sh"]);
}

#[test]
#[should_panic(expected = "should run deploy/systemd/install.sh exactly once")]
fn a_block_that_installs_only_gateway_toml_is_refused() {
    // The steps deploy/README.md gave before install.sh existed.
    let block: Vec<String> = [
        "sudo install -m 0755 target/release/gateway /usr/local/bin/gateway",
        "sudo install -m 0644 config/gateway.toml /etc/gateway/gateway.toml",
    ]
    .map(String::from)
    .into();
    install_line(&block);
}
