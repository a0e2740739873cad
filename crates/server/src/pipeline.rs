//! The one inference pipeline. Every entry point (REST V2, `/v1/predict`, gRPC, and anything that
//! calls it without HTTP) decodes its wire format into a [`Request`], hands it to [`run`], and
//! encodes the [`Answer`]. Only this module routes, enriches, infers, scores, mirrors and records.
//!
//! ```text
//! decode (protocol) → Request → route → enrich → infer → score → mirror → record → Answer → encode
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::{HeaderMap, HeaderName, StatusCode};
use modelship_inference::{InferRequest, Tensor};
use modelship_router::{Role, RouteInput, StickyKey};
use opentelemetry::KeyValue;
use prometheus::IntGauge;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::model::{LoadedModel, Routed, Served};
use crate::state::AppState;

/// Sends the request to the candidate (`true` or `1`), when there is one.
pub const CANARY_HEADER: &str = "x-canary";
/// Pins a request to a loaded version.
pub const PIN_HEADER: &str = "x-model-version";
/// Names the routing revision a response was routed under.
pub const REVISION_HEADER: &str = "x-modelship-revision";

// The same names as `HeaderName`s: looked up and set on every request, and a `&str` name is
// parsed and checked each time it is used.
pub(crate) const CANARY: HeaderName = HeaderName::from_static(CANARY_HEADER);
pub(crate) const PIN: HeaderName = HeaderName::from_static(PIN_HEADER);
pub(crate) const REVISION: HeaderName = HeaderName::from_static(REVISION_HEADER);

pub use crate::metrics::Endpoint;

/// A decoded request, whatever protocol it came by.
#[derive(Debug)]
pub struct Request {
    /// The model asked for; `None` means the server's only model (`/v1/predict`).
    pub model: Option<String>,
    /// A version named by the request itself (URL or message), which bypasses the routing table.
    pub version: Option<String>,
    /// Request parameters, where a sticky routing key may be (`parameters.FIELD`).
    pub parameters: Map<String, Value>,
    pub inputs: Inputs,
    /// Entities whose features the feature store adds as an input.
    pub entities: Option<Vec<Map<String, Value>>>,
}

/// The request's tensors, or what becomes them once the routed model's signature is known.
#[derive(Debug)]
pub enum Inputs {
    Tensors(InferRequest),
    /// `/v1/predict` feature rows for the model's single `[N, F]` input.
    Rows(Box<RawValue>),
    /// `/v1/predict` by entities alone: the prediction output, inputs from the feature store.
    Prediction,
}

/// What the pipeline did with one request.
pub struct Answer {
    /// The request's trace, when tracing is on: the adapter adds its encoding and ends it.
    pub trace: Option<crate::trace::RequestTrace>,
    /// The caller's `x-request-id` when sane, else a new one.
    pub request_id: String,
    /// The version that answered (or was about to), once routed.
    pub model: Option<Arc<LoadedModel>>,
    /// The routing revision the request was routed under.
    pub revision: Option<u64>,
    pub result: Result<Outcome, ApiError>,
}

/// A successful inference.
#[derive(Debug)]
pub struct Outcome {
    /// The request's own id (V2 `id`), echoed in the response.
    pub id: Option<String>,
    pub outputs: Vec<Tensor>,
    /// Entities that were answered with default features, when any were.
    pub feature_defaults: Option<Value>,
}

/// Runs one request through the pipeline. `decoded` is what the entry point made of the wire
/// (its error is recorded like any other); `received` is when the request arrived, so decoding
/// counts in the latency.
pub async fn run(state: &AppState, endpoint: Endpoint, headers: &HeaderMap, received: Instant, decoded: Result<Request, ApiError>) -> Answer {
    let mut call = Call::start(state, endpoint, headers, received);
    let routing = Instant::now();
    call.span("decode", received, routing, Vec::new());
    let request = match decoded {
        Ok(request) => request,
        Err(e) => return call.fail(e),
    };
    let routed = match route(state, &request, headers, None) {
        // Unloaded to save memory: loaded again (the wait bounded), then routed on what loaded.
        Err(ApiError::Unloaded(name)) => match state.residency.resident(&name).await {
            Ok(served) => route(state, &request, headers, Some(served)),
            Err(e) => Err(e),
        },
        routed => routed,
    };
    let (routed, revision) = match routed {
        Ok(routed) => routed,
        Err(e) => return call.fail(e),
    };
    if let Some(t) = call.sampled() {
        let m = &routed.model;
        let attributes = vec![
            KeyValue::new("modelship.model", m.name.clone()),
            KeyValue::new("modelship.version", m.version.clone()),
            KeyValue::new("modelship.role", routed.role.as_str()),
            KeyValue::new("modelship.revision", i64::try_from(revision).unwrap_or(i64::MAX)),
        ];
        t.set(attributes.clone());
        t.child("route", routing, Instant::now(), attributes);
    }
    let result = infer(state, &routed, revision, request, &mut call).await;
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status_and_code().0,
    };
    call.record(Some(&routed.model), Some(routed.role), status, result.as_ref().err());
    call.keep(&routed, revision, status, &result);
    Answer { trace: call.trace.take(), request_id: call.request_id, model: Some(routed.model), revision: Some(revision), result }
}

