//! The registry against a real local store in a temporary directory.

use std::path::{Path, PathBuf};

use modelship_registry::{ModelRef, NoProgress, PushOutcome, PushRequest, Registry, RegistryConfig, RegistryError};

fn fixture(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if name == "fraud" { root.join("examples/models/fraud.onnx") } else { root.join(format!("testdata/models/{name}.onnx")) }
}

fn open(dir: &Path) -> Registry {
    Registry::open(&RegistryConfig { root: dir.to_path_buf(), artifacts: None }).unwrap()
}

fn request(name: &str, version: &str) -> PushRequest {
    PushRequest { name: name.into(), version: version.into(), ..Default::default() }
}

#[tokio::test]
async fn push_records_metadata_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path());
    let mut req = request("fraud", "1.3.0");
    req.metrics.insert("auc".into(), 0.931);
    req.labels.insert("team".into(), "risk".into());
    req.description = Some("gradient boosting, 100 trees".into());
    let PushOutcome::Created(record) = registry.push(req.clone(), &fixture("fraud"), &NoProgress).await.unwrap() else {
        panic!("expected a new version");
    };
    assert_eq!(record.digest.len(), 64);
    assert_eq!(record.metrics["auc"], 0.931);
    assert_eq!(record.onnx.inputs[0].name, "input");
    assert_eq!(record.onnx.outputs.len(), 2);
    // The artifact is stored under its digest, never under a user-given name.
    assert!(dir.path().join("artifacts/sha256").join(&record.digest).is_file());

    // Same bytes again: a no-op.
    assert!(matches!(registry.push(req.clone(), &fixture("fraud"), &NoProgress).await.unwrap(), PushOutcome::Unchanged(_)));
    // Different bytes under the same version: refused.
    let err = registry.push(req, &fixture("xgboost"), &NoProgress).await.unwrap_err();
    assert!(matches!(err, RegistryError::VersionConflict { .. }), "{err}");
    assert!(err.to_string().contains("versions are immutable"), "{err}");
    assert_eq!(registry.list(Some("fraud")).await.unwrap().len(), 1);
}

#[tokio::test]
async fn aliases_move_atomically_with_history() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path());
    registry.push(request("fraud", "1"), &fixture("fraud"), &NoProgress).await.unwrap();
    registry.push(request("fraud", "2"), &fixture("xgboost"), &NoProgress).await.unwrap();
    registry.set_alias("fraud", "production", "1", "test").await.unwrap();
    registry.set_alias("fraud", "production", "2", "test").await.unwrap();
    assert!(registry.set_alias("fraud", "production", "2", "test").await.unwrap().is_none(), "no-op move is not recorded");
    registry.set_alias("fraud", "staging", "1", "test").await.unwrap();
    let history = registry.history("fraud").await.unwrap();
    let moves: Vec<_> = history.iter().map(|m| (m.alias.as_str(), m.version.as_deref(), m.previous.as_deref())).collect();
    assert_eq!(moves, [("production", Some("1"), None), ("production", Some("2"), Some("1")), ("staging", Some("1"), None)]);
    let prod = registry.resolve(&ModelRef::parse("fraud@production").unwrap()).await.unwrap();
    assert_eq!(prod.version, "2");
    assert_eq!(prod.aliases, ["production"]);
    assert_eq!(registry.resolve(&ModelRef::parse("fraud").unwrap()).await.unwrap().version, "2", "latest");

    // Unknown targets are named.
    assert!(matches!(registry.set_alias("fraud", "production", "9", "t").await, Err(RegistryError::UnknownVersion { .. })));
    assert!(matches!(registry.set_alias("nope", "production", "1", "t").await, Err(RegistryError::UnknownModel(_))));
    assert!(matches!(registry.resolve(&ModelRef::parse("fraud@canary").unwrap()).await, Err(RegistryError::UnknownAlias { .. })));

    // rm is refused while an alias points at the version, unless forced.
    let err = registry.remove("fraud", "2", false, "t").await.unwrap_err();
    assert!(err.to_string().contains("alias(es) production"), "{err}");
    registry.remove("fraud", "2", true, "t").await.unwrap();
    assert!(registry.resolve(&ModelRef::parse("fraud@production").unwrap()).await.is_err());
    let last = registry.history("fraud").await.unwrap().pop().unwrap();
    assert_eq!((last.alias.as_str(), last.version, last.previous.as_deref()), ("production", None, Some("2")));
}

