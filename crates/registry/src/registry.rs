//! The registry as a whole: the catalog and the artifact store, kept consistent.
//!
//! Two homes, one behaviour: a directory (the catalog in SQLite, artifacts beside it or in a
//! bucket), or a bucket alone (`s3://bucket/prefix`: the catalog as documents written with
//! conditional requests, see [`crate::bucket`]), which replicas on hosts that share no disk and
//! CI jobs all use at once.
//!
//! Push order makes a crash at any moment safe: the artifact is written (atomically, under its
//! digest) before the version row is committed, so a visible version always has its artifact; a
//! crash in between leaves at most an unreferenced artifact, which a later push of the same bytes
//! reuses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::artifacts::{ArtifactStore, STALE_PARTIAL, StoredFile, crash_point, remove_files, sha256_hex};
use crate::bucket::BucketCatalog;
use crate::catalog::{AliasMove, Catalog, Inserted, VersionRecord, now_ms};
use crate::kept::KeptCopies;
use crate::name::{ModelRef, check_alias, check_name, check_version};
use crate::{RegistryError, onnx_meta};

/// Reports progress of long transfers (a terminal progress bar in the CLI).
pub trait Progress: Send + Sync {
    fn start(&self, phase: &str, total_bytes: u64);
    fn advance(&self, bytes: u64);
    fn finish(&self);
}

pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// The registry directory (`registry.db`, and artifacts under `artifacts/` when local), or
    /// `s3://bucket/prefix` for a registry wholly in a bucket, catalog and artifacts.
    pub root: PathBuf,
    /// Where a directory registry's artifacts go when it is created: `local` (default) or
    /// `s3://bucket/prefix`. An existing registry keeps the store it was created with.
    pub artifacts: Option<String>,
}

impl RegistryConfig {
    /// The `s3://` URL of a registry that lives in a bucket, `None` for a directory.
    pub fn bucket(&self) -> Option<&str> {
        self.root.to_str().filter(|r| r.starts_with("s3://"))
    }
}

/// The largest warm-up sample a version may carry.
pub const MAX_WARMUP_SAMPLE_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Default)]
pub struct PushRequest {
    pub name: String,
    pub version: String,
    pub metrics: BTreeMap<String, f64>,
    pub labels: BTreeMap<String, String>,
    pub description: Option<String>,
    pub source: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PushOutcome {
    Created(VersionRecord),
    /// The same bytes were already registered under this name and version: nothing changed.
    Unchanged(VersionRecord),
}

/// The record of `bytes` pushed as `request`: digest, size and the metadata read from the ONNX
/// file (which must be one; the error names `request.source`).
fn new_record(request: PushRequest, bytes: &[u8]) -> Result<VersionRecord, RegistryError> {
    let onnx = onnx_meta::read(bytes)
        .map_err(|reason| RegistryError::NotOnnx { path: request.source.clone().unwrap_or_default(), reason })?;
    Ok(VersionRecord {
        name: request.name,
        version: request.version,
        digest: sha256_hex(bytes),
        size: bytes.len() as u64,
        created_ms: now_ms(),
        description: request.description,
        source: request.source,
        metrics: request.metrics,
        labels: request.labels,
        onnx,
        aliases: vec![],
    })
}

/// Where versions, aliases and their history are kept.
enum Index {
    /// SQLite in the registry directory, called off the async threads.
    Local(Arc<Catalog>),
    Bucket(BucketCatalog),
}

impl Index {
    /// Refuses a change to a registry opened read-only (a bucket is written through conditions).
    fn writable(&self) -> Result<(), RegistryError> {
        match self {
            Index::Local(c) => c.writable(),
            Index::Bucket(_) => Ok(()),
        }
    }

    /// Runs `f` on the SQLite catalog on a blocking thread (it may wait on the database lock).
    async fn local<T: Send + 'static>(
        catalog: &Arc<Catalog>,
        f: impl FnOnce(&Catalog) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let catalog = Arc::clone(catalog);
        tokio::task::spawn_blocking(move || f(&catalog))
            .await
            .unwrap_or_else(|e| Err(RegistryError::Store(format!("registry task failed: {e}"))))
    }

