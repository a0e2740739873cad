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
//!
//! **Sentinel.** `redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB][?wait=N]`
//! asks the Sentinels for the primary of `SERVICE` (checking with `ROLE` that it is one) at
//! each connection, so after a failover the next request reconnects to the new primary (the
//! old one refuses writes, `READONLY`, or is gone, and either drops the connection). Redis
//! replicates asynchronously: a write the primary acknowledged can be lost if it fails before a
//! replica received it. So every write that matters (a revision, a rollout record with its
//! decisions, a lease taken) is followed by `WAIT N` (default 1): one that no replica
//! acknowledged within [`WAIT_FOR`] is reported as a failed write, and the writer finds out
//! at its next read whether it survived (the rollout loop re-reads its record; a replica
//! whose revision the store no longer holds applies the store's, see `Traffic::sync`). What
//! can still be lost, and why no step is taken twice, is in `docs/fleet.md`.

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
    source: Source,
    /// Replicas that must acknowledge a write that matters (`WAIT`): 0 for a lone Redis.
    wait: usize,
    prefix: String,
    /// One multiplexed connection, made on first use and again after a failure, with a number
    /// that tells it from the ones before it. Requests run on clones of it, concurrently: the
    /// lock is held only to take it (or make it), never across a request.
    conn: tokio::sync::Mutex<Option<(u64, redis::aio::MultiplexedConnection)>>,
    connections: std::sync::atomic::AtomicU64,
}

/// Where the store's primary is: one Redis, or the one the Sentinels name now.
enum Source {
    Direct(redis::Client),
    /// The Sentinel client caches its connections to the Sentinels; it is asked again for the
    /// primary's address at every new connection.
    Sentinel { client: tokio::sync::Mutex<redis::sentinel::SentinelClient>, service: String },
}

/// How long a write that matters waits for its replicas' acknowledgement (`WAIT`).
const WAIT_FOR: Duration = Duration::from_secs(2);

/// A `redis+sentinel://` URL, read: the Sentinels' addresses, the service, the primary's
/// database and password, and how many replicas acknowledge a write.
#[derive(Debug, PartialEq)]
pub(crate) struct SentinelUrl {
    pub sentinels: Vec<(String, u16)>,
    pub service: String,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub wait: usize,
}

impl SentinelUrl {
    pub(crate) fn parse(url: &str) -> Result<SentinelUrl, String> {
        const FORM: &str = "redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB][?wait=N]";
        let rest = url.strip_prefix("redis+sentinel://").ok_or_else(|| format!("not a {FORM} URL"))?;
        let (rest, query) = rest.split_once('?').map_or((rest, None), |(r, q)| (r, Some(q)));
        let (userinfo, rest) = rest.rsplit_once('@').map_or((None, rest), |(u, r)| (Some(u), r));
        let (hosts, path) = rest.split_once('/').ok_or_else(|| format!("it names no service: {FORM}"))?;
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            let (name, port) = host.rsplit_once(':').map_or((host, Some("26379")), |(h, p)| (h, Some(p)));
            let port: u16 = port.and_then(|p| p.parse().ok()).filter(|p| *p != 0).ok_or_else(|| format!("'{host}' is not HOST:PORT: {FORM}"))?;
            if name.is_empty() || name.contains(['[', ']', '/']) {
                return Err(format!("'{host}' is not HOST:PORT (IPv6 addresses are not supported here; use a name): {FORM}"));
            }
            sentinels.push((name.to_owned(), port));
        }
        let (service, db) = path.split_once('/').map_or((path, None), |(s, d)| (s, Some(d)));
        if service.is_empty() || !service.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(format!("'{service}' is not a Sentinel service name (letters, digits, '.', '_', '-'): {FORM}"));
        }
        let db = match db {
            None | Some("") => 0,
            Some(d) => d.parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(|| format!("'{d}' is not a database number: {FORM}"))?,
        };
        let mut wait = 1;
        for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("wait", n)) => wait = n.parse().ok().filter(|n| *n <= 16).ok_or_else(|| format!("wait={n}: a number of replicas, 0 to 16"))?,
                _ => return Err(format!("'{pair}' is not a known parameter (only wait=N): {FORM}")),
            }
        }
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, password) = u.split_once(':').map_or((u, None), |(u, p)| (u, Some(p)));
                let decode = |s: &str| percent_decode(s).ok_or_else(|| "the password is not valid percent-encoding".to_owned());
                (Some(decode(user)?).filter(|u| !u.is_empty()), password.map(decode).transpose()?)
            }
        };
        Ok(SentinelUrl { sentinels, service: service.to_owned(), db, username, password, wait })
    }

    fn client(&self) -> redis::RedisResult<redis::sentinel::SentinelClient> {
        use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
        let addresses = self.sentinels.iter().map(|(host, port)| redis::ConnectionAddr::Tcp(host.clone(), *port));
        let mut builder = SentinelClientBuilder::new(addresses, &self.service, SentinelServerType::Master)?.set_client_to_redis_db(self.db);
        if let Some(user) = &self.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        builder.build()
    }
}

