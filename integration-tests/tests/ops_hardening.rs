//! What ops feed the gateway, in the worst shapes it comes in: a TTL of ten
//! thousand years, a hand-edited state file, a lowercase `bearer`, a config
//! `check` must refuse because `run` would, a rejected edit undone; and the
//! metrics alerts need from the first scrape.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use integration_tests::{run_cli, temp_dir, Backend, Gateway, SIGTERM};
use reqwest::Method;
use serde_json::{json, Value};

/// A config for these tests, built from named parts (never patched text):
/// one route `cart` from pool `cart-v1` to pool `cart-v2`.
struct Config {
    stable: SocketAddr,
    canary: SocketAddr,
    canary_percent: f64,
    admin: Vec<String>,
    sections: Vec<String>,
    route: Vec<String>,
}

impl Config {
    fn new(stable: &Backend, canary: &Backend) -> Config {
        Config::on(stable.addr(), canary.addr())
    }

    fn on(stable: SocketAddr, canary: SocketAddr) -> Config {
        Config { stable, canary, canary_percent: 0.0, admin: vec![], sections: vec![], route: vec![] }
    }

    fn canary_percent(mut self, percent: f64) -> Config {
        self.canary_percent = percent;
        self
    }

    /// A line in `[admin]`.
    fn admin(mut self, line: &str) -> Config {
        self.admin.push(line.to_string());
        self
    }

    /// A whole top-level section, e.g. `section("state", &["path = \"...\""])`.
    fn section(mut self, name: &str, lines: &[&str]) -> Config {
        self.sections.push(format!("[{name}]\n{}\n", lines.join("\n")));
        self
    }

    /// The state file at `path`.
    fn state(self, path: &Path) -> Config {
        self.section("state", &[&format!("path = {:?}", path.display().to_string())])
    }

    /// Shadow the route, comparing into the diff store at `store`.
    fn shadowed(mut self, store: &Path) -> Config {
        self = self.section("shadow", &[&format!("store = {:?}", store.display().to_string())]);
        self.route.push("[routes.shadow]\npercent = 100.0".to_string());
        self
    }

    fn text(&self) -> String {
        format!(
            "[server]\nlisten = [\"{{listen}}\"]\nthreads = 1\n\n[admin]\nlisten = \"{{admin}}\"\n{admin}\n\n{sections}\n\
             [upstreams.cart-v1]\nbackends = [\"{stable}\"]\n\n[upstreams.cart-v2]\nbackends = [\"{canary}\"]\n\n\
             [[routes]]\nname = \"cart\"\npath_prefix = \"/cart\"\nstable = \"cart-v1\"\ncanary = \"cart-v2\"\n\
             canary_percent = {percent}\n{route}\n",
            admin = self.admin.join("\n"),
            sections = self.sections.join("\n"),
            stable = self.stable,
            canary = self.canary,
            percent = self.canary_percent,
            route = self.route.join("\n"),
        )
    }
}

async fn backends() -> (Backend, Backend) {
    (Backend::start("cart-v1").await, Backend::start("cart-v2").await)
}

