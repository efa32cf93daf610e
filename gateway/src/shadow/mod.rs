//! Shadow traffic for QA: the comparison of a stable and a canary answer to
//! the same request, the noise classifier, and the store of what differed.
//!
//! Pure comparison first (`diff`, no I/O, unit-tested and benchmarked), then
//! bookkeeping (`noise`, in memory), then persistence (`store`, SQLite on a
//! background thread). `mirror` and `engine` capture the answers, send the
//! shadow requests off the request path and tie the three together.

pub mod answer;
pub mod diff;
pub mod engine;
pub mod json;
pub mod json_tree;
pub mod lane;
pub mod mirror;
pub mod noise;
pub mod pattern;
pub mod store;
pub mod store_query;
pub mod store_writer;

#[cfg(test)]
mod tests_diff;
#[cfg(test)]
mod tests_pattern;
#[cfg(test)]
mod tests_store;

pub use answer::{Answer, DiffOptions, FieldDiff};
pub use diff::diff;
pub use noise::{FieldClass, NoiseTracker, PathStats};
pub use pattern::{FieldPattern, PathSeg};
pub use store::{body_text, outcome, redact, DiffRecord, DiffStore, Retention, StoreError, StoredDiff};
pub use store_query::{DiffRecordHeader, PathSummary, RouteSummary};
pub use store_writer::DiffWriter;
