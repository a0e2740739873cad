//! Inference workers for one model version.
//!
//! With dynamic batching on, a worker joins compatible concurrent requests along the first
//! dimension (up to a row limit, a preferred size or a queue delay) and runs them as one call,
//! then hands each request its own rows of the outputs.
//!
//! Each worker is an OS thread with one runtime session, so CPU-bound inference stays off the
//! async reactor. Requests wait in one bounded queue shared by the workers; when it is full,
//! [`WorkerPool::submit`] fails at once and the caller answers 429 instead of building an
//! unbounded backlog. Dropping the pool closes the queue: workers finish what is queued, then
//! exit and drop their sessions.
//!
//! **Requests already waiting are joined.** A model whose every input and output has a dynamic
//! first dimension is probed once at load ([`rows_are_independent`]): two different rows are run
//! apart and together, and when each row's outputs come out the same both ways, a worker that
//! takes a request also takes the compatible ones already queued behind it and runs them as one
//! call. It never waits for more ([`Batching`] does, when configured), so a lone request is not
//! delayed; under concurrent load one runtime call and one thread hand-off serve a run of
//! requests. A model that fails the probe (its rows interact, as a list-wise ranking does) is
//! never joined. [`Opportunistic::Off`] turns it off.
//!
//! **Tiny models run inline.** Handing a request to a worker and back costs two thread wake-ups,
//! which for a model that runs in a few microseconds is more than the inference itself. The pool
//! keeps a running estimate of the time per row; when a request's estimate is under
//! [`PoolConfig::inline_below`] (and batching is off, and the version is not a background one),
//! [`WorkerPool::run`] runs it on the caller's thread, on a worker's session that is idle at that
//! moment (never waiting for one). When the model's rows can be joined, the requests that arrive
//! in the same turn of the reactor are gathered and run as one call on the thread of the first
//! caller back, within the same time budget; otherwise a request runs inline only when no other
//! arrived meanwhile. A model that is slow, or not yet measured (the warm-up request goes to a
//! worker), is always run by a worker, so it never holds the reactor.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use modelship_inference::{Backend, InferError, LoadOptions, ModelInfo, PreparedRequest, Session, Tensor};
use tokio::sync::oneshot;

mod probe;
pub use probe::rows_are_independent;

/// How one pool runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Worker threads, each with its own session.
    pub workers: usize,
    /// Requests that may wait for a worker; past this, submissions are refused.
    pub max_queue: usize,
    pub load: LoadOptions,
    /// Dynamic batching: concurrent requests joined along the first dimension and run as one.
    pub batching: Option<Batching>,
    /// A request whose estimated run time is under this may run on the caller's thread (see the
    /// module's documentation); zero sends every request to a worker.
    pub inline_below: Duration,
    /// Whether workers join the requests already waiting (without `batching`).
    pub opportunistic: Opportunistic,
}

/// Joining requests that are already waiting into one run (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Opportunistic {
    /// On when the model has a batch dimension everywhere and passes the row-independence probe.
    #[default]
    Auto,
    Off,
}

/// The most rows a worker joins from the queue without dynamic batching configured.
pub const OPPORTUNISTIC_MAX_ROWS: usize = DEFAULT_MAX_BATCH_SIZE;

/// The default [`PoolConfig::inline_below`]: well under the ~100 µs an async task should run
/// between yields, and well over the few microseconds of a small tabular model.
pub const DEFAULT_INLINE_BELOW: Duration = Duration::from_micros(50);

impl PoolConfig {
    /// `workers` sessions, a queue of `max_queue`, no batching, the default inline threshold.
    pub fn new(workers: usize, max_queue: usize) -> Self {
        PoolConfig {
            workers,
            max_queue,
            load: LoadOptions::default(),
            batching: None,
            inline_below: DEFAULT_INLINE_BELOW,
            opportunistic: Opportunistic::Auto,
        }
    }
}

/// The `max_batch_size` reported for a model that takes batches of rows when dynamic batching is
/// off: rows a client may send in one request (not enforced; larger requests run as they are).
pub const DEFAULT_MAX_BATCH_SIZE: usize = 64;

