//! `modelship validate MODEL`: the pre-deployment gates. This module does the IO: it reads the
//! data file, loads the models into ONNX Runtime, predicts every row, times runs and reads the
//! process's memory; `modelship-validate` judges what it measured and renders the report.
//!
//! Exit status: 0 every gate passed, 1 a gate failed, 2 the command could not judge (usage).

mod args;
mod data;
mod measure;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use modelship_inference::{Backend, LoadOptions, Session};
use modelship_registry::ModelRef;
use modelship_validate::contract::{self, Contract};
use modelship_validate::limit::{Bound, Drop, LatencyBudget, parse_bytes};
use modelship_validate::measure::{Latency, Memory};
use modelship_validate::metric::{Task, Truth};
use modelship_validate::report::{Skipped, Subject, Unit};
use modelship_validate::{Gate, GateName, Report, Verdict, gate};

pub use args::{HELP, ValidateArgs};
use args::{GateArg, ReportFormat, TaskArg};
use data::Feeds;
use measure::memory;

use crate::config::ProcessEnv;

/// A gate failed: the report says which.
pub const EXIT_FAILED: u8 = 1;
/// The command could not judge: bad flags, unreadable files, data that does not fit the model.
pub const EXIT_USAGE: u8 = 2;

pub fn main(args: ValidateArgs) -> ExitCode {
    match run(&args) {
        Ok(report) => {
            print(&report, args.output);
            if report.passed { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED) }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The thresholds, typed; every malformed one reported at once.
struct Limits {
    bounds: Vec<Bound>,
    drops: Vec<Drop>,
    budgets: Vec<LatencyBudget>,
    max_memory: Option<u64>,
}

impl Limits {
    fn parse(args: &ValidateArgs) -> anyhow::Result<Limits> {
        let mut problems = Vec::new();
        fn keep<T>(problems: &mut Vec<String>, r: Result<T, modelship_validate::limit::LimitError>) -> Option<T> {
            r.map_err(|e| problems.push(e.to_string())).ok()
        }
        let parsed: Vec<_> = args.min.iter().map(|m| Bound::min(m)).chain(args.max.iter().map(|m| Bound::max(m))).collect();
        let bounds: Vec<Bound> = parsed.into_iter().filter_map(|r| keep(&mut problems, r)).collect();
        let parsed: Vec<_> = args.max_drop.iter().map(|d| Drop::parse(d)).collect();
        let drops: Vec<Drop> = parsed.into_iter().filter_map(|r| keep(&mut problems, r)).collect();
        let parsed: Vec<_> = args.max_p99.iter().map(|b| LatencyBudget::parse(b)).collect();
        let budgets: Vec<LatencyBudget> = parsed.into_iter().filter_map(|r| keep(&mut problems, r)).collect();
        let max_memory = args.max_memory.as_deref().and_then(|m| keep(&mut problems, parse_bytes("--max-memory", m)));
        if args.batch.contains(&0) {
            problems.push("--batch 0: a run has 1 row or more".to_owned());
        }
        for (flag, n) in [("--runs", args.runs), ("--workers", args.workers), ("--intra-op-threads", args.intra_op_threads)] {
            if n == 0 {
                problems.push(format!("{flag} 0: give 1 or more"));
            }
        }
        if !(args.max_psi.is_finite() && args.max_psi >= 0.0) {
            problems.push(format!("--max-psi {}: give a PSI of 0 or more, e.g. 0.1", args.max_psi));
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("\n  "));
        }
        Ok(Limits { bounds, drops, budgets, max_memory })
    }
}

/// Which gates run; the others with the reason they do not.
struct Plan {
    run: Vec<GateName>,
    skipped: Vec<Skipped>,
}

impl Plan {
    fn decide(args: &ValidateArgs, limits: &Limits) -> anyhow::Result<Plan> {
        let named = |g: GateName| args.gate.iter().any(|a| gate_name(*a) == g);
        let missing = |g: GateName| -> Option<&'static str> {
            match g {
                GateName::Quality if args.data.is_none() || args.label.is_none() => Some("needs --data FILE and --label COLUMN"),
                GateName::Contract if args.against.is_none() => Some("needs a reference: --against MODEL"),
                GateName::Distribution if args.against.is_none() || args.data.is_none() => Some("needs --against MODEL and --data FILE"),
                GateName::Resources if memory::resident().is_none() => Some("reads the process's memory from /proc (Linux)"),
                _ => None,
            }
        };
        if (!limits.bounds.is_empty() || !limits.drops.is_empty()) && missing(GateName::Quality).is_some() {
            bail!("--min, --max and --max-drop judge metrics on labelled rows: give --data FILE and --label COLUMN");
        }
        let mut plan = Plan { run: Vec::new(), skipped: Vec::new() };
        for g in GateName::ALL {
            match (args.gate.is_empty() || named(g), missing(g)) {
                (true, None) => plan.run.push(g),
                (true, Some(why)) if named(g) => bail!("--gate {g} {why}"),
                (true, Some(why)) => plan.skipped.push(Skipped { gate: g, reason: why.to_owned() }),
                (false, _) => {}
            }
        }
        Ok(plan)
    }

    fn has(&self, g: GateName) -> bool {
        self.run.contains(&g)
    }
}

