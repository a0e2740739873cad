//! `modelship predictions`: reads what a server's prediction log kept (`--prediction-log`), in
//! the same store the server wrote: lists, exports with rollback marks, labels and rewards
//! joined, shows shadow disagreements, and purges what rolled-back versions said (audited).

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::{Context, bail};
use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use modelship_predictions::table::{Column, Kind, Value};
use modelship_predictions::{Audit, Feedback, LogStore, Mark, Prediction, rolled_back};
use serde_json::json;

use crate::cli::{ExportFormat, OutputFormat, PredictionFilter, PredictionsArgs, PredictionsCommand};

pub const HELP: &str = "\
A server started with --prediction-log DIR (or s3://BUCKET/PREFIX) keeps each answer as a \
row of Parquet: request id, time, model, version, routing revision, role (stable, candidate, \
pinned, shadow), status, latency, inputs and outputs as V2 JSON, and the score. Labels and \
rewards posted later are kept beside them; a rollback adds a mark naming the version and the \
routing revisions it answered under. Nothing is changed in place: a prediction is rolled back \
when a mark covers it.

This command reads the same store. Access to the store is the credential: whoever can read \
the directory or the bucket can read the predictions; purging needs the right to write there, \
and --yes.

Examples:
  modelship predictions ls --log preds --model fraud
  modelship predictions ls --log preds --rolled-back
  modelship predictions rollbacks --log preds
  modelship predictions diff --log preds --model fraud
  modelship predictions export --log preds --rolled-back --to bad.csv
  modelship predictions purge --log preds --rolled-back --yes
  modelship predictions audit --log preds

The files are plain Parquet, partitioned as model=NAME/date=DAY, so DuckDB answers \
\"which predictions came from a version later rolled back?\" in one query (see \
docs/src/guides/predictions.md).";

pub fn main(args: PredictionsArgs) -> ExitCode {
    crate::run_command(run(args))
}

async fn run(args: PredictionsArgs) -> anyhow::Result<()> {
    let url = args.log.clone().or_else(|| std::env::var("MODELSHIP_PREDICTION_LOG").ok()).context("no prediction log given: pass --log DIR (the server's --prediction-log) or set MODELSHIP_PREDICTION_LOG")?;
    let store = LogStore::open(&url).map_err(|e| anyhow::anyhow!(e))?;
    match args.command {
        PredictionsCommand::Ls { filter, limit } => ls(&store, &filter, limit, args.output).await,
        PredictionsCommand::Export { filter, to, format } => export(&store, &filter, &to, format, args.output).await,
        PredictionsCommand::Rollbacks { model } => rollbacks(&store, model.as_deref(), args.output).await,
        PredictionsCommand::Diff { model, limit } => diff(&store, &model, limit, args.output).await,
        PredictionsCommand::Purge { model, rolled_back, yes, actor } => purge(&store, model.as_deref(), rolled_back, yes, actor, args.output).await,
        PredictionsCommand::Audit => audit(&store, args.output).await,
    }
}

/// A stored prediction with what was learnt about it later.
struct Row {
    prediction: Prediction,
    mark: Option<Mark>,
    label: Option<bool>,
    reward: Option<f64>,
}

/// The predictions `filter` selects, oldest first, each with its mark, label and reward.
async fn select(store: &LogStore, filter: &PredictionFilter) -> anyhow::Result<Vec<Row>> {
    let predictions = store.predictions(filter.model.as_deref()).await.map_err(|e| anyhow::anyhow!(e))?;
    let marks = store.marks(filter.model.as_deref()).await.map_err(|e| anyhow::anyhow!(e))?;
    let mut feedback: HashMap<String, (Option<bool>, Option<f64>)> = HashMap::new();
    for f in store.feedback().await.map_err(|e| anyhow::anyhow!(e))? {
        let Feedback { request_id, label, reward, .. } = f;
        let entry = feedback.entry(request_id).or_default();
        entry.0 = entry.0.or(label);
        entry.1 = entry.1.or(reward);
    }
    let mut rows: Vec<Row> = predictions
        .into_iter()
        .filter(|p| filter.version.as_ref().is_none_or(|v| &p.version == v))
        .filter(|p| filter.role.as_ref().is_none_or(|r| &p.role == r))
        .map(|prediction| {
            let mark = rolled_back(&prediction, &marks).cloned();
            let (label, reward) = feedback.get(&prediction.request_id).copied().unwrap_or_default();
            Row { prediction, mark, label, reward }
        })
        .filter(|r| !filter.rolled_back || r.mark.is_some())
        .collect();
    rows.sort_by(|a, b| a.prediction.time.cmp(&b.prediction.time).then_with(|| a.prediction.request_id.cmp(&b.prediction.request_id)));
    Ok(rows)
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(NOTHING).set_content_arrangement(ContentArrangement::Dynamic);
    if table.width().is_none() {
        table.set_width(120);
    }
    table.set_header(header.to_vec());
    table
}

