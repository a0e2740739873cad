//! `modelship predict`: scores a file of rows with a model through the server's own pipeline,
//! without a listener. Rows are read in chunks (`--chunk-rows`); each chunk is one request of
//! `/v1/predict` rows through `modelship_server::batch` (validation, enrichment, batching, the
//! same answers), and the chunks run side by side on the pool's workers. Each finished chunk is
//! a part file, written atomically beside the output; a run that was killed resumes from the
//! parts it finished (the manifest ties them to the input's and the model's digests); the last
//! step joins the parts into the output in row order, with the model's digest in its metadata.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use modelship_inference::Backend;
use modelship_predictions::table::{Column, Kind, TableWriter, Value};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cli::{PredictArgs, ServeArgs};
use crate::config::{self, ProcessEnv};

pub const HELP: &str = "\
Each row of the input is a model's feature row: every column but --id-column, in file order \
(or the --columns given), all numbers. The rows go through the same pipeline as a request to \
/v1/predict (validation, batching, the answers a server gives), in chunks of --chunk-rows, \
several at once. The output holds one row per input row, in input order: row (its index), \
the id column when given, prediction (a number, or prediction_json for a model whose \
prediction is not one number) and version (the version that answered). The model's name, \
version and SHA-256 are in the output's Parquet metadata and in the summary.

With --server URL the chunks go to a running endpoint's /v1/predict instead (a modelship \
server, or a Lambda function's URL or API, with --api-key): the version that answered each \
row is in its version column.

With --entities, each row is an entity (its columns are the entity's fields) and the model's \
features come from the feature store of --config's features section, as /v1/predict by \
entities gets them.

A killed run leaves OUTPUT.parts/ (a part per finished chunk and a manifest); run the same \
command again and it resumes there. Parts from another input or another model are refused: \
pass --restart to start over.

Examples:
  modelship predict examples/models/fraud.onnx --input rows.csv \\
      --output preds.parquet
  modelship predict fraud@production --registry registry --input rows.parquet \\
      --output preds.parquet --id-column transaction_id
  modelship predict fraud:3 --registry registry --input rows.csv \\
      --output preds.csv --json
  modelship predict --server https://fraud.example.com --api-key \"$KEY\" \\
      --input rows.csv --output preds.parquet";

/// What a run's parts were made from: a resumed run must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    input_sha256: String,
    model: String,
    version: String,
    model_sha256: String,
    chunk_rows: usize,
    columns: Vec<String>,
    id_column: Option<String>,
    #[serde(default)]
    entities: bool,
}

const PART_COLUMNS: [Column; 5] = [
    Column { name: "row", kind: Kind::Int, required: true },
    Column { name: "id", kind: Kind::Text, required: false },
    Column { name: "prediction", kind: Kind::Float, required: false },
    Column { name: "prediction_json", kind: Kind::Text, required: false },
    Column { name: "version", kind: Kind::Label, required: true },
];

/// Where the chunks are scored: in this process through the server's pipeline, or by a running
/// endpoint's `/v1/predict`.
#[derive(Clone)]
enum Scorer {
    Local(modelship_server::AppState),
    Remote { agent: ureq::Agent, url: String, api_key: Option<String> },
}

