//! The content-addressed artifact store: `sha256/<hex digest>` under a local directory or an
//! S3-compatible bucket prefix, through `object_store`.
//!
//! Writes are atomic in both backends (a local file is staged and renamed; an S3 multipart upload
//! becomes visible only when completed), so a crash never leaves a partial artifact under its
//! final name. Every read is hashed and checked against the digest it was asked for.
//!
//! A crash does leave the staging file behind in a local store: `sha256/<digest>#<n>`, which
//! `object_store` never lists or reuses. [`ArtifactStore::partials`] finds them for
//! `models gc`, and every push removes the ones older than [`STALE_PARTIAL`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::registry::Progress;
use crate::RegistryError;

/// Upload and download granularity.
const CHUNK: usize = 8 * 1024 * 1024;

/// A staging file this old belongs to a push that died: no push takes an hour between writing
/// its first byte and renaming the file (a 4 GiB artifact on a slow disk takes minutes), so
/// removing it never hurts a push in progress.
pub const STALE_PARTIAL: Duration = Duration::from_secs(3600);

pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    /// Where artifacts live, for messages: a directory or an `s3://` URL.
    location: String,
    /// The directory of a local store (its files are named `sha256/<digest>` under it).
    dir: Option<PathBuf>,
}

/// A file in a local artifact store, as `models gc` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredFile {
    pub path: PathBuf,
    pub bytes: u64,
    /// How long ago it was last written.
    #[serde(skip)]
    pub age: Duration,
}

