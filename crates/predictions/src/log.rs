//! The writer: requests hand their predictions to a bounded queue and go on; a thread of its own
//! takes what is queued every 20 ms (so a request never wakes it: no system call per record) and
//! batches them into files, rolled by rows, size and age, one buffer per table and model. Writing never
//! blocks or fails a request: a full queue drops the record, and the drop is counted
//! (`modelship_prediction_log_dropped_total{reason}`) and logged. A store that fails is retried
//! with backoff while the queue fills; once it answers again, writing resumes where it stopped.
//! Rollback marks take their own unbounded queue and are never dropped. [`PredictionLog::close`]
//! writes what is buffered (the server calls it once drained).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{mpsc, oneshot};

use crate::record::{Feedback, Mark, Prediction, Table};
use crate::store::LogStore;
use crate::table::Value;

/// The share of each role's predictions kept, each in `0..=1`. Which requests are kept follows
/// from the request id, so a request kept as `stable` is kept as `shadow` too wherever both
/// rates allow it, and every replica keeps the same ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Answers of the stable version, and of versions a request named (`pinned`).
    pub stable: f64,
    /// Answers of a candidate (a canary) to live traffic.
    pub candidate: f64,
    pub shadow: f64,
}

impl Default for Sampling {
    /// Everything: a log that was turned on keeps every prediction unless told otherwise.
    fn default() -> Self {
        Sampling { stable: 1.0, candidate: 1.0, shadow: 1.0 }
    }
}

impl Sampling {
    pub fn rate(&self, role: &str) -> f64 {
        match role {
            "candidate" => self.candidate,
            "shadow" => self.shadow,
            _ => self.stable,
        }
    }

    /// Whether `request_id`'s prediction as `role` is kept.
    pub fn keeps(&self, role: &str, request_id: &str) -> bool {
        let rate = self.rate(role);
        if rate >= 1.0 {
            return true;
        }
        if rate <= 0.0 {
            return false;
        }
        // FNV-1a over the id: stable across processes and releases.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in request_id.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        ((h >> 11) as f64 / (1u64 << 53) as f64) < rate
    }
}

/// How the writer batches.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSettings {
    pub sampling: Sampling,
    /// Rates of their own for some models (`prediction_log.models.NAME`); the others take
    /// `sampling`.
    pub models: BTreeMap<String, Sampling>,
    /// Records waiting to be written; past it, new ones are dropped (and counted).
    pub queue: usize,
    /// A file is written once its buffer holds this many rows…
    pub roll_rows: usize,
    /// …or about this many bytes…
    pub roll_bytes: usize,
    /// …or its first row is this old.
    pub roll_interval: Duration,
    /// This replica's name, kept with each row and in file names.
    pub replica: Option<String>,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            sampling: Sampling::default(),
            models: BTreeMap::new(),
            queue: 65_536,
            roll_rows: 100_000,
            roll_bytes: 64 * 1024 * 1024,
            roll_interval: Duration::from_secs(60),
            replica: None,
        }
    }
}

/// The log's metrics.
#[derive(Clone)]
pub struct LogMetrics {
    rows: IntCounterVec,
    files: IntCounterVec,
    dropped: IntCounterVec,
    write_errors: IntCounter,
    queued: IntGauge,
}

