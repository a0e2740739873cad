//! Where the log's Parquet files live: a local directory or an S3-compatible bucket (the
//! registry's object store), one directory per table, partitioned the way DuckDB, pyarrow and
//! Spark read as columns:
//!
//! ```text
//! <root>/predictions/model=<name>/date=<YYYY-MM-DD>/<millis>-<replica>-<n>.parquet
//! <root>/feedback/date=<YYYY-MM-DD>/<millis>-<replica>-<n>.parquet
//! <root>/rollbacks/model=<name>/<version>-<revision>.parquet   (one per mark: idempotent)
//! <root>/audit/<millis>-<n>.parquet
//! ```
//!
//! Names from users (models, versions, replicas) become path segments only when they are plain
//! (letters, digits, `.`, `_`, `-`, not starting with a dot); any other is hex-encoded (`x-…`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use object_store::path::Path as StorePath;

use crate::record::{Audit, Feedback, Mark, Prediction, Table};
use crate::table::{self, Value};

pub use crate::error::StoreError;

/// Where the log is: files (a directory or a bucket) or a PostgreSQL database, by URL.
#[derive(Clone)]
pub enum LogStore {
    Files(FileStore),
    #[cfg(feature = "postgres")]
    Postgres(Arc<crate::postgres::PgStore>),
}

impl LogStore {
    /// Opens `url`: `postgres://` (with the `postgres` feature), `s3://BUCKET[/PREFIX]`,
    /// `file:///DIR` or a directory.
    pub fn open(url: &str) -> Result<LogStore, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            return Ok(LogStore::Postgres(Arc::new(crate::postgres::PgStore::new(url)?)));
            #[cfg(not(feature = "postgres"))]
            return Err(StoreError::Config("prediction log: this build has no PostgreSQL support (build with --features postgres)".to_owned()));
        }
        FileStore::open(url).map(LogStore::Files)
    }

    /// Where it is, for messages (never a password).
    pub fn location(&self) -> &str {
        match self {
            LogStore::Files(f) => &f.location,
            #[cfg(feature = "postgres")]
            LogStore::Postgres(p) => &p.location,
        }
    }

    /// Writes `rows` of `table` (predictions of `model`, or feedback) as one batch.
    pub async fn append(&self, table: Table, model: Option<&str>, time: i64, rows: &[Vec<Value>], replica: Option<&str>) -> Result<(), StoreError> {
        match self {
            LogStore::Files(f) => f.append(table, model, time, rows, replica).await.map(drop),
            #[cfg(feature = "postgres")]
            LogStore::Postgres(p) => p.append(table, rows).await,
        }
    }

    pub async fn put_mark(&self, mark: &Mark) -> Result<(), StoreError> {
        match self {
            LogStore::Files(f) => f.put_mark(mark).await,
            #[cfg(feature = "postgres")]
            LogStore::Postgres(p) => p.put_mark(mark).await,
        }
    }

    pub async fn put_audit(&self, audit: &Audit) -> Result<(), StoreError> {
        match self {
            LogStore::Files(f) => f.put_audit(audit).await,
            #[cfg(feature = "postgres")]
            LogStore::Postgres(p) => p.put_audit(audit).await,
        }
    }

    /// Every stored prediction (of `model`, when given), oldest first within each batch.
    pub async fn predictions(&self, model: Option<&str>) -> Result<Vec<Prediction>, StoreError> {
        match self {
            LogStore::Files(f) => Ok(f.predictions(model).await?.into_iter().flat_map(|f| f.rows).collect()),
            #[cfg(feature = "postgres")]
            LogStore::Postgres(p) => p.predictions(model, 0).await,
        }
    }

    /// The newest `limit` of `model`'s predictions made at `since` (ms) or later, oldest first.
    pub async fn predictions_since(&self, model: &str, since: i64, limit: usize) -> Result<Vec<Prediction>, StoreError> {
        match self {
            LogStore::Files(f) => f.predictions_since(model, since, limit).await,
            #[cfg(feature = "postgres")]
            LogStore::Postgres(p) => p.newest(model, since, limit).await,
        }
    }

    pub async fn feedback(&self) -> Result<Vec<Feedback>, StoreError> {
        self.feedback_since(i64::MIN / 2).await
    }

    pub async fn feedback_since(&self, since: i64) -> Result<Vec<Feedback>, StoreError> {
        match self {
            LogStore::Files(f) => f.feedback_since(since).await,
            #[cfg(feature = "postgres")]
            LogStore::Postgres(p) => p.feedback(since.max(0)).await,
        }
    }

    pub async fn marks(&self, model: Option<&str>) -> Result<Vec<Mark>, StoreError> {
        match self {
            LogStore::Files(f) => f.marks(model).await,
            #[cfg(feature = "postgres")]
            LogStore::Postgres(p) => p.marks(model).await,
        }
    }

    pub async fn audit(&self) -> Result<Vec<Audit>, StoreError> {
        match self {
            LogStore::Files(f) => f.audit().await,
            #[cfg(feature = "postgres")]
            LogStore::Postgres(p) => p.audit().await,
        }
    }

    /// Removes the predictions a rollback marked (of `model`, when given); returns how many.
    pub async fn purge_rolled_back(&self, model: Option<&str>) -> Result<u64, StoreError> {
        match self {
            LogStore::Files(f) => f.purge_rolled_back(model).await,
            #[cfg(feature = "postgres")]
            LogStore::Postgres(p) => p.purge_rolled_back(model).await,
        }
    }
}