    async fn insert(&self, record: &VersionRecord) -> Result<Inserted, RegistryError> {
        match self {
            Index::Local(c) => {
                let record = record.clone();
                Index::local(c, move |c| c.insert(&record)).await
            }
            Index::Bucket(b) => b.insert(record).await,
        }
    }

    async fn list(&self, name: Option<&str>) -> Result<Vec<VersionRecord>, RegistryError> {
        match self {
            Index::Local(c) => {
                let name = name.map(str::to_owned);
                Index::local(c, move |c| c.list(name.as_deref())).await
            }
            Index::Bucket(b) => b.list(name).await,
        }
    }

    async fn get(&self, name: &str, version: &str) -> Result<Option<VersionRecord>, RegistryError> {
        match self {
            Index::Local(c) => {
                let (name, version) = (name.to_owned(), version.to_owned());
                Index::local(c, move |c| c.get(&name, &version)).await
            }
            Index::Bucket(b) => b.get(name, version).await,
        }
    }

    async fn latest(&self, name: &str) -> Result<Option<VersionRecord>, RegistryError> {
        match self {
            Index::Local(c) => {
                let name = name.to_owned();
                Index::local(c, move |c| c.latest(&name)).await
            }
            Index::Bucket(b) => b.latest(name).await,
        }
    }

    async fn has_model(&self, name: &str) -> Result<bool, RegistryError> {
        match self {
            Index::Local(c) => {
                let name = name.to_owned();
                Index::local(c, move |c| c.has_model(&name)).await
            }
            Index::Bucket(b) => b.has_model(name).await,
        }
    }

    async fn alias_target(&self, name: &str, alias: &str) -> Result<Option<String>, RegistryError> {
        match self {
            Index::Local(c) => {
                let (name, alias) = (name.to_owned(), alias.to_owned());
                Index::local(c, move |c| c.alias_target(&name, &alias)).await
            }
            Index::Bucket(b) => b.alias_target(name, alias).await,
        }
    }

    async fn set_alias(&self, name: &str, alias: &str, version: &str, expected: Option<&str>, actor: &str) -> Result<Option<AliasMove>, RegistryError> {
        match self {
            Index::Local(c) => {
                let (name, alias, version, actor) = (name.to_owned(), alias.to_owned(), version.to_owned(), actor.to_owned());
                let expected = expected.map(str::to_owned);
                Index::local(c, move |c| c.set_alias(&name, &alias, &version, expected.as_deref(), &actor)).await
            }
            Index::Bucket(b) => b.set_alias(name, alias, version, expected, actor).await,
        }
    }

    async fn history(&self, name: &str) -> Result<Vec<AliasMove>, RegistryError> {
        match self {
            Index::Local(c) => {
                let name = name.to_owned();
                Index::local(c, move |c| c.history(&name)).await
            }
            Index::Bucket(b) => b.history(name).await,
        }
    }

    async fn annotate(
        &self,
        name: &str,
        version: &str,
        metrics: &BTreeMap<String, f64>,
        labels: &BTreeMap<String, String>,
    ) -> Result<VersionRecord, RegistryError> {
        match self {
            Index::Local(c) => {
                let (name, version, metrics, labels) = (name.to_owned(), version.to_owned(), metrics.clone(), labels.clone());
                Index::local(c, move |c| c.annotate(&name, &version, &metrics, &labels)).await
            }
            Index::Bucket(b) => b.annotate(name, version, metrics, labels).await,
        }
    }

    async fn remove(&self, name: &str, version: &str, force: bool, actor: &str) -> Result<Option<String>, RegistryError> {
        match self {
            Index::Local(c) => {
                let (name, version, actor) = (name.to_owned(), version.to_owned(), actor.to_owned());
                Index::local(c, move |c| c.remove(&name, &version, force, &actor)).await
            }
            Index::Bucket(b) => b.remove(name, version, force, actor).await,
        }
    }
}