fn gate_name(g: GateArg) -> GateName {
    match g {
        GateArg::Quality => GateName::Quality,
        GateArg::Contract => GateName::Contract,
        GateArg::Latency => GateName::Latency,
        GateArg::Resources => GateName::Resources,
        GateArg::Distribution => GateName::Distribution,
    }
}

/// A model's bytes and where they came from.
struct Source {
    subject: Subject,
    bytes: Vec<u8>,
    /// NAME and VERSION when it came from the registry.
    version_of: Option<(String, String)>,
}

fn load_source(reference: &str, args: &ValidateArgs, runtime: &tokio::runtime::Runtime, backend: &dyn Backend) -> anyhow::Result<Source> {
    let path = Path::new(reference);
    if path.is_file() {
        let bytes = crate::convert::read_model_file(path)?;
        let head = &bytes[..bytes.len().min(modelship_convert::format::HEAD)];
        let bytes = match modelship_convert::format::classify_head(head, bytes.len() as u64) {
            modelship_convert::format::Head::MaybeOnnx => bytes.to_vec(),
            // A pickle, XGBoost or LightGBM model: converted first, proven equal on the data's
            // feature columns (unless --sample names other rows).
            _ => {
                let mut options = crate::convert::options(&args.convert, reference)?;
                if options.sample.is_none()
                    && let Some(data) = &args.data
                {
                    let mut sample = crate::convert::read_sample(data)?;
                    sample.columns.retain(|(name, _)| Some(name.as_str()) != args.label.as_deref() && !args.ignore.contains(name));
                    options.sample = Some(sample);
                }
                let prepared = crate::convert::prepare_with(path, bytes, &args.convert, options, backend, &ProcessEnv, &crate::convert::say)?;
                prepared.onnx().to_vec()
            }
        };
        return Ok(Source { subject: Subject { reference: reference.to_owned(), version: None }, bytes, version_of: None });
    }
    if !ModelRef::looks_like_reference(reference) {
        bail!("{reference} is neither a file nor a registry reference (NAME:VERSION, NAME@ALIAS, NAME)");
    }
    let registry = crate::models::open_registry(args.registry.clone(), None, &ProcessEnv)?;
    let record = runtime
        .block_on(registry.resolve(&ModelRef::parse(reference)?))
        .with_context(|| format!("{reference} is not a file here, and the registry at {} does not have it", registry.root().display()))?;
    let bytes = runtime.block_on(registry.artifact(&record, &modelship_registry::NoProgress)).with_context(|| format!("cannot read the artifact of {reference}"))?;
    Ok(Source {
        subject: Subject { reference: reference.to_owned(), version: Some(record.version.clone()) },
        bytes: bytes.to_vec(),
        version_of: Some((record.name, record.version)),
    })
}

fn contract_of(session: &dyn Session) -> Contract {
    let signature = session.info().signature.clone();
    let prediction = modelship_protocol::v1::prediction_output(&signature).map(|i| signature.outputs[i].name.clone());
    Contract { signature, prediction }
}

/// The data file's rows, the label's values and the feature columns with their index.
struct Rows {
    rows: Vec<Vec<String>>,
    labels: Option<Vec<f64>>,
    features: Vec<(usize, String)>,
}

