//! Running the HTTP app on a listener, and draining it on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::routes;
use crate::state::AppState;

/// How the server stops once asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// Time to keep accepting after readiness turned 503, so load balancers stop sending first
    /// (Kubernetes endpoints take a few seconds to update). 0 stops accepting at once.
    pub delay: Duration,
    /// Time in-flight requests get to finish once the listener is closed.
    pub grace: Duration,
}

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every in-flight request finished.
    Complete,
    /// The grace period ran out with requests still in flight; they were cut off.
    GraceExpired,
}

/// Serves the admin API until `shutdown` resolves; no drain delay (control requests are short).
pub async fn serve_admin(
    listener: TcpListener,
    admin: crate::admin::AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, crate::admin::app(admin)).with_graceful_shutdown(shutdown).await
}

/// Serves `state` on `listener` until `shutdown` resolves, then: readiness turns 503 at once,
/// after `drain.delay` the listener closes, and in-flight requests get `drain.grace` to finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Drain,
) -> std::io::Result<DrainOutcome> {
    let health = Arc::clone(&state.health);
    let closing = Arc::new(Notify::new());
    let closed = Arc::clone(&closing);
    let server = axum::serve(listener, routes::app(state)).with_graceful_shutdown(async move {
        shutdown.await;
        health.begin_drain();
        tracing::info!(delay_s = drain.delay.as_secs_f64(), "shutdown requested; readiness is now 503");
        tokio::time::sleep(drain.delay).await;
        tracing::info!(grace_s = drain.grace.as_secs_f64(), "listener closed; draining in-flight requests");
        closing.notify_one();
    });
    let server = server.into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result.map(|()| DrainOutcome::Complete),
        () = async { closed.notified().await; tokio::time::sleep(drain.grace).await } => {
            // The server may have finished in the same instant; prefer its answer.
            match tokio::time::timeout(Duration::from_millis(1), &mut server).await {
                Ok(result) => result.map(|()| DrainOutcome::Complete),
                Err(_) => Ok(DrainOutcome::GraceExpired),
            }
        }
    }
}
