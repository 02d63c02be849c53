//! Handlers of the KServe v2 / Open Inference Protocol (HTTP/JSON), the
//! `/adaptation` status and `/metrics`. Inputs are checked against the
//! served bundle's input spec; a malformed request gets a 400 with a JSON
//! `{"error": "..."}` that names the problem.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use adaptivenet_onnx::ImageLayout;

use super::codec::{self, Decoded, InputData, Output, OutputData, WireHeaders};
use super::AppState;
use crate::shared::{Active, Shared};

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
    pub fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
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

pub type ApiResult<T> = Result<T, ApiError>;

fn no_model() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no model is loaded yet: drop a bundle into the bundle directory",
    )
}

/// The active model if `name` (and `version`, when given) names it.
pub fn model_named(st: &AppState, name: &str, version: Option<&str>) -> ApiResult<Arc<Active>> {
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
        "extensions": [
            "binary_tensor_data",
            "classification",
            "statistics",
            "model_configuration",
            "adaptation",
            "metrics",
        ],
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

/// How UINT8 pixels are accepted (model metadata and Triton's config).
pub fn uint8_note(e: &crate::engine::Engine) -> String {
    let shape = |item: &[usize]| {
        let mut s = vec![-1i64];
        s.extend(item.iter().map(|&d| d as i64));
        shape_text(&s)
    };
    match (e.layout, e.chw()) {
        (Some(l), Some(chw)) => format!(
            "accepted: raw pixels in [0, 255] as {} ({l}) or {} ({}; set inputs[].parameters.layout, or the shape decides), normalised per channel with the bundle's mean/std",
            shape(&e.item_shape),
            shape(&l.other().item_shape(chw)),
            l.other()
        ),
        _ => "accepted: raw pixels in [0, 255], normalised with the bundle's mean/std".into(),
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
            "uint8_input": uint8_note(&a.engine),
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

/// One output the client asked for.
pub struct OutputPlan {
    /// In the binary section (`binary_data`, else the request's
    /// `binary_data_output`).
    pub binary: bool,
    /// Classification (`classification`, as Triton's clients send it, or
    /// `class_count`): the top `k` as `"score:index:label"` strings.
    pub class_count: Option<usize>,
}

/// A request checked against the model.
pub struct Checked {
    pub id: Option<Value>,
    pub batch: Batch,
    pub outputs: Vec<OutputPlan>,
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

/// Which outputs to produce, and how.
fn plan_outputs(dec: &Decoded) -> ApiResult<Vec<OutputPlan>> {
    let Some(outs) = &dec.outputs else {
        return Ok(vec![OutputPlan {
            binary: dec.binary_output,
            class_count: None,
        }]);
    };
    let mut plans = Vec::with_capacity(outs.len());
    for (i, o) in outs.iter().enumerate() {
        if o.name != OUTPUT_NAME {
            return Err(ApiError::bad(format!(
                "outputs[{i}].name: `{}` is not an output; the model has `{OUTPUT_NAME}`",
                o.name
            )));
        }
        let binary = match o.parameters.as_ref().and_then(|p| p.get("binary_data")) {
            None => dec.binary_output,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(ApiError::bad(format!(
                    "outputs[{i}].parameters.binary_data: {v} is not true or false"
                )))
            }
        };
        // Triton's clients send `classification`; KServe documents `class_count`.
        let mut class_count = None;
        for key in ["classification", "class_count"] {
            if let Some(k) = codec::param_usize(&o.parameters, key)
                .map_err(|e| ApiError::bad(format!("outputs[{i}].parameters.{e}")))?
            {
                class_count = Some(k).filter(|&k| k > 0);
                break;
            }
        }
        plans.push(OutputPlan {
            binary,
            class_count,
        });
    }
    Ok(plans)
}

/// Check a decoded request against the served model's input spec.
pub fn check_request(dec: Decoded, a: &Active, max_batch: usize) -> ApiResult<Checked> {
    let m = &a.bundle.manifest;
    let outputs = plan_outputs(&dec)?;
    let mut inputs = dec.inputs;
    if inputs.len() != 1 {
        return Err(ApiError::bad(format!(
            "inputs: {} given; the model takes exactly one, `{}`",
            inputs.len(),
            m.input.name
        )));
    }
    let (input, data) = inputs.remove(0);
    if input.name != m.input.name {
        return Err(ApiError::bad(format!(
            "inputs[0].name: `{}`; the model's input is `{}`",
            input.name, m.input.name
        )));
    }
    let shape = &input.shape;
    if let Some(i) = shape.iter().position(|&d| d < 1) {
        return Err(ApiError::bad(format!(
            "inputs[0].shape[{i}]: {}; every dim must be at least 1",
            shape[i]
        )));
    }
    let datatype = input.datatype.to_ascii_uppercase();
    if !matches!(datatype.as_str(), "FP32" | "UINT8") {
        return Err(ApiError::bad(format!(
            "inputs[0].datatype: `{}` is not supported; send FP32 (preprocessed) or UINT8 (raw pixels)",
            input.datatype
        )));
    }
    let asked = requested_layout(&input.parameters)?;
    let (n, from) = match_shape(shape, &datatype, asked, &a.engine, &m.input.layout)?;
    if n > max_batch {
        return Err(ApiError::bad(format!(
            "inputs[0].shape[0]: a batch of {n}; at most {max_batch} per request"
        )));
    }
    let want = n * a.engine.item_len();
    let batch = match data {
        InputData::Raw(raw) => {
            let size = if datatype == "FP32" { 4 } else { 1 };
            if raw.len() != want * size {
                return Err(ApiError::bad(format!(
                    "inputs[0].parameters.binary_data_size: {} bytes; shape {} of {datatype} needs {} bytes",
                    raw.len(),
                    shape_text(shape),
                    want * size
                )));
            }
            if datatype == "FP32" {
                let mut out = Vec::with_capacity(want);
                for (i, c) in raw.chunks_exact(4).enumerate() {
                    let f = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    if !f.is_finite() {
                        return Err(ApiError::bad(format!(
                            "inputs[0] binary data, element {i}: {f} is not a finite FP32 value"
                        )));
                    }
                    out.push(f);
                }
                Batch::F32 { n, data: out }
            } else {
                Batch::U8 { n, data: raw }
            }
        }
        InputData::Json(data) => {
            if data.len() != want {
                return Err(ApiError::bad(format!(
                    "inputs[0].data: {} values for shape {} ({want} expected)",
                    data.len(),
                    shape_text(shape)
                )));
            }
            if datatype == "FP32" {
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
            }
        }
    };
    // Raw pixels in the other layout: rewritten into the model's.
    let batch = match (batch, from, a.engine.layout, a.engine.chw()) {
        (Batch::U8 { n, data }, Some(from), Some(to), Some(chw)) if from != to => Batch::U8 {
            n,
            data: from.transpose(to, &data, chw),
        },
        (b, ..) => b,
    };
    Ok(Checked {
        id: dec.id,
        batch,
        outputs,
    })
}

/// `inputs[0].parameters.layout`: the layout raw pixels are sent in.
fn requested_layout(p: &Option<serde_json::Map<String, Value>>) -> ApiResult<Option<ImageLayout>> {
    match p.as_ref().and_then(|p| p.get("layout")) {
        None => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|e| ApiError::bad(format!("inputs[0].parameters.layout: {e}"))),
        Some(v) => Err(ApiError::bad(format!(
            "inputs[0].parameters.layout: {v} is not a string; expected \"NCHW\" or \"NHWC\""
        ))),
    }
}

/// Match a request's shape to the model's input: the batch size and, for
/// UINT8 images, the layout the pixels come in (`None`: the model's own).
///
/// FP32 (preprocessed) must be in the model's layout. UINT8 may also come
/// in the other image layout (`[N, H, W, C]` for an NCHW model, as image
/// decoders produce it, or `[N, C, H, W]` for an NHWC one), and a grey
/// image without its channel axis (`[N, H, W]`). `parameters.layout` names
/// the layout; without it the shape decides, and a shape that fits both
/// layouts (C = H = W) is taken in the model's.
fn match_shape(
    shape: &[i64],
    datatype: &str,
    asked: Option<ImageLayout>,
    engine: &crate::engine::Engine,
    model_layout: &str,
) -> ApiResult<(usize, Option<ImageLayout>)> {
    let dims = |item: &[usize]| -> Vec<i64> {
        std::iter::once(-1)
            .chain(item.iter().map(|&d| d as i64))
            .collect()
    };
    let fits = |item: &[usize]| shape.len() == item.len() + 1 && shape[1..] == dims(item)[1..];
    let n = shape.first().map_or(0, |&d| d as usize);
    let own = engine.layout;
    let chw = engine.chw();
    if asked.is_some() && own.is_none() {
        return Err(ApiError::bad(format!(
            "inputs[0].parameters.layout: the model's input ({model_layout}) is not an image; drop the parameter"
        )));
    }
    if datatype == "FP32" {
        if let (Some(l), Some(own)) = (asked, own) {
            if l != own {
                return Err(ApiError::bad(format!(
                    "inputs[0].parameters.layout: FP32 input is taken in the model's layout {own} only; send raw pixels as UINT8 in {l}, or FP32 in {own}"
                )));
            }
        }
        if fits(&engine.item_shape) {
            return Ok((n, None));
        }
        return Err(ApiError::bad(format!(
            "inputs[0].shape: {} does not fit the model's input {} (FP32, {model_layout})",
            shape_text(shape),
            shape_text(&dims(&engine.item_shape))
        )));
    }
    // UINT8: the layouts it may come in, the model's first.
    let mut accepted: Vec<(Option<ImageLayout>, Vec<usize>)> =
        vec![(own, engine.item_shape.clone())];
    if let (Some(own), Some(chw)) = (own, chw) {
        accepted.push((Some(own.other()), own.other().item_shape(chw)));
    }
    let grey = match chw {
        Some((1, h, w)) => Some(vec![h, w]),
        None if engine.item_shape.first() == Some(&1) => Some(engine.item_shape[1..].to_vec()),
        _ => None,
    };
    let candidates: Vec<&(Option<ImageLayout>, Vec<usize>)> = accepted
        .iter()
        .filter(|(l, _)| asked.is_none() || *l == asked)
        .collect();
    if let Some((l, _)) = candidates.iter().find(|(_, item)| fits(item)) {
        return Ok((n, *l));
    }
    if grey.as_deref().is_some_and(fits) {
        return Ok((n, own));
    }
    let mut options: Vec<String> = candidates
        .iter()
        .map(|(l, item)| match l {
            Some(l) => format!("{} ({l})", shape_text(&dims(item))),
            None => shape_text(&dims(item)),
        })
        .collect();
    if let Some(g) = &grey {
        options.push(format!("{} (grey)", shape_text(&dims(g))));
    }
    let how = match asked {
        Some(l) => format!("UINT8 with parameters.layout {l}"),
        None => "UINT8".to_string(),
    };
    Err(ApiError::bad(format!(
        "inputs[0].shape: {} does not fit the model's input as {how}: {}",
        shape_text(shape),
        options.join(" or ")
    )))
}

/// Run a checked batch on `a` (on a worker thread): logits, classes and the
/// model's run time, ms.
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

/// The classification extension: for each item the top `k` scores as
/// `"score:index:label"` (`"score:index"` without labels), best first.
pub fn classify(logits: &[f32], classes: usize, k: usize, labels: &[String]) -> Vec<String> {
    let k = k.min(classes);
    let mut out = Vec::new();
    if classes == 0 {
        return out;
    }
    for row in logits.chunks(classes) {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for &i in idx.iter().take(k) {
            out.push(match labels.get(i) {
                Some(l) => format!("{}:{i}:{l}", row[i]),
                None => format!("{}:{i}", row[i]),
            });
        }
    }
    out
}

/// What a worker hands back for one infer request.
struct Done {
    body: Vec<u8>,
    header_len: Option<usize>,
    coding: codec::Coding,
    timings: Timings,
}

/// What one served request cost, for Triton's statistics and the metrics.
pub struct Timings {
    /// Items in the batch.
    pub batch: usize,
    /// The model's run, ms.
    pub run_ms: f64,
    pub queue_ns: u64,
    pub input_ns: u64,
    pub infer_ns: u64,
    pub output_ns: u64,
}

/// A checked request after the model ran: the outputs it asked for.
pub struct Executed {
    pub id: Option<Value>,
    pub outputs: Vec<Output>,
    pub batch: usize,
    pub run_ms: f64,
    /// Decoding, checking and preprocessing, ns (Triton's compute_input).
    pub input_ns: u64,
    /// The model's run, ns (compute_infer).
    pub infer_ns: u64,
    /// When the model's run ended (compute_output counts from here).
    pub ran_at: Instant,
}

pub fn ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Run a checked request on `model` (on a worker) and build the outputs
/// it asked for; `t0` is when its decoding began. Shared by HTTP and gRPC.
pub fn execute(model: &Active, checked: Checked, t0: Instant) -> ApiResult<Executed> {
    let n = checked.batch.len();
    let t1 = Instant::now();
    let (logits, classes, run_ms) = run_batch(model, checked.batch).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("inference failed: {e}"),
        )
    })?;
    let t2 = Instant::now();
    // The model's run (run_ms) is compute_infer; preprocessing counts as input.
    let infer_ns = ((run_ms * 1e6) as u64).min(ns(t2 - t1));
    let input_ns = ns(t1 - t0) + ns(t2 - t1) - infer_ns;
    let labels = &model.bundle.manifest.input.labels;
    let outputs: Vec<Output> = checked
        .outputs
        .iter()
        .map(|o| match o.class_count {
            Some(k) => Output {
                name: OUTPUT_NAME.into(),
                shape: vec![n, k.min(classes)],
                data: OutputData::Bytes(classify(&logits, classes, k, labels)),
                binary: o.binary,
            },
            None => Output {
                name: OUTPUT_NAME.into(),
                shape: vec![n, classes],
                data: OutputData::F32(logits.clone()),
                binary: o.binary,
            },
        })
        .collect();
    Ok(Executed {
        id: checked.id,
        outputs,
        batch: n,
        run_ms,
        input_ns,
        infer_ns,
        ran_at: t2,
    })
}

