//! Inference workers for one model version.
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
}

/// The outcome of one job, with where its time went.
#[derive(Debug)]
pub struct JobOutput {
    pub result: Result<Vec<Tensor>, InferError>,
    pub queued: Duration,
    pub inference: Duration,
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
                    work(session, jobs, &background);
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
        let wanted = background.load(Ordering::Relaxed);
        if wanted != niced {
            set_thread_nice(if wanted { BACKGROUND_NICE } else { 0 });
            niced = wanted;
        }
        let queued = job.enqueued.elapsed();
        if job.reply.is_closed() {
            // The client went away while the request waited: skip the work.
            continue;
        }
        let started = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| session.run(&job.request)))
            .unwrap_or_else(|_| Err(InferError::Runtime("the runtime panicked; the request was not completed".to_owned())));
        let _ = job.reply.send(JobOutput { result, queued, inference: started.elapsed() });
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
