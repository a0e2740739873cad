//! Versions, aliases and alias history, in SQLite.
//!
//! Every change is one `BEGIN IMMEDIATE` transaction, so a version becomes visible all at once
//! or not at all, and concurrent writers (threads or processes) serialize on the database lock.
//! WAL mode lets readers (a server following an alias) proceed while a writer works.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::RegistryError;
use crate::onnx_meta::OnnxMetadata;

/// One immutable model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub name: String,
    pub version: String,
    /// Lowercase hex SHA-256 of the artifact.
    pub digest: String,
    pub size: u64,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    pub description: Option<String>,
    /// Where the artifact came from (a file path, `mlflow:...`).
    pub source: Option<String>,
    pub metrics: BTreeMap<String, f64>,
    pub labels: BTreeMap<String, String>,
    pub onnx: OnnxMetadata,
    /// Aliases pointing at this version now (filled on read).
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// The label that names a version's warm-up sample: `sha256:<hex>` of a V2 inference request
/// stored beside the artifacts (`modelship models push --warmup-sample FILE`), which a server
/// sends the version before it serves it.
pub const WARMUP_SAMPLE_LABEL: &str = "warmup_sample";

/// The label that names the file a version was converted from (a pickle, an XGBoost or LightGBM
/// model): `sha256:<hex>` of the original, kept beside the artifacts so the version can be traced
/// back and converted again.
pub const SOURCE_DIGEST_LABEL: &str = "source_digest";

/// The label `modelship validate --record` leaves on a version: `pass` or `fail`.
pub const VALIDATE_LABEL: &str = "validate";

impl VersionRecord {
    /// Whether `modelship validate --record` judged this version failed (`validate=fail`): it is
    /// then aliased, rolled out or made stable only when asked with `--force`.
    pub fn failed_validation(&self) -> bool {
        self.labels.get(VALIDATE_LABEL).is_some_and(|v| v == "fail")
    }

    /// The digest (hex) of this version's warm-up sample, when its label names one.
    pub fn warmup_sample_digest(&self) -> Option<&str> {
        self.digest_label(WARMUP_SAMPLE_LABEL)
    }

    /// The digest (hex) of the file this version was converted from, when its label names one.
    pub fn source_digest(&self) -> Option<&str> {
        self.digest_label(SOURCE_DIGEST_LABEL)
    }

    fn digest_label(&self, label: &str) -> Option<&str> {
        let value = self.labels.get(label)?;
        let hex = value.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(hex)
    }

    /// Every stored file this version needs: its artifact, and its warm-up sample if any.
    pub fn referenced_digests(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.digest.as_str()).chain(self.warmup_sample_digest()).chain(self.source_digest())
    }
}

/// One recorded move of an alias. `version` is `None` when the alias was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasMove {
    pub id: i64,
    pub name: String,
    pub alias: String,
    pub version: Option<String>,
    pub previous: Option<String>,
    pub at_ms: i64,
    pub actor: String,
}

/// What an insert did.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    Created,
    /// The same name, version and bytes were already there: nothing changed.
    Unchanged(Box<VersionRecord>),
}

pub struct Catalog {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Why it was opened read-only (the registry is on a read-only mount, or not ours to
    /// write): reads work, every change is refused up front with this and what to do.
    read_only: Option<String>,
}

/// `path` as the path part of an SQLite `file:` URI: `%`, `?` and `#` would end or change it.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX IF NOT EXISTS versions_digest ON versions (digest);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES versions (name, version)
);
CREATE TABLE IF NOT EXISTS alias_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version TEXT,
    previous TEXT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL
);
";