/// The whole HTTP request on a worker: decompress, decode (JSON or
/// binary), check, run, encode the answer.
fn work(
    model: &Active,
    body: Bytes,
    wire: WireHeaders,
    max_batch: usize,
    queued: Instant,
) -> ApiResult<Done> {
    let t0 = Instant::now();
    let queue_ns = ns(t0 - queued);
    let plain = codec::decompress(wire.coding, &body)?;
    drop(body);
    let dec = codec::decode_request(&plain, wire.header_len)?;
    drop(plain);
    let checked = check_request(dec, model, max_batch)?;
    let ex = execute(model, checked, t0)?;
    let version = model.version().to_string();
    let (body, header_len) =
        codec::encode_response(model.name(), &version, ex.id.as_ref(), &ex.outputs)?;
    let body = codec::compress(wire.answer_coding, body);
    Ok(Done {
        body,
        header_len,
        coding: wire.answer_coding,
        timings: Timings {
            batch: ex.batch,
            run_ms: ex.run_ms,
            queue_ns,
            input_ns: ex.input_ns,
            infer_ns: ex.infer_ns,
            output_ns: ns(ex.ran_at.elapsed()),
        },
    })
}

/// Count a request that arrived (HTTP or gRPC).
pub fn record_arrival(shared: &Shared) {
    shared.metrics.requests.fetch_add(1, Relaxed);
}

