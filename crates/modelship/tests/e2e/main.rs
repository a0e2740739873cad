//! End-to-end tests: each one runs the real `modelship` binary and talks to it over HTTP.
//! One test binary for all of them, so the binary and the harness build once.

mod support;
mod inproc;
mod inproc_traffic;
mod inproc_residency;
mod inproc_experiments;
mod inproc_predictions;
// The same reading of help examples as the CLI's own unit test.
#[path = "../../src/help_examples.rs"]
mod help_examples;

mod api;
mod azure;
#[cfg(feature = "kubernetes")]
mod controller;
mod features;
mod hostile;
// The fleet's replicas share their registry through the S3 server.
#[cfg(feature = "s3")]
mod fleet;
#[cfg(feature = "s3")]
mod fleet_faults;
#[cfg(feature = "s3")]
mod history;
#[cfg(feature = "s3")]
mod netns;
mod bad_input;
mod convert;
mod deploy_checks;
mod docker;
mod docs;
mod edge;
#[cfg(feature = "lambda")]
mod lambda;
mod lifecycle;
mod models;
mod observability;
mod openapi;
mod predict;
mod registry;
mod registry_mlflow;
#[cfg(feature = "s3")]
mod registry_s3;
#[cfg(feature = "s3")]
mod prediction_log;
mod residency;
mod rollout_wait;
mod security;
mod source_of_truth;
mod startup;
mod swarm;
mod traffic;
#[cfg(feature = "grpc")]
mod triton;
mod validate;
