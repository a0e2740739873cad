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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
        let (reply, mut output) = oneshot::channel();
        lock(&self.gathering).push(Job { request, enqueued: Instant::now(), reply });
        loop {
            tokio::task::yield_now().await;
            let run = self.take_gathered();
            if !run.is_empty() {
                self.run_or_queue(run);
            }
            match output.try_recv() {
                Ok(answer) => return answer,
                Err(oneshot::error::TryRecvError::Closed) => return Err(Refused::WorkerGone),
                Err(oneshot::error::TryRecvError::Empty) if lock(&self.gathering).is_empty() => {
                    // Another thread's task took this request and is running it now.
                    return output.await.unwrap_or(Err(Refused::WorkerGone));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
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
        let (reply, output) = oneshot::channel();
        match self.queue.try_send(Job { request, enqueued: Instant::now(), reply }) {
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
}

impl Worker {
    /// Runs `request` on this worker's session; waits (briefly: only a tiny model runs inline)
    /// while an inline caller has it.
    fn run(&self, request: &PreparedRequest) -> (Result<Vec<Tensor>, InferError>, Duration) {
        let mut session = lock(&self.sessions[self.index]);
        let started = Instant::now();
        let result = run_guarded(session.as_mut(), request);
        drop(session);
        let took = started.elapsed();
        self.ns_per_row.observe(request.rows(), took);
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
            let (result, inference) = self.run(&job.request);
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
        estimate.observe(rows, inference);
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
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::thread::ThreadId;

    use modelship_inference::{DataType, Signature, TensorData, TensorSpec};

    use super::*;

    /// A session that records the thread each run happened on, and sleeps `run` per call.
    struct Recording {
        info: ModelInfo,
        run: Duration,
        threads: Arc<StdMutex<Vec<ThreadId>>>,
    }

    impl Session for Recording {
        fn info(&self) -> &ModelInfo {
            &self.info
        }

        fn run(&mut self, request: &PreparedRequest) -> Result<Vec<Tensor>, InferError> {
            self.threads.lock().unwrap().push(thread::current().id());
            thread::sleep(self.run);
            Ok(vec![request.inputs[0].clone()])
        }
    }

    struct RecordingBackend {
        run: Duration,
        threads: Arc<StdMutex<Vec<ThreadId>>>,
    }

    impl Backend for RecordingBackend {
        fn name(&self) -> &'static str {
            "recording"
        }

        fn load(&self, _: &[u8], _: &LoadOptions) -> Result<Box<dyn Session>, InferError> {
            let info = ModelInfo {
                signature: Signature {
                    inputs: vec![TensorSpec::new("x", DataType::Fp32, vec![-1, 1])],
                    outputs: vec![TensorSpec::new("x", DataType::Fp32, vec![-1, 1])],
                },
                platform: "recording".to_owned(),
                producer: None,
                opset: None,
                skipped_outputs: vec![],
            };
            Ok(Box::new(Recording { info, run: self.run, threads: Arc::clone(&self.threads) }))
        }
    }

    fn pool(run: Duration, config: PoolConfig) -> (WorkerPool, Arc<StdMutex<Vec<ThreadId>>>) {
        let threads = Arc::new(StdMutex::new(Vec::new()));
        let backend = Arc::new(RecordingBackend { run, threads: Arc::clone(&threads) });
        let (pool, _) = WorkerPool::start(backend, Arc::from(&b""[..]), &config, "test").expect("the pool starts");
        // The row-independence probe ran at start, on this thread.
        threads.lock().unwrap().clear();
        (pool, threads)
    }

    /// A model that answers each row with its value (or, `mixes_rows`, its value less the batch's
    /// mean, so rows change each other) and fails any run holding a NaN.
    struct Rowwise {
        info: ModelInfo,
        mixes_rows: bool,
        runs: Arc<StdMutex<Vec<usize>>>,
        gate: Arc<Gate>,
    }

    /// Holds the next run inside the session until the test lets it go, so that requests can
    /// queue behind a run that is certainly under way (a sleep would only make it likely).
    #[derive(Default)]
    struct Gate {
        armed: std::sync::atomic::AtomicBool,
        state: StdMutex<(bool, bool)>,
        changed: std::sync::Condvar,
    }

    impl Gate {
        /// The next run will wait inside the session for [`Gate::release`].
        fn arm(&self) {
            *self.state.lock().unwrap() = (false, false);
            self.armed.store(true, Ordering::SeqCst);
        }

        /// Called by the session: when armed, says it entered and waits to be released.
        fn pass(&self) {
            if self.armed.swap(false, Ordering::SeqCst) {
                let mut state = self.state.lock().unwrap();
                state.0 = true;
                self.changed.notify_all();
                while !state.1 {
                    state = self.changed.wait(state).unwrap();
                }
            }
        }

        /// Waits until the armed run is inside the session.
        fn entered(&self) {
            let mut state = self.state.lock().unwrap();
            while !state.0 {
                state = self.changed.wait(state).unwrap();
            }
        }

        fn release(&self) {
            self.state.lock().unwrap().1 = true;
            self.changed.notify_all();
        }
    }

    impl Session for Rowwise {
        fn info(&self) -> &ModelInfo {
            &self.info
        }

        fn run(&mut self, request: &PreparedRequest) -> Result<Vec<Tensor>, InferError> {
            self.runs.lock().unwrap().push(request.rows());
            self.gate.pass();
            let TensorData::Fp32(values) = request.inputs[0].data() else { unreachable!("the signature is FP32") };
            if values.iter().any(|v| v.is_nan()) {
                return Err(InferError::Runtime("NaN in the input".to_owned()));
            }
            let mean = values.iter().sum::<f32>() / values.len() as f32;
            let out = values.iter().map(|v| if self.mixes_rows { v - mean } else { *v }).collect();
            Ok(vec![Tensor::new("y", request.inputs[0].shape().to_vec(), TensorData::Fp32(out))?])
        }
    }

    struct RowwiseBackend {
        mixes_rows: bool,
        batch_dim: bool,
        runs: Arc<StdMutex<Vec<usize>>>,
        gate: Arc<Gate>,
    }

    impl Backend for RowwiseBackend {
        fn name(&self) -> &'static str {
            "rowwise"
        }

        fn load(&self, _: &[u8], _: &LoadOptions) -> Result<Box<dyn Session>, InferError> {
            let first = if self.batch_dim { -1 } else { 1 };
            let info = ModelInfo {
                signature: Signature {
                    inputs: vec![TensorSpec::new("x", DataType::Fp32, vec![first, 1])],
                    outputs: vec![TensorSpec::new("y", DataType::Fp32, vec![first, 1])],
                },
                platform: "rowwise".to_owned(),
                producer: None,
                opset: None,
                skipped_outputs: vec![],
            };
            Ok(Box::new(Rowwise { info, mixes_rows: self.mixes_rows, runs: Arc::clone(&self.runs), gate: Arc::clone(&self.gate) }))
        }
    }

    fn rowwise(mixes_rows: bool, batch_dim: bool, config: PoolConfig) -> (WorkerPool, Arc<StdMutex<Vec<usize>>>, Arc<Gate>) {
        let runs = Arc::new(StdMutex::new(Vec::new()));
        let gate = Arc::new(Gate::default());
        let backend = Arc::new(RowwiseBackend { mixes_rows, batch_dim, runs: Arc::clone(&runs), gate: Arc::clone(&gate) });
        let (pool, _) = WorkerPool::start(backend, Arc::from(&b""[..]), &config, "test").expect("the pool starts");
        runs.lock().unwrap().clear();
        (pool, runs, gate)
    }

    fn value(v: f32) -> PreparedRequest {
        PreparedRequest { inputs: vec![Tensor::new("x", vec![1, 1], TensorData::Fp32(vec![v])).unwrap()], outputs: vec![0] }
    }

    #[test]
    fn waiting_requests_are_joined_only_for_a_model_whose_rows_pass_the_probe() {
        let table = [
            // (rows mix, batch dimension, opportunistic, joined)
            (false, true, Opportunistic::Auto, true),
            (false, true, Opportunistic::Off, false),
            (true, true, Opportunistic::Auto, false),
            (false, false, Opportunistic::Auto, false),
        ];
        for (mixes_rows, batch_dim, opportunistic, joined) in table {
            let config = PoolConfig { opportunistic, ..PoolConfig::new(1, 8) };
            let (pool, _, _) = rowwise(mixes_rows, batch_dim, config);
            assert_eq!(pool.joins_waiting(), joined, "rows mix: {mixes_rows}, batch dimension: {batch_dim}, {opportunistic:?}");
        }
        let batching = Batching { max_batch_size: 8, max_queue_delay: Duration::from_millis(1), preferred_batch_sizes: vec![] };
        let (configured, _, _) = rowwise(false, true, PoolConfig { batching: Some(batching), ..PoolConfig::new(1, 8) });
        assert!(!configured.joins_waiting(), "configured dynamic batching replaces joining what waits");
    }

    #[test]
    fn requests_waiting_behind_a_run_are_joined_and_each_gets_its_own_rows() {
        let (pool, runs, gate) = rowwise(false, true, PoolConfig::new(1, 8));
        gate.arm();
        let busy = pool.submit(value(0.0)).expect("queued");
        // The worker is inside the first run while these three queue up behind it.
        gate.entered();
        let waiting: Vec<_> = [1.0, 2.0, 3.0].map(|v| pool.submit(value(v)).expect("queued")).into_iter().collect();
        gate.release();
        assert!(busy.blocking_recv().expect("answered").expect("not refused").result.is_ok());
        for (expected, reply) in [1.0f32, 2.0, 3.0].into_iter().zip(waiting) {
            let output = reply.blocking_recv().expect("answered").expect("not refused");
            let tensors = output.result.expect("answered with outputs");
            assert_eq!(tensors[0].data(), &TensorData::Fp32(vec![expected]), "each request gets its own row back");
        }
        assert_eq!(*runs.lock().unwrap(), vec![1, 3], "one run for the first, one joined run for the three waiting");
    }

    #[test]
    fn a_joined_run_that_fails_runs_each_request_alone() {
        let (pool, runs, gate) = rowwise(false, true, PoolConfig::new(1, 8));
        gate.arm();
        let busy = pool.submit(value(0.0)).expect("queued");
        gate.entered();
        let good = pool.submit(value(1.0)).expect("queued");
        let bad = pool.submit(value(f32::NAN)).expect("queued");
        let also_good = pool.submit(value(2.0)).expect("queued");
        gate.release();
        busy.blocking_recv().expect("answered").expect("not refused");
        assert!(good.blocking_recv().expect("answered").expect("not refused").result.is_ok());
        assert!(bad.blocking_recv().expect("answered").expect("not refused").result.is_err(), "the bad request fails");
        assert!(also_good.blocking_recv().expect("answered").expect("not refused").result.is_ok(), "and only the bad one");
        assert_eq!(*runs.lock().unwrap(), vec![1, 3, 1, 1, 1], "the joined run failed, then each ran alone");
    }

    fn request(rows: usize) -> PreparedRequest {
        let x = Tensor::new("x", vec![rows, 1], TensorData::Fp32(vec![1.0; rows])).unwrap();
        PreparedRequest { inputs: vec![x], outputs: vec![0] }
    }

    /// A pool config whose inline threshold no run of the zero-time fake can miss, however
    /// loaded the machine: the default 50 µs is measured on the real clock, and a debug build
    /// preempted beside a busy suite has taken longer than that for an empty run.
    fn generous() -> PoolConfig {
        PoolConfig { inline_below: Duration::from_secs(1), ..PoolConfig::new(1, 4) }
    }

    /// Runs one request through the queue (as the warm-up does), which measures the model.
    fn through_worker(pool: &WorkerPool, rows: usize) -> JobOutput {
        pool.submit(request(rows)).expect("queued").blocking_recv().expect("answered").expect("not refused")
    }

    #[test]
    fn a_tiny_model_runs_on_the_callers_thread_once_measured() {
        let (pool, threads) = pool(Duration::ZERO, generous());
        assert!(pool.try_run_inline(request(1)).is_err(), "an unmeasured model goes to a worker");
        through_worker(&pool, 1);
        let output = pool.try_run_inline(request(1)).unwrap_or_else(|_| panic!("a measured tiny model runs inline"));
        assert!(output.result.is_ok());
        assert_eq!(output.queued, Duration::ZERO);
        assert_eq!(output.formed, Some(Formed { requests: 1, rows: 1 }));
        let threads = threads.lock().unwrap();
        assert_ne!(threads[0], thread::current().id(), "the first run was a worker's");
        assert_eq!(threads[1], thread::current().id(), "the second ran here");
    }

    #[test]
    fn a_slow_model_never_runs_inline() {
        let (pool, threads) = pool(Duration::from_millis(2), PoolConfig::new(1, 4));
        through_worker(&pool, 1);
        for _ in 0..3 {
            assert!(pool.try_run_inline(request(1)).is_err());
        }
        assert_eq!(threads.lock().unwrap().len(), 1, "refusing ran nothing");
    }

    #[test]
    fn the_estimate_scales_with_rows() {
        // ~1 ms per row measured on one row (more on a loaded machine: a sleep only ever
        // oversleeps); a threshold of 50 ms takes one row and refuses 100.
        let config = PoolConfig { inline_below: Duration::from_millis(50), ..PoolConfig::new(1, 4) };
        let (pool, _) = pool(Duration::from_millis(1), config);
        through_worker(&pool, 1);
        assert!(pool.try_run_inline(request(1)).is_ok(), "1 row: about 1 ms, under 50 ms");
        assert!(pool.try_run_inline(request(100)).is_err(), "100 rows: at least 100 ms");
    }

    #[test]
    fn inline_is_off_with_a_zero_threshold_with_batching_and_in_the_background() {
        let (off, _) = pool(Duration::ZERO, PoolConfig { inline_below: Duration::ZERO, ..PoolConfig::new(1, 4) });
        through_worker(&off, 1);
        assert!(off.try_run_inline(request(1)).is_err());

        let batching = Batching { max_batch_size: 8, max_queue_delay: Duration::from_micros(100), preferred_batch_sizes: vec![] };
        let (batched, _) = pool(Duration::ZERO, PoolConfig { batching: Some(batching), ..generous() });
        through_worker(&batched, 1);
        assert!(batched.try_run_inline(request(1)).is_err(), "batching pools join requests on their workers");

        let (background, _) = pool(Duration::ZERO, generous());
        through_worker(&background, 1);
        background.set_background(true);
        assert!(background.try_run_inline(request(1)).is_err(), "a shadow-only version stays at background priority");
    }

    #[test]
    fn a_busy_session_is_never_waited_for() {
        let (pool, _) = pool(Duration::ZERO, generous());
        through_worker(&pool, 1);
        let held = pool.sessions[0].lock().unwrap();
        assert!(pool.try_run_inline(request(1)).is_err(), "the only session is busy: give the request back");
        drop(held);
        assert!(pool.try_run_inline(request(1)).is_ok());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_joining_a_lone_request_runs_inline_and_concurrent_ones_go_through_the_queue() {
        let (pool, threads) = pool(Duration::ZERO, PoolConfig { opportunistic: Opportunistic::Off, ..generous() });
        pool.submit(request(1)).expect("queued").await.expect("answered").expect("not refused");
        let here = thread::current().id();
        pool.run(request(1)).await.expect("answered");
        assert_eq!(threads.lock().unwrap().last(), Some(&here), "alone: inline");
        let (a, b) = tokio::join!(pool.run(request(1)), pool.run(request(1)));
        assert!(a.is_ok() && b.is_ok());
        let threads = threads.lock().unwrap();
        assert_eq!(threads.len(), 4);
        // The first saw the second arrive while it yielded, so a worker ran it (the second may
        // run here, or on the worker when the session was busy; either may finish first).
        assert!(threads[2..].iter().any(|t| *t != here), "one of the two ran on a worker: {threads:?}");
    }

    /// Measures a rowwise pool's run time through its worker, so that it runs inline afterwards.
    async fn measured(pool: &WorkerPool, runs: &StdMutex<Vec<usize>>) {
        pool.submit(value(0.0)).expect("queued").await.expect("answered").expect("not refused");
        runs.lock().unwrap().clear();
    }

    fn value_of(output: Result<JobOutput, Refused>) -> f32 {
        let outputs = output.expect("not refused").result.expect("the run succeeds");
        let TensorData::Fp32(values) = outputs[0].data() else { unreachable!("the fake answers FP32") };
        assert_eq!(values.len(), 1, "one row per request");
        values[0]
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_requests_of_a_tiny_joinable_model_run_here_as_one_and_each_gets_its_rows() {
        let (pool, runs, _) = rowwise(false, true, generous());
        assert!(pool.joins_waiting());
        measured(&pool, &runs).await;
        let (a, b, c) = tokio::join!(pool.run(value(1.0)), pool.run(value(2.0)), pool.run(value(3.0)));
        assert_eq!([value_of(a), value_of(b), value_of(c)], [1.0, 2.0, 3.0]);
        assert_eq!(*runs.lock().unwrap(), vec![3], "one joined run of three rows");
        assert_eq!(pool.queued(), 0);
        // A lone request is a run of one.
        assert_eq!(value_of(pool.run(value(4.0)).await), 4.0);
        assert_eq!(*runs.lock().unwrap(), vec![3, 1]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_gathered_run_stays_within_the_inline_budget() {
        let config = PoolConfig { inline_below: Duration::from_micros(25), ..generous() };
        let (pool, runs, _) = rowwise(false, true, config);
        measured(&pool, &runs).await;
        // 10 µs a row: two rows fit under 25 µs, three do not. (Set directly: a run of the
        // zero-time fake would bound the estimate down to nothing.)
        pool.ns_per_row.0.store(10_000, Ordering::Relaxed);
        let waiting: Vec<_> = (1..=5)
            .map(|v| {
                let (reply, answer) = oneshot::channel();
                lock(&pool.gathering).push(Job { request: value(v as f32), enqueued: Instant::now(), reply });
                answer
            })
            .collect();
        let runs: Vec<usize> = std::iter::from_fn(|| Some(pool.take_gathered().len()).filter(|n| *n > 0)).collect();
        assert_eq!(runs, [2, 2, 1], "runs of at most two rows, oldest first");
        drop(waiting);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn gathered_requests_go_to_a_worker_when_no_session_is_idle() {
        let threads = Arc::new(StdMutex::new(Vec::new()));
        let backend = Arc::new(RecordingBackend { run: Duration::ZERO, threads: Arc::clone(&threads) });
        let (pool, _) = WorkerPool::start(backend, Arc::from(&b""[..]), &generous(), "test").expect("the pool starts");
        let pool = Arc::new(pool);
        pool.submit(request(1)).expect("queued").await.expect("answered").expect("not refused");
        threads.lock().unwrap().clear();
        let held = pool.sessions[0].lock().unwrap();
        let task = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { pool.run(request(1)).await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(lock(&pool.gathering).is_empty(), "the run was handed on, not kept waiting for the session");
        drop(held);
        task.await.expect("the task ends").expect("answered by a worker").result.expect("the run succeeds");
        assert_ne!(threads.lock().unwrap()[..], [thread::current().id()], "a worker ran it");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_gathered_request_whose_caller_left_is_not_run() {
        let (pool, runs, _) = rowwise(false, true, generous());
        measured(&pool, &runs).await;
        // Polled once (gathered, yielding), then dropped, as hyper drops a disconnected request.
        let mut left = Box::pin(pool.run(value(9.0)));
        assert!(futures::poll!(left.as_mut()).is_pending());
        drop(left);
        assert_eq!(value_of(pool.run(value(1.0)).await), 1.0);
        assert_eq!(*runs.lock().unwrap(), vec![1], "only the request still waited for ran");
    }

    #[test]
    fn the_running_estimate_follows_measurements() {
        let estimate = RunEstimate(AtomicU64::new(RunEstimate::UNKNOWN));
        assert_eq!(estimate.estimate(1), None);
        estimate.observe(4, Duration::from_micros(8));
        assert_eq!(estimate.estimate(1), Some(Duration::from_micros(2)), "the first sample is taken whole, per row");
        for _ in 0..64 {
            estimate.observe(1, Duration::from_micros(100));
        }
        let after = estimate.estimate(1).unwrap();
        assert!(after > Duration::from_micros(95) && after <= Duration::from_micros(100), "converges on the new cost: {after:?}");
        // A joined run bounds one row's time from above, whatever the mean says.
        let bound = RunEstimate(AtomicU64::new(RunEstimate::UNKNOWN));
        bound.bound(Duration::from_micros(30));
        assert_eq!(bound.estimate(1), Some(Duration::from_micros(30)), "an unmeasured pool takes the bound");
        bound.bound(Duration::from_micros(40));
        assert_eq!(bound.estimate(1), Some(Duration::from_micros(30)), "a looser bound changes nothing");
        bound.bound(Duration::from_micros(12));
        assert_eq!(bound.estimate(1), Some(Duration::from_micros(12)), "a tighter one lowers it");
        // One run that took far longer (a preempted thread) moves it by at most an eighth.
        estimate.observe(1, Duration::from_millis(50));
        let bumped = estimate.estimate(1).unwrap();
        assert!(bumped <= after + after / 8 + Duration::from_nanos(1), "one outlier counts as twice the estimate at most: {bumped:?}");
        assert_eq!(estimate.estimate(0), estimate.estimate(1), "zero rows count as one");
    }
}
