//! Routing: which route a request belongs to and which version serves it.
//!
//! Pure functions over the config snapshot, no I/O, so every rule is unit-tested
//! without a network and `gateway explain` shows exactly what the proxy would do.

pub mod bucket;
pub mod decision;
pub mod router;
pub mod user_id;

#[cfg(test)]
mod tests;

pub use bucket::CohortSeed;
pub use decision::{decide, Decision, Explanation, Reason, Version};
pub use router::{CompiledRoute, Router};
pub use user_id::{find_user_id, RequestView};