impl Scorer {
    /// The version that answered and one prediction per row.
    async fn score(&self, payload: Payload, request_id: &str) -> anyhow::Result<(String, Vec<serde_json::Value>)> {
        match self {
            Scorer::Local(state) => {
                let scored = match payload {
                    Payload::Rows(rows) => modelship_server::batch::score_rows(state, rows, request_id).await,
                    Payload::Entities(entities) => modelship_server::batch::score_entities(state, entities, request_id).await,
                };
                let scored = scored.map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok((scored.version, scored.predictions))
            }
            Scorer::Remote { agent, url, api_key } => {
                let body = match payload {
                    Payload::Rows(rows) => format!(r#"{{"features":{}}}"#, rows.get()),
                    Payload::Entities(entities) => serde_json::to_string(&json!({ "entities": entities }))?,
                };
                let (agent, url, api_key, id) = (agent.clone(), url.clone(), api_key.clone(), request_id.to_owned());
                tokio::task::spawn_blocking(move || remote(&agent, &url, api_key.as_deref(), &body, &id)).await?
            }
        }
    }
}

/// One chunk through `URL/v1/predict`: `{"features": rows}` or `{"entities": [...]}`, answered
/// `{"prediction": [...], "model_version": ...}`; a refusal is the endpoint's own error message.
fn remote(agent: &ureq::Agent, url: &str, api_key: Option<&str>, body: &str, id: &str) -> anyhow::Result<(String, Vec<serde_json::Value>)> {
    let mut request = agent.post(url).header("content-type", "application/json").header("x-request-id", id);
    if let Some(key) = api_key {
        request = request.header("x-api-key", key);
    }
    let mut response = request.send(body.as_bytes()).with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.body_mut().read_to_string().with_context(|| format!("{url}: the answer could not be read"))?;
    let answer: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{url} answered {status} with something that is not JSON"))?;
    if !status.is_success() {
        bail!("{url} refused the rows ({}): {}", status.as_u16(), answer["error"].as_str().unwrap_or(&text));
    }
    let version = answer["model_version"].as_str().unwrap_or_default().to_owned();
    match answer.get("prediction") {
        Some(serde_json::Value::Array(values)) => Ok((version, values.clone())),
        _ => bail!("{url} answered without a prediction list: is it a /v1/predict endpoint?"),
    }
}

pub fn main(args: PredictArgs) -> ExitCode {
    let env = ProcessEnv;
    if let Some(server) = args.server.clone() {
        crate::logging::init(&config::LogConfig { level: tracing::Level::WARN, json: false, static_fields: Default::default() });
        return crate::run_command(remote_run(args, server));
    }
    let serve = ServeArgs {
        model: args.model.clone(),
        config: args.config.clone(),
        registry: args.registry.clone(),
        workers: Some(args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))),
        ort_lib: args.ort_lib.clone(),
        convert: args.convert.clone(),
        log_level: Some("warn".to_owned()),
        log_format: Some(crate::cli::LogFormatArg::Text),
        ..ServeArgs::default()
    };
    let file = match &args.config {
        Some(path) => match config::load_file(path) {
            Ok(raw) => raw,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => config::RawConfig::default(),
    };
    if args.entities && file.features.is_none() {
        eprintln!("error: --entities looks rows up in the feature store: pass --config with a features section (store_url, key, features)");
        return ExitCode::from(2);
    }
    let mut config = match config::resolve(file, &env, &serve) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Chunks are the requests: the row bound is the chunk size.
    config.max_rows = config.max_rows.max(args.chunk_rows);
    crate::logging::init(&config.log);
    crate::run_command(run(args, config))
}

/// Scores on a running endpoint: the model is whatever answers there.
async fn remote_run(args: PredictArgs, server: String) -> anyhow::Result<()> {
    let base = server.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!("--server {base}: give an http:// or https:// URL");
    }
    let url = if base.ends_with("/v1/predict") || base.ends_with("/predict") { base.to_owned() } else { format!("{base}/v1/predict") };
    let api_key = args.api_key.clone().or_else(|| std::env::var("MODELSHIP_API_KEY").ok());
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(std::time::Duration::from_secs(300))).build().into();
    let workers = args.workers.unwrap_or(4).max(1);
    // The endpoint is the model: its URL names it (never a key), the versions answering say which.
    let model = Model { name: url.clone(), version: String::new(), sha256: "remote".to_owned() };
    score_file(args, Scorer::Remote { agent, url, api_key }, model, workers).await
}

/// The model chunks are scored with, as the manifest and the output record it.
struct Model {
    name: String,
    /// Empty for an endpoint (each row records the version that answered it).
    version: String,
    sha256: String,
}

async fn run(args: PredictArgs, config: config::ServeConfig) -> anyhow::Result<()> {
    let onnx = modelship_onnx::OnnxBackend::new(config.ort_lib.as_deref())?;
    let backend: Arc<dyn Backend> = Arc::new(onnx);
    let model = crate::startup::first_model(&config, &backend).await?;
    let described = Model { name: model.name.clone(), version: model.version.clone(), sha256: modelship_registry::artifacts::sha256_hex(&model.bytes) };
    let features = crate::startup::features(&config);
    let state = modelship_server::build_batch(&crate::startup::settings(&config), model, backend, features.as_ref()).await.map_err(|e| anyhow::anyhow!(e))?;
    score_file(args, Scorer::Local(state), described, config.workers.max(1)).await
}

