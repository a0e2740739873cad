//! The content-addressed artifact store: `sha256/<hex digest>` under a local directory or an
//! S3-compatible bucket prefix, through `object_store`.
//!
//! Writes are atomic in both backends (a local file is staged and renamed; an S3 multipart upload
//! becomes visible only when completed), so a crash never leaves a partial artifact under its
//! final name. Every read is hashed and checked against the digest it was asked for.

use std::path::Path;
use std::sync::Arc;

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

pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    /// Where artifacts live, for messages: a directory or an `s3://` URL.
    location: String,
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
        .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
    if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
        builder = builder.with_endpoint(endpoint);
    }
    Ok((Arc::new(builder.build()?), StorePath::from(prefix.trim_matches('/'))))
}

impl ArtifactStore {
    /// Artifacts under a local directory (created if missing).
    pub fn local(dir: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(dir).map_err(RegistryError::io(format!("cannot create {}", dir.display())))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
        Ok(ArtifactStore { store: Arc::new(store), prefix: StorePath::default(), location: dir.display().to_string() })
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
        ArtifactStore { store, prefix, location: url.trim_end_matches('/').to_owned() }
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

    /// Uploads `file`, whose content hashes to `digest`, unless the store already has it.
    pub async fn put_file(&self, file: &Path, digest: &str, progress: &dyn Progress) -> Result<(), RegistryError> {
        if self.contains(digest).await? {
            return Ok(());
        }
        let mut reader = tokio::fs::File::open(file).await.map_err(RegistryError::io(format!("cannot read {}", file.display())))?;
        let size = reader.metadata().await.map(|m| m.len()).unwrap_or(0);
        progress.start("upload", size);
        let upload = self.store.put_multipart(&self.key(digest)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = reader.read(&mut buf).await.map_err(RegistryError::io(format!("cannot read {}", file.display())))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            writer.wait_for_capacity(4).await?;
            writer.write(&buf[..n]);
            progress.advance(n as u64);
        }
        // The file changed between hashing and upload: do not store it under the wrong name.
        let actual = hex::encode(hasher.finalize());
        if actual != digest {
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
        if !self.contains(&digest).await? {
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
