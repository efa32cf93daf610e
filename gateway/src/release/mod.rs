//! The release guard: a route's version widened step by step while it is
//! healthy and taken back to 0% the moment it is not, by the gateway
//! itself (`[routes.rollout]`).
//!
//! - `gates`: one check, the rolled-out version against the default version
//!   over an interval (error rate and its delta, p99 ratio, diff rate);
//! - `plan`: the rollout's states and transitions, pure;
//! - `book`: every route's rollout, persisted; snapshots take the share in force from it;
//! - `controller`: the background loop that samples, checks, steps and aborts;
//! - `fleet`: in a fleet, counters summed in the cluster store and one evaluating replica.

pub mod book;
pub mod controller;
pub mod fleet;
pub mod gates;
pub mod plan;
