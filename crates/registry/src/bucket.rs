//! The catalog in object storage, for a registry that lives wholly in a bucket
//! (`--registry s3://bucket/prefix`): replicas on different hosts and CI jobs share it with no
//! shared disk, no catalog file copied around and no database server.
//!
//! One JSON document per model, `<prefix>/catalog/<name>.json`, holds its versions (in push
//! order), its aliases and their history. Every change is read → edit → conditional write:
//! `If-None-Match: *` creates a model's document, `If-Match: <etag>` replaces it only if nobody
//! wrote it since it was read. A writer that lost the race reads again and retries, so concurrent
//! pushes and alias moves from several hosts all land, each once, with no lock and no lease.
//!
//! One document per model, rather than one object per version, keeps every rule of the catalog
//! inside one atomic write: an alias points at a version that exists, a version with aliases is
//! removed only when forced, and a move is recorded by the write that makes it. A model's
//! document is small (a version's record is its metadata, about a kilobyte), so reading it whole
//! to follow an alias is cheap.
//!
//! What the bucket must offer: conditional `PutObject` (AWS S3 since 2024, MinIO, R2, and the
//! s3s-fs server of the tests). s3s-fs checks the condition and then writes, not atomically, so
//! two writers racing within the same instant can both pass there; real S3 decides atomically.
//! The tests of the race run on `object_store`'s in-memory store, which decides atomically too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::RegistryError;
use crate::catalog::{AliasMove, Inserted, VersionRecord, now_ms};

/// The document format this build writes; a newer one is refused rather than rewritten.
const FORMAT: u32 = 1;
/// Conditional writes lost in a row before a change gives up.
const ATTEMPTS: u32 = 20;

/// One model's catalog document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ModelDoc {
    format: u32,
    /// Oldest first; their `aliases` are left empty and filled on read.
    versions: Vec<VersionRecord>,
    aliases: BTreeMap<String, String>,
    history: Vec<AliasMove>,
}

impl ModelDoc {
    fn version(&self, version: &str) -> Option<&VersionRecord> {
        self.versions.iter().find(|r| r.version == version)
    }

    /// `record` with the aliases pointing at it now.
    fn with_aliases(&self, record: &VersionRecord) -> VersionRecord {
        let mut record = record.clone();
        record.aliases = self.aliases.iter().filter(|(_, v)| **v == record.version).map(|(a, _)| a.clone()).collect();
        record
    }

    fn record_move(&mut self, name: &str, alias: &str, version: Option<&str>, previous: Option<String>, actor: &str) -> AliasMove {
        let entry = AliasMove {
            id: self.history.last().map_or(1, |m| m.id + 1),
            name: name.to_owned(),
            alias: alias.to_owned(),
            version: version.map(str::to_owned),
            previous,
            at_ms: now_ms(),
            actor: actor.to_owned(),
        };
        self.history.push(entry.clone());
        entry
    }
}

/// What an edit did to a document: changed it (write it back) or left it as it was.
enum Edit<T> {
    Changed(T),
    Kept(T),
}

pub struct BucketCatalog {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    /// `s3://bucket/prefix`, for messages.
    location: String,
}

