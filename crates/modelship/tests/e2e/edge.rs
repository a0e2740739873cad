//! The edge build: modelship cross-compiled for `aarch64-unknown-linux-gnu` with Debian's cross
//! linker (`.cargo/config.toml`), without the gRPC and Parquet features, with ONNX Runtime's
//! aarch64 library from the `onnxruntime` manylinux aarch64 wheel, serving the NEPSE-style
//! 4-feature XGBoost model offline under `qemu-aarch64` (user-mode emulation), with the same
//! predictions as the x86_64 server. It prints the binary's size, the idle RSS and thread count,
//! and the p50 latency under emulation.
//!
//! qemu-user 7.2 (Debian 12) hands the guest the host's x86 `/proc/cpuinfo`, and ONNX Runtime's
//! cpuinfo library dereferences NULL when it finds no ARM core there; qemu 8.1 and later emulate
//! the file for aarch64. So the emulated root (`-L`) is a directory whose `lib` is the aarch64
//! glibc and whose `proc/cpuinfo` describes a Raspberry Pi 4's Cortex-A72 cores (qemu looks up
//! absolute paths under `-L` first). A real board has its own.
//!
//! The cross build is a debug build of that lean feature set, with the `s3` feature (an edge
//! device follows its alias in a bucket), into its own target directory (`TARGET/edge`),
//! incremental after the first run (ARCHITECTURE.md says why not a release build). The only skip: no aarch64 Rust target on this machine (`rustup target add` could not
//! fetch it), said so; a missing cross linker, qemu or the aarch64 library fails under
//! `MODELSHIP_REQUIRE_TOOLS`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

use crate::support::{Server, model, root};

const TARGET: &str = "aarch64-unknown-linux-gnu";
const SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// The emulated root: the aarch64 glibc, and a Raspberry Pi 4's `/proc/cpuinfo` (one Cortex-A72,
/// implementer 0x41 part 0xd08, per host CPU).
fn emulated_root(dir: &Path) -> PathBuf {
    let root = dir.join("qemu-root");
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::os::unix::fs::symlink(Path::new(SYSROOT).join("lib"), root.join("lib")).unwrap();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let core = |i: usize| {
        format!("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n")
    };
    let cpuinfo: String = (0..cpus).map(core).collect::<String>() + "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n";
    std::fs::write(root.join("proc/cpuinfo"), cpuinfo).unwrap();
    root
}

/// What the test needs; `Err` is why it cannot run.
fn prerequisites() -> Result<PathBuf, String> {
    let sysroot = Command::new("rustc").args(["--print", "sysroot"]).output().map_err(|e| format!("cannot run rustc: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib").join(TARGET).is_dir() {
        // The one allowed skip: the Rust target could not be fetched on this machine.
        eprintln!("SKIPPED: the Rust target {TARGET} is not installed ({}); `rustup target add {TARGET}` could not fetch it here", sysroot.display());
        return Err(String::new());
    }
    let library = root().join(".cache/ort-aarch64/libonnxruntime.so.1.31.1");
    let missing: Vec<String> = [
        (Command::new("aarch64-linux-gnu-gcc").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success()), "aarch64-linux-gnu-gcc (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)".to_owned()),
        (Command::new("qemu-aarch64").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success()), "qemu-aarch64 (apt-get install qemu-user)".to_owned()),
        (Path::new(SYSROOT).join("lib/ld-linux-aarch64.so.1").exists(), format!("{SYSROOT}/lib/ld-linux-aarch64.so.1 (apt-get install libc6-dev-arm64-cross)")),
        (library.is_file(), format!("{} (the onnxruntime manylinux aarch64 wheel's library)", library.display())),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| what)
    .collect();
    if !missing.is_empty() {
        return Err(format!("missing: {}; run scripts/setup.sh --test", missing.join(", ")));
    }
    Ok(library)
}

/// `cargo build` of the edge feature set for aarch64, into `TARGET/edge`; the binary.
fn cross_build() -> PathBuf {
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("edge");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let out = Command::new(cargo)
        .args(["build", "--locked", "-p", "modelship", "--no-default-features", "--features", "s3", "--target", TARGET])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "the aarch64 build failed:\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("edge: cross build (debug, --no-default-features --features s3) took {:.1} s", started.elapsed().as_secs_f64());
    target_dir.join(TARGET).join("debug/modelship")
}

