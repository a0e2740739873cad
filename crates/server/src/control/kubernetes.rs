//! The fleet's store in the Kubernetes API (the cargo feature `kubernetes`): ConfigMaps and one
//! `Lease` per model, in one namespace. For a model M, whose objects are named by
//! [`object_name`] (`modelship-traffic-fraud-1f7c8e4b` for `fraud`):
//! - `modelship-traffic-M`: data `latest` (the latest revision number) and `revision-N` (each
//!   kept revision's JSON), the last [`REVISIONS_KEPT`] within [`REVISION_BYTES`];
//! - `modelship-rollout-M`: data `record` (the [`StoredRollout`]) and `decisions-ID` (a JSON list
//!   of each kept rollout's decisions), within [`DECISION_BYTES`], oldest rollouts dropped first;
//! - `modelship-lease-M`: a `coordination.k8s.io/v1` Lease (`holderIdentity`,
//!   `leaseDurationSeconds`, `renewTime`, `acquireTime`, `leaseTransitions`), as client-go's
//!   leader election keeps it; it has expired when `renewTime + leaseDurationSeconds` is past;
//! - `modelship-replicas-M`: data `r-HASH` per replica, its report and when it was written;
//! - `modelship-evidence-HASH`, one per replica and model ([`evidence_object`]), labelled
//!   `modelship.io/model=M` and `modelship.io/log=evidence`: that replica's evidence log, which
//!   it alone writes, so a fleet of any size never drops a replica's windows for another's; the
//!   leader lists them in one request and reads each from its own cursor;
//! - `modelship-labels-M`: a bounded log shared by every replica.
//!
//! A log is data `last` (the sequence number of the newest entry, its cursor) and `e-N` / `l-N`
//! entries, oldest dropped first.
//!
//! Every write is a replace carrying the `resourceVersion` it read (or a create, which fails when
//! the object exists): the API server refuses it with 409 when the object changed meanwhile, so
//! this is the same compare and swap as Redis's scripts, done by the API server. A commit or a
//! rollout write that loses is refused ([`StoreError::Conflict`], [`StoreError::Stale`]); an
//! append (report, evidence, labels) reads again and retries, because it races with nobody's
//! meaning, only with other appends.
//!
//! The leader check is not atomic with the rollout write: the Lease and the rollout ConfigMap are
//! two objects and Kubernetes has no transaction over two. A leader write reads the Lease (its
//! holder and that it has not expired), then reads and replaces the rollout ConfigMap. A replica
//! whose lease expires between the two can still land that one write, but only if nobody wrote
//! the record since it read it: the new leader's writes carry the record's `resourceVersion` too,
//! so whichever lands second is refused and re-reads, and `seq` never forks. What the fencing
//! leaves is one write of the old leader after its expiry, decided from the latest record; the
//! control loop renews at a third of the time to live, so that write was decided while it still
//! led. Making it atomic would take the lease inside the rollout object (holder and expiry as
//! fields of `modelship-rollout-M`, so one replace checks both), giving up the standard Lease.
//!
//! Times (reports, lease expiry) are this replica's clock, as client-go's leader election reads
//! them: the fleet's clocks must agree to well within the lease's time to live (NTP does).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::{Lease as LeaseObject, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use modelship_rollout::engine::Decision;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::check_write;
use super::{ControlStore, Evidence, Lease, Page, ReplicaReport, Revision, StoreError, StoredRollout, Write};

/// How long one store call (all its requests) may take before the store counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Revisions kept in the traffic ConfigMap (a Kubernetes object holds at most 1 MiB): the last
/// 100, fewer when they hold more than [`REVISION_BYTES`]. `history` and `rollback` see these.
pub const REVISIONS_KEPT: usize = 100;
pub const REVISION_BYTES: usize = 512 * 1024;
/// The rollout ConfigMap's decisions: the oldest rollouts' go first, then, for a rollout that
/// alone is larger, its oldest decisions.
pub const DECISION_BYTES: usize = 640 * 1024;
const ROLLOUTS_KEPT: usize = 50;
/// Each replica's evidence log: at most this many entries and bytes. An entry is one replica's
/// thinned window of half an analysis interval (up to ~70 KB), so the bytes bound first: a busy
/// replica's log holds about three intervals, which the leader reads every interval. The
/// leader's read lists every replica's log, so the bound is also what one replica adds to it.
const EVIDENCE_KEPT: usize = 200;
const EVIDENCE_BYTES: usize = 256 * 1024;
/// The label that tells an evidence log from the model's other objects.
const LOG_LABEL: &str = "modelship.io/log";
/// The labels log: batches of labels handed on.
const LABELS_KEPT: usize = 1_000;
const LABEL_BYTES: usize = 512 * 1024;
/// A replica silent this long is dropped from the replicas ConfigMap (pods are renamed on every
/// restart, so the map would otherwise only grow).
const REPLICA_FORGOTTEN_MS: u64 = 3_600_000;
/// Appends that lost the race to another replica's read again, this many times in all.
const APPEND_TRIES: usize = 8;
/// The API server ends a watch after this many seconds; it is then resumed.
const WATCH_SECONDS: u32 = 290;
const FIELD_MANAGER: &str = "modelship";

