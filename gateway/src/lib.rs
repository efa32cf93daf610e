//! A gray-release edge gateway on Pingora.
//!
//! Data flows one way: request -> snapshot -> phases -> decision -> upstream
//! -> response -> metrics and logs. See `README.md` for the design.

pub mod admin;
pub mod config;
pub mod demo;
pub mod diffs_cli;
pub mod edge;
pub mod explain;
pub mod fallback;
pub mod logging;
pub mod metrics;
pub mod ops_cli;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod shadow;
pub mod snapshot;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod watch;