/// The log's files, in a directory or a bucket.
#[derive(Clone)]
pub struct FileStore {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    /// Where it is, as the user gave it, for messages.
    pub location: String,
    /// Files written by this process, so that two in the same millisecond never share a name.
    written: Arc<AtomicU64>,
    /// A random part of each file name: two processes (replicas) never share one either.
    nonce: String,
}

/// One file of a table, with its rows.
pub struct FileRows<T> {
    pub key: String,
    pub rows: Vec<T>,
}

impl FileStore {
    /// Opens `url`: `s3://bucket[/prefix]` (with the `s3` feature; credentials and endpoint from
    /// the standard AWS environment variables), `file:///dir` or a directory path (created).
    pub fn open(url: &str) -> Result<FileStore, StoreError> {
        if url.starts_with("s3://") {
            return Self::s3(url);
        }
        if let Some((scheme, _)) = url.split_once("://")
            && scheme != "file"
        {
            // The scheme only: a mistyped database URL may hold a password.
            return Err(StoreError::Config(format!("prediction log: '{scheme}://' is not a store; use a directory, file:///DIR, s3://BUCKET/PREFIX or postgres://USER@HOST/DB")));
        }
        let dir = Path::new(url.strip_prefix("file://").unwrap_or(url));
        if dir.as_os_str().is_empty() {
            return Err(StoreError::Config("the prediction log's directory is empty; give one".to_owned()));
        }
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Config(format!("cannot create the prediction log's directory {}: {e}", dir.display())))?;
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self::new(Arc::new(local), StorePath::default(), dir.display().to_string()))
    }

    #[cfg(feature = "s3")]
    fn s3(url: &str) -> Result<FileStore, StoreError> {
        let (store, prefix) = modelship_registry::artifacts::s3_bucket(url).map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(Self::new(store, prefix, url.to_owned()))
    }

    #[cfg(not(feature = "s3"))]
    fn s3(url: &str) -> Result<FileStore, StoreError> {
        Err(StoreError::Config(format!("prediction log '{url}': this build has no S3 support (build with --features s3); give a directory")))
    }

    /// A log in `store` under `prefix`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: StorePath, location: String) -> FileStore {
        let nonce = format!("{:08x}", fastrand::u32(..));
        FileStore { store, prefix, location, written: Arc::default(), nonce }
    }

    fn key(&self, parts: &[&str]) -> StorePath {
        let mut path = self.prefix.clone();
        for part in parts {
            path = path.clone().join(*part);
        }
        path
    }

    fn file_name(&self, time: i64, replica: Option<&str>) -> String {
        let n = self.written.fetch_add(1, Ordering::Relaxed);
        format!("{time:013}-{}-{}{n:06}.parquet", segment(replica.unwrap_or("server")), self.nonce)
    }

    /// Writes `rows` as one new file of `table`, partitioned by `model` (predictions) and by the
    /// day of `time`; returns its key.
    pub async fn append(&self, table: Table, model: Option<&str>, time: i64, rows: &[Vec<Value>], replica: Option<&str>) -> Result<String, StoreError> {
        let bytes = table::encode(table.dir(), table.columns(), rows)?;
        let date_part = format!("date={}", civil_date(time));
        let name = self.file_name(time, replica);
        let key = match model {
            Some(model) => self.key(&[table.dir(), &format!("model={}", segment(model)), &date_part, &name]),
            None => self.key(&[table.dir(), &date_part, &name]),
        };
        self.store.put(&key, bytes.into()).await?;
        Ok(key.to_string())
    }

    /// Writes a rollback's mark; writing the same mark again replaces it with itself.
    pub async fn put_mark(&self, mark: &Mark) -> Result<(), StoreError> {
        let bytes = table::encode(Table::Rollbacks.dir(), Table::Rollbacks.columns(), &[mark.row()])?;
        let name = format!("{}-{}.parquet", segment(&mark.version), mark.to_revision);
        let key = self.key(&[Table::Rollbacks.dir(), &format!("model={}", segment(&mark.model)), &name]);
        self.store.put(&key, bytes.into()).await?;
        Ok(())
    }

    /// Records a change to stored predictions in the audit table.
    pub async fn put_audit(&self, audit: &Audit) -> Result<(), StoreError> {
        let bytes = table::encode(Table::Audit.dir(), Table::Audit.columns(), &[audit.row()])?;
        let key = self.key(&[Table::Audit.dir(), &self.file_name(audit.time, None)]);
        self.store.put(&key, bytes.into()).await?;
        Ok(())
    }

    /// The keys of `table`'s files (of `model` only, when given), in name order (for the tables
    /// partitioned by time, oldest first within a day).
    pub async fn files(&self, table: Table, model: Option<&str>) -> Result<Vec<StorePath>, StoreError> {
        let dir = match model {
            Some(m) if matches!(table, Table::Predictions | Table::Rollbacks) => self.key(&[table.dir(), &format!("model={}", segment(m))]),
            _ => self.key(&[table.dir()]),
        };
        let mut keys: Vec<StorePath> = self.store.list(Some(&dir)).map_ok(|meta| meta.location).try_collect().await?;
        keys.retain(|k| k.extension() == Some("parquet"));
        keys.sort();
        Ok(keys)
    }

    async fn rows(&self, key: &StorePath, table: Table) -> Result<Vec<Vec<Value>>, StoreError> {
        let bytes: Bytes = self.store.get(key).await?.bytes().await?;
        table::decode(bytes, table.columns()).map_err(|e| StoreError::Io(format!("{key}: {}", e.0)))
    }

    /// Every stored prediction of `model` (or of every model), file by file.
    pub async fn predictions(&self, model: Option<&str>) -> Result<Vec<FileRows<Prediction>>, StoreError> {
        let mut out = Vec::new();
        for key in self.files(Table::Predictions, model).await? {
            let rows = self.rows(&key, Table::Predictions).await?.iter().map(|r| Prediction::from_row(r)).collect();
            out.push(FileRows { key: key.to_string(), rows });
        }
        Ok(out)
    }

    /// `model`'s predictions made at `since` (ms) or later, oldest first. Files are skipped by
    /// their name (the time of their first row) when they began more than an hour earlier: no
    /// file stays open longer (`prediction_log.roll_seconds` is at most 3600).
    /// Read newest file first, until `limit` are found.
    pub async fn predictions_since(&self, model: &str, since: i64, limit: usize) -> Result<Vec<Prediction>, StoreError> {
        let mut out = Vec::new();
        for key in self.files(Table::Predictions, Some(model)).await?.into_iter().rev().filter(|k| began(k) >= since - MAX_ROLL_MS) {
            if out.len() >= limit {
                break;
            }
            out.extend(self.rows(&key, Table::Predictions).await?.iter().map(|r| Prediction::from_row(r)).filter(|p| p.time >= since));
        }
        out.sort_by_key(|p| p.time);
        let extra = out.len().saturating_sub(limit);
        out.drain(..extra);
        Ok(out)
    }

    /// Feedback posted at `since` (ms) or later.
    pub async fn feedback_since(&self, since: i64) -> Result<Vec<Feedback>, StoreError> {
        let mut out = Vec::new();
        for key in self.files(Table::Feedback, None).await?.into_iter().filter(|k| began(k) >= since - MAX_ROLL_MS) {
            out.extend(self.rows(&key, Table::Feedback).await?.iter().map(|r| Feedback::from_row(r)).filter(|f| f.time >= since));
        }
        Ok(out)
    }

    pub async fn marks(&self, model: Option<&str>) -> Result<Vec<Mark>, StoreError> {
        let mut out = Vec::new();
        for key in self.files(Table::Rollbacks, model).await? {
            out.extend(self.rows(&key, Table::Rollbacks).await?.iter().map(|r| Mark::from_row(r)));
        }
        Ok(out)
    }

    pub async fn audit(&self) -> Result<Vec<Audit>, StoreError> {
        let mut out = Vec::new();
        for key in self.files(Table::Audit, None).await? {
            out.extend(self.rows(&key, Table::Audit).await?.iter().map(|r| Audit::from_row(r)));
        }
        out.sort_by_key(|a| a.time);
        Ok(out)
    }

    /// Removes the predictions a rollback marked (of `model`, when given), file by file; returns
    /// how many went.
    pub async fn purge_rolled_back(&self, model: Option<&str>) -> Result<u64, StoreError> {
        let marks = self.marks(model).await?;
        let mut removed = 0u64;
        for file in self.predictions(model).await? {
            let keep: Vec<Prediction> = file.rows.iter().filter(|p| !marks.iter().any(|m| m.covers(p))).cloned().collect();
            if keep.len() < file.rows.len() {
                removed += (file.rows.len() - keep.len()) as u64;
                self.rewrite(&file.key, &keep).await?;
            }
        }
        Ok(removed)
    }

    /// Replaces the file at `key` with `keep` (its rows less those removed), or deletes it when
    /// none are kept. The new file is written before the old one goes: a crash between the two
    /// leaves rows twice, never lost.
    pub async fn rewrite(&self, key: &str, keep: &[Prediction]) -> Result<(), StoreError> {
        let old = StorePath::from(key);
        if let Some(first) = keep.first() {
            let rows: Vec<Vec<Value>> = keep.iter().map(Prediction::row).collect();
            self.append(Table::Predictions, Some(&first.model), first.time, &rows, first.replica.as_deref()).await?;
        }
        self.store.delete(&old).await?;
        Ok(())
    }
}