impl Catalog {
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let db_err = |e: rusqlite::Error| RegistryError::Database { path: path.display().to_string(), reason: e.to_string() };
        let conn = Connection::open(path).map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(db_err)?;
        // Switching a new database to WAL takes an exclusive lock and does not wait on the busy
        // handler: two processes creating the registry at once retry here instead of failing.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match Self::prepare(&conn) {
                Ok(()) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(db_err(e)),
            }
        }
        Ok(Catalog { conn: Mutex::new(conn), path: path.to_path_buf(), read_only: None })
    }

    /// Opens an existing catalog for reading only: no file is created or changed, no schema or
    /// journal mode is set. A WAL database needs its `-shm` index, which a reader creates when it
    /// is missing; where it cannot (a read-only mount of a registry no writer has open), the file
    /// is read as immutable, which is what it is there.
    pub fn open_read_only(path: &Path) -> Result<Self, RegistryError> {
        let db_err = |e: rusqlite::Error| RegistryError::Database { path: path.display().to_string(), reason: e.to_string() };
        if !path.is_file() {
            return Err(RegistryError::Database { path: path.display().to_string(), reason: "no registry database here".to_owned() });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let uri = format!("file:{}?mode=ro", uri_path(path));
        let readable = |conn: Connection| -> rusqlite::Result<Connection> {
            conn.busy_timeout(Duration::from_secs(30))?;
            conn.query_row("SELECT COUNT(*) FROM versions", [], |r| r.get::<_, i64>(0))?;
            Ok(conn)
        };
        let conn = Connection::open_with_flags(&uri, flags)
            .and_then(readable)
            .or_else(|_| Connection::open_with_flags(format!("{uri}&immutable=1"), flags).and_then(readable))
            .map_err(db_err)?;
        Ok(Catalog {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            read_only: Some("a read-only mount, or a directory this user cannot write".to_owned()),
        })
    }

    /// Says why a read-only catalog is one (the error that opening it for writing met).
    pub fn because(mut self, why: String) -> Self {
        if self.read_only.is_some() {
            self.read_only = Some(why);
        }
        self
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only.is_some()
    }

    /// Refuses a change to a catalog opened read-only, saying why and what to do.
    pub fn writable(&self) -> Result<(), RegistryError> {
        if let Some(why) = &self.read_only {
            return Err(RegistryError::Database {
                path: self.path.display().to_string(),
                reason: format!(
                    "the registry is read-only here ({why}); ls, show, pull, history and serve work, but a change (push, alias, rm, import, gc) needs a writable registry directory"
                ),
            });
        }
        Ok(())
    }

    fn prepare(conn: &Connection) -> rusqlite::Result<()> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)
    }

    fn err(&self, e: rusqlite::Error) -> RegistryError {
        RegistryError::Database { path: self.path.display().to_string(), reason: e.to_string() }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, RegistryError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|e| self.err(e))
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>, RegistryError> {
        self.with(|c| c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional())
    }

    /// Records `value` for `key` unless one is already there; returns the value in force.
    pub fn setting_or_insert(&self, key: &str, value: &str) -> Result<String, RegistryError> {
        self.writable()?;
        self.with(|c| {
            c.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?1, ?2)", params![key, value])?;
            c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0))
        })
    }

    /// Adds a version, or finds the identical one already there, or refuses a conflicting one.
    pub fn insert(&self, record: &VersionRecord) -> Result<Inserted, RegistryError> {
        self.writable()?;
        let json = serde_json::to_string(record).map_err(|e| RegistryError::Store(e.to_string()))?;
        let existing = self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing: Option<(String, String)> = tx
                .query_row(
                    "SELECT digest, record FROM versions WHERE name = ?1 AND version = ?2",
                    params![record.name, record.version],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if existing.is_none() {
                let seq: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM versions", [], |r| r.get(0))?;
                tx.execute(
                    "INSERT INTO versions (name, version, digest, size, created_ms, seq, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![record.name, record.version, record.digest, record.size as i64, record.created_ms, seq, json],
                )?;
            }
            tx.commit()?;
            Ok(existing)
        })?;
        match existing {
            None => Ok(Inserted::Created),
            Some((digest, _)) if digest != record.digest => Err(RegistryError::VersionConflict {
                name: record.name.clone(),
                version: record.version.clone(),
                existing: digest,
                pushed: record.digest.clone(),
            }),
            Some((_, json)) => Ok(Inserted::Unchanged(Box::new(self.decode(&json)?))),
        }
    }

    fn decode(&self, json: &str) -> Result<VersionRecord, RegistryError> {
        serde_json::from_str(json).map_err(|e| RegistryError::Database {
            path: self.path.display().to_string(),
            reason: format!("unreadable version record: {e}"),
        })
    }

    fn with_aliases(&self, mut records: Vec<VersionRecord>) -> Result<Vec<VersionRecord>, RegistryError> {
        let aliases: Vec<(String, String, String)> = self.with(|c| {
            let mut stmt = c.prepare("SELECT name, version, alias FROM aliases ORDER BY alias")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })?;
        for r in &mut records {
            r.aliases =
                aliases.iter().filter(|(n, v, _)| *n == r.name && *v == r.version).map(|(_, _, a)| a.clone()).collect();
        }
        Ok(records)
    }

    fn query(&self, sql: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<VersionRecord>, RegistryError> {
        let rows: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare(sql)?;
            let rows = stmt.query_map(args, |r| r.get(0))?;
            rows.collect()
        })?;
        let records = rows.iter().map(|j| self.decode(j)).collect::<Result<Vec<_>, _>>()?;
        self.with_aliases(records)
    }

    /// Every version (of `name`, when given), oldest first.
    pub fn list(&self, name: Option<&str>) -> Result<Vec<VersionRecord>, RegistryError> {
        match name {
            Some(n) => self.query("SELECT record FROM versions WHERE name = ?1 ORDER BY seq", &[&n]),
            None => self.query("SELECT record FROM versions ORDER BY name, seq", &[]),
        }
    }

    pub fn get(&self, name: &str, version: &str) -> Result<Option<VersionRecord>, RegistryError> {
        Ok(self.query("SELECT record FROM versions WHERE name = ?1 AND version = ?2", &[&name, &version])?.pop())
    }

    pub fn latest(&self, name: &str) -> Result<Option<VersionRecord>, RegistryError> {
        Ok(self.query("SELECT record FROM versions WHERE name = ?1 ORDER BY seq DESC LIMIT 1", &[&name])?.pop())
    }

    pub fn has_model(&self, name: &str) -> Result<bool, RegistryError> {
        self.with(|c| c.query_row("SELECT EXISTS(SELECT 1 FROM versions WHERE name = ?1)", [name], |r| r.get(0)))
    }

    pub fn alias_target(&self, name: &str, alias: &str) -> Result<Option<String>, RegistryError> {
        self.with(|c| {
            c.query_row("SELECT version FROM aliases WHERE name = ?1 AND alias = ?2", params![name, alias], |r| r.get(0))
                .optional()
        })
    }

    /// Points `alias` at `version` and records the move. Moving an alias to where it already points
    /// records nothing and returns `None`.
    /// Points `alias` at `version`; with `expected`, only if it names that version now (or
    /// `version` already), atomically.
    pub fn set_alias(&self, name: &str, alias: &str, version: &str, expected: Option<&str>, actor: &str) -> Result<Option<AliasMove>, RegistryError> {
        self.writable()?;
        let at_ms = now_ms();
        // The outer error is the database's; the inner one the refusal of a stale expectation.
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let previous: Option<String> = tx
                .query_row("SELECT version FROM aliases WHERE name = ?1 AND alias = ?2", params![name, alias], |r| r.get(0))
                .optional()?;
            if previous.as_deref() == Some(version) {
                tx.commit()?;
                return Ok(Ok(None));
            }
            if let Some(expected) = expected
                && previous.as_deref() != Some(expected)
            {
                return Ok(Err(RegistryError::AliasMoved {
                    name: name.to_owned(),
                    alias: alias.to_owned(),
                    expected: expected.to_owned(),
                    now: previous,
                }));
            }
            tx.execute(
                "INSERT INTO aliases (name, alias, version) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version",
                params![name, alias, version],
            )?;
            tx.execute(
                "INSERT INTO alias_history (name, alias, version, previous, at_ms, actor) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![name, alias, version, previous, at_ms, actor],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok(Ok(Some(AliasMove {
                id,
                name: name.to_owned(),
                alias: alias.to_owned(),
                version: Some(version.to_owned()),
                previous,
                at_ms,
                actor: actor.to_owned(),
            })))
        })?
    }

    pub fn history(&self, name: &str) -> Result<Vec<AliasMove>, RegistryError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, alias, version, previous, at_ms, actor FROM alias_history WHERE name = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([name], |r| {
                Ok(AliasMove {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    alias: r.get(2)?,
                    version: r.get(3)?,
                    previous: r.get(4)?,
                    at_ms: r.get(5)?,
                    actor: r.get(6)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Adds `metrics` and `labels` to a version's record (a key already there takes the new
    /// value; none is removed), in one transaction; returns the record as it now is. The artifact,
    /// digest and signature never change: a version's results are added to it, not its contents.
    pub fn annotate(
        &self,
        name: &str,
        version: &str,
        metrics: &BTreeMap<String, f64>,
        labels: &BTreeMap<String, String>,
    ) -> Result<VersionRecord, RegistryError> {
        self.writable()?;
        enum Outcome {
            Missing,
            Unreadable(String),
            Updated(String),
        }
        let outcome = self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let json: Option<String> = tx
                .query_row("SELECT record FROM versions WHERE name = ?1 AND version = ?2", params![name, version], |r| r.get(0))
                .optional()?;
            let Some(json) = json else {
                return Ok(Outcome::Missing);
            };
            let Ok(mut record) = serde_json::from_str::<VersionRecord>(&json) else {
                return Ok(Outcome::Unreadable(json));
            };
            record.metrics.extend(metrics.iter().map(|(k, v)| (k.clone(), *v)));
            record.labels.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            let updated = serde_json::to_string(&record).unwrap_or(json);
            tx.execute("UPDATE versions SET record = ?3 WHERE name = ?1 AND version = ?2", params![name, version, updated])?;
            tx.commit()?;
            Ok(Outcome::Updated(updated))
        })?;
        let json = match outcome {
            Outcome::Missing => return Err(RegistryError::UnknownVersion { name: name.to_owned(), version: version.to_owned() }),
            Outcome::Unreadable(json) | Outcome::Updated(json) => json,
        };
        Ok(self.with_aliases(vec![self.decode(&json)?])?.remove(0))
    }

    /// Runs `sweep` with the digests every version references, while holding the database's
    /// write lock: no version can be committed meanwhile, so an artifact `sweep` finds
    /// unreferenced stays so until it returns (`models gc --unreferenced`).
    pub fn with_referenced<T>(
        &self,
        sweep: impl FnOnce(&std::collections::HashSet<String>) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        self.writable()?;
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.err(e))?;
        let referenced = {
            // The artifacts and the warm-up samples the versions' labels name.
            let mut stmt = tx.prepare("SELECT digest, record FROM versions").map_err(|e| self.err(e))?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(|e| self.err(e))?;
            let mut referenced = std::collections::HashSet::new();
            for row in rows {
                let (digest, record) = row.map_err(|e| self.err(e))?;
                if let Ok(record) = serde_json::from_str::<VersionRecord>(&record) {
                    referenced.extend(record.warmup_sample_digest().map(str::to_owned));
                    referenced.extend(record.source_digest().map(str::to_owned));
                }
                referenced.insert(digest);
            }
            referenced
        };
        let result = sweep(&referenced);
        // Nothing was written: ending the transaction only releases the lock.
        tx.rollback().map_err(|e| self.err(e))?;
        result
    }

    /// Removes a version. Refused while aliases point at it unless `force`, which removes those
    /// aliases too (recorded in the history). Returns the digest when no other version uses it,
    /// so the caller can delete the artifact.
    pub fn remove(&self, name: &str, version: &str, force: bool, actor: &str) -> Result<Option<String>, RegistryError> {
        self.writable()?;
        let at_ms = now_ms();
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let digest: Option<String> = tx
                .query_row("SELECT digest FROM versions WHERE name = ?1 AND version = ?2", params![name, version], |r| r.get(0))
                .optional()?;
            let Some(digest) = digest else {
                return Ok(Err(RegistryError::UnknownVersion { name: name.to_owned(), version: version.to_owned() }));
            };
            let aliases: Vec<String> = {
                let mut stmt = tx.prepare("SELECT alias FROM aliases WHERE name = ?1 AND version = ?2 ORDER BY alias")?;
                let rows = stmt.query_map(params![name, version], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            if !aliases.is_empty() && !force {
                return Ok(Err(RegistryError::AliasedVersion { name: name.to_owned(), version: version.to_owned(), aliases }));
            }
            for alias in &aliases {
                tx.execute("DELETE FROM aliases WHERE name = ?1 AND alias = ?2", params![name, alias])?;
                tx.execute(
                    "INSERT INTO alias_history (name, alias, version, previous, at_ms, actor) VALUES (?1, ?2, NULL, ?3, ?4, ?5)",
                    params![name, alias, version, at_ms, actor],
                )?;
            }
            tx.execute("DELETE FROM versions WHERE name = ?1 AND version = ?2", params![name, version])?;
            let still_used: bool =
                tx.query_row("SELECT EXISTS(SELECT 1 FROM versions WHERE digest = ?1)", [&digest], |r| r.get(0))?;
            tx.commit()?;
            Ok(Ok((!still_used).then_some(digest)))
        })?
    }
}
