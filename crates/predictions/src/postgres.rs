//! The log in PostgreSQL (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`): the same four tables as
//! the Parquet log, created and upgraded by numbered migrations (recorded in
//! `modelship_schema_migrations`, applied under an advisory lock so that replicas starting
//! together apply each once), and a view, `modelship_predictions_marked`, that answers "which
//! of my stored predictions came from a version later rolled back?" in one query. Predictions
//! and feedback go in by binary `COPY`; marks by `INSERT ... ON CONFLICT DO NOTHING`
//! (idempotent). The connection is opened on first use and again after it broke: a database
//! that restarts is written to again once it is back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, ToSql, Type};
use tokio_postgres::{Client, NoTls, Row};

use crate::record::{Audit, Feedback, Mark, Prediction, Table};
use crate::error::StoreError;
use crate::table::Value;

/// The schema, one migration per step; never edited once released, only added to.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE modelship_predictions (
        request_id text NOT NULL,
        time timestamptz NOT NULL,
        model text NOT NULL,
        version text NOT NULL,
        revision bigint,
        role text NOT NULL,
        status integer NOT NULL,
        latency_ms double precision NOT NULL,
        inputs jsonb,
        entities jsonb,
        outputs jsonb,
        score double precision,
        error text,
        served_version text,
        agreed boolean,
        replica text
    );
    CREATE INDEX modelship_predictions_model_time ON modelship_predictions (model, time);
    CREATE INDEX modelship_predictions_request ON modelship_predictions (request_id);
    CREATE TABLE modelship_feedback (
        request_id text NOT NULL,
        time timestamptz NOT NULL,
        label boolean,
        reward double precision,
        replica text
    );
    CREATE INDEX modelship_feedback_request ON modelship_feedback (request_id);
    CREATE INDEX modelship_feedback_time ON modelship_feedback (time);
    ALTER TABLE modelship_feedback ADD COLUMN joined boolean;
    CREATE TABLE modelship_rollbacks (
        model text NOT NULL,
        version text NOT NULL,
        from_revision bigint NOT NULL,
        to_revision bigint NOT NULL,
        from_time timestamptz NOT NULL,
        time timestamptz NOT NULL,
        actor text NOT NULL,
        reason text NOT NULL,
        replica text,
        PRIMARY KEY (model, version, to_revision)
    );
    CREATE TABLE modelship_audit (
        time timestamptz NOT NULL,
        actor text NOT NULL,
        action text NOT NULL,
        model text,
        rows bigint NOT NULL,
        detail text NOT NULL
    );
    CREATE VIEW modelship_predictions_marked AS
        SELECT p.*, r.to_revision AS rollback_revision, r.reason AS rollback_reason, r.model IS NOT NULL AS rolled_back
        FROM modelship_predictions p
        LEFT JOIN modelship_rollbacks r
          ON p.model = r.model AND p.version = r.version
         AND p.revision >= r.from_revision AND p.revision < r.to_revision;",
)];

/// The advisory lock key migrations run under (any fixed number, "msmigr" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d73_6d69_6772;

/// How long connecting may take before the write is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The log's tables in one PostgreSQL database.
pub struct PgStore {
    config: tokio_postgres::Config,
    client: Mutex<Option<Client>>,
    pub location: String,
}

