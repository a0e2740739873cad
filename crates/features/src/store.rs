//! The feature store: Redis behind an in-process TTL cache.
//!
//! - One round trip per batch: the keys a batch misses in the cache go in one pipeline
//!   (`HGETALL` per key for hashes) or one `MGET` (JSON values).
//! - Every call has a timeout; a request never waits longer than `timeout` for the store.
//! - The connection lives in the background: a monitor connects, pings every second, drops the
//!   connection on failure and reconnects, and publishes the state (readiness reads it). While
//!   disconnected, requests fail (or fall back) at once instead of waiting.
//! - The cache holds what keys store (never "not found"), for `cache_ttl`, up to
//!   `cache_max_entries` keys; hits, misses and evictions are counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One round trip to the store for a request's entities: when, how many keys, and how it ended
/// (`ok`, `error`, `timeout`), for the request's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundTrip {
    pub started: Instant,
    pub ended: Instant,
    pub keys: usize,
    pub outcome: &'static str,
}

use arc_swap::ArcSwapOption;
use moka::notification::RemovalCause;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::MultiplexedConnection;

use crate::spec::{Defaulted, Fetched, Storage, Stored};

/// How to reach the store and how much to cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...`.
    pub url: String,
    /// The longest a request waits for the store.
    pub timeout: Duration,
    pub cache_ttl: Duration,
    pub cache_max_entries: u64,
}

/// The feature metrics (registered in the server's registry).
#[derive(Clone)]
pub struct FeatureMetrics {
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_evictions: IntCounterVec,
    pub store_duration: Histogram,
    pub store_errors: IntCounterVec,
    pub store_up: IntGauge,
    pub defaults: IntCounter,
}

impl FeatureMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let cache = IntCounterVec::new(Opts::new("modelship_feature_cache_requests_total", "Feature lookups by cache result (hit, miss)"), &["result"])?;
        let cache_evictions = IntCounterVec::new(
            Opts::new("modelship_feature_cache_evictions_total", "Cached entities evicted, by cause (size, expired)"),
            &["cause"],
        )?;
        let store_duration = Histogram::with_opts(
            HistogramOpts::new("modelship_feature_store_duration_seconds", "Feature store round trips (one per request batch)")
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new("modelship_feature_store_errors_total", "Feature store failures by kind (timeout, unavailable, error)"),
            &["kind"],
        )?;
        let store_up = IntGauge::new("modelship_feature_store_up", "1 while the feature store answers its pings")?;
        let defaults = IntCounter::new("modelship_feature_defaults_total", "Entities answered with default features")?;
        registry.register(Box::new(cache.clone()))?;
        registry.register(Box::new(cache_evictions.clone()))?;
        registry.register(Box::new(store_duration.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        registry.register(Box::new(store_up.clone()))?;
        registry.register(Box::new(defaults.clone()))?;
        Ok(FeatureMetrics {
            cache_hits: cache.with_label_values(&["hit"]),
            cache_misses: cache.with_label_values(&["miss"]),
            cache_evictions,
            store_duration,
            store_errors,
            store_up,
            defaults,
        })
    }

    pub fn count_defaults(&self, defaulted: &[Defaulted]) {
        self.defaults.inc_by(defaulted.len() as u64);
    }
}

pub struct Store {
    client: redis::Client,
    /// The address without credentials, for messages.
    shown: String,
    conn: ArcSwapOption<MultiplexedConnection>,
    connected: AtomicBool,
    cache: moka::sync::Cache<String, Arc<Stored>>,
    timeout: Duration,
    pub metrics: FeatureMetrics,
}