/// Where the request goes: the version it names, else the routing table (pin header, canary
/// header, sticky key from a header or a parameter, weights), and perhaps a shadow copy. On
/// `served` when given (the model as a load on demand left it), else on the table's.
fn route(state: &AppState, request: &Request, headers: &HeaderMap, served: Option<Arc<Served>>) -> Result<(Routed, u64), ApiError> {
    let name = match &request.model {
        Some(name) => std::borrow::Cow::Borrowed(name.as_str()),
        None => std::borrow::Cow::Owned(state.models.single_name()?),
    };
    let served = match served {
        Some(served) => served,
        None => state.models.served(&name)?,
    };
    if let Some(version) = &request.version {
        return Ok((Routed { model: served.version(&name, version)?, role: Role::Pinned, shadow: None }, served.revision));
    }
    let header = |h: &HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let canary = header(&CANARY).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let sticky: Option<std::borrow::Cow<'_, [u8]>> = match &served.table.sticky {
        Some(StickyKey::Header(h)) => headers.get(h.as_str()).map(|v| v.as_bytes().into()),
        Some(StickyKey::Field(f)) => request.parameters.get(f.as_str()).map(|v| match v {
            Value::String(s) => s.as_bytes().into(),
            other => other.to_string().into_bytes().into(),
        }),
        None => None,
    };
    let input = RouteInput {
        canary,
        pin: header(&PIN),
        sticky: sticky.as_deref(),
        nonce: state.nonces.fetch_add(1, Ordering::Relaxed),
    };
    Ok((served.route(&name, &input)?, served.revision))
}

/// The middle of the pipeline, once routed: tensors for the model, enrichment, inference, the
/// score for rollout analysis, the shadow copy.
async fn infer(state: &AppState, routed: &Routed, revision: u64, request: Request, call: &mut Call<'_>) -> Result<Outcome, ApiError> {
    let model = &routed.model;
    let signature = &model.info.signature;
    let mut infer_request = match request.inputs {
        Inputs::Tensors(r) => r,
        Inputs::Rows(rows) => modelship_protocol::v1::rows_request(&rows, signature)?,
        Inputs::Prediction => modelship_protocol::v1::entity_request(signature),
    };
    let feature_defaults = match &request.entities {
        Some(entities) => {
            let started = Instant::now();
            let (defaults, cached, trips) = enrich(state, &model.name, &mut infer_request, entities).await?;
            if let Some(t) = call.sampled() {
                let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
                // The feature store's round trips, as client spans of the enrichment.
                let children = trips
                    .iter()
                    .map(|r| ("feature_store", r.started, r.ended, vec![KeyValue::new("db.system", "redis"), KeyValue::new("modelship.keys", count(r.keys)), KeyValue::new("modelship.outcome", r.outcome)]))
                    .collect();
                let attributes = vec![KeyValue::new("modelship.entities", count(entities.len())), KeyValue::new("modelship.cached", count(cached))];
                t.child_with("enrich", started, Instant::now(), attributes, children);
            }
            defaults
        }
        None => None,
    };
    check_size(state, &infer_request)?;
    let id = infer_request.id.take();
    // Kept as data: the inputs as the model gets them (features added), before they are moved.
    if let Some(log) = state.predictions.get().filter(|log| log.keeps(&model.name, routed.role.as_str(), &call.request_id)) {
        let entities = request.entities.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default());
        call.kept = Some(Kept { log: Arc::clone(log), inputs: modelship_protocol::v2::tensors_json(&infer_request.inputs), entities, outputs: None });
    }
    let mirror = routed.shadow.as_ref().filter(|s| state.shadows.admit(&state.metrics, s)).map(|_| infer_request.clone());
    let outputs = match call.sampled() {
        Some(t) => {
            let mut timing = crate::model::Timing::default();
            let outputs = model.infer_timed(infer_request, &mut timing).await;
            if let Some(submitted) = timing.submitted {
                let ran = submitted + timing.queued;
                t.child("queue", submitted, ran, Vec::new());
                t.child("infer", ran, ran + timing.inference, vec![KeyValue::new("modelship.version", model.version.clone())]);
            }
            outputs?
        }
        None => model.infer(infer_request).await?,
    };
    // Every answer's score: the score histogram (drift), observations, the prediction log.
    call.score = crate::observe::score_of(model, &outputs);
    if let Some(kept) = &mut call.kept {
        kept.outputs = Some(modelship_protocol::v2::tensors_json(&outputs));
    }
    if let (Some(shadow), Some(copy)) = (&routed.shadow, mirror) {
        let link = call.trace.as_ref().and_then(crate::trace::RequestTrace::shadow).map(|t| (t, call.request_id.clone()));
        let log = state.predictions.get().filter(|log| log.keeps(&model.name, Role::Shadow.as_str(), &call.request_id)).map(|log| crate::shadow::ShadowLog {
            log: Arc::clone(log),
            request_id: call.request_id.clone(),
            revision,
            served_version: model.version.clone(),
        });
        state.shadows.mirror(&state.metrics, Arc::clone(shadow), copy, outputs.clone(), log, link);
    }
    Ok(Outcome { id, outputs, feature_defaults })
}