async fn score_file(args: PredictArgs, scorer: Scorer, model: Model, workers: usize) -> anyhow::Result<()> {
    if args.chunk_rows == 0 || args.chunk_rows > 1 << 20 {
        bail!("--chunk-rows {} must be between 1 and 1048576", args.chunk_rows);
    }
    let format = OutputFormat::of(&args.output)?;
    let started = Instant::now();
    let input_sha256 = sha256_file(&args.input)?;
    let Model { name, version, sha256: model_sha256 } = model;

    let mut reader = Rows::open(&args.input, &args.columns, args.id_column.as_deref(), args.entities)?;
    let manifest = Manifest {
        input_sha256: input_sha256.clone(),
        model: name.clone(),
        version: version.clone(),
        model_sha256: model_sha256.clone(),
        chunk_rows: args.chunk_rows,
        columns: reader.features.clone(),
        id_column: args.id_column.clone(),
        entities: args.entities,
    };
    let parts = parts_dir(&args.output);
    let resumed = prepare_parts(&parts, &manifest, args.restart)?;

    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = ProgressBar::new(reader.total.unwrap_or(0));
        bar.set_style(ProgressStyle::with_template("{spinner} scoring {bar:30} {pos}/{len} rows ({per_sec}, eta {eta})").unwrap_or_else(|_| ProgressStyle::default_bar()));
        bar
    } else {
        ProgressBar::hidden()
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(workers * 2));
    let mut running = tokio::task::JoinSet::new();
    let mut chunks = 0usize;
    let mut rows_total = 0u64;
    let mut skipped = 0usize;
    loop {
        let first = rows_total;
        let Some(chunk) = reader.next_chunk(args.chunk_rows)? else { break };
        let index = chunks;
        chunks += 1;
        rows_total += chunk.rows as u64;
        let part = part_path(&parts, index);
        if part.exists() {
            skipped += 1;
            bar.inc(chunk.rows as u64);
            continue;
        }
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let (scorer, bar, id) = (scorer.clone(), bar.clone(), format!("batch-{}-{index}", &input_sha256[..12]));
        running.spawn(async move {
            let _permit = permit;
            let (answered_by, predictions) = scorer.score(chunk.payload, &id).await.map_err(|e| anyhow::anyhow!("rows {first}..{}: {e:#}", first + chunk.rows as u64))?;
            if predictions.len() != chunk.rows {
                bail!("rows {first}..: the model answered {} predictions for {} rows", predictions.len(), chunk.rows);
            }
            let cells: Vec<Vec<Value>> = predictions
                .into_iter()
                .zip(chunk.ids)
                .enumerate()
                .map(|(i, (p, id))| {
                    let (number, other) = match p.as_f64() {
                        Some(v) => (Value::Float(v), Value::Null),
                        None => (Value::Null, Value::Text(p.to_string())),
                    };
                    vec![Value::Int(i64::try_from(first).unwrap_or(i64::MAX) + i as i64), id.map_or(Value::Null, Value::Text), number, other, Value::Text(answered_by.clone())]
                })
                .collect();
            write_atomically(&part, |file| {
                let mut writer = TableWriter::new(file, "predictions", &PART_COLUMNS, &[])?;
                writer.write(&cells)?;
                writer.finish()?;
                Ok(())
            })?;
            bar.inc(chunk.rows as u64);
            Ok(())
        });
        // Report the first failure at once rather than after every chunk was read.
        while let Some(done) = running.try_join_next() {
            done??;
        }
    }
    while let Some(done) = running.join_next().await {
        done??;
    }
    bar.finish_and_clear();
    let scored_here = chunks - skipped;
    let mut metadata = vec![
        ("modelship.model".to_owned(), name.clone()),
        ("modelship.input_sha256".to_owned(), input_sha256.clone()),
        ("modelship.command".to_owned(), "modelship predict".to_owned()),
    ];
    if !version.is_empty() {
        metadata.push(("modelship.version".to_owned(), version.clone()));
        metadata.push(("modelship.model_sha256".to_owned(), model_sha256.clone()));
    }
    let (written, versions) = join_parts(&parts, chunks, args.chunk_rows, rows_total, &args.output, format, &metadata)?;
    std::fs::remove_dir_all(&parts).with_context(|| format!("cannot remove {}", parts.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let summary = json!({
        "rows": written, "output": args.output.display().to_string(), "model": name, "versions": versions,
        "version": (!version.is_empty()).then_some(&version), "model_sha256": (!version.is_empty()).then_some(&model_sha256),
        "chunks": chunks, "resumed_chunks": skipped, "seconds": seconds, "rows_per_second": written as f64 / seconds.max(1e-9),
    });
    if args.json {
        println!("{summary}");
    } else {
        let resumed_note = if resumed && skipped > 0 { format!(" ({skipped} of {chunks} chunks were already done)") } else { String::new() };
        let by = if version.is_empty() {
            format!("{name} (versions {})", versions.join(", "))
        } else {
            format!("{name} version {version} (sha256:{})", &model_sha256[..12.min(model_sha256.len())])
        };
        println!("scored {written} rows with {by} in {seconds:.1} s ({:.0} rows/s, {scored_here} chunks here){resumed_note}: {}", written as f64 / seconds.max(1e-9), args.output.display());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputFormat {
    Parquet,
    Csv,
    Jsonl,
}

impl OutputFormat {
    fn of(path: &Path) -> anyhow::Result<OutputFormat> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("parquet") | Some("pq") => Ok(OutputFormat::Parquet),
            Some("csv") => Ok(OutputFormat::Csv),
            Some("jsonl") | Some("ndjson") => Ok(OutputFormat::Jsonl),
            _ => bail!("{}: name the output .parquet, .csv or .jsonl", path.display()),
        }
    }
}

fn parts_dir(output: &Path) -> PathBuf {
    let mut name = output.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".parts");
    output.with_file_name(name)
}

