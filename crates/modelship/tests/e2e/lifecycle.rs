//! Drain on SIGTERM, overload, and inference kept off the request-handling threads. The slow
//! model gives in-flight work of a chosen length without any test hook in the server.

use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{Server, agent, model, reply, slow_body};

/// About 1 s of work on this kind of machine (40 µs per iteration), whatever the build profile:
/// the work happens inside ONNX Runtime.
const ONE_SECOND: i64 = 25_000;

fn post_in_background(url: String, body: String) -> mpsc::Receiver<(Result<crate::support::Reply, String>, Instant)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let result = agent()
            .post(&url)
            .header("content-type", "application/json")
            .send(body)
            .map(reply)
            .map_err(|e| e.to_string());
        let _ = tx.send((result, Instant::now()));
    });
    rx
}

/// Waits until the server reports `n` inference requests in flight.
fn wait_in_flight(server: &Server, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric("modelship_requests_in_flight", &[r#"endpoint="v2_infer""#]) != Some(n) {
        assert!(Instant::now() < deadline, "never saw {n} requests in flight");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mut server = Server::start(&[&model("slow"), "--workers", "1"]);
    let pending = post_in_background(server.url("/v2/models/slow/infer"), slow_body(ONE_SECOND));
    wait_in_flight(&server, 1.0);
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(30));
    let (result, _) = pending.recv_timeout(Duration::from_secs(30)).unwrap();
    let reply = result.expect("the in-flight request completes");
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    // The listener is gone: no new connections.
    assert!(TcpStream::connect(&server.addr).is_err());
    assert!(server.stderr().contains("drained; exiting"));
}

#[test]
fn readiness_turns_503_at_once_during_the_shutdown_delay() {
    let mut server = Server::start(&[&model("fraud"), "--shutdown-delay", "3"]);
    assert_eq!(server.get("/health/ready").status, 200);
    server.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(2);
    let ready = loop {
        let ready = server.get("/health/ready");
        if ready.status == 503 || Instant::now() > deadline {
            break ready;
        }
        thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "shutting down");
    assert_eq!(ready.json()["checks"]["shutting_down"], true);
    assert_eq!(server.get("/v2/health/ready").status, 503);
    // Inference still works while the load balancer catches up.
    assert_eq!(server.post("/v2/models/fraud/infer", &crate::support::fraud_body(1)).status, 200);
    assert_eq!(server.wait(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn grace_period_bounds_the_drain() {
    let mut server = Server::start(&[&model("slow"), "--workers", "1", "--shutdown-grace", "0.2"]);
    let pending = post_in_background(server.url("/v2/models/slow/infer"), slow_body(20 * ONE_SECOND));
    wait_in_flight(&server, 1.0);
    let signalled = Instant::now();
    server.signal("INT");
    let status = server.wait(Duration::from_secs(15));
    let stopped_after = signalled.elapsed();
    let (result, answered) = pending.recv_timeout(Duration::from_secs(30)).unwrap();
    // The request was cut off when the process exited, well before its 20 s of work.
    assert!(result.is_err() || result.as_ref().unwrap().status != 200);
    assert!(answered.duration_since(signalled) < Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    assert!(server.stderr().contains("grace period ran out"), "{}", server.stderr());
    assert!(stopped_after < Duration::from_secs(15));
}

#[test]
fn past_the_queue_bound_requests_get_429_before_the_work_ends() {
    let server = Server::start(&[&model("slow"), "--workers", "1", "--max-queue", "1"]);
    let url = server.url("/v2/models/slow/infer");
    // One request runs, one waits in the queue, the rest are refused. The first runs about 5 s on
    // an idle core: room for the others to arrive on a machine busy with other work.
    let first = post_in_background(url.clone(), slow_body(5 * ONE_SECOND));
    wait_in_flight(&server, 1.0);
    let second = post_in_background(url.clone(), slow_body(ONE_SECOND / 10));
    wait_in_flight(&server, 2.0);
    let refused: Vec<_> = (0..3).map(|_| post_in_background(url.clone(), slow_body(ONE_SECOND / 10))).collect();
    let mut refused_at = Vec::new();
    for rx in refused {
        let (result, at) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let reply = result.unwrap();
        assert_eq!(reply.status, 429, "{}", reply.text);
        assert_eq!(reply.header("retry-after"), Some("1"));
        assert!(reply.json()["error"].as_str().unwrap().contains("model 'slow' is overloaded"));
        refused_at.push(at);
    }
    let (first, first_at) = first.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(first.unwrap().status, 200);
    let (second, _) = second.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(second.unwrap().status, 200);
    // "Promptly": every refusal arrived while the first request was still running.
    assert!(refused_at.iter().all(|at| *at < first_at));
    assert_eq!(server.metric("modelship_requests_total", &[r#"code="429""#]), Some(3.0));
}

#[test]
fn probes_and_metadata_answer_while_every_worker_is_busy() {
    let server = Server::start(&[&model("slow"), "--workers", "1"]);
    // About 5 s on an idle core: room for the probes on a machine busy with other work.
    let busy = post_in_background(server.url("/v2/models/slow/infer"), slow_body(5 * ONE_SECOND));
    wait_in_flight(&server, 1.0);
    for path in ["/health/live", "/health/ready", "/v2/models/slow", "/metrics"] {
        assert_eq!(server.get(path).status, 200, "{path}");
    }
    // All of those were answered before the inference finished.
    assert!(busy.try_recv().is_err(), "the slow inference finished too early to tell");
    let (result, _) = busy.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(result.unwrap().status, 200);
}

/// gRPC drains with HTTP: a slow `ModelInfer` in flight at SIGTERM completes (tritonclient gets
/// its answer, not CANCELLED) and the server exits 0.
#[cfg(feature = "grpc")]
#[test]
fn sigterm_drains_a_slow_grpc_request() {
    let mut server = Server::start(&[&model("slow"), "--workers", "1"]);
    let script = format!(
        "import numpy as np, tritonclient.grpc as g\n\
         c = g.InferenceServerClient('{}')\n\
         i = g.InferInput('iterations', [], 'INT64')\n\
         i.set_data_from_numpy(np.array({}, dtype=np.int64))\n\
         r = c.infer('slow', [i])\n\
         print('answered', r.get_response().model_name)",
        server.ready["grpc"].as_str().unwrap(),
        3 * ONE_SECOND
    );
    let client = std::process::Command::new(crate::support::tool(".cache/triton-venv/bin/python"))
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric("modelship_requests_in_flight", &[r#"endpoint="grpc_infer""#]) != Some(1.0) {
        assert!(Instant::now() < deadline, "never saw the gRPC request in flight");
        thread::sleep(Duration::from_millis(10));
    }
    let signalled = Instant::now();
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(30));
    let out = client.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("answered slow"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(signalled.elapsed() > Duration::from_millis(500), "the server waited for the request");
    assert!(server.stderr().contains("drained; exiting"));
}

/// A client that opens a connection and sends nothing (or dribbles its headers) is cut off after
/// the header timeout; the server keeps answering others.
#[test]
fn slow_clients_are_cut_off() {
    use std::io::{Read, Write};
    let server = Server::start(&[&model("fraud"), "--header-read-timeout", "0.5"]);
    let mut silent = TcpStream::connect(&server.addr).unwrap();
    let mut dribbling = TcpStream::connect(&server.addr).unwrap();
    dribbling.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n").unwrap();
    thread::sleep(Duration::from_millis(1500));
    let _ = dribbling.write_all(b"X-Late: 1\r\n");
    for stream in [&mut silent, &mut dribbling] {
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        // Closed by the server: EOF (or a reset), possibly after a 408.
        match stream.read(&mut buf) {
            Ok(n) => assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"), "{}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => assert!(e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut, "still open: {e}"),
        }
    }
    assert_eq!(server.get("/health/live").status, 200);
}