fn read_rows(file: &Path, label: Option<&str>, ignore: &[String]) -> anyhow::Result<Rows> {
    let table = crate::table_file::read_table(file)?;
    if table.rows.is_empty() {
        bail!("{} has no rows", file.display());
    }
    for name in label.into_iter().chain(ignore.iter().map(String::as_str)) {
        if !table.columns.iter().any(|c| c == name) {
            bail!("{} has no column '{name}'; its columns are: {}", file.display(), table.columns.join(", "));
        }
    }
    let labels = match label {
        None => None,
        Some(name) => {
            let i = table.columns.iter().position(|c| c == name).unwrap_or_default();
            let values = table
                .rows
                .iter()
                .enumerate()
                .map(|(r, row)| row[i].trim().parse::<f64>().ok().filter(|v| v.is_finite()).with_context(|| format!("{}: row {}, label '{}' is not a number", file.display(), r + 1, row[i])))
                .collect::<anyhow::Result<Vec<f64>>>()?;
            Some(values)
        }
    };
    let features = table.columns.iter().enumerate().filter(|(_, c)| Some(c.as_str()) != label && !ignore.contains(c)).map(|(i, c)| (i, c.clone())).collect();
    Ok(Rows { rows: table.rows, labels, features })
}

/// A gate that could not measure because the model failed: one failed check saying why.
fn broken(gate: GateName, id: &str, why: &str) -> Gate {
    let check = modelship_validate::Check { id: id.to_owned(), value: None, unit: Unit::Number, limit: None, verdict: Verdict::Fail, detail: why.to_owned() };
    Gate::new(gate, vec![check])
}

