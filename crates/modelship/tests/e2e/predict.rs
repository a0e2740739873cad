//! `modelship predict`: a million rows scored through the server's pipeline, killed half way
//! and resumed, its output equal row for row to what a running server answers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Server, command, model};

/// The fraud model's 30 features, row after row, the same every time.
struct Generator(u64);

impl Generator {
    fn new() -> Generator {
        Generator(0x2545_f491_4f6c_dd1d)
    }

    fn row(&mut self) -> Vec<f64> {
        (0..30)
            .map(|_| {
                let x = &mut self.0;
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                // Four decimals: the same number in the CSV and in the JSON sent to the server.
                ((*x % 60_000) as f64 - 30_000.0) / 10_000.0
            })
            .collect()
    }
}

/// The first `rows` rows, with an id column first.
fn write_rows(path: &Path, rows: usize) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    write!(out, "transaction_id").unwrap();
    for f in 0..30 {
        write!(out, ",f{f}").unwrap();
    }
    writeln!(out).unwrap();
    let mut generator = Generator::new();
    for r in 0..rows {
        write!(out, "tx-{r}").unwrap();
        for v in generator.row() {
            write!(out, ",{v}").unwrap();
        }
        writeln!(out).unwrap();
    }
}

fn predict(args: &[&str]) -> std::process::Command {
    let mut cmd = command();
    cmd.arg("predict").arg(model("fraud")).args(args);
    cmd
}

/// 1,000,000 rows in chunks of 10,000: killed once half the chunks were written, then run again,
/// it scores only what was left; the output has every row once, in order, with its id, equal to
/// the predictions a server gives for the same rows; the first 100,000 scored by that server
/// (`--server`) give the same; parts of another input are refused.
#[test]
fn a_killed_batch_resumes_and_its_output_equals_the_servers_answers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.csv");
    write_rows(&input, 1_000_000);
    let output = dir.path().join("preds.parquet");
    let parts = dir.path().join("preds.parquet.parts");
    let args = ["--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--id-column", "transaction_id", "--chunk-rows", "10000", "--workers", "1", "--json"];

    let mut child = predict(&args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let done_parts = || std::fs::read_dir(&parts).map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().ends_with(".parquet")).count()).unwrap_or(0);
    while done_parts() < 50 {
        assert!(child.try_wait().unwrap().is_none(), "finished before it could be killed");
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = done_parts();
    assert!(!output.exists(), "no output from a killed run");

    let out = predict(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("killed with {killed_at} of 100 chunks written; resumed: {summary}");
    assert_eq!(summary["rows"], 1_000_000);
    assert_eq!(summary["chunks"], 100);
    assert!(summary["resumed_chunks"].as_u64().unwrap() >= killed_at as u64, "{summary}");
    assert!(!parts.exists(), "the parts are gone once joined");

    // Read back as data people read it.
    let read = std::process::Command::new(crate::support::root().join(".venv/bin/python"))
        .arg("-c")
        .arg("import json, sys, pyarrow.parquet as pq\nt = pq.read_table(sys.argv[1])\nmeta = {k.decode(): v.decode() for k, v in pq.read_metadata(sys.argv[1]).metadata.items()}\nprint(json.dumps({'rows': t.column('row').to_pylist(), 'ids': t.column('id').to_pylist(), 'predictions': t.column('prediction').to_pylist(), 'meta': meta}))")
        .arg(&output)
        .output()
        .unwrap();
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let table: Value = serde_json::from_slice(&read.stdout).unwrap();
    let indices: Vec<u64> = table["rows"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(indices, (0..1_000_000u64).collect::<Vec<_>>(), "every row once, in input order");
    assert!(table["ids"].as_array().unwrap().iter().enumerate().all(|(i, id)| id.as_str() == Some(&format!("tx-{i}"))));
    let meta = &table["meta"];
    assert_eq!((meta["modelship.model"].as_str(), meta["modelship.version"].as_str()), (Some("fraud"), Some("1")), "{meta}");
    assert_eq!(meta["modelship.model_sha256"], summary["model_sha256"]);
    let predictions: Vec<f64> = table["predictions"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();

    // The same rows through a running server's /v1/predict: the same numbers.
    let server = Server::start(&[&model("fraud")]);
    let mut differ = BTreeMap::new();
    let mut generator = Generator::new();
    for expected in predictions.chunks(10_000) {
        let chunk: Vec<Vec<f64>> = (0..expected.len()).map(|_| generator.row()).collect();
        let r = server.post("/v1/predict", &json!({ "features": chunk }).to_string());
        assert_eq!(r.status, 200, "{}", r.text);
        let answered = r.json()["prediction"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect::<Vec<_>>();
        for (i, (a, b)) in answered.iter().zip(expected).enumerate() {
            if a != b {
                differ.insert(i, (*a, *b));
            }
        }
        assert_eq!(answered.len(), expected.len());
    }
    assert!(differ.is_empty(), "{} rows differ from the server's answers, e.g. {:?}", differ.len(), differ.iter().next());

    // The first 100,000 rows scored by that server (--server): the same predictions, each row's
    // version.
    let first = dir.path().join("first.csv");
    write_rows(&first, 100_000);
    let remote = dir.path().join("remote.jsonl");
    let out = command()
        .args(["predict", "--server", &format!("http://{}", server.ready["http"].as_str().unwrap()), "--input", first.to_str().unwrap()])
        .args(["--output", remote.to_str().unwrap(), "--id-column", "transaction_id", "--chunk-rows", "10000", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((summary["rows"].as_u64(), summary["versions"].clone()), (Some(100_000), json!(["1"])), "{summary}");
    let lines = std::fs::read_to_string(&remote).unwrap();
    let scored: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(scored.len(), 100_000);
    for (i, row) in scored.iter().enumerate() {
        assert_eq!((row["row"].as_u64(), row["version"].as_str(), row["prediction"].as_f64()), (Some(i as u64), Some("1"), Some(predictions[i])), "row {i}");
    }

    // Parts of another input are refused; --restart discards them.
    let (small, small_parts) = (dir.path().join("first.parquet"), dir.path().join("first.parquet.parts"));
    std::fs::create_dir_all(&small_parts).unwrap();
    std::fs::write(small_parts.join("manifest.json"), r#"{"input_sha256": "0", "model": "fraud", "version": "1", "model_sha256": "0", "chunk_rows": 10000, "columns": [], "id_column": null}"#).unwrap();
    let small_args = ["--input", first.to_str().unwrap(), "--output", small.to_str().unwrap(), "--id-column", "transaction_id", "--chunk-rows", "10000"];
    let out = predict(&small_args).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("another input file"), "{}", String::from_utf8_lossy(&out.stderr));
    let with_restart: Vec<&str> = small_args.iter().copied().chain(["--restart"]).collect();
    assert!(predict(&with_restart).output().unwrap().status.success());
    assert!(small.exists() && !small_parts.exists());
    // Bad rows name the row and the column, and exit 1.
    std::fs::write(&input, "a,b\n1,x\n").unwrap();
    let out = predict(&["--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && err.contains("row 0, column 'b': 'x' is not a finite number"), "{err}");
}