async fn call(gateway: &Gateway, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = gateway.admin_request(method, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{path}: no answer (a panic?): {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn metrics(gateway: &Gateway) -> String {
    call(gateway, Method::GET, "/metrics", None).await.1.as_str().unwrap_or_default().to_string()
}

/// A gateway on `text` that must refuse to start: waits for it to exit and
/// returns its log, after checking it exited with an error and did not panic.
async fn refused_run(dir: tempfile::TempDir, text: &str) -> (Gateway, String) {
    let mut gateway = Gateway::spawn_in(dir, "gateway.toml", text);
    let status = gateway.wait_exit(Duration::from_secs(30)).await;
    let log = gateway.log();
    let status = status.unwrap_or_else(|| panic!("run should refuse this config, yet it keeps running:\n{log}"));
    assert!(!status.success(), "run exited 0:\n{log}");
    assert!(!log.contains("panicked"), "run panicked instead of reporting an error:\n{log}");
    (gateway, log)
}

/// `gateway check -c <path>`: the exit code and stderr.
fn check(config: &Path) -> (Option<i32>, String) {
    let out = run_cli(&["check", "-c", config.to_str().expect("temp paths are UTF-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "check panicked:\n{stderr}");
    (out.status.code(), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_year_ttl_is_a_400_and_the_blacklist_still_lists_also_after_a_restart() {
    let (v1, v2) = backends().await;
    let state_dir = temp_dir();
    let config = Config::new(&v1, &v2).state(&state_dir.path().join("state.json")).text();
    let mut gateway = Gateway::start(&config).await;

    let (status, body) =
        call(&gateway, Method::POST, "/api/blacklist", Some(json!({"cidr": "192.0.2.0/24", "ttl": "10000y"}))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap_or("").contains("limit of 10 years"), "{body}");
    let (status, body) = call(&gateway, Method::GET, "/api/blacklist", None).await;
    assert_eq!((status, body["runtime"].as_array().map(Vec::len)), (200, Some(0)), "{body}");

    // Ten years is the limit itself, accepted and shown with its expiry.
    let (status, body) =
        call(&gateway, Method::POST, "/api/blacklist", Some(json!({"cidr": "192.0.2.0/24", "ttl": "10y"}))).await;
    assert_eq!(status, 201, "{body}");
    assert!(body["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");

    gateway.signal(SIGTERM);
    assert!(gateway.wait_exit(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "clean stop");
    drop(gateway);
    let gateway = Gateway::start(&config).await;
    let (status, body) = call(&gateway, Method::GET, "/api/blacklist", None).await;
    assert_eq!(status, 200, "{body}");
    let runtime = body["runtime"].as_array().cloned().unwrap_or_default();
    assert_eq!(runtime.len(), 1, "{body}");
    assert_eq!(runtime[0]["cidr"], "192.0.2.0/24");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_with_out_of_range_values_stops_run_and_check_with_the_file_and_field_named() {
    let (v1, v2) = backends().await;
    for (state, field) in [
        (
            r#"{"blacklist": [{"cidr": "192.0.2.1", "expires_at_unix": 18446744073709551615}]}"#,
            "blacklist[0].expires_at_unix",
        ),
        (
            r#"{"blacklist": [{"cidr": "192.0.2.1", "added_at_unix": 18446744073709551615}]}"#,
            "blacklist[0].added_at_unix",
        ),
        (r#"{"degrade_level": 200}"#, "degrade_level: 200 is outside 0..=10"),
    ] {
        let dir = temp_dir();
        let state_path = dir.path().join("state.json");
        std::fs::write(&state_path, state).expect("write the state file");
        let config = Config::new(&v1, &v2).state(&state_path).text();
        let (gateway, log) = refused_run(dir, &config).await;
        let file = state_path.display().to_string();
        assert!(log.contains(&file) && log.contains(field), "run should name {file} and {field}:\n{log}");

        let (code, stderr) = check(gateway.config_path());
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(&format!("gateway.toml: state.path: state file {file}: {field}")), "{stderr}");
    }
}

/// One config `run` refuses, with the files it needs.
struct Refused {
    what: &'static str,
    /// Files to create in the config dir: (name, content).
    files: Vec<(&'static str, Vec<u8>)>,
    config: Box<dyn Fn(&Path) -> Config>,
    /// How the error line starts (after `error: `), then what else it says;
    /// `{dir}` stands for the config dir.
    line: (&'static str, &'static [&'static str]),
}

/// The line of `output` that starts with `error: {start}` and holds every one of `holds`.
fn error_line<'a>(output: &'a str, start: &str, holds: &[String]) -> Option<&'a str> {
    output
        .lines()
        .filter_map(|l| l.find("error: ").map(|i| &l[i..]))
        .find(|l| l.starts_with(&format!("error: {start}")) && holds.iter().all(|h| l.contains(h.as_str())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exits_1_on_every_config_run_refuses_naming_the_file() {
    let (v1, v2) = backends().await;
    let (a1, a2) = (v1.addr(), v2.addr());
    let base = move || Config::on(a1, a2);
    let cases = [
        Refused {
            what: "a malformed list-file line",
            files: vec![("blocked.txt", b"192.0.2.1\n300.1.2.3 typo\n".to_vec())],
            config: Box::new(move |_| base().section("blacklist", &["files = [\"blocked.txt\"]"])),
            line: ("blocked.txt:2: blacklist.files[0]: \"300.1.2.3\" is not an IP address or CIDR", &[]),
        },
        Refused {
            what: "a list file over blacklist.max_file_size",
            files: vec![("blocked.txt", b"192.0.2.1\n".repeat(200))],
            config: Box::new(move |_| {
                base().section("blacklist", &["files = [\"blocked.txt\"]", "max_file_size = \"1KiB\""])
            }),
            line: (
                "blocked.txt: blacklist.files[0]: {dir}/blocked.txt is 2000 bytes, over blacklist.max_file_size (1024 bytes)",
                &[],
            ),
        },
        Refused {
            what: "a corrupt state file",
            files: vec![("state.json", b"{\"blacklist\": [".to_vec())],
            config: Box::new(move |dir| base().state(&dir.join("state.json"))),
            line: ("gateway.toml: state.path: state file {dir}/state.json is not valid JSON", &[]),
        },
        Refused {
            // A regular file where the directory should be: unwritable even for root.
            what: "an unwritable state directory",
            files: vec![("not-a-dir", Vec::new())],
            config: Box::new(move |dir| base().state(&dir.join("not-a-dir/state.json"))),
            line: ("gateway.toml: state.path: ", &["{dir}/not-a-dir/state.json", "Not a directory"]),
        },
        Refused {
            // Exists, reads as empty, and takes no new file, even from root.
            what: "a state directory where no file can be created",
            files: vec![],
            config: Box::new(move |_| base().state(Path::new("/proc/gateway-state.json"))),
            line: ("gateway.toml: state.path: state file /proc/gateway-state.json: its directory is not writable", &[]),
        },
        Refused {
            what: "a diff store that cannot be created",
            files: vec![("not-a-dir", Vec::new())],
            config: Box::new(move |dir| base().shadowed(&dir.join("not-a-dir/diffs.sqlite"))),
            line: ("gateway.toml: shadow.store: ", &["{dir}/not-a-dir"]),
        },
        Refused {
            what: "a diff store that is not a SQLite file",
            files: vec![("diffs.sqlite", b"these are notes, not a database\n".repeat(200))],
            config: Box::new(move |dir| base().shadowed(&dir.join("diffs.sqlite"))),
            line: ("gateway.toml: shadow.store: ", &["{dir}/diffs.sqlite", "file is not a database"]),
        },
    ];
    for case in &cases {
        let dir = temp_dir();
        let root = dir.path().to_path_buf();
        for (name, content) in &case.files {
            std::fs::write(root.join(name), content).expect("write a case file");
        }
        let in_dir = |t: &str| t.replace("{dir}", &root.display().to_string());
        let (start, holds) = (in_dir(case.line.0), case.line.1.iter().map(|h| in_dir(h)).collect::<Vec<_>>());
        let (gateway, log) = refused_run(dir, &(case.config)(&root).text()).await;
        let what = case.what;
        assert!(error_line(&log, &start, &holds).is_some(), "{what}: run should say {start:?} with {holds:?}:\n{log}");

        let (code, stderr) = check(gateway.config_path());
        assert_eq!(code, Some(1), "{what}: check should exit 1 as run refuses:\n{stderr}");
        assert!(
            error_line(&stderr, &start, &holds).is_some(),
            "{what}: check should say {start:?} with {holds:?}:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_errors_of_every_load_step_at_once() {
    let (v1, v2) = backends().await;
    let dir = temp_dir();
    std::fs::write(dir.path().join("blocked.txt"), "not-an-ip\n").expect("write the list");
    std::fs::write(dir.path().join("state.json"), "{").expect("write the state");
    std::fs::write(dir.path().join("not-a-dir"), "").expect("write the blocker");
    let config = Config::new(&v1, &v2)
        .section("blacklist", &["files = [\"blocked.txt\"]"])
        .state(&dir.path().join("state.json"))
        .shadowed(&dir.path().join("not-a-dir/diffs.sqlite"))
        .text();
    let path = dir.path().join("gateway.toml");
    let text = config.replace("{listen}", "127.0.0.1:0").replace("{admin}", "127.0.0.1:0");
    std::fs::write(&path, text).expect("write the config");
    let (code, stderr) = check(&path);
    assert_eq!(code, Some(1), "{stderr}");
    for expected in
        ["blocked.txt:1: blacklist.files[0]: ", "gateway.toml: state.path: ", "gateway.toml: shadow.store: "]
    {
        assert!(stderr.contains(expected), "missing {expected:?}:\n{stderr}");
    }
    assert!(stderr.contains("3 error(s)"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_creates_neither_the_state_directory_nor_the_diff_store_and_run_does() {
    let (v1, v2) = backends().await;
    let dir = temp_dir();
    let var = dir.path().join("var/lib/gateway");
    let config = Config::new(&v1, &v2).state(&var.join("state.json")).shadowed(&var.join("diffs.sqlite")).text();
    let text = config.replace("{listen}", "127.0.0.1:0").replace("{admin}", "127.0.0.1:0");
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("write the config");
    let (code, stderr) = check(&path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!dir.path().join("var").exists(), "check created what run would; a check as root would leave it root's");

    let gateway = Gateway::start_in(dir, "gateway.toml", &config).await;
    assert!(var.join("diffs.sqlite").is_file(), "run creates the diff store");
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let (v1, v2) = backends().await;
    let dir = temp_dir();
    std::fs::write(dir.path().join("admin.token"), "s3cret-token\n").expect("write the token");
    let config = Config::new(&v1, &v2).admin("token_file = \"admin.token\"").text();
    let gateway = Gateway::start_in(dir, "gateway.toml", &config).await;
    let client = reqwest::Client::new();
    let status = |auth: Option<&'static str>| {
        let mut request = client.get(gateway.admin_url("/api/status"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        async move { request.send().await.expect("answer").status().as_u16() }
    };
    for auth in ["Bearer s3cret-token", "bearer s3cret-token", "BEARER s3cret-token", "bEaReR  s3cret-token"] {
        assert_eq!(status(Some(auth)).await, 200, "{auth}");
    }
    for auth in ["bearer s3cret-tokeN", "bearer", "Basic s3cret-token", "bearers3cret-token"] {
        assert_eq!(status(Some(auth)).await, 401, "{auth}");
    }
    assert_eq!(status(None).await, 401);
}

/// Writes a config the gateway rejects and waits until `/api/status` shows the error.
async fn reject_an_edit(gateway: &Gateway, bad: &str) {
    gateway.write_config(bad);
    gateway
        .eventually("the edit is rejected", Duration::from_secs(10), || async {
            !gateway.status().await["last_reload_error"].is_null()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_the_running_config_after_a_rejected_edit_clears_last_reload_error() {
    let (v1, v2) = backends().await;
    let good = Config::new(&v1, &v2).text();
    let gateway = Gateway::start(&good).await;
    reject_an_edit(&gateway, &Config::new(&v1, &v2).canary_percent(120.0).text()).await;

    // Undone: the file is the running config again, nothing is failing.
    gateway.write_config(&good);
    gateway
        .eventually("the error is cleared", Duration::from_secs(10), || async {
            gateway.status().await["last_reload_error"].is_null()
        })
        .await;
    let status = gateway.status().await;
    assert!(status["last_reload_error_at"].is_null(), "{status}");
    assert_eq!(status["generation"], 1, "nothing new was applied: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_reload_successful_is_0_while_the_last_reload_fails_and_1_once_one_succeeds() {
    let (v1, v2) = backends().await;
    let good = Config::new(&v1, &v2).text();
    let gateway = Gateway::start(&good).await;
    let gauge = |text: String| {
        text.lines().find_map(|l| l.strip_prefix("gateway_config_last_reload_successful ").map(str::to_string))
    };
    assert_eq!(gauge(metrics(&gateway).await).as_deref(), Some("1"), "after the load at start");

    reject_an_edit(&gateway, &Config::new(&v1, &v2).canary_percent(120.0).text()).await;
    assert_eq!(gauge(metrics(&gateway).await).as_deref(), Some("0"), "while the edit is rejected");

    // A good edit, applied: the alert clears.
    gateway.write_config(&Config::new(&v1, &v2).canary_percent(5.0).text());
    gateway.wait_for_generation(2).await;
    assert_eq!(gauge(metrics(&gateway).await).as_deref(), Some("1"), "after a successful reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_alerts_need_exist_from_the_first_scrape() {
    let (v1, v2) = backends().await;
    let gateway = Gateway::start(&Config::new(&v1, &v2).text()).await;
    let text = metrics(&gateway).await;
    for pool in ["cart-v1", "cart-v2"] {
        for kind in ["connect", "timeout", "5xx", "no-healthy-backend", "other"] {
            let line = format!("gateway_upstream_errors_total{{kind=\"{kind}\",pool=\"{pool}\"}} 0");
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }
    assert!(text.lines().any(|l| l == "gateway_config_last_reload_successful 1"), "{text}");
    for name in ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_max_fds"] {
        let value = text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap_or("");
        // CPU time may still round to 0 on a fresh process; the others cannot be 0.
        let least = if name == "process_cpu_seconds_total" { 0.0 } else { 1.0 };
        assert!(value.parse::<f64>().is_ok_and(|v| v >= least), "{name} should be a number >= {least}:\n{text}");
    }
}
