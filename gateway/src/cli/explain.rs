//! `gateway explain`: what the proxy would do with a request, offline, from
//! the config file and the run-time state file (blocks and degrade level as
//! ops left them), through the proxy's own pipeline in dry-run mode.

use std::process::ExitCode;

use crate::config;
use crate::control::runtime::RuntimeState;
use crate::control::snapshot::{BuildDeps, Snapshot};
use crate::control::state::OpenMode;
use crate::pipeline::explain::{explain, ExplainRequest};

pub fn run(path: &std::path::Path, req: ExplainRequest) -> ExitCode {
    let loaded = match config::load_file(path) {
        Ok(l) => l,
        Err(errors) => {
            super::print_errors(&errors);
            return ExitCode::FAILURE;
        }
    };
    let runtime = match RuntimeState::open(&loaded.config.startup.state_path, OpenMode::Inspect) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", loaded.config.startup.state_path.display());
            return ExitCode::FAILURE;
        }
    };
    let snapshot = match Snapshot::build(loaded, 1, &BuildDeps::default()) {
        Ok(s) => s,
        Err(errors) => {
            super::print_errors(&errors);
            return ExitCode::FAILURE;
        }
    };
    match explain(&snapshot, &runtime, &req) {
        Ok(a) => {
            println!("{}", a.text);
            let mut detail = format!("  verdict {}", a.verdict);
            if let Some(status) = a.status {
                detail.push_str(&format!(" {status} ({})", a.answer.unwrap_or("")));
            }
            if let Some(pool) = &a.pool {
                detail.push_str(&format!("  pool {pool}"));
            }
            if let Some(rules) = &a.rules {
                detail.push_str(&format!("  rules {rules}"));
            }
            detail.push_str(&format!("  client ip {}", a.client_ip));
            println!("{detail}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::from(3)
        }
    }
}
