//! Open Inference Protocol V2 over gRPC, as Triton defines it (package `inference`, service
//! `GRPCInferenceService`), plus `grpc.health.v1.Health`. The same models, routing, metrics,
//! logs and errors as REST: each RPC decodes its message into the inference types and goes
//! through the code REST uses. Errors map to gRPC status codes by their HTTP status (see
//! [`status`]); the repository RPCs need the admin bearer token in `authorization` metadata.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use http::HeaderMap;
use modelship_protocol::grpc::{self as wire, pb};
use modelship_protocol::model_config::ModelConfig;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::pipeline::{self, Endpoint, Inputs};
use crate::repository::Repository;
use crate::state::AppState;

/// The service generated over the protocol crate's messages.
#[allow(clippy::all, missing_docs)]
mod service {
    tonic::include_proto!("inference");
}

use service::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// The service's codec (`build.rs` names it): tonic's prost codec, with a look at what a
/// `ModelInferRequest` would cost to decode before prost decodes it
/// (`modelship_protocol::grpc_cost`): protobuf packs empty tensors and strings into 2 bytes that
/// decode to hundreds, so an unchecked 16 MiB message could take gigabytes.
pub struct BoundedCodec<T, U>(tonic_prost::ProstCodec<T, U>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        BoundedCodec(tonic_prost::ProstCodec::default())
    }
}

impl<T, U> tonic::codec::Codec for BoundedCodec<T, U>
where
    T: tonic_prost::prost::Message + Send + 'static,
    U: tonic_prost::prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(self.0.decoder())
    }
}

/// See [`BoundedCodec`].
pub struct BoundedDecoder<U>(tonic_prost::ProstDecoder<U>);

impl<U: tonic_prost::prost::Message + Default + 'static> tonic::codec::Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use tonic_prost::prost::bytes::Buf;
        // The one message whose size decides memory; the others are small and fixed.
        if std::any::TypeId::of::<U>() == std::any::TypeId::of::<pb::ModelInferRequest>() {
            // The decode buffer is one contiguous message.
            modelship_protocol::grpc_cost::check_infer_request(buf.chunk()).map_err(|e| status(&ApiError::TooLargeToDecode(e)))?;
        }
        self.0.decode(buf)
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.0.buffer_settings()
    }
}

/// The gRPC service's state: the app, and (for the repository RPCs) the repository.
#[derive(Clone)]
pub struct Grpc {
    app: AppState,
    repository: Option<Arc<Repository>>,
}

impl Grpc {
    pub fn new(app: AppState, repository: Option<Arc<Repository>>) -> Self {
        Grpc { app, repository }
    }
}

/// The gRPC status of an error: its class's code (the table is in `error.rs` and
/// ARCHITECTURE.md, "Errors"), with the same message REST sends.
pub fn status(e: &ApiError) -> Status {
    use crate::error::GrpcCode;
    let code = match e.class_and_code().0.grpc() {
        GrpcCode::InvalidArgument => tonic::Code::InvalidArgument,
        GrpcCode::Unauthenticated => tonic::Code::Unauthenticated,
        GrpcCode::NotFound => tonic::Code::NotFound,
        GrpcCode::Unimplemented => tonic::Code::Unimplemented,
        GrpcCode::FailedPrecondition => tonic::Code::FailedPrecondition,
        GrpcCode::ResourceExhausted => tonic::Code::ResourceExhausted,
        GrpcCode::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        GrpcCode::Unavailable => tonic::Code::Unavailable,
        GrpcCode::Internal => tonic::Code::Internal,
    };
    Status::new(code, e.public_message())
}

