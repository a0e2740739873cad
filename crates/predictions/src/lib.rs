//! The prediction log: what each version answered, kept as data.
//!
//! - [`record`]: the tables (predictions, feedback, rollback marks, audit), their columns, and
//!   the pure rule that says which predictions a rollback marks.
//! - [`table`]: flat tables as Parquet files.
//! - [`store`]: where the files live (a directory or a bucket) and how they are laid out.
//! - [`log`]: the writer a server feeds: sampled, bounded, batched, never in a request's way.
//!
//! Parquet files are never changed in place: a rollback adds a mark (a row of the `rollbacks`
//! table naming a model, a version and a range of routing revisions); a prediction is "rolled
//! back" when a mark covers it. Only a purge rewrites files, and it is audited.

mod error;
pub mod log;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod record;
pub mod store;
pub mod table;

pub use log::{LogMetrics, LogSettings, PredictionLog, Sampling, now_ms};
pub use record::{Audit, Feedback, Mark, Prediction, Routed, Table, marks_for_rollback};
pub use store::{FileStore, LogStore, StoreError};

/// The mark that covers `prediction`, if a rollback marked it.
pub fn rolled_back<'a>(prediction: &Prediction, marks: &'a [Mark]) -> Option<&'a Mark> {
    marks.iter().find(|m| m.covers(prediction))
}
