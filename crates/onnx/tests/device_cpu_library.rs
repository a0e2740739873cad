//! `--device` with the CPU build of ONNX Runtime (the `onnxruntime` wheel, what `scripts/setup.sh`
//! installs): asking for the GPU is refused with what to do, `auto` and an asked-for fall-back run
//! on the CPU. One library per process (ONNX Runtime is loaded once), so the CUDA build's test
//! is `device_gpu_library.rs`.

use std::path::{Path, PathBuf};

use modelship_inference::{Backend, Device, Gpu, InferError, LoadOptions, Placement};
use modelship_onnx::OnnxBackend;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cpu_library() -> PathBuf {
    std::fs::read_dir(root().join(".venv/lib"))
        .expect("scripts/setup.sh made .venv")
        .filter_map(Result::ok)
        .map(|d| d.path().join("site-packages/onnxruntime/capi"))
        .find_map(|capi| std::fs::read_dir(capi).ok()?.filter_map(Result::ok).map(|f| f.path()).find(|f| f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so."))))
        .expect("ONNX Runtime's library in .venv (scripts/setup.sh)")
}

fn load(backend: &OnnxBackend, device: Device) -> Result<Placement, InferError> {
    let model = std::fs::read(root().join("examples/models/fraud.onnx")).unwrap();
    backend.load(&model, &LoadOptions { device, ..LoadOptions::default() }).map(|s| s.info().placement)
}

#[test]
fn the_cpu_build_refuses_the_gpu_and_says_what_to_do() {
    let backend = OnnxBackend::new(Some(&cpu_library())).unwrap();
    assert_eq!(load(&backend, Device::Cpu).unwrap(), Placement::Cpu);

    for device in [Device::Cuda(Gpu::default()), Device::Cuda(Gpu { id: 1, tensorrt: true, ..Gpu::default() })] {
        let id = device.gpu().unwrap().id;
        let e = load(&backend, device).unwrap_err().to_string();
        for needle in [&format!("device cuda:{id} cannot be used"), "no CUDA execution provider", "onnxruntime-gpu", "--device cpu", "--device auto", "fallback_to_cpu"] {
            assert!(e.contains(needle), "{needle:?} not in: {e}");
        }
    }
    // Asked for: the CPU, logged.
    assert_eq!(load(&backend, Device::Cuda(Gpu { fallback_to_cpu: true, ..Gpu::default() })).unwrap(), Placement::Cpu);
    // auto: the CPU, since no GPU works here.
    assert_eq!(load(&backend, Device::Auto(Gpu::default())).unwrap(), Placement::Cpu);
}
