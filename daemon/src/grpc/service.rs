//! The `inference.GRPCInferenceService` implementation: protobuf in and out,
//! everything else is the HTTP server's (`server::v2`): model lookup,
//! request checks, the worker pool, execution, the metrics.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use prost::Message;
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use super::pb;
use super::pb::grpc_inference_service_server::GrpcInferenceService;
use super::pb::infer_parameter::ParameterChoice;
use crate::metrics::Timed;
use crate::server::codec::{
    raw_bytes, Decoded, InferInput, InputData, OutputData, RequestedOutput,
};
use crate::server::limits::Limits;
use crate::server::v2::{
    busy, check_request, dropped, execute, model_named, ns, record_arrival, record_failure,
    record_success, ApiError, ApiResult, Timings, OUTPUT_NAME,
};
use crate::server::AppState;
use crate::shared::Active;

/// The service: the HTTP server's state and its request-bytes budget.
pub struct Inference {
    state: AppState,
    limits: Limits,
}

impl Inference {
    pub fn new(state: AppState, limits: Limits) -> Inference {
        Inference { state, limits }
    }

    fn model(&self, name: &str, version: &str) -> Result<Arc<Active>, Status> {
        let version = (!version.is_empty()).then_some(version);
        model_named(&self.state, name, version).map_err(status_of)
    }

    async fn infer(
        &self,
        req: pb::ModelInferRequest,
    ) -> ApiResult<(Arc<Active>, pb::ModelInferResponse, Timings)> {
        let size = req.encoded_len() as u64;
        let held = self.limits.try_hold(size).ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the server is busy: {} MiB of requests are in flight (server.max_inflight_mb); retry later",
                    self.limits.capacity() >> 20
                ),
            )
        })?;
        let active = model_named(
            &self.state,
            &req.model_name,
            (!req.model_version.is_empty()).then_some(req.model_version.as_str()),
        )?;
        let model = active.clone();
        let max_batch = self.state.max_batch;
        let queued = Instant::now();
        let rx = self
            .state
            .pool
            .submit(move || {
                let answer = work(&model, req, max_batch, queued);
                drop(held);
                answer
            })
            .map_err(|_| busy())?;
        let (resp, timings) = rx.await.map_err(|_| dropped())??;
        Ok((active, resp, timings))
    }
}

/// A KServe error as a gRPC status (the message is the same text).
fn status_of(e: ApiError) -> Status {
    let code = match e.status {
        StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument,
        StatusCode::NOT_FOUND => tonic::Code::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE => tonic::Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        StatusCode::NOT_IMPLEMENTED => tonic::Code::Unimplemented,
        _ => tonic::Code::Internal,
    };
    Status::new(code, e.message)
}

/// gRPC parameters as the JSON parameters the HTTP checks read.
fn params(p: &HashMap<String, pb::InferParameter>) -> Option<Map<String, Value>> {
    if p.is_empty() {
        return None;
    }
    let map = p
        .iter()
        .filter_map(|(k, v)| {
            let v = match v.parameter_choice.as_ref()? {
                ParameterChoice::BoolParam(b) => Value::Bool(*b),
                ParameterChoice::Int64Param(i) => Value::from(*i),
                ParameterChoice::Uint64Param(u) => Value::from(*u),
                ParameterChoice::DoubleParam(d) => Value::from(*d),
                ParameterChoice::StringParam(s) => Value::String(s.clone()),
            };
            Some((k.clone(), v))
        })
        .collect();
    Some(map)
}

/// The request as the HTTP decoder would have produced it: raw contents
/// (what clients send by default) or typed contents per input.
fn decode(req: pb::ModelInferRequest) -> ApiResult<Decoded> {
    let raw = req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(ApiError::bad(format!(
            "raw_input_contents: {} entries for {} inputs; send one per input",
            raw.len(),
            req.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for (i, t) in req.inputs.into_iter().enumerate() {
        let data = match (raw.next(), t.contents) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(format!(
                    "inputs[{i}]: both contents and raw_input_contents given; send one"
                )))
            }
            (Some(bytes), None) => InputData::Raw(bytes),
            (None, Some(c)) => match t.datatype.to_ascii_uppercase().as_str() {
                "FP32" => InputData::Json(c.fp32_contents.into_iter().map(f64::from).collect()),
                "UINT8" => InputData::Json(c.uint_contents.into_iter().map(f64::from).collect()),
                other => {
                    return Err(ApiError::bad(format!(
                        "inputs[{i}].datatype: `{other}` is not supported; send FP32 (preprocessed) or UINT8 (raw pixels)"
                    )))
                }
            },
            (None, None) => {
                return Err(ApiError::bad(format!(
                    "inputs[{i}]: no data: give contents or raw_input_contents"
                )))
            }
        };
        let input = InferInput {
            name: t.name,
            shape: t.shape,
            datatype: t.datatype,
            parameters: params(&t.parameters),
            data: None,
        };
        inputs.push((input, data));
    }
    let outputs = (!req.outputs.is_empty()).then(|| {
        req.outputs
            .into_iter()
            .map(|o| RequestedOutput {
                parameters: params(&o.parameters),
                name: o.name,
            })
            .collect()
    });
    Ok(Decoded {
        id: (!req.id.is_empty()).then_some(Value::String(req.id)),
        inputs,
        outputs,
        // gRPC answers always carry raw contents (as Triton's do).
        binary_output: true,
    })
}

