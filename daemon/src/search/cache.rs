//! Search results stored under the state directory, keyed by the bundle's
//! sha256 and the device fingerprint (CPU model, core count, architecture,
//! tract version, evaluation threads). The stored file also names the search
//! data (a hash of the images and labels): a different data set is a miss.
//! Measured latencies and held-out accuracies of chosen subnets are added to
//! the same file, so a second run with the same inputs does no work.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use adaptivenet_onnx::bundle::sha256_hex;
use adaptivenet_onnx::dataset::Dataset;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::latency::{LatencyTable, PredictionCheck};
use super::strategy::{Outcome, SearchParams};

/// Bumped when the stored format, or the search that made it, changes.
pub const CACHE_FORMAT: u32 = 2;

/// The device fingerprint with the evaluation thread count.
pub fn fingerprint(threads: usize) -> String {
    format!(
        "{} threads-{threads}",
        crate::search_api::device_fingerprint()
    )
}

/// A hash naming a data set (items, shape and labels).
pub fn data_id(data: &Dataset) -> String {
    let mut bytes: Vec<u8> = Vec::with_capacity(data.data.len() * 4 + 64);
    for d in &data.item_shape {
        bytes.extend((*d as u64).to_le_bytes());
    }
    for x in &data.data {
        bytes.extend(x.to_bits().to_le_bytes());
    }
    if let Some(l) = &data.labels {
        bytes.push(1);
        for x in l {
            bytes.extend(x.to_le_bytes());
        }
    }
    format!("{}x{}", data.len(), &sha256_hex(&bytes)[..16])
}

/// The stored search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cached {
    pub format: u32,
    pub bundle_sha256: String,
    pub fingerprint: String,
    /// [`data_id`] of the search data.
    pub data: String,
    /// Restriction of the branch kinds (`all` or e.g. `merge`).
    pub space: String,
    pub params: SearchParams,
    pub table: LatencyTable,
    pub check: PredictionCheck,
    pub outcome: Outcome,
    /// Measured (materialised, batch 1) latency of the oracle path, ms.
    pub oracle_ms: f64,
    /// The oracle path's accuracy on the search data.
    pub oracle_accuracy: f64,
    /// Peak bytes the prefix tree may hold in cut tensors.
    pub cache_bound_bytes: usize,
    /// Wall time of the search that produced this, s.
    pub search_seconds: f64,
    /// Subnet -> measured ms (materialised, batch 1).
    #[serde(default)]
    pub measured: BTreeMap<String, f64>,
    /// Held-out data id -> subnet -> accuracy.
    #[serde(default)]
    pub holdout: BTreeMap<String, BTreeMap<String, f64>>,
}

/// Where the result for (bundle, fingerprint) lives.
pub fn cache_path(state_dir: &Path, bundle_sha256: &str, fingerprint: &str) -> PathBuf {
    let fp = sha256_hex(fingerprint.as_bytes());
    let sha = bundle_sha256.get(..16).unwrap_or(bundle_sha256);
    state_dir
        .join("search")
        .join(format!("{sha}-{}.json", &fp[..12]))
}

/// Load a stored result if it matches; `Err` text says why not (a miss).
pub fn load(
    path: &Path,
    bundle_sha256: &str,
    fingerprint: &str,
    data: &str,
    space: &str,
    params: &SearchParams,
) -> std::result::Result<Cached, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let c: Cached =
        serde_json::from_str(&text).map_err(|e| format!("{}: unreadable: {e}", path.display()))?;
    let check = |what: &str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(format!("{}: made for another {what}", path.display()))
        }
    };
    check("format", c.format == CACHE_FORMAT)?;
    check("bundle", c.bundle_sha256 == bundle_sha256)?;
    check("device", c.fingerprint == fingerprint)?;
    check("search data set", c.data == data)?;
    check("search space", c.space == space)?;
    check("set of search parameters", &c.params == params)?;
    Ok(c)
}

/// Store atomically (write a temp file, then rename).
pub fn store(path: &Path, c: &Cached) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let text = serde_json::to_string(c)?;
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
