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
//! The cross build is a debug build of that lean feature set into its own target directory
//! (`TARGET/edge`), incremental after the first run (ARCHITECTURE.md says why not a release
//! build). The only skip: no aarch64 Rust target on this machine (`rustup target add` could not
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
        .args(["build", "--locked", "-p", "modelship", "--no-default-features", "--target", TARGET])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "the aarch64 build failed:\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("edge: cross build (debug, --no-default-features) took {:.1} s", started.elapsed().as_secs_f64());
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

#[test]
fn the_aarch64_build_serves_the_nepse_model_under_qemu() {
    let library = match prerequisites() {
        Ok(library) => library,
        Err(why) if why.is_empty() => return,
        Err(why) => {
            assert!(std::env::var_os("MODELSHIP_REQUIRE_TOOLS").is_none(), "{why}");
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let binary = cross_build();
    assert_eq!(elf_machine(&binary), 183, "{} is not an aarch64 binary (EM_AARCH64 is 183)", binary.display());
    assert_eq!(elf_machine(&library), 183);
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
