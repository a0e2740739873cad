//! The control store: where a model's routing revisions live, so that every replica of a fleet
//! routes from the same table. Selected by one setting (`--control-store`,
//! `server.control_store`, `MODELSHIP_CONTROL_STORE`):
//!
//! - `embedded` (the default): this process's SQLite file (`STATE_DIR/traffic.db`); one replica.
//! - `redis://HOST:PORT[/DB]`: a Redis server the fleet shares.
//!
//! No consensus of our own: a revision is committed only if it is the next one after the latest
//! stored (compare and swap on the revision number: a transaction in SQLite, a Lua script in
//! Redis, which runs atomically), so a replica that lost a race cannot overwrite the winner; it
//! applies the winner's table instead. Redis publishes each committed revision number on a channel;
//! replicas also re-read the latest revision periodically, because a published message is lost
//! when a subscriber is disconnected.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::ApiError;

/// One recorded routing change (the admin API's type).
pub use modelship_protocol::admin::Revision;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another writer committed first: `latest` is the revision stored now (`None`: none yet).
    #[error("revision {wanted} is not the next one: the store holds revision {}", latest.map_or("none".to_owned(), |l| l.to_string()))]
    Conflict { wanted: u64, latest: Option<u64> },
    #[error("the control store ({store}) cannot be reached: {reason}")]
    Unavailable { store: &'static str, reason: String },
    #[error("the control store holds a revision this server cannot read: {0}")]
    Corrupt(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { latest, .. } => ApiError::Conflict(format!(
                "the routing was changed by another replica meanwhile (now revision {}); this replica applies it: look at the traffic again and retry the change",
                latest.map_or("none".to_owned(), |l| l.to_string())
            )),
            StoreError::Unavailable { .. } => ApiError::ControlStoreUnavailable(e.to_string()),
            StoreError::Corrupt(_) => ApiError::Internal(e.to_string()),
        }
    }
}

/// Where routing revisions are kept. Every method is one request to the store.
pub trait ControlStore: Send + Sync {
    /// `embedded` or `redis`: for logs, metrics and readiness.
    fn kind(&self) -> &'static str;

    /// The latest revision of `model`, if any was committed.
    fn latest<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Option<Revision>, StoreError>>;

    /// Every revision of `model`, oldest first.
    fn history<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Vec<Revision>, StoreError>>;

    /// Commits `revision` if it is the next one: revision 0 into an empty history, else exactly
    /// one after the latest. Otherwise [`StoreError::Conflict`], and nothing is written.
    fn commit<'a>(&'a self, revision: &'a Revision) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Revision numbers of `model` as others commit them, while the connection lasts (the stream
    /// ends when it drops). Best effort: a subscriber also re-reads [`ControlStore::latest`].
    /// A store only this process writes returns a stream that never yields.
    fn changes<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<BoxStream<'static, u64>, StoreError>>;
}

/// Checks a setting without opening anything.
pub fn check_setting(setting: &str) -> Result<(), String> {
    if setting == "embedded" {
        return Ok(());
    }
    if setting.starts_with("redis://") || setting.starts_with("rediss://") {
        return redis::Client::open(setting).map(|_| ()).map_err(|e| format!("'{}' is not a usable Redis URL: {e}", redact(setting)));
    }
    if setting.starts_with("kubernetes") {
        return Err("control store 'kubernetes' is not built yet; use 'embedded' (one replica) or redis://HOST:PORT (a fleet)".to_owned());
    }
    Err(format!("control store '{}' is not 'embedded' or a redis://HOST:PORT[/DB] URL", redact(setting)))
}

/// Opens the store a setting names: `embedded` (with `embedded_path`) or `redis://...`.
pub fn open(setting: &str, embedded_path: &Path) -> Result<std::sync::Arc<dyn ControlStore>, String> {
    check_setting(setting)?;
    if setting == "embedded" {
        return Ok(std::sync::Arc::new(Embedded::open(embedded_path)?));
    }
    Ok(std::sync::Arc::new(RedisStore::new(setting)?))
}

