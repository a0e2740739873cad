//! The fleet's store in Redis. Keys, for a model M under the prefix `modelship`:
//! - `modelship:traffic:M:latest` (the latest revision number), `modelship:traffic:M:revisions`
//!   (a hash of revision number → JSON) and the channel `modelship:traffic:M` (each committed
//!   number, and `rollout` when the rollout record changes);
//! - `modelship:rollout:M` (a hash: `id`, `seq`, `done`, `record`), `modelship:rollout:M:decisions`
//!   (a list of `{"rollout": ID, "decision": ...}`);
//! - `modelship:lease:M` (the leader's name, with a time to live);
//! - `modelship:replicas:M` (a hash of replica → report) and `modelship:replicas:M:seen` (a
//!   sorted set of replica → the store's time of its last report);
//! - `modelship:evidence:M` and `modelship:labels:M`: streams capped near 2,000 and 10,000
//!   entries.
//!
//! Every write that must not race is one Lua script, which Redis runs atomically.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use modelship_rollout::engine::Decision;

use super::{ControlStore, Evidence, Lease, Page, ReplicaReport, Revision, StoreError, StoredRollout, Write, redact};

/// The store in Redis (see the module's documentation for its keys). Model names are checked
/// names (letters, digits, `.`, `_`, `-`), so they cannot escape their keys.
pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    /// One multiplexed connection, made on first use and again after a failure, with a number
    /// that tells it from the ones before it. Requests run on clones of it, concurrently: the
    /// lock is held only to take it (or make it), never across a request.
    conn: tokio::sync::Mutex<Option<(u64, redis::aio::MultiplexedConnection)>>,
    connections: std::sync::atomic::AtomicU64,
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

/// Writes a rollout record as [`Write`] allows (see [`super::check_write`], the
/// same rule) and appends its decisions, all or nothing. KEYS: record, decisions, lease.
/// ARGV: mode (`create`/`update`), id, seq, done (0/1), record JSON, leader (`` for none),
/// channel, then one decision JSON each. Returns `{ok}`, `{not_leader, HOLDER}`,
/// `{in_progress, ID}`, `{none}` or `{stale, ID, SEQ}`.
const SAVE_ROLLOUT_SCRIPT: &str = r"
local id = tonumber(redis.call('HGET', KEYS[1], 'id'))
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq'))
local done = redis.call('HGET', KEYS[1], 'done')
local new_id, new_seq = tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[6] ~= '' then
  local holder = redis.call('GET', KEYS[3])
  if holder ~= ARGV[6] then return {'not_leader', holder or 'nobody'} end
end
if ARGV[1] == 'create' then
  if id and done ~= '1' then return {'in_progress', tostring(id)} end
  if new_id ~= (id or 0) + 1 or new_seq ~= 0 then return {'stale', tostring(id or 0), tostring(seq or 0)} end
else
  if not id then return {'none'} end
  if id ~= new_id or seq + 1 ~= new_seq then return {'stale', tostring(id), tostring(seq)} end
end
redis.call('HSET', KEYS[1], 'id', new_id, 'seq', new_seq, 'done', ARGV[4], 'record', ARGV[5])
for i = 8, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('PUBLISH', ARGV[7], 'rollout')
return {'ok'}
";

/// Takes the lease KEYS[1] for ARGV[1] for ARGV[2] ms when free, renews it when ARGV[1]'s;
/// returns the holder after the call.
const LEASE_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return holder
";

const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
";

/// Records replica ARGV[1]'s report ARGV[2] at the store's time; forgets replicas silent for an
/// hour. KEYS: reports hash, seen sorted set.
const REPORT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - 3600000)
for _, r in ipairs(gone) do redis.call('HDEL', KEYS[1], r) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 3600000)
return now
";

/// The reports of replicas heard from within ARGV[1] ms, by the store's clock.
const REPLICAS_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[2], now - tonumber(ARGV[1]), '+inf')
if #live == 0 then return {} end
return redis.call('HMGET', KEYS[1], unpack(live))
";

