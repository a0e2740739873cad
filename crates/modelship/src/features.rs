//! `modelship features load`: fills the feature store from a CSV or Parquet file of entities.
//! Values are checked against the configured feature types before anything is written, so a bad
//! file never leaves half-typed data behind; entities go in pipelined batches, with a progress bar.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use modelship_features::spec::{Feature, KeyPattern, Kind, Storage};
use modelship_features::{FeatureMetrics, Store, StoreConfig};
use serde_json::json;

use crate::cli::{FeaturesArgs, FeaturesCommand, OutputFormat, StorageArg};

pub fn main(args: FeaturesArgs) -> ExitCode {
    crate::run_command(run(args))
}

/// A table of entities read from a file: column names and rows of text values.
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
}

async fn run(args: FeaturesArgs) -> anyhow::Result<()> {
    let FeaturesCommand::Load { file, config, store, key, storage, columns, batch } = args.command;
    let raw = match &config {
        Some(path) => crate::config::load_file(path)?.features.with_context(|| format!("{} has no features section", path.display()))?,
        None => Default::default(),
    };
    let url = store.or(raw.store_url.clone()).context("no store given: pass --store redis://host:port or --config with features.store_url")?;
    let pattern = key.or(raw.key.clone()).context("no key pattern given: pass --key 'features:customer:{customer_id}' or --config with features.key")?;
    let key = KeyPattern::parse(&pattern).map_err(|e| anyhow::anyhow!(e))?;
    let storage = match storage {
        Some(StorageArg::Hash) => Storage::Hash,
        Some(StorageArg::Json) => Storage::Json,
        None => raw.storage,
    };
    // The store features of the config, by stored field name, for type checks.
    let typed: BTreeMap<String, Feature> = raw
        .features
        .iter()
        .filter(|d| d.source == modelship_features::spec::Source::Store)
        .map(|d| {
            let f = Feature::from(d);
            (f.field.clone(), f)
        })
        .collect();

    let table = read_table(&file)?;
    let key_columns: Vec<&str> = key.fields().collect();
    for k in &key_columns {
        if !table.columns.iter().any(|c| c == k) {
            bail!("{} has no column '{k}', which the key pattern {pattern} needs; its columns are: {}", file.display(), table.columns.join(", "));
        }
    }
    let stored: Vec<String> = if !columns.is_empty() {
        columns
    } else if !typed.is_empty() {
        typed.keys().cloned().collect()
    } else {
        table.columns.iter().filter(|c| !key_columns.contains(&c.as_str())).cloned().collect()
    };
    let index: Vec<usize> = stored
        .iter()
        .map(|c| {
            table.columns.iter().position(|t| t == c).with_context(|| {
                format!("{} has no column '{c}'; its columns are: {}", file.display(), table.columns.join(", "))
            })
        })
        .collect::<anyhow::Result<_>>()?;

    // Everything is checked before the first write.
    let mut entities = Vec::with_capacity(table.rows.len());
    for (r, row) in table.rows.iter().enumerate() {
        let line = r + 2; // the header is line 1
        let entity: serde_json::Map<String, serde_json::Value> =
            table.columns.iter().zip(row).map(|(c, v)| (c.clone(), serde_json::Value::String(v.clone()))).collect();
        let k = key.key(r, &entity).map_err(|e| anyhow::anyhow!("row {line}: {e}"))?;
        let mut fields = Vec::with_capacity(index.len());
        for (name, &i) in stored.iter().zip(&index) {
            let value = row[i].trim();
            if value.is_empty() {
                continue; // an absent value: the feature's default applies when served
            }
            if let Some(f) = typed.get(name) {
                check_type(f, value).with_context(|| format!("row {line}, column '{name}'"))?;
            }
            fields.push((name.clone(), value.to_owned()));
        }
        entities.push((k, fields));
    }

    let metrics = FeatureMetrics::register(&prometheus::Registry::new()).map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let store = Store::new(
        &StoreConfig { url: url.clone(), timeout: std::time::Duration::from_secs(10), cache_ttl: std::time::Duration::from_secs(1), cache_max_entries: 1 },
        metrics,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = ProgressBar::new(entities.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{spinner} loading entities {bar:30} {pos}/{len} ({per_sec}, eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    for chunk in entities.chunks(batch.max(1)) {
        store.write(chunk, storage).await.map_err(|e| anyhow::anyhow!(e))?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let shown = crate::config::redact_url(&url);
    let storage_name = match storage {
        Storage::Hash => "hash",
        Storage::Json => "json",
    };
    if args.output == OutputFormat::Json {
        println!(
            "{}",
            json!({"loaded": entities.len(), "store": shown, "key": pattern, "storage": storage_name, "fields": stored, "seconds": seconds})
        );
    } else {
        println!(
            "loaded {} entities into {shown} ({storage_name} per key {pattern}; fields: {}) in {seconds:.2} s",
            entities.len(),
            stored.join(", ")
        );
    }
    Ok(())
}

fn check_type(f: &Feature, value: &str) -> anyhow::Result<()> {
    if f.kind.parse_text(value).is_some() {
        Ok(())
    } else {
        let want = match f.kind {
            Kind::Float => "a finite number",
            Kind::Int => "an integer",
            Kind::Bool => "true, false, 0 or 1",
        };
        bail!("'{value}' is not {want} (feature '{}' is declared type {:?})", f.name, f.kind)
    }
}

fn read_table(file: &Path) -> anyhow::Result<Table> {
    match file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => read_csv(file),
        Some("parquet") | Some("pq") => read_parquet(file),
        _ => bail!("{}: give a .csv or .parquet file", file.display()),
    }
}

fn read_csv(file: &Path) -> anyhow::Result<Table> {
    let mut reader = csv::Reader::from_path(file).with_context(|| format!("cannot read {}", file.display()))?;
    let columns: Vec<String> = reader.headers().with_context(|| format!("{}: no header row", file.display()))?.iter().map(str::to_owned).collect();
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: row {}", file.display(), i + 2))?;
        rows.push(record.iter().map(str::to_owned).collect());
    }
    Ok(Table { columns, rows })
}

#[cfg(feature = "parquet")]
fn read_parquet(file: &Path) -> anyhow::Result<Table> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let reader = SerializedFileReader::new(f).with_context(|| format!("{} is not a Parquet file", file.display()))?;
    let columns: Vec<String> =
        reader.metadata().file_metadata().schema_descr().columns().iter().map(|c| c.name().to_owned()).collect();
    let mut rows = Vec::new();
    for row in reader.get_row_iter(None).with_context(|| format!("cannot read rows of {}", file.display()))? {
        let row = row.with_context(|| format!("{}: a row cannot be read", file.display()))?;
        rows.push(
            row.get_column_iter()
                .map(|(_, field)| match field {
                    Field::Null => String::new(),
                    Field::Str(s) => s.clone(),
                    Field::Bool(b) => b.to_string(),
                    Field::Byte(v) => v.to_string(),
                    Field::Short(v) => v.to_string(),
                    Field::Int(v) => v.to_string(),
                    Field::Long(v) => v.to_string(),
                    Field::UByte(v) => v.to_string(),
                    Field::UShort(v) => v.to_string(),
                    Field::UInt(v) => v.to_string(),
                    Field::ULong(v) => v.to_string(),
                    Field::Float(v) => v.to_string(),
                    Field::Double(v) => v.to_string(),
                    other => other.to_string(),
                })
                .collect(),
        );
    }
    Ok(Table { columns, rows })
}

#[cfg(not(feature = "parquet"))]
fn read_parquet(file: &Path) -> anyhow::Result<Table> {
    bail!("{}: this build has no Parquet support (build with --features parquet), convert it to CSV", file.display())
}
