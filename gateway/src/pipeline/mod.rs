//! The request pipeline: phases in order, each returning a typed outcome.
//! `gateway explain` runs the same phases with a dry-run flag.

pub mod explain;
pub mod phases;
