//! The rollout brain, pure: a rollout spec, observations of stable and candidate, and the time
//! come in; actions (set weights, shadow, pause, promote, roll back, each with its reason and
//! evidence) go out. It never does IO and never reads a clock, so every decision is replayable
//! and tested from tables of observations.
//!
//! - [`spec`]: the rollout spec, its shorthands, and its validation into a [`spec::Plan`].
//! - [`engine`]: the state machine: events in, decisions (action + reason + evidence) out.
//! - [`check`]: the checks (error rate, latency, agreement, drift, quality) and their verdicts.
//! - [`sample`]: what a version did over a window: counts, and uniform samples (reservoirs) of
//!   its latencies and scores that merge without bias.
//! - [`stats`]: the statistics the checks use to compare candidate with stable over the same
//!   window (Mann-Whitney U, two-proportion z, PSI, Kolmogorov-Smirnov, AUC).

pub mod check;
pub mod engine;
pub mod sample;
pub mod sequential;
pub mod spec;
pub mod stats;
