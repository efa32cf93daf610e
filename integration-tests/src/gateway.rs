//! The real gateway binary, run as a child process with its own config dir.
//!
//! Tests go through the same entry point an operator uses (`gateway run -c`),
//! so CLI parsing, config loading, signal handling and file watching are all
//! covered, not just the library.

use std::fs::{self, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::binary::{free_addr_pair, gateway_bin, temp_dir};
use crate::config_files;

/// How long a gateway may take to report ready: a debug build on a busy
/// 2-core machine can be slow to start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const GENERATION_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// A running `gateway run -c <dir>/<file>`; killed (SIGKILL) and reaped on
/// drop. Its stdout and stderr go to `<dir>/gateway.log`, whose tail is
/// printed whenever a helper gives up or the test panics.
pub struct Gateway {
    child: Child,
    exited: Option<ExitStatus>,
    dir: TempDir,
    config_path: PathBuf,
    file_name: String,
    configmap_swaps: Option<u32>,
    listen: SocketAddr,
    admin: SocketAddr,
    log_path: PathBuf,
    admin_token: Option<String>,
    client: reqwest::Client,
    log_shown: AtomicBool,
}

impl Gateway {
    /// Writes `config` (placeholders `{listen}`, `{admin}`, `{dir}` filled in)
    /// to `gateway.toml` in a fresh temp dir, starts the gateway and waits
    /// until admin `/readyz` answers 200.
    pub async fn start(config: &str) -> Gateway {
        Self::start_in(temp_dir(), "gateway.toml", config).await
    }

    /// Like [`Gateway::start`], with the directory and file name chosen by
    /// the test (e.g. to pre-create certificates or other files in it).
    pub async fn start_in(dir: TempDir, file_name: &str, config: &str) -> Gateway {
        let mut gateway = Self::spawn_in(dir, file_name, config);
        gateway.wait_ready().await;
        gateway
    }

    /// Starts with the config in a Kubernetes-ConfigMap-like layout
    /// (`gateway.toml -> ..data/gateway.toml`); update it with
    /// [`Gateway::configmap_swap`].
    pub async fn start_configmap(config: &str) -> Gateway {
        let (dir, (listen, admin)) = (temp_dir(), free_addr_pair());
        let text = config_files::substitute(config, listen, admin, dir.path());
        let path = config_files::configmap_init(dir.path(), "gateway.toml", &text);
        let mut gateway = Self::launch(dir, path, "gateway.toml", listen, admin);
        gateway.configmap_swaps = Some(0);
        gateway.wait_ready().await;
        gateway
    }

    /// Starts the process without waiting for readiness: for configs that
    /// must be rejected at startup (then use [`Gateway::wait_exit`]).
    pub fn spawn(config: &str) -> Gateway {
        Self::spawn_in(temp_dir(), "gateway.toml", config)
    }

    /// [`Gateway::spawn`] in a directory and file name chosen by the test.
    pub fn spawn_in(dir: TempDir, file_name: &str, config: &str) -> Gateway {
        let (listen, admin) = free_addr_pair();
        let path = dir.path().join(file_name);
        let text = config_files::substitute(config, listen, admin, dir.path());
        config_files::write_in_place(&path, &text);
        Self::launch(dir, path, file_name, listen, admin)
    }

    fn launch(dir: TempDir, config_path: PathBuf, file_name: &str, listen: SocketAddr, admin: SocketAddr) -> Gateway {
        let log_path = dir.path().join("gateway.log");
        let log = OpenOptions::new().create(true).append(true).open(&log_path).expect("create gateway log file");
        let log_err = log.try_clone().expect("clone log file handle");
        let child = Command::new(gateway_bin())
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("spawn the gateway binary");
        Gateway {
            child,
            exited: None,
            dir,
            config_path,
            file_name: file_name.to_string(),
            configmap_swaps: None,
            listen,
            admin,
            log_path,
            admin_token: None,
            client: crate::http_client(),
            log_shown: AtomicBool::new(false),
        }
    }

    /// Waits (up to 30 s) until admin `/readyz` answers 200 and the proxy
    /// listener is bound; panics with the log tail if the process exits first
    /// or time runs out.
    ///
    /// Both, because `/readyz` follows Pingora's `Running` phase, which Pingora
    /// announces while the proxy service may still be binding its listeners
    /// (seen once: a first request refused a few milliseconds after ready).
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = self.admin_url("/readyz");
        loop {
            if let Some(status) = self.try_exit_status() {
                self.fail(&format!("gateway exited before becoming ready: {status}"));
            }
            let probe = self.client.get(&url).timeout(Duration::from_secs(1)).send();
            if let Ok(response) = probe.await {
                if response.status() == reqwest::StatusCode::OK && is_listening(self.listen) {
                    return;
                }
            }
            if Instant::now() >= deadline {
                self.fail(&format!("gateway not ready after {READY_TIMEOUT:?} ({url})"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `http://<proxy listen address><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// `http://<admin address><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The path given to `-c` (a symlink in the ConfigMap layout).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fills in `{listen}`, `{admin}` and `{dir}` with this gateway's values,
    /// so rewritten configs keep the same ports.
    pub fn render(&self, config: &str) -> String {
        config_files::substitute(config, self.listen, self.admin, self.dir.path())
    }

    /// Rewrites the config file in place (truncate + write, same inode).
    pub fn write_config(&self, config: &str) {
        config_files::write_in_place(&self.config_path, &self.render(config));
    }

    /// Writes a temp file next to the config and renames it over the config.
    pub fn replace_config_by_rename(&self, config: &str) {
        config_files::replace_by_rename(&self.config_path, &self.render(config));
    }

    /// Updates a [`Gateway::start_configmap`] volume as kubelet does (new
    /// timestamped dir, atomic `..data` symlink swap, old dir removed).
    pub fn configmap_swap(&mut self, config: &str) {
        let text = self.render(config);
        let Some(swaps) = self.configmap_swaps.as_mut() else {
            panic!("configmap_swap needs a gateway started with Gateway::start_configmap")
        };
        *swaps += 1;
        let swap = *swaps;
        config_files::configmap_swap(self.dir.path(), &self.file_name, &text, swap);
    }

    /// Sends `Authorization: Bearer <token>` on admin API calls from now on.
    pub fn set_admin_token(&mut self, token: Option<&str>) {
        self.admin_token = token.map(str::to_string);
    }

    /// A request to the admin listener, carrying the admin token if set.
    pub fn admin_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, self.admin_url(path));
        match &self.admin_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `GET /api/status` as JSON; panics (with the log tail) unless 200.
    pub async fn status(&self) -> Value {
        match self.try_status().await {
            Ok(status) => status,
            Err(err) => self.fail(&format!("GET /api/status failed: {err}")),
        }
    }

    async fn try_status(&self) -> Result<Value, String> {
        let response =
            self.admin_request(reqwest::Method::GET, "/api/status").send().await.map_err(|err| err.to_string())?;
        let code = response.status();
        let body = response.text().await.map_err(|err| err.to_string())?;
        if code != reqwest::StatusCode::OK {
            return Err(format!("status {code}: {body}"));
        }
        serde_json::from_str(&body).map_err(|err| format!("not JSON ({err}): {body}"))
    }

    /// `POST /api/reload`: the status code and the JSON body (a non-JSON body
    /// comes back as a JSON string so failures stay readable).
    pub async fn reload(&self) -> (u16, Value) {
        let response = match self.admin_request(reqwest::Method::POST, "/api/reload").send().await {
            Ok(response) => response,
            Err(err) => self.fail(&format!("POST /api/reload failed: {err}")),
        };
        let code = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (code, json)
    }

    /// `status["generation"]`: bumped by every successfully applied config.
    pub async fn generation(&self) -> u64 {
        let status = self.status().await;
        match status.get("generation").and_then(Value::as_u64) {
            Some(generation) => generation,
            None => self.fail(&format!("/api/status has no numeric generation: {status}")),
        }
    }

    /// Polls the status until `generation >= n` (10 s at most, then panics
    /// with the log tail); returns the generation seen.
    pub async fn wait_for_generation(&self, n: u64) -> u64 {
        let deadline = Instant::now() + GENERATION_TIMEOUT;
        let mut last = None;
        loop {
            // Errors are tolerated: the admin listener may be mid-restart.
            if let Ok(status) = self.try_status().await {
                let generation = status.get("generation").and_then(Value::as_u64);
                if generation.is_some_and(|g| g >= n) {
                    return generation.unwrap_or(n);
                }
                last = Some(status);
            }
            if Instant::now() >= deadline {
                let last = last.map(|s| s.to_string()).unwrap_or_default();
                self.fail(&format!("generation never reached {n}; last status: {last}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `GET /metrics` once no request is in flight. A request's counters are
    /// written in its logging phase, just after the client has its answer,
    /// so a scrape right after a response may not show that request yet.
    ///
    /// The scrape returned is the one *after* a scrape that saw nothing in
    /// flight: a scrape reads its metric families one by one, in no fixed
    /// order, so the one that saw the gauge at zero may have read a counter
    /// before the last request's logging phase wrote it (seen in CI: its
    /// latency histogram counted a request its `gateway_requests_total` did
    /// not). Everything a scrape reads after that moment is complete.
    pub async fn settled_metrics(&self) -> String {
        let mut text = String::new();
        let mut settled = false;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let resp = self.admin_request(reqwest::Method::GET, "/metrics").send().await;
            text = match resp {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let idle = text.lines().any(|l| l == "gateway_requests_in_flight 0");
            if idle && settled {
                return text;
            }
            settled = idle;
            if !idle {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        text
    }

    /// Waits until `predicate` holds, or panics naming `what` with the log
    /// tail; see [`crate::wait_until`].
    pub async fn eventually<F, Fut>(&self, what: &str, timeout: Duration, predicate: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        if !crate::wait_until(predicate, timeout).await {
            self.fail(&format!("timed out after {timeout:?} waiting for: {what}"));
        }
    }

    /// Sends a signal (`SIGTERM`, `SIGHUP`, ... re-exported by this crate).
    /// Does nothing once the process is known to have exited, so a recycled
    /// pid is never signalled.
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.try_exit_status().is_some() {
            return;
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits in pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own unreaped child, so it cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed: {}", std::io::Error::last_os_error());
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still
    /// running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("poll the gateway process");
        }
        self.exited
    }

    /// Everything the gateway printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
    }

    /// The last `lines` lines of [`Gateway::log`].
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn fail(&self, what: &str) -> ! {
        self.log_shown.store(true, Ordering::SeqCst);
        panic!("{what}\n{}", self.log_report());
    }

    fn log_report(&self) -> String {
        format!(
            "--- gateway log ({}), last 80 lines ---\n{}\n--- end of gateway log ---",
            self.log_path.display(),
            self.log_tail(80)
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.try_exit_status().is_none() {
            // Errors mean it exited meanwhile; wait() below reaps either way.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() && !self.log_shown.load(Ordering::SeqCst) {
            eprintln!("{}", self.log_report());
        }
    }
}

/// Whether a socket listens on `addr`, from the kernel's table
/// (`/proc/net/tcp`), without connecting: a connection would be seen by the
/// gateway (counted, or blocked at accept by a test's blacklist).
pub fn is_listening(addr: SocketAddr) -> bool {
    const LISTEN: &str = "0A";
    let std::net::IpAddr::V4(ip) = addr.ip() else { return true };
    // The kernel prints the address as the u32 in memory order, in hex.
    let wanted = format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), addr.port());
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return true };
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&wanted.as_str()) && fields.get(3) == Some(&LISTEN)
    })
}