/// The request-size limits beyond the body's: elements over all inputs, and rows.
fn check_size(state: &AppState, request: &InferRequest) -> Result<(), ApiError> {
    let limits = &state.limits;
    let elements: usize = request.inputs.iter().map(|t| t.data().len()).sum();
    if elements > limits.max_tensor_elements {
        return Err(ApiError::TooLarge { what: "tensor elements", got: elements, limit: limits.max_tensor_elements, setting: "server.max_tensor_elements" });
    }
    if let Some(rows) = request.inputs.iter().filter_map(|t| t.shape().first().copied()).max()
        && rows > limits.max_rows
    {
        return Err(ApiError::TooLarge { what: "rows", got: rows, limit: limits.max_rows, setting: "server.max_rows" });
    }
    Ok(())
}

/// Adds to `request` the model input the feature store builds from `entities`; returns the
/// entities that got defaults (as a response value), when any did, how many entities the cache
/// answered, and the round trips to the store (for the trace).
async fn enrich(
    state: &AppState,
    model: &str,
    request: &mut InferRequest,
    entities: &[Map<String, Value>],
) -> Result<(Option<Value>, usize, Vec<modelship_features::RoundTrip>), ApiError> {
    // Each spec was checked against its own model's signature.
    let service = state.features.get().and_then(|f| f.models.get(model)).ok_or(ApiError::NoFeatureStore)?;
    let enriched = service.enrich(entities).await?;
    if request.inputs.iter().any(|t| t.name() == enriched.tensor.name()) {
        return Err(ApiError::Invalid(format!(
            "input '{}' is both given and built from the request's entities; send one or the other",
            enriched.tensor.name()
        )));
    }
    request.inputs.push(enriched.tensor);
    let defaults = (!enriched.defaulted.is_empty()).then(|| serde_json::json!(enriched.defaulted));
    Ok((defaults, enriched.cached, enriched.round_trips))
}

/// One request from arrival to answer: request id, in-flight gauge, metrics, observations and
/// the log line.
struct Call<'a> {
    state: &'a AppState,
    endpoint: Endpoint,
    request_id: String,
    started: Instant,
    _in_flight: InFlight,
    /// The model's score for this request (first row), for rollout analysis and the log.
    score: Option<f64>,
    /// What the prediction log keeps of this request, when it keeps it.
    kept: Option<Kept>,
    /// The request's trace, when tracing is on (dropping it ends the request's span).
    trace: Option<crate::trace::RequestTrace>,
}

/// A request the prediction log keeps: its inputs and entities as the model got them, and its
/// outputs once answered (V2 JSON).
struct Kept {
    log: Arc<modelship_predictions::PredictionLog>,
    inputs: String,
    entities: Option<String>,
    outputs: Option<String>,
}

struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl<'a> Call<'a> {
    fn start(state: &'a AppState, endpoint: Endpoint, headers: &HeaderMap, received: Instant) -> Self {
        let gauge = state.metrics.in_flight_at(endpoint).clone();
        gauge.inc();
        let trace = state.tracing.get().map(|tracing| tracing.request(endpoint.label(), headers, received));
        let request_id = state.ids.for_request(headers);
        // Attributes only on a recorded span: an unsampled request allocates nothing for them.
        if let Some(t) = trace.as_ref().filter(|t| t.is_sampled()) {
            t.set(vec![KeyValue::new("modelship.request_id", request_id.clone()), KeyValue::new("modelship.endpoint", endpoint.label())]);
        }
        Call { state, endpoint, request_id, started: received, _in_flight: InFlight(gauge), score: None, kept: None, trace }
    }

    /// The request's trace when its spans are recorded (tracing on and the request sampled):
    /// only then are attributes and stage spans built.
    fn sampled(&self) -> Option<&crate::trace::RequestTrace> {
        self.trace.as_ref().filter(|t| t.is_sampled())
    }

    /// A child span of the request's, when it is traced and sampled.
    fn span(&self, name: &'static str, start: Instant, end: Instant, attributes: Vec<KeyValue>) {
        if let Some(t) = &self.trace {
            t.child(name, start, end, attributes);
        }
    }

    /// A request that failed before it was routed (decoding, unknown model, no route).
    fn fail(mut self, e: ApiError) -> Answer {
        self.record(None, None, e.status_and_code().0, Some(&e));
        Answer { trace: self.trace.take(), request_id: self.request_id, model: None, revision: None, result: Err(e) }
    }

    /// Hands the answer to the prediction log, when it keeps this request.
    fn keep(&mut self, routed: &Routed, revision: u64, status: StatusCode, result: &Result<Outcome, ApiError>) {
        let Some(kept) = self.kept.take() else { return };
        let model = &routed.model;
        kept.log.record(modelship_predictions::Prediction {
            request_id: self.request_id.clone(),
            time: modelship_predictions::now_ms(),
            model: model.name.clone(),
            version: model.version.clone(),
            revision: i64::try_from(revision).ok(),
            role: routed.role.as_str().to_owned(),
            status: i64::from(status.as_u16()),
            latency_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            inputs: Some(kept.inputs),
            entities: kept.entities,
            outputs: kept.outputs,
            score: self.score,
            error: result.as_ref().err().map(|e| crate::error::clip(&e.to_string(), crate::error::MAX_LOGGED_BYTES).into_owned()),
            served_version: None,
            agreed: None,
            replica: kept.log.replica().map(str::to_owned),
        });
    }

    /// Counts, times and logs the call: `status` is the HTTP status it answers with (over gRPC,
    /// the HTTP status of its error).
    fn record(&self, model: Option<&LoadedModel>, role: Option<Role>, status: StatusCode, error: Option<&ApiError>) {
        let elapsed = self.started.elapsed();
        let endpoint = self.endpoint.label();
        // Unknown model names from clients never become label values.
        let (name, version) = model.map_or(("unknown", ""), |m| (m.name.as_str(), m.version.as_str()));
        let metrics = &self.state.metrics;
        let code = error.map(|e| e.status_and_code().1);
        if let Some(code) = code {
            metrics.errors.with_label_values(&[name, version, endpoint, code]).inc();
        }
        if let Some(t) = self.sampled() {
            t.set(vec![KeyValue::new("http.response.status_code", i64::from(status.as_u16()))]);
            if let (Some(code), Some(e)) = (code, error) {
                t.fail(code, &crate::error::clip(&e.to_string(), crate::error::MAX_LOGGED_BYTES));
            }
        }
        // Formatted only when the line is written.
        let trace_id = self.trace.as_ref().map(|t| tracing::field::display(t.trace_id()));
        if let (Some(m), Some(routed_as)) = (model, role)
            && routed_as != Role::Pinned
        {
            self.state.observations.record(&self.request_id, &m.name, &m.version, status.is_server_error(), elapsed.as_secs_f64(), self.score);
        }
        match (model, role) {
            (Some(m), Some(role)) if status == StatusCode::OK => {
                let (requests, duration) = m.answered_metrics(metrics, role, self.endpoint);
                requests.inc();
                duration.observe(elapsed.as_secs_f64());
                if let Some(score) = self.score {
                    m.score_metric(metrics).observe(score);
                }
            }
            _ => {
                let role = role.map_or("", Role::as_str);
                metrics.requests.with_label_values(&[name, version, role, endpoint, status.as_str()]).inc();
                metrics.request_duration.with_label_values(&[name, version, role, endpoint]).observe(elapsed.as_secs_f64());
            }
        }
        let role = role.map_or("", Role::as_str);
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        let request_id = self.request_id.as_str();
        let message = error.map(|e| crate::error::clip(&e.to_string(), crate::error::MAX_LOGGED_BYTES).into_owned());
        let message = message.as_deref().unwrap_or_default();
        match (error, code) {
            (Some(_), Some(code)) if status.is_server_error() => tracing::error!(
                request_id, trace_id, model = name, version, endpoint, status = status.as_u16(), latency_ms, error = code, message, "inference failed"
            ),
            (Some(_), Some(code)) => tracing::info!(
                request_id, trace_id, model = name, version, endpoint, status = status.as_u16(), latency_ms, error = code, message, "inference rejected"
            ),
            _ => tracing::info!(request_id, trace_id, model = name, version, role, endpoint, status = status.as_u16(), latency_ms, "inference"),
        }
    }
}
