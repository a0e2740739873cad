//! The modelship server: the HTTP adapter, the model workers behind it, probes, metrics and
//! graceful drain.
//!
//! - [`pool`]: per-model inference workers, each owning one runtime session, behind a bounded queue.
//! - [`model`]: a loaded model version and the table of models the server answers for.
//! - [`routes`]: HTTP handlers (Open Inference Protocol V2, the seed's `/v1/predict`, probes, metrics).
//! - [`error`]: the one table from every failure to its HTTP status and stable error code.
//! - [`health`], [`metrics`]: probe state and Prometheus metrics.
//! - [`follow`]: follows a registry alias, swapping versions in without failing a request.
//! - [`shadow`]: mirrored requests, run off the client's path and compared with what it got.
//! - [`serve`]: runs the app on a listener until shutdown, then drains under a grace period.

pub mod error;
pub mod follow;
pub mod health;
pub mod metrics;
pub mod model;
pub mod pool;
mod request_id;
pub mod routes;
mod serve;
pub mod shadow;
mod state;

pub use serve::{Drain, DrainOutcome, serve};
pub use state::{AppState, Limits};