/// The largest artifact a push or an import takes unless told otherwise
/// (`models push --max-size`): well above any single-file ONNX model (protobuf caps one at
/// 2 GiB), and small enough that a mistaken push (`/dev/zero`, a data file) stops early.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 4 << 30;

/// What `models gc` may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Only files at least this old: a younger one may belong to a push in progress.
    pub older_than: Duration,
    /// Also complete artifacts that no version of any model references.
    pub unreferenced: bool,
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
}

/// What `models gc` removed (or would remove, in a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Staging files of interrupted pushes.
    pub partial: Vec<StoredFile>,
    /// Complete artifacts no version references (only when asked for).
    pub unreferenced: Vec<StoredFile>,
    /// Files left because they are younger than `older_than`.
    pub kept_young: usize,
    /// Complete artifacts left because no version references them but none was asked for.
    pub kept_unreferenced: usize,
    pub dry_run: bool,
}

impl GcReport {
    pub fn bytes(&self) -> u64 {
        self.partial.iter().chain(&self.unreferenced).map(|f| f.bytes).sum()
    }
}

pub struct Registry {
    catalog: Index,
    artifacts: ArtifactStore,
    root: PathBuf,
    max_artifact_bytes: u64,
    /// This host's copies of what it read from a remote store ([`Registry::with_kept_copies`]).
    kept: Option<Arc<KeptCopies>>,
}

/// `file` with its size and age as they are now.
fn restat(file: StoredFile) -> std::io::Result<StoredFile> {
    let meta = std::fs::metadata(&file.path)?;
    let age = meta.modified().ok().and_then(|m| std::time::SystemTime::now().duration_since(m).ok()).unwrap_or_default();
    Ok(StoredFile { bytes: meta.len(), age, ..file })
}

/// Describes a file type that is not a regular file, for the refusal.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// `bytes` for people: `4.0 GiB`, `12.5 MiB`, `900 B` (the CLI's tables use it too).
pub fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The refusal of an artifact over the limit.
fn too_large(what: &str, size: u64, limit: u64) -> RegistryError {
    RegistryError::Config(format!(
        "cannot push {what}: it is {} ({size} bytes), over the limit of {} ({limit} bytes) for one artifact; pass --max-size with a larger size (e.g. --max-size 8Gi) if it really is a model",
        human_size(size),
        human_size(limit)
    ))
}

/// Reads the model file a push names: a regular file of at most `limit` bytes, read once, with
/// no more than `limit + 1` bytes taken even if it grows meanwhile.
async fn read_model(file: &Path, limit: u64) -> Result<Vec<u8>, RegistryError> {
    let what = file.display().to_string();
    let cannot_read = || RegistryError::io(format!("cannot read {what}"));
    // Checked before opening: opening a named pipe would wait for a writer.
    let meta = tokio::fs::metadata(file).await.map_err(cannot_read())?;
    if !meta.is_file() {
        return Err(RegistryError::Config(format!("cannot push {what}: it is {}, not a regular file; push an ONNX file", kind_of(&meta))));
    }
    if meta.len() > limit {
        return Err(too_large(&what, meta.len(), limit));
    }
    let reader = tokio::fs::File::open(file).await.map_err(cannot_read())?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    reader.take(limit.saturating_add(1)).read_to_end(&mut bytes).await.map_err(cannot_read())?;
    if bytes.len() as u64 > limit {
        return Err(too_large(&what, bytes.len() as u64, limit));
    }
    Ok(bytes)
}

