//! The `gateway` binary: the allocator, then `cli::main`.

use std::process::ExitCode;

/// mimalloc unless built with `--no-default-features`: glibc's malloc was
/// about 11% of the proxy's CPU under load, mostly in its slow paths for the
/// request's larger buffers (`_int_malloc`, `malloc_consolidate`). Measured
/// with the load harness; see benches/README.md.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    gateway::cli::main()
}
