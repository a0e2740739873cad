//! In-process tests over the fake backend: requests go through the real router (`oneshot`), the
//! real pool, traffic writer and rollout loop, with no process spawned.

mod app;
mod control;
mod errors;
mod hostile;
#[cfg(feature = "grpc")]
mod grpc;
mod lambda;