fn run(args: &ValidateArgs) -> anyhow::Result<Report> {
    let limits = Limits::parse(args)?;
    let plan = Plan::decide(args, &limits)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    // One ONNX Runtime per process: it also proves conversions equal.
    let backend = modelship_onnx::OnnxBackend::new(args.ort_lib.as_deref().or(std::env::var_os("ORT_DYLIB_PATH").as_deref().map(Path::new)))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut candidate = load_source(&args.model, args, &runtime, &backend)?;
    match (&args.model_version, &candidate.version_of) {
        (Some(v), None) => candidate.subject.version = Some(v.clone()),
        (Some(v), Some((name, version))) if v != version => bail!("--model-version {v}: {} is {name}:{version} in the registry; --model-version names the version of a file", args.model),
        _ => {}
    }
    if args.record && candidate.version_of.is_none() {
        bail!("--record writes on a registry version, and {} is a file: push it first (modelship models push NAME {} --version V) and validate NAME:V", args.model, args.model);
    }
    let options = LoadOptions { intra_op_threads: args.intra_op_threads, ..LoadOptions::default() };
    let load = |source: &Source| backend.load(&source.bytes, &options).with_context(|| format!("cannot load {} into ONNX Runtime", source.subject.reference));
    let mut session = load(&candidate)?;
    let loaded_bytes = memory::resident();
    // One more session, as a further worker would load it; measured before anything else loads.
    let per_worker_bytes = match (plan.has(GateName::Resources), loaded_bytes) {
        (true, Some(before)) => {
            let second = load(&candidate)?;
            let after = memory::resident().unwrap_or(before);
            drop(second);
            Some(after.saturating_sub(before))
        }
        _ => None,
    };

    let rows = args.data.as_deref().map(|f| read_rows(f, args.label.as_deref(), &args.ignore)).transpose()?;
    let signature = session.info().signature.clone();
    let feeds = rows.as_ref().map(|r| Feeds::plan(&signature, &r.features)).transpose()?;
    let prediction = data::prediction_output(&signature)?;
    let task = match args.task {
        Some(TaskArg::Classification) => Task::Classification,
        Some(TaskArg::Regression) => Task::Regression,
        None if data::looks_like_classifier(prediction) => Task::Classification,
        None => Task::Regression,
    };
    gate::check_task(task, &limits.bounds, &limits.drops).map_err(|e| anyhow::anyhow!(e))?;
    let truth = match rows.as_ref().and_then(|r| r.labels.as_ref()) {
        Some(labels) => Some(Truth::from_values(task, labels).map_err(|e| anyhow::anyhow!("{}: {e}", args.data.as_deref().unwrap_or(Path::new("")).display()))?),
        None => None,
    };

    let reference = match &args.against {
        Some(r) => {
            let source = load_source(r, args, &runtime, &backend)?;
            let session = load(&source)?;
            Some((source, session))
        }
        None => None,
    };
    let predict = |session: &mut dyn Session, feeds: &Feeds, rows: &Rows| measure::predict(session, feeds, &rows.rows).map_err(|e| format!("{e:#}"));
    let predictions = match (&rows, &feeds) {
        (Some(rows), Some(feeds)) => Some(predict(&mut *session, feeds, rows)),
        _ => None,
    };
    let mut reference = reference;
    let mut reference_predictions = None;
    if let (Some((source, ref_session)), Some(rows)) = (reference.as_mut(), &rows) {
        let ref_feeds = Feeds::plan(&ref_session.info().signature.clone(), &rows.features).with_context(|| format!("the reference {} cannot take these rows", source.subject.reference))?;
        reference_predictions = Some(predict(ref_session.as_mut(), &ref_feeds, rows));
    }

    let mut gates = Vec::new();
    if plan.has(GateName::Quality)
        && let (Some(predictions), Some(truth)) = (&predictions, &truth)
    {
        gates.push(match predictions {
            Ok(p) => {
                let reference = match &reference_predictions {
                    Some(Ok(r)) => Some(r.as_slice()),
                    _ => None,
                };
                gate::quality(p, truth, &limits.bounds, reference, &limits.drops)
            }
            Err(why) => broken(GateName::Quality, "predictions", why),
        });
    }
    if plan.has(GateName::Contract)
        && let Some((source, ref_session)) = &reference
    {
        let (theirs, ours) = (contract_of(ref_session.as_ref()), contract_of(session.as_ref()));
        let changes = contract::compare(&theirs, &ours);
        let allowed = if args.major {
            Some("marked a new major version (--major)".to_owned())
        } else {
            match (&source.subject.version, &candidate.subject.version) {
                (Some(old), Some(new)) if contract::new_major(old, new) == Some(true) => Some(format!("{new} is a new major version over {old}")),
                _ => None,
            }
        };
        gates.push(gate::contract(&changes, &summary(&theirs), allowed.as_deref()));
    }
    if plan.has(GateName::Distribution)
        && let (Some(ours), Some(theirs)) = (&predictions, &reference_predictions)
    {
        gates.push(match (ours, theirs) {
            (Ok(ours), Ok(theirs)) => gate::distribution(theirs, ours, args.max_psi),
            (Err(why), _) => broken(GateName::Distribution, "psi", why),
            (_, Err(why)) => broken(GateName::Distribution, "psi", &format!("the reference failed: {why}")),
        });
    }
    let against = reference.as_ref().map(|(source, _)| source.subject.clone());
    drop(reference);

    // Latency, and the peak while running (the working set) from here on.
    let reset = memory::reset_peak();
    let at_reset = memory::resident();
    if plan.has(GateName::Latency) {
        gates.push(match time_batches(session.as_mut(), args, &limits, feeds.as_ref(), rows.as_ref()) {
            Ok(measured) => gate::latency(&measured, &limits.budgets),
            Err(e) => broken(GateName::Latency, "runs", &format!("{e:#}")),
        });
    }
    if plan.has(GateName::Resources)
        && let (Some(loaded_bytes), Some(per_worker_bytes)) = (loaded_bytes, per_worker_bytes)
    {
        let working_bytes = match (reset, at_reset, memory::peak()) {
            (true, Some(start), Some(peak)) => peak.saturating_sub(start),
            _ => 0,
        };
        gates.push(gate::resources(&Memory { loaded_bytes, per_worker_bytes, working_bytes }, args.workers, limits.max_memory));
    }

    let data = args.data.as_ref().map(|d| d.display().to_string());
    let report = Report::new(candidate.subject.clone(), against, data, rows.as_ref().map(|r| r.rows.len()), gates, plan.skipped);
    if args.record
        && let Some((name, version)) = &candidate.version_of
    {
        record(args, &report, name, version)?;
    }
    Ok(report)
}

/// `1 input, 2 outputs, /v1/predict from 'probabilities'`
fn summary(c: &Contract) -> String {
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut text = format!("{}, {}", plural(c.signature.inputs.len(), "input"), plural(c.signature.outputs.len(), "output"));
    if let Some(p) = &c.prediction {
        text += &format!(", /v1/predict from '{p}'");
    }
    text
}

