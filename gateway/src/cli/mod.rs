//! The `gateway` command's subcommands, beside the binary's thin `main.rs`.

pub mod demo;
pub mod diffs;
pub mod ops;