fn part_path(parts: &Path, index: usize) -> PathBuf {
    parts.join(format!("part-{index:08}.parquet"))
}

/// Makes `parts` ready: new, or an interrupted run's with the same manifest (returns true).
fn prepare_parts(parts: &Path, manifest: &Manifest, restart: bool) -> anyhow::Result<bool> {
    let path = parts.join("manifest.json");
    if restart && parts.exists() {
        std::fs::remove_dir_all(parts).with_context(|| format!("cannot remove {}", parts.display()))?;
    }
    if parts.exists() {
        let found: Manifest = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .with_context(|| format!("{} holds no readable manifest.json; remove it, or pass --restart", parts.display()))?;
        if &found != manifest {
            let what = if found.input_sha256 != manifest.input_sha256 {
                "another input file".to_owned()
            } else if found.model_sha256 != manifest.model_sha256 {
                format!("another model ({} version {}, sha256:{})", found.model, found.version, &found.model_sha256[..12.min(found.model_sha256.len())])
            } else {
                "other settings (--chunk-rows, --columns or --id-column)".to_owned()
            };
            bail!("{} holds the parts of a run with {what}; pass --restart to discard them, or run that again", parts.display());
        }
        return Ok(true);
    }
    std::fs::create_dir_all(parts).with_context(|| format!("cannot create {}", parts.display()))?;
    write_atomically(&path, |mut file| {
        serde_json::to_writer_pretty(&mut file, manifest)?;
        Ok(())
    })?;
    Ok(false)
}

