//! `--device` with ONNX Runtime's CUDA build (the `onnxruntime-gpu` wheel's library and its CUDA
//! and TensorRT providers, `.cache/ort-gpu` from `scripts/setup.sh --test`) on a machine with no
//! GPU and no CUDA runtime: the provider really is registered, and its failure to start is a
//! clean refusal naming what is missing (here, CUDA's own libraries), as on a node without a
//! GPU or with the image's CUDA missing. `auto` then runs on the CPU, as does the GPU image
//! started on a CPU node. No GPU has run this yet (BENCHMARKS.md says why).

use std::path::{Path, PathBuf};

use modelship_inference::{Backend, Device, Gpu, InferError, LoadOptions, Placement};
use modelship_onnx::OnnxBackend;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gpu_library() -> Option<PathBuf> {
    let lib = root().join(".cache/ort-gpu").join(format!("libonnxruntime.so.{}", modelship_onnx::TESTED_ORT_VERSION));
    if lib.exists() {
        return Some(lib);
    }
    let why = format!("{} is missing: run scripts/setup.sh --test (it extracts the onnxruntime-gpu wheel's library)", lib.display());
    assert!(std::env::var_os("MODELSHIP_REQUIRE_TOOLS").is_none(), "{why}");
    eprintln!("SKIPPED: {why}");
    None
}

fn load(backend: &OnnxBackend, device: Device) -> Result<Placement, InferError> {
    let model = std::fs::read(root().join("examples/models/fraud.onnx")).unwrap();
    backend.load(&model, &LoadOptions { device, ..LoadOptions::default() }).map(|s| s.info().placement)
}

#[test]
fn the_cuda_build_without_a_gpu_refuses_cleanly_and_auto_runs_on_the_cpu() {
    let Some(lib) = gpu_library() else { return };
    let backend = OnnxBackend::new(Some(&lib)).unwrap();
    assert_eq!(load(&backend, Device::Cpu).unwrap(), Placement::Cpu, "the GPU build runs on the CPU too");

    let e = load(&backend, Device::Cuda(Gpu::default())).unwrap_err().to_string();
    for needle in ["device cuda:0 cannot be used", "registering CUDAExecutionProvider failed", "libcublas", "--device auto"] {
        assert!(e.contains(needle), "{needle:?} not in: {e}");
    }
    // TensorRT is in this build and tried first; without its libraries the start fails just as cleanly.
    let e = load(&backend, Device::Cuda(Gpu { tensorrt: true, memory_limit: Some(1 << 30), ..Gpu::default() })).unwrap_err().to_string();
    assert!(e.contains("device cuda:0 cannot be used"), "{e}");
    assert_eq!(load(&backend, Device::Auto(Gpu::default())).unwrap(), Placement::Cpu);
    assert_eq!(load(&backend, Device::Cuda(Gpu { id: 3, fallback_to_cpu: true, ..Gpu::default() })).unwrap(), Placement::Cpu);
}
