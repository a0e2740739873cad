//! Rows per second the prediction log writes to a store: `ROWS` predictions of the fraud model
//! (30 inputs and one output as V2 JSON, as the server keeps them) handed to the writer as fast
//! as it takes them, timed until all are written (`close`).
//!
//! ```text
//! cargo run --release -p modelship-predictions --features postgres --example throughput -- STORE [ROWS]
//! ```
//! STORE: a directory, s3://BUCKET/PREFIX (with `--features s3`) or postgres://...

use std::time::{Duration, Instant};

use modelship_predictions::{LogMetrics, LogSettings, LogStore, Prediction, PredictionLog, now_ms};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("usage: throughput STORE [ROWS]");
    let rows: usize = args.next().map_or(200_000, |r| r.parse().expect("ROWS is a number"));
    let store = LogStore::open(&url).unwrap_or_else(|e| panic!("{e}"));
    let registry = prometheus::Registry::new();
    // A queue that holds every row: this measures the store, not the drops.
    let settings = LogSettings { queue: rows + 1, ..LogSettings::default() };
    let log = PredictionLog::start(store.clone(), settings, LogMetrics::new(&registry).unwrap());
    let data: Vec<String> = (0..30).map(|i| format!("{}", ((i % 17) as f32 - 8.0) / 4.0)).collect();
    let inputs = format!(r#"[{{"name":"input","datatype":"FP32","shape":[1,30],"data":[{}]}}]"#, data.join(","));
    let started = Instant::now();
    for i in 0..rows {
        log.record(Prediction {
            request_id: format!("bench-{i}"),
            time: now_ms(),
            model: "fraud".into(),
            version: "1".into(),
            revision: Some(1),
            role: "stable".into(),
            status: 200,
            latency_ms: 0.4,
            inputs: Some(inputs.clone()),
            entities: None,
            outputs: Some(r#"[{"name":"probabilities","datatype":"FP32","shape":[1,2],"data":[0.93,0.07]}]"#.into()),
            score: Some(0.07),
            error: None,
            served_version: None,
            agreed: None,
            replica: Some("bench".into()),
        });
    }
    let queued = started.elapsed();
    log.close(Duration::from_secs(600)).await;
    let seconds = started.elapsed().as_secs_f64();
    let mut text = String::new();
    prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text).unwrap();
    let dropped: f64 = text.lines().filter(|l| l.starts_with("modelship_prediction_log_dropped_total")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
    println!(
        "{{\"store\": \"{}\", \"rows\": {rows}, \"seconds\": {seconds:.3}, \"rows_per_second\": {:.0}, \"queue_ns_per_row\": {:.0}, \"dropped\": {dropped}}}",
        store.location(),
        rows as f64 / seconds,
        queued.as_nanos() as f64 / rows as f64
    );
}
