//! Upstream pools: backends, weighted selection, health.

pub mod health;
pub mod pool;

pub use pool::{Backend, HealthBook, HealthState, Pool};