/// The gRPC API as a router the [`crate::Server`] serves like any other listener (HTTP/2 over
/// the same accept loop, TLS and drain): Triton's `GRPCInferenceService`, which needs an API key
/// when keys are configured (`x-api-key` or `authorization: Bearer` metadata), and
/// `grpc.health.v1`, which never does and reports SERVING while the server is ready.
pub fn router(grpc: Grpc) -> axum::Router {
    let (reporter, health) = tonic_health::server::health_reporter();
    let health = FreshHealth { inner: health, status: HealthStatus { app: grpc.app.clone(), reporter, last: Arc::default() } };
    // `Watch` streams hear of changes that no call asked about: poll for them.
    let polled = health.status.clone();
    grpc.app.tasks.clone().spawn("grpc-health", move |_| async move {
        loop {
            polled.refresh().await;
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    });
    let limit = grpc.app.limits.max_body_bytes;
    let grpc_limits = grpc.app.limits;
    let credentials = Arc::clone(&grpc.app.credentials);
    let max_header_bytes = grpc.app.limits.max_header_bytes;
    let service = GrpcInferenceServiceServer::new(grpc).max_decoding_message_size(limit).max_encoding_message_size(usize::MAX);
    let service = tonic::service::interceptor::InterceptedService::new(service, move |request: Request<()>| {
        let headers = request.metadata().clone().into_headers();
        // The same bound on metadata as REST's on headers (server.max_header_bytes).
        let size = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>();
        if size > max_header_bytes {
            return Err(status(&ApiError::HeadersTooLarge { limit: max_header_bytes }));
        }
        // An API key for inference; the admin token passes too (repository RPCs need it, and
        // check it themselves), so an operator never needs both credentials on one call.
        let admin = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if credentials.allows_inference(&headers) || credentials.is_control(admin) {
            Ok(request)
        } else {
            Err(status(&ApiError::NoApiKey))
        }
    });
    // Every message is read under the same clock as REST bodies (a stalled stream is cut off).
    let bounds = crate::api::body_bounds(&grpc_limits, limit);
    tonic::service::Routes::new(health)
        .add_service(service)
        .prepare()
        .into_axum_router()
        .layer(tower::util::MapRequestLayer::new(move |request| crate::api::body::clock(request, bounds)))
}

/// What `grpc.health.v1` reports: the readiness probe's answer, pushed to tonic-health's
/// reporter only when it changes (each push wakes every `Watch` stream).
#[derive(Clone)]
struct HealthStatus {
    app: AppState,
    reporter: tonic_health::server::HealthReporter,
    /// The last status pushed: 0 none yet, 1 serving, 2 not serving.
    last: Arc<std::sync::atomic::AtomicU8>,
}

impl HealthStatus {
    async fn refresh(&self) {
        use std::sync::atomic::Ordering;
        use tonic_health::ServingStatus;
        let ready = crate::api::ops::readiness(&self.app).0;
        let (code, status) = if ready { (1, ServingStatus::Serving) } else { (2, ServingStatus::NotServing) };
        if self.last.swap(code, Ordering::SeqCst) != code {
            self.reporter.set_service_status("", status).await;
            self.reporter.set_service_status("inference.GRPCInferenceService", status).await;
        }
    }
}

/// tonic-health's service, brought up to date before each call: a `Check` right after the
/// server announced readiness answers SERVING, not what the last poll saw.
#[derive(Clone)]
struct FreshHealth<S> {
    inner: S,
    status: HealthStatus,
}

impl<S> tonic::server::NamedService for FreshHealth<S> {
    const NAME: &'static str = "grpc.health.v1.Health";
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for FreshHealth<S>
where
    S: tower::Service<http::Request<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone is not ready yet: call the one that was polled, keep the clone for next time.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let status = self.status.clone();
        Box::pin(async move {
            status.refresh().await;
            inner.call(request).await
        })
    }
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
        Ok(Response::new(pb::ServerReadyResponse { ready: crate::api::ops::readiness(&self.app).0 }))
    }

    async fn model_ready(&self, request: Request<pb::ModelReadyRequest>) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = crate::api::v2::ready_of(&self.app, &r.name, version_of(&r.version)).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(&self, _: Request<pb::ServerMetadataRequest>) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "modelship".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            extensions: crate::api::v2::EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
        }))
    }

    async fn model_metadata(&self, request: Request<pb::ModelMetadataRequest>) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let m = crate::api::v2::metadata_of(&self.app, &r.name, version_of(&r.version)).map_err(|e| status(&e))?;
        Ok(Response::new(wire::metadata_message(m)))
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
        // The batching facts are the loaded version's: a resting model is loaded again.
        let served = self.app.residency.resident(&r.name).await.map_err(|e| status(&e))?;
        let model = served.version(&r.name, version_of(&r.version).unwrap_or(&served.table.stable)).map_err(|e| status(&e))?;
        let config = ModelConfig::new(&model.name, &model.info, &model.batching_facts());
        Ok(Response::new(pb::ModelConfigResponse { config: Some(wire::config_message(config)) }))
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let stats = self.app.models.statistics((!r.name.is_empty()).then_some(r.name.as_str()), version_of(&r.version)).map_err(|e| status(&e))?;
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats: stats.into_iter().map(wire::statistics_message).collect() }))
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
            Some(_) => return Err(status(&ApiError::Invalid("parameter 'version' must be a string naming a registry version".to_owned()))),
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

impl Grpc {
    /// The repository, when the request carries the admin token.
    fn authorized<T>(&self, request: &Request<T>) -> Result<&Arc<Repository>, Status> {
        let Some(repository) = &self.repository else {
            return Err(Status::unimplemented("this server has no repository API"));
        };
        let given = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        if self.app.credentials.is_control(given) { Ok(repository) } else { Err(status(&ApiError::Unauthorized)) }
    }

    /// One inference through the pipeline REST uses.
    async fn infer(&self, r: pb::ModelInferRequest, headers: &HeaderMap) -> Result<pb::ModelInferResponse, Status> {
        let received = std::time::Instant::now();
        let (name, version) = (r.model_name.clone(), version_of(&r.model_version).map(str::to_owned));
        let decoded = wire::decode(r).map_err(ApiError::from).map(|d| pipeline::Request {
            model: Some(name),
            version,
            parameters: d.parameters,
            inputs: Inputs::Tensors(d.request),
            entities: d.entities,
        });
        let answer = pipeline::run(&self.app, Endpoint::GrpcInfer, headers, received, decoded).await;
        let trace = answer.trace;
        match (answer.result, answer.model) {
            (Ok(outcome), Some(model)) => {
                let encoding = std::time::Instant::now();
                let response = wire::encode(&model.name, &model.version, outcome.id.unwrap_or_default(), &outcome.outputs, outcome.feature_defaults.as_ref());
                if let Some(trace) = &trace {
                    trace.encoded(encoding);
                }
                Ok(response)
            }
            (Ok(_), None) => Err(status(&ApiError::Internal("an answer without a model".to_owned()))),
            (Err(e), _) => Err(status(&e)),
        }
    }
}
