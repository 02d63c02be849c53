//! The Triton extensions that stock Triton tooling calls: inference
//! statistics (`/v2/models/{name}/stats`, `/v2/models/stats`), the model
//! configuration (`/v2/models/{name}/config`) and the model repository's
//! load/unload, which `adaptived` does not offer (bundles are installed by
//! dropping a signed bundle into `bundle_dir`): those answer 501 with the
//! reason, and `/v2` does not advertise `model_repository`.

use std::sync::atomic::Ordering::Relaxed;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::v2::{model_named, ApiError, OUTPUT_NAME};
use super::AppState;
use crate::shared::Active;

type ApiResult<T> = Result<T, ApiError>;

fn stats_of(st: &AppState, a: &Active) -> Value {
    let s = &st.shared.metrics.infer;
    let zero = json!({ "count": 0, "ns": 0 });
    json!({
        "name": a.name(),
        "version": a.version().to_string(),
        "last_inference": s.last_inference_ms.load(Relaxed),
        "inference_count": s.inference_count.load(Relaxed),
        "execution_count": s.execution_count.load(Relaxed),
        "inference_stats": {
            "success": s.success.json(),
            "fail": s.fail.json(),
            "queue": s.queue.json(),
            "compute_input": s.compute_input.json(),
            "compute_infer": s.compute_infer.json(),
            "compute_output": s.compute_output.json(),
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "batch_stats": [],
        "memory_usage": [],
    })
}

/// `GET /v2/models/stats`: every served model (zero or one).
pub async fn all_stats(State(st): State<AppState>) -> Json<Value> {
    let stats: Vec<Value> = st
        .shared
        .current()
        .map(|a| stats_of(&st, &a))
        .into_iter()
        .collect();
    Json(json!({ "model_stats": stats }))
}

/// `GET /v2/models/{name}/stats`.
pub async fn model_stats(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let a = model_named(&st, &name, None)?;
    Ok(Json(json!({ "model_stats": [stats_of(&st, &a)] })))
}

/// `GET /v2/models/{name}/versions/{version}/stats`.
pub async fn model_stats_v(
    State(st): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let a = model_named(&st, &name, Some(&version))?;
    Ok(Json(json!({ "model_stats": [stats_of(&st, &a)] })))
}

fn config_of(st: &AppState, a: &Active) -> Value {
    let m = &a.bundle.manifest;
    let format = match m.input.layout.to_ascii_uppercase().as_str() {
        "NCHW" => "FORMAT_NCHW",
        "NHWC" => "FORMAT_NHWC",
        _ => "FORMAT_NONE",
    };
    json!({
        "name": a.name(),
        "platform": "onnx_tract",
        "backend": "tract",
        "version_policy": { "specific": { "versions": [a.version()] } },
        "max_batch_size": st.max_batch,
        "input": [{
            "name": m.input.name,
            "data_type": "TYPE_FP32",
            "format": format,
            "dims": a.engine.item_shape,
        }],
        "output": [{
            "name": OUTPUT_NAME,
            "data_type": "TYPE_FP32",
            "dims": [a.engine.classes],
            "label_filename": "",
        }],
        "parameters": {
            "subnet": { "string_value": a.engine.subnet.to_string() },
            "uint8_input": { "string_value": super::v2::uint8_note(&a.engine) },
        },
    })
}

/// `GET /v2/models/{name}/config`: Triton's model configuration shape.
pub async fn model_config(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let a = model_named(&st, &name, None)?;
    Ok(Json(config_of(&st, &a)))
}

/// `GET /v2/models/{name}/versions/{version}/config`.
pub async fn model_config_v(
    State(st): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let a = model_named(&st, &name, Some(&version))?;
    Ok(Json(config_of(&st, &a)))
}

/// `POST /v2/repository/models/{name}/load` and `.../unload`: not offered.
pub async fn repository_change(Path(name): Path<String>) -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "loading or unloading `{name}` through the API is not supported: adaptived serves the newest valid signed bundle dropped into its bundle_dir (it replaces the served model atomically)"
        ),
    )
}