/// Follows the store for `traffic`'s model until shutdown: applies every newer revision, on a
/// published change at once, else within `every` (a publish is lost while disconnected).
pub async fn follow(state: crate::AppState, traffic: std::sync::Arc<crate::traffic::Traffic>, every: Duration) {
    let model = traffic.spec.name.clone();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changes: Option<BoxStream<'static, u64>> = None;
    loop {
        if changes.is_none() {
            changes = match traffic.store.changes(&model).await {
                Ok(stream) => Some(stream),
                Err(e) => {
                    tracing::debug!(model = %model, error = %e, "cannot subscribe to routing changes; re-reading periodically");
                    None
                }
            };
        }
        let pushed = async {
            match changes.as_mut() {
                Some(stream) => stream.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            next = pushed => {
                if next.is_none() {
                    changes = None;
                }
            }
            _ = ticker.tick() => {}
        }
        if state.health.is_draining() {
            return;
        }
        if let Err(e) = traffic.sync(&state).await {
            tracing::warn!(model = %model, error = %e, "cannot apply the latest routing from the control store; serving the current one");
        }
    }
}

/// The one-process store: revisions in this server's SQLite file.
pub struct Embedded {
    conn: Mutex<Connection>,
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
                 PRIMARY KEY (model, revision));",
        )
        .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
        Ok(Embedded { conn: Mutex::new(conn) })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|e| StoreError::Unavailable { store: "embedded", reason: format!("traffic history database: {e}") })
    }

    fn read(&self, model: &str, latest_only: bool) -> Result<Vec<Revision>, StoreError> {
        let sql = if latest_only {
            "SELECT model, revision, at_ms, actor, reason, change, traffic FROM revisions WHERE model = ?1 ORDER BY revision DESC LIMIT 1"
        } else {
            "SELECT model, revision, at_ms, actor, reason, change, traffic FROM revisions WHERE model = ?1 ORDER BY revision"
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
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|(model, revision, at_ms, actor, reason, change, traffic)| {
                let change = change.map(|c| serde_json::from_str(&c)).transpose().map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let traffic = serde_json::from_str(&traffic).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(Revision { model, revision: revision as u64, at_ms, actor, reason, change, traffic })
            })
            .collect()
    }
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

    fn commit<'a>(&'a self, r: &'a Revision) -> BoxFuture<'a, Result<(), StoreError>> {
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
                    "INSERT INTO revisions (model, revision, at_ms, actor, reason, change, traffic) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![r.model, r.revision as i64, r.at_ms, r.actor, r.reason, change, traffic],
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
}

/// Revisions in Redis: `PREFIX:traffic:MODEL:latest` (the latest revision number),
/// `PREFIX:traffic:MODEL:revisions` (a hash of revision number → JSON) and the channel
/// `PREFIX:traffic:MODEL` (each committed number). Model names are checked names (letters,
/// digits, `.`, `_`, `-`), so they cannot escape their keys.
pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    /// One multiplexed connection, made on first use and again after a failure.
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

/// Commits revision ARGV[1] (JSON ARGV[2]) if it is the next one; publishes it on ARGV[3].
/// Returns -1 when committed, -2 when the store is empty and the revision is not 0, else the
/// latest revision stored. Redis runs a script atomically: this is the compare and swap.
const COMMIT_SCRIPT: &str = r"
local latest = redis.call('GET', KEYS[1])
local wanted = tonumber(ARGV[1])
if (latest == false and wanted == 0) or (latest ~= false and tonumber(latest) == wanted - 1) then
  redis.call('SET', KEYS[1], wanted)
  redis.call('HSET', KEYS[2], wanted, ARGV[2])
  redis.call('PUBLISH', ARGV[3], wanted)
  return -1
end
if latest == false then return -2 end
return tonumber(latest)
";

