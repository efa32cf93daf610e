//! Routing: which route a request belongs to and which version serves it.
//!
//! Pure functions over the config snapshot, no I/O, so every rule is unit-tested
//! without a network and `gateway explain` shows exactly what the proxy would do.

pub mod bucket;
pub mod decision;
pub mod lanes;
pub mod overrides;
pub mod router;
pub mod signed;
pub mod sticky;
pub mod user_id;

#[cfg(test)]
mod tests;

pub use bucket::CohortSeed;
pub use decision::{Decision, DecisionInput, Explanation, OverrideHow, Reason, VersionPlan};
pub use router::Router;
pub use user_id::{find_user_id, RequestView};
