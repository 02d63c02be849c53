//! Handlers of the KServe v2 / Open Inference Protocol (HTTP/JSON), the
//! `/adaptation` status and `/metrics`. Inputs are checked against the
//! served bundle's input spec; a malformed request gets a 400 with a JSON
//! `{"error": "..."}` that names the problem.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use super::AppState;
use crate::shared::Active;

/// The name of the output tensor of every served model.
pub const OUTPUT_NAME: &str = "logits";

/// An error answer: status and a one-line message, sent as `{"error": msg}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: msg.into(),
        }
    }
    fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: msg.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn no_model() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no model is loaded yet: drop a bundle into the bundle directory",
    )
}

/// The active model if `name` (and `version`, when given) names it.
fn model_named(st: &AppState, name: &str, version: Option<&str>) -> ApiResult<Arc<Active>> {
    let active = st.shared.current().ok_or_else(no_model)?;
    if active.name() != name {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "model `{name}` is not served here; this server serves `{}`",
                active.name()
            ),
        ));
    }
    if let Some(v) = version {
        if v != active.version().to_string() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "model `{name}` version `{v}` is not served; the served version is {}",
                    active.version()
                ),
            ));
        }
    }
    Ok(active)
}

// ---------------------------------------------------------------------------
// Server and model metadata, health
// ---------------------------------------------------------------------------

pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "adaptived",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["model_repository", "adaptation", "metrics"],
    }))
}

pub async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

pub async fn ready(State(st): State<AppState>) -> Response {
    if st.shared.current().is_some() {
        Json(json!({ "ready": true })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false })),
        )
            .into_response()
    }
}

fn metadata_of(a: &Active) -> Value {
    let mut in_shape: Vec<i64> = vec![-1];
    in_shape.extend(a.engine.item_shape.iter().map(|&d| d as i64));
    let m = &a.bundle.manifest;
    json!({
        "name": a.name(),
        "versions": [a.version().to_string()],
        "platform": "onnx_tract",
        "inputs": [{ "name": m.input.name, "datatype": "FP32", "shape": in_shape }],
        "outputs": [{ "name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, a.engine.classes as i64] }],
        "parameters": {
            "layout": m.input.layout,
            "uint8_input": "accepted: raw pixels in [0, 255], normalised with the bundle's mean/std",
            "labels": m.input.labels,
            "subnet": a.engine.subnet.to_string(),
        },
    })
}

pub async fn model_metadata(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let a = model_named(&st, &name, None)?;
    Ok(Json(metadata_of(&a)))
}

pub async fn model_metadata_v(
    State(st): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let a = model_named(&st, &name, Some(&version))?;
    Ok(Json(metadata_of(&a)))
}

pub async fn model_ready(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    model_named(&st, &name, None)?;
    Ok(Json(json!({ "name": name, "ready": true })))
}

pub async fn model_ready_v(
    State(st): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    model_named(&st, &name, Some(&version))?;
    Ok(Json(json!({ "name": name, "ready": true })))
}

/// `POST /v2/repository/index`: the served model and its state.
pub async fn repository_index(State(st): State<AppState>) -> Json<Value> {
    let search = st.shared.history().search.clone();
    match st.shared.current() {
        Some(a) => Json(json!([{
            "name": a.name(),
            "version": a.version().to_string(),
            "state": "READY",
            "reason": if search.state == crate::status::SearchState::Running { "serving; a search for a new subnet is running" } else { "" },
        }])),
        None => Json(json!([])),
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint; see GET /v2 and /v2/models/{name}",
    )
}

// ---------------------------------------------------------------------------
// Infer
// ---------------------------------------------------------------------------

/// The v2 infer request (unknown keys are ignored, as the protocol allows
/// extensions).
#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<Value>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, Value>>,
    data: Flat,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
}

/// Tensor data, flat or nested arrays of numbers, flattened row-major.
struct Flat(Vec<f64>);

const MAX_NESTING: usize = 16;

struct FlatVisitor<'a> {
    out: &'a mut Vec<f64>,
    depth: usize,
}