fn elf_machine(path: &Path) -> u16 {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not an ELF file", path.display());
    u16::from_le_bytes([bytes[18], bytes[19]])
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or("").trim().to_owned()
}

/// The cross-built binary and ONNX Runtime's aarch64 library; `None` when the test cannot run
/// here (said so, or a failure under `MODELSHIP_REQUIRE_TOOLS`).
fn edge_build() -> Option<(PathBuf, PathBuf)> {
    let library = match prerequisites() {
        Ok(library) => library,
        Err(why) if why.is_empty() => return None,
        Err(why) => {
            assert!(std::env::var_os("MODELSHIP_REQUIRE_TOOLS").is_none(), "{why}");
            eprintln!("SKIPPED: {why}");
            return None;
        }
    };
    // One build for both tests (cargo serialises them on its lock; the second finds it done).
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let binary = BUILT.get_or_init(cross_build).clone();
    assert_eq!(elf_machine(&binary), 183, "{} is not an aarch64 binary (EM_AARCH64 is 183)", binary.display());
    assert_eq!(elf_machine(&library), 183);
    Some((binary, library))
}

#[test]
fn the_aarch64_build_serves_the_nepse_model_under_qemu() {
    let Some((binary, library)) = edge_build() else { return };
    let size = std::fs::metadata(&binary).unwrap().len();

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("qemu-aarch64");
    cmd.arg("-L")
        .arg(emulated_root(dir.path()))
        .arg(&binary)
        .args(["serve", &model("nepse_xgboost"), "--name", "nepse", "--model-version", "v1", "--workers", "1"])
        .args(["--host", "127.0.0.1", "--port", "0"])
        .arg("--ort-lib")
        .arg(&library)
        .current_dir(root())
        .stdin(Stdio::null());
    let started = Instant::now();
    let edge = Server::spawn(cmd, Some(tempfile::tempdir().unwrap()));
    let ready_s = started.elapsed().as_secs_f64();
    let native = Server::start(&[&model("nepse_xgboost"), "--name", "nepse", "--model-version", "v1"]);

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(root().join("testdata/reference/nepse_xgboost.json")).unwrap()).unwrap();
    let data: Vec<f64> = doc["input"]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let rows: Vec<&[f64]> = data.chunks(4).collect();
    let body = json!({"features": rows}).to_string();
    let on_edge = edge.post("/v1/predict", &body);
    assert_eq!(on_edge.status, 200, "{}\n{}", on_edge.text, edge.stderr());
    assert_eq!(on_edge.json(), native.post("/v1/predict", &body).json(), "aarch64 and x86_64 predictions differ");
    let probabilities = &doc["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "probabilities").unwrap()["data"];
    for (got, want) in on_edge.json()["prediction"].as_array().unwrap().iter().zip(probabilities.as_array().unwrap().chunks(2)) {
        assert!((got.as_f64().unwrap() - want[1].as_f64().unwrap()).abs() < 1e-6, "{got} vs onnxruntime's {}", want[1]);
    }
    let v2 = json!({"inputs": [{"name": "input", "shape": [rows.len(), 4], "datatype": "FP32", "data": rows}]}).to_string();
    assert_eq!(edge.post("/v2/models/nepse/infer", &v2).json(), native.post("/v2/models/nepse/infer", &v2).json());
    // A bad request is refused the same way on the board.
    let bad = edge.post("/v1/predict", r#"{"features": [[1, 2, 3]]}"#);
    assert_eq!((bad.status, bad.json()["error"].is_string()), (400, true), "{}", bad.text);

    // No gRPC listener in the edge build, and no batching threads: the ready line says which
    // listeners there are, /proc how many threads.
    assert!(edge.ready["grpc"].is_null(), "{}", edge.ready);
    let single = json!({"features": [rows[0]]}).to_string();
    for _ in 0..20 {
        edge.post("/v1/predict", &single);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (rss, threads) = (status_field(edge.pid(), "VmRSS:"), status_field(edge.pid(), "Threads:"));
    let mut latencies: Vec<f64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(edge.post("/v1/predict", &single).status, 200);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let mut native_latencies: Vec<f64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            native.post("/v1/predict", &single);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    native_latencies.sort_by(f64::total_cmp);
    eprintln!(
        "edge (aarch64 debug build under qemu-aarch64 on x86_64): binary {:.1} MB, library {:.1} MB, ready in {ready_s:.2} s, idle RSS {rss} (qemu included), {threads} threads, single-row /v1/predict p50 {:.2} ms p99 {:.2} ms (native x86_64 debug: p50 {:.2} ms)",
        size as f64 / 1e6,
        std::fs::metadata(&library).unwrap().len() as f64 / 1e6,
        latencies[100],
        latencies[197],
        native_latencies[100],
    );
}

/// `modelship serve ARGS` on the emulated board, with its own state directory and the S3
/// server's credentials.
fn board(binary: &Path, library: &Path, qemu_root: &Path, state: &Path, env: &[(&'static str, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new("qemu-aarch64");
    cmd.arg("-L").arg(qemu_root).arg(binary).arg("serve").args(args);
    cmd.args(["--workers", "1", "--host", "127.0.0.1", "--port", "0", "--ort-lib"]).arg(library);
    cmd.env("MODELSHIP_STATE_DIR", state).env("HOME", state).current_dir(root()).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The version that answers a request, and any request that failed.
fn served(board: &Server) -> Result<String, String> {
    let reply = board.post("/v2/models/fraud/infer", &crate::support::fraud_body(2));
    match reply.status {
        200 => Ok(reply.json()["model_version"].as_str().unwrap_or_default().to_owned()),
        status => Err(format!("{status}: {}", reply.text)),
    }
}

/// Polls until the board serves `version`; every answer on the way must be a success.
fn until_serving(board: &Server, version: &str, what: &str) -> f64 {
    let started = Instant::now();
    loop {
        match served(board) {
            Ok(v) if v == version => return started.elapsed().as_secs_f64(),
            Ok(_) => {}
            Err(e) => panic!("a request failed while waiting for {what}: {e}\n{}", board.stderr()),
        }
        assert!(started.elapsed().as_secs() < 120, "{what}: the board never served {version}:\n{}", board.stderr());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The readiness document (always 200 here: a board cut off from its registry stays ready).
fn readiness(board: &Server) -> Value {
    let ready = board.get("/health/ready");
    assert_eq!(ready.status, 200, "{}", ready.text);
    ready.json()
}

/// An edge board that follows `fraud@production` in a bucket (a real S3 server, s3s-fs) with the
/// aarch64 build: the alias moves, the board switches; the network is cut, it keeps serving and
/// starts again on the copy it kept; a download that does not match its digest is refused and
/// the old version kept.
#[cfg(feature = "s3")]
#[test]
fn an_edge_board_follows_its_alias_in_a_bucket_and_keeps_serving_offline() {
    use crate::registry_s3::S3;
    let Some((binary, library)) = edge_build() else { return };
    let mut s3 = S3::start();
    let registry = "s3://models/edge";
    let cloud = |s3: &S3, args: &[&str]| {
        let mut all = vec!["--registry", registry];
        all.extend_from_slice(args);
        let out = s3.models(&all);
        assert!(out.status.success(), "models {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Three versions with fraud's inputs; production names 1.
    for (version, file) in [("1", "fraud"), ("2", "xgboost"), ("3", "logistic_regression")] {
        cloud(&s3, &["push", "fraud", &model(file), "--version", version]);
    }
    cloud(&s3, &["alias", "fraud", "production", "1"]);

    let dir = tempfile::tempdir().unwrap();
    let (qemu_root, state) = (emulated_root(dir.path()), dir.path().join("state"));
    let args = ["fraud@production", "--registry", registry, "--poll-interval", "0.3"];
    let start = |env: &[(&'static str, String)]| Server::spawn(board(&binary, &library, &qemu_root, &state, env, &args), None);
    let device = start(&s3.env());
    assert_eq!(served(&device).unwrap(), "1");
    let info = device.get("/v2/models/fraud").json();
    assert_eq!(info["versions"], serde_json::json!(["1"]), "the board reports the version it serves: {info}");

    // The alias moves in the cloud: the board switches, answering all the while.
    let moved = Instant::now();
    cloud(&s3, &["alias", "fraud", "production", "2"]);
    until_serving(&device, "2", "the alias move");
    let switch_s = moved.elapsed().as_secs_f64();
    // Once served, version 2 is this board's kept copy (with 1 before it).
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let kept = loop {
        let records: Vec<Value> = std::fs::read_dir(state.join("registry-copies/served"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect();
        if let Some(r) = records.iter().find(|r| r["record"]["version"] == "2") {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "version 2 was never recorded as served: {records:?}\n{}", device.stderr());
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!((kept["reference"].as_str(), kept["previous"]["version"].as_str()), (Some("fraud@production"), Some("1")), "{kept}");

    // The network is cut (the store stops answering): the board keeps serving version 2, ready,
    // and says why it does not follow.
    s3.kill();
    let cut = Instant::now();
    let mut answered = 0;
    let note = loop {
        assert_eq!(served(&device).as_deref(), Ok("2"), "{}", device.stderr());
        answered += 1;
        let ready = readiness(&device);
        if let Some(note) = ready["errors"].as_array().and_then(|e| e.iter().find(|e| e.to_string().contains("cannot reach the registry"))) {
            break note.clone();
        }
        assert!(cut.elapsed().as_secs() < 90, "readiness never said the registry is out of reach: {ready}\n{}", device.stderr());
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(note.to_string().contains("serving 2"), "{note}");
    for _ in 0..20 {
        assert_eq!(served(&device).as_deref(), Ok("2"));
        answered += 1;
    }

    // Restarted with no network, the board starts on its kept copy of version 2.
    drop(device);
    let restarted = Instant::now();
    let device = start(&s3.env());
    let offline_start_s = restarted.elapsed().as_secs_f64();
    assert_eq!(served(&device).unwrap(), "2", "{}", device.stderr());
    assert!(device.stderr().contains("serving the kept copy"), "{}", device.stderr());

    // The network comes back; version 3 is pushed but its object is damaged in the bucket (or
    // on the way): the download is refused, version 2 goes on serving, readiness names why.
    s3.restart();
    let listed: Value = serde_json::from_str(&cloud(&s3, &["show", "fraud:3", "--output", "json"])).unwrap();
    let digest = listed["digest"].as_str().or(listed["version"]["digest"].as_str()).unwrap_or_else(|| panic!("{listed}")).to_owned();
    let object = s3.object(&format!("edge/sha256/{digest}"));
    let mut damaged = std::fs::read(&object).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x5a;
    std::fs::write(&object, damaged).unwrap();
    cloud(&s3, &["alias", "fraud", "production", "3"]);
    let deadline = Instant::now() + std::time::Duration::from_secs(90);
    let refused = loop {
        assert_eq!(served(&device).as_deref(), Ok("2"), "{}", device.stderr());
        let ready = readiness(&device);
        if let Some(e) = ready["errors"].as_array().and_then(|e| e.iter().find(|e| e.to_string().contains("corrupt"))) {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "the damaged version was never refused: {ready}\n{}", device.stderr());
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(refused.to_string().contains("still serving 2"), "{refused}");
    assert!(!std::fs::read_dir(state.join("registry-copies/sha256")).unwrap().flatten().any(|e| e.file_name().to_string_lossy() == digest), "a damaged download is never kept");

    // Repaired in the bucket and the alias moved again: the board follows.
    std::fs::write(&object, std::fs::read(model("logistic_regression")).unwrap()).unwrap();
    cloud(&s3, &["alias", "fraud", "production", "1"]);
    until_serving(&device, "1", "the move back to 1");
    eprintln!(
        "edge board (aarch64 debug build under qemu, s3s-fs on loopback, poll 0.3 s): alias move served in {switch_s:.2} s; {answered} requests answered by version 2 with the store down, none failed; start with no network on the kept copy in {offline_start_s:.1} s; a damaged download refused, version 2 kept"
    );
}