fn db(e: tokio_postgres::Error) -> StoreError {
    // SQLSTATE classes 22 (data exception), 23 (integrity) and 42 (syntax or access rule): the
    // rows or the statement are wrong, and sending them again changes nothing.
    let permanent = e.code().is_some_and(|c| matches!(&c.code()[..2], "22" | "23" | "42"));
    let message = format!("PostgreSQL: {e}");
    if permanent { StoreError::Rejected(message) } else { StoreError::Io(message) }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn at(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// `text` as a JSON document for a `jsonb` column (checked, not parsed into values); `None` when
/// it is not JSON (written as NULL).
fn json(text: &Option<String>) -> Option<Json<&serde_json::value::RawValue>> {
    // `jsonb` cannot hold U+0000, which JSON can: such a document is written as NULL rather than
    // make its whole batch refused.
    text.as_deref().filter(|t| !t.contains("\\u0000")).and_then(|t| serde_json::from_str::<&serde_json::value::RawValue>(t).ok()).map(Json)
}

impl PgStore {
    /// Parses `url`; connects on first use. TLS is not supported yet: a URL that requires it
    /// (`sslmode=require`) is refused rather than sent in the clear.
    pub fn new(url: &str) -> Result<PgStore, StoreError> {
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Config(format!("prediction log: not a PostgreSQL URL (postgres://USER@HOST:PORT/DB): {e}")))?;
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(StoreError::Config(
                "prediction log: this build connects to PostgreSQL without TLS, and the URL requires it (sslmode=require); reach the database over a private network or a TLS-terminating proxy".to_owned(),
            ));
        }
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        // Never the password.
        let location = format!("postgres://{}/{}", hosts.join(","), config.get_dbname().unwrap_or_default());
        Ok(PgStore { config, client: Mutex::new(None), location })
    }

    /// The connection, opened (and the schema migrated) when there is none or it broke.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = None;
            let connect = tokio::time::timeout(CONNECT_TIMEOUT, self.config.connect(NoTls));
            let (client, connection) = connect.await.map_err(|_| StoreError::Io(format!("{}: no connection within {CONNECT_TIMEOUT:?}", self.location)))?.map_err(db)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "the prediction log's PostgreSQL connection closed");
                }
            });
            migrate(&client).await?;
            *guard = Some(client);
        }
        Ok(guard)
    }

    async fn with<T>(&self, f: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>) -> Result<T, StoreError> {
        let guard = self.client().await?;
        let client = guard.as_ref().ok_or_else(|| StoreError::Io("no connection".to_owned()))?;
        f(client).await.map_err(db)
    }

    /// Writes `rows` of `table` (predictions or feedback) by binary COPY, in one transaction.
    pub async fn append(&self, table: Table, rows: &[Vec<Value>]) -> Result<(), StoreError> {
        match table {
            Table::Predictions => {
                let predictions: Vec<Prediction> = rows.iter().map(|r| Prediction::from_row(r)).collect();
                self.with(async |c| copy_predictions(c, &predictions).await).await
            }
            Table::Feedback => {
                let feedback: Vec<Feedback> = rows.iter().map(|r| Feedback::from_row(r)).collect();
                self.with(async |c| copy_feedback(c, &feedback).await).await
            }
            other => Err(StoreError::Io(format!("{} rows are not appended", other.dir()))),
        }
    }

    pub async fn put_mark(&self, m: &Mark) -> Result<(), StoreError> {
        self.with(async |c| {
            c.execute(
                "INSERT INTO modelship_rollbacks (model, version, from_revision, to_revision, from_time, time, actor, reason, replica)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                &[&m.model, &m.version, &m.from_revision, &m.to_revision, &at(m.from_time), &at(m.time), &m.actor, &m.reason, &m.replica],
            )
            .await
            .map(drop)
        })
        .await
    }

    pub async fn put_audit(&self, a: &Audit) -> Result<(), StoreError> {
        self.with(async |c| {
            c.execute(
                "INSERT INTO modelship_audit (time, actor, action, model, rows, detail) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&at(a.time), &a.actor, &a.action, &a.model, &a.rows, &a.detail],
            )
            .await
            .map(drop)
        })
        .await
    }

    /// Predictions (of `model`, when given) made at `since` (ms) or later, oldest first.
    pub async fn predictions(&self, model: Option<&str>, since: i64) -> Result<Vec<Prediction>, StoreError> {
        let rows = self
            .with(async |c| {
                c.query(
                    "SELECT request_id, time, model, version, revision, role, status, latency_ms, inputs::text, entities::text,
                            outputs::text, score, error, served_version, agreed, replica
                     FROM modelship_predictions WHERE ($1::text IS NULL OR model = $1) AND time >= $2 ORDER BY time, request_id",
                    &[&model, &at(since)],
                )
                .await
            })
            .await?;
        Ok(rows.iter().map(prediction).collect())
    }

    /// The newest `limit` of `model`'s predictions made at `since` or later, oldest first;
    /// their inputs and outputs are not read (what remembering them needs is the rest).
    pub async fn newest(&self, model: &str, since: i64, limit: usize) -> Result<Vec<Prediction>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .with(async |c| {
                c.query(
                    "SELECT request_id, time, model, version, revision, role, status, latency_ms, NULL::text, NULL::text,
                            NULL::text, score, error, served_version, agreed, replica
                     FROM modelship_predictions WHERE model = $1 AND time >= $2 ORDER BY time DESC LIMIT $3",
                    &[&model, &at(since), &limit],
                )
                .await
            })
            .await?;
        let mut out: Vec<Prediction> = rows.iter().map(prediction).collect();
        out.reverse();
        Ok(out)
    }

    pub async fn feedback(&self, since: i64) -> Result<Vec<Feedback>, StoreError> {
        let rows = self
            .with(async |c| c.query("SELECT request_id, time, label, reward, replica, joined FROM modelship_feedback WHERE time >= $1 ORDER BY time", &[&at(since)]).await)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Feedback { request_id: r.get(0), time: millis(r.get(1)), label: r.get(2), reward: r.get(3), replica: r.get(4), joined: r.get(5) })
            .collect())
    }

    pub async fn marks(&self, model: Option<&str>) -> Result<Vec<Mark>, StoreError> {
        let rows = self
            .with(async |c| {
                c.query(
                    "SELECT model, version, from_revision, to_revision, from_time, time, actor, reason, replica FROM modelship_rollbacks
                     WHERE ($1::text IS NULL OR model = $1) ORDER BY time",
                    &[&model],
                )
                .await
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| Mark {
                model: r.get(0),
                version: r.get(1),
                from_revision: r.get(2),
                to_revision: r.get(3),
                from_time: millis(r.get(4)),
                time: millis(r.get(5)),
                actor: r.get(6),
                reason: r.get(7),
                replica: r.get(8),
            })
            .collect())
    }

    pub async fn audit(&self) -> Result<Vec<Audit>, StoreError> {
        let rows = self.with(async |c| c.query("SELECT time, actor, action, model, rows, detail FROM modelship_audit ORDER BY time", &[]).await).await?;
        Ok(rows
            .iter()
            .map(|r| Audit { time: millis(r.get(0)), actor: r.get(1), action: r.get(2), model: r.get(3), rows: r.get(4), detail: r.get(5) })
            .collect())
    }

    /// Deletes the predictions a rollback marked (of `model`, when given); returns how many.
    pub async fn purge_rolled_back(&self, model: Option<&str>) -> Result<u64, StoreError> {
        self.with(async |c| {
            c.execute(
                "DELETE FROM modelship_predictions p USING modelship_rollbacks r
                 WHERE p.model = r.model AND p.version = r.version AND p.revision >= r.from_revision AND p.revision < r.to_revision
                   AND ($1::text IS NULL OR p.model = $1)",
                &[&model],
            )
            .await
        })
        .await
    }
}