#[tokio::test]
async fn a_tampered_artifact_is_detected_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path());
    let PushOutcome::Created(record) = registry.push(request("fraud", "1"), &fixture("fraud"), &NoProgress).await.unwrap() else {
        panic!()
    };
    let path = dir.path().join("artifacts/sha256").join(&record.digest);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = registry.artifact(&record, &NoProgress).await.unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&format!("artifact {} is corrupt", record.digest)));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(registry.artifact(&record, &NoProgress).await.unwrap_err(), RegistryError::MissingArtifact { .. }));
}

#[tokio::test]
async fn hostile_names_never_reach_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path());
    for name in ["../escape", "/abs", "a/b", "..", "a b", "naïve", ""] {
        let err = registry.push(request(name, "1"), &fixture("fraud"), &NoProgress).await.unwrap_err();
        assert!(matches!(err, RegistryError::InvalidName { .. }), "{name}: {err}");
        let err = registry.push(request("ok", name), &fixture("fraud"), &NoProgress).await.unwrap_err();
        assert!(matches!(err, RegistryError::InvalidName { .. }), "version {name}: {err}");
    }
    assert!(registry.list(None).await.unwrap().is_empty());
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(entries.iter().all(|e| e.to_string_lossy().starts_with("registry.db") || e == "artifacts"), "{entries:?}");
}

#[tokio::test]
async fn not_onnx_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path());
    let file = dir.path().join("notes.onnx");
    std::fs::write(&file, "hello").unwrap();
    let err = registry.push(request("x", "1"), &file, &NoProgress).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotOnnx { .. }), "{err}");
}

#[tokio::test]
async fn concurrent_pushes_of_one_version_agree() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let root = root.clone();
        tasks.push(tokio::spawn(async move {
            let registry = Registry::open(&RegistryConfig { root, artifacts: None }).unwrap();
            let file = if i % 2 == 0 { fixture("fraud") } else { fixture("xgboost") };
            registry.push(PushRequest { name: "m".into(), version: "1".into(), ..Default::default() }, &file, &NoProgress).await
        }));
    }
    let mut created = 0;
    let mut digests = std::collections::HashSet::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(PushOutcome::Created(r)) => {
                created += 1;
                digests.insert(r.digest);
            }
            Ok(PushOutcome::Unchanged(r)) => {
                digests.insert(r.digest);
            }
            Err(RegistryError::VersionConflict { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(digests.len(), 1, "every success saw the same content");
    assert_eq!(open(&root).list(Some("m")).await.unwrap().len(), 1);
}

#[tokio::test]
async fn results_are_added_to_a_version_without_changing_it() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path());
    let mut req = request("fraud", "1");
    req.metrics.insert("auc".into(), 0.93);
    registry.push(req, &fixture("fraud"), &NoProgress).await.unwrap();
    registry.set_alias("fraud", "production", "1", "test").await.unwrap();
    let before = registry.resolve(&ModelRef::parse("fraud:1").unwrap()).await.unwrap();
    let metrics = [("validate.auc".to_owned(), 0.9457), ("auc".to_owned(), 0.94)].into();
    let labels = [("validate".to_owned(), "pass".to_owned())].into();
    let after = registry.annotate("fraud", "1", &metrics, &labels).await.unwrap();
    assert_eq!((after.metrics["auc"], after.metrics["validate.auc"], after.labels["validate"].as_str()), (0.94, 0.9457, "pass"));
    assert_eq!((after.digest, after.onnx, after.created_ms, after.aliases), (before.digest, before.onnx, before.created_ms, vec!["production".to_owned()]));
    assert_eq!(registry.resolve(&ModelRef::parse("fraud@production").unwrap()).await.unwrap().metrics["validate.auc"], 0.9457);
    let err = registry.annotate("fraud", "9", &metrics, &labels).await.unwrap_err();
    assert!(matches!(err, RegistryError::UnknownVersion { .. }), "{err}");
    let nan = [("validate.auc".to_owned(), f64::NAN)].into();
    assert!(registry.annotate("fraud", "1", &nan, &labels).await.unwrap_err().to_string().contains("not a finite number"));
}

