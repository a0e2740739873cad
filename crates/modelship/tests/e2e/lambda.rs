//! The binary as an AWS Lambda function, under the real Runtime Interface Emulator
//! (`aws-lambda-rie`, from the `aws-sam-cli` wheel; scripts/setup.sh --test): packaged by the
//! Makefile `modelship deploy lambda` writes, it answers the seed's event with the prediction
//! `serve` gives on `/v1/predict`, REST, HTTP API and function URL events, V2 infer, bad events
//! with a 4xx (and keeps serving), pulls its model from a real S3 server at cold start with the
//! digest checked, and reports a missing or corrupt model as Lambda's init error. The generated
//! traffic hook's checks run against it through boto3. It prints cold-start and warm figures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Server, Service, agent, command, free_port, model, reply, root, tool};

const NEPSE: &str = "nepse_xgboost";

/// A function under the emulator: invocations go to its local Invoke API.
struct Function {
    /// Stopped with its process group (the emulator and the bootstrap) when dropped.
    _service: Service,
    url: String,
    log: PathBuf,
    agent: ureq::Agent,
}

impl Function {
    /// Starts `aws-lambda-rie` on loopback with `package/bootstrap` (started at the first invoke).
    fn start(package: &Path, env: &[(&str, String)]) -> Function {
        let (port, api_port) = (free_port(), free_port());
        let mut cmd = Command::new(tool(".cache/lambda-rie/aws-lambda-rie"));
        cmd.args(["--runtime-interface-emulator-address", &format!("127.0.0.1:{port}")])
            .args(["--runtime-api-address", &format!("127.0.0.1:{api_port}")])
            .arg(package.join("bootstrap"))
            .current_dir(package)
            .env("LAMBDA_TASK_ROOT", package)
            .env("AWS_LAMBDA_FUNCTION_NAME", "nepse")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "7");
        for var in ["MODEL_PATH", "CONFIG_PATH", "MODEL_VERSION", "MODEL_NAME", "MODELSHIP_ARTIFACTS", "MODELSHIP_MODEL_DIGEST", "ORT_DYLIB_PATH"] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = package.with_extension(format!("rie-{port}.log"));
        let mut service = Service::start("aws-lambda-rie", cmd, log.clone());
        service.wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        Function { _service: service, url: format!("http://127.0.0.1:{port}/2015-03-31/functions/function/invocations"), log, agent: agent() }
    }

    /// Invokes with `payload`; the answer's text and how long the call took. The emulator
    /// answers 200 to an invocation, a function error included (with no `X-Amz-Function-Error`
    /// header), and 502 when the init failed.
    fn invoke_raw(&self, payload: &str) -> (String, Duration) {
        let (status, text, elapsed) = self.invoke_status(payload);
        assert_eq!(status, 200, "{text}\n{}", self.log());
        (text, elapsed)
    }

    fn invoke_status(&self, payload: &str) -> (u16, String, Duration) {
        let started = Instant::now();
        let answer = reply(self.agent.post(&self.url).send(payload).expect("invoke"));
        (answer.status, answer.text, started.elapsed())
    }

    /// Invokes once, expecting the init to have failed (502, `Runtime.InitError`); its message.
    fn init_error(&self) -> String {
        let (status, text, _) = self.invoke_status(&json!({"features": [[0, 0, 1, 0]]}).to_string());
        let answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        assert_eq!((status, answer["errorType"].as_str()), (502, Some("Runtime.InitError")), "{text}\n{}", self.log());
        answer["errorMessage"].as_str().unwrap().to_owned()
    }

    /// Invokes with an event; the proxy response's status and parsed body.
    fn invoke(&self, event: &Value) -> (u16, Value) {
        let (text, _) = self.invoke_raw(&event.to_string());
        let answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}\n{}", self.log()));
        let status = answer["statusCode"].as_u64().unwrap_or_else(|| panic!("not a proxy response: {answer}\n{}", self.log()));
        let body = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        (status as u16, body)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The emulator's figures, in milliseconds: the init phase (`INIT REPORT(durationMs: ...)`:
    /// its `REPORT` line's "Init Duration" is not the runtime's init) and each invocation's
    /// `REPORT` duration (the first includes the init, which runs at the first invoke).
    fn reports(&self) -> (Option<f64>, Vec<f64>) {
        let log = self.log();
        let field = |line: &str, name: &str| -> Option<f64> { line.split(name).nth(1)?.trim().split([' ', '\t', ')']).next()?.parse().ok() };
        let init = log.lines().find_map(|l| field(l, "INIT REPORT(durationMs:"));
        (init, log.lines().filter(|l| l.contains("REPORT RequestId")).filter_map(|l| field(l, "\tDuration:")).collect())
    }
}