impl Registry {
    pub fn open(config: &RegistryConfig) -> Result<Self, RegistryError> {
        if let Some(url) = config.bucket() {
            return Registry::open_bucket(url, config);
        }
        let root = &config.root;
        let wanted = config.artifacts.clone().unwrap_or_else(|| "local".to_owned());
        let db = root.join("registry.db");
        let writable = std::fs::create_dir_all(root)
            .map_err(RegistryError::io(format!("cannot create registry directory {}", root.display())))
            .and_then(|()| Catalog::open(&db))
            .and_then(|catalog| Ok((catalog.setting_or_insert("artifacts", &wanted)?, catalog)));
        // A registry this process cannot write (a read-only mount, another user's directory)
        // is still read: ls, show, pull and serve need nothing more, and a change is refused
        // with a message that says so.
        let (location, catalog) = match writable {
            Ok(opened) => opened,
            Err(write_error) => match Catalog::open_read_only(&db) {
                Ok(catalog) => (
                    catalog.setting("artifacts")?.unwrap_or_else(|| "local".to_owned()),
                    catalog.because(match &write_error {
                        RegistryError::Database { reason, .. } => format!("opening it for writing failed: {reason}"),
                        other => format!("opening it for writing failed: {other}"),
                    }),
                ),
                Err(_) => return Err(write_error),
            },
        };
        if config.artifacts.as_deref().is_some_and(|w| w != location) {
            return Err(RegistryError::Config(format!(
                "registry {} keeps its artifacts in {location}, not {wanted}; use another --registry directory for another store",
                root.display()
            )));
        }
        let artifacts = ArtifactStore::open(&location, &root.join("artifacts"))?;
        Ok(Registry { catalog: Index::Local(Arc::new(catalog)), artifacts, root: root.clone(), max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES, kept: None })
    }

    /// A registry wholly in a bucket: catalog documents under `<prefix>/catalog/`, artifacts under
    /// `<prefix>/sha256/`, one client for both. Nothing is created until the first push.
    fn open_bucket(url: &str, config: &RegistryConfig) -> Result<Self, RegistryError> {
        if config.artifacts.as_deref().is_some_and(|a| a.trim_end_matches('/') != url.trim_end_matches('/')) {
            return Err(RegistryError::Config(format!(
                "the registry {url} keeps its artifacts in the same bucket and prefix; drop --artifacts (or MODELSHIP_ARTIFACTS)"
            )));
        }
        #[cfg(feature = "s3")]
        {
            let (store, prefix) = crate::artifacts::s3_bucket(url)?;
            let catalog = BucketCatalog::new(Arc::clone(&store), prefix.clone(), url);
            Ok(Registry {
                catalog: Index::Bucket(catalog),
                artifacts: ArtifactStore::in_bucket(store, prefix, url),
                root: config.root.clone(),
                max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
                kept: None,
            })
        }
        #[cfg(not(feature = "s3"))]
        Err(RegistryError::Config(format!("the registry {url} is in S3, but this build of modelship has no S3 support; rebuild with `--features s3`")))
    }

    /// A registry in an object store the caller opened (tests: `object_store`'s in-memory store).
    pub fn in_store(store: Arc<dyn object_store::ObjectStore>, url: &str) -> Self {
        let prefix = object_store::path::Path::default();
        Registry {
            catalog: Index::Bucket(BucketCatalog::new(Arc::clone(&store), prefix.clone(), url)),
            artifacts: ArtifactStore::in_bucket(store, prefix, url),
            root: PathBuf::from(url),
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            kept: None,
        }
    }

    /// The largest artifact a push or an import takes (default [`DEFAULT_MAX_ARTIFACT_BYTES`]).
    pub fn with_max_artifact_bytes(mut self, limit: u64) -> Self {
        self.max_artifact_bytes = limit;
        self
    }

    /// Keeps copies of what is read from a remote store under `dir` (see [`crate::kept`]):
    /// artifacts are read there first, and [`Registry::resolve_or_kept`] falls back on the
    /// version last served when the registry cannot be reached. A registry whose artifacts are
    /// in a local directory keeps nothing: it is its own copy.
    pub fn with_kept_copies(mut self, dir: &Path) -> Self {
        if self.artifacts.is_remote() {
            self.kept = Some(Arc::new(KeptCopies::new(dir, self.artifacts.location())));
        }
        self
    }