/// A push reads only a regular file, and never more than its limit: a device, a directory or a
/// named pipe is refused by what it is (before it is opened: a pipe would wait for a writer),
/// a file over the limit by its size, naming the limit and how to raise it.
#[tokio::test]
async fn a_push_reads_only_a_regular_file_within_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.onnx");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let fraud = fixture("fraud");
    let size = std::fs::metadata(&fraud).unwrap().len();
    for (file, limit, says) in [
        (PathBuf::from("/dev/zero"), None, "it is a character device, not a regular file; push an ONNX file"),
        (dir.path().to_path_buf(), None, "it is a directory, not a regular file"),
        (fifo.clone(), None, "it is a named pipe, not a regular file"),
        (fraud.clone(), Some(size - 1), "over the limit of"),
        (fraud.clone(), Some(1024), "pass --max-size with a larger size"),
    ] {
        let mut registry = open(&dir.path().join("registry"));
        if let Some(limit) = limit {
            registry = registry.with_max_artifact_bytes(limit);
        }
        let pushed = tokio::time::timeout(std::time::Duration::from_secs(10), registry.push(request("m", "1"), &file, &NoProgress)).await;
        let err = pushed.expect("refused at once, never read without end").unwrap_err().to_string();
        assert!(err.contains(&format!("cannot push {}", file.display())) && err.contains(says), "{}: {err}", file.display());
    }
    // At the limit exactly, it is taken.
    let registry = open(&dir.path().join("registry")).with_max_artifact_bytes(size);
    assert!(matches!(registry.push(request("m", "1"), &fraud, &NoProgress).await.unwrap(), PushOutcome::Created(_)));
    // An import is held to the same limit.
    let registry = registry.with_max_artifact_bytes(size - 1);
    let err = registry.push_bytes(request("m", "2"), std::fs::read(&fraud).unwrap().into()).await.unwrap_err().to_string();
    assert!(err.contains("over the limit of"), "{err}");
}

/// Staging files of pushes that died long ago go at the next push; a young one (a push that
/// may be writing it now) stays.
#[tokio::test]
async fn a_push_removes_stale_partial_artifacts_only() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path());
    registry.push(request("fraud", "1"), &fixture("fraud"), &NoProgress).await.unwrap();
    let sha = dir.path().join("artifacts/sha256");
    let stale = sha.join(format!("{}#1", "a".repeat(64)));
    let young = sha.join(format!("{}#1", "b".repeat(64)));
    let stranger = sha.join("notes#1");
    for f in [&stale, &young, &stranger] {
        std::fs::write(f, vec![0u8; 4096]).unwrap();
    }
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for f in [&stale, &stranger] {
        std::fs::File::options().append(true).open(f).unwrap().set_modified(two_hours_ago).unwrap();
    }
    registry.push(request("fraud", "2"), &fixture("xgboost"), &NoProgress).await.unwrap();
    assert!(!stale.exists(), "an hour-old staging file is a dead push's");
    assert!(young.exists(), "a young one may be a push in progress");
    assert!(stranger.exists(), "a file that is not the store's is left alone");
}

/// `gc` removes staging files, and complete artifacts no version references only when asked;
/// never an artifact a version of any model references, never a file younger than asked.
#[tokio::test]
async fn gc_never_removes_what_a_version_uses() {
    use modelship_registry::GcOptions;
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path());
    registry.push(request("fraud", "1"), &fixture("fraud"), &NoProgress).await.unwrap();
    registry.push(request("other", "1"), &fixture("fraud"), &NoProgress).await.unwrap();
    registry.push(request("fraud", "2"), &fixture("xgboost"), &NoProgress).await.unwrap();
    let sha = dir.path().join("artifacts/sha256");
    let partial = sha.join(format!("{}#3", "c".repeat(64)));
    let orphan = sha.join("d".repeat(64));
    std::fs::write(&partial, vec![0u8; 1000]).unwrap();
    std::fs::write(&orphan, vec![0u8; 2000]).unwrap();
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(&sha).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    };
    let before = files();
    let gc = |older_than: u64, unreferenced: bool, dry_run: bool| {
        registry.gc(GcOptions { older_than: std::time::Duration::from_secs(older_than), unreferenced, dry_run })
    };
    let names = |list: &[modelship_registry::artifacts::StoredFile]| list.iter().map(|f| f.path.clone()).collect::<Vec<_>>();

    let young = gc(3600, true, false).await.unwrap();
    assert_eq!((young.partial.len(), young.unreferenced.len(), young.kept_young), (0, 0, 2), "{young:?}");
    let dry = gc(0, true, true).await.unwrap();
    assert_eq!((names(&dry.partial), names(&dry.unreferenced), dry.bytes()), (vec![partial.clone()], vec![orphan.clone()], 3000));
    assert_eq!(files(), before, "a dry run removes nothing");
    let kept = gc(0, false, false).await.unwrap();
    assert_eq!((names(&kept.partial), kept.unreferenced.len(), kept.kept_unreferenced), (vec![partial.clone()], 0, 1));
    assert!(!partial.exists() && orphan.exists());
    let swept = gc(0, true, false).await.unwrap();
    assert_eq!((swept.partial.len(), names(&swept.unreferenced)), (0, vec![orphan.clone()]));
    assert!(!orphan.exists());
    for reference in ["fraud:1", "fraud:2", "other:1"] {
        let record = registry.resolve(&ModelRef::parse(reference).unwrap()).await.unwrap();
        registry.artifact(&record, &NoProgress).await.unwrap_or_else(|e| panic!("{reference}: {e}"));
    }
    assert_eq!(files().len(), 2, "the two artifacts the three versions use: {:?}", files());
}

