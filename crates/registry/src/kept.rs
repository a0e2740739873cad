//! A host's own copies of what it served from a remote registry, so that a device that loses its
//! network (an edge board, a server whose bucket is down) starts again on the version it last
//! served instead of not at all.
//!
//! Two things under one directory (`STATE_DIR/registry-copies` for `serve`):
//! - `sha256/<digest>`: artifacts (and warm-up samples) read from the remote store, each checked
//!   against its digest when written and again when read; a copy that no longer hashes to its
//!   name is deleted and fetched again. Reads go here first, so a version the host already holds
//!   is never downloaded twice.
//! - `served/<key>.json`: per registry and reference (`fraud@production` of `s3://models/reg`),
//!   the version last served under it and the one before it. `<key>` is a hash of both: a user's
//!   name never becomes part of a path, and a host moved to another registry never starts on the
//!   first one's copy. Only those versions' files are kept; the rest are removed when a new
//!   version is recorded (those written in the last ten minutes stay: another model of the same
//!   server may be about to record them), so the directory holds about two versions per followed
//!   reference.
//!
//! Every file is written to a temporary name, synced and renamed into place: a power cut leaves
//! the previous file or the new one, never half of one (and the temporary file, removed by the
//! next prune).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::RegistryError;
use crate::artifacts::{is_digest, sha256_hex};
use crate::catalog::{VersionRecord, now_ms};

/// What `served/<key>.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Served {
    /// The registry it came from (`s3://models/reg`).
    pub registry: String,
    /// The reference it was served under, as written (`fraud@production`).
    pub reference: String,
    /// The version served last, and when it was recorded (milliseconds since the Unix epoch).
    pub record: VersionRecord,
    pub served_ms: i64,
    /// The version served before it, kept for a rollback that needs no download.
    pub previous: Option<VersionRecord>,
}

/// The kept copies under one directory.
#[derive(Debug)]
pub struct KeptCopies {
    dir: PathBuf,
    /// The registry's location, part of every record's key.
    registry: String,
}

/// Files younger than this are never pruned: a copy just kept for a version another follower is
/// about to record, or a temporary file being written.
const PRUNE_AFTER: Duration = Duration::from_secs(600);

impl KeptCopies {
    pub fn new(dir: &Path, registry: &str) -> Self {
        KeptCopies { dir: dir.to_path_buf(), registry: registry.to_owned() }
    }

    fn artifact_path(&self, digest: &str) -> Option<PathBuf> {
        is_digest(digest).then(|| self.dir.join("sha256").join(digest))
    }

    fn served_path(&self, reference: &str) -> PathBuf {
        let key = format!("{}\n{reference}", self.registry);
        self.dir.join("served").join(format!("{}.json", &sha256_hex(key.as_bytes())[..32]))
    }

    /// The kept copy of `digest` when there is one that still hashes to it. A damaged copy is
    /// removed (and reported), so the caller fetches it again.
    pub async fn artifact(&self, digest: &str) -> Option<Bytes> {
        let path = self.artifact_path(digest)?;
        let bytes = tokio::fs::read(&path).await.ok()?;
        let actual = sha256_hex(&bytes);
        if actual != digest {
            tracing::warn!(path = %path.display(), actual, "a kept copy no longer matches its digest; removed, it will be fetched again");
            let _ = tokio::fs::remove_file(&path).await;
            return None;
        }
        Some(Bytes::from(bytes))
    }

