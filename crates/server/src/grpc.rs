//! Open Inference Protocol V2 over gRPC, as Triton defines it (package `inference`, service
//! `GRPCInferenceService`), plus `grpc.health.v1.Health`. The same models, routing, metrics,
//! logs and errors as REST: each RPC decodes its message into the inference types and goes
//! through the code REST uses. Errors map to gRPC status codes by their HTTP status (see
//! [`status`]); the repository RPCs need the admin bearer token in `authorization` metadata.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use http::{HeaderMap, StatusCode};
use modelship_inference::{DataType, InferRequest, Tensor, TensorData};
use modelship_protocol::model_config::{self, ModelConfig};
use modelship_protocol::statistics::{ModelStatistics, StatisticDuration};
use modelship_protocol::{DecodeError, raw};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::model::LoadedModel;
use crate::repository::Repository;
use crate::routes::{Call, route_by, score_of};
use crate::state::AppState;

/// The code generated from `proto/inference.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// The gRPC service's state: the app, and (for the repository RPCs) the repository and the
/// admin token.
#[derive(Clone)]
pub struct Grpc {
    app: AppState,
    repository: Option<Arc<Repository>>,
    token: Option<Arc<str>>,
}

impl Grpc {
    pub fn new(app: AppState, repository: Option<Arc<Repository>>, token: Option<&str>) -> Self {
        Grpc { app, repository, token: token.map(Arc::from) }
    }
}

/// The gRPC status of an error: by its HTTP status, one rule for every error (the table is in
/// ARCHITECTURE.md, "Errors").
pub fn status(e: &ApiError) -> Status {
    let (http, _) = e.status_and_code();
    let code = match http {
        StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument,
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        StatusCode::NOT_FOUND => tonic::Code::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => tonic::Code::Unimplemented,
        StatusCode::CONFLICT => tonic::Code::FailedPrecondition,
        StatusCode::PAYLOAD_TOO_LARGE => tonic::Code::ResourceExhausted,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    };
    Status::new(code, e.to_string())
}

fn invalid(message: String) -> ApiError {
    ApiError::Decode(DecodeError(message))
}

/// Serves gRPC on `listener` until `shutdown` resolves; `grpc.health.v1` reports SERVING while
/// the server is ready (checked every 250 ms).
pub async fn serve_grpc(
    listener: TcpListener,
    grpc: Grpc,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let app = grpc.app.clone();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let ready = crate::routes::ops::readiness(&app).0;
            if last != Some(ready) {
                let status = if ready { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
                reporter.set_service_status("", status).await;
                reporter.set_service_status("inference.GRPCInferenceService", status).await;
                last = Some(ready);
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    });
    let limit = grpc.app.limits.max_body_bytes;
    let service = GrpcInferenceServiceServer::new(grpc).max_decoding_message_size(limit).max_encoding_message_size(usize::MAX);
    // No Nagle: small answers must not wait for the client's delayed ACK (a 40 ms stall).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder().add_service(health).add_service(service).serve_with_incoming_shutdown(incoming, shutdown).await
}