/// The whole request on a worker: convert, check, run, build the answer.
fn work(
    model: &Active,
    req: pb::ModelInferRequest,
    max_batch: usize,
    queued: Instant,
) -> ApiResult<(pb::ModelInferResponse, Timings)> {
    let t0 = Instant::now();
    let queue_ns = ns(t0 - queued);
    let checked = check_request(decode(req)?, model, max_batch)?;
    let ex = execute(model, checked, t0)?;
    let mut outputs = Vec::with_capacity(ex.outputs.len());
    let mut raw = Vec::with_capacity(ex.outputs.len());
    for o in &ex.outputs {
        let datatype = match o.data {
            OutputData::F32(_) => "FP32",
            OutputData::Bytes(_) => "BYTES",
        };
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name: o.name.clone(),
            datatype: datatype.into(),
            shape: o.shape.iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents: None,
        });
        raw.push(raw_bytes(&o.data));
    }
    let id = match ex.id {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    let resp = pb::ModelInferResponse {
        model_name: model.name().to_string(),
        model_version: model.version().to_string(),
        id,
        parameters: HashMap::new(),
        outputs,
        raw_output_contents: raw,
    };
    let timings = Timings {
        batch: ex.batch,
        run_ms: ex.run_ms,
        queue_ns,
        input_ns: ex.input_ns,
        infer_ns: ex.infer_ns,
        output_ns: ns(ex.ran_at.elapsed()),
    };
    Ok((resp, timings))
}

fn duration(d: &Timed) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: d.count.load(Relaxed),
        ns: d.ns.load(Relaxed),
    })
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.state.shared.current().is_some(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let ready = self.model(&r.name, &r.version).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "adaptived".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: ["classification", "statistics", "model_configuration"]
                .map(String::from)
                .to_vec(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let a = self.model(&r.name, &r.version)?;
        let mut shape = vec![-1i64];
        shape.extend(a.engine.item_shape.iter().map(|&d| d as i64));
        let tensor = |name: &str, shape: Vec<i64>| pb::model_metadata_response::TensorMetadata {
            name: name.into(),
            datatype: "FP32".into(),
            shape,
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: a.name().into(),
            versions: vec![a.version().to_string()],
            platform: "onnx_tract".into(),
            inputs: vec![tensor(&a.bundle.manifest.input.name, shape)],
            outputs: vec![tensor(OUTPUT_NAME, vec![-1, a.engine.classes as i64])],
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let t0 = Instant::now();
        let shared = &self.state.shared;
        record_arrival(shared);
        let req = req.into_inner();
        let name = req.model_name.clone();
        match self.infer(req).await {
            Ok((active, resp, timings)) => {
                record_success(shared, &active, &timings, t0.elapsed());
                Ok(Response::new(resp))
            }
            Err(e) => {
                record_failure(shared, &name, &e, t0.elapsed());
                Err(status_of(e))
            }
        }
    }

    async fn model_config(
        &self,
        req: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = req.into_inner();
        let a = self.model(&r.name, &r.version)?;
        let fp32 = pb::DataType::TypeFp32 as i32;
        let config = pb::ModelConfig {
            name: a.name().into(),
            platform: "onnx_tract".into(),
            backend: "tract".into(),
            max_batch_size: i32::try_from(self.state.max_batch).unwrap_or(i32::MAX),
            input: vec![pb::ModelInput {
                name: a.bundle.manifest.input.name.clone(),
                data_type: fp32,
                dims: a.engine.item_shape.iter().map(|&d| d as i64).collect(),
            }],
            output: vec![pb::ModelOutput {
                name: OUTPUT_NAME.into(),
                data_type: fp32,
                dims: vec![a.engine.classes as i64],
            }],
        };
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        req: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = req.into_inner();
        // An empty name asks for every model (zero or one here).
        let active = if r.name.is_empty() {
            self.state.shared.current()
        } else {
            Some(self.model(&r.name, &r.version)?)
        };
        let s = &self.state.shared.metrics.infer;
        let model_stats = active
            .map(|a| pb::ModelStatistics {
                name: a.name().into(),
                version: a.version().to_string(),
                last_inference: s.last_inference_ms.load(Relaxed),
                inference_count: s.inference_count.load(Relaxed),
                execution_count: s.execution_count.load(Relaxed),
                inference_stats: Some(pb::InferStatistics {
                    success: duration(&s.success),
                    fail: duration(&s.fail),
                    queue: duration(&s.queue),
                    compute_input: duration(&s.compute_input),
                    compute_infer: duration(&s.compute_infer),
                    compute_output: duration(&s.compute_output),
                }),
            })
            .into_iter()
            .collect();
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }
}