impl BucketCatalog {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: StorePath, location: &str) -> Self {
        BucketCatalog { store, prefix, location: location.trim_end_matches('/').to_owned() }
    }

    fn dir(&self) -> StorePath {
        self.prefix.clone().join("catalog")
    }

    /// The document's key. `name` has passed `check_name` (letters, digits, `._-`), so it is one
    /// path segment and never climbs out of the prefix.
    fn key(&self, name: &str) -> StorePath {
        self.dir().join(format!("{name}.json"))
    }

    fn corrupt(&self, key: &StorePath, reason: impl std::fmt::Display) -> RegistryError {
        RegistryError::Database { path: format!("{}/{}", self.location, key.as_ref().strip_prefix(self.prefix.as_ref()).unwrap_or(key.as_ref()).trim_start_matches('/')), reason: reason.to_string() }
    }

    /// The document at `key` and the version to make a conditional write against, or `None`.
    async fn read_key(&self, key: &StorePath) -> Result<Option<(ModelDoc, UpdateVersion)>, RegistryError> {
        let got = match self.store.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(RegistryError::Store(e.to_string())),
        };
        let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
        let bytes = got.bytes().await.map_err(|e| RegistryError::Store(e.to_string()))?;
        let doc: ModelDoc = serde_json::from_slice(&bytes).map_err(|e| self.corrupt(key, format!("unreadable catalog document: {e}")))?;
        if doc.format > FORMAT {
            return Err(self.corrupt(key, format!("written in format {} by a newer modelship; upgrade this one", doc.format)));
        }
        Ok(Some((doc, version)))
    }

    async fn read(&self, name: &str) -> Result<Option<ModelDoc>, RegistryError> {
        Ok(self.read_key(&self.key(name)).await?.map(|(doc, _)| doc))
    }

    /// Applies `edit` to model `name`'s document (a new one when there is none) and writes it back
    /// only if nobody else wrote it meanwhile; otherwise reads it again and retries.
    async fn update<T>(&self, name: &str, mut edit: impl FnMut(&mut ModelDoc) -> Result<Edit<T>, RegistryError>) -> Result<T, RegistryError> {
        let key = self.key(name);
        for attempt in 0..ATTEMPTS {
            let (mut doc, mode) = match self.read_key(&key).await? {
                Some((doc, version)) => (doc, PutMode::Update(version)),
                None => (ModelDoc { format: FORMAT, ..ModelDoc::default() }, PutMode::Create),
            };
            let value = match edit(&mut doc)? {
                Edit::Kept(value) => return Ok(value),
                Edit::Changed(value) => value,
            };
            doc.format = FORMAT;
            let body = serde_json::to_vec_pretty(&doc).map_err(|e| RegistryError::Store(e.to_string()))?;
            match self.store.put_opts(&key, PutPayload::from(body), PutOptions::from(mode)).await {
                Ok(_) => return Ok(value),
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
                    tracing::debug!(model = name, attempt, "catalog document changed under this write; reading it again");
                    // Spread the retries of writers that collided, so they do not collide again.
                    let jitter = u64::from(std::process::id() % 7) + u64::from(attempt) * 5;
                    tokio::time::sleep(Duration::from_millis(5 + jitter)).await;
                }
                Err(e) => return Err(RegistryError::Store(e.to_string())),
            }
        }
        Err(RegistryError::Store(format!(
            "{}: model '{name}' changed under {ATTEMPTS} writes in a row; too many writers at once, try again",
            self.location
        )))
    }

    /// Every model's document, by name.
    async fn documents(&self) -> Result<Vec<ModelDoc>, RegistryError> {
        let mut keys: Vec<StorePath> = self
            .store
            .list(Some(&self.dir()))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| RegistryError::Store(e.to_string()))?;
        keys.retain(|k| k.extension() == Some("json"));
        keys.sort();
        let mut docs = Vec::with_capacity(keys.len());
        for key in keys {
            // A document removed between the listing and the read is simply gone.
            if let Some((doc, _)) = self.read_key(&key).await? {
                docs.push(doc);
            }
        }
        Ok(docs)
    }

    pub async fn insert(&self, record: &VersionRecord) -> Result<Inserted, RegistryError> {
        self.update(&record.name, |doc| match doc.version(&record.version) {
            Some(existing) if existing.digest != record.digest => Err(RegistryError::VersionConflict {
                name: record.name.clone(),
                version: record.version.clone(),
                existing: existing.digest.clone(),
                pushed: record.digest.clone(),
            }),
            Some(existing) => Ok(Edit::Kept(Inserted::Unchanged(Box::new(doc.with_aliases(existing))))),
            None => {
                let mut record = record.clone();
                record.aliases.clear();
                doc.versions.push(record);
                Ok(Edit::Changed(Inserted::Created))
            }
        })
        .await
    }

    /// Every version (of `name`, when given), oldest first, models by name.
    pub async fn list(&self, name: Option<&str>) -> Result<Vec<VersionRecord>, RegistryError> {
        let docs = match name {
            Some(n) => self.read(n).await?.into_iter().collect(),
            None => self.documents().await?,
        };
        Ok(docs.iter().flat_map(|doc| doc.versions.iter().map(|r| doc.with_aliases(r))).collect())
    }

    pub async fn get(&self, name: &str, version: &str) -> Result<Option<VersionRecord>, RegistryError> {
        Ok(self.read(name).await?.and_then(|doc| doc.version(version).map(|r| doc.with_aliases(r))))
    }

    pub async fn latest(&self, name: &str) -> Result<Option<VersionRecord>, RegistryError> {
        Ok(self.read(name).await?.and_then(|doc| doc.versions.last().map(|r| doc.with_aliases(r))))
    }

    pub async fn has_model(&self, name: &str) -> Result<bool, RegistryError> {
        Ok(self.read(name).await?.is_some_and(|doc| !doc.versions.is_empty()))
    }

    pub async fn alias_target(&self, name: &str, alias: &str) -> Result<Option<String>, RegistryError> {
        Ok(self.read(name).await?.and_then(|doc| doc.aliases.get(alias).cloned()))
    }

    /// Points `alias` at `version` (which must exist, checked in the same write) and records the
    /// move; a move to where the alias already points records nothing and returns `None`.
    pub async fn set_alias(
        &self,
        name: &str,
        alias: &str,
        version: &str,
        expected: Option<&str>,
        actor: &str,
    ) -> Result<Option<AliasMove>, RegistryError> {
        self.update(name, |doc| {
            if doc.version(version).is_none() {
                return Err(if doc.versions.is_empty() {
                    RegistryError::UnknownModel(name.to_owned())
                } else {
                    RegistryError::UnknownVersion { name: name.to_owned(), version: version.to_owned() }
                });
            }
            let now = doc.aliases.get(alias).cloned();
            if let Some(expected) = expected
                && now.as_deref() != Some(expected)
                && now.as_deref() != Some(version)
            {
                return Err(RegistryError::AliasMoved { name: name.to_owned(), alias: alias.to_owned(), expected: expected.to_owned(), now });
            }
            let previous = doc.aliases.insert(alias.to_owned(), version.to_owned());
            if previous.as_deref() == Some(version) {
                return Ok(Edit::Kept(None));
            }
            Ok(Edit::Changed(Some(doc.record_move(name, alias, Some(version), previous, actor))))
        })
        .await
    }

    /// Merges `metrics` and `labels` into a version's record (results recorded on it).
    pub async fn annotate(
        &self,
        name: &str,
        version: &str,
        metrics: &BTreeMap<String, f64>,
        labels: &BTreeMap<String, String>,
    ) -> Result<VersionRecord, RegistryError> {
        self.update(name, |doc| {
            let Some(record) = doc.versions.iter_mut().find(|r| r.version == version) else {
                return Err(RegistryError::UnknownVersion { name: name.to_owned(), version: version.to_owned() });
            };
            record.metrics.extend(metrics.iter().map(|(k, v)| (k.clone(), *v)));
            record.labels.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            let record = record.clone();
            Ok(Edit::Changed(doc.with_aliases(&record)))
        })
        .await
    }

    pub async fn history(&self, name: &str) -> Result<Vec<AliasMove>, RegistryError> {
        Ok(self.read(name).await?.map(|doc| doc.history).unwrap_or_default())
    }

    /// Removes a version; refused while aliases point at it unless `force`, which removes them too
    /// (recorded). Returns the digest when no version of any model in the bucket still uses it.
    pub async fn remove(&self, name: &str, version: &str, force: bool, actor: &str) -> Result<Option<String>, RegistryError> {
        let digest = self
            .update(name, |doc| {
                let Some(position) = doc.versions.iter().position(|r| r.version == version) else {
                    return Err(RegistryError::UnknownVersion { name: name.to_owned(), version: version.to_owned() });
                };
                let aliases: Vec<String> = doc.aliases.iter().filter(|(_, v)| *v == version).map(|(a, _)| a.clone()).collect();
                if !aliases.is_empty() && !force {
                    return Err(RegistryError::AliasedVersion { name: name.to_owned(), version: version.to_owned(), aliases });
                }
                for alias in aliases {
                    doc.aliases.remove(&alias);
                    doc.record_move(name, &alias, None, Some(version.to_owned()), actor);
                }
                // The document stays when its last version goes: the history outlives the versions.
                Ok(Edit::Changed(doc.versions.remove(position).digest))
            })
            .await?;
        let still_used = self.documents().await?.iter().any(|doc| doc.versions.iter().any(|r| r.digest == digest));
        Ok((!still_used).then_some(digest))
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;
    use crate::onnx_meta::OnnxMetadata;

    fn catalog(store: &Arc<InMemory>) -> BucketCatalog {
        BucketCatalog::new(Arc::clone(store) as Arc<dyn ObjectStore>, StorePath::from("team"), "s3://models/team")
    }

    fn record(version: &str, digest: &str) -> VersionRecord {
        VersionRecord {
            name: "fraud".to_owned(),
            version: version.to_owned(),
            digest: digest.to_owned(),
            size: 10,
            created_ms: 1,
            description: None,
            source: None,
            metrics: BTreeMap::new(),
            labels: BTreeMap::new(),
            onnx: OnnxMetadata::default(),
            aliases: vec![],
        }
    }

    #[tokio::test]
    async fn versions_aliases_and_history_follow_the_catalog_rules() {
        let store = Arc::new(InMemory::new());
        let cat = catalog(&store);
        assert!(matches!(cat.insert(&record("1", "aa")).await.unwrap(), Inserted::Created));
        assert!(matches!(cat.insert(&record("1", "aa")).await.unwrap(), Inserted::Unchanged(_)));
        assert!(matches!(cat.insert(&record("1", "bb")).await, Err(RegistryError::VersionConflict { .. })));
        cat.insert(&record("2", "bb")).await.unwrap();
        assert_eq!(cat.latest("fraud").await.unwrap().unwrap().version, "2");
        assert!(cat.has_model("fraud").await.unwrap());
        assert!(!cat.has_model("other").await.unwrap());

        assert!(matches!(cat.set_alias("fraud", "production", "3", None, "ci").await, Err(RegistryError::UnknownVersion { .. })));
        assert!(matches!(cat.set_alias("other", "production", "1", None, "ci").await, Err(RegistryError::UnknownModel(_))));
        let moved = cat.set_alias("fraud", "production", "1", None, "ci").await.unwrap().unwrap();
        assert_eq!((moved.id, moved.previous), (1, None));
        assert!(cat.set_alias("fraud", "production", "1", None, "ci").await.unwrap().is_none(), "a no-op move is not recorded");
        // A compare and set that finds the alias elsewhere changes nothing.
        let refused = cat.set_alias("fraud", "production", "2", Some("9"), "server").await;
        assert!(matches!(&refused, Err(RegistryError::AliasMoved { now: Some(v), .. }) if v == "1"), "{refused:?}");
        let moved = cat.set_alias("fraud", "production", "2", Some("1"), "ci").await.unwrap().unwrap();
        assert_eq!((moved.id, moved.previous.as_deref()), (2, Some("1")));
        assert_eq!(cat.alias_target("fraud", "production").await.unwrap().as_deref(), Some("2"));
        assert_eq!(cat.get("fraud", "2").await.unwrap().unwrap().aliases, vec!["production".to_owned()]);

        assert!(matches!(cat.remove("fraud", "2", false, "ci").await, Err(RegistryError::AliasedVersion { .. })));
        assert_eq!(cat.remove("fraud", "2", true, "ci").await.unwrap().as_deref(), Some("bb"));
        assert_eq!(cat.alias_target("fraud", "production").await.unwrap(), None);
        let history = cat.history("fraud").await.unwrap();
        assert_eq!(history.len(), 3);
        assert_eq!((history[2].version.as_deref(), history[2].previous.as_deref()), (None, Some("2")));
        assert!(matches!(cat.remove("fraud", "9", false, "ci").await, Err(RegistryError::UnknownVersion { .. })));
    }

    #[tokio::test]
    async fn results_recorded_on_a_version_are_merged_into_it() {
        let store = Arc::new(InMemory::new());
        let cat = catalog(&store);
        cat.insert(&record("1", "aa")).await.unwrap();
        cat.set_alias("fraud", "production", "1", None, "ci").await.unwrap();
        let metrics = BTreeMap::from([("auc".to_owned(), 0.93)]);
        let labels = BTreeMap::from([("validated".to_owned(), "true".to_owned())]);
        let after = cat.annotate("fraud", "1", &metrics, &labels).await.unwrap();
        assert_eq!((after.metrics, after.labels, after.aliases), (metrics.clone(), labels.clone(), vec!["production".to_owned()]));
        assert_eq!(cat.get("fraud", "1").await.unwrap().unwrap().metrics["auc"], 0.93);
        assert!(matches!(cat.annotate("fraud", "9", &metrics, &labels).await, Err(RegistryError::UnknownVersion { .. })));
    }

    #[tokio::test]
    async fn an_artifact_another_model_uses_is_kept() {
        let store = Arc::new(InMemory::new());
        let cat = catalog(&store);
        cat.insert(&record("1", "aa")).await.unwrap();
        cat.insert(&VersionRecord { name: "churn".to_owned(), ..record("1", "aa") }).await.unwrap();
        assert_eq!(cat.remove("fraud", "1", false, "ci").await.unwrap(), None, "churn:1 still uses it");
        assert_eq!(cat.remove("churn", "1", false, "ci").await.unwrap().as_deref(), Some("aa"));
        let names: Vec<String> = cat.list(None).await.unwrap().into_iter().map(|r| r.name).collect();
        assert!(names.is_empty(), "{names:?}");
        assert_eq!(cat.history("fraud").await.unwrap(), vec![]);
    }

    /// Writers on many "hosts" (catalog clients sharing only the bucket) pushing and moving aliases
    /// at once: every change lands, each once, and the history numbers every move once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_all_land_once() {
        let store = Arc::new(InMemory::new());
        let writers = (0..8).map(|w| {
            let cat = catalog(&store);
            tokio::spawn(async move {
                for i in 0..5 {
                    let version = format!("{w}.{i}");
                    cat.insert(&record(&version, &format!("d{w}{i}"))).await.unwrap();
                    cat.set_alias("fraud", &format!("writer-{w}"), &version, None, "ci").await.unwrap();
                    cat.set_alias("fraud", "production", &version, None, "ci").await.unwrap();
                }
            })
        });
        for w in writers.collect::<Vec<_>>() {
            w.await.unwrap();
        }
        let cat = catalog(&store);
        assert_eq!(cat.list(Some("fraud")).await.unwrap().len(), 40);
        let history = cat.history("fraud").await.unwrap();
        let ids: Vec<i64> = history.iter().map(|m| m.id).collect();
        assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "each move numbered once, in order");
        assert_eq!(history.iter().filter(|m| m.alias.starts_with("writer-")).count(), 40);
        for w in 0..8 {
            assert_eq!(cat.alias_target("fraud", &format!("writer-{w}")).await.unwrap(), Some(format!("{w}.4")));
        }
    }

    #[tokio::test]
    async fn a_damaged_or_newer_document_is_an_error_that_names_it() {
        let store = Arc::new(InMemory::new());
        let cat = catalog(&store);
        store.put(&StorePath::from("team/catalog/fraud.json"), PutPayload::from_static(b"{not json")).await.unwrap();
        let err = cat.get("fraud", "1").await.unwrap_err().to_string();
        assert!(err.contains("s3://models/team/catalog/fraud.json") && err.contains("unreadable"), "{err}");
        store
            .put(&StorePath::from("team/catalog/fraud.json"), PutPayload::from_static(br#"{"format": 9, "versions": [], "aliases": {}, "history": []}"#))
            .await
            .unwrap();
        let err = cat.insert(&record("1", "aa")).await.unwrap_err().to_string();
        assert!(err.contains("newer modelship"), "{err}");
    }
}
