//! The pool's tests: where runs happen (inline, gathered, workers), joining, the estimate.

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
            placement: Default::default(),
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
            placement: Default::default(),
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
            lock(&pool.gathering).push(Job { request: value(v as f32), enqueued: Instant::now(), reply, measured: true });
            answer
        })
        .collect();
    let runs: Vec<usize> = std::iter::from_fn(|| Some(pool.take_gathered().len()).filter(|n| *n > 0)).collect();
    assert_eq!(runs, [2, 2, 1], "runs of at most two rows, oldest first");
    drop(waiting);
}

#[tokio::test(flavor = "current_thread")]
#[allow(clippy::await_holding_lock, reason = "the test holds the only session while the request is gathered")]
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
    assert_eq!(lock(&pool.gathering).len(), 1, "gathered");
    drop(left);
    assert!(lock(&pool.gathering).is_empty(), "it left the list with its caller, not at the next request");
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
