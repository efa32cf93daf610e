//! The request pipeline: phases in order, each returning a typed outcome;
//! the proxy and `gateway explain` run the same phases (explain with
//! `Mode::DryRun`), and `failure.rs` owns what happens when an upstream fails.

pub mod explain;
pub mod failure;
pub mod phases;
pub mod verdict;

#[cfg(test)]
mod tests;

pub use phases::{run, Mode, RequestFacts};
pub use verdict::{AnswerReason, LocalAnswer, Routed, UserId, Verdict};