fn rest_event(path: &str, body: &str) -> Value {
    json!({"resource": path, "path": path, "httpMethod": "POST", "headers": {"Content-Type": "application/json"},
           "multiValueHeaders": {"Content-Type": ["application/json"]}, "requestContext": {"stage": "Prod", "resourcePath": path},
           "body": body, "isBase64Encoded": false})
}

fn http_api_event(path: &str, body: &str, domain: &str) -> Value {
    json!({"version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "", "headers": {"content-type": "application/json"},
           "requestContext": {"domainName": domain, "http": {"method": "POST", "path": path}, "stage": "$default"}, "body": body, "isBase64Encoded": false})
}

/// The reference rows of the NEPSE-style model and onnxruntime-in-Python's probabilities of
/// class 1 for them.
fn reference() -> (Vec<Vec<f64>>, Vec<f64>) {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(root().join("testdata/reference/nepse_xgboost.json")).unwrap()).unwrap();
    let data: Vec<f64> = doc["input"]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let probabilities = &doc["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "probabilities").unwrap()["data"];
    let p1 = probabilities.as_array().unwrap().chunks(2).map(|p| p[1].as_f64().unwrap()).collect();
    (data.chunks(4).map(<[f64]>::to_vec).collect(), p1)
}

/// `modelship deploy lambda ARGS --out DIR`, then `make -f DIR/Makefile package` with this test
/// binary as the bootstrap: the package the template's CodeUri names.
fn package(dir: &Path, args: &[&str]) -> PathBuf {
    let out = dir.join("deploy");
    let deployed = command().args(["deploy", "lambda", "--name", "nepse", "--out"]).arg(&out).args(args).output().unwrap();
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    let library = modelship_library();
    let made = Command::new("make")
        .arg("-f")
        .arg(out.join("Makefile"))
        .arg("package")
        .arg(format!("BOOTSTRAP={}", env!("CARGO_BIN_EXE_modelship")))
        .arg(format!("ORT_LIB={}", library.display()))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(made.status.success(), "make package: {}{}", String::from_utf8_lossy(&made.stdout), String::from_utf8_lossy(&made.stderr));
    out.join("package")
}

/// ONNX Runtime's library from ./.venv (scripts/setup.sh).
pub fn modelship_library() -> PathBuf {
    let lib = root().join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().into_iter().flatten().filter_map(Result::ok).find_map(|python| {
        let capi = python.path().join("site-packages/onnxruntime/capi");
        std::fs::read_dir(capi).ok()?.filter_map(Result::ok).map(|e| e.path()).find(|p| p.to_string_lossy().contains("libonnxruntime.so."))
    });
    found.unwrap_or_else(|| panic!("no libonnxruntime.so under {}: run scripts/setup.sh", lib.display()))
}

