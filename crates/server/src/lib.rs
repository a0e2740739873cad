//! The modelship server: the HTTP adapter, the model workers behind it, probes, metrics and
//! graceful drain.
//!
//! - [`pool`]: per-model inference workers, each owning one runtime session, behind a bounded queue.
//! - [`model`]: a loaded model version and the table of models the server answers for.
//! - [`admin`]: the admin API (own listener, bearer token): traffic status, changes, rollback, history.
//! - [`pipeline`]: the one inference pipeline every entry point goes through (route, enrich,
//!   infer, score, mirror, record).
//! - [`routes`]: the REST adapter's HTTP handlers (Open Inference Protocol V2, the seed's
//!   `/v1/predict`, probes, metrics).
//! - [`api`]: what the adapters share (bodies, the V1/V2 encodings of an answer, readiness,
//!   labels); the adapters (`routes`, `grpc`, `admin`, `lambda`) never depend on each other.
//! - [`error`]: the one table from every failure to its HTTP status and stable error code.
//! - `grpc` (feature `grpc`): the same API over gRPC, as Triton's `GRPCInferenceService`.
//! - [`lambda`]: the Lambda adapter: one event through the same decoding, pipeline and encoding
//!   as the HTTP routes.
//! - [`health`], [`metrics`]: probe state and Prometheus metrics.
//! - [`mesh`]: rollouts through an Istio VirtualService or a Gateway API HTTPRoute: the pure edit
//!   of the route for a step, and (feature `kubernetes`) the controller that patches it.
//! - [`residency`]: which models are in memory: least-recently-used unloading past a bound on
//!   loaded models, and loading a resting model again when a request needs it.
//! - [`follow`]: follows a registry alias, swapping versions in without failing a request.
//! - [`shadow`]: mirrored requests, run off the client's path and compared with what it got.
//! - [`rollouts`]: the rollout control loop: observations in, engine decisions applied, state persisted.
//! - [`traffic`]: the single writer of routing tables, with numbered, persisted revisions.
//! - [`auth`]: the control token and inference API keys, compared in constant time.
//! - [`app`]: the composition root: [`Config::build`] starts every part, [`App::run_until`]
//!   serves until shutdown.
//! - `serve`: the [`Server`]: listeners (HTTP, gRPC, admin; TLS, connection limits), background
//!   tasks, and the one shutdown sequence.

pub mod admin;
pub mod app;
pub mod api;
pub mod auth;
pub mod batch;
pub mod control;
pub mod error;
pub mod fleet;
pub mod follow;
pub mod gpu;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod health;
pub mod lambda;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod observe;
pub mod pipeline;
pub mod pool;
pub mod repository;
pub mod residency;
mod request_id;
pub mod routes;
mod serve;
pub mod rollouts;
pub mod shadow;
pub mod trace;
pub mod traffic;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
mod state;

pub use app::{Addresses, App, BuildError, Config, Declared, Features, Model, ModelLimits, PredictionLogSettings, Settings, Source, build_batch, build_direct};
pub use auth::{Credentials, read_api_keys};
pub use residency::{Prepare, digest as file_digest};
pub use model::{DEFAULT_WARM_UP_REQUESTS, WarmUp, WarmUpSample};
pub use pipeline::CANARY_HEADER;
pub use pool::{Batching, DEFAULT_INLINE_BELOW, Opportunistic};
pub use serve::{ConnectionLimits, Drain, DrainOutcome, Server, Tasks, Tls, default_max_connections, open_files_limit};
pub use state::{AppState, DEFAULT_MIN_BODY_RATE, Limits};