/// How a worker forms batches. A batch is run when it reaches `max_batch_size` rows or one of
/// the `preferred_batch_sizes`, or when its first request has waited `max_queue_delay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batching {
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    pub preferred_batch_sizes: Vec<usize>,
}

/// A batch a worker formed and ran, reported with the first of its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formed {
    pub requests: usize,
    pub rows: usize,
}

/// The outcome of one job, with where its time went.
#[derive(Debug)]
pub struct JobOutput {
    pub result: Result<Vec<Tensor>, InferError>,
    pub queued: Duration,
    pub inference: Duration,
    /// Set on one request of each run: how many requests and rows ran together.
    pub formed: Option<Formed>,
}

struct Job {
    request: PreparedRequest,
    enqueued: Instant,
    reply: oneshot::Sender<Result<JobOutput, Refused>>,
    /// Whether its run feeds the time estimate: a warm-up's made-up inputs (zeros) may cost
    /// nothing like a client's, and would put a model whose cost depends on its inputs on the
    /// calling thread.
    measured: bool,
}

/// Why [`WorkerPool::run`] gave no output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    QueueFull(QueueFull),
    /// The worker stopped before answering (the pool is shutting down).
    WorkerGone,
}

/// The queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    pub queued: usize,
}

pub struct WorkerPool {
    queue: Sender<Job>,
    /// One session per worker: worker `i` locks `sessions[i]` for each job; an inline caller
    /// takes whichever is free at that moment, or none.
    sessions: Arc<[Mutex<Box<dyn Session>>]>,
    /// Whether the workers run at background CPU priority (a shadow-only version).
    background: Arc<AtomicBool>,
    /// Estimated nanoseconds per row of one run, `u64::MAX` until a run was measured.
    ns_per_row: Arc<RunEstimate>,
    /// Requests that asked to run inline, ever: how a caller sees others arrive meanwhile.
    arrivals: AtomicU64,
    /// Requests of a tiny joinable model waiting for a caller to run them together on its thread
    /// (see [`WorkerPool::run`]).
    gathering: Mutex<Vec<Job>>,
    inline_below: Duration,
    /// Dynamic batching is configured: workers wait for requests to join, nothing runs inline.
    batching: bool,
    /// Workers join the compatible requests already queued (the model passed the probe).
    joins_waiting: bool,
    /// Counts this pool's sessions as in memory until the pool and every worker let them go.
    _counted: Arc<Counted>,
}

/// Runtime sessions in memory in this process, every pool together.
static SESSIONS_IN_MEMORY: AtomicUsize = AtomicUsize::new(0);

/// How many runtime sessions this process holds now: counted when a pool's sessions load,
/// uncounted when the last of their holders (the pool and its worker threads) lets them go. An
/// unloaded model whose sessions something still held would stay counted.
pub fn sessions_in_memory() -> usize {
    SESSIONS_IN_MEMORY.load(Ordering::Relaxed)
}

/// A pool's share of [`SESSIONS_IN_MEMORY`], given back when the last holder drops it. Held next
/// to the sessions by exactly those that hold them.
struct Counted(usize);

