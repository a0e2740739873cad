//! The one-process store: revisions and rollouts in this server's SQLite file; the lease, the
//! replica reports and the evidence log in memory (there is one replica, which always leads).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use modelship_rollout::engine::Decision;
use rusqlite::{Connection, OptionalExtension, params};

use super::{ControlStore, Evidence, Lease, Page, ReplicaReport, Revision, StoreError, StoredRollout, Write, check_write};

/// A row of `model_rollouts`: id, stable version, engine state, record (absent in older files).
type RolloutRow = (i64, String, String, Option<String>);

/// Evidence kept for the leader to read (it reads every interval, so a few are enough).
const EVIDENCE_KEPT: usize = 1_000;

/// The one-process store: revisions in this server's SQLite file.
pub struct Embedded {
    conn: Mutex<Connection>,
    memory: Mutex<Memory>,
}

/// What needs no file: one process, one replica.
struct Memory {
    reports: std::collections::BTreeMap<(String, String), ReplicaReport>,
    /// (model, sequence number, evidence), oldest first.
    evidence: VecDeque<(String, u64, Evidence)>,
    next_evidence: u64,
    /// This process's evidence sequence: a cursor (`EPOCH:N`) stored in a rollout record by a
    /// process before a restart names another epoch, and reads everything this one holds (its
    /// numbers restart at 0; reading only past the old N skipped the new evidence).
    epoch: u64,
}

impl Default for Memory {
    fn default() -> Self {
        Memory { reports: Default::default(), evidence: VecDeque::new(), next_evidence: 0, epoch: fastrand::u64(1..) }
    }
}

impl Embedded {
    pub fn open(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let conn = Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(|e| e.to_string())?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS revisions (
                 model TEXT NOT NULL, revision INTEGER NOT NULL, at_ms INTEGER NOT NULL,
                 actor TEXT NOT NULL, reason TEXT NOT NULL, change TEXT, traffic TEXT NOT NULL,
                 PRIMARY KEY (model, revision));
             CREATE TABLE IF NOT EXISTS model_rollouts (model TEXT NOT NULL, id INTEGER NOT NULL,
                 stable TEXT NOT NULL, state TEXT NOT NULL, done INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
                 record TEXT, PRIMARY KEY (model, id));
             CREATE TABLE IF NOT EXISTS model_rollout_decisions (model TEXT NOT NULL, rollout INTEGER NOT NULL,
                 decision TEXT NOT NULL);",
        )
        .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
        upgrade_rollouts(&conn, path)?;
        // Files written before revisions recorded their model source: the column is added, and a
        // row without one is read as of an unknown source.
        add_column_if_missing(&conn, path, "revisions", "source")?;
        Ok(Embedded { conn: Mutex::new(conn), memory: Mutex::default() })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|e| StoreError::Unavailable { store: "embedded", reason: format!("traffic history database: {e}") })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest rollout row of `model`.
    fn latest_rollout(c: &Connection, model: &str) -> rusqlite::Result<Option<RolloutRow>> {
        c.query_row(
            "SELECT id, stable, state, record FROM model_rollouts WHERE model = ?1 ORDER BY id DESC LIMIT 1",
            [model],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
    }

    fn parse_rollout(model: &str, (id, stable, state, record): RolloutRow) -> Result<StoredRollout, StoreError> {
        if let Some(record) = record {
            return serde_json::from_str(&record).map_err(|e| StoreError::Corrupt(format!("rollout {id}: {e}")));
        }
        let rollout = serde_json::from_str(&state).map_err(|e| StoreError::Corrupt(format!("rollout {id}: {e}")))?;
        Ok(StoredRollout { id, seq: 0, model: model.to_owned(), stable, rollout, applied: None, evidence_cursor: None, leader: None })
    }

    fn read(&self, model: &str, latest_only: bool) -> Result<Vec<Revision>, StoreError> {
        let sql = if latest_only {
            "SELECT model, revision, at_ms, actor, reason, change, traffic, source FROM revisions WHERE model = ?1 ORDER BY revision DESC LIMIT 1"
        } else {
            "SELECT model, revision, at_ms, actor, reason, change, traffic, source FROM revisions WHERE model = ?1 ORDER BY revision"
        };
        let rows = self.with(|c| {
            let mut stmt = c.prepare(sql)?;
            stmt.query_map(params![model], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, Option<String>>(7)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|(model, revision, at_ms, actor, reason, change, traffic, source)| {
                let change = change.map(|c| serde_json::from_str(&c)).transpose().map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let traffic = serde_json::from_str(&traffic).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(Revision { model, revision: revision as u64, at_ms, actor, reason, change, traffic, source })
            })
            .collect()
    }
}

/// Files written before a server served several models numbered rollouts across all models
/// (`rollouts`, `rollout_decisions`); each model numbers its own now, as the shared stores do.
/// The old rows move to the per-model tables once, in one transaction, and the old tables go. A
/// row that would collide with one already moved (an older binary that ran on the file after an
/// upgrade) fails the upgrade, naming the file, rather than being dropped.
fn upgrade_rollouts(conn: &Connection, path: &Path) -> Result<(), String> {
    let legacy = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rollouts'")
        .and_then(|mut s| s.exists([]))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !legacy {
        return Ok(());
    }
    // Files written before rollouts were shared records have no record column: a row without
    // one is read from its engine state.
    add_column_if_missing(conn, path, "rollouts", "record")?;
    conn.execute_batch(
        "BEGIN;
         INSERT INTO model_rollouts (model, id, stable, state, done, updated_ms, record)
             SELECT model, id, stable, state, done, updated_ms, record FROM rollouts;
         INSERT INTO model_rollout_decisions (model, rollout, decision)
             SELECT r.model, d.rollout, d.decision FROM rollout_decisions d JOIN rollouts r ON r.id = d.rollout ORDER BY d.rowid;
         DROP TABLE rollout_decisions;
         DROP TABLE rollouts;
         COMMIT;",
    )
    .map_err(|e| format!("cannot upgrade {}: {e}", path.display()))
}

/// Upgrades a file written by an older version: adds `table.column` (TEXT, NULL in old rows) when
/// the table has none. `table` and `column` are this module's own names, never a user's.
fn add_column_if_missing(conn: &Connection, path: &Path, table: &str, column: &str) -> Result<(), String> {
    let exists = conn
        .prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = '{column}'"))
        .and_then(|mut s| s.exists([]))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !exists {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))
            .map_err(|e| format!("cannot upgrade {}: {e}", path.display()))?;
    }
    Ok(())
}

