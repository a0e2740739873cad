//! The real binary against what an attacker (or an unlucky user) sends: a model that loads but
//! cannot answer, through every path that installs a version; bodies that never end, or declare
//! more than the limit; floods of stalled connections under a low file limit; bodies built to
//! cost memory. The server never answers a client with a version that has not answered, never
//! runs out of connections for its probes, and never grows past a bound set by what it read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::docker::wait_for;
use crate::support::{Server, agent, command, fraud_body, model, reply};

const TOKEN: &str = "hostile-test-admin-token-0123456789";

/// Runs `modelship ARGS` with the registry and state directory given; its output.
fn modelship(args: &[&str], registry: &std::path::Path, state: &std::path::Path) -> std::process::Output {
    command()
        .args(args)
        .env("MODELSHIP_REGISTRY", registry)
        .env("MODELSHIP_STATE_DIR", state)
        .env("MODELSHIP_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap()
}

/// A load's stop flag, count of requests sent, failures with their answers, and its thread.
type Load = (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>, thread::JoinHandle<()>);

/// A load of V2 requests on `server` until stopped.
fn load(server: &Server) -> Load {
    let (stop, sent, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
    let (url, s, n, f) = (server.url("/v2/models/fraud/infer"), Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&failed));
    let handle = thread::spawn(move || {
        let agent = agent();
        let body = fraud_body(1);
        while !s.load(Ordering::Relaxed) {
            let answer = agent.post(&url).header("content-type", "application/json").send(&body).map(reply);
            n.fetch_add(1, Ordering::Relaxed);
            match answer {
                Ok(r) if r.status == 200 => {}
                Ok(r) => f.lock().unwrap().push(format!("{}: {}", r.status, r.text)),
                Err(e) => f.lock().unwrap().push(e.to_string()),
            }
        }
    });
    (stop, sent, failed, handle)
}

fn admin_post(server: &Server, path: &str, body: &str) -> (u16, Value) {
    let url = format!("http://{}{path}", server.ready["admin"].as_str().unwrap());
    let r = agent().post(&url).header("authorization", format!("Bearer {TOKEN}")).send(body).map(reply).unwrap();
    (r.status, serde_json::from_str(&r.text).unwrap_or(Value::Null))
}

#[test]
fn a_version_that_cannot_answer_is_never_served_whatever_installs_it() {
    // At startup: a failed start that says why, never a server answering 500.
    let dir = tempfile::tempdir().unwrap();
    let out = command()
        .args(["serve", &model("broken"), "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0", "--admin-port", "0"])
        .env("MODELSHIP_STATE_DIR", dir.path())
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("loads but cannot answer") && stderr.contains("warm-up request 1 of 2 (zeros) failed"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("\"ready\""), "no ready line for a model that cannot answer");

    let (registry, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (reg, st) = (registry.path(), state.path());
    for (name, file, version) in [("fraud", "fraud", "1"), ("fraud", "broken", "3"), ("bad", "broken", "1"), ("other", "xgboost", "1")] {
        let out = modelship(&["models", "push", name, &model(file), "--version", version], reg, st);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(modelship(&["models", "alias", "fraud", "production", "1"], reg, st).status.success());
    let server = Server::start_with(
        &["fraud@production", "--registry", reg.to_str().unwrap(), "--poll-interval", "0.2", "--keep-warm", "60"],
        &[("MODELSHIP_STATE_DIR", st.to_str().unwrap()), ("MODELSHIP_ADMIN_TOKEN", TOKEN)],
    );
    let admin = format!("http://{}", server.ready["admin"].as_str().unwrap());
    let (stop, sent, failed, clients) = load(&server);
    let refused = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--admin", &admin]);
        let out = modelship(&all, reg, st);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} went through");
        assert!(stderr.contains("version 3 cannot answer"), "{args:?}: {stderr}");
    };
    // A traffic switch, a canary.
    refused(&["traffic", "switch", "fraud", "3"]);
    refused(&["traffic", "set", "fraud", "--candidate", "3", "--weight", "50%"]);
    // A rollout: its first step cannot load the version, so no request ever reaches it.
    let spec = st.join("canary.yaml");
    std::fs::write(&spec, "to: '3'\ncanary: {weights: [50, 100], every: 1m}\ninterval: 200ms\n").unwrap();
    let started = modelship(&["rollout", "start", "fraud", "--spec", spec.to_str().unwrap(), "--admin", &admin], reg, st);
    eprintln!("rollout start to a version that cannot answer: exit {:?}, {}", started.status.code(), String::from_utf8_lossy(&started.stderr).trim());
    thread::sleep(Duration::from_secs(1));
    // An alias move: the follower refuses it, says so in readiness, keeps serving 1.
    assert!(modelship(&["models", "alias", "fraud", "production", "3"], reg, st).status.success());
    wait_for("the refused alias move in readiness", Duration::from_secs(30), || {
        server.get("/health/ready").json()["errors"].to_string().contains("cannot answer")
    });
    assert_eq!(server.get("/health/ready").status, 200, "a refused version takes nothing out of service");
    // A repository load of a model that cannot answer: 409 naming why, readiness still 200.
    let (status, body) = admin_post(&server, "/v2/repository/models/bad/load", "");
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("cannot answer"), "{body}");
    let ready = server.get("/health/ready");
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert!(ready.json()["errors"].to_string().contains("bad"), "{}", ready.text);
    // A good one beside the server's own model: /v1/predict still answers for fraud.
    assert_eq!(admin_post(&server, "/v2/repository/models/other/load", "").0, 200);
    let predict = server.post("/v1/predict", r#"{"features": [[0.1, 1.2, -0.3, 0.4, 2.5, -1.6, 0.7, 0.8, -0.9, 1.0, 0.1, 0.2, 0.3, -0.4, 0.5, 0.6, -0.7, 0.8, 0.9, 1.0, -1.1, 0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, 0.9, 1.0]]}"#);
    assert_eq!(predict.status, 200, "{}", predict.text);
    assert_eq!(predict.header("x-model-version"), Some("1"));
    // The server's own model is never re-versioned by a repository load.
    let (status, body) = admin_post(&server, "/v2/repository/models/fraud/load", r#"{"parameters": {"version": "zzz"}}"#);
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("traffic switch"), "{body}");

    stop.store(true, Ordering::Relaxed);
    clients.join().unwrap();
    let failed = failed.lock().unwrap();
    assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), sent.load(Ordering::Relaxed), &failed[..failed.len().min(3)]);
    let status: Value =
        serde_json::from_slice(&modelship(&["traffic", "status", "fraud", "--output", "json", "--admin", &admin], reg, st).stdout).unwrap();
    assert_eq!(status["traffic"]["stable"], "1", "{status}");
    assert!(status["traffic"]["candidate"].is_null(), "{status}");
    assert!(server.stderr().contains("warm-up failed; the version is refused"), "the log names the refusal");
    eprintln!("broken versions: {} requests during 6 refused installs, none failed", sent.load(Ordering::Relaxed));
}