/// Writes `path` through a temporary file in the same directory, synced, then renamed: a kill
/// leaves the old file or the whole new one, never half of it.
fn write_atomically(path: &Path, write: impl FnOnce(&mut std::fs::File) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    write(&mut file)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Joins the parts, in order, into `output`; checks that they hold rows 0..total once each.
/// Returns the rows written and the versions that answered them.
fn join_parts(parts: &Path, chunks: usize, chunk_rows: usize, total: u64, output: &Path, format: OutputFormat, metadata: &[(String, String)]) -> anyhow::Result<(u64, Vec<String>)> {
    let mut next_row = 0i64;
    // Filled as parts are read, read when the Parquet footer is written: shared by both.
    let versions = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let mut each = |index: usize, f: &mut dyn FnMut(&[Vec<Value>]) -> anyhow::Result<()>| -> anyhow::Result<()> {
        let part = part_path(parts, index);
        let bytes = std::fs::read(&part).with_context(|| format!("cannot read {}", part.display()))?;
        let rows = modelship_predictions::table::decode(bytes.into(), &PART_COLUMNS).map_err(|e| anyhow::anyhow!("{}: {e}", part.display()))?;
        let expected = if index + 1 == chunks { total as usize - index * chunk_rows } else { chunk_rows };
        if rows.len() != expected || rows.iter().enumerate().any(|(i, r)| r[0] != Value::Int(next_row + i as i64)) {
            bail!("{} does not hold rows {next_row}..{}; pass --restart to score again", part.display(), next_row + expected as i64);
        }
        next_row += rows.len() as i64;
        versions.borrow_mut().extend(rows.iter().filter_map(|r| r[4].text().map(str::to_owned)));
        f(&rows)
    };
    write_atomically(output, |file| {
        let mut out = std::io::BufWriter::new(file);
        match format {
            OutputFormat::Parquet => {
                let mut writer = TableWriter::new(&mut out, "predictions", &PART_COLUMNS, metadata)?;
                for index in 0..chunks {
                    each(index, &mut |rows| Ok(writer.write(rows)?))?;
                }
                let answered: Vec<String> = versions.borrow().iter().cloned().collect();
                writer.append_metadata("modelship.versions", &answered.join(","));
                writer.finish()?;
            }
            OutputFormat::Csv => {
                let mut csv = csv::Writer::from_writer(&mut out);
                csv.write_record(PART_COLUMNS.iter().map(|c| c.name))?;
                for index in 0..chunks {
                    each(index, &mut |rows| {
                        for r in rows {
                            csv.write_record(r.iter().map(cell))?;
                        }
                        Ok(())
                    })?;
                }
                csv.flush()?;
            }
            OutputFormat::Jsonl => {
                use std::io::Write;
                for index in 0..chunks {
                    each(index, &mut |rows| {
                        for r in rows {
                            let line = json!({"row": r[0].int(), "id": r[1].text(), "prediction": r[2].float(), "prediction_json": r[3].text(), "version": r[4].text()});
                            writeln!(out, "{line}")?;
                        }
                        Ok(())
                    })?;
                }
            }
        }
        std::io::Write::flush(&mut out)?;
        Ok(())
    })?;
    Ok((u64::try_from(next_row).unwrap_or(0), versions.into_inner().into_iter().collect()))
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Text(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// One chunk: its rows, and their ids.
struct Chunk {
    payload: Payload,
    ids: Vec<Option<String>>,
    rows: usize,
}

/// What a chunk sends: feature rows (a JSON array of arrays), or entities.
enum Payload {
    Rows(Box<serde_json::value::RawValue>),
    Entities(Vec<serde_json::Map<String, serde_json::Value>>),
}

/// The input file, read a chunk at a time.
struct Rows {
    source: Source,
    /// The feature columns, in the order the model gets them.
    features: Vec<String>,
    /// Where each feature and the id are in a record.
    positions: Vec<usize>,
    id: Option<usize>,
    /// Every column's name, for rows read as entities.
    names: Vec<String>,
    entities: bool,
    /// Rows in the file, when known up front (Parquet, or counted for CSV).
    total: Option<u64>,
    next_row: u64,
}

enum Source {
    Csv(csv::StringRecordsIntoIter<std::fs::File>),
    Parquet(parquet::record::reader::RowIter<'static>),
}

impl Rows {
    fn open(path: &Path, columns: &[String], id_column: Option<&str>, entities: bool) -> anyhow::Result<Rows> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        let (source, names, total) = match ext.as_deref() {
            Some("csv") => {
                let mut reader = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
                let names: Vec<String> = reader.headers().with_context(|| format!("{}: no header row", path.display()))?.iter().map(str::to_owned).collect();
                let lines = count_lines(path)?;
                (Source::Csv(reader.into_records()), names, Some(lines.saturating_sub(1)))
            }
            Some("parquet") | Some("pq") => {
                use parquet::file::reader::{FileReader, SerializedFileReader};
                let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
                let reader = SerializedFileReader::new(file).with_context(|| format!("{} is not a Parquet file", path.display()))?;
                let meta = reader.metadata().file_metadata();
                let names = meta.schema_descr().columns().iter().map(|c| c.name().to_owned()).collect();
                let total = u64::try_from(meta.num_rows()).ok();
                (Source::Parquet(parquet::record::reader::RowIter::from_file_into(Box::new(reader))), names, total)
            }
            _ => bail!("{}: give a .csv or .parquet file", path.display()),
        };
        let find = |name: &str| names.iter().position(|n| n == name).with_context(|| format!("{} has no column '{name}'; its columns are: {}", path.display(), names.join(", ")));
        let id = id_column.map(find).transpose()?;
        let features: Vec<String> = if columns.is_empty() {
            names.iter().enumerate().filter(|(i, _)| Some(*i) != id).map(|(_, n)| n.clone()).collect()
        } else {
            columns.to_vec()
        };
        let positions = features.iter().map(|f| find(f)).collect::<anyhow::Result<Vec<_>>>()?;
        if features.is_empty() {
            bail!("{} has no feature column", path.display());
        }
        Ok(Rows { source, features, positions, id, names, entities, total, next_row: 0 })
    }

    /// The next chunk of at most `n` rows; `None` at the end.
    fn next_chunk(&mut self, n: usize) -> anyhow::Result<Option<Chunk>> {
        let mut json = String::with_capacity(if self.entities { 0 } else { n * self.positions.len() * 12 });
        json.push('[');
        let mut entities = Vec::new();
        let mut ids = Vec::with_capacity(n);
        while ids.len() < n {
            let row = self.next_row;
            let cells: Vec<String> = match &mut self.source {
                Source::Csv(records) => match records.next() {
                    None => break,
                    Some(record) => record.with_context(|| format!("row {row}: not a CSV record"))?.iter().map(str::to_owned).collect(),
                },
                Source::Parquet(rows) => match rows.next() {
                    None => break,
                    Some(r) => r.with_context(|| format!("row {row}: cannot be read"))?.get_column_iter().map(|(_, f)| parquet_cell(f)).collect(),
                },
            };
            if self.entities {
                // Every column is a field of the entity: numbers as numbers, the rest as text.
                let entity = self
                    .names
                    .iter()
                    .zip(&cells)
                    .map(|(name, text)| {
                        let value = match text.parse::<i64>() {
                            Ok(i) => serde_json::Value::from(i),
                            Err(_) => text.parse::<f64>().ok().filter(|v| v.is_finite()).map_or_else(|| serde_json::Value::from(text.clone()), serde_json::Value::from),
                        };
                        (name.clone(), value)
                    })
                    .collect();
                entities.push(entity);
                ids.push(self.id.and_then(|i| cells.get(i).cloned()));
                self.next_row += 1;
                continue;
            }
            if !ids.is_empty() {
                json.push(',');
            }
            json.push('[');
            for (k, (&at, name)) in self.positions.iter().zip(&self.features).enumerate() {
                let text = cells.get(at).map(String::as_str).unwrap_or_default().trim();
                let value: f64 = text.parse().ok().filter(|v: &f64| v.is_finite()).with_context(|| format!("row {row}, column '{name}': '{text}' is not a finite number"))?;
                if k > 0 {
                    json.push(',');
                }
                json.push_str(&serde_json::to_string(&value)?);
            }
            json.push(']');
            ids.push(self.id.and_then(|i| cells.get(i).cloned()));
            self.next_row += 1;
        }
        if ids.is_empty() {
            return Ok(None);
        }
        let rows = ids.len();
        if self.entities {
            return Ok(Some(Chunk { payload: Payload::Entities(entities), ids, rows }));
        }
        json.push(']');
        Ok(Some(Chunk { payload: Payload::Rows(serde_json::value::RawValue::from_string(json)?), ids, rows }))
    }
}

fn parquet_cell(field: &parquet::record::Field) -> String {
    use parquet::record::Field;
    match field {
        Field::Null => String::new(),
        Field::Str(s) => s.clone(),
        Field::Double(v) => v.to_string(),
        Field::Float(v) => v.to_string(),
        Field::Long(v) => v.to_string(),
        Field::Int(v) => v.to_string(),
        Field::Short(v) => v.to_string(),
        Field::Byte(v) => v.to_string(),
        Field::Bool(v) => u8::from(*v).to_string(),
        other => other.to_string(),
    }
}

fn count_lines(path: &Path) -> anyhow::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    let mut last = b'\n';
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
    Ok(lines + u64::from(last != b'\n'))
}