/// Count a served request: the metrics, Triton's statistics and the
/// adaptation loop's latency window. `total` is its whole time.
pub fn record_success(shared: &Shared, active: &Active, t: &Timings, total: std::time::Duration) {
    let m = &shared.metrics;
    m.ok.fetch_add(1, Relaxed);
    m.observe_request(total.as_secs_f64());
    let s = &m.infer;
    s.success.add(ns(total));
    s.queue.add(t.queue_ns);
    s.compute_input.add(t.input_ns);
    s.compute_infer.add(t.infer_ns);
    s.compute_output.add(t.output_ns);
    s.inference_count.fetch_add(t.batch as u64, Relaxed);
    s.execution_count.fetch_add(1, Relaxed);
    s.last_inference_ms.store(crate::clock::unix_ms(), Relaxed);
    m.observe_run(t.run_ms);
    shared.adapt.observe(&active.engine, t.batch, t.run_ms);
}

/// Count a failed request by its kind (busy, bad request, server error);
/// server errors are logged.
pub fn record_failure(shared: &Shared, name: &str, e: &ApiError, total: std::time::Duration) {
    let m = &shared.metrics;
    m.infer.fail.add(ns(total));
    let counter = match e.status {
        StatusCode::SERVICE_UNAVAILABLE => &m.busy,
        s if s.is_client_error() => &m.bad_request,
        _ => &m.errors,
    };
    counter.fetch_add(1, Relaxed);
    if e.status.is_server_error() && e.status != StatusCode::SERVICE_UNAVAILABLE {
        log::error!("infer on `{name}` failed: {}", e.message);
    }
}

