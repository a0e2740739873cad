//! The model registry: immutable model versions addressed by the SHA-256 of their artifact, with
//! metadata read from the ONNX file, user metrics and labels, and aliases (`production`,
//! `staging`, any name) whose every move is recorded.
//!
//! - [`name`]: what names, versions and aliases may look like, and `NAME[:VERSION|@ALIAS]` references.
//! - [`onnx_meta`]: the signature, opsets and producer of an ONNX file, read without a runtime.
//! - [`artifacts`]: the content-addressed artifact store (a local directory, or S3-compatible
//!   object storage with the `s3` feature), written atomically and verified on every read.
//! - [`mlflow`]: importing a version from an MLflow model registry over its REST API.
//! - [`catalog`]: versions, aliases and alias history in SQLite (one transaction per change).
//! - [`bucket`]: the same catalog as one document per model in a bucket, changed by conditional
//!   writes, for a registry that lives wholly in object storage (`s3://bucket/prefix`).
//! - [`kept`]: a host's own copies of what it served from a remote registry, for a start with no
//!   network and for versions it already holds.
//!
//! The only crate that knows the registry's layout: `<root>/registry.db` for metadata and
//! `<root>/artifacts/sha256/<digest>` (or `s3://bucket/prefix/sha256/<digest>`) for artifacts; or,
//! for a registry in a bucket, `s3://bucket/prefix/catalog/<name>.json` and
//! `s3://bucket/prefix/sha256/<digest>`.
//! A user-supplied name never becomes part of a path: artifacts are named by their digest.

pub mod artifacts;
pub mod bucket;
pub mod catalog;
mod error;
pub mod kept;
pub mod mlflow;
pub mod name;
pub mod onnx_meta;
mod registry;

pub use catalog::{AliasMove, SOURCE_DIGEST_LABEL, VALIDATE_LABEL, VersionRecord, WARMUP_SAMPLE_LABEL};
pub use error::RegistryError;
pub use name::ModelRef;
pub use registry::{DEFAULT_MAX_ARTIFACT_BYTES, GcOptions, MAX_WARMUP_SAMPLE_BYTES, GcReport, NoProgress, Progress, PushOutcome, PushRequest, Registry, RegistryConfig, human_size};
