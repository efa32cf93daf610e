//! Configuration: the file format (`file`), the validated model (`model`),
//! and the step between them (`validate`), with errors that name file, line and key.

pub mod error;
pub mod file;
pub mod files;
pub mod model;
mod route_cover;
pub mod startup;
pub mod validate;
mod validate_cache;
mod validate_cluster;
mod validate_edge;
mod validate_rollout;
mod validate_route;
mod validate_server;
mod validate_shadow;
mod validate_tls;
pub mod values;

#[cfg(test)]
mod tests;

pub use error::{ConfigError, ConfigWarning};
pub use model::*;
pub use startup::{ServerStartup, ShadowStoreSpec, StartupSettings};
pub use validate::{load_file, parse, read_file, resolve, text_hash, LoadedConfig};
