//! Pre-deployment gates, pure: what `modelship validate` measured goes in, pass/fail verdicts
//! with their values and a report come out.
//!
//! The binary does the IO (reads the data file, loads the models into ONNX Runtime, times runs,
//! reads the process's memory) and hands the numbers here, so every rule below is a plain
//! table-driven test:
//!
//! - [`metric`]: quality metrics on labelled data (AUC, accuracy, log loss; RMSE, MAE, R²),
//!   computed by [`modelship_rollout::stats`], the same functions the rollout's checks use.
//! - [`limit`]: thresholds as the command line writes them (`auc=0.92`, `32=40ms`, `512Mi`).
//! - [`contract`]: a model's API against a reference version's: inputs and outputs by name,
//!   datatype and shape, and which changes break clients.
//! - [`measure`]: latency percentiles and the memory a Deployment should request.
//! - [`gate`]: each gate judged from its measurements: quality, contract, latency, resources,
//!   distribution.
//! - [`report`]: the report (stable JSON for scripts), its verdict, and its Markdown for a pull
//!   request comment.

pub mod contract;
pub mod gate;
pub mod limit;
pub mod measure;
pub mod metric;
pub mod report;

pub use report::{Check, Gate, GateName, Report, Verdict};
