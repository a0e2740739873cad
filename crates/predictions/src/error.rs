//! Why the log's store could not be opened, written or read: one error for every store.

use crate::table;

/// Why the log's store could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Config(String),
    /// Worth retrying: the store is away, slow, or refused for now.
    #[error("{0}")]
    Io(String),
    /// Never worth retrying: the store refused these rows themselves (a value its column
    /// cannot hold, a constraint). The batch is dropped and counted.
    #[error("{0}")]
    Rejected(String),
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

impl From<table::TableError> for StoreError {
    fn from(e: table::TableError) -> Self {
        StoreError::Io(e.0)
    }
}
