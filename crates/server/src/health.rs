//! Probe state: startup, readiness and drain.

use std::sync::{Mutex, OnceLock};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub struct Health {
    started: Instant,
    startup_seconds: OnceLock<f64>,
    draining: AtomicBool,
    /// The shared control store, once this replica follows one: its kind, why it could not be
    /// reached at the last try (`None`: it answered), and since when it has not answered.
    control_store: Mutex<Option<StoreSeen>>,
    /// The policy: not ready once the control store has not answered for this long (`None`:
    /// ready whatever the store does, the default).
    unready_without_store: OnceLock<Option<Duration>>,
}

/// The control store as this replica last saw it: its kind, why it could not be reached
/// (`None`: it answered), and since when it has not answered.
type StoreSeen = (&'static str, Option<String>, Option<Instant>);

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            startup_seconds: OnceLock::new(),
            draining: AtomicBool::new(false),
            control_store: Mutex::default(),
            unready_without_store: OnceLock::new(),
        }
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
        let mut store = self.control_store.lock().unwrap_or_else(|p| p.into_inner());
        let since = match (&problem, store.as_ref()) {
            (None, _) => None,
            (Some(_), Some((_, Some(_), since))) => *since,
            (Some(_), _) => Some(Instant::now()),
        };
        *store = Some((kind, problem, since));
    }

    /// The shared control store's kind and its problem, if this replica follows one.
    pub fn control_store(&self) -> Option<(&'static str, Option<String>)> {
        self.control_store.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(kind, problem, _)| (*kind, problem.clone()))
    }

    /// Sets the policy: not ready once the control store has not answered for `after`
    /// (`server.unready_without_store_seconds`). Once; later calls change nothing.
    pub fn set_unready_without_store(&self, after: Option<Duration>) {
        let _ = self.unready_without_store.set(after);
    }

    /// Why this replica is not ready by the store policy, if it is not: the store has not
    /// answered for longer than the policy allows.
    pub fn unready_by_store_policy(&self) -> Option<String> {
        let after = (*self.unready_without_store.get()?)?;
        let store = self.control_store.lock().unwrap_or_else(|p| p.into_inner());
        let since = store.as_ref()?.2?;
        (since.elapsed() >= after).then(|| {
            format!("the control store has not answered for {} s, past server.unready_without_store_seconds ({} s)", since.elapsed().as_secs(), after.as_secs_f64())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ready whatever the store does, unless the policy says otherwise; then not ready once the
    /// store has not answered for the policy's time, and ready again when it answers.
    #[test]
    fn the_store_policy_decides_readiness_without_the_store() {
        let health = Health::default();
        health.set_control_store("redis", Some("connection refused".into()));
        assert_eq!(health.unready_by_store_policy(), None, "no policy: ready");
        let health = Health::default();
        health.set_unready_without_store(Some(Duration::ZERO));
        health.set_control_store("redis", None);
        assert_eq!(health.unready_by_store_policy(), None, "the store answers");
        health.set_control_store("redis", Some("connection refused".into()));
        let why = health.unready_by_store_policy().expect("not ready past the policy's time");
        assert!(why.contains("has not answered") && why.contains("unready_without_store_seconds"), "{why}");
        // A second failure does not restart the clock; an answer clears it.
        health.set_control_store("redis", Some("timed out".into()));
        assert!(health.unready_by_store_policy().is_some());
        health.set_control_store("redis", None);
        assert_eq!(health.unready_by_store_policy(), None);
        let hour = Health::default();
        hour.set_unready_without_store(Some(Duration::from_secs(3600)));
        hour.set_control_store("redis", Some("connection refused".into()));
        assert_eq!(hour.unready_by_store_policy(), None, "within the policy's time: still ready");
    }
}
