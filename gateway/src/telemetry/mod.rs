//! What the gateway tells its operators: Prometheus metrics and logs.

pub mod access_log;
pub mod logging;
pub mod metrics;
