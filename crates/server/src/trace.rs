//! OpenTelemetry traces of inference requests, off unless asked for.
//!
//! Each request gets a server span that continues the caller's W3C trace context
//! (`traceparent`, `tracestate`, read from REST headers and gRPC metadata alike), with child
//! spans for where its time went: `decode`, `route`, `enrich` (the feature store's round trip),
//! `queue` (waiting for a worker), `infer` (the model) and `encode`. They carry the model,
//! version, role, routing revision and request id. A shadow copy runs after the answer: its span
//! is in the request's trace and linked to the request's span. Spans are made with the times the pipeline already took, so
//! nothing on the request path waits for them; the SDK's batch processor exports them from a
//! thread of its own, over OTLP (gRPC or HTTP/protobuf), configured by the standard `OTEL_*`
//! environment variables; sampling is parent-based with a ratio for new traces.
//!
//! With tracing off, [`Tracing`] is absent and a request costs one branch. With it on, an
//! unsampled request still gets a trace id (for its log line) and no span is recorded.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Link, Span as _, SpanBuilder, SpanContext, SpanKind, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};

/// How traces are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// `grpc` or `http/protobuf` (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`; default gRPC).
    pub protocol: Protocol,
    /// The share of new traces (no sampled parent) recorded, 0 to 1.
    pub ratio: f64,
    /// `service.name` when `OTEL_SERVICE_NAME` does not give one.
    pub service: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }
}

/// The tracer, while tracing is on.
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Tracing {
    /// Starts the exporter (inside a Tokio runtime: the gRPC channel runs on it) and the batch
    /// processor's thread. The endpoint, headers, timeout and batching come from `OTEL_*`.
    pub fn start(settings: &TraceSettings) -> Result<Tracing, String> {
        use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
        let exporter = match settings.protocol {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder().with_tonic().build(),
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(UreqClient::new(Duration::from_secs(10)))
                .build(),
        }
        .map_err(|e| format!("cannot set up the OTLP trace exporter: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        // OTEL_SERVICE_NAME (and OTEL_RESOURCE_ATTRIBUTES) win when set.
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() && !std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name=")) {
            resource = resource.with_service_name(settings.service.clone());
        }
        let resource = resource.with_attributes([KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))]).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.ratio))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("modelship");
        Ok(Tracing { provider, tracer, propagator: TraceContextPropagator::new() })
    }

    /// The server span of a request that arrived at `received`, continuing the caller's trace.
    /// Dropping the [`RequestTrace`] ends it.
    pub fn request(self: &Arc<Self>, name: &'static str, headers: &HeaderMap, received: Instant) -> RequestTrace {
        let parent = self.propagator.extract(&opentelemetry_http::HeaderExtractor(headers));
        let clock = Clock::new();
        let span = self.span(name, SpanKind::Server, clock.at(received), Vec::new(), Vec::new(), &parent);
        let context = parent.with_span(span);
        let span_context = context.span().span_context().clone();
        RequestTrace { tracing: Arc::clone(self), context, clock, trace_id: span_context.trace_id(), sampled: span_context.is_sampled() }
    }

    /// Flushes what is batched and stops the exporter (blocking: call off the reactor).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "cannot flush the last spans");
        }
        let _ = self.provider.shutdown_with_timeout(Duration::from_secs(5));
    }

    /// A span of `kind` under `parent`, started at `start`.
    fn span(&self, name: &'static str, kind: SpanKind, start: SystemTime, attributes: Vec<KeyValue>, links: Vec<Link>, parent: &Context) -> opentelemetry_sdk::trace::Span {
        SpanBuilder::from_name(name).with_kind(kind).with_start_time(start).with_attributes(attributes).with_links(links).start_with_context(&self.tracer, parent)
    }
}

/// SystemTime for the Instants the pipeline takes.
#[derive(Clone, Copy)]
struct Clock {
    system: SystemTime,
    instant: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock { system: SystemTime::now(), instant: Instant::now() }
    }

    fn at(&self, t: Instant) -> SystemTime {
        match t.checked_duration_since(self.instant) {
            Some(after) => self.system + after,
            None => self.system - self.instant.duration_since(t),
        }
    }
}

/// One request's span and its children.
pub struct RequestTrace {
    tracing: Arc<Tracing>,
    context: Context,
    clock: Clock,
    trace_id: opentelemetry::trace::TraceId,
    /// Whether the span records: read once, as every stage asks.
    sampled: bool,
}

impl RequestTrace {
    /// The trace id (shown as 32 hex digits), whether sampled or not: the log line carries it.
    pub fn trace_id(&self) -> opentelemetry::trace::TraceId {
        self.trace_id
    }

    pub fn is_sampled(&self) -> bool {
        self.sampled
    }

