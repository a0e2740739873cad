//! `modelship features load`: fills the feature store from a CSV or Parquet file of entities.
//! Values are checked against the configured feature types before anything is written, so a bad
//! file never leaves half-typed data behind; entities go in pipelined batches, with a progress bar.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use modelship_features::spec::{Feature, KeyPattern, Kind, Storage};
use modelship_features::{FeatureMetrics, Store, StoreConfig};
use serde_json::json;

use crate::cli::{FeaturesArgs, FeaturesCommand, OutputFormat, StorageArg};
use crate::table_file::read_table;

pub fn main(args: FeaturesArgs) -> ExitCode {
    crate::run_command(run(args))
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