/// The version asked for: empty means "routed".
fn version_of(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

type InferStream = Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: crate::routes::ops::readiness(&self.app).0 }))
    }

    async fn model_ready(&self, request: Request<pb::ModelReadyRequest>) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = self.app.models.get(&r.name, version_of(&r.version)).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(&self, _: Request<pb::ServerMetadataRequest>) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "modelship".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: crate::routes::v2::EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
        }))
    }

    async fn model_metadata(&self, request: Request<pb::ModelMetadataRequest>) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let m = crate::routes::v2::metadata_of(&self.app, &r.name, version_of(&r.version)).map_err(|e| status(&e))?;
        let tensor = |t: modelship_protocol::v2::TensorMetadata| pb::model_metadata_response::TensorMetadata {
            name: t.name,
            datatype: t.datatype,
            shape: t.shape,
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform,
            inputs: m.inputs.into_iter().map(tensor).collect(),
            outputs: m.outputs.into_iter().map(tensor).collect(),
        }))
    }

    async fn model_infer(&self, request: Request<pb::ModelInferRequest>) -> Result<Response<pb::ModelInferResponse>, Status> {
        let headers = request.metadata().clone().into_headers();
        self.infer(request.into_inner(), &headers).await.map(Response::new)
    }

    type ModelStreamInferStream = InferStream;

    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let headers = Arc::new(request.metadata().clone().into_headers());
        let this = self.clone();
        // Requests of one stream run concurrently (up to 64 at a time); answers keep their order.
        let answers = request
            .into_inner()
            .map(move |next| {
                let (this, headers) = (this.clone(), Arc::clone(&headers));
                async move {
                    let r = next?;
                    let (id, model_name, model_version) = (r.id.clone(), r.model_name.clone(), r.model_version.clone());
                    Ok(match this.infer(r, &headers).await {
                        Ok(response) => pb::ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) },
                        Err(e) => pb::ModelStreamInferResponse {
                            error_message: e.message().to_owned(),
                            infer_response: Some(pb::ModelInferResponse { id, model_name, model_version, ..Default::default() }),
                        },
                    })
                }
            })
            .buffered(64);
        Ok(Response::new(Box::pin(answers)))
    }

    async fn model_config(&self, request: Request<pb::ModelConfigRequest>) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let model = self.app.models.get(&r.name, version_of(&r.version)).map_err(|e| status(&e))?;
        let config = ModelConfig::new(&model.name, &model.info, &model.batching_facts());
        Ok(Response::new(pb::ModelConfigResponse { config: Some(config_message(config)) }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let stats = self.app.models.statistics((!r.name.is_empty()).then_some(r.name.as_str()), version_of(&r.version)).map_err(|e| status(&e))?;
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats: stats.into_iter().map(statistics_message).collect() }))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let repository = self.authorized(&request)?;
        let entries = repository.index(&self.app, request.get_ref().ready).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::RepositoryIndexResponse {
            models: entries
                .into_iter()
                .map(|e| pb::repository_index_response::ModelIndex { name: e.name, version: e.version, state: e.state, reason: e.reason })
                .collect(),
        }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let repository = self.authorized(&request)?;
        let r = request.get_ref();
        let version = match r.parameters.get("version").and_then(|p| p.parameter_choice.as_ref()) {
            None => None,
            Some(pb::model_repository_parameter::ParameterChoice::StringParam(v)) => Some(v.as_str()),
            Some(_) => return Err(status(&invalid("parameter 'version' must be a string naming a registry version".to_owned()))),
        };
        crate::repository::refuse_overrides(r.parameters.keys().map(String::as_str)).map_err(|e| status(&e))?;
        repository.load(&self.app, &r.model_name, version).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let repository = self.authorized(&request)?;
        repository.unload(&self.app, &request.get_ref().model_name).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

impl Call<'_> {
    /// Counts and logs a failed gRPC call; returns its status.
    fn record_error(&self, model: Option<&LoadedModel>, role: Option<modelship_router::Role>, e: &ApiError) -> Status {
        let (http, code) = e.status_and_code();
        self.record(model, role, http, Some((code, e.to_string())));
        status(e)
    }
}

impl Grpc {
    /// The repository, when the request carries the admin token.
    fn authorized<T>(&self, request: &Request<T>) -> Result<&Arc<Repository>, Status> {
        let (Some(repository), Some(token)) = (&self.repository, &self.token) else {
            return Err(Status::unimplemented("this server has no repository API"));
        };
        let given = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        if crate::admin::bearer_matches(given, token) { Ok(repository) } else { Err(status(&ApiError::Unauthorized)) }
    }