/// Timed runs at batch 1 and every other batch asked for (by --batch or a budget), on the data's
/// rows when given (cycled), else on zeros.
fn time_batches(session: &mut dyn Session, args: &ValidateArgs, limits: &Limits, feeds: Option<&Feeds>, rows: Option<&Rows>) -> anyhow::Result<Vec<Latency>> {
    let mut batches = vec![1];
    for b in args.batch.iter().copied().chain(limits.budgets.iter().map(|b| b.batch)) {
        if !batches.contains(&b) {
            batches.push(b);
        }
    }
    let signature = session.info().signature.clone();
    let mut measured = Vec::new();
    for batch in batches {
        if batch > 1 && (feeds.is_some_and(|f| !f.batched) || !signature.inputs.iter().all(|i| i.has_batch_dim())) {
            bail!("batch {batch}: the model's inputs have no batch dimension, so it runs one row at a time; time it at batch 1");
        }
        let requests = match (feeds, rows) {
            (Some(feeds), Some(rows)) => {
                // Enough distinct requests to cycle through, at most one per timed run.
                let count = rows.rows.len().div_ceil(batch).min(args.runs).max(1);
                (0..count)
                    .map(|i| {
                        let chunk: Vec<&[String]> = (0..batch).map(|k| rows.rows[(i * batch + k) % rows.rows.len()].as_slice()).collect();
                        Ok(signature.prepare(feeds.request(&chunk, i * batch)?)?)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            }
            _ => vec![signature.prepare(Feeds::synthetic(&signature, batch)?)?],
        };
        let times = measure::time_runs(session, &requests, args.runs, args.warmup)?;
        measured.extend(Latency::from_runs(batch, &times));
    }
    Ok(measured)
}

/// The report's values as the version's metrics (`validate.ID`, with the unit in the name for
/// times and memory) and its verdict as labels.
fn record(args: &ValidateArgs, report: &Report, name: &str, version: &str) -> anyhow::Result<()> {
    let mut metrics = BTreeMap::new();
    for g in &report.gates {
        for c in &g.checks {
            let Some(value) = c.value else { continue };
            let (key, value) = match c.unit {
                Unit::Number => (format!("validate.{}", c.id), value),
                Unit::Ms => (format!("validate.{}_ms", c.id), value),
                Unit::Bytes => (format!("validate.{}_mib", c.id), value / (1024.0 * 1024.0)),
            };
            metrics.insert(key, value);
        }
    }
    let mut labels = BTreeMap::from([(modelship_registry::VALIDATE_LABEL.to_owned(), if report.passed { "pass" } else { "fail" }.to_owned())]);
    if let Some(data) = &report.data {
        labels.insert("validate.data".to_owned(), data.clone());
    }
    if let Some(against) = &report.against {
        labels.insert("validate.against".to_owned(), against.reference.clone());
        labels.extend(against.version.clone().map(|v| ("validate.against_version".to_owned(), v)));
    }
    let registry = crate::models::open_registry(args.registry.clone(), None, &ProcessEnv)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime
        .block_on(registry.annotate(name, version, &metrics, &labels))
        .with_context(|| format!("cannot record the results on {name}:{version}"))?;
    eprintln!("recorded {} metrics on {name}:{version} (validate={})", metrics.len(), labels[modelship_registry::VALIDATE_LABEL]);
    Ok(())
}

fn print(report: &Report, format: ReportFormat) {
    match format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(report).unwrap_or_default()),
        ReportFormat::Markdown => print!("{}", report.markdown()),
        ReportFormat::Table => print!("{}", render_table(report)),
    }
}

/// The report for people: what was validated, a row per check, the verdict and what did not run.
fn render_table(report: &Report) -> String {
    let mut table = Table::new();
    table.load_style(NOTHING).set_content_arrangement(ContentArrangement::Dynamic).set_header(vec!["GATE", "CHECK", "VALUE", "LIMIT", "VERDICT", "DETAIL"]);
    for row in report.rows() {
        table.add_row(row.to_vec());
    }
    let mut out = format!("{}
{table}
", report.headline());
    let ran: Vec<&str> = report.gates.iter().map(|g| g.gate.as_str()).collect();
    if report.passed {
        out += &format!("passed: {}
", ran.join(", "));
    } else {
        out += &format!("FAILED: {}
", report.failures().join("; "));
    }
    for s in &report.skipped {
        out += &format!("not run: {} ({})
", s.gate, s.reason);
    }
    out
}
