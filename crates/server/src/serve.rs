//! The server's lifecycle: one [`Server`] binds the listeners (HTTP, gRPC, admin), runs every
//! background task under one tracker and one cancellation token, and owns shutdown.
//!
//! Shutdown, whatever asked for it: readiness turns 503 at once; after [`Drain::delay`] every
//! listener stops accepting; HTTP, gRPC and admin connections drain together within
//! [`Drain::grace`]; then every background task is cancelled and awaited.
//!
//! Connections are served by hyper-util's auto (HTTP/1.1 + HTTP/2) builder, so gRPC (which is
//! HTTP/2) goes through the same accept loop, TLS and limits as REST.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::Health;

/// How the server stops once asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// Time to keep accepting after readiness turned 503, so load balancers stop sending first
    /// (Kubernetes endpoints take a few seconds to update). 0 stops accepting at once.
    pub delay: Duration,
    /// Time in-flight requests get to finish once the listeners are closed.
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

/// Limits applied to every connection, before any handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A client must send its first bytes (or finish the TLS handshake) and, over HTTP/1, the
    /// whole request head within this time; otherwise the connection is closed. This is what
    /// stops a slowloris client from holding connections forever.
    pub header_read_timeout: Duration,
    /// Hyper's own cap on a request head (HTTP/1 read buffer, HTTP/2 header list); the
    /// handler-level limit (`Limits::max_header_bytes`) answers in JSON below it.
    pub max_head_bytes: usize,
    /// Open connections on the HTTP listener (gRPC and admin: half as many each). At the cap a
    /// new connection is still accepted (a probe
    /// must get through a flood), and the open one that has waited longest on its client is
    /// closed: first one with no request in a handler (idle, or still sending its head), else
    /// the one whose last bytes are oldest (a stalled upload); a connection nothing was read
    /// from yet goes after those, since its request may be waiting on the server.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits { header_read_timeout: Duration::from_secs(10), max_head_bytes: 1 << 20, max_connections: 10_000 }
    }
}

/// The default [`ConnectionLimits::max_connections`]: half of the process's file limit less 64
/// (kept for everything else the server opens: model files, the registry, stores, listeners);
/// 10 000 at most. The HTTP listener takes that cap and gRPC and admin half of it each, so the
/// three together never run the process out of descriptors.
pub fn default_max_connections() -> usize {
    let soft = open_files_limit().unwrap_or(1024);
    (soft.saturating_sub(64) / 2).clamp(16, 10_000)
}

/// The process's soft limit on open files, as `/proc/self/limits` shows it (`None` elsewhere,
/// or when it is unlimited).
pub fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse().ok()
}

/// TLS for a listener: certificate chain and private key, both PEM files.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Reads the certificate chain and key (PEM). HTTP/2 and HTTP/1.1 are offered by ALPN, so
    /// gRPC clients get HTTP/2 over the same configuration.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect())
            .map_err(|e| format!("cannot read the TLS certificate {}: {e}", cert.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read the TLS private key {}: {e}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("the TLS certificate and key do not make a usable pair: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) })
    }
}

/// Background work of the server: spawned under one tracker, cancelled by one token.
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    token: CancellationToken,
}

impl Tasks {
    /// Runs `task` until it ends or shutdown cancels it (the token is handed to loops that want
    /// to finish a step first).
    pub fn spawn<F>(&self, name: &'static str, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        let future = task(token.clone());
        self.tracker.spawn(async move {
            tokio::select! {
                () = future => {}
                () = token.cancelled() => tracing::debug!(task = name, "background task stopped"),
            }
        });
    }

    /// Runs `task`, which watches the token itself and returns once it is cancelled: for loops
    /// that must not be stopped in the middle of a step (a rollout applying a decision).
    pub fn spawn_cooperative<F>(&self, name: &'static str, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let future = task(self.token.clone());
        self.tracker.spawn(async move {
            future.await;
            tracing::debug!(task = name, "background task stopped");
        });
    }

    /// Cancels every task and waits for them all (at most `wait`); returns whether they all ended.
    async fn stop(&self, wait: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(wait, self.tracker.wait()).await.is_ok()
    }
}