fn time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn row_json(r: &Row) -> serde_json::Value {
    let mut value = serde_json::to_value(&r.prediction).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("rolled_back".into(), json!(r.mark.is_some()));
        map.insert("rollback_revision".into(), json!(r.mark.as_ref().map(|m| m.to_revision)));
        map.insert("label".into(), json!(r.label));
        map.insert("reward".into(), json!(r.reward));
    }
    value
}

async fn ls(store: &LogStore, filter: &PredictionFilter, limit: usize, output: OutputFormat) -> anyhow::Result<()> {
    let rows = select(store, filter).await?;
    let total = rows.len();
    let shown = &rows[total.saturating_sub(limit)..];
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&json!({"total": total, "predictions": shown.iter().map(row_json).collect::<Vec<_>>()}))?);
        return Ok(());
    }
    let mut t = table(&["TIME", "REQUEST ID", "MODEL", "VERSION", "REV", "ROLE", "STATUS", "SCORE", "ROLLED BACK"]);
    for r in shown {
        let p = &r.prediction;
        t.add_row(vec![
            time(p.time),
            p.request_id.clone(),
            p.model.clone(),
            p.version.clone(),
            p.revision.map_or("-".into(), |r| r.to_string()),
            p.role.clone(),
            p.status.to_string(),
            p.score.map_or("-".into(), |s| format!("{s:.4}")),
            r.mark.as_ref().map_or("-".into(), |m| format!("yes (revision {})", m.to_revision)),
        ]);
    }
    println!("{t}");
    let marked = rows.iter().filter(|r| r.mark.is_some()).count();
    println!("{} of {total} shown; {marked} made by a version later rolled back", shown.len());
    Ok(())
}

/// The export's columns: the prediction's, then what was learnt later.
fn export_columns() -> Vec<Column> {
    let mut columns = modelship_predictions::Table::Predictions.columns().to_vec();
    columns.extend([
        Column { name: "rolled_back", kind: Kind::Bool, required: true },
        Column { name: "rollback_revision", kind: Kind::Int, required: false },
        Column { name: "rollback_reason", kind: Kind::Text, required: false },
        Column { name: "label", kind: Kind::Bool, required: false },
        Column { name: "reward", kind: Kind::Float, required: false },
    ]);
    columns
}

fn export_row(r: &Row) -> Vec<Value> {
    let mut row = r.prediction.row();
    row.extend([
        Value::Bool(r.mark.is_some()),
        r.mark.as_ref().map(|m| m.to_revision).into(),
        r.mark.as_ref().map(|m| m.reason.clone()).into(),
        r.label.into(),
        r.reward.into(),
    ]);
    row
}

async fn export(store: &LogStore, filter: &PredictionFilter, to: &std::path::Path, format: Option<ExportFormat>, output: OutputFormat) -> anyhow::Result<()> {
    let format = match format {
        Some(f) => f,
        None => match to.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("parquet") | Some("pq") => ExportFormat::Parquet,
            Some("csv") => ExportFormat::Csv,
            Some("jsonl") | Some("ndjson") => ExportFormat::Jsonl,
            _ => bail!("{}: say which format with --format parquet|csv|jsonl, or name the file .parquet, .csv or .jsonl", to.display()),
        },
    };
    let rows = select(store, filter).await?;
    let columns = export_columns();
    let bytes: Vec<u8> = match format {
        ExportFormat::Parquet => {
            let cells: Vec<Vec<Value>> = rows.iter().map(export_row).collect();
            modelship_predictions::table::encode("predictions", &columns, &cells).map_err(|e| anyhow::anyhow!(e))?.to_vec()
        }
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(columns.iter().map(|c| c.name))?;
            for r in &rows {
                w.write_record(export_row(r).iter().map(|v| match v {
                    Value::Null => String::new(),
                    Value::Text(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    Value::Float(f) => f.to_string(),
                    Value::Bool(b) => b.to_string(),
                }))?;
            }
            w.into_inner().map_err(|e| anyhow::anyhow!("cannot write CSV: {e}"))?
        }
        ExportFormat::Jsonl => {
            let mut out = Vec::new();
            for r in &rows {
                serde_json::to_writer(&mut out, &row_json(r))?;
                out.push(b'\n');
            }
            out
        }
    };
    std::fs::write(to, bytes).with_context(|| format!("cannot write {}", to.display()))?;
    if output == OutputFormat::Json {
        println!("{}", json!({"rows": rows.len(), "file": to.display().to_string()}));
    } else {
        println!("wrote {} predictions to {}", rows.len(), to.display());
    }
    Ok(())
}