/// The answer when the worker pool's queue is full.
pub fn busy() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is busy: the request queue is full; retry later",
    )
}

/// The answer when a worker dropped the job (it panicked).
pub fn dropped() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the inference worker dropped the request",
    )
}

pub async fn infer(
    State(st): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer_counted(st, name, None, headers, body).await
}

pub async fn infer_v(
    State(st): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer_counted(st, name, Some(version), headers, body).await
}

async fn infer_counted(
    st: AppState,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    record_arrival(&st.shared);
    match infer_inner(&st, &name, version.as_deref(), &headers, body).await {
        Ok((active, done)) => {
            record_success(&st.shared, &active, &done.timings, t0.elapsed());
            let mut r = Response::new(axum::body::Body::from(done.body));
            let h = r.headers_mut();
            if let Some(n) = done.header_len {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                h.insert(codec::HEADER_LENGTH, HeaderValue::from(n));
            } else {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            if let Some(c) = codec::coding_header(done.coding) {
                h.insert(header::CONTENT_ENCODING, c);
            }
            r
        }
        Err(e) => {
            record_failure(&st.shared, &name, &e, t0.elapsed());
            e.into_response()
        }
    }
}

async fn infer_inner(
    st: &AppState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(Arc<Active>, Done)> {
    let body = body.map_err(|r| {
        ApiError::new(
            r.status(),
            format!("cannot read the request body: {}", r.body_text()),
        )
    })?;
    let wire = WireHeaders::from_headers(headers)?;
    let active = model_named(st, name, version)?;
    let model = active.clone();
    let max_batch = st.max_batch;
    let queued = Instant::now();
    // Decoding a large JSON body takes long: it runs on a worker with the
    // model, never on the async threads that answer health checks.
    let rx = st
        .pool
        .submit(move || work(&model, body, wire, max_batch, queued))
        .map_err(|_| busy())?;
    let done = rx.await.map_err(|_| dropped())??;
    Ok((active, done))
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
    // Accuracy in percent everywhere: the oracle's, the served subnet's and
    // what the board gives up for speed, with the sample sizes.
    let served = active
        .as_ref()
        .and_then(|a| r.and_then(|r| r.point(&a.engine.subnet)));
    // Without local data (an oracle-only result, 0 images) nothing was
    // measured: the percentages are null, not the placeholder 100%.
    let pct = |f: f64| (f * 1e4).round() / 100.0;
    let accuracy = r.map(|r| {
        let measured = r.images > 0;
        let served = served.filter(|_| measured);
        json!({
            "unit": "percent",
            "measured": measured,
            "oracle_pct": measured.then(|| pct(r.oracle_accuracy)),
            "served_pct": served.map(|p| pct(p.accuracy)),
            "given_up_pct": served.map(|p| pct(r.oracle_accuracy - p.accuracy)),
            "oracle_images": r.images,
            "served_images": served.map(|p| p.images),
            "data": r.data,
        })
    });
    Ok(Json(json!({
        "model_name": active.as_ref().map(|a| a.name().to_string()),
        "accuracy": accuracy,
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
            "progress": h.search.progress,
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
    let intake = st.shared.history().intake.clone();
    crate::metrics::render_health(
        &mut text,
        &st.shared.liveness,
        &intake,
        crate::clock::unix_ms(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