/// The whole server: listeners and background tasks, and the one shutdown sequence.
pub struct Server {
    health: Arc<Health>,
    tasks: Tasks,
    drain: Drain,
    limits: ConnectionLimits,
    /// Cancelled when the listeners stop accepting (after the drain delay).
    closing: CancellationToken,
    listeners: Vec<(&'static str, JoinHandle<DrainOutcome>)>,
}

impl Server {
    pub fn new(health: Arc<Health>, tasks: Tasks, drain: Drain, limits: ConnectionLimits) -> Self {
        Server { health, tasks, drain, limits, closing: CancellationToken::new(), listeners: Vec::new() }
    }

    /// Starts serving `app` on `listener` now; `name` (`http`, `grpc`, `admin`) is for logs.
    pub fn serve(&mut self, name: &'static str, listener: TcpListener, app: Router, tls: Option<Tls>) {
        let (closing, limits, grace) = (self.closing.clone(), self.limits, self.drain.grace);
        let handle = tokio::spawn(serve_connections(name, listener, app, tls, limits, closing, grace));
        self.listeners.push((name, handle));
    }

    /// Serves until `shutdown` resolves, then drains: readiness 503, `delay`, every listener
    /// closed and drained together within `grace`, every background task stopped.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> DrainOutcome {
        shutdown.await;
        self.shut_down().await
    }

    async fn shut_down(self) -> DrainOutcome {
        self.health.begin_drain();
        tracing::info!(delay_s = self.drain.delay.as_secs_f64(), "shutdown requested; readiness is now 503");
        tokio::time::sleep(self.drain.delay).await;
        tracing::info!(grace_s = self.drain.grace.as_secs_f64(), "listeners closed; draining in-flight requests");
        self.closing.cancel();
        let mut outcome = DrainOutcome::Complete;
        for (name, handle) in self.listeners {
            match handle.await {
                Ok(DrainOutcome::Complete) => {}
                Ok(DrainOutcome::GraceExpired) => outcome = DrainOutcome::GraceExpired,
                Err(e) => {
                    tracing::error!(listener = name, error = %e, "a listener task failed");
                    outcome = DrainOutcome::GraceExpired;
                }
            }
        }
        if !self.tasks.stop(Duration::from_secs(5)).await {
            tracing::warn!("some background tasks did not stop within 5 s");
        }
        outcome
    }
}

/// The streams one HTTP/2 connection may have open at once (what gRPC clients multiplex).
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// One open connection, as the cap sees it.
struct Open {
    /// Milliseconds (since the listener started) at which bytes last arrived.
    last_read: std::sync::atomic::AtomicU64,
    /// Requests now in a handler.
    handling: std::sync::atomic::AtomicUsize,
    /// Of those, the ones whose body is still arriving: the server waits on its client for them,
    /// so they do not make the connection busy (a stalled upload is closed like a stalled head).
    receiving: std::sync::atomic::AtomicUsize,
    /// Whether any bytes were read from it yet. A new connection whose request the server has
    /// not read yet (a busy machine, a burst of connections) cannot be said to have stalled: for
    /// its first [`UNREAD_GRACE_MS`] it is closed only after every connection that sent part of
    /// a request and went quiet; after that, a connection that sent nothing is stalled too.
    read_any: std::sync::atomic::AtomicBool,
    /// Cancelled to close the connection at once.
    evict: CancellationToken,
}

impl Open {
    /// Whether the server is working on one of its requests: in a handler, its body all read.
    fn busy(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.handling.load(Relaxed) > self.receiving.load(Relaxed)
    }
}

/// How long a new connection nothing was read from yet is protected from the cap.
const UNREAD_GRACE_MS: u64 = 1_000;

/// The open connections of one listener.
struct OpenConnections {
    epoch: std::time::Instant,
    next: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<std::collections::HashMap<u64, Arc<Open>>>,
    /// Connections closed by the cap since the last log line, and when that was.
    evicted: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
}