/// Waits until `wait` replicas hold this connection's writes (`WAIT`); a write that none
/// acknowledged within [`WAIT_FOR`] is reported failed, since a failover now would lose it.
/// Nothing to wait for on a lone Redis (`wait` 0).
async fn replicated(conn: &mut redis::aio::MultiplexedConnection, wait: usize) -> redis::RedisResult<()> {
    if wait == 0 {
        return Ok(());
    }
    let acknowledged: usize = redis::cmd("WAIT").arg(wait).arg(WAIT_FOR.as_millis() as u64).query_async(conn).await?;
    if acknowledged < wait {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "write not replicated",
            format!("{acknowledged} of {wait} replicas acknowledged it within {} s; a failover now could lose it", WAIT_FOR.as_secs()),
        )));
    }
    Ok(())
}

/// Whether a script answered `{ok}`: it wrote.
#[allow(clippy::ptr_arg)] // the shape `eval_then` takes: `fn(&T, &[String])` with T = Vec<String>
fn answered_ok(answer: &Vec<String>, _args: &[String]) -> bool {
    answer.len() == 1 && answer[0] == "ok"
}

/// `%XX` sequences decoded (a password in a URL); `None` when one is malformed.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Commits revision ARGV[1] (JSON ARGV[2]) if it is the next one, and, when ARGV[4] names a
/// leader, only while it holds the lease KEYS[3]; publishes it on ARGV[3]. Returns `{ok}`,
/// `{not_leader, HOLDER}`, `{conflict}` (the store is empty and the revision is not 0) or
/// `{conflict, LATEST}`. Redis runs a script atomically: this is the compare and swap, and the
/// lease check is part of it.
const COMMIT_SCRIPT: &str = r"
if ARGV[4] ~= '' then
  local holder = redis.call('GET', KEYS[3])
  if holder ~= ARGV[4] then return {'not_leader', holder or 'nobody'} end
end
local latest = redis.call('GET', KEYS[1])
local wanted = tonumber(ARGV[1])
if (latest == false and wanted == 0) or (latest ~= false and tonumber(latest) == wanted - 1) then
  redis.call('SET', KEYS[1], wanted)
  redis.call('HSET', KEYS[2], wanted, ARGV[2])
  redis.call('PUBLISH', ARGV[3], wanted)
  return {'ok'}