async fn rollbacks(store: &LogStore, model: Option<&str>, output: OutputFormat) -> anyhow::Result<()> {
    let mut marks = store.marks(model).await.map_err(|e| anyhow::anyhow!(e))?;
    marks.sort_by_key(|m| m.time);
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&marks)?);
        return Ok(());
    }
    if marks.is_empty() {
        println!("no rollback has marked predictions in {}", store.location());
        return Ok(());
    }
    let mut t = table(&["ROLLED BACK AT", "MODEL", "VERSION", "REVISIONS", "SINCE", "BY", "REASON"]);
    for m in &marks {
        t.add_row(vec![
            time(m.time),
            m.model.clone(),
            m.version.clone(),
            format!("{}..{}", m.from_revision, m.to_revision - 1),
            time(m.from_time),
            m.actor.clone(),
            m.reason.clone(),
        ]);
    }
    println!("{t}");
    Ok(())
}

async fn diff(store: &LogStore, model: &str, limit: usize, output: OutputFormat) -> anyhow::Result<()> {
    let all: Vec<Prediction> = store.predictions(Some(model)).await.map_err(|e| anyhow::anyhow!(e))?;
    let served: HashMap<&str, &Prediction> = all.iter().filter(|p| p.role != "shadow").map(|p| (p.request_id.as_str(), p)).collect();
    let shadows: Vec<&Prediction> = all.iter().filter(|p| p.role == "shadow").collect();
    let disagreements: Vec<(&Prediction, Option<&&Prediction>)> =
        shadows.iter().filter(|s| s.agreed == Some(false)).map(|s| (*s, served.get(s.request_id.as_str()))).collect();
    if output == OutputFormat::Json {
        let list: Vec<_> = disagreements
            .iter()
            .take(limit)
            .map(|(s, p)| {
                json!({
                    "request_id": s.request_id, "shadow_version": s.version, "served_version": s.served_version,
                    "shadow_outputs": s.outputs, "served_outputs": p.and_then(|p| p.outputs.clone()),
                    "shadow_score": s.score, "served_score": p.and_then(|p| p.score), "inputs": s.inputs,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({"shadow_answers": shadows.len(), "disagreed": disagreements.len(), "disagreements": list}))?);
        return Ok(());
    }
    let mut t = table(&["REQUEST ID", "SERVED", "SHADOW", "SERVED SCORE", "SHADOW SCORE"]);
    for (s, p) in disagreements.iter().take(limit) {
        let score = |v: Option<f64>| v.map_or("-".into(), |s| format!("{s:.4}"));
        t.add_row(vec![
            s.request_id.clone(),
            s.served_version.clone().unwrap_or_default(),
            s.version.clone(),
            score(p.and_then(|p| p.score)),
            score(s.score),
        ]);
    }
    if !disagreements.is_empty() {
        println!("{t}");
    }
    println!("{} of {} shadow answers disagreed with the answer the client got", disagreements.len(), shadows.len());
    Ok(())
}

async fn purge(store: &LogStore, model: Option<&str>, rolled_back_only: bool, yes: bool, actor: Option<String>, output: OutputFormat) -> anyhow::Result<()> {
    if !rolled_back_only {
        bail!("purge removes the predictions of rolled-back versions: pass --rolled-back (nothing else can be purged)");
    }
    let marks = store.marks(model).await.map_err(|e| anyhow::anyhow!(e))?;
    let predictions = store.predictions(model).await.map_err(|e| anyhow::anyhow!(e))?;
    let marked = predictions.iter().filter(|p| rolled_back(p, &marks).is_some()).count();
    if !yes {
        bail!("{marked} predictions of rolled-back versions would be removed from {}; run again with --yes to remove them", store.location());
    }
    let removed = store.purge_rolled_back(model).await.map_err(|e| anyhow::anyhow!(e))?;
    let actor = actor.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "unknown".to_owned());
    let detail = marks.iter().map(|m| format!("{} {} revisions {}..{}", m.model, m.version, m.from_revision, m.to_revision - 1)).collect::<Vec<_>>().join("; ");
    let audit = Audit { time: modelship_predictions::now_ms(), actor, action: "purge-rolled-back".into(), model: model.map(str::to_owned), rows: removed as i64, detail };
    store.put_audit(&audit).await.map_err(|e| anyhow::anyhow!(e))?;
    if output == OutputFormat::Json {
        println!("{}", json!({"removed": removed, "audit": audit}));
    } else {
        println!("removed {removed} predictions of rolled-back versions from {}; recorded in the audit table", store.location());
    }
    Ok(())
}

async fn audit(store: &LogStore, output: OutputFormat) -> anyhow::Result<()> {
    let entries = store.audit().await.map_err(|e| anyhow::anyhow!(e))?;
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("nothing was ever purged from {}", store.location());
        return Ok(());
    }
    let mut t = table(&["TIME", "BY", "ACTION", "MODEL", "ROWS", "WHAT"]);
    for a in &entries {
        t.add_row(vec![time(a.time), a.actor.clone(), a.action.clone(), a.model.clone().unwrap_or_else(|| "(every model)".into()), a.rows.to_string(), a.detail.clone()]);
    }
    println!("{t}");
    Ok(())
}
