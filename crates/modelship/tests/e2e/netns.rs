//! Hosts with their own addresses on this machine: one network namespace per host, each joined to
//! a bridge in the test's namespace by a veth pair (iproute2's `ip netns` and `ip link`; Debian's
//! `iproute2`). The bridge's address is the "services" host (Redis, S3 listen there); every
//! replica gets its own address and its own loopback, and the test reaches each by its address.
//! A host can be cut off and healed (its veth's bridge end taken down and up): nothing crosses,
//! in either direction, as when a cable is pulled or a switch port dies. Or one service alone
//! can be put out of its reach (a DROP rule in the host's own firewall), as when a route or a
//! security group fails between it and the store while its clients still reach it.
//!
//! Needs the capability to create namespaces (root in the sandbox, as on CI). Where it is
//! missing, a test that needs hosts skips, saying so, or fails under `MODELSHIP_REQUIRE_TOOLS`.
//!
//! Delay and loss: `tc netem` cannot run here (this machine's kernel has no `sch_netem`:
//! "Specified qdisc kind is unknown"), so loss is the host's firewall dropping a share of its
//! packets (`iptables -m statistic`) and delay a proxy in the test's process ([`Delay`]).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A bridge and the namespaces on it; all removed on drop.
pub struct Net {
    bridge: String,
    /// The subnet's first three octets (`10.X.Y`).
    prefix: String,
    /// A short id that names this net's interfaces and namespaces.
    id: String,
    hosts: u32,
}

/// One host: a namespace with an address on the net.
pub struct Host {
    pub namespace: String,
    pub address: String,
    /// The bridge end of its cable.
    port: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("cannot run ip (apt-get install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Net {
    /// A new bridge with its own /24, or why there cannot be one here.
    pub fn create() -> Result<Net, String> {
        static NETS: AtomicU32 = AtomicU32::new(0);
        let n = NETS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names are at most 15 bytes: `msb` + 5 hex digits of the pid + the net's number.
        let id = format!("{:05x}{n:x}", pid & 0xfffff);
        let prefix = format!("10.{}.{}", 100 + (pid % 100), (pid / 100 % 200) + n);
        let net = Net { bridge: format!("msb{id}"), prefix, id, hosts: 0 };
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", net.gateway()), "dev", &net.bridge])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        Ok(net)
    }

    /// The test's own address on the net, where its services listen.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// A new host on the net.
    pub fn host(&mut self) -> Host {
        self.hosts += 1;
        let i = self.hosts;
        let namespace = format!("ms{}h{i}", self.id);
        let port = format!("msv{}{i}", self.id);
        let address = format!("{}.{}", self.prefix, 10 + i);
        let steps: [&[&str]; 7] = [
            &["netns", "add", &namespace],
            &["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &namespace],
            &["link", "set", &port, "master", &self.bridge, "up"],
            &["netns", "exec", &namespace, "ip", "addr", "add", &format!("{address}/24"), "dev", "eth0"],
            &["netns", "exec", &namespace, "ip", "link", "set", "eth0", "up"],
            &["netns", "exec", &namespace, "ip", "link", "set", "lo", "up"],
            &["netns", "exec", &namespace, "ip", "route", "add", "default", "via", &self.gateway()],
        ];
        for step in steps {
            ip(step).unwrap_or_else(|e| panic!("creating host {namespace}: {e}"));
        }
        Host { namespace, address, port }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 1..=self.hosts {
            let namespace = format!("ms{}h{i}", self.id);
            // Whatever still runs in it first (a server the test did not stop).
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &namespace]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = ip(&["netns", "del", &namespace]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

impl Host {
    /// `program` run inside this host.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace, program]);
        cmd
    }

    /// Cuts the host off the net: nothing crosses its cable either way until [`Host::heal`].
    pub fn cut(&self) {
        ip(&["link", "set", &self.port, "down"]).unwrap();
    }

    pub fn heal(&self) {
        ip(&["link", "set", &self.port, "up"]).unwrap();
    }

    /// Drops every packet this host sends to `address:port` (a rule in its own firewall,
    /// iptables from Debian's `iptables`), so that service alone is out of its reach, until
    /// [`Host::reach`]; everything else still crosses.
    pub fn drop_to(&self, address: &str, port: u16) {
        self.firewall("-A", address, port, &[]);
    }

    pub fn reach(&self, address: &str, port: u16) {
        self.firewall("-D", address, port, &[]);
    }

    /// Drops each packet this host sends to `address:port` with probability `share` (TCP
    /// resends what is lost, as on a lossy link).
    pub fn lose_to(&self, address: &str, port: u16, share: f64) {
        self.firewall("-A", address, port, &["-m", "statistic", "--mode", "random", "--probability", &share.to_string()]);
    }

    fn firewall(&self, action: &str, address: &str, port: u16, matching: &[&str]) {
        let out = self
            .command("iptables")
            .args([action, "OUTPUT", "-d", address, "-p", "tcp", "--dport", &port.to_string()])
            .args(matching)
            .args(["-j", "DROP"])
            .output()
            .expect("iptables (apt-get install iptables)");
        assert!(out.status.success(), "iptables {action} in {}: {}", self.namespace, String::from_utf8_lossy(&out.stderr));
    }
}

/// A net for a test, or `None` (said so) where namespaces cannot be made and tools are not
/// required.
pub fn net_or_skip() -> Option<Net> {
    match Net::create() {
        Ok(net) => Some(net),
        Err(why) => {
            assert!(std::env::var_os("MODELSHIP_REQUIRE_TOOLS").is_none(), "network namespaces are needed: {why}");
            eprintln!("SKIPPED: no network namespaces here: {why}");
            None
        }
    }
}

/// A TCP proxy that delays everything it forwards, each way: every chunk read leaves
/// `delay ± jitter` later (uniformly drawn), in order. `tc netem` does this in the kernel; this
/// machine's kernel has none, so the test's own process does it. Loss is the firewall's
/// (`iptables -m statistic`, [`Host::lose_to`]).
pub struct Delay {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Delay {
    /// Listens on `listen:0` and forwards each connection to `to`.
    pub fn start(listen: &str, to: std::net::SocketAddr, delay: std::time::Duration, jitter: std::time::Duration) -> Delay {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let listener = std::net::TcpListener::bind((listen, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seed = u64::from(port) | 1;
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = std::net::TcpStream::connect(to) else { continue };
                        let _ = client.set_nonblocking(false);
                        for (from, into) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                            pipe(from, into, delay, jitter, seed, Arc::clone(&stopped));
                        }
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        Delay { port, stop }
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One direction: a reader stamps each chunk with when it may leave, a writer sends it then.
fn pipe(
    mut from: std::net::TcpStream,
    mut into: std::net::TcpStream,
    delay: std::time::Duration,
    jitter: std::time::Duration,
    mut seed: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::io::{Read, Write};
    use std::time::Instant;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        let mut last = Instant::now();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let spread = jitter.as_micros() as u64;
            let offset = if spread == 0 { 0 } else { seed % (2 * spread + 1) };
            let wait = (delay + std::time::Duration::from_micros(offset)).saturating_sub(jitter);
            // In order: never before the chunk ahead of it.
            last = last.max(Instant::now() + wait);
            if tx.send((last, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (at, bytes) in rx {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            if into.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = into.shutdown(std::net::Shutdown::Write);
    });
}