    /// One inference: routed, run, counted and logged as REST does.
    async fn infer(&self, r: pb::ModelInferRequest, headers: &HeaderMap) -> Result<pb::ModelInferResponse, Status> {
        let state = &self.app;
        let mut call = Call::start(state, "grpc_infer", headers);
        let field = |f: &str| match r.parameters.get(f).and_then(|p| p.parameter_choice.as_ref()) {
            Some(pb::infer_parameter::ParameterChoice::StringParam(s)) => Some(s.as_bytes().to_vec()),
            Some(pb::infer_parameter::ParameterChoice::Int64Param(n)) => Some(n.to_string().into_bytes()),
            Some(pb::infer_parameter::ParameterChoice::Uint64Param(n)) => Some(n.to_string().into_bytes()),
            _ => None,
        };
        let routed = match route_by(state, &r.model_name, version_of(&r.model_version), headers, &field) {
            Ok(routed) => routed,
            Err(e) => return Err(call.record_error(None, None, &e)),
        };
        let model = &routed.model;
        let result: Result<pb::ModelInferResponse, ApiError> = async {
            let entities = entities_parameter(&r)?;
            let mut request = decode(r, entities.is_some())?;
            let defaults = match entities {
                Some(entities) => crate::routes::enrich(state, &mut request, &entities).await?,
                None => None,
            };
            let id = request.id.take().unwrap_or_default();
            let mirror = routed.shadow.as_ref().filter(|s| state.shadows.admit(&state.metrics, s)).map(|_| request.clone());
            let outputs = model.infer(request).await?;
            if state.observations.is_recording() {
                call.score = score_of(model, &outputs);
            }
            let mut response = encode(&model.name, &model.version, id, &outputs);
            if let Some(d) = defaults {
                response.parameters.insert(
                    "feature_defaults".to_owned(),
                    pb::InferParameter { parameter_choice: Some(pb::infer_parameter::ParameterChoice::StringParam(d.to_string())) },
                );
            }
            if let (Some(shadow), Some(copy)) = (routed.shadow.clone(), mirror) {
                state.shadows.mirror(&state.metrics, shadow, copy, outputs);
            }
            Ok(response)
        }
        .await;
        match result {
            Ok(response) => {
                call.record(Some(model), Some(routed.role), StatusCode::OK, None);
                Ok(response)
            }
            Err(e) => Err(call.record_error(Some(model), Some(routed.role), &e)),
        }
    }
}

/// The `entities` request parameter: a JSON array of entity objects, as a string (gRPC
/// parameters are scalars). The response's `feature_defaults` parameter is JSON the same way.
fn entities_parameter(r: &pb::ModelInferRequest) -> Result<Option<Vec<serde_json::Map<String, serde_json::Value>>>, ApiError> {
    match r.parameters.get("entities").and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(pb::infer_parameter::ParameterChoice::StringParam(text)) => serde_json::from_str(text)
            .map(Some)
            .map_err(|e| invalid(format!("parameter 'entities' must be a JSON array of objects: {e}"))),
        Some(_) => Err(invalid("parameter 'entities' must be a string holding a JSON array of objects".to_owned())),
    }
}

