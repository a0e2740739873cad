//! Inference workers for one model version.
//!
//! With dynamic batching on, a worker joins compatible concurrent requests along the first
//! dimension (up to a row limit, a preferred size or a queue delay) and runs them as one call,
//! then hands each request its own rows of the outputs.
//!
//! Each worker is an OS thread that owns one runtime session, so CPU-bound inference never runs on
//! the async reactor and sessions never need a lock. Requests wait in one bounded queue shared by
//! the workers; when it is full, [`WorkerPool::submit`] fails at once and the caller answers 429
//! instead of building an unbounded backlog. Dropping the pool closes the queue: workers finish
//! what is queued, then exit and drop their sessions.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use modelship_inference::{Backend, InferError, LoadOptions, ModelInfo, PreparedRequest, Session, Tensor};
use tokio::sync::oneshot;

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
    reply: oneshot::Sender<JobOutput>,
}

/// The queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    pub queued: usize,
}

pub struct WorkerPool {
    queue: Sender<Job>,
    workers: usize,
    /// Whether the workers run at background CPU priority (a shadow-only version).
    background: Arc<AtomicBool>,
}

impl WorkerPool {
    /// Loads `config.workers` sessions in parallel (one per worker thread) and starts the workers.
    /// Fails with the first load error, after stopping any worker already started.
    pub fn start(
        backend: Arc<dyn Backend>,
        model: Arc<[u8]>,
        config: &PoolConfig,
        thread_name: &str,
    ) -> Result<(WorkerPool, ModelInfo), InferError> {
        let workers = config.workers.max(1);
        let (queue, jobs) = crossbeam_channel::bounded::<Job>(config.max_queue.max(1));
        let (loaded_tx, loaded_rx) = std::sync::mpsc::channel::<Result<ModelInfo, InferError>>();
        let background = Arc::new(AtomicBool::new(false));
        for i in 0..workers {
            let background = Arc::clone(&background);
            let backend = Arc::clone(&backend);
            let model = Arc::clone(&model);
            let load = config.load.clone();
            let batching = config.batching.clone();
            let jobs = jobs.clone();
            let loaded_tx = loaded_tx.clone();
            thread::Builder::new()
                .name(format!("{thread_name}-{i}"))
                .spawn(move || {
                    let session = match backend.load(&model, &load) {
                        Ok(session) => session,
                        Err(e) => {
                            let _ = loaded_tx.send(Err(e));
                            return;
                        }
                    };
                    drop(model);
                    let _ = loaded_tx.send(Ok(session.info().clone()));
                    drop(loaded_tx);
                    match batching {
                        None => work(session, jobs, &background),
                        Some(batching) => work_batched(session, jobs, &background, &batching),
                    }
                })
                .map_err(|e| InferError::Load(format!("cannot start a worker thread: {e}")))?;
        }
        drop(loaded_tx);
        drop(jobs);
        let mut info = None;
        for loaded in loaded_rx.iter() {
            match loaded {
                // Dropping `queue` on return stops the workers that did load.
                Err(e) => return Err(e),
                Ok(i) => info = Some(i),
            }
        }
        let info = info.ok_or_else(|| InferError::Load("no worker loaded the model".to_owned()))?;
        Ok((WorkerPool { queue, workers, background }, info))
    }

    /// Queues a request; the receiver yields its output. Never blocks.
    pub fn submit(&self, request: PreparedRequest) -> Result<oneshot::Receiver<JobOutput>, QueueFull> {
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
        self.workers
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

fn work(mut session: Box<dyn Session>, jobs: Receiver<Job>, background: &AtomicBool) {
    let mut niced = false;
    for job in jobs.iter() {
        follow_priority(background, &mut niced);
        let queued = job.enqueued.elapsed();
        if job.reply.is_closed() {
            // The client went away while the request waited: skip the work.
            continue;
        }
        let started = Instant::now();
        let result = run_guarded(session.as_mut(), &job.request);
        let _ = job.reply.send(JobOutput {
            result,
            queued,
            inference: started.elapsed(),
            formed: Some(Formed { requests: 1, rows: job.request.rows() }),
        });
    }
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

/// The worker loop with dynamic batching: takes the first request, gathers compatible ones until
/// the batch is full, reaches a preferred size or the first request's delay runs out, runs them
/// as one and hands each request its own rows of the outputs. A request that does not fit (other
/// row shape, other outputs, too many rows) starts the next batch.
fn work_batched(mut session: Box<dyn Session>, jobs: Receiver<Job>, background: &AtomicBool, batching: &Batching) {
    let mut niced = false;
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        if first.reply.is_closed() {
            continue;
        }
        follow_priority(background, &mut niced);
        let deadline = first.enqueued + batching.max_queue_delay;
        let mut rows = first.request.rows();
        let mut batch = vec![first];
        while rows < batching.max_batch_size && !batching.preferred_batch_sizes.contains(&rows) {
            let job = match jobs.try_recv() {
                Ok(job) => job,
                Err(_) => match jobs.recv_deadline(deadline) {
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
        run_batch(session.as_mut(), batch, rows);
    }
}

/// Whether two requests can run as one batch: same outputs, same per-row input shapes.
fn fits_with(a: &PreparedRequest, b: &PreparedRequest) -> bool {
    a.outputs == b.outputs
        && a.inputs.len() == b.inputs.len()
        && a.inputs.iter().zip(&b.inputs).all(|(x, y)| x.shape().get(1..) == y.shape().get(1..) && !x.shape().is_empty())
}

fn run_batch(session: &mut dyn Session, batch: Vec<Job>, rows: usize) {
    let started = Instant::now();
    let formed = Formed { requests: batch.len(), rows };
    if batch.len() == 1 {
        let job = batch.into_iter().next().expect("one job");
        let result = run_guarded(session, &job.request);
        let queued = started.duration_since(job.enqueued);
        let _ = job.reply.send(JobOutput { result, queued, inference: started.elapsed(), formed: Some(formed) });
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
    // Each output split by rows; per request, its piece of every output.
    let pieces: Vec<Result<Vec<Tensor>, InferError>> = match result.and_then(|outputs| {
        outputs.into_iter().map(|o| o.split_rows(&rows_of)).collect::<Result<Vec<_>, _>>()
    }) {
        Ok(per_output) => {
            let mut per_request: Vec<Vec<Tensor>> = rows_of.iter().map(|_| Vec::with_capacity(per_output.len())).collect();
            for output in per_output {
                for (r, piece) in output.into_iter().enumerate() {
                    per_request[r].push(piece);
                }
            }
            per_request.into_iter().map(Ok).collect()
        }
        Err(e) => rows_of.iter().map(|_| Err(e.clone())).collect(),
    };
    let inference = started.elapsed();
    for (i, (job, result)) in batch.into_iter().zip(pieces).enumerate() {
        let queued = started.duration_since(job.enqueued);
        let _ = job.reply.send(JobOutput { result, queued, inference, formed: (i == 0).then_some(formed) });
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
