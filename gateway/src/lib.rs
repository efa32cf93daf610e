//! A gray-release edge gateway on Pingora.
//!
//! Data flows one way: request -> snapshot -> pipeline -> verdict -> upstream
//! -> response -> metrics, logs, diff store. Where each concern lives:
//!
//! - `cache/`     degrade to cached answers: the response cache, its rules and fills
//! - `cli/`       the `gateway` command: run, check, explain, ops, diffs, demo
//! - `config/`    file structs (serde) -> validated model; errors with file:line:key
//! - `cluster/`   the fleet: shared blocks and degrade level on Redis, cluster rate limits
//! - `control/`   snapshot (one compiled `RouteRuntime` per route), reload, watch, run-time state
//! - `listener/`  the connection loop (keep-alive, head deadlines, framing) and the Pingora server
//! - `proxy/`     the `ProxyHttp` impl: thin, runs the pipeline
//! - `pipeline/`  the phases in order, each returning a typed `Verdict`; failure handling; explain
//! - `routing/`   route match, versions, buckets, overrides, sticky cookie -> `Decision`
//! - `release/`   the release guard: progressive rollouts with automatic rollback
//! - `edge/`      client IP, path normalization, blacklist, rate limits, fallback pages
//! - `upstream/`  pools, health, peer selection
//! - `shadow/`    capture, mirror, compare (diff, noise), store
//! - `telemetry/` metrics, logs
//! - `admin/`     admin API and the QA pages
//! - `tls/`       certificates for the TLS listener and upstream TLS

pub mod admin;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod edge;
pub mod listener;
pub mod pipeline;
pub mod proxy;
pub mod release;
pub mod routing;
pub mod shadow;
pub mod telemetry;
pub mod tls;
pub mod upstream;
