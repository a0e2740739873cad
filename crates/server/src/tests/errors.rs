//! The error table: every error has one HTTP status and one gRPC code, and ARCHITECTURE.md's
//! table ("Errors") is this table.

use std::collections::BTreeMap;

use modelship_features::FeatureError;
use modelship_inference::{DataType, InferError};
use modelship_registry::RegistryError;

use crate::error::{ApiError, Class};

/// One value of every variant (and every inner variant that maps on its own).
fn examples() -> Vec<ApiError> {
    let s = || "x".to_owned();
    vec![
        ApiError::Decode(modelship_protocol::DecodeError(s())),
        ApiError::Invalid(s()),
        ApiError::InvalidSpec(s()),
        ApiError::Infer(InferError::InvalidInput { input: s(), reason: s() }),
        ApiError::Infer(InferError::UnknownInput { input: s(), expected: vec![] }),
        ApiError::Infer(InferError::MissingInput { input: s(), datatype: DataType::Fp32, shape: vec![] }),
        ApiError::Infer(InferError::DuplicateInput { input: s() }),
        ApiError::Infer(InferError::DatatypeMismatch { input: s(), expected: DataType::Fp32, got: DataType::Int64 }),
        ApiError::Infer(InferError::ShapeMismatch { input: s(), expected: vec![], got: vec![] }),
        ApiError::Infer(InferError::UnknownOutput { output: s(), available: vec![] }),
        ApiError::Infer(InferError::DuplicateOutput { output: s() }),
        ApiError::Infer(InferError::Load(s())),
        ApiError::Infer(InferError::Runtime(s())),
        ApiError::Registry(RegistryError::InvalidName { what: "model name", value: s(), rule: "r" }),
        ApiError::Registry(RegistryError::InvalidReference(s())),
        ApiError::Registry(RegistryError::NotOnnx { path: s(), reason: s() }),
        ApiError::Registry(RegistryError::UnknownModel(s())),
        ApiError::Registry(RegistryError::UnknownVersion { name: s(), version: s() }),
        ApiError::Registry(RegistryError::UnknownAlias { name: s(), alias: s() }),
        ApiError::Registry(RegistryError::VersionConflict { name: s(), version: s(), existing: s(), pushed: s() }),
        ApiError::Registry(RegistryError::AliasedVersion { name: s(), version: s(), aliases: vec![] }),
        ApiError::Registry(RegistryError::AliasMoved { name: s(), alias: s(), expected: s(), now: None }),
        ApiError::Registry(RegistryError::DigestMismatch { digest: s(), actual: s() }),
        ApiError::Registry(RegistryError::MissingArtifact { digest: s() }),
        ApiError::Registry(RegistryError::Store(s())),
        ApiError::Registry(RegistryError::Mlflow(s())),
        ApiError::Registry(RegistryError::Database { path: s(), reason: s() }),
        ApiError::Registry(RegistryError::Io { context: s(), source: std::io::Error::other("x") }),
        ApiError::Registry(RegistryError::Config(s())),
        ApiError::Features(FeatureError::BadEntity(s())),
        ApiError::Features(FeatureError::EntityNotFound { entity: 0, key: s() }),
        ApiError::Features(FeatureError::MissingFeature { key: s(), feature: s(), field: s() }),
        ApiError::Features(FeatureError::StoreUnavailable(s())),
        ApiError::Features(FeatureError::BadStoredValue { key: s(), feature: s(), value: s(), expected: "float" }),
        ApiError::NoFeatureStore,
        ApiError::UnknownModel { name: s(), available: vec![] },
        ApiError::UnknownVersion { name: s(), version: s(), available: vec![] },
        ApiError::NotReady(s()),
        ApiError::Unloaded(s()),
        ApiError::NoRoom(s()),
        ApiError::LoadFailed(s()),
        ApiError::Overloaded { model: s(), queued: 0 },
        ApiError::BodyTooLarge { limit: 0 },
        ApiError::Body(s()),
        ApiError::BodyTimeout(s()),
        ApiError::NoRoute { method: s(), path: s() },
        ApiError::MethodNotAllowed { method: s(), path: s() },
        ApiError::ShuttingDown,
        ApiError::Conflict(s()),
        ApiError::Unauthorized,
        ApiError::NoApiKey,
        ApiError::HeadersTooLarge { limit: 0 },
        ApiError::TooLarge { what: "rows", got: 0, limit: 0, setting: "s" },
        ApiError::TooLargeToDecode(s()),
        ApiError::UnsupportedMediaType { got: s(), expected: "e" },
        ApiError::NotFound(s()),
        ApiError::ControlStoreUnavailable(s()),
        ApiError::Internal(s()),
    ]
}

/// The table as ARCHITECTURE.md shows it: one row per HTTP status, its stable codes and gRPC code.
fn rendered() -> String {
    let mut rows: BTreeMap<u16, (Vec<&'static str>, &'static str)> = BTreeMap::new();
    for e in examples() {
        let (class, code) = e.class_and_code();
        let row = rows.entry(class.http().as_u16()).or_insert_with(|| (Vec::new(), class.grpc().as_str()));
        assert_eq!(row.1, class.grpc().as_str(), "one HTTP status, one gRPC code ({code})");
        if !row.0.contains(&code) {
            row.0.push(code);
        }
    }
    let mut out = String::from("| HTTP | codes | gRPC |\n|---|---|---|\n");
    for (http, (codes, grpc)) in rows {
        let codes: Vec<String> = codes.iter().map(|c| format!("`{c}`")).collect();
        out.push_str(&format!("| {http} | {} | {grpc} |\n", codes.join(", ")));
    }
    out
}

#[test]
fn every_class_has_one_status_and_one_code() {
    let statuses: std::collections::BTreeSet<u16> = Class::ALL.iter().map(|c| c.http().as_u16()).collect();
    assert_eq!(statuses.len(), Class::ALL.len(), "two classes share an HTTP status");
    let used: std::collections::BTreeSet<u16> = examples().iter().map(|e| e.status_and_code().0.as_u16()).collect();
    assert_eq!(used, statuses, "every class is used by some error");
}

#[test]
fn architecture_md_shows_this_table() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../ARCHITECTURE.md")).unwrap();
    let begin = doc.find("<!-- errors:begin -->").expect("ARCHITECTURE.md marks the errors table with <!-- errors:begin -->");
    let end = doc.find("<!-- errors:end -->").expect("and <!-- errors:end -->");
    let shown = doc[begin + "<!-- errors:begin -->".len()..end].trim();
    let want = rendered();
    assert_eq!(shown, want.trim(), "ARCHITECTURE.md's errors table is out of date; it should read:\n{want}");
}