impl OpenConnections {
    fn new() -> Arc<Self> {
        Arc::new(OpenConnections {
            epoch: std::time::Instant::now(),
            next: Default::default(),
            open: Default::default(),
            evicted: Default::default(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers a new connection, closing the one that waited longest on its client when the
    /// listener is at `cap`; the guard removes it again.
    fn admit(self: &Arc<Self>, name: &'static str, cap: usize) -> (Arc<Open>, Registered) {
        use std::sync::atomic::Ordering::Relaxed;
        let id = self.next.fetch_add(1, Relaxed);
        let conn = Arc::new(Open {
            last_read: self.now_ms().into(),
            handling: Default::default(),
            receiving: Default::default(),
            read_any: Default::default(),
            evict: CancellationToken::new(),
        });
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= cap {
            let now = self.now_ms();
            // A connection nothing was read from keeps its arrival as `last_read`.
            let new_and_unread = |c: &Open| !c.read_any.load(Relaxed) && now.saturating_sub(c.last_read.load(Relaxed)) < UNREAD_GRACE_MS;
            let victim = open
                .iter()
                .min_by_key(|(id, c)| (c.busy(), new_and_unread(c), c.last_read.load(Relaxed), **id))
                .map(|(id, c)| (*id, Arc::clone(c)));
            if let Some((victim_id, victim)) = victim {
                open.remove(&victim_id);
                victim.evict.cancel();
                let mut evicted = self.evicted.lock().unwrap_or_else(|p| p.into_inner());
                evicted.0 += 1;
                if evicted.1.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(
                        listener = name, max_connections = cap, closed = evicted.0,
                        "connection limit reached: closed the connections that waited longest on their clients to admit new ones (server.max_connections)"
                    );
                    *evicted = (0, Some(std::time::Instant::now()));
                }
            }
        }
        open.insert(id, Arc::clone(&conn));
        (conn, Registered { table: Arc::clone(self), id })
    }
}

/// Removes its connection from the table when the connection's task ends.
struct Registered {
    table: Arc<OpenConnections>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

pin_project_lite::pin_project! {
    /// A connection's IO, noting when bytes arrive.
    struct Tracked<I> {
        #[pin]
        io: I,
        conn: Arc<Open>,
        table: Arc<OpenConnections>,
    }
}

impl<I: tokio::io::AsyncRead> tokio::io::AsyncRead for Tracked<I> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.last_read.store(this.table.now_ms(), std::sync::atomic::Ordering::Relaxed);
            if !this.conn.read_any.load(std::sync::atomic::Ordering::Relaxed) {
                this.conn.read_any.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<I: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Tracked<I> {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The router's service, counting the requests of one connection that are in a handler.
#[derive(Clone)]
struct Counted {
    inner: TowerToHyperService<Router>,
    conn: Arc<Open>,
}

type RouterService = TowerToHyperService<Router>;
type RouterCall = http::Request<Arriving>;

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Counted {
    type Response = <RouterService as hyper::service::Service<RouterCall>>::Response;
    type Error = <RouterService as hyper::service::Service<RouterCall>>::Error;
    type Future = CountedFuture<<RouterService as hyper::service::Service<RouterCall>>::Future>;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.conn.handling.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let request = request.map(|body| {
            use hyper::body::Body as _;
            let receiving = (!body.is_end_stream()).then(|| {
                self.conn.receiving.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Receiving(Arc::clone(&self.conn))
            });
            Arriving { body, receiving }
        });
        CountedFuture { future: self.inner.call(request), done: Handling(Arc::clone(&self.conn)) }
    }
}

/// Counts one request body out of the ones still arriving when dropped (all read, failed, or
/// abandoned by its handler).
struct Receiving(Arc<Open>);

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0.receiving.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A request body, counted as arriving until its end.
    struct Arriving {
        #[pin]
        body: hyper::body::Incoming,
        receiving: Option<Receiving>,
    }
}

impl hyper::body::Body for Arriving {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.body.as_mut().poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) || this.body.is_end_stream() {
            this.receiving.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Counts one request out of its handler when dropped (answered, or abandoned).
struct Handling(Arc<Open>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    struct CountedFuture<F> {
        #[pin]
        future: F,
        done: Handling,
    }
}

impl<F: Future> Future for CountedFuture<F> {
    type Output = F::Output;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

/// Accepts connections on `listener` until `closing`, then waits (at most `grace`) for the open
/// ones to finish their requests. Idle keep-alive connections are closed at once; HTTP/2
/// clients get a GOAWAY.
async fn serve_connections(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    tls: Option<Tls>,
    limits: ConnectionLimits,
    closing: CancellationToken,
    grace: Duration,
) -> DrainOutcome {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX))
        // Streams one HTTP/2 (gRPC) connection may have open at once: each holds a request.
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    let graceful = GracefulShutdown::new();
    let table = OpenConnections::new();
    // The HTTP listener takes the whole cap; gRPC and admin half of it each, so together they
    // stay within twice the cap (the default cap is half the file budget).
    let cap = if name == "http" { limits.max_connections } else { (limits.max_connections / 2).max(16) };
    loop {
        let (stream, peer) = tokio::select! {
            () = closing.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(listener = name, error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // No Nagle: small answers must not wait for the client's delayed ACK (a 40 ms stall).
        let _ = stream.set_nodelay(true);
        let (conn, registered) = table.admit(name, cap);
        let service = Counted { inner: TowerToHyperService::new(app.clone()), conn: Arc::clone(&conn) };
        let (builder, tls, table) = (builder.clone(), tls.clone(), Arc::clone(&table));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _registered = registered;
            let timeout = limits.header_read_timeout;
            let evict = conn.evict.clone();
            let serve = async move {
                match tls {
                    None => {
                        // The first byte must come within the header timeout too (HTTP/2 has none).
                        let mut first = [0u8; 1];
                        if matches!(tokio::time::timeout(timeout, stream.peek(&mut first)).await, Ok(Ok(n)) if n > 0) {
                            let io = Tracked { io: stream, conn, table };
                            serve_one(name, peer, &builder, TokioIo::new(io), service, watcher).await;
                        }
                    }
                    Some(tls) => match tokio::time::timeout(timeout, tls.acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let io = Tracked { io: stream, conn, table };
                            serve_one(name, peer, &builder, TokioIo::new(io), service, watcher).await;
                        }
                        Ok(Err(e)) => tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(listener = name, %peer, "TLS handshake timed out"),
                    },
                }
            };
            // Evicted by the cap: the connection (and its socket) is dropped at once.
            tokio::select! {
                () = serve => {}
                () = evict.cancelled() => tracing::debug!(listener = name, %peer, "connection closed to admit a new one (server.max_connections)"),
            }
        });
    }
    drop(listener);
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => DrainOutcome::Complete,
        Err(_) => DrainOutcome::GraceExpired,
    }
}

/// Serves one accepted connection (plain or TLS) until it ends, watched by the drain.
async fn serve_one<I>(
    name: &'static str,
    peer: std::net::SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    service: Counted,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if let Err(e) = watcher.watch(builder.serve_connection_with_upgrades(io, service)).await {
        tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    /// At the cap, the connection closed is the one that waited longest on its client: never one
    /// in a handler, never one nothing was read from while a stalled one is open.
    #[test]
    fn the_cap_closes_the_connection_that_waited_longest_on_its_client() {
        let table = OpenConnections::new();
        let (stalled, _a) = table.admit("test", 3);
        stalled.read_any.store(true, Relaxed);
        let (unread, _b) = table.admit("test", 3);
        let (busy, _c) = table.admit("test", 3);
        busy.read_any.store(true, Relaxed);
        busy.handling.store(2, Relaxed);
        busy.receiving.store(1, Relaxed);
        // Read later than `stalled`, and not in a handler: still the oldest read is closed first.
        let (_new, _d) = table.admit("test", 3);
        assert!(stalled.evict.is_cancelled(), "the stalled connection, read and then silent, goes first");
        assert!(!unread.evict.is_cancelled() && !busy.evict.is_cancelled());
        // Then the one not read yet, and the one in a handler only last.
        let (_newer, _e) = table.admit("test", 3);
        let (_newest, _f) = table.admit("test", 3);
        assert!(unread.evict.is_cancelled());
        assert!(!busy.evict.is_cancelled(), "a request in a handler is never closed while another can be");
    }

    /// A request in a handler whose body has not all arrived waits on its client: a stalled
    /// upload is closed before a new connection, a stalled head or a request being worked on.
    #[test]
    fn a_stalled_upload_is_closed_like_any_connection_waiting_on_its_client() {
        let table = OpenConnections::new();
        let (upload, _a) = table.admit("test", 3);
        upload.read_any.store(true, Relaxed);
        upload.handling.store(1, Relaxed);
        upload.receiving.store(1, Relaxed);
        let (_unread, _b) = table.admit("test", 3);
        let (working, _c) = table.admit("test", 3);
        working.read_any.store(true, Relaxed);
        working.handling.store(1, Relaxed);
        assert!(!upload.busy() && working.busy());
        let (_new, _d) = table.admit("test", 3);
        assert!(upload.evict.is_cancelled(), "the upload waiting on its body goes first");
        assert!(!working.evict.is_cancelled());
    }
}