/// Whether `name` is `object_store`'s staging name for an artifact: `<64 hex>#<n>`.
fn is_partial(name: &str) -> bool {
    name.split_once('#').is_some_and(|(digest, n)| is_digest(digest) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

pub(crate) fn is_digest(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Removes `files` (one already gone is not an error: another gc or push took it); returns the
/// ones removed.
pub(crate) fn remove_files(files: Vec<StoredFile>) -> Result<Vec<StoredFile>, RegistryError> {
    let mut removed = Vec::with_capacity(files.len());
    for file in files {
        match std::fs::remove_file(&file.path) {
            Ok(()) => removed.push(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RegistryError::io(format!("cannot remove {}", file.path.display()))(e)),
        }
    }
    Ok(removed)
}

/// Test-only crash points: with `MODELSHIP_CRASH_AT=<point>` in the environment the process
/// aborts at that point of a push, as a kill would stop it there (no unwinding, no cleanup), so
/// the crash tests reach every step of a push deterministically. Nothing else sets it.
pub(crate) fn crash_armed(point: &str) -> bool {
    std::env::var_os("MODELSHIP_CRASH_AT").is_some_and(|p| p == point)
}

pub(crate) fn crash_point(point: &str) {
    if crash_armed(point) {
        std::process::abort();
    }
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An S3-compatible bucket and key prefix from `s3://bucket[/prefix]`, with credentials and
/// endpoint from the standard AWS environment variables. Conditional writes (`If-Match`,
/// `If-None-Match`) are on: the bucket catalog relies on them.
#[cfg(feature = "s3")]
pub fn s3_bucket(url: &str) -> Result<(Arc<dyn ObjectStore>, StorePath), RegistryError> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| RegistryError::Config(format!("'{url}' is not an s3://bucket/prefix URL")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(RegistryError::Config(format!("'{url}' names no bucket")));
    }
    let mut builder = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
        // A store that does not answer is said so within seconds (a start without the network
        // then serves the kept copy), not after object_store's default of 10 tries over 3 min.
        .with_retry(object_store::RetryConfig { max_retries: 3, retry_timeout: std::time::Duration::from_secs(15), ..Default::default() });
    // A whole request may take as long as a large artifact needs (the default, 30 s, fails a
    // 1 GB download on a 20 MB/s link); a read that stalls for 30 s ends it. `AWS_TIMEOUT` and
    // `AWS_READ_TIMEOUT` (read by `from_env`) still win.
    use object_store::{ClientConfigKey, aws::AmazonS3ConfigKey};
    for (variable, key, value) in [("AWS_TIMEOUT", ClientConfigKey::Timeout, "1h"), ("AWS_READ_TIMEOUT", ClientConfigKey::ReadTimeout, "30s")] {
        if std::env::var_os(variable).is_none() {
            builder = builder.with_config(AmazonS3ConfigKey::Client(key), value);
        }
    }
    if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
        builder = builder.with_endpoint(endpoint);
    }
    Ok((Arc::new(builder.build()?), StorePath::from(prefix.trim_matches('/'))))
}

impl ArtifactStore {
    /// Whether the artifacts are somewhere else than a local directory (a bucket).
    pub fn is_remote(&self) -> bool {
        self.dir.is_none()
    }

    /// Artifacts under a local directory (created if missing).
    pub fn local(dir: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(dir).map_err(RegistryError::io(format!("cannot create {}", dir.display())))?;
        // Synced before the rename and the version's commit (itself `synchronous=FULL`): a power
        // loss never leaves a committed version whose artifact's bytes were still in the cache.
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?.with_fsync(true);
        Ok(ArtifactStore {
            store: Arc::new(store),
            prefix: StorePath::default(),
            location: dir.display().to_string(),
            dir: Some(dir.to_path_buf()),
        })
    }

    /// Artifacts in an S3-compatible bucket: `s3://bucket[/prefix]`. Credentials and endpoint come
    /// from the standard AWS environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
    #[cfg(feature = "s3")]
    pub fn s3(url: &str) -> Result<Self, RegistryError> {
        let (store, prefix) = s3_bucket(url)?;
        Ok(ArtifactStore::in_bucket(store, prefix, url))
    }

    /// Artifacts under `prefix` of an object store the caller opened (a registry that keeps its
    /// catalog in the same bucket shares one client).
    pub fn in_bucket(store: Arc<dyn ObjectStore>, prefix: StorePath, url: &str) -> Self {
        ArtifactStore { store, prefix, location: url.trim_end_matches('/').to_owned(), dir: None }
    }

    /// Opens the store a registry recorded: `local` (under `default_dir`) or an `s3://` URL.
    pub fn open(location: &str, default_dir: &Path) -> Result<Self, RegistryError> {
        if location == "local" {
            return ArtifactStore::local(default_dir);
        }
        if location.starts_with("s3://") {
            #[cfg(feature = "s3")]
            return ArtifactStore::s3(location);
            #[cfg(not(feature = "s3"))]
            return Err(RegistryError::Config(format!(
                "artifacts are in {location}, but this build of modelship has no S3 support; rebuild with `--features s3`"
            )));
        }
        Err(RegistryError::Config(format!("unknown artifact store '{location}': use 'local' or s3://bucket/prefix")))
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// The directory of a local store; `None` for a bucket.
    pub fn local_dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The files of a local store, split into staging files left by interrupted pushes
    /// (`<digest>#<n>`) and complete artifacts (`<digest>`); other names are not the store's and
    /// are left out. A bucket has neither: an interrupted multipart upload is invisible and is
    /// the bucket's lifecycle rules' to expire.
    pub fn files(&self) -> Result<(Vec<StoredFile>, Vec<StoredFile>), RegistryError> {
        let (mut partial, mut complete) = (Vec::new(), Vec::new());
        let Some(dir) = &self.dir else { return Ok((partial, complete)) };
        let dir = dir.join("sha256");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((partial, complete)),
            Err(e) => return Err(RegistryError::io(format!("cannot list {}", dir.display()))(e)),
        };
        let now = SystemTime::now();
        for entry in entries {
            let entry = entry.map_err(RegistryError::io(format!("cannot list {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let list = if is_partial(&name) {
                &mut partial
            } else if is_digest(&name) {
                &mut complete
            } else {
                continue;
            };
            // Gone since it was listed: a push renamed it, or another gc removed it.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
            list.push(StoredFile { path: entry.path(), bytes: meta.len(), age });
        }
        partial.sort_by(|a, b| a.path.cmp(&b.path));
        complete.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((partial, complete))
    }

    /// Removes the staging files older than `age` (best effort: a file another process removed
    /// first is not an error); returns what was removed.
    pub fn remove_partials(&self, age: Duration) -> Result<Vec<StoredFile>, RegistryError> {
        let (partial, _) = self.files()?;
        remove_files(partial.into_iter().filter(|f| f.age >= age).collect())
    }

    /// Whether an artifact the store has is still there once marked as just used (its
    /// modification time), so a `gc --unreferenced` running now leaves it to the push that found
    /// it; `false` when gc removed it first (the push then writes it again). Always `true` for a
    /// bucket, where gc does not remove unreferenced artifacts.
    fn keep(&self, digest: &str) -> bool {
        let Some(dir) = &self.dir else { return true };
        let path = dir.join("sha256").join(digest);
        match std::fs::File::options().append(true).open(&path).and_then(|f| f.set_modified(SystemTime::now())) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot mark a reused artifact as used");
                true
            }
        }
    }

    fn key(&self, digest: &str) -> StorePath {
        self.prefix.clone().join("sha256").join(digest)
    }

    pub async fn contains(&self, digest: &str) -> Result<bool, RegistryError> {
        match self.store.head(&self.key(digest)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Uploads `file`, whose content is `size` bytes hashing to `digest`, unless the store
    /// already has it. Reads at most `size + 1` bytes: a file that grew, shrank or changed since
    /// it was hashed is refused, never stored under the wrong name.
    pub async fn put_file(&self, file: &Path, digest: &str, size: u64, progress: &dyn Progress) -> Result<(), RegistryError> {
        if self.contains(digest).await? && self.keep(digest) {
            return Ok(());
        }
        let reader = tokio::fs::File::open(file).await.map_err(RegistryError::io(format!("cannot read {}", file.display())))?;
        let mut reader = reader.take(size.saturating_add(1));
        progress.start("upload", size);
        let upload = self.store.put_multipart(&self.key(digest)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1024 * 1024];
        let mut written = 0u64;
        loop {
            let n = reader.read(&mut buf).await.map_err(RegistryError::io(format!("cannot read {}", file.display())))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            writer.wait_for_capacity(4).await?;
            writer.write(&buf[..n]);
            written += n as u64;
            progress.advance(n as u64);
            if written >= CHUNK as u64 && crash_armed("push:artifact-partial") {
                // The first part is in the staging file, the rest is not.
                writer.wait_for_capacity(0).await?;
                crash_point("push:artifact-partial");
            }
        }
        // The file changed between hashing and upload: do not store it under the wrong name.
        let actual = hex::encode(hasher.finalize());
        if actual != digest || written != size {
            writer.abort().await?;
            return Err(RegistryError::Io {
                context: format!("{} changed while it was being pushed", file.display()),
                source: std::io::Error::other("content changed"),
            });
        }
        writer.finish().await?;
        progress.finish();
        Ok(())
    }

    /// Stores `bytes` under their digest (small artifacts, tests).
    pub async fn put_bytes(&self, bytes: Bytes) -> Result<String, RegistryError> {
        let digest = sha256_hex(&bytes);
        if !(self.contains(&digest).await? && self.keep(&digest)) {
            self.store.put(&self.key(&digest), PutPayload::from_bytes(bytes)).await?;
        }
        Ok(digest)
    }

    /// Reads an artifact whole and checks it against its digest.
    pub async fn get(&self, digest: &str, progress: &dyn Progress) -> Result<Bytes, RegistryError> {
        let result = self.store.get(&self.key(digest)).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => RegistryError::MissingArtifact { digest: digest.to_owned() },
            other => other.into(),
        })?;
        progress.start("download", result.meta.size);
        let mut stream = result.into_stream();
        let mut bytes = BytesMut::new();
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            progress.advance(chunk.len() as u64);
            bytes.extend_from_slice(&chunk);
        }
        progress.finish();
        let actual = hex::encode(hasher.finalize());
        if actual != digest {
            return Err(RegistryError::DigestMismatch { digest: digest.to_owned(), actual });
        }
        Ok(bytes.freeze())
    }

    pub async fn delete(&self, digest: &str) -> Result<(), RegistryError> {
        match self.store.delete(&self.key(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn staging_names_are_told_from_artifacts_and_strangers() {
        let digest = "a".repeat(64);
        for (name, partial, artifact) in [
            (format!("{digest}#1"), true, false),
            (format!("{digest}#123"), true, false),
            (digest.clone(), false, true),
            (format!("{digest}#"), false, false),
            (format!("{digest}#x"), false, false),
            (format!("{}#1", "A".repeat(64)), false, false),
            (format!("{}#1", "a".repeat(63)), false, false),
            ("registry.db".to_owned(), false, false),
            ("notes#1".to_owned(), false, false),
        ] {
            assert_eq!((super::is_partial(&name), super::is_digest(&name)), (partial, artifact), "{name}");
        }
    }
}
