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

/// A free address for a listener the test starts next: see [`free_addr_pair`].
pub fn free_addr() -> SocketAddr {
    next_free_addr()
}

/// An address where nothing listens and nothing will: 127.0.0.2, where no
/// test binds. A "dead" backend on a released port of the test host could
/// come back as a gateway's own admin listener and answer (seen once in CI).
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2], next_free_addr().port()))
}

/// Two distinct free addresses for the listeners of a process started next.
///
/// A port is chosen here but bound later by the gateway, and in between it is
/// free. Ports from the kernel's ephemeral range on 127.0.0.1 could meanwhile
/// be handed to another test's listener or to an outgoing connection's local
/// end. So each test process takes its listener addresses on a loopback host
/// of its own (a random 127.a.b.c; connections to it still come from
/// 127.0.0.1, so client IPs in the tests do not change), with ports counted
/// up from a random start below the ephemeral range: no port is handed out
/// twice in a process and no other process binds that host.
pub(crate) fn free_addr_pair() -> (SocketAddr, SocketAddr) {
    (next_free_addr(), next_free_addr())
}

/// Below Linux's default ephemeral range (32768..=60999).
const PORTS: std::ops::Range<u16> = 20_000..32_000;

fn next_free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    use std::sync::OnceLock;
    static HOST: OnceLock<std::net::Ipv4Addr> = OnceLock::new();
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    let seed = random_u64();
    let host = *HOST.get_or_init(|| {
        // 127.a.b.c with a in 1..=254: never 127.0.0.x, where backends,
        // clients and `dead_addr` live.
        std::net::Ipv4Addr::new(127, 1 + (seed % 254) as u8, (seed >> 8) as u8, 1 + ((seed >> 16) % 254) as u8)
    });
    let next = NEXT.get_or_init(|| AtomicU16::new(PORTS.start + ((seed >> 32) % 8_000) as u16));
    for _ in 0..PORTS.len() {
        let taken = next.fetch_add(1, Ordering::Relaxed);
        let port = PORTS.start + taken.wrapping_sub(PORTS.start) % PORTS.len() as u16;
        // Something outside the tests may hold the port on all addresses.
        if let Ok(probe) = TcpListener::bind((host, port)) {
            return probe.local_addr().expect("listener address");
        }
    }
    panic!("no free port on {host} in {PORTS:?}");
}

/// Seeded per process by the standard library (`RandomState`).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}