/// The longest a file stays open: its rows are at most this much younger than its name says.
pub const MAX_ROLL_MS: i64 = 3_600_000;

/// The time of a file's first row, from its name (`<millis>-...parquet`); 0 when unreadable.
fn began(key: &StorePath) -> i64 {
    key.filename().and_then(|n| n.split('-').next()).and_then(|t| t.parse().ok()).unwrap_or(0)
}

/// `name` as one path segment: itself when plain, else `x-` and its hex.
pub fn segment(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.starts_with("x-")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain { name.to_owned() } else { format!("x-{}", hex::encode(name.as_bytes())) }
}

/// The UTC date of `millis` since the epoch, `YYYY-MM-DD` (the civil-from-days algorithm).
pub fn civil_date(millis: i64) -> String {
    let days = millis.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_days() {
        for (millis, date) in [(0, "1970-01-01"), (86_399_999, "1970-01-01"), (951_782_400_000, "2000-02-29"), (1_796_601_600_000, "2026-12-07"), (-1, "1969-12-31")] {
            assert_eq!(civil_date(millis), date, "{millis}");
        }
    }

    #[test]
    fn only_plain_names_become_path_segments() {
        assert_eq!(segment("fraud-v2.1_x"), "fraud-v2.1_x");
        for hostile in ["../etc", "a/b", "", ".hidden", "x-41", "ü", "a b"] {
            let s = segment(hostile);
            assert!(s.starts_with("x-") && s[2..].chars().all(|c| c.is_ascii_hexdigit()), "{hostile:?} -> {s}");
        }
    }

    #[tokio::test]
    async fn files_are_written_partitioned_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().to_str().unwrap()).unwrap();
        let p = |id: &str, model: &str| crate::record::sample(id, model, 1_796_601_600_000);
        let key = store.append(Table::Predictions, Some("fraud"), 1_796_601_600_000, &[p("a", "fraud").row(), p("b", "fraud").row()], Some("r0")).await.unwrap();
        assert!(key.starts_with("predictions/model=fraud/date=2026-12-07/1796601600000-r0-"), "{key}");
        store.append(Table::Predictions, Some("../x"), 1_796_601_600_000, &[p("c", "../x").row()], None).await.unwrap();
        let all = store.predictions(None).await.unwrap();
        assert_eq!(all.iter().map(|f| f.rows.len()).sum::<usize>(), 3);
        let fraud = store.predictions(Some("fraud")).await.unwrap();
        assert_eq!(fraud.iter().flat_map(|f| f.rows.iter().map(|r| r.request_id.clone())).collect::<Vec<_>>(), ["a", "b"]);
        // Every file is under the directory, none escaped it.
        assert!(dir.path().join("predictions/model=x-2e2e2f78").is_dir());
        store.rewrite(&fraud[0].key, &fraud[0].rows[1..]).await.unwrap();
        let fraud = store.predictions(Some("fraud")).await.unwrap();
        assert_eq!(fraud.iter().flat_map(|f| f.rows.iter().map(|r| r.request_id.clone())).collect::<Vec<_>>(), ["b"]);
        assert!(FileStore::open("redis://db/x").is_err());
    }
}