/// The store in one namespace of the Kubernetes API (see the module's documentation).
pub struct KubernetesStore {
    /// `None`: the client's default (the pod's service account namespace, else the kubeconfig
    /// context's).
    namespace: Option<String>,
    /// Made on first use, like Redis's connection, so that opening reads no configuration.
    client: tokio::sync::OnceCell<kube::Client>,
}

/// The replicas ConfigMap's entry for one replica.
#[derive(Serialize, Deserialize)]
struct Heard {
    at_ms: u64,
    report: ReplicaReport,
}

/// The Kubernetes name of `what`'s object for `model`: `modelship-WHAT-SLUG` (see [`model_slug`]).
pub fn object_name(what: &str, model: &str) -> String {
    format!("modelship-{what}-{}", model_slug(model))
}

/// The ConfigMap holding `replica`'s evidence log for `model`: `modelship-evidence-` and 16 hex
/// digits of the SHA-256 of both names (the names themselves are in its labels and data).
pub fn evidence_object(model: &str, replica: &str) -> String {
    format!("modelship-evidence-{}", hex::encode(&Sha256::digest(format!("{model}\n{replica}").as_bytes())[..8]))
}

/// A model's name as DNS-1123 (lowercase letters, digits and `-`, as object names and label
/// values need): lowercased, every other character (`.` and `_`) as `-`, at most 34 of them,
/// then 8 hex digits of the SHA-256 of the exact name, so `Fraud`, `fraud`, `fr.aud` and
/// `fr_aud` never share an object. At most 43 characters, starting and ending alphanumeric, so
/// every object name is at most 62, a DNS-1123 label.
pub fn model_slug(model: &str) -> String {
    let readable: String =
        model.chars().take(34).map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let hash = hex::encode(&Sha256::digest(model.as_bytes())[..4]);
    match readable.trim_start_matches('-') {
        "" => hash,
        readable => format!("{readable}-{hash}"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn unavailable(reason: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable { store: "kubernetes", reason: reason.to_string() }
}

/// A failed request, in words (an RBAC refusal names the verb and resource in its message).
fn failed(e: kube::Error) -> StoreError {
    match e {
        kube::Error::Api(status) => unavailable(format!("the API server answered {} {}: {}", status.code, status.reason, status.message)),
        e => unavailable(e),
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// Entries `PREFIX<N>` of a ConfigMap's data: (N, key), by N.
fn numbered<'a>(data: &'a BTreeMap<String, String>, prefix: &str) -> Vec<(u64, &'a String)> {
    let mut found: Vec<(u64, &String)> = data.keys().filter_map(|k| Some((k.strip_prefix(prefix)?.parse().ok()?, k))).collect();
    found.sort_unstable();
    found
}

/// Drops the oldest `PREFIX<N>` entries until at most `count` remain holding at most `bytes`;
/// the newest always stays. Returns how many were dropped.
fn trim(data: &mut BTreeMap<String, String>, prefix: &str, count: usize, bytes: usize) -> usize {
    let entries: Vec<(String, usize)> = numbered(data, prefix).into_iter().map(|(_, k)| (k.clone(), k.len() + data[k].len())).collect();
    let (mut kept, mut total) = (entries.len(), entries.iter().map(|(_, size)| size).sum::<usize>());
    let mut dropped = 0;
    for (key, size) in entries {
        if kept <= 1 || (kept <= count && total <= bytes) {
            break;
        }
        data.remove(&key);
        (kept, total, dropped) = (kept - 1, total - size, dropped + 1);
    }
    dropped
}

/// The `last` sequence number of a log ConfigMap (0: nothing appended yet).
fn last_of(data: &BTreeMap<String, String>) -> Result<u64, StoreError> {
    data.get("last").map_or(Ok(0), |l| l.parse().map_err(|e| corrupt("a log's `last`", e)))
}

/// The latest revision number in a traffic ConfigMap.
fn latest_of(data: &BTreeMap<String, String>) -> Result<Option<u64>, StoreError> {
    data.get("latest").map(|l| l.parse().map_err(|e| corrupt("the traffic ConfigMap's `latest`", e))).transpose()
}

/// The Lease's holder, unless it gave it up or its time ran out.
fn live_holder(spec: &LeaseSpec, now: Timestamp) -> Option<&str> {
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    let end = renewed.0.checked_add(SignedDuration::from_secs(spec.lease_duration_seconds?.into())).ok()?;
    (end >= now).then_some(holder)
}

impl KubernetesStore {
    /// The store in `namespace` (`None`: the client's own), through the in-cluster service
    /// account or KUBECONFIG, read on first use.
    pub fn new(namespace: Option<&str>) -> Self {
        KubernetesStore { namespace: namespace.map(str::to_owned), client: tokio::sync::OnceCell::new() }
    }

    /// The store through `client` (a mocked API server in the tests).
    pub fn with_client(client: kube::Client, namespace: &str) -> Self {
        KubernetesStore { namespace: Some(namespace.to_owned()), client: tokio::sync::OnceCell::new_with(Some(client)) }
    }

    async fn client(&self) -> Result<&kube::Client, StoreError> {
        self.client
            .get_or_try_init(|| async {
                kube::Client::try_default().await.map_err(|e| unavailable(format!("no Kubernetes configuration (in-cluster service account or KUBECONFIG): {e}")))
            })
            .await
    }

    async fn maps(&self) -> Result<Api<ConfigMap>, StoreError> {
        let client = self.client().await?;
        let namespace = self.namespace.as_deref().unwrap_or(client.default_namespace());
        Ok(Api::namespaced(client.clone(), namespace))
    }

    /// Refuses a leader's write unless `leader` holds the model's live lease. Checked before the
    /// write, not with it (see the module's documentation).
    async fn check_leader(&self, model: &str, leader: &str) -> Result<(), StoreError> {
        let lease = self.leases().await?.get_opt(&object_name("lease", model)).await.map_err(failed)?;
        let holder = lease.as_ref().and_then(|l| live_holder(l.spec.as_ref()?, Timestamp::now()));
        if holder != Some(leader) {
            return Err(StoreError::NotLeader { holder: holder.unwrap_or("nobody").to_owned() });
        }
        Ok(())
    }

    async fn leases(&self) -> Result<Api<LeaseObject>, StoreError> {
        let client = self.client().await?;
        let namespace = self.namespace.as_deref().unwrap_or(client.default_namespace());
        Ok(Api::namespaced(client.clone(), namespace))
    }

    /// Runs one store call under [`TIMEOUT`].
    async fn bounded<T>(&self, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        tokio::time::timeout(TIMEOUT, call).await.unwrap_or_else(|_| Err(unavailable("no answer within 2 s")))
    }

    async fn read(api: &Api<ConfigMap>, name: &str) -> Result<Option<ConfigMap>, StoreError> {
        api.get_opt(name).await.map_err(failed)
    }

    /// Writes `data` over what was `read`: a replace carrying its `resourceVersion`, or a create
    /// when there was nothing. `false`: the object changed (or appeared) meanwhile, nothing was
    /// written.
    async fn write(api: &Api<ConfigMap>, name: &str, model: &str, read: Option<&ConfigMap>, data: BTreeMap<String, String>) -> Result<bool, StoreError> {
        Self::write_labelled(api, name, model, read, data, None).await
    }

    /// [`KubernetesStore::write`], with one more label when the object is created.
    async fn write_labelled(
        api: &Api<ConfigMap>,
        name: &str,
        model: &str,
        read: Option<&ConfigMap>,
        data: BTreeMap<String, String>,
        label: Option<(&str, &str)>,
    ) -> Result<bool, StoreError> {
        let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
        let written = match read {
            None => {
                let mut metadata = meta(name, model);
                if let (Some((key, value)), Some(labels)) = (label, metadata.labels.as_mut()) {
                    labels.insert(key.to_owned(), value.to_owned());
                }
                api.create(&params, &ConfigMap { metadata, data: Some(data), ..ConfigMap::default() }).await
            }
            Some(read) => {
                let mut next = read.clone();
                next.metadata.managed_fields = None;
                next.data = Some(data);
                api.replace(name, &params, &next).await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(failed(e)),
        }
    }

    /// Reads `name`, changes its data with `change` and writes it, again from a fresh read while
    /// another replica's write lands in between: an append, which conflicts with nobody.
    async fn append(&self, name: &str, model: &str, change: impl FnMut(&mut BTreeMap<String, String>) -> Result<(), StoreError>) -> Result<(), StoreError> {
        self.append_labelled(name, model, None, change).await
    }

    /// [`KubernetesStore::append`], with one more label when the object is created.
    async fn append_labelled(
        &self,
        name: &str,
        model: &str,
        label: Option<(&str, &str)>,
        mut change: impl FnMut(&mut BTreeMap<String, String>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let api = self.maps().await?;
        for _ in 0..APPEND_TRIES {
            let read = Self::read(&api, name).await?;
            let mut data = read.as_ref().and_then(|m| m.data.clone()).unwrap_or_default();
            change(&mut data)?;
            if Self::write_labelled(&api, name, model, read.as_ref(), data, label).await? {
                return Ok(());
            }
        }
        Err(unavailable(format!("ConfigMap {name} changed under each of {APPEND_TRIES} writes")))
    }

    /// Appends `json` to the log `name` as entry `PREFIX<last + 1>`, dropping the oldest; sets
    /// `fields` beside it, and `label` on the object when it is created.
    #[allow(clippy::too_many_arguments)]
    async fn push_log(
        &self,
        name: &str,
        model: &str,
        prefix: &str,
        json: String,
        (count, bytes): (usize, usize),
        label: Option<(&str, &str)>,
        fields: &[(&str, String)],
    ) -> Result<(), StoreError> {
        if json.len() > bytes {
            return Err(StoreError::Corrupt(format!("an entry of {} bytes does not fit the log {name} (at most {bytes})", json.len())));
        }
        self.append_labelled(name, model, label, |data| {
            let next = last_of(data)? + 1;
            data.insert(format!("{prefix}{next}"), json.clone());
            data.insert("last".to_owned(), next.to_string());
            data.extend(fields.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
            trim(data, prefix, count, bytes);
            Ok(())
        })
        .await
    }

    /// The entries of the log `name` after `cursor`, and the cursor to read on from; with no
    /// cursor, none, only the log's end.
    async fn read_log(&self, name: &str, prefix: &str, cursor: Option<&str>) -> Result<Page<String>, StoreError> {
        let api = self.maps().await?;
        let data = Self::read(&api, name).await?.and_then(|m| m.data).unwrap_or_default();
        let last = last_of(&data)?;
        let Some(after) = cursor.map(|c| c.parse::<u64>().unwrap_or(0)) else {
            return Ok((vec![], Some(last.to_string())));
        };
        let found = entries_after(name, &data, prefix, after).into_iter().cloned().collect();
        Ok((found, Some(last.max(after).to_string())))
    }
}

/// The entries of the log `name` (its `data`) numbered after `after`, oldest first; says so
/// when entries were dropped before they were read.
fn entries_after<'a>(name: &str, data: &'a BTreeMap<String, String>, prefix: &str, after: u64) -> Vec<&'a String> {
    let entries = numbered(data, prefix);
    if let Some((oldest, _)) = entries.first()
        && *oldest > after + 1
        && after < last_of(data).unwrap_or(0)
    {
        tracing::warn!(log = name, replica = ?data.get("replica"), cursor = after, oldest, "entries were dropped from the log before they were read");
    }
    entries.into_iter().filter(|(n, _)| *n > after).map(|(_, k)| &data[k]).collect()
}

/// A new object's metadata: its name, who manages it, and the model's exact name.
fn meta(name: &str, model: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/managed-by".to_owned(), "modelship".to_owned()),
            ("modelship.io/model".to_owned(), model_slug(model)),
        ])),
        annotations: Some(BTreeMap::from([("modelship.io/model".to_owned(), model.to_owned())])),
        ..ObjectMeta::default()
    }
}

impl ControlStore for KubernetesStore {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn latest<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Option<Revision>, StoreError>> {
        self.bounded(async move {
            let data = Self::read(&self.maps().await?, &object_name("traffic", model)).await?.and_then(|m| m.data).unwrap_or_default();
            let Some(latest) = latest_of(&data)? else { return Ok(None) };
            let json = data.get(&format!("revision-{latest}")).ok_or_else(|| StoreError::Corrupt(format!("revision {latest} is named latest but not stored")))?;
            serde_json::from_str(json).map(Some).map_err(|e| corrupt(&format!("revision {latest}"), e))
        })
        .boxed()
    }

    fn history<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Vec<Revision>, StoreError>> {
        self.bounded(async move {
            let data = Self::read(&self.maps().await?, &object_name("traffic", model)).await?.and_then(|m| m.data).unwrap_or_default();
            numbered(&data, "revision-").into_iter().map(|(n, k)| serde_json::from_str(&data[k]).map_err(|e| corrupt(&format!("revision {n}"), e))).collect()
        })
        .boxed()
    }

    fn commit<'a>(&'a self, r: &'a Revision, leader: Option<&'a str>) -> BoxFuture<'a, Result<(), StoreError>> {
        self.bounded(async move {
            if let Some(leader) = leader {
                self.check_leader(&r.model, leader).await?;
            }
            let (api, name) = (self.maps().await?, object_name("traffic", &r.model));
            let json = serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let read = Self::read(&api, &name).await?;
            let mut data = read.as_ref().and_then(|m| m.data.clone()).unwrap_or_default();
            let latest = latest_of(&data)?;
            if r.revision != latest.map_or(0, |l| l + 1) {
                return Err(StoreError::Conflict { wanted: r.revision, latest });
            }
            data.insert("latest".to_owned(), r.revision.to_string());
            data.insert(format!("revision-{}", r.revision), json);
            trim(&mut data, "revision-", REVISIONS_KEPT, REVISION_BYTES);
            if Self::write(&api, &name, &r.model, read.as_ref(), data).await? {
                return Ok(());
            }
            // Another replica committed between the read and the write: say what it stored.
            let now = Self::read(&api, &name).await.ok().flatten().and_then(|m| m.data).and_then(|d| latest_of(&d).ok().flatten());
            Err(StoreError::Conflict { wanted: r.revision, latest: now.or(latest) })
        })
        .boxed()
    }

    fn changes<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<BoxStream<'static, u64>, StoreError>> {
        self.bounded(async move {
            let mut watch = Watch::new(self.maps().await?, &object_name("traffic", model));
            watch.list().await.map_err(failed)?;
            watch.start().await.map_err(failed)?;
            Ok(futures::stream::unfold(watch, Watch::next).boxed())
        })
        .boxed()
    }

    fn rollout<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Option<StoredRollout>, StoreError>> {
        self.bounded(async move {
            let data = Self::read(&self.maps().await?, &object_name("rollout", model)).await?.and_then(|m| m.data).unwrap_or_default();
            data.get("record").map(|j| serde_json::from_str(j).map_err(|e| corrupt("the rollout record", e))).transpose()
        })
        .boxed()
    }

    fn save_rollout<'a>(&'a self, record: &'a StoredRollout, write: Write<'a>, decisions: &'a [Decision]) -> BoxFuture<'a, Result<(), StoreError>> {
        self.bounded(async move {
            let model = record.model.as_str();
            if let Write::Update { leader: Some(leader) } = write {
                self.check_leader(model, leader).await?;
            }
            let (api, name) = (self.maps().await?, object_name("rollout", model));
            let read = Self::read(&api, &name).await?;
            let mut data = read.as_ref().and_then(|m| m.data.clone()).unwrap_or_default();
            let stored: Option<StoredRollout> = data.get("record").map(|j| serde_json::from_str(j).map_err(|e| corrupt("the rollout record", e))).transpose()?;
            if let Some(refused) = check_write(stored.as_ref(), record, write) {
                return Err(refused);
            }
            data.insert("record".to_owned(), serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?);
            if !decisions.is_empty() {
                let key = format!("decisions-{}", record.id);
                let mut all: Vec<Decision> =
                    data.get(&key).map(|j| serde_json::from_str(j).map_err(|e| corrupt("the rollout's decisions", e))).transpose()?.unwrap_or_default();
                all.extend_from_slice(decisions);
                let mut json = serde_json::to_string(&all).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                while json.len() > DECISION_BYTES && all.len() > 1 {
                    all.remove(0);
                    json = serde_json::to_string(&all).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                }
                data.insert(key, json);
            }
            trim(&mut data, "decisions-", ROLLOUTS_KEPT, DECISION_BYTES);
            if Self::write(&api, &name, model, read.as_ref(), data).await? {
                Ok(())
            } else {
                Err(StoreError::Stale(format!("rollout record of model '{model}' was written by another replica meanwhile")))
            }
        })
        .boxed()
    }

    fn rollout_history<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<Vec<(i64, Decision)>, StoreError>> {
        self.bounded(async move {
            let data = Self::read(&self.maps().await?, &object_name("rollout", model)).await?.and_then(|m| m.data).unwrap_or_default();
            let mut history = vec![];
            for (id, key) in numbered(&data, "decisions-") {
                let decisions: Vec<Decision> = serde_json::from_str(&data[key]).map_err(|e| corrupt(&format!("the decisions of rollout {id}"), e))?;
                history.extend(decisions.into_iter().map(|d| (id as i64, d)));
            }
            Ok(history)
        })
        .boxed()
    }

    fn lease<'a>(&'a self, model: &'a str, holder: &'a str, ttl: Duration) -> BoxFuture<'a, Result<Lease, StoreError>> {
        self.bounded(async move {
            let (api, name) = (self.leases().await?, object_name("lease", model));
            let now = Timestamp::now();
            let read = api.get_opt(&name).await.map_err(failed)?;
            // The Lease counts whole seconds: a time to live rounds up.
            let seconds = i32::try_from((ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1)).unwrap_or(i32::MAX);
            let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
            let written = match read {
                None => {
                    let spec = LeaseSpec {
                        holder_identity: Some(holder.to_owned()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    };
                    api.create(&params, &LeaseObject { metadata: meta(&name, model), spec: Some(spec) }).await
                }
                Some(mut lease) => {
                    let mut spec = lease.spec.take().unwrap_or_default();
                    let previous = spec.holder_identity.clone().filter(|h| !h.is_empty());
                    match live_holder(&spec, now) {
                        Some(other) if other != holder => return Ok(Lease { holder: other.to_owned(), mine: false }),
                        _ => {}
                    }
                    if previous.as_deref() != Some(holder) {
                        // Free or expired: taken over, one more transition, as client-go counts them.
                        spec.holder_identity = Some(holder.to_owned());
                        spec.acquire_time = Some(MicroTime(now));
                        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
                    }
                    spec.renew_time = Some(MicroTime(now));
                    spec.lease_duration_seconds = Some(seconds);
                    lease.spec = Some(spec);
                    lease.metadata.managed_fields = None;
                    api.replace(&name, &params, &lease).await
                }
            };
            match written {
                Ok(_) => Ok(Lease { holder: holder.to_owned(), mine: true }),
                Err(e) if is_status(&e, 409) => {
                    // Another replica wrote the Lease since it was read: whoever it names holds it.
                    let lease = api.get_opt(&name).await.map_err(failed)?;
                    let now = lease.as_ref().and_then(|l| live_holder(l.spec.as_ref()?, Timestamp::now())).unwrap_or("nobody").to_owned();
                    Ok(Lease { mine: now == holder, holder: now })
                }
                Err(e) => Err(failed(e)),
            }
        })
        .boxed()
    }

    fn release<'a>(&'a self, model: &'a str, holder: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.bounded(async move {
            let (api, name) = (self.leases().await?, object_name("lease", model));
            let Some(mut lease) = api.get_opt(&name).await.map_err(failed)? else { return Ok(()) };
            let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(holder)) else { return Ok(()) };
            spec.holder_identity = None;
            lease.metadata.managed_fields = None;
            let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
            match api.replace(&name, &params, &lease).await {
                // A 409: another replica took it meanwhile, so this one holds it no more either.
                Err(e) if !is_status(&e, 409) => Err(failed(e)),
                _ => Ok(()),
            }
        })
        .boxed()
    }

    fn report<'a>(&'a self, model: &'a str, report: &'a ReplicaReport) -> BoxFuture<'a, Result<(), StoreError>> {
        self.bounded(async move {
            let key = format!("r-{}", hex::encode(&Sha256::digest(report.replica.as_bytes())[..8]));
            self.append(&object_name("replicas", model), model, |data| {
                let now = now_ms();
                data.retain(|_, v| serde_json::from_str::<Heard>(v).is_ok_and(|h| now.saturating_sub(h.at_ms) < REPLICA_FORGOTTEN_MS));
                let heard = Heard { at_ms: now, report: report.clone() };
                data.insert(key.clone(), serde_json::to_string(&heard).map_err(|e| StoreError::Corrupt(e.to_string()))?);
                Ok(())
            })
            .await
        })
        .boxed()
    }

    fn replicas<'a>(&'a self, model: &'a str, live: Duration) -> BoxFuture<'a, Result<Vec<ReplicaReport>, StoreError>> {
        self.bounded(async move {
            let data = Self::read(&self.maps().await?, &object_name("replicas", model)).await?.and_then(|m| m.data).unwrap_or_default();
            let now = now_ms();
            let mut live: Vec<ReplicaReport> = data
                .values()
                .filter_map(|v| serde_json::from_str::<Heard>(v).ok())
                .filter(|h| now.saturating_sub(h.at_ms) <= live.as_millis() as u64)
                .map(|h| h.report)
                .collect();
            live.sort_by(|a, b| a.replica.cmp(&b.replica));
            Ok(live)
        })
        .boxed()
    }

    fn push_evidence<'a>(&'a self, model: &'a str, evidence: &'a Evidence) -> BoxFuture<'a, Result<(), StoreError>> {
        self.bounded(async move {
            let json = serde_json::to_string(evidence).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            // Only this replica writes its log: a conflict is its own earlier write, read again.
            let fields = [("replica", evidence.replica.clone()), ("written_ms", now_ms().to_string())];
            let name = evidence_object(model, &evidence.replica);
            self.push_log(&name, model, "e-", json, (EVIDENCE_KEPT, EVIDENCE_BYTES), Some((LOG_LABEL, "evidence")), &fields).await
        })
        .boxed()
    }

    fn evidence<'a>(&'a self, model: &'a str, cursor: Option<&'a str>) -> BoxFuture<'a, Result<Page<Evidence>, StoreError>> {
        self.bounded(async move {
            let api = self.maps().await?;
            // Every replica's log in one request.
            let selector = format!("modelship.io/model={},{LOG_LABEL}=evidence", model_slug(model));
            let logs = api.list(&ListParams::default().labels(&selector)).await.map_err(failed)?;
            // The cursor: each log's last entry read, by object name. A log not in it is a
            // replica's that started after the cursor was taken: all of it is new.
            let mut read: BTreeMap<String, u64> = match cursor {
                None => BTreeMap::new(),
                Some(c) => serde_json::from_str(c).unwrap_or_default(),
            };
            let mut found = Vec::new();
            let now = now_ms();
            for log in &logs.items {
                let (Some(name), Some(data)) = (log.metadata.name.as_deref(), log.data.as_ref()) else { continue };
                let last = last_of(data)?;
                // A replica silent for an hour is gone (pods are renamed on every restart): its
                // log is deleted, if it has not been written meanwhile.
                if data.get("written_ms").and_then(|w| w.parse::<u64>().ok()).is_some_and(|w| now.saturating_sub(w) > REPLICA_FORGOTTEN_MS) {
                    let params = kube::api::DeleteParams { preconditions: log.metadata.resource_version.clone().map(|v| kube::api::Preconditions { resource_version: Some(v), uid: None }), ..Default::default() };
                    if let Err(e) = api.delete(name, &params).await {
                        tracing::debug!(log = name, error = %e, "cannot delete a silent replica's evidence log");
                    }
                    read.remove(name);
                    continue;
                }
                if cursor.is_some() {
                    let after = read.get(name).copied().unwrap_or(0);
                    // An entry this version cannot read (written by a newer one) is skipped.
                    found.extend(entries_after(name, data, "e-", after).into_iter().filter_map(|e| serde_json::from_str::<Evidence>(e).ok()));
                }
                let at = read.entry(name.to_owned()).or_default();
                *at = (*at).max(last);
            }
            // Logs no longer listed (deleted) leave the cursor.
            read.retain(|name, _| logs.items.iter().any(|l| l.metadata.name.as_deref() == Some(name)));
            Ok((found, Some(serde_json::to_string(&read).map_err(|e| StoreError::Corrupt(e.to_string()))?)))
        })
        .boxed()
    }

    fn push_labels<'a>(&'a self, model: &'a str, labels: &'a [(String, super::Feedback)]) -> BoxFuture<'a, Result<(), StoreError>> {
        self.bounded(async move {
            if labels.is_empty() {
                return Ok(());
            }
            let json = serde_json::to_string(labels).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            self.push_log(&object_name("labels", model), model, "l-", json, (LABELS_KEPT, LABEL_BYTES), None, &[]).await
        })
        .boxed()
    }

    fn labels<'a>(&'a self, model: &'a str, cursor: Option<&'a str>) -> BoxFuture<'a, Result<Page<(String, super::Feedback)>, StoreError>> {
        self.bounded(async move {
            let (entries, cursor) = self.read_log(&object_name("labels", model), "l-", cursor).await?;
            Ok((entries.iter().filter_map(|e| serde_json::from_str::<Vec<(String, super::Feedback)>>(e).ok()).flatten().collect(), cursor))
        })
        .boxed()
    }
}