impl LogMetrics {
    /// Registers the log's metrics in `registry` (once per registry).
    pub fn new(registry: &Registry) -> Result<LogMetrics, prometheus::Error> {
        let rows = IntCounterVec::new(Opts::new("modelship_prediction_log_rows_total", "Rows written to the prediction log, by table"), &["table"])?;
        let files = IntCounterVec::new(Opts::new("modelship_prediction_log_files_total", "Files written to the prediction log, by table"), &["table"])?;
        let dropped = IntCounterVec::new(
            Opts::new("modelship_prediction_log_dropped_total", "Records the prediction log did not keep, by reason (queue_full, shutdown, rejected)"),
            &["reason"],
        )?;
        let write_errors = IntCounter::new("modelship_prediction_log_write_errors_total", "Writes to the prediction log's store that failed (each retried)")?;
        let queued = IntGauge::new("modelship_prediction_log_queued", "Records waiting in the prediction log's queue")?;
        registry.register(Box::new(rows.clone()))?;
        registry.register(Box::new(files.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(write_errors.clone()))?;
        registry.register(Box::new(queued.clone()))?;
        Ok(LogMetrics { rows, files, dropped, write_errors, queued })
    }

    fn drop_one(&self, reason: &str) {
        self.dropped.with_label_values(&[reason]).inc();
    }
}

enum Entry {
    Prediction(Box<Prediction>),
    Feedback(Feedback),
}

/// How often the writer takes what the requests queued.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// The prediction log of one server.
pub struct PredictionLog {
    tx: crossbeam_channel::Sender<Entry>,
    /// Flush requests: the writer answers once everything queued before is written.
    flushes: mpsc::UnboundedSender<oneshot::Sender<()>>,
    marks: mpsc::UnboundedSender<(Mark, Option<oneshot::Sender<()>>)>,
    settings: LogSettings,
    metrics: LogMetrics,
    store: LogStore,
    /// Set when [`PredictionLog::close`] gave up waiting: the writer stops retrying.
    abandon: Arc<AtomicBool>,
    /// Set when [`PredictionLog::close`] began: what is sent after it is counted as dropped
    /// (`shutdown`), never queued and lost.
    closed: AtomicBool,
    /// Milliseconds since the epoch of the last warning about drops (one per 10 s at most).
    warned_ms: AtomicI64,
}

impl PredictionLog {
    /// Starts the writer on a thread of its own, with a runtime of its own: encoding a file is
    /// CPU work that must never hold a thread of the server's reactor (requests would wait).
    pub fn start(store: LogStore, settings: LogSettings, metrics: LogMetrics) -> Arc<PredictionLog> {
        let (tx, rx) = crossbeam_channel::bounded(settings.queue.max(1));
        let (flushes, flushes_rx) = mpsc::unbounded_channel();
        let (marks, marks_rx) = mpsc::unbounded_channel();
        let abandon = Arc::new(AtomicBool::new(false));
        let writer = Writer { store: store.clone(), settings: settings.clone(), metrics: metrics.clone(), abandon: Arc::clone(&abandon), buffers: BTreeMap::new() };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let spawned = match runtime {
            Ok(runtime) => std::thread::Builder::new().name("prediction-log".to_owned()).spawn(move || runtime.block_on(writer.run(rx, flushes_rx, marks_rx))).map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = spawned {
            // Without a writer the queue fills and every record is dropped and counted.
            tracing::error!(error = %e, "cannot start the prediction log's writer thread; predictions will be dropped");
        }
        Arc::new(PredictionLog { tx, flushes, marks, settings, metrics, store, abandon, closed: AtomicBool::new(false), warned_ms: AtomicI64::new(0) })
    }

    pub fn store(&self) -> &LogStore {
        &self.store
    }

    pub fn replica(&self) -> Option<&str> {
        self.settings.replica.as_deref()
    }

    /// Whether `model`'s answer to `request_id` as `role` is to be kept (decide before building
    /// it): the model's own rates when it has them, else the log's.
    pub fn keeps(&self, model: &str, role: &str, request_id: &str) -> bool {
        self.settings.models.get(model).unwrap_or(&self.settings.sampling).keeps(role, request_id)
    }

    /// Queues a prediction; drops it (counted) when the queue is full or the log closed.
    pub fn record(&self, prediction: Prediction) {
        self.send(Entry::Prediction(Box::new(prediction)));
    }

    /// Queues a label or a reward.
    pub fn feedback(&self, feedback: Feedback) {
        self.send(Entry::Feedback(feedback));
    }

    fn send(&self, entry: Entry) {
        if self.closed.load(Ordering::Relaxed) {
            self.metrics.drop_one("shutdown");
            return;
        }
        match self.tx.try_send(entry) {
            Ok(()) => self.metrics.queued.inc(),
            Err(e) => {
                let reason = match e {
                    crossbeam_channel::TrySendError::Full(_) => "queue_full",
                    crossbeam_channel::TrySendError::Disconnected(_) => "shutdown",
                };
                self.metrics.drop_one(reason);
                let now = now_ms();
                let last = self.warned_ms.load(Ordering::Relaxed);
                if now - last >= 10_000 && self.warned_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                    tracing::warn!(reason, store = %self.store.location(), "the prediction log is dropping records (modelship_prediction_log_dropped_total counts them)");
                }
            }
        }
    }

