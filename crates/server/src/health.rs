//! Probe state: startup, readiness and drain.

use std::sync::{Mutex, OnceLock};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub struct Health {
    started: Instant,
    startup_seconds: OnceLock<f64>,
    draining: AtomicBool,
    /// The shared control store, once this replica follows one: its kind, and why it could not
    /// be reached at the last try (`None`: it answered).
    control_store: Mutex<Option<(&'static str, Option<String>)>>,
}

impl Default for Health {
    fn default() -> Self {
        Health { started: Instant::now(), startup_seconds: OnceLock::new(), draining: AtomicBool::new(false), control_store: Mutex::default() }
    }
}

impl Health {
    /// Startup is complete: models are loaded and listeners are bound. Idempotent.
    pub fn mark_started(&self) -> f64 {
        *self.startup_seconds.get_or_init(|| self.started.elapsed().as_secs_f64())
    }

    /// Seconds from process start to [`Health::mark_started`], once it happened.
    pub fn startup_seconds(&self) -> Option<f64> {
        self.startup_seconds.get().copied()
    }

    /// Shutdown began: readiness fails from now on.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// How the last request to the shared control store went.
    pub fn set_control_store(&self, kind: &'static str, problem: Option<String>) {
        *self.control_store.lock().unwrap_or_else(|p| p.into_inner()) = Some((kind, problem));
    }

    /// The shared control store's kind and its problem, if this replica follows one.
    pub fn control_store(&self) -> Option<(&'static str, Option<String>)> {
        self.control_store.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
