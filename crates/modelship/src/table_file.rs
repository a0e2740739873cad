//! Tabular files, CSV or Parquet, read as column names and rows of text values: entities for
//! `features load`, held-out rows for `validate`. Each caller types the values it needs.

use std::path::Path;

use anyhow::{Context, bail};

/// A file's columns and its rows of text values (an empty string for a Parquet null).
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// Reads `file` by its extension: `.csv`, or `.parquet` / `.pq`.
pub fn read_table(file: &Path) -> anyhow::Result<Table> {
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