impl<'de> Visitor<'de> for FlatVisitor<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("numbers, as a flat or nested array")
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.out.push(v);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.out.push(v as f64);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.out.push(v as f64);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth > MAX_NESTING {
            return Err(serde::de::Error::custom("`data` is nested too deeply"));
        }
        while seq
            .next_element_seed(FlatSeed {
                out: &mut *self.out,
                depth: self.depth + 1,
            })?
            .is_some()
        {}
        Ok(())
    }
}

struct FlatSeed<'a> {
    out: &'a mut Vec<f64>,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for FlatSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(FlatVisitor {
            out: self.out,
            depth: self.depth,
        })
    }
}

impl<'de> Deserialize<'de> for Flat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Flat, D::Error> {
        let mut out = Vec::new();
        d.deserialize_any(FlatVisitor {
            out: &mut out,
            depth: 0,
        })?;
        Ok(Flat(out))
    }
}

/// A checked input, ready for the model.
pub enum Batch {
    F32 { n: usize, data: Vec<f32> },
    U8 { n: usize, data: Vec<u8> },
}

impl Batch {
    pub fn len(&self) -> usize {
        match self {
            Batch::F32 { n, .. } | Batch::U8 { n, .. } => *n,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn shape_text(s: &[i64]) -> String {
    format!(
        "[{}]",
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Check a request against the served model's input spec.
fn check_request(
    req: InferRequest,
    a: &Active,
    max_batch: usize,
) -> ApiResult<(Option<Value>, Batch)> {
    let m = &a.bundle.manifest;
    let item: Vec<i64> = a.engine.item_shape.iter().map(|&d| d as i64).collect();
    if let Some(outs) = &req.outputs {
        if let Some(o) = outs.iter().find(|o| o.name != OUTPUT_NAME) {
            return Err(ApiError::bad(format!(
                "outputs: `{}` is not an output; the model has `{OUTPUT_NAME}`",
                o.name
            )));
        }
    }
    let mut inputs = req.inputs;
    if inputs.len() != 1 {
        return Err(ApiError::bad(format!(
            "inputs: {} given; the model takes exactly one, `{}`",
            inputs.len(),
            m.input.name
        )));
    }
    let input = inputs.remove(0);
    if input.name != m.input.name {
        return Err(ApiError::bad(format!(
            "inputs[0].name: `{}`; the model's input is `{}`",
            input.name, m.input.name
        )));
    }
    if let Some(p) = &input.parameters {
        if p.contains_key("binary_data_size") {
            return Err(ApiError::bad("inputs[0].parameters.binary_data_size: binary tensor data is not supported; send JSON `data`"));
        }
    }
    let shape = &input.shape;
    if let Some(i) = shape.iter().position(|&d| d < 1) {
        return Err(ApiError::bad(format!(
            "inputs[0].shape[{i}]: {}; every dim must be at least 1",
            shape[i]
        )));
    }
    let expect = |dt: &str| {
        let mut e = vec![-1i64];
        e.extend(&item);
        let mut s = format!(
            "inputs[0].shape: {} does not fit the model's input {} ({dt})",
            shape_text(shape),
            shape_text(&e)
        );
        if dt == "UINT8" && item.first() == Some(&1) {
            s.push_str(&format!(
                " or {}",
                shape_text(&[&[-1i64][..], &item[1..]].concat())
            ));
        }
        ApiError::bad(s)
    };
    let datatype = input.datatype.to_ascii_uppercase();
    let fits = |s: &[i64]| s.len() == item.len() + 1 && s[1..] == item[..];
    let n = match datatype.as_str() {
        "FP32" if fits(shape) => shape[0] as usize,
        "UINT8" if fits(shape) => shape[0] as usize,
        "UINT8" if item.first() == Some(&1) && shape.len() == item.len() && shape[1..] == item[1..] => shape[0] as usize,
        "FP32" | "UINT8" => return Err(expect(&datatype)),
        other => {
            return Err(ApiError::bad(format!(
                "inputs[0].datatype: `{other}` is not supported; send FP32 (preprocessed) or UINT8 (raw pixels)"
            )))
        }
    };
    if n > max_batch {
        return Err(ApiError::bad(format!(
            "inputs[0].shape[0]: a batch of {n}; at most {max_batch} per request"
        )));
    }
    let want = n * a.engine.item_len();
    let data = input.data.0;
    if data.len() != want {
        return Err(ApiError::bad(format!(
            "inputs[0].data: {} values for shape {} ({want} expected)",
            data.len(),
            shape_text(shape)
        )));
    }
    let batch = if datatype == "FP32" {
        let mut out = Vec::with_capacity(want);
        for (i, v) in data.into_iter().enumerate() {
            let f = v as f32;
            if !f.is_finite() {
                return Err(ApiError::bad(format!(
                    "inputs[0].data[{i}]: {v} is not a finite FP32 value"
                )));
            }
            out.push(f);
        }
        Batch::F32 { n, data: out }
    } else {
        let mut out = Vec::with_capacity(want);
        for (i, v) in data.into_iter().enumerate() {
            if !(v.fract() == 0.0 && (0.0..=255.0).contains(&v)) {
                return Err(ApiError::bad(format!(
                    "inputs[0].data[{i}]: {v} is not a UINT8 value (an integer 0..255)"
                )));
            }
            out.push(v as u8);
        }
        Batch::U8 { n, data: out }
    };
    Ok((req.id, batch))
}

/// Run a checked batch on `a` (on a worker thread): logits and run time, ms.
pub fn run_batch(a: &Active, batch: Batch) -> Result<(Vec<f32>, usize, f64), String> {
    let (n, data) = match batch {
        Batch::F32 { n, data } => (n, data),
        Batch::U8 { n, data } => (n, a.engine.preprocess_u8(&data)),
    };
    let input = a.engine.tensor(n, data).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let out = a.engine.run(input).map_err(|e| e.to_string())?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let classes = out.shape().get(1).copied().unwrap_or(0);
    let logits: Vec<f32> = out
        .to_plain_array_view::<f32>()
        .map_err(|e| format!("reading the logits: {e}"))?
        .iter()
        .copied()
        .collect();
    Ok((logits, classes, ms))
}

pub async fn infer(
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer_counted(st, name, None, body).await
}

pub async fn infer_v(
    State(st): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer_counted(st, name, Some(version), body).await
}

async fn infer_counted(
    st: AppState,
    name: String,
    version: Option<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let m = &st.shared.metrics;
    m.requests.fetch_add(1, Relaxed);
    match infer_inner(&st, &name, version.as_deref(), body).await {
        Ok(v) => {
            m.ok.fetch_add(1, Relaxed);
            m.observe_request(t0.elapsed().as_secs_f64());
            Json(v).into_response()
        }
        Err(e) => {
            let counter = match e.status {
                StatusCode::SERVICE_UNAVAILABLE => &m.busy,
                s if s.is_client_error() => &m.bad_request,
                _ => &m.errors,
            };
            counter.fetch_add(1, Relaxed);
            if e.status.is_server_error() && e.status != StatusCode::SERVICE_UNAVAILABLE {
                log::error!("infer on `{name}` failed: {}", e.message);
            }
            e.into_response()
        }
    }
}

async fn infer_inner(
    st: &AppState,
    name: &str,
    version: Option<&str>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<InferResponse> {
    let body = body.map_err(|r| {
        ApiError::new(
            r.status(),
            format!("cannot read the request body: {}", r.body_text()),
        )
    })?;
    let active = model_named(st, name, version)?;
    let req: InferRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("invalid infer request: {e}")))?;
    let (id, batch) = check_request(req, &active, st.max_batch)?;
    let n = batch.len();
    let model = active.clone();
    let rx = st
        .pool
        .submit(move || run_batch(&model, batch))
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy: the request queue is full; retry later",
            )
        })?;
    let (logits, classes, ms) = rx
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the inference worker dropped the request",
            )
        })?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("inference failed: {e}"),
            )
        })?;
    st.shared.metrics.observe_run(ms);
    st.shared.adapt.observe(&active.engine, n, ms);
    Ok(InferResponse {
        model_name: active.name().to_string(),
        model_version: active.version().to_string(),
        id,
        outputs: vec![OutputTensor {
            name: OUTPUT_NAME,
            datatype: "FP32",
            shape: [n, classes],
            data: logits,
        }],
    })
}

