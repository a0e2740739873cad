//! Loopback helpers for tests of the control store: a closed port, a real `redis-server`.

use std::time::Duration;

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real redis-server on a free loopback port, no persistence; killed on drop.
pub struct RedisServer {
    port: u16,
    child: std::process::Child,
    /// Its working directory: a replica's full sync writes `dump.rdb` there, which a server
    /// started later in the same directory would load.
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// With more arguments (`--replicaof 127.0.0.1 PORT`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        use std::process::{Command, Stdio};
        let port = closed_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is missing: apt-get install redis-server (scripts/setup.sh --test does)");
        let server = RedisServer { port, child, _dir: dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills it (SIGKILL): a primary that fails.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Redis Sentinel (`redis-server CONFIG --sentinel`, the binary Debian's `redis-sentinel`
/// runs) watching the primary at `primary` as service `modelship`, quick to fail over: down
/// after 1 s, a quorum of `quorum`.
pub struct Sentinel {
    server: RedisServer,
}

impl Sentinel {
    pub fn start(primary: u16, quorum: usize) -> Sentinel {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let port = closed_port();
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor modelship 127.0.0.1 {primary} {quorum}\nsentinel down-after-milliseconds modelship 1000\nsentinel failover-timeout modelship 10000\nsentinel parallel-syncs modelship 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is missing: apt-get install redis-server (scripts/setup.sh --test does)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis sentinel did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sentinel { server: RedisServer { port, child, _dir: dir } }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
