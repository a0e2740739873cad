//! Why the log's store could not be opened, written or read: one error for every store.

use crate::table;

/// Why the log's store could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
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