impl ControlStore for Embedded {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn latest<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Option<Revision>, StoreError>> {
        async move { Ok(self.read(model, true)?.pop()) }.boxed()
    }

    fn history<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Vec<Revision>, StoreError>> {
        async move { self.read(model, false) }.boxed()
    }

    // One process: it always holds the lease, so a leader's commit is never fenced off.
    fn commit<'a>(&'a self, r: &'a Revision, _leader: Option<&'a str>) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let change = r.change.as_ref().map(|c| serde_json::to_string(c).unwrap_or_default());
            let traffic = serde_json::to_string(&r.traffic).unwrap_or_default();
            let latest = self.with(|c| {
                let tx = c.transaction()?;
                let latest: Option<i64> =
                    tx.query_row("SELECT MAX(revision) FROM revisions WHERE model = ?1", params![r.model], |row| row.get(0)).optional()?.flatten();
                let next = latest.map_or(0, |l| l as u64 + 1);
                if next != r.revision {
                    return Ok(Some(latest.map(|l| l as u64)));
                }
                tx.execute(
                    "INSERT INTO revisions (model, revision, at_ms, actor, reason, change, traffic, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![r.model, r.revision as i64, r.at_ms, r.actor, r.reason, change, traffic, r.source],
                )?;
                tx.commit()?;
                Ok(None)
            })?;
            match latest {
                None => Ok(()),
                Some(latest) => Err(StoreError::Conflict { wanted: r.revision, latest }),
            }
        }
        .boxed()
    }

    fn changes<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<BoxStream<'static, u64>, StoreError>> {
        async { Ok(futures::stream::pending().boxed()) }.boxed()
    }

    fn rollout<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Option<StoredRollout>, StoreError>> {
        async move { self.with(|c| Self::latest_rollout(c, model))?.map(|row| Self::parse_rollout(model, row)).transpose() }.boxed()
    }

    fn save_rollout<'a>(&'a self, record: &'a StoredRollout, write: Write<'a>, decisions: &'a [Decision]) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let json = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let state = serde_json::to_string(&record.rollout).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let decisions: Vec<String> = decisions.iter().map(|d| serde_json::to_string(d).unwrap_or_default()).collect();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
            self.with(|c| {
                let tx = c.transaction()?;
                let current = Self::latest_rollout(&tx, &record.model)?;
                let stored = match current.map(|row| Self::parse_rollout(&record.model, row)).transpose() {
                    Ok(stored) => stored,
                    Err(e) => return Ok(Err(e)),
                };
                if let Some(refused) = check_write(stored.as_ref(), record, write) {
                    return Ok(Err(refused));
                }
                match write {
                    Write::Create => tx.execute(
                        "INSERT INTO model_rollouts (id, model, stable, state, done, updated_ms, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![record.id, record.model, record.stable, state, record.is_done(), now, json],
                    )?,
                    Write::Update { .. } => tx.execute(
                        "UPDATE model_rollouts SET state = ?1, done = ?2, updated_ms = ?3, record = ?4 WHERE model = ?5 AND id = ?6",
                        params![state, record.is_done(), now, json, record.model, record.id],
                    )?,
                };
                for d in &decisions {
                    tx.execute("INSERT INTO model_rollout_decisions (model, rollout, decision) VALUES (?1, ?2, ?3)", params![record.model, record.id, d])?;
                }
                tx.commit()?;
                Ok(Ok(()))
            })?
        }
        .boxed()
    }

    fn rollout_history<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Vec<(i64, Decision)>, StoreError>> {
        async move {
            let rows: Vec<(i64, String)> = self.with(|c| {
                let mut stmt = c.prepare(
                    "SELECT rollout, decision FROM model_rollout_decisions WHERE model = ?1 ORDER BY rowid",
                )?;
                let rows = stmt.query_map([model], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })?;
            rows.into_iter()
                .map(|(id, d)| serde_json::from_str(&d).map(|d| (id, d)).map_err(|e| StoreError::Corrupt(format!("a decision of rollout {id}: {e}"))))
                .collect()
        }
        .boxed()
    }

    fn lease<'a>(&'a self, _: &'a str, holder: &'a str, _: Duration) -> BoxFuture<'a, Result<Lease, StoreError>> {
        // One process: it always leads.
        async move { Ok(Lease { holder: holder.to_owned(), mine: true }) }.boxed()
    }

    fn release<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }

    fn report<'a>(&'a self, model: &'a str, report: &'a ReplicaReport) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            self.memory().reports.insert((model.to_owned(), report.replica.clone()), report.clone());
            Ok(())
        }
        .boxed()
    }

    fn replicas<'a>(&'a self, model: &'a str, _: Duration) -> BoxFuture<'a, Result<Vec<ReplicaReport>, StoreError>> {
        async move { Ok(self.memory().reports.iter().filter(|((m, _), _)| m == model).map(|(_, r)| r.clone()).collect()) }.boxed()
    }

    fn push_evidence<'a>(&'a self, model: &'a str, evidence: &'a Evidence) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut memory = self.memory();
            memory.next_evidence += 1;
            let n = memory.next_evidence;
            memory.evidence.push_back((model.to_owned(), n, evidence.clone()));
            while memory.evidence.len() > EVIDENCE_KEPT {
                memory.evidence.pop_front();
            }
            Ok(())
        }
        .boxed()
    }

    fn evidence<'a>(&'a self, model: &'a str, cursor: Option<&'a str>) -> BoxFuture<'a, Result<Page<Evidence>, StoreError>> {
        async move {
            let memory = self.memory();
            let epoch = memory.epoch;
            let Some(cursor) = cursor else {
                return Ok((vec![], Some(format!("{epoch}:{}", memory.next_evidence))));
            };
            // Past a cursor of this process; everything held when the cursor is another's.
            let after = match cursor.split_once(':') {
                Some((e, n)) if e.parse::<u64>() == Ok(epoch) => n.parse::<u64>().unwrap_or(0),
                _ => 0,
            };
            let found: Vec<Evidence> = memory.evidence.iter().filter(|(m, n, _)| m == model && *n > after).map(|(_, _, e)| e.clone()).collect();
            Ok((found, Some(format!("{epoch}:{}", memory.next_evidence.max(after)))))
        }
        .boxed()
    }

    fn push_labels<'a>(&'a self, _: &'a str, _: &'a [(String, super::Feedback)]) -> BoxFuture<'a, Result<(), StoreError>> {
        // One replica: a label it could not join has no other replica to go to.
        async { Ok(()) }.boxed()
    }

    fn labels<'a>(&'a self, _: &'a str, cursor: Option<&'a str>) -> BoxFuture<'a, Result<Page<(String, super::Feedback)>, StoreError>> {
        async move { Ok((vec![], cursor.map(str::to_owned))) }.boxed()
    }
}