/// The resident memory of the bootstrap process the emulator started from `package`.
fn bootstrap_rss(package: &Path) -> Option<String> {
    let bootstrap = package.join("bootstrap");
    std::fs::read_dir("/proc").ok()?.filter_map(Result::ok).find_map(|entry| {
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let argv0 = cmdline.split(|b| *b == 0).next()?;
        if Path::new(std::str::from_utf8(argv0).ok()?) != bootstrap {
            return None;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(|v| v.trim().to_owned())
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[test]
fn the_bootstrap_answers_every_event_like_serve_does() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let package = package(dir.path(), &["--model", &model(NEPSE)]);
    let names: Vec<String> = std::fs::read_dir(&package).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.contains(&"bootstrap".to_owned()) && names.contains(&"model.onnx".to_owned()) && names.iter().any(|n| n.starts_with("libonnxruntime.so.")), "{names:?}");

    let function = Function::start(&package, &[("MODEL_NAME", "nepse".to_owned()), ("MODEL_VERSION", "v1".to_owned())]);
    let server = Server::start(&[&model(NEPSE), "--name", "nepse", "--model-version", "v1"]);
    let (rows, p1) = reference();
    let seed_body = json!({"features": rows}).to_string();

    // The seed's event, cold: the packaged model at $LAMBDA_TASK_ROOT/model.onnx.
    let cold = Instant::now();
    let (status, lambda_answer) = function.invoke(&rest_event("/predict", &seed_body));
    let cold_ms = cold.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(status, 200, "{lambda_answer}\n{}", function.log());
    let served = server.post("/v1/predict", &seed_body).json();
    assert_eq!(lambda_answer, served, "the function and /v1/predict differ");
    assert_eq!(lambda_answer["model_version"], "v1");
    for (got, want) in lambda_answer["prediction"].as_array().unwrap().iter().zip(&p1) {
        assert!((got.as_f64().unwrap() - want).abs() < 1e-6, "{got} vs onnxruntime's {want}");
    }

    // Every other kind of event, the same answer.
    let events = [
        rest_event("/v1/predict", &seed_body),
        http_api_event("/v1/predict", &seed_body, "abc123.execute-api.eu-west-1.amazonaws.com"),
        http_api_event("/predict", &seed_body, "xyz.lambda-url.eu-west-1.on.aws"),
        json!({"features": rows}),
        json!({"body": seed_body}),
    ];
    for event in &events {
        let (status, body) = function.invoke(event);
        assert_eq!((status, &body), (200, &served), "{event}");
    }
    let v2 = json!({"id": "q1", "inputs": [{"name": "input", "shape": [rows.len(), 4], "datatype": "FP32", "data": rows}]}).to_string();
    let served_v2 = server.post("/v2/models/nepse/infer", &v2).json();
    for event in [http_api_event("/v2/models/nepse/infer", &v2, "xyz.lambda-url.eu-west-1.on.aws"), rest_event("/v2/models/nepse/versions/v1/infer", &v2)] {
        let (status, body) = function.invoke(&event);
        assert_eq!((status, &body), (200, &served_v2), "{event}");
    }

    // Bad events are the caller's mistake: a 4xx with an error, and the function keeps serving.
    let bad = [
        (rest_event("/predict", r#"{"features": [[1, 2]]}"#), 400, "shape"),
        (rest_event("/predict", "{not json"), 400, "malformed JSON"),
        (json!({"feature": rows}), 400, "unknown field `feature`"),
        (json!(["not", "an", "event"]), 400, "not an object"),
        (rest_event("/v2/models/other/infer", &v2), 404, "unknown model 'other'"),
        (http_api_event("/admin", "{}", "x.lambda-url.eu-west-1.on.aws"), 404, "this function answers POST /predict"),
    ];
    for (event, want_status, want) in &bad {
        let (status, body) = function.invoke(event);
        assert_eq!(status, *want_status, "{event}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains(want)), "{event}: {body}");
    }
    // A payload that is not JSON at all never reaches the handler; the runtime reports it and
    // the next event is served.
    let (text, _) = function.invoke_raw("not json");
    assert!(text.contains("errorMessage") || text.contains("errorType"), "{text}");
    assert_eq!(function.invoke(&json!({"features": rows})).0, 200);

    // The generated traffic hook's checks, through boto3, against this function.
    hook_checks(dir.path(), &function);

    // Warm invocations.
    let single = rest_event("/predict", &json!({"features": [rows[0]]}).to_string());
    let mut warm: Vec<f64> = (0..200).map(|_| function.invoke_raw(&single.to_string()).1.as_secs_f64() * 1000.0).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (init, mut durations) = function.reports();
    let log = function.log();
    // One embedded-metric line per invocation: what the rollback alarm on 5xx answers reads.
    let metrics: Vec<Value> = log.lines().filter(|l| l.starts_with('{') && l.contains("\"_aws\":{\"CloudWatchMetrics\"")).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(metrics.iter().any(|m| m["ClientErrors"] == 1 && m["ServerErrors"] == 0 && m["Version"] == "7"), "{log}");
    assert!(metrics.iter().all(|m| m["ServerErrors"] == 0), "{log}");
    let init = init.unwrap_or_else(|| panic!("no INIT REPORT in the emulator's log:\n{log}"));
    // The first REPORT includes the init; the warm ones follow it.
    let mut durations = durations.split_off(1.min(durations.len()));
    let rss = bootstrap_rss(&package).unwrap_or_else(|| "unknown".to_owned());
    eprintln!(
        "lambda (aws-lambda-rie, debug build): first invoke {cold_ms:.1} ms end to end, init duration {init:.1} ms; warm single-row invoke p50 {:.2} ms end to end, REPORT duration p50 {:.2} ms ({} invocations); bootstrap RSS {rss}",
        median(&mut warm),
        median(&mut durations),
        durations.len()
    );
    drop(function);
}

/// Runs the pre-traffic hook's `check` (its code taken from the generated template) with boto3's
/// Lambda client pointed at the emulator: it must find no problem.
fn hook_checks(dir: &Path, function: &Function) {
    let python = tool(".cache/cfn-lint-sam-venv/bin/python");
    let template: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("deploy/template.yaml")).unwrap()).unwrap();
    let hook = &template["Resources"]["PreTrafficHook"]["Properties"];
    let hook_dir = dir.join("hook");
    std::fs::create_dir_all(&hook_dir).unwrap();
    std::fs::write(hook_dir.join("index.py"), hook["InlineCode"].as_str().unwrap()).unwrap();
    let endpoint = function.url.split("/2015-03-31").next().unwrap().to_owned();
    let out = Command::new(python)
        .args(["-c", "import json, boto3, index; print(json.dumps(index.check(boto3.client('lambda'), 'function')))"])
        .current_dir(&hook_dir)
        .env("CHECK_FEATURES", hook["Environment"]["Variables"]["CHECK_FEATURES"].as_str().unwrap())
        .env("LATENCY_BUDGET_MS", "5000")
        .env("AWS_ENDPOINT_URL_LAMBDA", endpoint)
        .env("AWS_ACCESS_KEY_ID", "emulator")
        .env("AWS_SECRET_ACCESS_KEY", "emulator")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]", "the hook found problems");
}

#[cfg(feature = "s3")]
#[test]
fn a_cold_start_pulls_the_model_from_s3_and_checks_its_digest() {
    const KEY: &str = "modelship-test";
    const SECRET: &str = "modelship-test-secret";
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = dir.path().join("s3");
    std::fs::create_dir_all(data.join("models")).unwrap();
    let port = free_port();
    let mut cmd = Command::new(tool(".cache/tools/bin/s3s-fs"));
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", KEY, "--secret-key", SECRET]).arg(&data);
    let mut s3 = Service::start("s3s-fs", cmd, dir.path().join("s3s.log"));
    s3.wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let aws = vec![
        ("AWS_ACCESS_KEY_ID", KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
    ];
    let mut push = command();
    push.args(["models", "--registry"]).arg(dir.path().join("registry")).args(["--artifacts", "s3://models/nepse", "push", "nepse", &model(NEPSE), "--version", "3", "--output", "json"]);
    for (k, v) in &aws {
        push.env(k, v);
    }
    let pushed = push.output().unwrap();
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    let digest = serde_json::from_slice::<Value>(&pushed.stdout).unwrap()["version"]["digest"].as_str().unwrap().to_owned();

    let package = package(dir.path(), &["--model", "nepse:3", "--artifacts", "s3://models/nepse", "--digest", &format!("sha256:{digest}"), "--check", "[[0, 0, 1, 0.01]]"]);
    assert!(!package.join("model.onnx").exists(), "a model from S3 is not packaged");
    let template = std::fs::read_to_string(dir.path().join("deploy/template.yaml")).unwrap();
    assert!(template.contains("arn:${AWS::Partition}:s3:::models/nepse/sha256/*") && template.contains("MODELSHIP_MODEL_DIGEST"), "{template}");
    let mut env = aws.clone();
    env.push(("MODELSHIP_ARTIFACTS", "s3://models/nepse".to_owned()));
    env.push(("MODELSHIP_MODEL_DIGEST", format!("sha256:{digest}")));
    env.push(("MODEL_NAME", "nepse".to_owned()));
    env.push(("MODEL_VERSION", "3".to_owned()));
    let (rows, p1) = reference();
    let function = Function::start(&package, &env);
    let (status, body) = function.invoke(&rest_event("/predict", &json!({"features": rows}).to_string()));
    assert_eq!(status, 200, "{body}\n{}", function.log());
    assert_eq!(body["model_version"], "3");
    assert!((body["prediction"][0].as_f64().unwrap() - p1[0]).abs() < 1e-6, "{body}");
    assert!(function.log().contains("digest verified"), "{}", function.log());
    let (init, _) = function.reports();
    eprintln!("lambda cold start from S3 (s3s-fs on loopback, debug build): init duration {:.1} ms", init.unwrap_or(f64::NAN));
    drop(function);

    // The object in the bucket no longer matches its digest: the cold start fails, and says why.
    std::fs::write(data.join("models/nepse/sha256").join(&digest), b"not the model").unwrap();
    let function = Function::start(&package, &env);
    let (status, text, _) = function.invoke_status(&rest_event("/predict", "{}").to_string());
    let answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!((status, answer["errorType"].as_str()), (502, Some("Runtime.InitError")), "{text}\n{}", function.log());
    assert!(answer["errorMessage"].as_str().unwrap().contains("is corrupt"), "{text}");
    assert!(!function.log().contains(SECRET), "the secret reached the log");
}

#[test]
fn a_missing_model_is_the_init_error_lambda_expects() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let package = package(dir.path(), &["--model", &model(NEPSE)]);
    std::fs::remove_file(package.join("model.onnx")).unwrap();
    let function = Function::start(&package, &[]);
    let message = function.init_error();
    assert!(message.contains("cannot read the model") && message.contains("package/model.onnx"), "{message}");
    // Lambda tries the init again on the next invocation; it fails the same way, nothing hangs.
    assert_eq!(function.invoke_status("{}").0, 502);
}

#[test]
fn a_model_that_cannot_answer_is_the_init_error_not_a_function_answering_500() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let package = package(dir.path(), &["--model", &model(NEPSE)]);
    std::fs::copy(model("broken"), package.join("model.onnx")).unwrap();
    let function = Function::start(&package, &[]);
    let message = function.init_error();
    assert!(message.contains("loads but cannot answer") && message.contains("warm-up request 1 of 2"), "{message}");
}

#[test]
fn deploy_lambda_refuses_hostile_options_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--memory", "64"], "lambda.memory is 64 MB; Lambda allows 128 to 10240"),
        (&["--deployment", "Linear50PercentEvery1Second"], "lambda.deployment 'Linear50PercentEvery1Second' is not a CodeDeploy preset"),
        (&["--timeout", "20m"], "lambda.timeout '20m' must be whole seconds between 1s and 900s"),
        (&["--check", "[[1, 2"], "--check '[[1, 2' is not JSON rows"),
        (&["--apply"], "deploy lambda writes a SAM template and applies nothing"),
    ];
    for (args, want) in cases {
        let out_dir = dir.path().join("out");
        let out = command().args(["deploy", "lambda", "--name", "nepse", "--model", &model(NEPSE), "--out"]).arg(&out_dir).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(want), "{args:?}: {stderr}");
        assert!(!out_dir.exists(), "{args:?} wrote files");
    }
    // The defaults are the seed's, and the hooks' request is a row of the model's width.
    let out = command().args(["deploy", "lambda", "--name", "nepse", "--model", &model(NEPSE), "--out"]).arg(dir.path().join("ok")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let template = std::fs::read_to_string(dir.path().join("ok/template.yaml")).unwrap();
    for want in ["MemorySize: 1024", "Timeout: 30", "ProvisionedConcurrentExecutions: 5", "Type: \"Linear10PercentEvery1Minute\"", "CHECK_FEATURES: \"[[0,0,0,0]]\""] {
        assert!(template.contains(want), "{want} missing:\n{template}");
    }
}

