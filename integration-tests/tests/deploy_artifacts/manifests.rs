//! The ConfigMap's config passes `gateway check` with its state outside the
//! read-only volume; the Kubernetes, systemd and Docker files keep their
//! drain, reload, signal and user contracts.

use crate::{output_text, read_repo_file};
use integration_tests::{run_cli, temp_dir};

/// The `gateway.toml: |` block scalar of the ConfigMap, de-indented.
fn configmap_gateway_toml(yaml: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let key_line = lines
        .iter()
        .position(|l| l.trim_start().starts_with("gateway.toml: |"))
        .expect("configmap.yaml has a `gateway.toml: |` block");
    let key_indent = lines[key_line].len() - lines[key_line].trim_start().len();
    let mut block = Vec::new();
    for line in &lines[key_line + 1..] {
        let indent = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && indent <= key_indent {
            break;
        }
        block.push(*line);
    }
    let indent = block
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .expect("the gateway.toml block is not empty");
    let mut toml: String = block
        .iter()
        .map(|l| if l.trim().is_empty() { "\n".to_string() } else { format!("{}\n", &l[indent..]) })
        .collect();
    while toml.ends_with("\n\n") {
        toml.pop();
    }
    toml
}

#[test]
fn configmap_config_passes_gateway_check() {
    let toml = configmap_gateway_toml(&read_repo_file("deploy/k8s/configmap.yaml"));
    assert!(
        toml.contains("listen = [\"0.0.0.0:8080\"]"),
        "the ConfigMap's proxy should listen on 0.0.0.0:8080:\n{toml}"
    );
    assert!(toml.contains("listen = \"0.0.0.0:9900\""), "the ConfigMap's admin should listen on 0.0.0.0:9900:\n{toml}");

    let dir = temp_dir();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "test-token-not-a-secret\n").expect("write the token file");
    // The pod's writable state volume, here a temp dir.
    let state_volume = dir.path().join("var-lib-gateway");
    std::fs::create_dir(&state_volume).expect("create the state volume");
    let (mut tokens, mut writable) = (0, Vec::new());
    let mut section = String::new();
    let toml: String = toml
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with('[') {
                section = trimmed.split(']').next().unwrap_or("").trim_start_matches('[').to_string();
            }
            let key = trimmed.split([' ', '=']).next().unwrap_or("");
            if section == "admin" && key == "token_file" {
                tokens += 1;
                format!("token_file = {:?}\n", token.to_str().expect("temp path is UTF-8"))
            } else if (section == "state" && key == "path") || (section == "shadow" && key == "store") {
                // Written by the gateway: must be on the state volume, not in
                // the read-only ConfigMap mount at /etc/gateway.
                let value = trimmed.split('"').nth(1).unwrap_or("");
                let file = value.strip_prefix("/var/lib/gateway/").unwrap_or_else(|| {
                    panic!("the ConfigMap's [{section}] {key} = {value:?} is not on the state volume /var/lib/gateway")
                });
                writable.push(format!("{section}.{key}"));
                format!("{key} = {:?}\n", state_volume.join(file).to_str().expect("temp path is UTF-8"))
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_eq!(tokens, 1, "the ConfigMap's config should set admin.token_file exactly once:\n{toml}");
    assert_eq!(writable, ["state.path", "shadow.store"], "the ConfigMap's config should set both, once:\n{toml}");

    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &toml).expect("write the extracted config");
    let out = run_cli(&["check", "-c", path.to_str().expect("temp path is UTF-8")]);
    assert!(
        out.status.success(),
        "gateway check rejects deploy/k8s/configmap.yaml's config:\n{}\n{toml}",
        output_text(&out)
    );
}

/// Non-comment lines of a file (`#` comments, as in YAML, systemd units and
/// Dockerfiles).
fn code_lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

/// Seconds in a `"30s"` / `30s` / `30` value.
fn seconds(value: &str) -> u64 {
    let v = value.trim().trim_matches('"');
    v.strip_suffix('s').unwrap_or(v).parse().unwrap_or_else(|_| panic!("not a duration in seconds: {value:?}"))
}

