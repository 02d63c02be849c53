//! The seam between the daemon and the on-device search.
//!
//! The daemon calls one function of type [`SearchFn`] on a background thread
//! for every newly installed bundle that has no stored result:
//! `fn(&Bundle, &SearchInput) -> Result<SearchResult, SearchError>`. It then
//! persists the [`SearchResult`] (keyed by the bundle's sha256 and the device
//! fingerprint, so a restart does not search again) and swaps the `chosen`
//! subnet in. [`default_search`] is the one place that picks the function:
//! until `daemon/src/search/` lands it is [`oracle_only`], which serves the
//! bundle's oracle path (all original branches).

use std::sync::Arc;
use std::time::Instant;

use adaptivenet_onnx::bundle::{Bundle, SubnetId};
use adaptivenet_onnx::dataset::{Dataset, Preprocess};
use serde::{Deserialize, Serialize};

use crate::config::{LatencyBudget, ValidationData};
use crate::engine::Engine;

/// One point of the Pareto front.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrontPoint {
    pub subnet: SubnetId,
    /// Predicted batch-1 latency on this device, ms.
    pub predicted_ms: f64,
    /// Top-1 accuracy on the validation data (or agreement with the oracle
    /// path when it has no labels), in [0, 1].
    pub accuracy: f64,
}

/// What a search produces.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    /// The bundle searched (sha256 of the bundle file).
    pub bundle_sha256: String,
    /// The device it was measured on ([`device_fingerprint`]).
    pub fingerprint: String,
    /// The Pareto front, by increasing predicted latency.
    pub front: Vec<FrontPoint>,
    /// The front point chosen for the budget.
    pub chosen: SubnetId,
    /// The budget the choice was made for, ms.
    pub budget_ms: f64,
    /// Measured latency of the oracle path, ms.
    pub oracle_ms: f64,
    /// How the result was obtained (`oracle-only`, `exhaustive`, `evolutionary`...).
    pub method: String,
    /// Wall time of the search, seconds.
    pub elapsed_s: f64,
}

impl SearchResult {
    /// The front point of the chosen subnet, if listed.
    pub fn chosen_point(&self) -> Option<&FrontPoint> {
        self.front.iter().find(|p| p.subnet == self.chosen)
    }
}

/// What the search gets besides the bundle.
#[derive(Clone, Debug)]
pub struct SearchInput {
    pub budget: LatencyBudget,
    /// Local data, already preprocessed for this bundle.
    pub validation: Option<Arc<Dataset>>,
    /// Threads the search may use.
    pub threads: usize,
    /// [`device_fingerprint`], to put in the result.
    pub fingerprint: String,
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
#[error("search: {0}")]
pub struct SearchError(pub String);

/// The search function the daemon calls.
pub type SearchFn =
    Arc<dyn Fn(&Bundle, &SearchInput) -> Result<SearchResult, SearchError> + Send + Sync>;

/// The search the daemon runs for every installed bundle without a stored result.
pub fn default_search() -> SearchFn {
    // The on-device search (latency table, prefix-tree accuracy, evolutionary
    // or exhaustive search, Pareto front); without validation data it falls
    // back to `oracle_only`.
    Arc::new(crate::search::pipeline::search_for_daemon)
}

/// The stand-in search: the front is the oracle path alone, its latency
/// measured here (median of batch-1 runs), its accuracy 1.0 by definition
/// (agreement with itself).
pub fn oracle_only(bundle: &Bundle, input: &SearchInput) -> Result<SearchResult, SearchError> {
    let t = Instant::now();
    let oracle = bundle.manifest.oracle_subnet();
    let engine = Engine::build(bundle, &oracle).map_err(|e| SearchError(e.to_string()))?;
    let oracle_ms = engine
        .time_batch1(5, 31)
        .map_err(|e| SearchError(e.to_string()))?;
    Ok(SearchResult {
        bundle_sha256: bundle.sha256.clone(),
        fingerprint: input.fingerprint.clone(),
        front: vec![FrontPoint {
            subnet: oracle.clone(),
            predicted_ms: oracle_ms,
            accuracy: 1.0,
        }],
        chosen: oracle,
        budget_ms: input.budget.budget_ms(oracle_ms),
        oracle_ms,
        method: "oracle-only (no on-device search in this build)".into(),
        elapsed_s: t.elapsed().as_secs_f64(),
    })
}

/// Load the configured validation data with the bundle's preprocessing.
pub fn load_validation(v: &ValidationData, bundle: &Bundle) -> Result<Dataset, String> {
    let pp = &bundle.manifest.input.preprocess;
    let pre = Preprocess {
        mean: pp.mean.clone(),
        std: pp.std.clone(),
    };
    let mut d = if v.is_npy() {
        Dataset::from_npy(&v.images, v.labels.as_deref()).map_err(|e| e.to_string())?
    } else {
        Dataset::from_idx(&v.images, v.labels.as_deref(), &pre, 0..v.limit)
            .map_err(|e| e.to_string())?
    };
    if d.len() > v.limit {
        let k: usize = d.item_shape.iter().product();
        d.data.truncate(v.limit * k);
        if let Some(l) = d.labels.as_mut() {
            l.truncate(v.limit);
        }
    }
    Ok(d)
}

/// A short string naming this device for caching search results: CPU model,
/// logical CPUs, architecture and the tract version.
pub fn device_fingerprint() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| {
                    l.starts_with("model name")
                        || l.starts_with("Model")
                        || l.starts_with("Hardware")
                })
                .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        })
        .unwrap_or_else(|| "unknown-cpu".into());
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!(
        "{cpu} x{n} {} tract-{}",
        std::env::consts::ARCH,
        adaptivenet_onnx::TRACT_VERSION
    )
}