end
if latest == false then return {'conflict'} end
return {'conflict', latest}
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
    /// A store at `url`: `redis://` / `rediss://` (one Redis) or `redis+sentinel://` (the
    /// primary the Sentinels name). Nothing is connected yet.
    pub fn new(url: &str) -> Result<Self, String> {
        let (source, wait) = if url.starts_with("redis+sentinel://") {
            let parsed = SentinelUrl::parse(url).map_err(|e| format!("control store URL '{}': {e}", redact(url)))?;
            let client = parsed.client().map_err(|e| format!("control store URL '{}': {e}", redact(url)))?;
            (Source::Sentinel { client: tokio::sync::Mutex::new(client), service: parsed.service }, parsed.wait)
        } else {
            (Source::Direct(redis::Client::open(url).map_err(|e| format!("control store URL '{}': {e}", redact(url)))?), 0)
        };
        Ok(RedisStore { source, wait, prefix: "modelship".to_owned(), conn: tokio::sync::Mutex::new(None), connections: std::sync::atomic::AtomicU64::new(0) })
    }

    /// A client for the primary: the one Redis, or the one the Sentinels name now (checked
    /// with `ROLE`).
    async fn client(&self) -> Result<redis::Client, StoreError> {
        match &self.source {
            Source::Direct(client) => Ok(client.clone()),
            Source::Sentinel { client, service } => {
                let mut sentinels = client.lock().await;
                tokio::time::timeout(REDIS_TIMEOUT, sentinels.async_get_client())
                    .await
                    .map_err(|_| Self::unavailable(format!("no Sentinel named the primary of '{service}' within {} s", REDIS_TIMEOUT.as_secs())))?
                    .map_err(|e| Self::unavailable(format!("the Sentinels name no primary of '{service}': {e}")))
            }
        }
    }

    /// The traffic keys of `model`: the latest number, the revisions hash, the channel.
    fn keys(&self, model: &str) -> (String, String, String) {
        let base = self.key("traffic", model);
        (format!("{base}:latest"), format!("{base}:revisions"), base)
    }

    fn unavailable(e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable { store: "redis", reason: e.to_string() }
    }

    /// A request that got no answer within [`REDIS_TIMEOUT`].
    fn no_answer() -> StoreError {
        Self::unavailable(format!("no answer within {} s", REDIS_TIMEOUT.as_secs()))
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
            Err(_) => Self::no_answer(),
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
            let client = self.client().await?;
            let conn = tokio::time::timeout(REDIS_TIMEOUT, client.get_multiplexed_async_connection_with_config(&config))
                .await
                .map_err(|_| Self::no_answer())?
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
        self.eval_then(script, keys, args, |_, _| false).await
    }

    /// Runs a Lua script; when `wrote` says its answer means it wrote, waits for the replicas
    /// to hold the write (`WAIT`, on the same connection) before answering.
    async fn eval_then<T: redis::FromRedisValue + Send + 'static>(
        &self,
        script: &'static str,
        keys: Vec<String>,
        args: Vec<String>,
        wrote: fn(&T, &[String]) -> bool,
    ) -> Result<T, StoreError> {
        let wait = self.wait;
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
                let answer: T = cmd.query_async(c).await?;
                if wrote(&answer, &args) {
                    replicated(c, wait).await?;
                }
                Ok(answer)
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

    fn commit<'a>(&'a self, r: &'a Revision, leader: Option<&'a str>) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let (latest, revisions, channel) = self.keys(&r.model);
            let json = serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let wanted = r.revision;
            let keys = vec![latest, revisions, self.key("lease", &r.model)];
            let args = vec![wanted.to_string(), json, channel, leader.unwrap_or("").to_owned()];
            let answer: Vec<String> = self.eval_then(COMMIT_SCRIPT, keys, args, answered_ok).await?;
            match answer.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                ["ok"] => Ok(()),
                ["not_leader", holder] => Err(StoreError::NotLeader { holder: (*holder).to_owned() }),
                ["conflict"] => Err(StoreError::Conflict { wanted, latest: None }),
                ["conflict", n] => {
                    let latest = n.parse().map_err(|_| StoreError::Corrupt(format!("the latest revision of model '{}' is '{n}'", r.model)))?;
                    Err(StoreError::Conflict { wanted, latest: Some(latest) })
                }
                other => Err(StoreError::Corrupt(format!("unexpected answer from the commit script: {other:?}"))),
            }
        }
        .boxed()
    }

    fn changes<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<BoxStream<'static, u64>, StoreError>> {
        async move {
            let (_, _, channel) = self.keys(model);
            let client = self.client().await?;
            let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| Self::no_answer())?
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
            let answer: Vec<String> = self.eval_then(SAVE_ROLLOUT_SCRIPT, keys, args, answered_ok).await?;
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
            // Taken or renewed: replicated before it counts, so a failover does not hand a lease
            // this replica acts on to another.
            let now: String = self.eval_then(LEASE_SCRIPT, vec![self.key("lease", model)], vec![holder.to_owned(), ttl_ms], |now: &String, args| *now == args[0]).await?;
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