/// Sends `head` (and `body`) on a new connection; what comes back within `limit`, how long
/// that took, and whether the server closed the connection after it.
fn raw(addr: &str, head: &str, body: &[u8], limit: Duration) -> (String, Duration, bool) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    let started = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    let closed = match stream.read_to_end(&mut answer) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    (String::from_utf8_lossy(&answer).into_owned(), started.elapsed(), closed)
}

#[test]
fn bodies_are_bounded_in_size_and_time() {
    let server = Server::start(&[&model("fraud"), "--max-body-bytes", "1048576", "--body-read-timeout", "1"]);
    let addr = server.addr.clone();
    let head = |length: u64, extra: &str| {
        format!("POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n")
    };
    // (what, head, body sent, status line, error fragment)
    let cases: Vec<(&str, String, &[u8], &str, &str)> = vec![
        ("a declared length over the limit", head(16_000_000, ""), b"{", "HTTP/1.1 413", "larger than the limit of 1048576 bytes"),
        ("100-continue for 100 GB", head(100_000_000_000, "Expect: 100-continue\r\n"), b"", "HTTP/1.1 413", "larger than the limit"),
        ("a body that stops", head(1000, ""), b"{\"inputs\": [", "HTTP/1.1 408", "stopped arriving"),
    ];
    for (what, head, body, status, fragment) in cases {
        let (answer, took, closed) = raw(&addr, &head, body, Duration::from_secs(30));
        assert!(answer.starts_with(status), "{what}: {answer:.300}");
        assert!(closed, "{what}: the connection stayed open");
        assert!(!answer.contains("100 Continue"), "{what}: answered 100 Continue");
        assert!(answer.contains("application/json") && answer.contains(fragment), "{what}: {answer:.500}");
        eprintln!("{what}: {status} after {:.0} ms, connection closed", took.as_secs_f64() * 1000.0);
    }
    // A trickle slower than the minimum rate is cut off too, though it never pauses for long.
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream.write_all(head(100_000, "").as_bytes()).unwrap();
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(60) {
        if stream.write_all(b" ").is_err() {
            cut = true;
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert!(cut, "a body trickling at 5 bytes/s was never cut off");
    eprintln!("a 5 bytes/s trickle was cut after {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(server.get("/health/ready").status, 200);
}

/// The server's peak resident memory, and its current, in kB (from /proc).
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[test]
fn memory_per_request_is_bounded_by_its_body() {
    let server = Server::start(&[&model("fraud")]);
    let warm = server.post("/v2/models/fraud/infer", &fraud_body(1));
    assert_eq!(warm.status, 200);
    let (_, before) = memory_kb(server.pid());
    // Bodies of about 15 MB each, built to cost memory when decoded naively.
    let size = 15 << 20;
    let row = r#"{"name":"input","shape":[1,30],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}"#;
    let repeat_to = |unit: &str, open: &str, close: &str| {
        let n = (size - open.len() - close.len()) / (unit.len() + 1);
        format!("{open}{}{close}", vec![unit; n].join(","))
    };
    let bodies: Vec<(&str, String)> = vec![
        ("nested empty arrays in parameters", repeat_to("[[[[[]]]]]", &format!(r#"{{"inputs":[{row}],"parameters":{{"x":["#), "]}}")),
        ("a shape of 5 million dimensions", repeat_to("1", r#"{"inputs":[{"name":"input","datatype":"FP32","data":[1],"shape":["#, "]}]}")),
        ("an input name of 15 MB", format!(r#"{{"inputs":[{{"name":"{}","shape":[1],"datatype":"FP32","data":[1]}}]}}"#, "n".repeat(size - 64))),
        ("300 000 one-element inputs", repeat_to(r#"{"name":"i","shape":[1],"datatype":"FP32","data":[1]}"#, r#"{"inputs":["#, "]}")),
        ("entities of empty objects", repeat_to("{}", r#"{"features":[[1]],"entities":["#, "]}")),
    ];
    let mut sent = 0usize;
    for (what, body) in &bodies {
        let path = if what.starts_with("entities") { "/v1/predict" } else { "/v2/models/fraud/infer" };
        // Four at once, as an attacker would send them.
        let answers: Vec<_> = (0..4)
            .map(|_| {
                let (url, body) = (server.url(path), body.clone());
                thread::spawn(move || agent().post(&url).header("content-type", "application/json").send(&body).map(reply).unwrap())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for r in &answers {
            assert!((400..500).contains(&r.status), "{what}: {} {:.300}", r.status, r.text);
            assert!(r.text.len() < 2048, "{what}: an error of {} bytes", r.text.len());
        }
        sent += body.len() * 4;
        let (peak, now) = memory_kb(server.pid());
        eprintln!("{what}: 4 x {} MB, 4xx; peak RSS {} MB over the {} MB before, now {} MB", body.len() >> 20, (peak.saturating_sub(before)) >> 10, before >> 10, now >> 10);
    }
    let (peak, now) = memory_kb(server.pid());
    let grown_mb = peak.saturating_sub(before) >> 10;
    let in_flight_mb = (bodies.iter().map(|(_, b)| b.len()).max().unwrap() * 4) >> 20;
    eprintln!("hostile bodies: {} MB sent; peak RSS grew {grown_mb} MB (bound: 4 x {in_flight_mb} MB in flight + 64 MB); {} MB resident after", sent >> 20, now >> 10);
    assert!(grown_mb <= 4 * in_flight_mb as u64 + 64, "peak RSS grew {grown_mb} MB for {in_flight_mb} MB of bodies in flight");
    assert_eq!(server.post("/v2/models/fraud/infer", &fraud_body(1)).status, 200);
}

#[test]
fn a_flood_of_stalled_connections_never_locks_out_the_probes() {
    // 2 000 uploads that stall and 2 000 heads that never end, against a server whose file
    // limit is 1 024 (this test needs about 4 100 descriptors of its own: fewer where its own
    // limit is lower, said in the figures it prints).
    let per_kind = (modelship_server::open_files_limit().unwrap_or(usize::MAX).saturating_sub(200) / 2).min(2_000);
    let state = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("bash");
    cmd.current_dir(crate::support::root())
        .stdin(Stdio::null())
        .args(["-c", "ulimit -n 1024 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_modelship")])
        .args(["serve", &model("fraud"), "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0", "--admin-port", "0"])
        .args(["--body-read-timeout", "2", "--header-read-timeout", "2", "--shutdown-grace", "10"]);
    let mut server = Server::spawn(cmd, Some(state));
    let addr = server.addr.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let probes = {
        let (stop, url) = (Arc::clone(&stop), server.url("/health/ready"));
        thread::spawn(move || {
            let mut latencies = Vec::new();
            let agent = ureq::Agent::config_builder().http_status_as_error(false).max_idle_connections(0).timeout_global(Some(Duration::from_secs(10))).build();
            let agent: ureq::Agent = agent.into();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let status = agent.get(&url).call().map(|r| r.status().as_u16()).unwrap_or_else(|e| {
                    eprintln!("flood: probe {} failed: {e}", latencies.len());
                    0
                });
                latencies.push((status, started.elapsed()));
                thread::sleep(Duration::from_millis(50));
            }
            latencies
        })
    };
    let mut held = Vec::new();
    for i in 0..per_kind * 2 {
        let Ok(mut stream) = TcpStream::connect(&addr) else { continue };
        let _ = if i % 2 == 0 {
            stream.write_all(b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 16000000\r\n\r\n{")
        } else {
            stream.write_all(b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\n")
        };
        held.push(stream);
    }
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let latencies = probes.join().unwrap();
    let worst = latencies.iter().map(|(_, t)| *t).max().unwrap_or_default();
    let mut sorted: Vec<Duration> = latencies.iter().map(|(_, t)| *t).collect();
    sorted.sort();
    let p99 = sorted.get(sorted.len().saturating_sub(1) * 99 / 100).copied().unwrap_or_default();
    let failed = latencies.iter().filter(|(s, _)| *s != 200).count();
    eprintln!(
        "flood: {} stalled uploads + {} endless heads at ulimit -n 1024; {} probes, {failed} not answered; p99 {:.1} ms, worst {:.1} ms",
        per_kind, per_kind, latencies.len(), p99.as_secs_f64() * 1000.0, worst.as_secs_f64() * 1000.0
    );
    // At the cap the server closes the connections that waited longest on their clients (stalled
    // heads, stalled uploads) first. A new connection it has not read yet can still be closed
    // when hundreds arrive faster than it reads them, more so on a busy machine: how many probes
    // that costs is a figure, printed above. What never happens is readiness lost to an
    // orchestrator: `deploy kubernetes` marks a pod unready after 2 failed probes in a row.
    assert!(!latencies.is_empty(), "no probe ran");
    let in_a_row = latencies.windows(2).any(|w| w[0].0 != 200 && w[1].0 != 200);
    assert!(!in_a_row, "readiness lost during the flood: 2 probes in a row failed ({failed} of {} in all): {latencies:?}", latencies.len());
    // Every stalled connection is closed by a timeout or to admit another.
    let closed = held
        .iter_mut()
        .map(|s| {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
                }
            }
        })
        .filter(|closed| *closed)
        .count();
    assert_eq!(closed, held.len(), "stalled connections left open");
    assert!(server.stderr().contains("connection limit reached"), "the cap said so in the log");
    // A stalled upload does not hold the drain: SIGTERM with uploads stalled exits in time.
    let stalled: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"POST /v2/models/fraud/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{").unwrap();
            s
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(20));
    assert!(status.success(), "{}", server.stderr());
    eprintln!("SIGTERM with 50 uploads stalled: exit 0 after {:.1} s (grace 10 s, body timeout 2 s)", signalled.elapsed().as_secs_f64());
    drop(stalled);
}

#[test]
fn bad_values_of_every_datatype_are_the_clients_400_never_the_models_500() {
    let server = Server::start(&[&model("dtypes")]);
    let good: Vec<(&str, Value)> = vec![
        ("BOOL", serde_json::json!([true])),
        ("UINT8", serde_json::json!([1])),
        ("UINT16", serde_json::json!([1])),
        ("UINT32", serde_json::json!([1])),
        ("UINT64", serde_json::json!([1])),
        ("INT8", serde_json::json!([1])),
        ("INT16", serde_json::json!([1])),
        ("INT32", serde_json::json!([1])),
        ("INT64", serde_json::json!([1])),
        ("FP16", serde_json::json!([1.5])),
        ("FP32", serde_json::json!([1.5])),
        ("FP64", serde_json::json!([1.5])),
        ("BYTES", serde_json::json!(["ab"])),
    ];
    // Every input, with `datatype`'s data replaced by `data` (raw JSON text).
    let body = |datatype: &str, data: &str| {
        let inputs: Vec<String> = good
            .iter()
            .map(|(t, d)| {
                let data = if *t == datatype { data.to_owned() } else { d.to_string() };
                format!(r#"{{"name":"in_{}","shape":[1],"datatype":"{t}","data":{data}}}"#, t.to_lowercase())
            })
            .collect();
        format!(r#"{{"inputs":[{}]}}"#, inputs.join(","))
    };
    let ok = server.post("/v2/models/dtypes/infer", &body("", ""));
    assert_eq!(ok.status, 200, "{}", ok.text);
    // (datatype, data, error fragment)
    let cases = [
        ("BOOL", "[2]", "not a valid BOOL value"),
        ("BOOL", r#"["true"]"#, "not a valid BOOL value"),
        ("UINT8", "[256]", "not a valid UINT8 value"),
        ("UINT8", "[-1]", "not a valid UINT8 value"),
        ("UINT8", "[1.5]", "not a valid UINT8 value"),
        ("UINT16", "[65536]", "not a valid UINT16 value"),
        ("UINT32", "[4294967296]", "not a valid UINT32 value"),
        ("UINT64", "[18446744073709551616]", "not a valid UINT64 value"),
        ("UINT64", "[-1]", "not a valid UINT64 value"),
        ("INT8", "[128]", "not a valid INT8 value"),
        ("INT16", "[-32769]", "not a valid INT16 value"),
        ("INT32", "[2147483648]", "not a valid INT32 value"),
        ("INT64", "[9223372036854775808]", "not a valid INT64 value"),
        ("INT64", "[-9223372036854775809]", "not a valid INT64 value"),
        ("FP16", "[1e10]", "not a valid FP16 value"),
        ("FP32", "[1e300]", "not a valid FP32 value"),
        ("FP64", r#"["1.5"]"#, "not a valid FP64 value"),
        ("BYTES", r#"["a\u0000b"]"#, "NUL byte"),
        ("BYTES", "[1]", "not a valid BYTES value"),
    ];
    for (datatype, data, fragment) in cases {
        let r = server.post("/v2/models/dtypes/infer", &body(datatype, data));
        assert_eq!(r.status, 400, "{datatype} {data}: {}", r.text);
        let error = r.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(fragment), "{datatype} {data}: {error}");
    }
    let metrics = server.get("/metrics").text;
    let server_errors: Vec<&str> = metrics.lines().filter(|l| l.starts_with("modelship_requests_total") && l.contains(r#"code="500""#)).collect();
    assert!(server_errors.is_empty(), "a client's bad value counted as the model's failure: {server_errors:?}");
    let failed = server.metric("modelship_request_errors_total", &["model=\"dtypes\"", "error=\"inference_failed\""]).unwrap_or(0.0);
    assert_eq!(failed, 0.0, "inference_failed counted for a client's bad value");
}

#[test]
fn a_versions_own_warmup_sample_catches_what_zeros_do_not() {
    let (registry, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (reg, st) = (registry.path(), state.path());
    // Real rows: the faulty model fails on them (a feature above 1.5), not on zeros or small values.
    let sample = st.join("sample.json");
    std::fs::write(&sample, fraud_body(2)).unwrap();
    let not_a_request = st.join("notes.txt");
    std::fs::write(&not_a_request, "a few rows").unwrap();
    let push = |file: &str, version: &str, extra: &[&str]| {
        let mut args = vec!["models", "push", "fraud", file, "--version", version];
        args.extend_from_slice(extra);
        modelship(&args, reg, st)
    };
    let refused = push(&model("faulty"), "9", &["--warmup-sample", not_a_request.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not a V2 inference request"), "{}", String::from_utf8_lossy(&refused.stderr));
    let with_sample = vec!["--warmup-sample", sample.to_str().unwrap()];
    // 4 renames its input: the sample of 1 (served first) is 1's alone, never 4's.
    for (file, version, extra) in [("fraud", "1", with_sample.clone()), ("faulty", "2", vec![]), ("faulty", "3", with_sample.clone()), ("renamed_input", "4", vec![])] {
        let out = push(&model(file), version, &extra);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let shown: Value = serde_json::from_slice(&modelship(&["models", "show", "fraud:3", "--output", "json"], reg, st).stdout).unwrap();
    assert!(shown["labels"]["warmup_sample"].as_str().is_some_and(|l| l.starts_with("sha256:")), "{shown}");
    // gc keeps the sample: a version names it.
    let gc = modelship(&["models", "gc", "--unreferenced", "--older-than", "0s"], reg, st);
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));

    let server = Server::start_with(
        &["fraud:1", "--registry", reg.to_str().unwrap()],
        &[("MODELSHIP_STATE_DIR", st.to_str().unwrap()), ("MODELSHIP_ADMIN_TOKEN", TOKEN)],
    );
    let admin = format!("http://{}", server.ready["admin"].as_str().unwrap());
    let set = |version: &str| modelship(&["traffic", "set", "fraud", "--candidate", version, "--weight", "0%", "--admin", &admin], reg, st);
    // Without a sample, zeros and drawn rows pass: the version loads (and would fail real traffic).
    let two = set("2");
    assert!(two.status.success(), "{}", String::from_utf8_lossy(&two.stderr));
    // A version without a sample is warmed by the server's own requests, not the first version's sample.
    let four = set("4");
    assert!(four.status.success(), "{}", String::from_utf8_lossy(&four.stderr));
    // With its own rows, the same model is refused before any client reaches it.
    let three = set("3");
    let stderr = String::from_utf8_lossy(&three.stderr);
    assert!(!three.status.success(), "version 3 was installed");
    assert!(stderr.contains("version 3 cannot answer") && stderr.contains("the warm-up sample of fraud:3"), "{stderr}");
}
