//! What a request's trace costs the thread that serves it, without the noise of a whole server:
//! the pipeline's trace calls (the server span continuing or starting a trace, its attributes,
//! the five stage spans, the end) timed over many iterations, for a request with no trace context
//! at a 1 % ratio (the common case: unsampled), and a sampled one (handed to the batch
//! processor, whose export runs on its own thread, not counted here). bench/tracing.sh measures
//! the whole server's CPU per request; this splits out the part tracing adds on the request path.
//!
//! Usage: cargo run --release -p modelship-server --example trace_cost [ITERATIONS]
//! (spans are exported to OTEL_EXPORTER_OTLP_ENDPOINT, default localhost:4317; with nothing
//! there, the batch processor drops them, which does not change the request path's cost).

use std::time::{Duration, Instant};

use http::HeaderMap;
use modelship_server::trace::{Protocol, TraceSettings, Tracing};
use opentelemetry::KeyValue;

fn per_request(tracing: &std::sync::Arc<Tracing>, headers: &HeaderMap, n: u32) -> Duration {
    let started = Instant::now();
    for i in 0..n {
        let received = Instant::now();
        let trace = tracing.request("v2_infer", headers, received);
        if trace.is_sampled() {
            trace.set(vec![KeyValue::new("modelship.request_id", format!("req-{i}")), KeyValue::new("modelship.endpoint", "v2_infer")]);
            trace.set(vec![KeyValue::new("modelship.model", "fraud"), KeyValue::new("modelship.version", "1"), KeyValue::new("modelship.role", "stable"), KeyValue::new("modelship.revision", 3i64)]);
        }
        let now = Instant::now();
        for stage in ["decode", "route", "queue", "infer", "encode"] {
            trace.child(stage, received, now, Vec::new());
        }
        std::hint::black_box(trace.trace_id());
    }
    started.elapsed() / n
}

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let _inside = runtime.enter();
    let unsampled = std::sync::Arc::new(Tracing::start(&TraceSettings { protocol: Protocol::Grpc, ratio: 0.01, service: "trace-cost".into() }).expect("a tracer"));
    let sampled = std::sync::Arc::new(Tracing::start(&TraceSettings { protocol: Protocol::Grpc, ratio: 1.0, service: "trace-cost".into() }).expect("a tracer"));
    let none = HeaderMap::new();
    let mut caller = HeaderMap::new();
    caller.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
    // Warm-up, then the measured runs.
    per_request(&unsampled, &none, n / 10);
    let a = per_request(&unsampled, &none, n);
    let b = per_request(&sampled, &none, n / 4);
    let c = per_request(&sampled, &caller, n / 4);
    println!("{{\"iterations\": {n}, \"ns_unsampled_new_trace\": {}, \"ns_sampled_new_trace\": {}, \"ns_sampled_caller_trace\": {}}}", a.as_nanos(), b.as_nanos(), c.as_nanos());
}
