//! Running the real `modelship` binary on 127.0.0.1:0 and talking HTTP to it (a server in the
//! test's own process is [`crate::inproc`]).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The workspace root: the child runs there, so `./.venv` (made by scripts/setup.sh) is found.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn model(name: &str) -> String {
    let path = if name == "fraud" { root().join("examples/models/fraud.onnx") } else { root().join(format!("testdata/models/{name}.onnx")) };
    path.to_string_lossy().into_owned()
}

pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelship"));
    cmd.current_dir(root()).stdin(Stdio::null());
    // The tests choose these themselves.
    for var in ["MODEL_PATH", "CONFIG_PATH", "MODEL_VERSION", "MODEL_NAME", "LOG_LEVEL", "LOG_FORMAT", "POD_NAME", "POD_NAMESPACE", "PORT", "FUNCTIONS_CUSTOMHANDLER_PORT", "MODELSHIP_DEVICE"] {
        cmd.env_remove(var);
    }
    cmd
}

pub struct Server {
    /// A private state directory (traffic history, admin token) unless the test gave one.
    _state: Option<tempfile::TempDir>,
    child: Child,
    pub ready: Value,
    stderr: Arc<Mutex<String>>,
    client: Client,
}

/// HTTP to one server's inference port, whether it runs as a process ([`Server`]) or in the
/// test's own process ([`crate::inproc::App`]).
pub struct Client {
    pub addr: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(addr: String) -> Client {
        Client { addr, agent: agent() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn get(&self, path: &str) -> Reply {
        reply(self.agent.get(&self.url(path)).call().expect("GET"))
    }

    /// The value of one sample in the /metrics text, e.g. `modelship_requests_total{...}`.
    pub fn metric(&self, prefix: &str, labels: &[&str]) -> Option<f64> {
        let text = self.get("/metrics").text;
        text.lines()
            .filter(|l| l.starts_with(prefix) && labels.iter().all(|lab| l.contains(lab)))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.post_with(path, body, &[])
    }

    pub fn post_with(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.agent.post(&self.url(path)).header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        reply(req.send(body).expect("POST"))
    }

}

impl std::ops::Deref for Server {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

impl Server {
    /// Starts `modelship serve ARGS --host 127.0.0.1 --port 0` and waits for its ready line.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(args, &[])
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = command();
        cmd.arg("serve").args(args).args(["--host", "127.0.0.1", "--port", "0"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let state = (!env.iter().any(|(k, _)| *k == "MODELSHIP_STATE_DIR")).then(|| tempfile::tempdir().unwrap());
        Server::spawn(cmd, state)
    }

    /// Starts `cmd` (a `serve` command line of any modelship, e.g. one run under an emulator),
    /// with `state` as its state directory, and waits for its ready line.
    pub fn spawn(mut cmd: Command, state: Option<tempfile::TempDir>) -> Server {
        if let Some(dir) = &state {
            cmd.env("MODELSHIP_STATE_DIR", dir.path());
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn modelship");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Generous: a pickle is converted before the server is ready (on a loaded machine, a
        // Python that imports scikit-learn, XGBoost and LightGBM takes a while).
        let line = match rx.recv_timeout(Duration::from_secs(240)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                thread::sleep(Duration::from_millis(200));
                panic!("modelship did not become ready; stderr:\n{}", stderr.lock().unwrap());
            }
        };
        let ready: Value = serde_json::from_str(&line).expect("ready line is JSON");
        assert_eq!(ready["event"], "ready", "{line}");
        let addr = ready["http"].as_str().unwrap().to_owned();
        Server { _state: state, child, ready, stderr, client: Client::new(addr) }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "modelship did not exit within {limit:?}; stderr:\n{}", self.stderr());
            thread::sleep(Duration::from_millis(20));
        }
    }

}

pub fn reply(mut response: ureq::http::Response<ureq::Body>) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Reply { status, headers, text }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A V2 infer body for the fraud-style models: `rows` rows of 30 features.
pub fn fraud_body(rows: usize) -> String {
    let data: Vec<f32> = (0..rows * 30).map(|i| ((i % 17) as f32 - 8.0) / 4.0).collect();
    serde_json::json!({"inputs": [{"name": "input", "shape": [rows, 30], "datatype": "FP32", "data": data}]}).to_string()
}

/// A body for the slow model: `iterations` rounds of a 128x128 matrix product (about 40 µs each).
pub fn slow_body(iterations: i64) -> String {
    serde_json::json!({"inputs": [{"name": "iterations", "shape": [], "datatype": "INT64", "data": [iterations]}]}).to_string()
}

/// A free loopback port for a program that must be told its port (S3, Redis, the Lambda
/// emulator...). Not one the kernel picks with port 0: those come from the ephemeral range,
/// which every outgoing connection of every test running beside this one also draws from, so
/// such a port can be taken between here and the program's bind (CI saw `aws-lambda-rie`
/// fail so: "bind: address already in use"). Ports below the ephemeral range are handed out
/// in turn from a start that depends on the process id, each checked free by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    const LOW: u32 = 20000;
    if ephemeral_low > LOW + 1000 {
        let span = ephemeral_low - LOW;
        let start = std::process::id() * 97 % span;
        for _ in 0..span {
            let port = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            let port = u16::try_from(port).expect("ports are below 65536");
            // The wildcard address: the bind fails if anything listens on this port at all.
            if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real third-party server (S3, MLflow...) started by a test in its own process group, stopped
/// with the whole group when dropped.
pub struct Service {
    child: Child,
    pub name: &'static str,
    log: PathBuf,
}

impl Service {
    pub fn start(name: &'static str, mut cmd: Command, log: PathBuf) -> Service {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({e}); run scripts/setup.sh --test first"));
        Service { child, name, log }
    }

    /// Waits until `ready` says yes, failing with the service's log after `limit`.
    pub fn wait_until(&mut self, limit: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !ready() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited ({status}):\n{}", self.name, std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "{} not ready after {limit:?}:\n{}", self.name, std::fs::read_to_string(&self.log).unwrap_or_default());
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Signals a whole process group. Not through the `kill` program: procps-ng 4.0.2 (Debian 12)
/// misreads `kill -TERM -PGID` and signals every process it can.
#[allow(unsafe_code)]
fn signal_group(pgid: u32, signal: i32) {
    let Ok(pgid) = i32::try_from(pgid) else { return };
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid only sends a signal; it touches no memory of ours.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let pgid = self.child.id();
        signal_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        signal_group(pgid, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A program installed by scripts/setup.sh --test under the workspace.
pub fn tool(relative: &str) -> PathBuf {
    let path = root().join(relative);
    assert!(path.exists(), "{} is missing: run scripts/setup.sh --test (the README's test command does)", path.display());
    path
}

/// A real Prometheus (Debian's package) scraping `targets` every second, on a free port.
pub struct Prometheus {
    _service: Service,
    _dir: tempfile::TempDir,
    pub url: String,
}

impl Prometheus {
    pub fn scraping(targets: &[&str]) -> Prometheus {
        Prometheus::configured(targets, "")
    }

    /// Scraping `targets`, evaluating the rules file `rules` every second and sending alerts to
    /// the Alertmanager at `alertmanager` (HOST:PORT).
    pub fn with_rules(targets: &[&str], rules: &Path, alertmanager: &str) -> Prometheus {
        Prometheus::configured(
            targets,
            &format!("rule_files: ['{}']\nalerting:\n  alertmanagers:\n    - static_configs: [{{targets: ['{alertmanager}']}}]\n", rules.display()),
        )
    }

    fn configured(targets: &[&str], extra: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n{extra}scrape_configs:\n  - job_name: modelship\n    static_configs: [{{targets: [{}]}}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let port = free_port();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let mut service = Service::start("prometheus", cmd, dir.path().join("prometheus.log"));
        let probe = agent();
        let url = format!("http://127.0.0.1:{port}");
        service.wait_until(Duration::from_secs(60), || probe.get(format!("{url}/-/ready")).call().is_ok_and(|r| r.status() == 200));
        Prometheus { _service: service, _dir: dir, url }
    }
}

/// A real PostgreSQL (Debian's `postgresql` package) in a temporary directory, on a free port,
/// trusting local connections as user `modelship`. PostgreSQL refuses to run as root: as root,
/// its files belong to the `postgres` user the package made and it runs as that user.
pub struct Postgres {
    service: Option<Service>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| versions.filter_map(Result::ok).map(|v| v.path().join("bin")).filter(|b| b.join("postgres").exists()).max())
            .expect("PostgreSQL is missing: run scripts/setup.sh --test (the README's test command does)");
        let dir = tempfile::tempdir().unwrap();
        let root_user = rustix_is_root();
        if root_user {
            let out = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let data = dir.path().join("data");
        let mut initdb = as_postgres(root_user, &bin.join("initdb"));
        initdb.arg("-D").arg(&data).args(["-U", "modelship", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        let out = initdb.output().unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let mut pg = Postgres { service: None, dir, bin, port: free_port() };
        pg.run();
        pg
    }

    fn run(&mut self) {
        let root_user = rustix_is_root();
        let mut cmd = as_postgres(root_user, &self.bin.join("postgres"));
        cmd.arg("-D").arg(self.dir.path().join("data")).args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
        cmd.arg("-k").arg(self.dir.path());
        let mut service = Service::start("postgres", cmd, std::env::temp_dir().join(format!("modelship-postgres-{}.log", self.port)));
        let url = self.url();
        let psql = self.bin.join("psql");
        service.wait_until(Duration::from_secs(60), || Command::new(&psql).args([url.as_str(), "-Atc", "SELECT 1"]).output().is_ok_and(|o| o.status.success()));
        self.service = Some(service);
    }

    pub fn url(&self) -> String {
        format!("postgres://modelship@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (its data stays): connections are refused until [`Postgres::restart`].
    pub fn kill(&mut self) {
        self.service = None;
    }

    pub fn restart(&mut self) {
        self.run();
    }

    /// What `psql -At -c SQL` prints, trimmed; panics on an error.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql")).args([self.url().as_str(), "-v", "ON_ERROR_STOP=1", "-Atc", sql]).output().unwrap();
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
}

/// `program` run as the `postgres` user when this process is root, else as it is.
fn as_postgres(root_user: bool, program: &Path) -> Command {
    if root_user {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// An HTTP receiver on a free loopback port that records every request and answers as `answer`
/// says for the n-th request (from 1): a status, or no answer at all (the connection held open
/// until the test ends). Stands in for a webhook, a Slack endpoint or an alert receiver.
pub struct Receiver {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Received>>>,
}

/// One request a [`Receiver`] got, and the status it answered (`None`: it never answered).
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub answered: Option<u16>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl Receiver {
    pub fn start(answer: impl Fn(usize) -> Option<u16> + Send + 'static) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests: Arc<Mutex<Vec<Received>>> = Arc::default();
        let seen = Arc::clone(&requests);
        thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                use std::io::Write;
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or_default().to_owned();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((n, v)) = h.trim_end().split_once(':') {
                        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
                let length = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok()).unwrap_or(0);
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                let n = seen.lock().unwrap().len() + 1;
                let status = answer(n);
                seen.lock().unwrap().push(Received { path, headers, body, answered: status, at: Instant::now() });
                let mut stream = reader.into_inner();
                match status {
                    Some(code) => {
                        let _ = stream.write_all(format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}").as_bytes());
                    }
                    None => held.push(stream),
                }
            }
        });
        Receiver { url, requests }
    }

    pub fn received(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) until the requests received satisfy `done`.
    pub fn wait_for(&self, limit: Duration, what: &str, mut done: impl FnMut(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "never {what}; received: {:?}", got.iter().map(|r| (&r.path, r.answered, String::from_utf8_lossy(&r.body))).collect::<Vec<_>>());
            thread::sleep(Duration::from_millis(50));
        }
    }
}