/// A watch on one traffic ConfigMap, yielding its `latest` revision number as it changes. A
/// watch the API server ends (every [`WATCH_SECONDS`]) is resumed from the last
/// `resourceVersion` seen; a 410 Gone (that version is too old for the server's watch cache)
/// lists the object again, yields its revision if it is new (a commit may have been missed
/// meanwhile) and watches from the list's version. Any other error ends the stream: the
/// follower subscribes again, and re-reads every second meanwhile.
struct Watch {
    api: Api<ConfigMap>,
    params: WatchParams,
    name: String,
    /// Where to watch from; `None`: list first.
    version: Option<String>,
    events: Option<BoxStream<'static, kube::Result<WatchEvent<ConfigMap>>>>,
    /// The last revision seen (by a list or an event).
    last: Option<u64>,
}

impl Watch {
    fn new(api: Api<ConfigMap>, name: &str) -> Self {
        let params = WatchParams::default().fields(&format!("metadata.name={name}")).timeout(WATCH_SECONDS);
        Watch { api, params, name: name.to_owned(), version: None, events: None, last: None }
    }

    /// Lists the ConfigMap: its revision now, and the version to watch from. Returns the
    /// revision when it is new.
    async fn list(&mut self) -> kube::Result<Option<u64>> {
        let list = tokio::time::timeout(TIMEOUT, self.api.list(&ListParams::default().fields(&format!("metadata.name={}", self.name))))
            .await
            .map_err(|_| kube::Error::Service("no answer within 2 s".into()))??;
        let latest = self.seen(list.items.first());
        self.version = Some(list.metadata.resource_version.unwrap_or_else(|| "0".to_owned()));
        Ok(latest)
    }