    /// Queues a rollback's mark at once (never dropped: retried until the store takes it, and
    /// written by a close that follows); the receiver resolves once it is written.
    pub fn mark(&self, mark: Mark) -> oneshot::Receiver<()> {
        let (done, written) = oneshot::channel();
        let _ = self.marks.send((mark, Some(done)));
        written
    }

    /// Writes everything queued and buffered; waits at most `within`. What could not be written
    /// by then is dropped and counted (`shutdown`).
    pub async fn close(&self, within: Duration) {
        self.closed.store(true, Ordering::Relaxed);
        let (done, flushed) = oneshot::channel();
        if self.flushes.send(done).is_err() {
            return;
        }
        if tokio::time::timeout(within, flushed).await.is_err() {
            self.abandon.store(true, Ordering::Relaxed);
            tracing::warn!(store = %self.store.location(), "the prediction log could not write everything before the server stopped");
        }
    }

    /// Writes everything queued and buffered so far (for tests and `flush` requests).
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.flushes.send(done).is_ok() {
            let _ = flushed.await;
        }
    }
}

/// Rows waiting to become one file.
struct Buffer {
    rows: Vec<Vec<Value>>,
    bytes: usize,
    /// The first row's time: the file's day partition.
    time: i64,
    since: Instant,
}

struct Writer {
    store: LogStore,
    settings: LogSettings,
    metrics: LogMetrics,
    abandon: Arc<AtomicBool>,
    buffers: BTreeMap<(Table, String), Buffer>,
}

