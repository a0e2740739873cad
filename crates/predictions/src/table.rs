//! Flat tables as Parquet files: a schema of named, typed, nullable columns, rows written in one
//! row group per file (snappy), read back row by row. Enough for the log's tables, which are
//! flat; the parquet crate's column writers do the encoding.

use std::sync::Arc;

use bytes::Bytes;
use parquet::basic::{Compression, LogicalType, Repetition, TimeUnit, Type as Physical};
use parquet::column::writer::ColumnWriter;
use parquet::data_type::ByteArray;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;
use parquet::schema::types::Type;

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 text with many values (ids, JSON): written plain, without statistics, since a
    /// dictionary or min/max of such values costs CPU for nothing.
    Text,
    /// UTF-8 text with few values (a model, a version, a role): dictionary-encoded.
    Label,
    Int,
    Float,
    Bool,
    /// Milliseconds since the epoch, a Parquet `TIMESTAMP(MILLIS, UTC)`.
    Millis,
}

/// One column of a schema.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

/// A cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Value {
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn float(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    pub fn bool(&self) -> Option<bool> {
        match self {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }
}

impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Self {
        v.map_or(Value::Null, Value::Text)
    }
}

impl From<Option<f64>> for Value {
    fn from(v: Option<f64>) -> Self {
        v.map_or(Value::Null, Value::Float)
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Value::Null, Value::Int)
    }
}

impl From<Option<bool>> for Value {
    fn from(v: Option<bool>) -> Self {
        v.map_or(Value::Null, Value::Bool)
    }
}

/// Why a table could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TableError(pub String);

impl From<parquet::errors::ParquetError> for TableError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        TableError(e.to_string())
    }
}

fn schema(name: &str, columns: &[Column]) -> Result<Type, TableError> {
    let fields = columns
        .iter()
        .map(|c| {
            let (physical, logical) = match c.kind {
                Kind::Text | Kind::Label => (Physical::BYTE_ARRAY, Some(LogicalType::String)),
                Kind::Int => (Physical::INT64, None),
                Kind::Float => (Physical::DOUBLE, None),
                Kind::Bool => (Physical::BOOLEAN, None),
                Kind::Millis => (Physical::INT64, Some(LogicalType::timestamp(true, TimeUnit::MILLIS))),
            };
            let repetition = if c.required { Repetition::REQUIRED } else { Repetition::OPTIONAL };
            Type::primitive_type_builder(c.name, physical).with_repetition(repetition).with_logical_type(logical).build().map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Type::group_type_builder(name).with_fields(fields).build()?)
}

/// Writes `rows` (each in `columns`' order) as one Parquet file with one row group.
pub fn encode(name: &str, columns: &[Column], rows: &[Vec<Value>]) -> Result<Bytes, TableError> {
    let mut writer = TableWriter::new(Vec::new(), name, columns, &[])?;
    writer.write(rows)?;
    Ok(Bytes::from(writer.finish()?))
}

/// A Parquet file written a row group at a time, with key-value metadata in its footer.
pub struct TableWriter<W: std::io::Write + Send> {
    writer: SerializedFileWriter<W>,
    columns: Vec<Column>,
}

impl<W: std::io::Write + Send> TableWriter<W> {
    pub fn new(out: W, name: &str, columns: &[Column], metadata: &[(String, String)]) -> Result<Self, TableError> {
        let metadata = metadata.iter().map(|(k, v)| parquet::file::metadata::KeyValue::new(k.clone(), v.clone())).collect::<Vec<_>>();
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by("modelship".to_owned())
            .set_key_value_metadata((!metadata.is_empty()).then_some(metadata));
        for column in columns.iter().filter(|c| c.kind == Kind::Text) {
            let path = parquet::schema::types::ColumnPath::from(column.name);
            props = props
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_statistics_enabled(path, parquet::file::properties::EnabledStatistics::None);
        }
        let props = props.build();
        let writer = SerializedFileWriter::new(out, Arc::new(schema(name, columns)?), Arc::new(props))?;
        Ok(TableWriter { writer, columns: columns.to_vec() })
    }

    /// Writes `rows` as one row group.
    pub fn write(&mut self, rows: &[Vec<Value>]) -> Result<(), TableError> {
        let columns = &self.columns;
        if let Some(bad) = rows.iter().find(|r| r.len() != columns.len()) {
            return Err(TableError(format!("a row of {} cells for {} columns", bad.len(), columns.len())));
        }
        let mut group = self.writer.next_row_group()?;
        for (index, column) in columns.iter().enumerate() {
            let Some(mut out) = group.next_column()? else {
                return Err(TableError(format!("the schema has no column {}", column.name)));
            };
            write_column(&mut out, column, index, rows)?;
            out.close()?;
        }
        group.close()?;
        Ok(())
    }

    /// Adds a key-value pair to the footer's metadata (known only once the rows are written).
    pub fn append_metadata(&mut self, key: &str, value: &str) {
        self.writer.append_key_value_metadata(parquet::file::metadata::KeyValue::new(key.to_owned(), value.to_owned()));
    }

    pub fn finish(self) -> Result<W, TableError> {
        Ok(self.writer.into_inner()?)
    }
}

fn write_column(out: &mut parquet::file::writer::SerializedColumnWriter<'_>, column: &Column, index: usize, rows: &[Vec<Value>]) -> Result<(), TableError> {
    let cells = rows.iter().map(|r| &r[index]);
    let defs: Vec<i16> = rows.iter().map(|r| i16::from(r[index] != Value::Null)).collect();
    if column.required && defs.contains(&0) {
        return Err(TableError(format!("column {} is required and a row has no value", column.name)));
    }
    let defs = (!column.required).then_some(defs.as_slice());
    match (out.untyped(), column.kind) {
        (ColumnWriter::ByteArrayColumnWriter(w), Kind::Text | Kind::Label) => {
            let values = present(column, cells, |v| match v {
                Value::Text(s) => Some(ByteArray::from(s.as_str())),
                _ => None,
            })?;
            w.write_batch(&values, defs, None)?;
        }
        (ColumnWriter::Int64ColumnWriter(w), Kind::Int | Kind::Millis) => {
            w.write_batch(&present(column, cells, Value::int)?, defs, None)?;
        }
        (ColumnWriter::DoubleColumnWriter(w), Kind::Float) => {
            let values = present(column, cells, |v| match v {
                Value::Float(f) => Some(*f),
                _ => None,
            })?;
            w.write_batch(&values, defs, None)?;
        }
        (ColumnWriter::BoolColumnWriter(w), Kind::Bool) => {
            w.write_batch(&present(column, cells, Value::bool)?, defs, None)?;
        }
        _ => return Err(TableError(format!("column {} has an unexpected physical type", column.name))),
    }
    Ok(())
}

/// The non-null cells of a column, each as `pick` reads it; a cell `pick` cannot read is a value
/// of another type.
fn present<'a, T>(column: &Column, cells: impl Iterator<Item = &'a Value>, pick: impl Fn(&Value) -> Option<T>) -> Result<Vec<T>, TableError> {
    cells
        .filter(|v| **v != Value::Null)
        .map(|v| pick(v).ok_or_else(|| TableError(format!("column {} holds a value of another type", column.name))))
        .collect()
}