/// A `ModelInferRequest` as an inference request: inputs from `raw_input_contents` (one entry
/// per input, in order) or from typed `contents`. `entities`: inputs may be empty (the features
/// build them).
pub fn decode(r: pb::ModelInferRequest, entities: bool) -> Result<InferRequest, ApiError> {
    if r.inputs.is_empty() && !entities {
        return Err(invalid("'inputs' is empty; give at least one input tensor".to_owned()));
    }
    if !r.raw_input_contents.is_empty() && r.raw_input_contents.len() != r.inputs.len() {
        return Err(invalid(format!(
            "raw_input_contents has {} entries for {} inputs; give one per input, in the order of 'inputs'",
            r.raw_input_contents.len(),
            r.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for (i, input) in r.inputs.into_iter().enumerate() {
        let name = input.name;
        let (datatype, shape) = modelship_protocol::v2::input_type(&name, &input.datatype, &input.shape)?;
        let tensor = match r.raw_input_contents.get(i) {
            Some(bytes) => raw::tensor(&name, datatype, shape, bytes)?,
            None => {
                let contents = input.contents.unwrap_or_default();
                let data = typed_contents(&name, datatype, contents)?;
                Tensor::new(name, shape, data)?
            }
        };
        inputs.push(tensor);
    }
    let mut outputs = Vec::with_capacity(r.outputs.len());
    for o in r.outputs {
        if o.parameters.contains_key("classification") {
            return Err(invalid(format!("output '{}': the classification extension is not supported; request the output itself", o.name)));
        }
        outputs.push(o.name);
    }
    Ok(InferRequest { id: (!r.id.is_empty()).then_some(r.id), inputs, outputs: (!outputs.is_empty()).then_some(outputs) })
}

/// Typed `contents` into tensor data, with a range check where the wire type is wider.
fn typed_contents(name: &str, datatype: DataType, c: pb::InferTensorContents) -> Result<TensorData, ApiError> {
    fn narrow<W: Copy + std::fmt::Display, T: TryFrom<W>>(name: &str, datatype: DataType, v: Vec<W>) -> Result<Vec<T>, ApiError> {
        v.into_iter()
            .enumerate()
            .map(|(i, x)| T::try_from(x).map_err(|_| invalid(format!("input '{name}': element {i} ({x}) is out of range for {datatype}"))))
            .collect()
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::Uint8 => TensorData::Uint8(narrow(name, datatype, c.uint_contents)?),
        DataType::Uint16 => TensorData::Uint16(narrow(name, datatype, c.uint_contents)?),
        DataType::Uint32 => TensorData::Uint32(c.uint_contents),
        DataType::Uint64 => TensorData::Uint64(c.uint64_contents),
        DataType::Int8 => TensorData::Int8(narrow(name, datatype, c.int_contents)?),
        DataType::Int16 => TensorData::Int16(narrow(name, datatype, c.int_contents)?),
        DataType::Int32 => TensorData::Int32(c.int_contents),
        DataType::Int64 => TensorData::Int64(c.int64_contents),
        DataType::Fp16 => {
            return Err(invalid(format!("input '{name}': FP16 has no typed contents in the protocol; send it in raw_input_contents")));
        }
        DataType::Fp32 => TensorData::Fp32(c.fp32_contents),
        DataType::Fp64 => TensorData::Fp64(c.fp64_contents),
        DataType::Bytes => TensorData::Bytes(c.bytes_contents),
    })
}

/// Outputs as `raw_output_contents` (what Triton answers and its clients read).
pub fn encode(model_name: &str, model_version: &str, id: String, outputs: &[Tensor]) -> pb::ModelInferResponse {
    pb::ModelInferResponse {
        model_name: model_name.to_owned(),
        model_version: model_version.to_owned(),
        id,
        parameters: Default::default(),
        outputs: outputs
            .iter()
            .map(|t| pb::model_infer_response::InferOutputTensor {
                name: t.name().to_owned(),
                datatype: t.datatype().as_str().to_owned(),
                shape: t.shape().iter().map(|&d| d as i64).collect(),
                parameters: Default::default(),
                contents: None,
            })
            .collect(),
        raw_output_contents: outputs.iter().map(|t| raw::encode(t.data()).into_owned()).collect(),
    }
}

fn config_message(c: ModelConfig) -> pb::ModelConfig {
    let data_type = |t: &model_config::TensorConfig| model_config::triton_type(t.datatype).1;
    let reshape = |r: Option<model_config::Reshape>| r.map(|r| pb::ModelTensorReshape { shape: r.shape });
    pb::ModelConfig {
        name: c.name,
        platform: c.platform,
        backend: c.backend,
        max_batch_size: c.max_batch_size as i32,
        input: c
            .input
            .into_iter()
            .map(|t| pb::ModelInput { data_type: data_type(&t), name: t.name, dims: t.dims, reshape: reshape(t.reshape) })
            .collect(),
        output: c
            .output
            .into_iter()
            .map(|t| pb::ModelOutput { data_type: data_type(&t), name: t.name, dims: t.dims, reshape: reshape(t.reshape) })
            .collect(),
        instance_group: c
            .instance_group
            .into_iter()
            .map(|g| pb::ModelInstanceGroup { name: g.name, count: g.count as i32, kind: pb::model_instance_group::Kind::Cpu as i32 })
            .collect(),
        scheduling_choice: c.dynamic_batching.map(|d| {
            pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
                preferred_batch_size: d.preferred_batch_size.iter().map(|&n| n as i32).collect(),
                max_queue_delay_microseconds: d.max_queue_delay_microseconds,
            })
        }),
    }
}

fn statistics_message(m: ModelStatistics) -> pb::ModelStatistics {
    let d = |d: StatisticDuration| Some(pb::StatisticDuration { count: d.count, ns: d.ns });
    let i = m.inference_stats;
    pb::ModelStatistics {
        name: m.name,
        version: m.version,
        last_inference: m.last_inference,
        inference_count: m.inference_count,
        execution_count: m.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: d(i.success),
            fail: d(i.fail),
            queue: d(i.queue),
            compute_input: d(i.compute_input),
            compute_infer: d(i.compute_infer),
            compute_output: d(i.compute_output),
            cache_hit: d(i.cache_hit),
            cache_miss: d(i.cache_miss),
        }),
        batch_stats: m
            .batch_stats
            .into_iter()
            .map(|b| pb::InferBatchStatistics {
                batch_size: b.batch_size,
                compute_input: d(b.compute_input),
                compute_infer: d(b.compute_infer),
                compute_output: d(b.compute_output),
            })
            .collect(),
    }
}