/// The v2 infer response (FP32 data serialised in its shortest exact form).
#[derive(Serialize)]
pub struct InferResponse {
    model_name: String,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Value>,
    outputs: Vec<OutputTensor>,
}

#[derive(Serialize)]
struct OutputTensor {
    name: &'static str,
    datatype: &'static str,
    shape: [usize; 2],
    data: Vec<f32>,
}

// ---------------------------------------------------------------------------
// Adaptation status and metrics
// ---------------------------------------------------------------------------

pub async fn adaptation(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    // With no model yet, any name shows the (empty) status and the rejections.
    let active = st.shared.current();
    if let Some(a) = &active {
        if a.name() != name {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "model `{name}` is not served here; this server serves `{}`",
                    a.name()
                ),
            ));
        }
    }
    let h = st.shared.history();
    let measured = st.shared.metrics.percentiles();
    let r = active.as_ref().and_then(|a| a.result.as_ref());
    let ad = st.shared.adapt.status().clone();
    let live = st.shared.adapt.config();
    let percentile = live
        .as_ref()
        .map(|c| c.latency_budget.percentile)
        .unwrap_or(st.percentile);
    // The table in force (re-timed when the board changed), else the search's.
    let predicted = active.as_ref().and_then(|a| {
        let s = a.engine.subnet.to_string();
        ad.table
            .iter()
            .find(|t| t.subnet == s)
            .map(|t| t.predicted_ms)
            .or_else(|| a.predicted_ms())
    });
    let budget = ad.budget_ms.or_else(|| {
        r.and_then(|r| {
            live.as_ref()
                .map(|c| c.latency_budget.budget_ms(r.oracle_ms))
        })
    });
    Ok(Json(json!({
        "model_name": active.as_ref().map(|a| a.name().to_string()),
        "active_subnet": active.as_ref().map(|a| a.engine.subnet.to_string()),
        "budget_ms": budget,
        "percentile": percentile,
        "predicted_ms": predicted,
        "measured_ms": measured,
        "oracle_ms": r.map(|r| r.oracle_ms),
        "front": r.map(|r| r.front().to_vec()).unwrap_or_default(),
        "search": {
            "state": h.search.state,
            "bundle_sha256": h.search.bundle_sha256,
            "message": h.search.message,
            "method": r.map(|r| r.method().to_string()),
            "elapsed_s": r.map(|r| r.search_seconds),
        },
        "intake": h.intake,
        "bundle": active.as_ref().map(|a| json!({
            "name": a.name(),
            "version": a.version(),
            "sha256": a.bundle.sha256,
        })),
        "since": active.as_ref().map(|a| crate::clock::rfc3339(a.since)),
        "rejected": h.rejected,
        "swaps": h.swaps,
        "environment": ad.environment,
        "policy": {
            "slowdown": ad.slowdown,
            "table_source": ad.table_source,
            "retimed_at": ad.retimed_at,
            "table": ad.table,
            "config": live.as_ref().map(|c| &c.policy),
        },
        "decisions": ad.decisions,
        "decision_counts": ad.counts,
        "plans": ad.plans,
        "reloads": ad.reloads,
    })))
}

pub async fn metrics(State(st): State<AppState>) -> Response {
    let active = st.shared.current();
    let subnet = active.as_ref().map(|a| a.engine.subnet.to_string());
    let mut text = st.shared.metrics.render(
        active
            .as_ref()
            .map(|a| (a.name(), a.version(), subnet.as_deref().unwrap_or(""))),
        st.pool.in_flight(),
    );
    crate::metrics::render_adaptation(&mut text, &st.shared.adapt.status());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