/// `--package image`: the container image (FROM scratch, the bootstrap as entrypoint) built by
/// the Makefile's Dockerfile on the real engine, run under the Runtime Interface Emulator inside
/// the container (as AWS documents for images): cold and warm invocations answer what `serve`
/// answers, bad events are 4xx, a non-JSON payload is the runtime's error and the next event is
/// served.
#[test]
fn the_container_image_answers_under_the_emulator_like_the_zip() {
    let Some(_engine) = crate::docker::engine("the_container_image_answers_under_the_emulator_like_the_zip") else { return };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let package = package(dir.path(), &["--model", &model(NEPSE), "--package", "image"]);
    assert!(package.join("Dockerfile").exists(), "make package copies the Dockerfile into the context");
    const IMAGE: &str = "modelship-e2e-lambda:test";
    let started = Instant::now();
    crate::docker::sh(Command::new("docker").args(["build", "-q", "-t", IMAGE, "--build-arg", &format!("TOOLS_IMAGE={}", crate::docker::TOOLS_IMAGE)]).arg(&package));
    let build = started.elapsed();
    let bytes: u64 = crate::docker::docker(&["image", "inspect", "--format", "{{.Size}}", IMAGE]).parse().unwrap();
    let entrypoint = crate::docker::docker(&["image", "inspect", "--format", "{{json .Config.Entrypoint}}", IMAGE]);
    assert_eq!(entrypoint, r#"["/var/task/bootstrap"]"#);

    let rie = tool(".cache/lambda-rie/aws-lambda-rie");
    let run_started = Instant::now();
    let container = crate::docker::Container::run(&[
        "-p",
        "127.0.0.1::8080",
        "-v",
        &format!("{}:/aws-lambda-rie:ro", rie.display()),
        "--entrypoint",
        "/aws-lambda-rie",
        "-e",
        "AWS_LAMBDA_FUNCTION_NAME=nepse",
        "-e",
        "AWS_LAMBDA_FUNCTION_VERSION=7",
        "-e",
        "MODEL_NAME=nepse",
        "-e",
        "MODEL_VERSION=v1",
        IMAGE,
        "/var/task/bootstrap",
    ]);
    let url = format!("http://{}/2015-03-31/functions/function/invocations", container.published(8080));
    let agent = agent();
    let invoke = |payload: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match agent.post(&url).send(payload) {
                Ok(r) => return reply(r),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("invoke: {e}\n{}", container.logs()),
            }
        }
    };
    let server = Server::start(&[&model(NEPSE), "--name", "nepse", "--model-version", "v1"]);
    let (rows, _) = reference();
    let seed_body = json!({"features": rows}).to_string();
    let served = server.post("/v1/predict", &seed_body).json();
    let proxy = |r: crate::support::Reply| -> (u64, Value) {
        assert_eq!(r.status, 200, "{}\n{}", r.text, container.logs());
        let answer: Value = serde_json::from_str(&r.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text));
        (answer["statusCode"].as_u64().unwrap_or(0), serde_json::from_str(answer["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null))
    };
    let cold = Instant::now();
    let (status, body) = proxy(invoke(&rest_event("/predict", &seed_body).to_string()));
    let cold = cold.elapsed();
    let since_run = run_started.elapsed();
    assert_eq!((status, &body), (200, &served), "{}", container.logs());
    for event in [http_api_event("/v1/predict", &seed_body, "xyz.lambda-url.eu-west-1.on.aws"), json!({"features": rows})] {
        assert_eq!(proxy(invoke(&event.to_string())), (200, served.clone()), "{event}");
    }
    let (status, body) = proxy(invoke(&rest_event("/predict", r#"{"features": [[1, 2]]}"#).to_string()));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("shape")), "{body}");
    let raw = invoke("not json");
    assert!(raw.text.contains("errorMessage") || raw.text.contains("errorType"), "{}", raw.text);
    let single = rest_event("/predict", &json!({"features": [rows[0]]}).to_string()).to_string();
    let mut warm: Vec<f64> = (0..100)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(proxy(invoke(&single)).0, 200);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    eprintln!(
        "lambda image (debug bootstrap, aws-lambda-rie in the container): image {:.1} MB, built in {:.1} s; first invoke {:.0} ms ({:.2} s after docker run); warm single-row invoke p50 {:.2} ms",
        bytes as f64 / 1e6,
        build.as_secs_f64(),
        cold.as_secs_f64() * 1000.0,
        since_run.as_secs_f64(),
        median(&mut warm)
    );
    drop(container);
    let _ = Command::new("docker").args(["image", "rm", "-f", IMAGE]).output();
}
