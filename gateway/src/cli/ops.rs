//! The ops commands: `gateway block|unblock|blocks|degrade`. They talk to a
//! running gateway's admin API (found from the config: `admin.listen` and
//! `admin.token_file`), so a block takes effect at once and is persisted by
//! the gateway itself.

use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Value};

use crate::config;

pub struct AdminClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl AdminClient {
    /// From `--admin URL` if given, else from the config file's `[admin]` section.
    pub fn new(config_path: &Path, admin_url: Option<String>) -> Result<Self, String> {
        let loaded = config::load_file(config_path)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
        let admin = &loaded.config.admin;
        let base = admin_url.unwrap_or_else(|| {
            let mut addr = loaded.config.startup.admin_listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        });
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(std::time::Duration::from_secs(10)))
                .build(),
        );
        Ok(Self { base: base.trim_end_matches('/').to_string(), token: admin.token.clone(), agent })
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match (method, body) {
            ("GET", _) => with_auth(self.agent.get(&url), &auth).call(),
            ("DELETE", _) => with_auth(self.agent.delete(&url), &auth).call(),
            ("POST", body) => with_auth(self.agent.post(&url), &auth)
                .header("content-type", "application/json")
                .send(body.unwrap_or(Value::Null).to_string()),
            ("PUT", body) => with_auth(self.agent.put(&url), &auth)
                .header("content-type", "application/json")
                .send(body.unwrap_or(Value::Null).to_string()),
            (other, _) => return Err(format!("unsupported method {other}")),
        };
        let mut resp = result.map_err(|e| format!("cannot reach the gateway's admin API at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }
}

fn with_auth<B>(req: ureq::RequestBuilder<B>, auth: &Option<String>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => req.header("authorization", a),
        None => req,
    }
}

/// Print the answer; exit 0 on 2xx, 1 otherwise.
pub(crate) fn report(result: Result<(u16, Value), String>, ok: impl Fn(&Value) -> String) -> ExitCode {
    match result {
        Ok((status, body)) if (200..300).contains(&status) => {
            println!("{}", ok(&body));
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            let msg = body.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| body.to_string());
            eprintln!("error ({status}): {msg}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A second line when a change did not reach the fleet.
fn reach_line(answer: &Value) -> String {
    match answer["warning"].as_str() {
        Some(w) => format!("\n{w}"),
        None if answer["applied"] == "cluster" => "\napplied on every replica (cluster store)".to_string(),
        None => String::new(),
    }
}

pub fn block(client: &AdminClient, cidr: &str, ttl: Option<String>, reason: Option<String>) -> ExitCode {
    let body = json!({"cidr": cidr, "ttl": ttl, "reason": reason});
    report(client.call("POST", "/api/blacklist", Some(body)), |e| {
        let until = e["expires_at"].as_str().map(|t| format!(" until {t}")).unwrap_or_default();
        format!("blocked {}{until}{}", e["cidr"].as_str().unwrap_or(cidr), reach_line(e))
    })
}

pub fn unblock(client: &AdminClient, cidr: &str) -> ExitCode {
    let path = format!("/api/blacklist/{}", cidr.replace('/', "%2F"));
    report(client.call("DELETE", &path, None), |e| {
        format!("unblocked {}{}", e["removed"].as_str().unwrap_or(cidr), reach_line(e))
    })
}

pub fn blocks(client: &AdminClient, as_json: bool) -> ExitCode {
    report(client.call("GET", "/api/blacklist", None), |b| {
        if as_json {
            return serde_json::to_string_pretty(b).unwrap_or_default();
        }
        let mut out = String::new();
        let rows = b["runtime"].as_array().cloned().unwrap_or_default();
        out.push_str(&format!("{:<24} {:<7} {:<21} {:<21} reason\n", "cidr", "source", "added", "expires"));
        for r in &rows {
            out.push_str(&format!(
                "{:<24} {:<7} {:<21} {:<21} {}\n",
                r["cidr"].as_str().unwrap_or(""),
                r["source"].as_str().unwrap_or(""),
                r["added_at"].as_str().unwrap_or("-"),
                r["expires_at"].as_str().unwrap_or("never"),
                r["reason"].as_str().unwrap_or(""),
            ));
        }
        out.push_str(&format!(
            "{} run-time block(s); {} static entr(ies) from config and list files{}",
            rows.len(),
            b["static_entries"],
            if b["dry_run"] == true { " (dry run: nothing is refused)" } else { "" }
        ));
        out
    })
}

pub fn degrade(client: &AdminClient, level: Option<String>) -> ExitCode {
    let result = match level.as_deref() {
        None => client.call("GET", "/api/degrade", None),
        Some("clear") => client.call("DELETE", "/api/degrade", None),
        Some(l) => match l.parse::<u8>() {
            Ok(n) => client.call("PUT", "/api/degrade", Some(json!({"level": n}))),
            Err(_) => Err(format!("{l:?} is not a level (0..=10) or \"clear\"")),
        },
    };
    report(result, |d| {
        let routes: Vec<&str> =
            d["degraded_routes"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        format!(
            "degrade level {} (config {}{}); routes on their fallback page: {}{}",
            d["level"],
            d["config_level"],
            if d["runtime_override"].is_null() { "" } else { ", set at run time" },
            if routes.is_empty() { "none".to_string() } else { routes.join(", ") },
            reach_line(d)
        )
    })
}

/// `gateway cache purge --route cart --prefix /cart/items`.
pub fn purge_cache(client: &AdminClient, route: Option<String>, prefix: Option<String>) -> ExitCode {
    let body = json!({"route": route, "path_prefix": prefix});
    report(client.call("POST", "/api/cache/purge", Some(body)), |b| {
        format!(
            "purged {} cached answer(s) of {} under {}",
            b["purged"],
            b["route"].as_str().unwrap_or("every route"),
            b["path_prefix"].as_str().unwrap_or("/")
        )
    })
}
