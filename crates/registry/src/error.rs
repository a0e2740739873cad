/// Registry failures, each named for what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{what} '{value}' is not valid: {rule}")]
    InvalidName { what: &'static str, value: String, rule: &'static str },
    #[error("invalid model reference '{0}': use NAME, NAME:VERSION or NAME@ALIAS")]
    InvalidReference(String),
    #[error("{path} is not a valid ONNX model: {reason}")]
    NotOnnx { path: String, reason: String },
    #[error("no model named '{0}' in the registry (see `modelship models ls`)")]
    UnknownModel(String),
    #[error("model '{name}' has no version '{version}' (see `modelship models ls {name}`)")]
    UnknownVersion { name: String, version: String },
    #[error("model '{name}' has no alias '{alias}' (see `modelship models show {name}`)")]
    UnknownAlias { name: String, alias: String },
    /// A compare-and-set move found the alias elsewhere than expected (moved meanwhile).
    #[error("{name}@{alias} names {}, not {expected}: it was moved meanwhile", .now.as_deref().unwrap_or("no version"))]
    AliasMoved { name: String, alias: String, expected: String, now: Option<String> },
    #[error(
        "{name}:{version} already exists with different content (sha256 {existing}, this file is {pushed}); versions are immutable: push it as a new version"
    )]
    VersionConflict { name: String, version: String, existing: String, pushed: String },
    #[error("{name}:{version} is the target of alias(es) {}; move them first or pass --force", .aliases.join(", "))]
    AliasedVersion { name: String, version: String, aliases: Vec<String> },
    #[error("artifact {digest} is corrupt: its content hashes to {actual}; restore it or push the version again")]
    DigestMismatch { digest: String, actual: String },
    #[error("artifact {digest} is missing from the artifact store")]
    MissingArtifact { digest: String },
    #[error("artifact store: {0}")]
    Store(String),
    #[error("MLflow: {0}")]
    Mlflow(String),
    #[error("registry database {path}: {reason}")]
    Database { path: String, reason: String },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{0}")]
    Config(String),
}

impl RegistryError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RegistryError {
        let context = context.into();
        move |source| RegistryError::Io { context, source }
    }
}

impl From<object_store::Error> for RegistryError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => RegistryError::MissingArtifact { digest: path },
            other => RegistryError::Store(other.to_string()),
        }
    }
}