    /// Whether this registry was opened read-only (it could not be written).
    pub fn is_read_only(&self) -> bool {
        self.catalog.writable().is_err()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn artifact_location(&self) -> &str {
        self.artifacts.location()
    }

    /// Registers `file` as `request.name:request.version`.
    pub async fn push(&self, request: PushRequest, file: &Path, progress: &dyn Progress) -> Result<PushOutcome, RegistryError> {
        check_name(&request.name)?;
        check_version(&request.version)?;
        self.catalog.writable()?;
        let bytes = read_model(file, self.max_artifact_bytes).await?;
        let mut request = request;
        request.source = request.source.or_else(|| Some(file.display().to_string()));
        let record = new_record(request, &bytes)?;
        drop(bytes);
        crash_point("push:hashed");
        self.remove_stale_partials();
        let digest = record.digest.clone();
        // Refuse a conflict before uploading anything.
        if let Some(existing) = self.catalog.get(&record.name, &record.version).await? {
            return if existing.digest == digest {
                Ok(PushOutcome::Unchanged(existing))
            } else {
                Err(RegistryError::VersionConflict { name: record.name, version: record.version, existing: existing.digest, pushed: digest })
            };
        }
        self.artifacts.put_file(file, &digest, record.size, progress).await?;
        crash_point("push:artifact-written");
        let inserted = self.catalog.insert(&record).await?;
        crash_point("push:committed");
        match inserted {
            Inserted::Created => Ok(PushOutcome::Created(self.catalog.get(&record.name, &record.version).await?.unwrap_or(record))),
            Inserted::Unchanged(existing) => Ok(PushOutcome::Unchanged(*existing)),
        }
    }

    /// Removes what pushes that died long ago left: staging files older than [`STALE_PARTIAL`].
    /// Best effort: a push never fails for it.
    fn remove_stale_partials(&self) {
        match self.artifacts.remove_partials(STALE_PARTIAL) {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(files = removed.len(), bytes = removed.iter().map(|f| f.bytes).sum::<u64>(), "removed the partial artifacts of interrupted pushes");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot remove the partial artifacts of interrupted pushes"),
        }
    }

    /// Removes the staging files of interrupted pushes and, when asked, the complete artifacts
    /// no version references; never a referenced artifact, never a file younger than
    /// `options.older_than`. Works on a registry whose artifacts are in a local directory
    /// (a bucket keeps no staging files: set its lifecycle rule for incomplete multipart uploads).
    pub async fn gc(&self, options: GcOptions) -> Result<GcReport, RegistryError> {
        if !options.dry_run {
            self.catalog.writable()?;
        }
        let mut report = GcReport { dry_run: options.dry_run, ..GcReport::default() };
        if self.artifacts.local_dir().is_none() {
            if options.unreferenced {
                return Err(RegistryError::Config(format!(
                    "--unreferenced needs a registry whose artifacts are in a local directory; {} is a bucket (expire what no version references with the bucket's own tools)",
                    self.artifacts.location()
                )));
            }
            return Ok(report);
        }
        let (partial, complete) = self.artifacts.files()?;
        let older_than = options.older_than;
        let old_enough = move |f: &StoredFile| f.age >= older_than;
        report.kept_young += partial.iter().filter(|f| !old_enough(f)).count();
        report.partial = partial.into_iter().filter(old_enough).collect();
        if !options.dry_run {
            report.partial = remove_files(report.partial)?;
        }
        let Index::Local(catalog) = &self.catalog else {
            return Ok(report);
        };
        let catalog = Arc::clone(catalog);
        let sweep = move |referenced: &std::collections::HashSet<String>| -> Result<GcReport, RegistryError> {
            let unreferenced: Vec<StoredFile> = complete
                .into_iter()
                .filter(|f| f.path.file_name().is_some_and(|n| !referenced.contains(n.to_string_lossy().as_ref())))
                .collect();
            if !options.unreferenced {
                report.kept_unreferenced = unreferenced.len();
                return Ok(report);
            }
            // Their ages again, now that no version can be committed: a push that reused one
            // since it was listed marked it as just used.
            let unreferenced: Vec<StoredFile> = unreferenced.into_iter().filter_map(|f| restat(f).ok()).collect();
            report.kept_young += unreferenced.iter().filter(|f| !old_enough(f)).count();
            report.unreferenced = unreferenced.into_iter().filter(old_enough).collect();
            if !options.dry_run {
                report.unreferenced = remove_files(report.unreferenced)?;
            }
            Ok(report)
        };
        if options.unreferenced && !options.dry_run {
            // Under the catalog's write lock: no version can be committed between the check and
            // the removal.
            tokio::task::spawn_blocking(move || catalog.with_referenced(sweep))
                .await
                .unwrap_or_else(|e| Err(RegistryError::Store(format!("registry task failed: {e}"))))
        } else {
            let records = self.catalog.list(None).await?;
            let referenced = records.iter().flat_map(|r| r.referenced_digests().map(str::to_owned)).collect();
            sweep(&referenced)
        }
    }

    /// Stores a warm-up sample (a V2 inference request a version must answer before it
    /// serves) beside the artifacts, content-addressed; returns the value of its label
    /// ([`crate::catalog::WARMUP_SAMPLE_LABEL`]), `sha256:<hex>`. Store it before the version
    /// that names it is committed, so a version never names a sample that is not there.
    pub async fn put_warmup_sample(&self, bytes: Bytes) -> Result<String, RegistryError> {
        self.catalog.writable()?;
        if bytes.len() as u64 > MAX_WARMUP_SAMPLE_BYTES {
            return Err(RegistryError::Config(format!(
                "the warm-up sample is {} bytes, over the limit of {} bytes: a few rows of the model's inputs are enough",
                bytes.len(),
                MAX_WARMUP_SAMPLE_BYTES
            )));
        }
        Ok(format!("sha256:{}", self.artifacts.put_bytes(bytes).await?))
    }

    /// Stores the file a version was converted from beside the artifacts, content-addressed;
    /// returns the value of its label ([`crate::catalog::SOURCE_DIGEST_LABEL`]), `sha256:<hex>`.
    /// Stored before the version that names it is committed.
    pub async fn put_original(&self, bytes: Bytes) -> Result<String, RegistryError> {
        self.catalog.writable()?;
        if bytes.len() as u64 > self.max_artifact_bytes {
            return Err(too_large("the original model file", bytes.len() as u64, self.max_artifact_bytes));
        }
        Ok(format!("sha256:{}", self.artifacts.put_bytes(bytes).await?))
    }

    /// The warm-up sample a version's label names, checked against its digest; `None` when it
    /// names none.
    pub async fn warmup_sample(&self, record: &VersionRecord) -> Result<Option<Bytes>, RegistryError> {
        match record.warmup_sample_digest() {
            None => Ok(None),
            Some(digest) => self.verified(digest, &NoProgress).await.map(Some),
        }
    }

    /// The bytes of `digest`, checked against it: the kept copy when there is a sound one, else
    /// read from the store (and kept).
    async fn verified(&self, digest: &str, progress: &dyn Progress) -> Result<Bytes, RegistryError> {
        let Some(kept) = &self.kept else { return self.artifacts.get(digest, progress).await };
        if let Some(bytes) = kept.artifact(digest).await {
            return Ok(bytes);
        }
        let bytes = self.artifacts.get(digest, progress).await?;
        if let Err(e) = kept.keep(digest, bytes.clone()).await {
            tracing::warn!(digest, error = %e, "cannot keep a copy of the artifact; serving it from memory");
        }
        Ok(bytes)
    }

    /// Registers in-memory bytes (imports from other registries).
    pub async fn push_bytes(&self, request: PushRequest, bytes: Bytes) -> Result<PushOutcome, RegistryError> {
        check_name(&request.name)?;
        check_version(&request.version)?;
        self.catalog.writable()?;
        if bytes.len() as u64 > self.max_artifact_bytes {
            return Err(too_large(request.source.as_deref().unwrap_or("the artifact"), bytes.len() as u64, self.max_artifact_bytes));
        }
        let record = new_record(request, &bytes)?;
        self.remove_stale_partials();
        self.artifacts.put_bytes(bytes).await?;
        match self.catalog.insert(&record).await? {
            Inserted::Created => Ok(PushOutcome::Created(record)),
            Inserted::Unchanged(existing) => Ok(PushOutcome::Unchanged(*existing)),
        }
    }

    pub async fn list(&self, name: Option<&str>) -> Result<Vec<VersionRecord>, RegistryError> {
        if let Some(n) = name {
            check_name(n)?;
            if !self.catalog.has_model(n).await? {
                return Err(RegistryError::UnknownModel(n.to_owned()));
            }
        }
        self.catalog.list(name).await
    }

    /// The version a reference names now.
    pub async fn resolve(&self, reference: &ModelRef) -> Result<VersionRecord, RegistryError> {
        let name = reference.name();
        if !self.catalog.has_model(name).await? {
            return Err(RegistryError::UnknownModel(name.to_owned()));
        }
        let found = match reference {
            ModelRef::Latest(n) => self.catalog.latest(n).await?,
            ModelRef::Version(n, v) => {
                Some(self.catalog.get(n, v).await?.ok_or_else(|| RegistryError::UnknownVersion { name: n.clone(), version: v.clone() })?)
            }
            ModelRef::Alias(n, a) => {
                let v = self
                    .catalog
                    .alias_target(n, a)
                    .await?
                    .ok_or_else(|| RegistryError::UnknownAlias { name: n.clone(), alias: a.clone() })?;
                self.catalog.get(n, &v).await?
            }
        };
        found.ok_or_else(|| RegistryError::UnknownModel(name.to_owned()))
    }

    /// The version `reference` names now; or, when the registry cannot be reached (its store
    /// failed to answer: a network cut, a server down, refused credentials; not an answer such
    /// as an unknown alias) and this host kept the version it last served under `reference`,
    /// that version, with why it was chosen.
    pub async fn resolve_or_kept(&self, reference: &ModelRef) -> Result<(VersionRecord, Option<String>), RegistryError> {
        match self.resolve(reference).await {
            Ok(record) => Ok((record, None)),
            Err(RegistryError::Store(why)) => {
                let Some(kept) = self.kept.as_ref().and_then(|k| k.served(&reference.to_string())) else {
                    return Err(RegistryError::Store(why));
                };
                let age_s = (now_ms() - kept.served_ms).max(0) / 1000;
                Ok((kept.record, Some(format!("the registry cannot be reached ({why}); serving the kept copy of the version last served under {reference} (recorded {age_s} s ago)"))))
            }
            Err(e) => Err(e),
        }
    }

    /// Records `version` of `reference`'s model as served under `reference` (its artifact and
    /// warm-up sample kept, fetched first when missing), for [`Registry::resolve_or_kept`].
    /// Returns whether anything is kept (false for a registry that keeps no copies).
    pub async fn record_served(&self, reference: &ModelRef, version: &str) -> Result<bool, RegistryError> {
        let Some(kept) = &self.kept else { return Ok(false) };
        let record = self.resolve(&ModelRef::Version(reference.name().to_owned(), version.to_owned())).await?;
        self.verified(&record.digest, &NoProgress).await?;
        self.warmup_sample(&record).await?;
        let (kept, reference) = (Arc::clone(kept), reference.to_string());
        tokio::task::spawn_blocking(move || kept.record_served(&reference, &record))
            .await
            .map_err(|e| RegistryError::Store(format!("recording the served version failed: {e}")))??;
        Ok(true)
    }

    /// The version an alias points at now, without reading the record (cheap enough to poll).
    pub async fn alias_target(&self, name: &str, alias: &str) -> Result<Option<String>, RegistryError> {
        self.catalog.alias_target(name, alias).await
    }

    /// The artifact of a version, checked against its digest.
    pub async fn artifact(&self, record: &VersionRecord, progress: &dyn Progress) -> Result<Bytes, RegistryError> {
        self.verified(&record.digest, progress).await
    }

    /// Writes a version's artifact to `dest`, atomically (a temporary file renamed into place).
    pub async fn pull(&self, record: &VersionRecord, dest: &Path, progress: &dyn Progress) -> Result<(), RegistryError> {
        let bytes = self.artifact(record, progress).await?;
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let file_name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model.onnx".to_owned());
        let tmp = dir.join(format!(".{file_name}.{}.partial", std::process::id()));
        tokio::fs::write(&tmp, &bytes).await.map_err(RegistryError::io(format!("cannot write {}", tmp.display())))?;
        tokio::fs::rename(&tmp, dest).await.map_err(RegistryError::io(format!("cannot write {}", dest.display())))?;
        Ok(())
    }

    pub async fn remove(&self, name: &str, version: &str, force: bool, actor: &str) -> Result<(), RegistryError> {
        check_name(name)?;
        check_version(version)?;
        self.catalog.writable()?;
        if let Some(digest) = self.catalog.remove(name, version, force, actor).await? {
            self.artifacts.delete(&digest).await?;
        }
        Ok(())
    }

    pub async fn set_alias(&self, name: &str, alias: &str, version: &str, actor: &str) -> Result<Option<AliasMove>, RegistryError> {
        self.move_alias(name, alias, version, None, actor).await
    }

    /// [`Registry::set_alias`], only if the alias names `expected` now (or `version` already):
    /// a compare and set, so a move made meanwhile is never undone
    /// ([`RegistryError::AliasMoved`]).
    pub async fn set_alias_if(&self, name: &str, alias: &str, expected: &str, version: &str, actor: &str) -> Result<Option<AliasMove>, RegistryError> {
        self.move_alias(name, alias, version, Some(expected), actor).await
    }

    async fn move_alias(&self, name: &str, alias: &str, version: &str, expected: Option<&str>, actor: &str) -> Result<Option<AliasMove>, RegistryError> {
        check_name(name)?;
        check_alias(alias)?;
        check_version(version)?;
        self.catalog.writable()?;
        if self.catalog.get(name, version).await?.is_none() {
            return Err(if self.catalog.has_model(name).await? {
                RegistryError::UnknownVersion { name: name.to_owned(), version: version.to_owned() }
            } else {
                RegistryError::UnknownModel(name.to_owned())
            });
        }
        self.catalog.set_alias(name, alias, version, expected, actor).await
    }

    /// Records results on a version (`modelship validate --record`): metrics and labels merged
    /// into its record. Metric values must be finite.
    pub async fn annotate(
        &self,
        name: &str,
        version: &str,
        metrics: &BTreeMap<String, f64>,
        labels: &BTreeMap<String, String>,
    ) -> Result<VersionRecord, RegistryError> {
        check_name(name)?;
        check_version(version)?;
        if let Some((key, value)) = metrics.iter().find(|(_, v)| !v.is_finite()) {
            return Err(RegistryError::Config(format!("metric {key}={value} is not a finite number")));
        }
        if !self.catalog.has_model(name).await? {
            return Err(RegistryError::UnknownModel(name.to_owned()));
        }
        self.catalog.annotate(name, version, metrics, labels).await
    }

    pub async fn history(&self, name: &str) -> Result<Vec<AliasMove>, RegistryError> {
        check_name(name)?;
        let history = self.catalog.history(name).await?;
        if history.is_empty() && !self.catalog.has_model(name).await? {
            return Err(RegistryError::UnknownModel(name.to_owned()));
        }
        Ok(history)
    }
}
