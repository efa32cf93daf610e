//! A real `redis-server` on loopback for the fleet tests: started on a free
//! port with no persistence, killed (as a crash would) and started again on
//! the same port, empty, as a restarted Redis without a disk would be.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::binary::{free_addr, temp_dir};
use crate::gateway::is_listening;

pub struct RedisServer {
    child: Option<Child>,
    addr: SocketAddr,
    dir: TempDir,
    /// TLS only: (certificate, key, CA) files; clients need the CA.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

fn bin(name: &str) -> String {
    let sbin = format!("/usr/bin/{name}");
    if Path::new(&sbin).exists() {
        sbin
    } else {
        name.to_string()
    }
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut server = RedisServer { child: None, addr: free_addr(), dir: temp_dir(), tls: None };
        server.restart();
        server
    }

    /// A TLS-only server with this certificate and key (PEM); `ca` is what clients must trust.
    pub fn start_tls(cert_pem: &str, key_pem: &str, ca_pem: &str) -> RedisServer {
        let dir = temp_dir();
        let files = ["server.pem", "server.key", "ca.pem"].map(|n| dir.path().join(n));
        for (path, text) in files.iter().zip([cert_pem, key_pem, ca_pem]) {
            std::fs::write(path, text).expect("write a TLS file for redis-server");
        }
        let [cert, key, ca] = files;
        let mut server = RedisServer { child: None, addr: free_addr(), dir, tls: Some((cert, key, ca)) };
        server.restart();
        server
    }

    /// `redis://127.a.b.c:PORT/0` (the test process's own loopback host), `rediss://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://{}/0", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Kill it (SIGKILL: no goodbye to its clients) and wait until the port is free.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_listening(self.addr) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start (again) on the same port, with no data.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new(bin("redis-server"));
        let port = self.addr.port().to_string();
        cmd.args(["--bind", &self.addr.ip().to_string()]);
        match &self.tls {
            None => cmd.args(["--port", &port]),
            Some((cert, key, ca)) => cmd
                .args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca),
        };
        let child = cmd
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (deploy/dev.sh setup installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_listening(self.addr) {
            assert!(Instant::now() < deadline, "redis-server did not start listening on {}", self.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run `redis-cli` against it; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(bin("redis-cli"));
        cmd.args(["-h", &self.addr.ip().to_string(), "-p", &self.addr.port().to_string()]);
        if let Some((_, _, ca)) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        let out = cmd.args(args).output().expect("redis-cli is installed with redis-server");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