    /// Keeps `bytes`, already checked against `digest` by the caller.
    pub async fn keep(&self, digest: &str, bytes: Bytes) -> Result<(), RegistryError> {
        let Some(path) = self.artifact_path(digest) else { return Ok(()) };
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(());
        }
        let dir = self.dir.join("sha256");
        tokio::task::spawn_blocking(move || write_atomically(&dir, &path, &bytes))
            .await
            .map_err(|e| RegistryError::Store(format!("keeping a copy failed: {e}")))?
    }

    /// Whether `digest` is kept (present; its bytes are checked when read).
    fn holds(&self, digest: &str) -> bool {
        self.artifact_path(digest).is_some_and(|p| p.is_file())
    }

    /// What was last served under `reference` from this registry, when its artifact (and warm-up
    /// sample) are kept too.
    pub fn served(&self, reference: &str) -> Option<Served> {
        let text = std::fs::read(self.served_path(reference)).ok()?;
        let served: Served = serde_json::from_slice(&text)
            .map_err(|e| tracing::warn!(reference, error = %e, "the record of the kept version is unreadable; ignored"))
            .ok()?;
        let complete = self.holds(&served.record.digest) && served.record.warmup_sample_digest().is_none_or(|d| self.holds(d));
        (served.registry == self.registry && served.reference == reference && complete).then_some(served)
    }

    /// Records `record` as the version served under `reference` (its artifact and warm-up sample
    /// must be kept already), then removes every kept file no record names.
    pub fn record_served(&self, reference: &str, record: &VersionRecord) -> Result<(), RegistryError> {
        let previous = self.served(reference);
        if previous.as_ref().is_some_and(|p| p.record.digest == record.digest && p.record.version == record.version) {
            return Ok(());
        }
        let served = Served {
            registry: self.registry.clone(),
            reference: reference.to_owned(),
            record: record.clone(),
            served_ms: now_ms(),
            previous: previous.map(|p| p.record).filter(|p| p.version != record.version),
        };
        let text = serde_json::to_vec_pretty(&served).map_err(|e| RegistryError::Store(e.to_string()))?;
        write_atomically(&self.dir.join("served"), &self.served_path(reference), &text)?;
        self.prune();
        Ok(())
    }

    /// Removes kept artifacts that no `served/` record names (this one's, and other references'
    /// that share the directory).
    fn prune(&self) {
        let mut wanted = BTreeSet::new();
        for entry in std::fs::read_dir(self.dir.join("served")).into_iter().flatten().flatten() {
            let Ok(text) = std::fs::read(entry.path()) else { continue };
            let Ok(served) = serde_json::from_slice::<Served>(&text) else { continue };
            for record in std::iter::once(&served.record).chain(served.previous.as_ref()) {
                wanted.insert(record.digest.clone());
                wanted.extend(record.warmup_sample_digest().map(str::to_owned));
            }
        }
        let recent = |entry: &std::fs::DirEntry| {
            let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            SystemTime::now().duration_since(modified).unwrap_or_default() < PRUNE_AFTER
        };
        for dir in ["sha256", "served"] {
            for entry in std::fs::read_dir(self.dir.join(dir)).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // Kept copies no record names, and temporary files a crash left behind.
                let unwanted = if name.starts_with('.') { true } else { dir == "sha256" && is_digest(&name) && !wanted.contains(&name) };
                if unwanted && !recent(&entry) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// Writes `bytes` to `path` under `dir` through a synced temporary file and a rename.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    std::fs::create_dir_all(dir).map_err(RegistryError::io(format!("cannot create {}", dir.display())))?;
    // Unique per write: two writers of the same file never share a temporary name.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let unique = format!("{}.{}", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed));
    let temporary = dir.join(format!(".{}.{unique}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.map_err(RegistryError::io(format!("cannot write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: &str, bytes: &[u8]) -> VersionRecord {
        serde_json::from_value(serde_json::json!({
            "name": "fraud", "version": version, "digest": sha256_hex(bytes), "size": bytes.len(), "created_ms": 0,
            "description": null, "source": null, "metrics": {}, "labels": {},
            "onnx": {"opsets": [], "inputs": [], "outputs": [], "producer": null, "ir_version": 0}
        }))
        .unwrap()
    }

    /// Makes every file under `dir` an hour old, past [`PRUNE_AFTER`].
    fn age(dir: &Path) {
        for sub in ["sha256", "served"] {
            for entry in std::fs::read_dir(dir.join(sub)).into_iter().flatten().flatten() {
                let file = std::fs::File::options().append(true).open(entry.path()).unwrap();
                file.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn keeps_the_served_version_and_the_one_before_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let kept = KeptCopies::new(dir.path(), "s3://models/reg");
        let (one, two, three) = (record("1", b"one"), record("2", b"two"), record("3", b"three"));
        for (r, bytes) in [(&one, &b"one"[..]), (&two, b"two"), (&three, b"three")] {
            kept.keep(&r.digest, Bytes::copy_from_slice(bytes)).await.unwrap();
        }
        assert!(kept.served("fraud@production").is_none(), "nothing recorded yet");
        // A crash's leftover temporary file.
        std::fs::write(dir.path().join("sha256").join(format!(".{}.1.0", three.digest)), b"thr").unwrap();
        kept.record_served("fraud@production", &one).unwrap();
        assert!(kept.holds(&two.digest), "a copy written in the last ten minutes stays (another follower may record it)");
        age(dir.path());
        kept.record_served("fraud@staging", &one).unwrap();
        assert_eq!(kept.served("fraud@production").unwrap().record.version, "1");
        assert!(!kept.holds(&two.digest) && !kept.holds(&three.digest), "older copies no record names are removed");
        assert_eq!(std::fs::read_dir(dir.path().join("sha256")).unwrap().count(), 1, "and so are stale temporary files");
        // Another registry's host never starts on this one's copy.
        assert!(KeptCopies::new(dir.path(), "s3://other/reg").served("fraud@production").is_none());

        kept.keep(&two.digest, Bytes::from_static(b"two")).await.unwrap();
        kept.record_served("fraud@production", &two).unwrap();
        let served = kept.served("fraud@production").unwrap();
        assert_eq!((served.record.version.as_str(), served.previous.map(|p| p.version)), ("2", Some("1".to_owned())));
        assert_eq!(kept.artifact(&one.digest).await.as_deref(), Some(&b"one"[..]), "the one before is kept for a rollback");
        assert!(kept.served("fraud@canary").is_none(), "another reference has its own record");

        // A copy damaged on disk is refused and removed; its record then names nothing kept.
        std::fs::write(dir.path().join("sha256").join(&two.digest), b"tw0").unwrap();
        assert!(kept.artifact(&two.digest).await.is_none());
        assert!(!kept.holds(&two.digest));
        assert!(kept.served("fraud@production").is_none());
    }

    #[tokio::test]
    async fn names_never_become_paths() {
        let dir = tempfile::tempdir().unwrap();
        let kept = KeptCopies::new(dir.path(), "s3://models/reg");
        kept.keep("../../etc/passwd", Bytes::from_static(b"x")).await.unwrap();
        assert!(kept.artifact("../../etc/passwd").await.is_none());
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing written for a name that is no digest");
        let path = kept.served_path("../../x@y");
        assert_eq!(path.parent().unwrap(), dir.path().join("served"));
    }
}