/// How long one store request may take before the store counts as unreachable: long enough for
/// TCP to resend a lost packet on a slow link (200 ms ± 100 ms each way and 5 % loss in
/// `fleet.rs`: 2 s failed a rollout's start there), short enough that a store that is gone is
/// said so within seconds (one that refuses connections is said so at once).
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

impl RedisStore {
    pub fn new(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("control store URL '{}': {e}", redact(url)))?;
        Ok(RedisStore { client, prefix: "modelship".to_owned(), conn: tokio::sync::Mutex::new(None), connections: std::sync::atomic::AtomicU64::new(0) })
    }

    /// The traffic keys of `model`: the latest number, the revisions hash, the channel.
    fn keys(&self, model: &str) -> (String, String, String) {
        let base = self.key("traffic", model);
        (format!("{base}:latest"), format!("{base}:revisions"), base)
    }

    fn unavailable(e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable { store: "redis", reason: e.to_string() }
    }

    /// Runs `f` on the shared connection (made if needed); a failed request drops it, so the
    /// next one reconnects. Requests do not wait for each other: on a link with a half-second
    /// round trip, a replica's beat, evidence and lease renewal queued behind one another let
    /// the lease lapse (`fleet.rs`, the slow and lossy link).
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(&'c mut redis::aio::MultiplexedConnection) -> BoxFuture<'c, redis::RedisResult<T>>,
    {
        let (number, mut conn) = self.connection().await?;
        let failed = match tokio::time::timeout(REDIS_TIMEOUT, f(&mut conn)).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => Self::unavailable(e),
            Err(_) => Self::unavailable("no answer within 5 s"),
        };
        // Dropped unless a newer one replaced it meanwhile.
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_some_and(|(n, _)| *n == number) {
            *guard = None;
        }
        Err(failed)
    }

    /// The shared connection (a clone: multiplexed), made when there is none.
    async fn connection(&self) -> Result<(u64, redis::aio::MultiplexedConnection), StoreError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            // The redis crate's own bounds (a 1 s connect, a 500 ms answer) would decide first,
            // and fail every request on a link with a half-second round trip: ours is the bound.
            let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Some(REDIS_TIMEOUT)).set_response_timeout(Some(REDIS_TIMEOUT));
            let conn = tokio::time::timeout(REDIS_TIMEOUT, self.client.get_multiplexed_async_connection_with_config(&config))
                .await
                .map_err(|_| Self::unavailable("no answer within 5 s"))?
                .map_err(Self::unavailable)?;
            *guard = Some((self.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed), conn));
        }
        let (number, conn) = guard.as_ref().expect("connected above");
        Ok((*number, conn.clone()))
    }

    fn parse(json: &str) -> Result<Revision, StoreError> {
        serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    fn key(&self, what: &str, model: &str) -> String {
        format!("{}:{what}:{model}", self.prefix)
    }

    /// Runs a Lua script with its keys and arguments.
    async fn eval<T: redis::FromRedisValue + Send + 'static>(&self, script: &'static str, keys: Vec<String>, args: Vec<String>) -> Result<T, StoreError> {
        self.run(move |c| {
            async move {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(script).arg(keys.len());
                for k in &keys {
                    cmd.arg(k);
                }
                for a in &args {
                    cmd.arg(a);
                }
                cmd.query_async(c).await
            }
            .boxed()
        })
        .await
    }

    /// Stream entries after `cursor` (exclusive), at most `count`: (id, field `e`).
    async fn read_stream(&self, key: String, cursor: Option<String>, count: usize) -> Result<Vec<(String, String)>, StoreError> {
        let start = cursor.map_or("-".to_owned(), |c| format!("({c}"));
        let entries: Vec<(String, HashMap<String, String>)> = self
            .run(move |c| async move { redis::cmd("XRANGE").arg(&key).arg(&start).arg("+").arg("COUNT").arg(count).query_async(c).await }.boxed())
            .await?;
        Ok(entries.into_iter().filter_map(|(id, mut fields)| fields.remove("e").map(|e| (id, e))).collect())
    }

    /// The id of a stream's last entry (`0-0` for an empty stream): a cursor that reads on from
    /// now.
    async fn end_of(&self, key: String) -> Result<String, StoreError> {
        let last: Vec<(String, HashMap<String, String>)> = self
            .run(move |c| async move { redis::cmd("XREVRANGE").arg(&key).arg("+").arg("-").arg("COUNT").arg(1).query_async(c).await }.boxed())
            .await?;
        Ok(last.first().map_or("0-0".to_owned(), |(id, _)| id.clone()))
    }

    async fn append(&self, key: String, cap: usize, json: String) -> Result<(), StoreError> {
        let _: String = self
            .run(move |c| {
                async move { redis::cmd("XADD").arg(&key).arg("MAXLEN").arg("~").arg(cap).arg("*").arg("e").arg(&json).query_async(c).await }.boxed()
            })
            .await?;
        Ok(())
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
                .map_err(|_| Self::unavailable("no answer within 5 s"))?
                .map_err(Self::unavailable)?;
            pubsub.subscribe(&channel).await.map_err(Self::unavailable)?;
            let stream = pubsub.into_on_message().filter_map(|msg| async move { msg.get_payload::<u64>().ok() });
            Ok(stream.boxed())
        }
        .boxed()
    }

    fn rollout<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Option<StoredRollout>, StoreError>> {
        async move {
            let key = self.key("rollout", model);
            let json: Option<String> = self.run(move |c| async move { redis::cmd("HGET").arg(&key).arg("record").query_async(c).await }.boxed()).await?;
            json.map(|j| serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(format!("the rollout record: {e}")))).transpose()
        }
        .boxed()
    }

    fn save_rollout<'a>(&'a self, record: &'a StoredRollout, write: Write<'a>, decisions: &'a [Decision]) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let model = &record.model;
            let json = serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let (mode, leader) = match write {
                Write::Create => ("create", ""),
                Write::Update { leader } => ("update", leader.unwrap_or("")),
            };
            let keys = vec![self.key("rollout", model), format!("{}:decisions", self.key("rollout", model)), self.key("lease", model)];
            let mut args = vec![
                mode.to_owned(),
                record.id.to_string(),
                record.seq.to_string(),
                if record.is_done() { "1" } else { "0" }.to_owned(),
                json,
                leader.to_owned(),
                self.key("traffic", model),
            ];
            args.extend(decisions.iter().map(|d| serde_json::json!({"rollout": record.id, "decision": d}).to_string()));
            let answer: Vec<String> = self.eval(SAVE_ROLLOUT_SCRIPT, keys, args).await?;
            match answer.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                ["ok"] => Ok(()),
                ["not_leader", holder] => Err(StoreError::NotLeader { holder: (*holder).to_owned() }),
                ["in_progress", id] => Err(StoreError::Stale(format!("model '{model}' already has a rollout in progress (rollout {id}); abort it first"))),
                ["none"] => Err(StoreError::Stale(format!("model '{model}' has no rollout"))),
                ["stale", id, seq] => Err(StoreError::Stale(format!(
                    "rollout {id} is at seq {seq} (this write was for rollout {} at seq {})",
                    record.id,
                    record.seq.saturating_sub(1)
                ))),
                other => Err(StoreError::Corrupt(format!("unexpected answer from the rollout script: {other:?}"))),
            }
        }
        .boxed()
    }

    fn rollout_history<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Vec<(i64, Decision)>, StoreError>> {
        async move {
            let key = format!("{}:decisions", self.key("rollout", model));
            let rows: Vec<String> = self.run(move |c| async move { redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query_async(c).await }.boxed()).await?;
            #[derive(serde::Deserialize)]
            struct Row {
                rollout: i64,
                decision: Decision,
            }
            rows.iter()
                .map(|r| serde_json::from_str::<Row>(r).map(|r| (r.rollout, r.decision)).map_err(|e| StoreError::Corrupt(format!("a rollout decision: {e}"))))
                .collect()
        }
        .boxed()
    }

    fn lease<'a>(&'a self, model: &'a str, holder: &'a str, ttl: Duration) -> BoxFuture<'a, Result<Lease, StoreError>> {
        async move {
            let ttl_ms = ttl.as_millis().max(1).to_string();
            let now: String = self.eval(LEASE_SCRIPT, vec![self.key("lease", model)], vec![holder.to_owned(), ttl_ms]).await?;
            Ok(Lease { mine: now == holder, holder: now })
        }
        .boxed()
    }

    fn now_ms<'a>(&'a self) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            // Redis' own clock (`TIME`: seconds and microseconds), the one its leases and
            // liveness already run on.
            let (seconds, micros): (u64, u64) = self.run(|c| async move { redis::cmd("TIME").query_async(c).await }.boxed()).await?;
            Ok(seconds * 1000 + micros / 1000)
        }
        .boxed()
    }

    fn release<'a>(&'a self, model: &'a str, holder: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let _: i64 = self.eval(RELEASE_SCRIPT, vec![self.key("lease", model)], vec![holder.to_owned()]).await?;
            Ok(())
        }
        .boxed()
    }

    fn report<'a>(&'a self, model: &'a str, report: &'a ReplicaReport) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let json = serde_json::to_string(report).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let key = self.key("replicas", model);
            let _: i64 = self.eval(REPORT_SCRIPT, vec![key.clone(), format!("{key}:seen")], vec![report.replica.clone(), json]).await?;
            Ok(())
        }
        .boxed()
    }

    fn replicas<'a>(&'a self, model: &'a str, live: Duration) -> BoxFuture<'a, Result<Vec<ReplicaReport>, StoreError>> {
        async move {
            let key = self.key("replicas", model);
            let reports: Vec<Option<String>> =
                self.eval(REPLICAS_SCRIPT, vec![key.clone(), format!("{key}:seen")], vec![live.as_millis().to_string()]).await?;
            reports
                .into_iter()
                .flatten()
                .map(|r| serde_json::from_str(&r).map_err(|e| StoreError::Corrupt(format!("a replica report: {e}"))))
                .collect()
        }
        .boxed()
    }

    fn push_evidence<'a>(&'a self, model: &'a str, evidence: &'a Evidence) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let json = serde_json::to_string(evidence).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            self.append(self.key("evidence", model), 2_000, json).await
        }
        .boxed()
    }

    fn evidence<'a>(&'a self, model: &'a str, cursor: Option<&'a str>) -> BoxFuture<'a, Result<Page<Evidence>, StoreError>> {
        async move {
            let key = self.key("evidence", model);
            let Some(cursor) = cursor else { return Ok((vec![], Some(self.end_of(key).await?))) };
            let entries = self.read_stream(key, Some(cursor.to_owned()), 10_000).await?;
            let next = entries.last().map_or(cursor.to_owned(), |(id, _)| id.clone());
            // An entry this version cannot read (written by a newer one) is skipped, not fatal.
            let found = entries.iter().filter_map(|(_, e)| serde_json::from_str(e).ok()).collect();
            Ok((found, Some(next)))
        }
        .boxed()
    }

    fn push_labels<'a>(&'a self, model: &'a str, labels: &'a [(String, super::Feedback)]) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            if labels.is_empty() {
                return Ok(());
            }
            let json = serde_json::to_string(labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            self.append(self.key("labels", model), 10_000, json).await
        }
        .boxed()
    }

    fn labels<'a>(&'a self, model: &'a str, cursor: Option<&'a str>) -> BoxFuture<'a, Result<Page<(String, super::Feedback)>, StoreError>> {
        async move {
            let key = self.key("labels", model);
            let Some(cursor) = cursor else { return Ok((vec![], Some(self.end_of(key).await?))) };
            let entries = self.read_stream(key, Some(cursor.to_owned()), 1_000).await?;
            let next = entries.last().map_or(cursor.to_owned(), |(id, _)| id.clone());
            let labels = entries.iter().filter_map(|(_, e)| serde_json::from_str::<Vec<(String, super::Feedback)>>(e).ok()).flatten().collect();
            Ok((labels, Some(next)))
        }
        .boxed()
    }
}