impl Writer {
    async fn run(
        mut self,
        rx: crossbeam_channel::Receiver<Entry>,
        mut flushes: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
        mut marks: mpsc::UnboundedReceiver<(Mark, Option<oneshot::Sender<()>>)>,
    ) {
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.take(&rx).await;
                    let roll = self.settings.roll_interval;
                    self.write_all(|b| b.since.elapsed() >= roll).await;
                }
                flush = flushes.recv() => {
                    self.take(&rx).await;
                    while let Ok((mark, done)) = marks.try_recv() {
                        self.write_mark(&mark, done).await;
                    }
                    self.write_all(|_| true).await;
                    match flush {
                        Some(done) => {
                            let _ = done.send(());
                        }
                        // The log is gone: what it held is written; the thread ends.
                        None => return,
                    }
                }
                Some((mark, done)) = marks.recv() => self.write_mark(&mark, done).await,
            }
        }
    }

    /// Takes what is queued now into the buffers (writing those that fill): at most what was
    /// there when it began, so that traffic as fast as the writer never keeps it here.
    async fn take(&mut self, rx: &crossbeam_channel::Receiver<Entry>) {
        for _ in 0..rx.len() {
            let Ok(entry) = rx.try_recv() else { break };
            self.metrics.queued.dec();
            match entry {
                Entry::Prediction(p) => {
                    let (model, time, size) = (p.model.clone(), p.time, p.size());
                    self.add(Table::Predictions, model, time, p.into_row(), size).await;
                }
                Entry::Feedback(f) => self.add(Table::Feedback, String::new(), f.time, f.row(), 64 + f.request_id.len()).await,
            }
        }
    }

    async fn add(&mut self, table: Table, model: String, time: i64, row: Vec<Value>, size: usize) {
        let key = (table, model);
        // A file holds one UTC day (its partition) and rows at most `roll_interval` younger than
        // its name says (readers skip files by it): a row past either starts a new file.
        let span = i64::try_from(self.settings.roll_interval.as_millis()).unwrap_or(i64::MAX);
        if let Some(open) = self.buffers.get(&key)
            && (open.time.div_euclid(86_400_000) != time.div_euclid(86_400_000) || time - open.time > span)
            && let Some(open) = self.buffers.remove(&key)
        {
            self.write(key.0, &key.1, open).await;
        }
        let buffer = self.buffers.entry(key.clone()).or_insert_with(|| Buffer { rows: Vec::new(), bytes: 0, time, since: Instant::now() });
        buffer.rows.push(row);
        buffer.bytes += size;
        if buffer.rows.len() >= self.settings.roll_rows || buffer.bytes >= self.settings.roll_bytes {
            if let Some(buffer) = self.buffers.remove(&key) {
                self.write(key.0, &key.1, buffer).await;
            }
        }
    }

    async fn write_all(&mut self, due: impl Fn(&Buffer) -> bool) {
        let keys: Vec<(Table, String)> = self.buffers.iter().filter(|(_, b)| due(b)).map(|(k, _)| k.clone()).collect();
        for key in keys {
            if let Some(buffer) = self.buffers.remove(&key) {
                self.write(key.0, &key.1, buffer).await;
            }
        }
    }

    /// Writes one file, retrying with backoff (from 100 ms to 5 s) until the store takes it or
    /// the log is abandoned at shutdown.
    async fn write(&self, table: Table, model: &str, buffer: Buffer) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let partition = (table == Table::Predictions).then_some(model);
            match self.store.append(table, partition, buffer.time, &buffer.rows, self.settings.replica.as_deref()).await {
                Ok(_) => {
                    self.metrics.rows.with_label_values(&[table.dir()]).inc_by(buffer.rows.len() as u64);
                    self.metrics.files.with_label_values(&[table.dir()]).inc();
                    return;
                }
                Err(e) => {
                    self.metrics.write_errors.inc();
                    if matches!(e, crate::StoreError::Rejected(_)) {
                        self.metrics.dropped.with_label_values(&["rejected"]).inc_by(buffer.rows.len() as u64);
                        tracing::error!(store = %self.store.location(), table = table.dir(), model, rows = buffer.rows.len(), error = %e, "the prediction log's store refused these rows; they are dropped");
                        return;
                    }
                    if self.abandon.load(Ordering::Relaxed) {
                        self.metrics.dropped.with_label_values(&["shutdown"]).inc_by(buffer.rows.len() as u64);
                        return;
                    }
                    tracing::warn!(store = %self.store.location(), table = table.dir(), model, rows = buffer.rows.len(), error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot write to the prediction log; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn write_mark(&self, mark: &Mark, done: Option<oneshot::Sender<()>>) {
        let mut backoff = Duration::from_millis(100);
        while let Err(e) = self.store.put_mark(mark).await {
            self.metrics.write_errors.inc();
            if matches!(e, crate::StoreError::Rejected(_)) {
                tracing::error!(store = %self.store.location(), model = %mark.model, version = %mark.version, error = %e, "the prediction log's store refused a rollback's mark");
                return;
            }
            if self.abandon.load(Ordering::Relaxed) {
                tracing::error!(store = %self.store.location(), model = %mark.model, version = %mark.version, error = %e, "a rollback's mark could not be written before the server stopped");
                return;
            }
            tracing::warn!(store = %self.store.location(), model = %mark.model, error = %e, "cannot write a rollback's mark to the prediction log; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        self.metrics.rows.with_label_values(&[Table::Rollbacks.dir()]).inc();
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Prediction {
        fn with_id(self, id: &str) -> Prediction {
            Prediction { request_id: id.to_owned(), ..self }
        }
    }

    fn prediction(id: usize, model: &str) -> Prediction {
        Prediction { inputs: Some("[]".into()), outputs: Some("[]".into()), score: Some(0.5), ..crate::record::sample(&format!("req-{id}"), model, now_ms()) }
    }

    #[test]
    fn sampling_keeps_its_share_by_request_id_and_the_same_ids_every_time() {
        let s = Sampling { stable: 0.1, candidate: 1.0, shadow: 0.0 };
        let kept = (0..100_000).filter(|i| s.keeps("stable", &format!("id-{i}"))).count();
        assert!((9_000..11_000).contains(&kept), "{kept} of 100000 at 10 %");
        assert!((0..1000).all(|i| s.keeps("candidate", &format!("id-{i}")) && !s.keeps("shadow", &format!("id-{i}"))));
        assert!((0..1000).all(|i| s.keeps("stable", &format!("id-{i}")) == s.keeps("pinned", &format!("id-{i}"))));
    }

    #[tokio::test]
    async fn files_roll_by_rows_and_everything_is_written_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path().to_str().unwrap()).unwrap();
        let registry = Registry::new();
        let settings = LogSettings { roll_rows: 100, roll_interval: Duration::from_secs(3600), ..LogSettings::default() };
        let log = PredictionLog::start(store.clone(), settings, LogMetrics::new(&registry).unwrap());
        for i in 0..250 {
            log.record(prediction(i, "a"));
        }
        log.record(prediction(0, "b"));
        log.close(Duration::from_secs(30)).await;
        let LogStore::Files(files) = &store else { unreachable!("a directory") };
        let files = files.predictions(None).await.unwrap();
        let sizes: Vec<usize> = files.iter().map(|f| f.rows.len()).collect();
        assert_eq!(sizes, [100, 100, 50, 1]);
        let ids: std::collections::BTreeSet<String> = files.iter().flat_map(|f| f.rows.iter().map(|p| p.request_id.clone())).collect();
        assert_eq!(ids.len(), 250);
    }

    #[tokio::test]
    async fn every_record_is_kept_or_counted_as_dropped_and_sending_never_waits() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path().to_str().unwrap()).unwrap();
        let registry = Registry::new();
        let metrics = LogMetrics::new(&registry).unwrap();
        // A queue of 16 against a writer on its own thread: how many it takes in time depends on
        // the machine; that each is written or counted, and that `record` never waits, does not.
        let log = PredictionLog::start(store.clone(), LogSettings { queue: 16, ..LogSettings::default() }, metrics.clone());
        for i in 0..20_000 {
            log.record(prediction(i, "a"));
        }
        log.close(Duration::from_secs(60)).await;
        let kept = store.predictions(None).await.unwrap().len() as u64;
        let dropped = metrics.dropped.with_label_values(&["queue_full"]).get();
        assert_eq!(kept + dropped, 20_000, "kept {kept}, dropped {dropped}");
        assert_eq!(metrics.rows.with_label_values(&["predictions"]).get(), kept);
        assert_eq!(metrics.queued.get(), 0);
    }

    #[tokio::test]
    async fn a_file_holds_one_utc_day_and_what_comes_after_close_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path().to_str().unwrap()).unwrap();
        let registry = Registry::new();
        let metrics = LogMetrics::new(&registry).unwrap();
        let log = PredictionLog::start(store.clone(), LogSettings { roll_interval: Duration::from_secs(3600), ..LogSettings::default() }, metrics.clone());
        let midnight = 1_796_601_600_000;
        for (id, time) in [("before", midnight - 1), ("after", midnight), ("later", midnight + 5)] {
            log.record(Prediction { time, ..prediction(0, "a") }.with_id(id));
        }
        log.close(Duration::from_secs(30)).await;
        log.record(prediction(9, "a"));
        assert_eq!(metrics.dropped.with_label_values(&["shutdown"]).get(), 1, "sent after close: counted, not queued");
        let LogStore::Files(files) = &store else { unreachable!("a directory") };
        let days: Vec<(String, Vec<String>)> = files
            .predictions(None)
            .await
            .unwrap()
            .into_iter()
            .map(|f| (f.key.split('/').nth(2).unwrap().to_owned(), f.rows.into_iter().map(|p| p.request_id).collect()))
            .collect();
        assert_eq!(days, [("date=2026-12-06".to_owned(), vec!["before".to_owned()]), ("date=2026-12-07".to_owned(), vec!["after".to_owned(), "later".to_owned()])]);
    }

    #[tokio::test]
    async fn a_mark_is_written_once_however_often_it_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path().to_str().unwrap()).unwrap();
        let log = PredictionLog::start(store.clone(), LogSettings::default(), LogMetrics::new(&Registry::new()).unwrap());
        let mark = Mark {
            model: "m".into(),
            version: "2".into(),
            from_revision: 2,
            to_revision: 4,
            from_time: 1,
            time: 2,
            actor: "rollout".into(),
            reason: "errors".into(),
            replica: None,
        };
        log.mark(mark.clone()).await.unwrap();
        log.mark(mark.clone()).await.unwrap();
        assert_eq!(store.marks(Some("m")).await.unwrap(), vec![mark]);
    }
}