    async fn start(&mut self) -> kube::Result<()> {
        let version = self.version.clone().unwrap_or_else(|| "0".to_owned());
        let events = tokio::time::timeout(TIMEOUT, self.api.watch(&self.params, &version))
            .await
            .map_err(|_| kube::Error::Service("no answer within 2 s".into()))??;
        self.events = Some(events.boxed());
        Ok(())
    }

    /// Records the object's version and revision; returns the revision when it is new.
    fn seen(&mut self, map: Option<&ConfigMap>) -> Option<u64> {
        let map = map?;
        if let Some(version) = &map.metadata.resource_version {
            self.version = Some(version.clone());
        }
        let latest = map.data.as_ref().and_then(|d| latest_of(d).ok().flatten())?;
        (self.last != Some(latest)).then(|| {
            self.last = Some(latest);
            latest
        })
    }

    async fn next(mut self) -> Option<(u64, Self)> {
        loop {
            if self.version.is_none() {
                match self.list().await {
                    Ok(Some(latest)) => return Some((latest, self)),
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::debug!(configmap = %self.name, error = %e, "cannot list the traffic ConfigMap again; the watch ends");
                        return None;
                    }
                }
            }
            if self.events.is_none() {
                match self.start().await {
                    Ok(()) => {}
                    Err(e) if is_status(&e, 410) => {
                        self.version = None;
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(configmap = %self.name, error = %e, "cannot watch the traffic ConfigMap; the watch ends");
                        return None;
                    }
                }
            }
            let event = self.events.as_mut().expect("started above").next().await;
            match event {
                // The server ended the watch: resume it from the last version seen.
                None => self.events = None,
                Some(Ok(WatchEvent::Added(map) | WatchEvent::Modified(map))) => {
                    if let Some(latest) = self.seen(Some(&map)) {
                        return Some((latest, self));
                    }
                }
                Some(Ok(WatchEvent::Deleted(map))) => {
                    self.seen(Some(&map));
                }
                Some(Ok(WatchEvent::Bookmark(bookmark))) => self.version = Some(bookmark.metadata.resource_version),
                Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                    tracing::debug!(configmap = %self.name, "the watch's version is too old (410 Gone); listing again");
                    (self.events, self.version) = (None, None);
                }
                Some(Ok(WatchEvent::Error(status))) => {
                    tracing::debug!(configmap = %self.name, code = status.code, message = %status.message, "the watch failed; it ends");
                    return None;
                }
                Some(Err(e)) => {
                    tracing::debug!(configmap = %self.name, error = %e, "the watch failed; it ends");
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