/// `redis://user:secret@host:6379` without the credentials.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl Store {
    /// Parses the URL; connecting happens in [`Store::monitor`].
    pub fn new(config: &StoreConfig, metrics: FeatureMetrics) -> Result<Arc<Store>, String> {
        let shown = redact(&config.url);
        let client = redis::Client::open(config.url.as_str()).map_err(|e| format!("features.store_url {shown}: {e}"))?;
        let evictions = metrics.cache_evictions.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(config.cache_max_entries)
            .time_to_live(config.cache_ttl)
            .eviction_listener(move |_key, _value, cause| match cause {
                RemovalCause::Size => evictions.with_label_values(&["size"]).inc(),
                RemovalCause::Expired => evictions.with_label_values(&["expired"]).inc(),
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            .build();
        Ok(Arc::new(Store {
            client,
            shown,
            conn: ArcSwapOption::empty(),
            connected: AtomicBool::new(false),
            cache,
            timeout: config.timeout,
            metrics,
        }))
    }

    /// Whether the store answered its last ping.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn set_connected(&self, up: bool) {
        let was = self.connected.swap(up, Ordering::Relaxed);
        self.metrics.store_up.set(i64::from(up));
        if was != up {
            if up {
                tracing::info!(store = %self.shown, "feature store connected");
            } else {
                tracing::warn!(store = %self.shown, "feature store disconnected; requests needing it fail or fall back until it returns");
            }
        }
    }

    /// Connects, pings every second, reconnects after a failure. Runs until the process ends.
    pub async fn monitor(self: Arc<Self>) {
        // Connecting and pinging may take longer than a request may wait, not less than 500 ms.
        let probe_timeout = self.timeout.max(Duration::from_millis(500));
        loop {
            let healthy = match self.conn.load_full() {
                None => match tokio::time::timeout(probe_timeout, self.client.get_multiplexed_async_connection()).await {
                    Ok(Ok(conn)) => {
                        self.conn.store(Some(Arc::new(conn)));
                        true
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(store = %self.shown, error = %e, "cannot connect to the feature store");
                        false
                    }
                    Err(_) => false,
                },
                Some(conn) => {
                    let mut conn = (*conn).clone();
                    let ping = redis::cmd("PING");
                    let answer = tokio::time::timeout(probe_timeout, ping.query_async::<String>(&mut conn)).await;
                    matches!(answer, Ok(Ok(_)))
                }
            };
            if !healthy {
                self.conn.store(None);
            }
            self.set_connected(healthy);
            tokio::time::sleep(Duration::from_secs(if healthy { 1 } else { 0 }) + Duration::from_millis(250)).await;
        }
    }

    /// What each key holds now in the store, past the cache (which is refreshed with it).
    pub async fn fetch_fresh(&self, keys: &[String], storage: Storage, trips: &mut Vec<RoundTrip>) -> Fetched {
        for key in keys {
            self.cache.invalidate(key);
        }
        self.fetch_noting_hits(keys, storage, &mut Vec::new(), trips).await
    }

    /// What each key holds: from the cache, and the misses in one round trip.
    pub async fn fetch(&self, keys: &[String], storage: Storage) -> Fetched {
        self.fetch_noting_hits(keys, storage, &mut Vec::new(), &mut Vec::new()).await
    }

    /// [`Store::fetch`], adding to `hits` the keys the cache answered (what it holds may be
    /// older than the store's) and to `trips` the round trip to the store, when one was made.
    pub async fn fetch_noting_hits(&self, keys: &[String], storage: Storage, hits: &mut Vec<String>, trips: &mut Vec<RoundTrip>) -> Fetched {
        let mut found: HashMap<String, Option<Arc<Stored>>> = HashMap::with_capacity(keys.len());
        let mut misses = Vec::new();
        for key in keys {
            match self.cache.get(key) {
                Some(stored) => {
                    self.metrics.cache_hits.inc();
                    hits.push(key.clone());
                    found.insert(key.clone(), Some(stored));
                }
                None => {
                    self.metrics.cache_misses.inc();
                    misses.push(key.clone());
                }
            }
        }
        if misses.is_empty() {
            return Ok(found);
        }
        let Some(conn) = self.conn.load_full() else {
            self.metrics.store_errors.with_label_values(&["unavailable"]).inc();
            return Err(format!("not connected to {}", self.shown));
        };
        let mut conn = (*conn).clone();
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, async {
            match storage {
                Storage::Hash => {
                    let mut pipe = redis::pipe();
                    for key in &misses {
                        pipe.cmd("HGETALL").arg(key);
                    }
                    pipe.query_async::<Vec<HashMap<String, String>>>(&mut conn)
                        .await
                        .map(|maps| maps.into_iter().map(|m| (!m.is_empty()).then_some(Stored::Hash(m))).collect::<Vec<_>>())
                }
                Storage::Json => redis::cmd("MGET").arg(&misses).query_async::<Vec<Option<String>>>(&mut conn).await.map(|values| {
                    values
                        .into_iter()
                        .map(|v| {
                            v.map(|text| match serde_json::from_str::<serde_json::Value>(&text) {
                                Ok(serde_json::Value::Object(map)) => Stored::Json(map),
                                _ => Stored::NotAnObject(text.chars().take(64).collect()),
                            })
                        })
                        .collect()
                }),
            }
        })
        .await;
        self.metrics.store_duration.observe(started.elapsed().as_secs_f64());
        let outcome = match &answer {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "error",
            Err(_) => "timeout",
        };
        trips.push(RoundTrip { started, ended: Instant::now(), keys: misses.len(), outcome });
        let values = match answer {
            Ok(Ok(values)) => values,
            Ok(Err(e)) => {
                self.metrics.store_errors.with_label_values(&["error"]).inc();
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    // The monitor reconnects; until then requests fail fast.
                    self.conn.store(None);
                    self.set_connected(false);
                }
                return Err(format!("{} answered with an error: {e}", self.shown));
            }
            Err(_) => {
                self.metrics.store_errors.with_label_values(&["timeout"]).inc();
                return Err(format!("{} did not answer within {} ms", self.shown, self.timeout.as_millis()));
            }
        };
        for (key, value) in misses.into_iter().zip(values) {
            let value = value.map(Arc::new);
            if let Some(v) = &value {
                self.cache.insert(key.clone(), Arc::clone(v));
            }
            found.insert(key, value);
        }
        Ok(found)
    }

    /// Writes entities (for `modelship features load`): one pipeline per call, no cache. The
    /// connection is made by the first call and kept for the next ones.
    pub async fn write(&self, rows: &[(String, Vec<(String, String)>)], storage: Storage) -> Result<(), String> {
        let mut conn = match self.conn.load_full() {
            Some(conn) => (*conn).clone(),
            None => {
                let conn = tokio::time::timeout(Duration::from_secs(10), self.client.get_multiplexed_async_connection())
                    .await
                    .map_err(|_| format!("{} did not accept a connection within 10 s", self.shown))?
                    .map_err(|e| format!("cannot connect to {}: {e}", self.shown))?;
                self.conn.store(Some(Arc::new(conn.clone())));
                conn
            }
        };
        let mut pipe = redis::pipe();
        for (key, fields) in rows {
            match storage {
                Storage::Hash => {
                    pipe.cmd("DEL").arg(key).ignore();
                    pipe.cmd("HSET").arg(key);
                    for (f, v) in fields {
                        pipe.arg(f).arg(v);
                    }
                    pipe.ignore();
                }
                Storage::Json => {
                    let object: serde_json::Map<String, serde_json::Value> = fields
                        .iter()
                        .map(|(f, v)| (f.clone(), v.parse::<f64>().ok().and_then(|n| serde_json::Number::from_f64(n).map(serde_json::Value::Number)).unwrap_or_else(|| serde_json::Value::String(v.clone()))))
                        .collect();
                    pipe.cmd("SET").arg(key).arg(serde_json::Value::Object(object).to_string()).ignore();
                }
            }
        }
        tokio::time::timeout(Duration::from_secs(60), pipe.query_async::<()>(&mut conn))
            .await
            .map_err(|_| format!("{} did not take the batch within 60 s", self.shown))?
            .map_err(|e| format!("{} refused the batch: {e}", self.shown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact("redis://user:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