/// A catalog opened read-only reads as before and refuses every change up front, saying what
/// works and what a change needs. (A real read-only mount is exercised through the binary in
/// the e2e suite; root ignores file modes, so a chmod cannot stand in for it here.)
#[tokio::test]
async fn a_read_only_catalog_reads_and_refuses_changes() {
    use modelship_registry::catalog::Catalog;
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path());
    let PushOutcome::Created(record) = registry.push(request("fraud", "1"), &fixture("fraud"), &NoProgress).await.unwrap() else { panic!() };
    registry.set_alias("fraud", "production", "1", "test").await.unwrap();
    drop(registry);
    let catalog = Catalog::open_read_only(&dir.path().join("registry.db")).unwrap();
    assert!(catalog.is_read_only());
    assert_eq!(catalog.list(None).unwrap().len(), 1);
    assert_eq!(catalog.alias_target("fraud", "production").unwrap().as_deref(), Some("1"));
    assert_eq!(catalog.setting("artifacts").unwrap().as_deref(), Some("local"));
    let refusals = [
        catalog.insert(&record).map(|_| ()),
        catalog.set_alias("fraud", "staging", "1", None, "test").map(|_| ()),
        catalog.remove("fraud", "1", true, "test").map(|_| ()),
        catalog.annotate("fraud", "1", &Default::default(), &Default::default()).map(|_| ()),
        catalog.setting_or_insert("artifacts", "local").map(|_| ()),
    ];
    for refused in refusals {
        let e = refused.unwrap_err().to_string();
        assert!(e.contains("the registry is read-only here") && e.contains("needs a writable registry directory"), "{e}");
    }
    assert_eq!(catalog.list(None).unwrap().len(), 1, "nothing changed");
    let missing = Catalog::open_read_only(&dir.path().join("nowhere.db")).err().unwrap().to_string();
    assert!(missing.contains("no registry database here"), "{missing}");
}

/// A push that finds its artifact already stored (left by a push killed after its upload) marks
/// it as just used: a `gc --unreferenced` racing it removes only files older than its
/// --older-than, so it leaves the artifact to the version about to be committed.
#[tokio::test]
async fn a_reused_artifact_is_marked_as_just_used() {
    use modelship_registry::GcOptions;
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path());
    registry.push(request("other", "1"), &fixture("xgboost"), &NoProgress).await.unwrap();
    let bytes = std::fs::read(fixture("fraud")).unwrap();
    let artifact = dir.path().join("artifacts/sha256").join(modelship_registry::artifacts::sha256_hex(&bytes));
    std::fs::write(&artifact, &bytes).unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options().append(true).open(&artifact).unwrap().set_modified(two_hours_ago).unwrap();
    let sweep = GcOptions { older_than: std::time::Duration::from_secs(3600), unreferenced: true, dry_run: true };
    assert_eq!(registry.gc(sweep).await.unwrap().unreferenced.len(), 1, "an old artifact no version uses");

    registry.push(request("fraud", "1"), &fixture("fraud"), &NoProgress).await.unwrap();
    let age = std::fs::metadata(&artifact).unwrap().modified().unwrap().elapsed().unwrap();
    assert!(age < std::time::Duration::from_secs(60), "reused, so marked as just used: {age:?}");
    assert_eq!(registry.gc(GcOptions { dry_run: false, ..sweep }).await.unwrap().unreferenced.len(), 0);
    let record = registry.resolve(&ModelRef::parse("fraud:1").unwrap()).await.unwrap();
    registry.artifact(&record, &NoProgress).await.unwrap();
}