fn prediction(r: &Row) -> Prediction {
    Prediction {
        request_id: r.get(0),
        time: millis(r.get(1)),
        model: r.get(2),
        version: r.get(3),
        revision: r.get(4),
        role: r.get(5),
        status: i64::from(r.get::<_, i32>(6)),
        latency_ms: r.get(7),
        inputs: r.get(8),
        entities: r.get(9),
        outputs: r.get(10),
        score: r.get(11),
        error: r.get(12),
        served_version: r.get(13),
        agreed: r.get(14),
        replica: r.get(15),
    }
}

/// Applies the migrations this database has not had, in order, each in its own transaction,
/// under an advisory lock.
async fn migrate(client: &Client) -> Result<(), StoreError> {
    // Replicas starting together: one creates the bookkeeping table, the others wait (two
    // concurrent CREATE TABLE IF NOT EXISTS can collide in pg_type).
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db)?;
    let created = client
        .batch_execute("CREATE TABLE IF NOT EXISTS modelship_schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        .await
        .map_err(db);
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    created?;
    for (version, sql) in MIGRATIONS {
        client.batch_execute("BEGIN").await.map_err(db)?;
        let step = async {
            client.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
            let done = client.query_opt("SELECT 1 FROM modelship_schema_migrations WHERE version = $1", &[version]).await?.is_some();
            if !done {
                client.batch_execute(sql).await?;
                client.execute("INSERT INTO modelship_schema_migrations (version) VALUES ($1)", &[version]).await?;
                tracing::info!(version, "migrated the prediction log's PostgreSQL schema");
            }
            Ok::<(), tokio_postgres::Error>(())
        };
        match step.await {
            Ok(()) => client.batch_execute("COMMIT").await.map_err(db)?,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(db(e));
            }
        }
    }
    Ok(())
}

async fn copy_predictions(client: &Client, predictions: &[Prediction]) -> Result<(), tokio_postgres::Error> {
    let sink = client
        .copy_in(
            "COPY modelship_predictions (request_id, time, model, version, revision, role, status, latency_ms, inputs, entities, outputs,
             score, error, served_version, agreed, replica) FROM STDIN BINARY",
        )
        .await?;
    let types = [
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::INT4,
        Type::FLOAT8,
        Type::JSONB,
        Type::JSONB,
        Type::JSONB,
        Type::FLOAT8,
        Type::TEXT,
        Type::TEXT,
        Type::BOOL,
        Type::TEXT,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    let mut writer = std::pin::pin!(writer);
    for p in predictions {
        let status = i32::try_from(p.status).unwrap_or(i32::MAX);
        let (inputs, entities, outputs) = (json(&p.inputs), json(&p.entities), json(&p.outputs));
        let values: [&(dyn ToSql + Sync); 16] = [
            &p.request_id,
            &at(p.time),
            &p.model,
            &p.version,
            &p.revision,
            &p.role,
            &status,
            &p.latency_ms,
            &inputs,
            &entities,
            &outputs,
            &p.score,
            &p.error,
            &p.served_version,
            &p.agreed,
            &p.replica,
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await.map(drop)
}

async fn copy_feedback(client: &Client, feedback: &[Feedback]) -> Result<(), tokio_postgres::Error> {
    let sink = client.copy_in("COPY modelship_feedback (request_id, time, label, reward, replica, joined) FROM STDIN BINARY").await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TIMESTAMPTZ, Type::BOOL, Type::FLOAT8, Type::TEXT, Type::BOOL]);
    let mut writer = std::pin::pin!(writer);
    for f in feedback {
        writer.as_mut().write(&[&f.request_id, &at(f.time), &f.label, &f.reward, &f.replica, &f.joined]).await?;
    }
    writer.finish().await.map(drop)
}