#[test]
fn kubernetes_manifests_keep_the_drain_and_reload_contracts() {
    let toml = configmap_gateway_toml(&read_repo_file("deploy/k8s/configmap.yaml"));
    let grace = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("shutdown_grace = "))
        .map(|v| seconds(v.split('#').next().unwrap_or(v)))
        .expect("the ConfigMap's config sets server.shutdown_grace");
    let deployment = read_repo_file("deploy/k8s/deployment.yaml");
    let lines = code_lines(&deployment);
    let termination = lines
        .iter()
        .find_map(|l| l.strip_prefix("terminationGracePeriodSeconds:"))
        .map(seconds)
        .expect("deployment.yaml sets terminationGracePeriodSeconds");
    let pre_stop = lines
        .iter()
        .find_map(|l| l.strip_prefix("command: [\"sleep\", \"").and_then(|r| r.strip_suffix("\"]")))
        .map(seconds)
        .expect("deployment.yaml has a preStop `sleep`");
    assert!(
        pre_stop + grace < termination,
        "preStop sleep {pre_stop}s + shutdown_grace {grace}s must stay below terminationGracePeriodSeconds {termination}s"
    );
    // subPath mounts never see ConfigMap updates, so hot reload would silently stop working.
    assert!(
        !lines.iter().any(|l| l.contains("subPath")),
        "deployment.yaml must mount the config as a directory, not with subPath"
    );
    for probe in ["path: /readyz", "path: /healthz", "maxUnavailable: 0", "readOnlyRootFilesystem: true"] {
        assert!(lines.iter().any(|l| l.starts_with(probe)), "deployment.yaml lacks `{probe}`");
    }
    // The root file system is read-only: the state file and the diff store
    // need a writable volume at /var/lib/gateway, where the ConfigMap's config puts them.
    let state_mount = lines
        .iter()
        .position(|l| *l == "mountPath: /var/lib/gateway")
        .expect("deployment.yaml mounts a volume at /var/lib/gateway");
    assert_ne!(lines.get(state_mount + 1), Some(&"readOnly: true"), "the /var/lib/gateway volume must be writable");
}

#[test]
fn systemd_unit_and_dockerfile_keep_signal_and_user_contracts() {
    let unit = read_repo_file("deploy/systemd/gateway.service");
    let settings: Vec<(&str, &str)> = code_lines(&unit).into_iter().filter_map(|l| l.split_once('=')).collect();
    let values = |key: &str| -> Vec<&str> { settings.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v).collect() };
    let reload = values("ExecReload");
    assert!(
        reload.len() == 1 && reload[0].contains("-HUP") && reload[0].contains("$MAINPID"),
        "ExecReload must send SIGHUP to $MAINPID: {reload:?}"
    );
    assert_eq!(values("KillSignal"), ["SIGTERM"], "SIGTERM drains; another KillSignal would not");
    let start = values("ExecStart");
    assert!(start.len() == 1 && start[0].ends_with(" run -c /etc/gateway/gateway.toml"), "ExecStart: {start:?}");
    let pre = values("ExecStartPre");
    assert!(pre.iter().any(|c| c.contains(" check -c /etc/gateway/gateway.toml")), "ExecStartPre: {pre:?}");
    let stop = values("TimeoutStopSec");
    assert!(stop.len() == 1 && seconds(stop[0]) > 30, "TimeoutStopSec must exceed shutdown_grace (30s): {stop:?}");
    // ProtectSystem=strict leaves only the state directory writable.
    assert_eq!(values("StateDirectory"), ["gateway"], "the unit must own /var/lib/gateway");
    assert_eq!(values("ProtectSystem"), ["strict"]);

    let dockerfile = read_repo_file("deploy/Dockerfile");
    let lines = code_lines(&dockerfile);
    let runtime_start = lines.iter().rposition(|l| l.starts_with("FROM ")).expect("the Dockerfile has a FROM");
    assert!(runtime_start > 0, "the Dockerfile should be multi-stage (builder, then runtime)");
    let runtime = &lines[runtime_start..];
    let user =
        runtime.iter().filter_map(|l| l.strip_prefix("USER ")).next_back().expect("the runtime stage sets USER").trim();
    let user_name = user.split(':').next().unwrap_or(user);
    assert!(!matches!(user_name, "root" | "0" | ""), "the runtime stage must run as a non-root user, not {user:?}");
    assert!(runtime.contains(&"STOPSIGNAL SIGTERM"), "the runtime stage should say STOPSIGNAL SIGTERM");
    let exposed: Vec<&str> =
        runtime.iter().filter_map(|l| l.strip_prefix("EXPOSE ")).flat_map(str::split_whitespace).collect();
    for port in ["8080", "9900"] {
        assert!(exposed.contains(&port), "the runtime stage should EXPOSE {port}: {exposed:?}");
    }
    assert!(
        runtime.contains(&"VOLUME [\"/var/lib/gateway\"]"),
        "the runtime stage should declare the state volume /var/lib/gateway"
    );
}
