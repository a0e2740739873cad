//! Startup failures: clear messages and a non-zero exit code.

use std::process::Output;

use crate::support::{command, model};

fn serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command();
    cmd.arg("serve").args(args).args(["--host", "127.0.0.1", "--port", "0"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn missing_model_file() {
    let out = serve(&["/nonexistent/model.onnx"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read model file /nonexistent/model.onnx"), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "no ready line");
}

#[test]
fn truncated_and_non_onnx_files() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(model("fraud")).unwrap();
    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let text = dir.path().join("notes.onnx");
    std::fs::write(&text, "this is not a model\n").unwrap();
    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, "").unwrap();
    for (path, needle) in [
        (&truncated, "not a valid ONNX model"),
        (&text, "not a valid ONNX model"),
        (&empty, "is empty"),
    ] {
        let out = serve(&[path.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        let err = stderr(&out);
        assert!(err.contains("cannot load model") || err.contains(needle), "{err}");
        assert!(err.contains(needle), "{err}");
        assert!(out.stdout.is_empty(), "no ready line");
    }
}

#[test]
fn missing_onnx_runtime_says_how_to_get_it() {
    let out = serve(&[&model("fraud")], &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("ONNX Runtime's shared library (libonnxruntime.so) was not found"), "{err}");
    assert!(err.contains("pip install onnxruntime=="), "{err}");
}

#[test]
fn configuration_errors_exit_2_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serving.yaml");
    std::fs::write(&config, "model:\n  path: x.onnx\n  nmae: fraud\nserver:\n  port: 8000\n").unwrap();
    let out = serve(&["--config", config.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown key 'model.nmae'"), "{}", stderr(&out));

    let out = serve(&[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no model given"), "{}", stderr(&out));

    let out = serve(&[&model("fraud"), "--workers", "0", "--name", "a/b"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("server.workers is 0") && err.contains("model name 'a/b' is not valid"), "{err}");
}

#[test]
fn help_teaches() {
    let out = command().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["--config", "--port", "MODEL_PATH", "serving.yaml", "Examples:", "SIGTERM"] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
}

/// `--device`: a GPU this ONNX Runtime cannot use is a failed start that says what to do; a
/// device that is no device is a config error.
#[test]
fn a_gpu_that_cannot_be_used_is_a_failed_start() {
    let out = serve(&[&model("fraud"), "--device", "cuda:0"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    for needle in ["device cuda:0 cannot be used", "onnxruntime-gpu", "--device auto"] {
        assert!(e.contains(needle), "{needle:?} not in: {e}");
    }
    assert!(out.stdout.is_empty(), "no ready line");
    let out = serve(&[&model("fraud")], &[("MODELSHIP_DEVICE", "tpu")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("model.device: device 'tpu' is not one of cpu, auto, auto:N, cuda, cuda:N"), "{}", stderr(&out));
}
