//! The control plane: the config snapshot the request path reads, how it is
//! rebuilt and swapped (reload, file watcher), and the run-time state ops
//! change (blocks, degrade level) with the file that keeps it across restarts.

pub mod reload;
pub mod route_runtime;
pub mod runtime;
pub mod snapshot;
pub mod state;
pub mod watch;