    /// What a shadow copy of this request needs for its span, when the request is sampled.
    pub fn shadow(&self) -> Option<ShadowTrace> {
        self.sampled.then(|| ShadowTrace { tracing: Arc::clone(&self.tracing), request: self.context.span().span_context().clone() })
    }

    /// A child span from `start` to `end`, with `attributes`.
    pub fn child(&self, name: &'static str, start: Instant, end: Instant, attributes: Vec<KeyValue>) {
        if self.sampled {
            let mut span = self.tracing.span(name, SpanKind::Internal, self.clock.at(start), attributes, Vec::new(), &self.context);
            span.end_with_timestamp(self.clock.at(end));
        }
    }

    /// A child span with client spans of its own under it: `(name, start, end, attributes)` each.
    pub fn child_with(&self, name: &'static str, start: Instant, end: Instant, attributes: Vec<KeyValue>, children: Vec<(&'static str, Instant, Instant, Vec<KeyValue>)>) {
        if !self.sampled {
            return;
        }
        let span = self.tracing.span(name, SpanKind::Internal, self.clock.at(start), attributes, Vec::new(), &self.context);
        let parent = self.context.with_span(span);
        for (child, from, to, attributes) in children {
            let mut span = self.tracing.span(child, SpanKind::Client, self.clock.at(from), attributes, Vec::new(), &parent);
            span.end_with_timestamp(self.clock.at(to));
        }
        parent.span().end_with_timestamp(self.clock.at(end));
    }

    /// The encoding of the answer, from `started` to now (the adapters call it).
    pub fn encoded(&self, started: Instant) {
        self.child("encode", started, Instant::now(), Vec::new());
    }

    /// Sets attributes on the request span.
    pub fn set(&self, attributes: Vec<KeyValue>) {
        if self.is_sampled() {
            self.context.span().set_attributes(attributes);
        }
    }

    /// Marks the request span failed, with the error's stable code.
    pub fn fail(&self, code: &'static str, message: &str) {
        if self.is_sampled() {
            let span = self.context.span();
            span.set_attribute(KeyValue::new("error.type", code));
            span.set_status(opentelemetry::trace::Status::error(message.to_owned()));
        }
    }

    /// Ends the request span now (an unsampled one records nothing: there is nothing to end).
    /// Dropping the trace does it too.
    pub fn end(&self) {
        if self.sampled {
            self.context.span().end_with_timestamp(self.clock.at(Instant::now()));
        }
    }
}

impl Drop for RequestTrace {
    fn drop(&mut self) {
        self.end();
    }
}

/// A sampled request's tracer and span, for its shadow copy's span.
pub struct ShadowTrace {
    tracing: Arc<Tracing>,
    request: SpanContext,
}

impl ShadowTrace {
    /// The shadow copy's span, from `start` to `end`: in the request's trace (so the parent-based
    /// sampler keeps it whenever it kept the request), started after the answer, linked to the
    /// request's span.
    pub fn record(&self, start: Instant, end: Instant, attributes: Vec<KeyValue>) {
        let clock = Clock::new();
        let parent = Context::new().with_remote_span_context(self.request.clone());
        let mut span = self.tracing.span("shadow", SpanKind::Internal, clock.at(start), attributes, vec![Link::with_context(self.request.clone())], &parent);
        span.end_with_timestamp(clock.at(end));
    }
}

/// OTLP over HTTP through the blocking client the server already has (the batch processor
/// exports from its own thread, where no async runtime runs).
#[derive(Debug)]
struct UreqClient(ureq::Agent);

impl UreqClient {
    fn new(timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build();
        UreqClient(ureq::Agent::new_with_config(config))
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for UreqClient {
    async fn send_bytes(&self, request: http::Request<bytes::Bytes>) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut response = self.0.run(http::Request::from_parts(parts, body.to_vec()))?;
        let bytes = response.body_mut().with_config().limit(4 << 20).read_to_vec()?;
        let (parts, _) = response.into_parts();
        Ok(http::Response::from_parts(parts, bytes::Bytes::from(bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_by_their_otel_names() {
        assert_eq!(Protocol::parse("grpc"), Some(Protocol::Grpc));
        assert_eq!(Protocol::parse("http/protobuf"), Some(Protocol::HttpProtobuf));
        assert_eq!(Protocol::parse("http/json"), None);
    }

    #[test]
    fn instants_map_to_wall_clock_times_both_ways() {
        let clock = Clock::new();
        let later = clock.instant + Duration::from_millis(250);
        assert_eq!(clock.at(later).duration_since(clock.system).unwrap(), Duration::from_millis(250));
        if let Some(earlier) = clock.instant.checked_sub(Duration::from_millis(40)) {
            assert_eq!(clock.system.duration_since(clock.at(earlier)).unwrap(), Duration::from_millis(40));
        }
    }
}