/// Reads a Parquet file's rows as cells in `columns`' order, by column name: a column the file
/// lacks reads as nulls (files written before it was added), so a required one is an error.
pub fn decode(bytes: Bytes, columns: &[Column]) -> Result<Vec<Vec<Value>>, TableError> {
    let reader = SerializedFileReader::new(bytes)?;
    let names: Vec<String> = reader.metadata().file_metadata().schema_descr().columns().iter().map(|c| c.name().to_owned()).collect();
    let positions: Vec<Option<usize>> = columns.iter().map(|c| names.iter().position(|n| n == c.name)).collect();
    if let Some(missing) = columns.iter().zip(&positions).find(|(c, p)| c.required && p.is_none()) {
        return Err(TableError(format!("the file has no column {}", missing.0.name)));
    }
    let mut rows = Vec::new();
    for row in reader.get_row_iter(None)? {
        let row = row?;
        let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
        rows.push(
            positions
                .iter()
                .map(|p| match p.and_then(|i| fields.get(i)) {
                    None | Some(Field::Null) => Value::Null,
                    Some(Field::Str(s)) => Value::Text(s.clone()),
                    Some(Field::Long(v) | Field::TimestampMillis(v)) => Value::Int(*v),
                    Some(Field::Int(v)) => Value::Int(i64::from(*v)),
                    Some(Field::Double(v)) => Value::Float(*v),
                    Some(Field::Float(v)) => Value::Float(f64::from(*v)),
                    Some(Field::Bool(v)) => Value::Bool(*v),
                    Some(other) => Value::Text(other.to_string()),
                })
                .collect(),
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: [Column; 5] = [
        Column { name: "id", kind: Kind::Text, required: true },
        Column { name: "at", kind: Kind::Millis, required: true },
        Column { name: "score", kind: Kind::Float, required: false },
        Column { name: "n", kind: Kind::Int, required: false },
        Column { name: "ok", kind: Kind::Bool, required: false },
    ];

    #[test]
    fn rows_come_back_as_written_nulls_included() {
        let rows = vec![
            vec![Value::Text("a".into()), Value::Int(1_700_000_000_000), Value::Float(0.25), Value::Int(3), Value::Bool(true)],
            vec![Value::Text("b".into()), Value::Int(1_700_000_000_001), Value::Null, Value::Null, Value::Null],
        ];
        let bytes = encode("t", &COLUMNS, &rows).unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        assert_eq!(decode(bytes, &COLUMNS).unwrap(), rows);
    }

    #[test]
    fn a_column_added_later_reads_as_null_in_older_files() {
        let rows = vec![vec![Value::Text("a".into()), Value::Int(5)]];
        let bytes = encode("t", &COLUMNS[..2], &rows).unwrap();
        let back = decode(bytes, &COLUMNS).unwrap();
        assert_eq!(back, vec![vec![Value::Text("a".into()), Value::Int(5), Value::Null, Value::Null, Value::Null]]);
    }

    #[test]
    fn a_missing_required_value_or_a_wrong_type_is_refused() {
        let null_id = vec![vec![Value::Null, Value::Int(1), Value::Null, Value::Null, Value::Null]];
        assert!(encode("t", &COLUMNS, &null_id).unwrap_err().0.contains("id is required"));
        let text_score = vec![vec![Value::Text("a".into()), Value::Int(1), Value::Text("x".into()), Value::Null, Value::Null]];
        assert!(encode("t", &COLUMNS, &text_score).unwrap_err().0.contains("score"));
        assert!(decode(Bytes::from_static(b"not parquet"), &COLUMNS).is_err());
    }
}
