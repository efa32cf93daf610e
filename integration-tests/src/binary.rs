//! Locating and running the gateway executable, and the scratch resources
//! (temp dirs, free ports) each gateway process gets.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

/// The gateway executable: `$GATEWAY_BIN`, else `gateway` in the target
/// profile dir this test binary was built into (`target/debug/deps/..`).
pub fn gateway_bin() -> PathBuf {
    let bin = match std::env::var_os("GATEWAY_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let exe = std::env::current_exe().expect("locate the test executable");
            let mut dir = exe.parent().expect("test executable has a directory").to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir.join("gateway")
        }
    };
    assert!(
        bin.is_file(),
        "gateway binary not found at {}: run `cargo build -p gateway` first \
         (or set GATEWAY_BIN to its path)",
        bin.display()
    );
    bin
}

/// Runs the gateway binary with `args` (e.g. `["check", "-c", path]`) and
/// collects its exit status and output.
pub fn run_cli(args: &[&str]) -> Output {
    Command::new(gateway_bin()).args(args).stdin(Stdio::null()).output().expect("run the gateway binary")
}

/// A fresh temp dir for a gateway's config and log, removed on drop.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new().prefix("gateway-it-").tempdir().expect("create a temp dir")
}

/// A 127.0.0.1 address that was free a moment ago (bind port 0, then drop).
pub fn free_addr() -> SocketAddr {
    free_addr_pair().0
}

/// An address where nothing listens and nothing will: a free port, but on
/// 127.0.0.2. A free port on 127.0.0.1 is released when chosen, so a gateway
/// started next may be handed it for its own admin listener, and a "dead"
/// backend would then answer (seen once in CI).
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2], free_addr().port()))
}

/// Two distinct free addresses: both listeners are held at once so the OS
/// cannot hand out the same port twice.
pub(crate) fn free_addr_pair() -> (SocketAddr, SocketAddr) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    (a.local_addr().expect("listener address"), b.local_addr().expect("listener address"))
}