impl Counted {
    fn new(sessions: usize) -> Arc<Counted> {
        SESSIONS_IN_MEMORY.fetch_add(sessions, Ordering::Relaxed);
        Arc::new(Counted(sessions))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        SESSIONS_IN_MEMORY.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// A running estimate of the time one row takes: an exponentially weighted mean of measured
/// runs (weight 1/8), updated by whoever ran them. A sample counts for at most twice the
/// estimate, so one run that the scheduler preempted (hundreds of microseconds on a busy core)
/// cannot push a tiny model off the inline path, while a model that really got slower still
/// moves the estimate up by an eighth per run. Races between updates lose an update, which only
/// makes the estimate a little less smooth.
struct RunEstimate(AtomicU64);

impl RunEstimate {
    const UNKNOWN: u64 = u64::MAX;

    fn observe(&self, rows: usize, took: Duration) {
        let sample = (took.as_nanos() as u64) / rows.max(1) as u64;
        let old = self.0.load(Ordering::Relaxed);
        let new = if old == Self::UNKNOWN { sample } else { old - old / 8 + sample.min(old.saturating_mul(2)) / 8 };
        self.0.store(new, Ordering::Relaxed);
    }

    /// Takes a joined run's whole time as an upper bound of one row's: a single row runs no
    /// slower than a run that holds it. Under load nearly every run is joined, so without this
    /// an estimate set too high (by the slow first run after a load) would never be measured
    /// again and would keep a tiny model off the inline path for good.
    fn bound(&self, joined_run: Duration) {
        self.0.fetch_min(joined_run.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The estimated run time of `rows` rows, `None` before any run was measured.
    fn estimate(&self, rows: usize) -> Option<Duration> {
        let per_row = self.0.load(Ordering::Relaxed);
        (per_row != Self::UNKNOWN).then(|| Duration::from_nanos(per_row.saturating_mul(rows.max(1) as u64)))
    }
}

impl WorkerPool {
    /// Loads `config.workers` sessions in parallel (one thread each) and starts the workers.
    /// Fails with the first load error, after stopping any worker already started.
    pub fn start(
        backend: Arc<dyn Backend>,
        model: Arc<[u8]>,
        config: &PoolConfig,
        thread_name: &str,
    ) -> Result<(WorkerPool, ModelInfo), InferError> {
        let workers = config.workers.max(1);
        let loaded: Vec<Result<Box<dyn Session>, InferError>> = thread::scope(|scope| {
            let loads: Vec<_> = (0..workers).map(|_| scope.spawn(|| backend.load(&model, &config.load))).collect();
            loads
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(InferError::Load("the runtime panicked while loading the model".to_owned()))))
                .collect()
        });
        drop(model);
        let mut sessions: Vec<Box<dyn Session>> = loaded.into_iter().collect::<Result<_, _>>()?;
        let info = sessions[0].info().clone();
        let joins_waiting = config.batching.is_none()
            && config.opportunistic == Opportunistic::Auto
            && match rows_are_independent(sessions[0].as_mut()) {
                Ok(()) => true,
                Err(why) => {
                    tracing::info!(model = thread_name, reason = %why, "concurrent requests are not joined into one run");
                    false
                }
            };
        let worker_batching = config.batching.clone().or_else(|| {
            joins_waiting.then(|| Batching { max_batch_size: OPPORTUNISTIC_MAX_ROWS, max_queue_delay: Duration::ZERO, preferred_batch_sizes: vec![] })
        });
        let counted = Counted::new(sessions.len());
        let sessions: Arc<[Mutex<Box<dyn Session>>]> = sessions.into_iter().map(Mutex::new).collect();
        let (queue, jobs) = crossbeam_channel::bounded::<Job>(config.max_queue.max(1));
        let background = Arc::new(AtomicBool::new(false));
        let ns_per_row = Arc::new(RunEstimate(AtomicU64::new(RunEstimate::UNKNOWN)));
        for i in 0..workers {
            let worker = Worker {
                index: i,
                sessions: Arc::clone(&sessions),
                jobs: jobs.clone(),
                background: Arc::clone(&background),
                ns_per_row: Arc::clone(&ns_per_row),
                _counted: Arc::clone(&counted),
            };
            let batching = worker_batching.clone();
            let spawned = thread::Builder::new().name(format!("{thread_name}-{i}")).spawn(move || match batching {
                None => worker.work(),
                Some(batching) => worker.work_batched(&batching),
            });
            // Dropping `queue` on return stops the workers already started.
            spawned.map_err(|e| InferError::Load(format!("cannot start a worker thread: {e}")))?;
        }
        let pool =
            WorkerPool {
            queue,
            sessions,
            background,
            ns_per_row,
            arrivals: AtomicU64::new(0),
            gathering: Mutex::new(Vec::new()),
            inline_below: config.inline_below,
            batching: config.batching.is_some(),
            joins_waiting,
            _counted: counted,
        };
        Ok((pool, info))
    }

    /// Runs `request` and waits for its output. Fails at once when the queue is full.
    ///
    /// A model that is tiny for the request runs on the caller's thread. When its rows can be
    /// joined, the requests that arrive together are gathered and run as one call there (see
    /// [`WorkerPool::run_gathered`]): no thread hand-off at all, and one runtime call for a run
    /// of requests. When they cannot, a request runs inline only if no other request for this
    /// pool arrived while it yielded once to the runtime; concurrent ones go through the queue.
    /// Everything else runs on a worker.
    pub async fn run(&self, mut request: PreparedRequest) -> Result<JobOutput, Refused> {
        if self.runs_inline(request.rows()) {
            if self.joins_waiting {
                return self.run_gathered(request).await;
            }
            let ticket = self.arrivals.fetch_add(1, Ordering::Relaxed) + 1;
            tokio::task::yield_now().await;
            if self.arrivals.load(Ordering::Relaxed) == ticket {
                match self.try_run_inline(request) {
                    Ok(output) => return Ok(output),
                    Err(back) => request = back,
                }
            }
        }
        self.submit(request).map_err(Refused::QueueFull)?.await.unwrap_or(Err(Refused::WorkerGone))
    }

    /// A tiny model whose rows can be joined: the request waits in `gathering` while its task
    /// yields once, so the requests read in the same turn of the reactor gather there; then the
    /// first task back takes as many as the inline budget allows and runs them as one call on its
    /// own thread, answering each. A task whose request is still waiting takes the next run after
    /// yielding again, so no task holds the reactor for more than one run. When no session is
    /// idle, the run goes to the workers' queue instead.
    async fn run_gathered(&self, request: PreparedRequest) -> Result<JobOutput, Refused> {
        let (reply, output) = oneshot::channel();
        lock(&self.gathering).push(Job { request, enqueued: Instant::now(), reply, measured: true });
        let mut waiting = Waiting { output, gathering: &self.gathering, listed: true };
        let answer = loop {
            tokio::task::yield_now().await;
            let run = self.take_gathered();
            if !run.is_empty() {
                self.run_or_queue(run);
            }
            match waiting.output.try_recv() {
                Ok(answer) => break answer,
                Err(oneshot::error::TryRecvError::Closed) => break Err(Refused::WorkerGone),
                Err(oneshot::error::TryRecvError::Empty) if lock(&self.gathering).is_empty() => {
                    // Another thread's task took this request and is running it now.
                    waiting.listed = false;
                    break (&mut waiting.output).await.unwrap_or(Err(Refused::WorkerGone));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        };
        waiting.listed = false;
        answer
    }

    /// The gathered requests from the oldest, as many rows as are estimated to run within the
    /// inline threshold together (at least one request); requests whose caller left are dropped.
    fn take_gathered(&self) -> Vec<Job> {
        let mut gathering = lock(&self.gathering);
        gathering.retain(|job| !job.reply.is_closed());
        let mut rows = 0;
        let mut take = 0;
        for job in gathering.iter() {
            let more = rows + job.request.rows();
            let fits = take == 0
                || (more <= OPPORTUNISTIC_MAX_ROWS
                    && fits_with(&gathering[0].request, &job.request)
                    && self.ns_per_row.estimate(more).is_some_and(|d| d < self.inline_below));
            if !fits {
                break;
            }
            rows = more;
            take += 1;
        }
        gathering.drain(..take).collect()
    }

    /// A session no worker or inline caller holds right now, locked; never waits.
    fn idle_session(&self) -> Option<MutexGuard<'_, Box<dyn Session>>> {
        self.sessions.iter().find_map(|slot| match slot.try_lock() {
            Ok(session) => Some(session),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        })
    }

    /// Runs `run` on this thread on an idle session, else hands its requests to the workers.
    fn run_or_queue(&self, run: Vec<Job>) {
        let rows = run.iter().map(|job| job.request.rows()).sum();
        if let Some(session) = self.idle_session() {
            return run_batch(session, run, rows, &self.ns_per_row);
        }
        for job in run {
            if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = self.queue.try_send(job) {
                let _ = job.reply.send(Err(Refused::QueueFull(QueueFull { queued: self.queue.len() })));
            }
        }
    }

    /// Whether a request of `rows` rows is run inline (if a session is free): the model is
    /// measured as tiny for it, batching is off and the version is not a background one.
    pub fn runs_inline(&self, rows: usize) -> bool {
        !self.batching && !self.background.load(Ordering::Relaxed) && self.ns_per_row.estimate(rows).is_some_and(|d| d < self.inline_below)
    }

    /// Runs `request` on the calling thread when the model is measured as tiny for its rows and a
    /// session is idle right now; otherwise gives the request back, to be [`submit`]ted. Never
    /// waits: it is called on the async reactor.
    ///
    /// [`submit`]: WorkerPool::submit
    pub fn try_run_inline(&self, request: PreparedRequest) -> Result<JobOutput, PreparedRequest> {
        if !self.runs_inline(request.rows()) {
            return Err(request);
        }
        if let Some(mut session) = self.idle_session() {
            let started = Instant::now();
            let result = run_guarded(session.as_mut(), &request);
            drop(session);
            let inference = started.elapsed();
            self.ns_per_row.observe(request.rows(), inference);
            return Ok(JobOutput { result, queued: Duration::ZERO, inference, formed: Some(Formed { requests: 1, rows: request.rows() }) });
        }
        Err(request)
    }

    /// Queues a request; the receiver yields its output. Never blocks.
    pub fn submit(&self, request: PreparedRequest) -> Result<oneshot::Receiver<Result<JobOutput, Refused>>, QueueFull> {
        self.submit_job(request, true)
    }

    /// Runs `request` on a worker without feeding the time estimate (a warm-up: its inputs are
    /// made up, and may cost nothing like a client's).
    pub async fn run_unmeasured(&self, request: PreparedRequest) -> Result<JobOutput, Refused> {
        self.submit_job(request, false).map_err(Refused::QueueFull)?.await.unwrap_or(Err(Refused::WorkerGone))
    }

    fn submit_job(&self, request: PreparedRequest, measured: bool) -> Result<oneshot::Receiver<Result<JobOutput, Refused>>, QueueFull> {
        let (reply, output) = oneshot::channel();
        match self.queue.try_send(Job { request, enqueued: Instant::now(), reply, measured }) {
            Ok(()) => Ok(output),
            Err(TrySendError::Full(_)) => Err(QueueFull { queued: self.queue.len() }),
            // Workers only exit once the pool is dropped, so a live pool is never disconnected;
            // report it as full rather than panic if a worker died some other way.
            Err(TrySendError::Disconnected(_)) => Err(QueueFull { queued: 0 }),
        }
    }

    /// Whether a submission now would be refused.
    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    /// Requests waiting for a worker right now.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// How many requests the queue holds before it refuses (429).
    pub fn capacity(&self) -> usize {
        self.queue.capacity().unwrap_or(usize::MAX)
    }

    pub fn workers(&self) -> usize {
        self.sessions.len()
    }

    /// Whether workers join the compatible requests already waiting into one run.
    pub fn joins_waiting(&self) -> bool {
        self.joins_waiting
    }

    /// Runs the workers at background CPU priority (or back at normal): a version that only
    /// answers mirrored requests must not take CPU from the versions clients wait for. Each worker
    /// applies the change before its next job.
    pub fn set_background(&self, background: bool) {
        self.background.store(background, Ordering::Relaxed);
    }
}

/// The nice value of background workers: the lowest priority, so that under contention the
/// scheduler gives them what the served versions leave.
const BACKGROUND_NICE: i32 = 19;

/// One worker thread: its session's index, the shared queue and the pool's shared state.
struct Worker {
    index: usize,
    sessions: Arc<[Mutex<Box<dyn Session>>]>,
    jobs: Receiver<Job>,
    background: Arc<AtomicBool>,
    ns_per_row: Arc<RunEstimate>,
    _counted: Arc<Counted>,
}

impl Worker {
    /// Runs `request` on this worker's session; waits (briefly: only a tiny model runs inline)
    /// while an inline caller has it.
    fn run(&self, request: &PreparedRequest, measured: bool) -> (Result<Vec<Tensor>, InferError>, Duration) {
        let mut session = lock(&self.sessions[self.index]);
        let started = Instant::now();
        let result = run_guarded(session.as_mut(), request);
        drop(session);
        let took = started.elapsed();
        if measured {
            self.ns_per_row.observe(request.rows(), took);
        }
        (result, took)
    }

    fn work(&self) {
        let mut niced = false;
        for job in self.jobs.iter() {
            follow_priority(&self.background, &mut niced);
            let queued = job.enqueued.elapsed();
            if job.reply.is_closed() {
                // The client went away while the request waited: skip the work.
                continue;
            }
            let (result, inference) = self.run(&job.request, job.measured);
            let _ = job.reply.send(Ok(JobOutput { result, queued, inference, formed: Some(Formed { requests: 1, rows: job.request.rows() }) }));
        }
    }

    /// The worker loop with dynamic batching: takes the first request, gathers compatible ones until
    /// the batch is full, reaches a preferred size or the first request's delay runs out, runs them
    /// as one and hands each request its own rows of the outputs. A request that does not fit (other
    /// row shape, other outputs, too many rows) starts the next batch.
    fn work_batched(&self, batching: &Batching) {
        let mut niced = false;
        let mut carried: Option<Job> = None;
        loop {
            let first = match carried.take() {
                Some(job) => job,
                None => match self.jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            if first.reply.is_closed() {
                continue;
            }
            follow_priority(&self.background, &mut niced);
            let deadline = first.enqueued + batching.max_queue_delay;
            let mut rows = first.request.rows();
            let mut batch = vec![first];
            while rows < batching.max_batch_size && !batching.preferred_batch_sizes.contains(&rows) {
                let job = match self.jobs.try_recv() {
                    Ok(job) => job,
                    Err(_) => match self.jobs.recv_deadline(deadline) {
                        Ok(job) => job,
                        Err(_) => break,
                    },
                };
                if job.reply.is_closed() {
                    continue;
                }
                let fits = rows + job.request.rows() <= batching.max_batch_size && fits_with(&batch[0].request, &job.request);
                if !fits {
                    carried = Some(job);
                    break;
                }
                rows += job.request.rows();
                batch.push(job);
            }
            // With dynamic batching nothing runs inline, so the session is free here; when only
            // waiting requests are joined, an inline caller may hold it for a few microseconds.
            let guard = lock(&self.sessions[self.index]);
            run_batch(guard, batch, rows, &self.ns_per_row);
        }
    }
}

/// Locks `mutex`, whether or not a panicking holder poisoned it (what it guards stays usable).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one request; a panic in the runtime becomes an error for this request only.
fn run_guarded(session: &mut dyn Session, request: &PreparedRequest) -> Result<Vec<Tensor>, InferError> {
    catch_unwind(AssertUnwindSafe(|| session.run(request)))
        .unwrap_or_else(|_| Err(InferError::Runtime("the runtime panicked; the request was not completed".to_owned())))
}

fn follow_priority(background: &AtomicBool, niced: &mut bool) {
    let wanted = background.load(Ordering::Relaxed);
    if wanted != *niced {
        set_thread_nice(if wanted { BACKGROUND_NICE } else { 0 });
        *niced = wanted;
    }
}

/// Whether two requests can run as one batch: same outputs, same per-row input shapes.
fn fits_with(a: &PreparedRequest, b: &PreparedRequest) -> bool {
    a.outputs == b.outputs
        && a.inputs.len() == b.inputs.len()
        && a.inputs.iter().zip(&b.inputs).all(|(x, y)| x.shape().get(1..) == y.shape().get(1..) && !x.shape().is_empty())
}

/// A gathered request's caller, waiting for its answer. If the caller goes away while its
/// request is still listed (hyper drops the handler of a client that disconnected), the request
/// leaves the list at once rather than at the next request's take, so an idle model keeps no
/// abandoned request.
struct Waiting<'a> {
    output: oneshot::Receiver<Result<JobOutput, Refused>>,
    gathering: &'a Mutex<Vec<Job>>,
    /// Whether the request may still be in `gathering`.
    listed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.listed {
            self.output.close();
            lock(self.gathering).retain(|job| !job.reply.is_closed());
        }
    }
}

/// Runs one batch on the session in `slot` and answers each of its requests. The session is
/// released before the first answer is sent (as `Worker::run` does), so a caller woken by its answer
/// finds it free to run its next request inline. Only a lone request's run feeds `estimate`'s mean,
/// also before its answer: a joined run's time per row is not what one request costs alone (it
/// shares the call's fixed cost). A joined run's whole time only bounds it from above.
fn run_batch(mut guard: MutexGuard<'_, Box<dyn Session>>, batch: Vec<Job>, rows: usize, estimate: &RunEstimate) {
    let session = guard.as_mut();
    let started = Instant::now();
    let formed = Formed { requests: batch.len(), rows };
    if batch.len() == 1 {
        let job = batch.into_iter().next().expect("one job");
        let result = run_guarded(session, &job.request);
        drop(guard);
        let inference = started.elapsed();
        if job.measured {
            estimate.observe(rows, inference);
        }
        let queued = started.duration_since(job.enqueued);
        let _ = job.reply.send(Ok(JobOutput { result, queued, inference, formed: Some(formed) }));
        return;
    }
    let first = &batch[0].request;
    let inputs: Option<Vec<Tensor>> = (0..first.inputs.len())
        .map(|i| modelship_inference::concat_rows(&batch.iter().map(|j| &j.request.inputs[i]).collect::<Vec<_>>()))
        .collect();
    let joined = inputs.map(|inputs| PreparedRequest { inputs, outputs: first.outputs.clone() });
    let rows_of: Vec<usize> = batch.iter().map(|j| j.request.rows()).collect();
    let result = match joined {
        None => Err(InferError::Runtime("requests in one batch did not line up".to_owned())),
        Some(request) => run_guarded(session, &request),
    };
    // Each output split by rows; per request, its piece of every output. When the joined run
    // fails, each request runs on its own, so one bad request cannot fail the others.
    let pieces: Vec<Result<Vec<Tensor>, InferError>> =
        match result.and_then(|outputs| outputs.into_iter().map(|o| o.split_rows(&rows_of)).collect::<Result<Vec<_>, _>>()) {
            Ok(per_output) => {
                let mut per_request: Vec<Vec<Tensor>> = rows_of.iter().map(|_| Vec::with_capacity(per_output.len())).collect();
                for output in per_output {
                    for (r, piece) in output.into_iter().enumerate() {
                        per_request[r].push(piece);
                    }
                }
                per_request.into_iter().map(Ok).collect()
            }
            Err(_) => batch.iter().map(|job| run_guarded(session, &job.request)).collect(),
        };
    drop(guard);
    let inference = started.elapsed();
    estimate.bound(inference);
    for (i, (job, result)) in batch.into_iter().zip(pieces).enumerate() {
        let queued = started.duration_since(job.enqueued);
        let _ = job.reply.send(Ok(JobOutput { result, queued, inference, formed: (i == 0).then_some(formed) }));
    }
}

/// Sets the calling thread's nice value (Linux schedules threads individually). Raising it back
/// to 0 needs CAP_SYS_NICE; without it the thread stays background, which only costs it speed.
#[allow(unsafe_code)]
fn set_thread_nice(nice: i32) {
    // SAFETY: gettid and setpriority only read their integer arguments and set the scheduling
    // priority of this thread; no memory is shared with the kernel.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if result != 0 {
        tracing::debug!(nice, error = %std::io::Error::last_os_error(), "cannot change a worker's priority");
    }
}

#[cfg(test)]
mod tests;