/// How long one store request may take before the store counts as unreachable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisStore {
    pub fn new(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("control store URL '{}': {e}", redact(url)))?;
        Ok(RedisStore { client, prefix: "modelship".to_owned(), conn: tokio::sync::Mutex::new(None) })
    }

    fn keys(&self, model: &str) -> (String, String, String) {
        let base = format!("{}:traffic:{model}", self.prefix);
        (format!("{base}:latest"), format!("{base}:revisions"), base)
    }

    fn unavailable(e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable { store: "redis", reason: e.to_string() }
    }

    /// Runs `f` on the shared connection (made if needed); a failed request drops it, so the
    /// next one reconnects.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(&'c mut redis::aio::MultiplexedConnection) -> BoxFuture<'c, redis::RedisResult<T>>,
    {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            let conn = tokio::time::timeout(REDIS_TIMEOUT, self.client.get_multiplexed_async_connection())
                .await
                .map_err(|_| Self::unavailable("no answer within 2 s"))?
                .map_err(Self::unavailable)?;
            *guard = Some(conn);
        }
        let conn = guard.as_mut().expect("connected above");
        match tokio::time::timeout(REDIS_TIMEOUT, f(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                *guard = None;
                Err(Self::unavailable(e))
            }
            Err(_) => {
                *guard = None;
                Err(Self::unavailable("no answer within 2 s"))
            }
        }
    }

    fn parse(json: &str) -> Result<Revision, StoreError> {
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

impl ControlStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn latest<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Option<Revision>, StoreError>> {
        async move {
            let (latest, revisions, _) = self.keys(model);
            let json: Option<String> = self
                .run(move |c| {
                    async move {
                        let n: Option<u64> = redis::cmd("GET").arg(&latest).query_async(c).await?;
                        match n {
                            None => Ok(None),
                            Some(n) => redis::cmd("HGET").arg(&revisions).arg(n).query_async(c).await,
                        }
                    }
                    .boxed()
                })
                .await?;
            json.as_deref().map(Self::parse).transpose()
        }
        .boxed()
    }

    fn history<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Vec<Revision>, StoreError>> {
        async move {
            let (_, revisions, _) = self.keys(model);
            let all: Vec<String> =
                self.run(move |c| async move { redis::cmd("HVALS").arg(&revisions).query_async(c).await }.boxed()).await?;
            let mut history = all.iter().map(|j| Self::parse(j)).collect::<Result<Vec<_>, _>>()?;
            history.sort_by_key(|r| r.revision);
            Ok(history)
        }
        .boxed()
    }

    fn commit<'a>(&'a self, r: &'a Revision) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let (latest, revisions, channel) = self.keys(&r.model);
            let json = serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let wanted = r.revision;
            let answer: i64 = self
                .run(move |c| {
                    async move {
                        redis::cmd("EVAL").arg(COMMIT_SCRIPT).arg(2).arg(&latest).arg(&revisions).arg(wanted).arg(&json).arg(&channel).query_async(c).await
                    }
                    .boxed()
                })
                .await?;
            match answer {
                -1 => Ok(()),
                -2 => Err(StoreError::Conflict { wanted, latest: None }),
                n => Err(StoreError::Conflict { wanted, latest: Some(n as u64) }),
            }
        }
        .boxed()
    }

    fn changes<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<BoxStream<'static, u64>, StoreError>> {
        async move {
            let (_, _, channel) = self.keys(model);
            let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, self.client.get_async_pubsub())
                .await
                .map_err(|_| Self::unavailable("no answer within 2 s"))?
                .map_err(Self::unavailable)?;
            pubsub.subscribe(&channel).await.map_err(Self::unavailable)?;
            let stream = pubsub.into_on_message().filter_map(|msg| async move { msg.get_payload::<u64>().ok() });
            Ok(stream.boxed())
        }
        .boxed()
    }
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use modelship_router::TrafficTable;

    use super::*;

    fn revision(model: &str, n: u64) -> Revision {
        Revision {
            model: model.to_owned(),
            revision: n,
            at_ms: n as i64,
            actor: "test".to_owned(),
            reason: format!("r{n}"),
            change: None,
            traffic: TrafficTable::new(n.to_string()),
        }
    }

    /// What every store must do, whatever it is.
    async fn behaves_as_a_store(store: &dyn ControlStore, model: &str) {
        assert_eq!(store.latest(model).await.unwrap(), None);
        assert_eq!(store.commit(&revision(model, 1)).await, Err(StoreError::Conflict { wanted: 1, latest: None }), "the first is 0");
        store.commit(&revision(model, 0)).await.unwrap();
        store.commit(&revision(model, 1)).await.unwrap();
        assert_eq!(store.commit(&revision(model, 1)).await, Err(StoreError::Conflict { wanted: 1, latest: Some(1) }), "lost the race");
        assert_eq!(store.commit(&revision(model, 3)).await, Err(StoreError::Conflict { wanted: 3, latest: Some(1) }), "no gaps");
        assert_eq!(store.latest(model).await.unwrap(), Some(revision(model, 1)));
        assert_eq!(store.history(model).await.unwrap(), vec![revision(model, 0), revision(model, 1)]);
        assert_eq!(store.latest("other").await.unwrap(), None, "models are apart");
    }

    #[tokio::test]
    async fn the_embedded_store_commits_only_the_next_revision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("traffic.db")).unwrap();
        behaves_as_a_store(&store, "fraud").await;
    }

    #[test]
    fn settings_name_a_store_or_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        assert_eq!(open("embedded", &path).unwrap().kind(), "embedded");
        assert_eq!(open("redis://127.0.0.1:1/0", &path).unwrap().kind(), "redis", "opening does not connect");
        assert!(open("kubernetes", &path).err().unwrap().contains("not built yet"));
        assert!(open("etcd://x", &path).err().unwrap().contains("is not 'embedded' or a redis://"));
        assert_eq!(redact("redis://user:secret@host:6379/1"), "redis://***@host:6379/1");
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable_not_a_hang() {
        let store = RedisStore::new(&format!("redis://127.0.0.1:{}/0", crate::testing::closed_port())).unwrap();
        let started = std::time::Instant::now();
        assert!(matches!(store.latest("fraud").await, Err(StoreError::Unavailable { store: "redis", .. })));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Against a real redis-server (installed by `scripts/setup.sh --test`), started on a free
    /// port for this test.
    #[tokio::test]
    async fn the_redis_store_commits_only_the_next_revision_and_publishes_it() {
        let redis = crate::testing::RedisServer::start();
        let store = RedisStore::new(&redis.url()).unwrap();
        behaves_as_a_store(&store, "fraud").await;
        let mut changes = store.changes("fraud").await.unwrap();
        let other = RedisStore::new(&redis.url()).unwrap();
        other.commit(&revision("fraud", 2)).await.unwrap();
        let published = tokio::time::timeout(Duration::from_secs(5), changes.next()).await.expect("published within 5 s");
        assert_eq!(published, Some(2));
        assert_eq!(store.latest("fraud").await.unwrap().map(|r| r.revision), Some(2), "a second client sees the first's commit");
        // Many writers racing for one revision: exactly one wins.
        let stores: Vec<RedisStore> = (0..8).map(|_| RedisStore::new(&redis.url()).unwrap()).collect();
        let third = revision("fraud", 3);
        let results = futures::future::join_all(stores.iter().map(|s| s.commit(&third))).await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    }
}
