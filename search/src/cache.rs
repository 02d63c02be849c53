//! The one stored form of a search: [`SearchResult`], written atomically and
//! durably under `STATE_DIR/search/`, keyed by the bundle's sha256 and the
//! device fingerprint (CPU model, core count, architecture, tract version,
//! evaluation threads). The record also names the search data (a hash of
//! the images and labels), the space and the parameters: a caller that asks
//! for other ones gets a miss. Measured latencies and held-out accuracies of
//! chosen subnets are added to the same record, so a second run with the
//! same inputs does no work and the daemon restores its choice without
//! measuring.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use adaptivenet_onnx::bundle::{sha256_hex, SubnetId};
use adaptivenet_onnx::dataset::Dataset;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SearchError};
use crate::front::{choose, Choice, FrontPoint};
use crate::latency::{LatencyTable, PredictionCheck};
use crate::strategy::{Outcome, SearchParams};

/// Bumped when the stored format, or the search that made it, changes.
pub const CACHE_FORMAT: u32 = 3;

/// The `data` of a result made without local data (oracle path only).
pub const NO_DATA: &str = "none";

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

/// One search of one bundle on one device: what the daemon serves from,
/// what `adaptived search` reports, what the cache holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    pub format: u32,
    pub bundle_sha256: String,
    /// [`crate::fingerprint`] of the device and thread count.
    pub fingerprint: String,
    /// [`data_id`] of the search data ([`NO_DATA`] when there was none).
    pub data: String,
    /// Restriction of the branch kinds (`all` or e.g. `merge`).
    pub space: String,
    pub params: SearchParams,
    /// The latency table (absent when there was no data to search on).
    pub table: Option<LatencyTable>,
    /// The check of predicted against measured subnet latency.
    pub check: Option<PredictionCheck>,
    /// The strategy's points and the Pareto front.
    pub outcome: Outcome,
    /// Measured (materialised, batch 1) latency of the oracle path, ms.
    pub oracle_ms: f64,
    /// The oracle path's accuracy on the search data (1 without data: it
    /// agrees with itself).
    pub oracle_accuracy: f64,
    /// Images the accuracies were measured on.
    pub images: u64,
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

impl SearchResult {
    /// A result that is only a front (no latency table, no search data):
    /// the oracle-only result, or a front measured elsewhere. `oracle_ms` is
    /// the oracle path's measured latency.
    pub fn of_front(
        bundle_sha256: &str,
        fingerprint: &str,
        front: Vec<FrontPoint>,
        oracle_ms: f64,
        method: &str,
    ) -> SearchResult {
        SearchResult {
            format: CACHE_FORMAT,
            bundle_sha256: bundle_sha256.to_string(),
            fingerprint: fingerprint.to_string(),
            data: NO_DATA.into(),
            space: "all".into(),
            params: SearchParams::default(),
            table: None,
            check: None,
            outcome: Outcome {
                method: method.to_string(),
                points: front.clone(),
                front,
                evaluations: 0,
                generations: 0,
                tree_runs: 0,
                naive_runs: 0,
                seconds: 0.0,
                phases: Default::default(),
            },
            oracle_ms,
            oracle_accuracy: 1.0,
            images: 0,
            cache_bound_bytes: 0,
            search_seconds: 0.0,
            measured: BTreeMap::new(),
            holdout: BTreeMap::new(),
        }
    }

    /// The Pareto front, by increasing predicted latency.
    pub fn front(&self) -> &[FrontPoint] {
        &self.outcome.front
    }

    /// How the front was found (`exhaustive`, `evolutionary (...)`, `oracle-only`).
    pub fn method(&self) -> &str {
        &self.outcome.method
    }

    /// The front point of `subnet`, if on the front.
    pub fn point(&self, subnet: &SubnetId) -> Option<&FrontPoint> {
        self.front().iter().find(|p| p.subnet == *subnet)
    }

    /// The measured latency of `subnet`, when it was measured.
    pub fn measured_ms(&self, subnet: &SubnetId) -> Option<f64> {
        self.measured.get(&subnet.to_string()).copied()
    }

    /// The choice for `budget_ms` from what is recorded: the most accurate
    /// front point predicted to fit whose recorded measurement (if any) also
    /// fits; the same answer as [`crate::Searched::choose_measured`] gave
    /// when it measured, without measuring again. `None` on an empty front.
    pub fn choice(&self, budget_ms: f64) -> Option<Choice> {
        let first = choose(self.front(), budget_ms)?;
        if first.over_budget {
            return Some(first);
        }
        let mut fits: Vec<&FrontPoint> = self
            .front()
            .iter()
            .filter(|p| p.predicted_ms <= budget_ms)
            .collect();
        fits.sort_by(|a, b| b.accuracy.total_cmp(&a.accuracy));
        fits.iter()
            .find(|p| self.measured_ms(&p.subnet).is_none_or(|ms| ms <= budget_ms))
            .map(|p| Choice {
                point: (*p).clone(),
                over_budget: false,
            })
            .or(Some(first))
    }
}

/// What a caller expects of a stored result; `None` fields are not checked
/// (the daemon restoring its served subnet checks only bundle and device).
#[derive(Debug, Clone, Copy)]
pub struct CacheKey<'a> {
    pub bundle_sha256: &'a str,
    pub fingerprint: &'a str,
    pub data: Option<&'a str>,
    pub space: Option<&'a str>,
    pub params: Option<&'a SearchParams>,
}

/// Why a stored result was not used.
#[derive(Debug, thiserror::Error)]
pub enum CacheMiss {
    #[error("{}: no stored result", path.display())]
    Absent { path: PathBuf },
    #[error("{}: unreadable ({message})", path.display())]
    Unreadable { path: PathBuf, message: String },
    #[error("{}: made for another {what}", path.display())]
    Other { path: PathBuf, what: &'static str },
}

/// Where the result for (bundle, fingerprint) lives.
pub fn cache_path(state_dir: &Path, bundle_sha256: &str, fingerprint: &str) -> PathBuf {
    let fp = sha256_hex(fingerprint.as_bytes());
    let sha = bundle_sha256.get(..16).unwrap_or(bundle_sha256);
    state_dir
        .join(CACHE_DIR)
        .join(format!("{sha}-{}.json", &fp[..12]))
}

/// The folder of stored results under the state directory.
pub const CACHE_DIR: &str = "search";

/// Load the stored result at `path` if it matches `key`.
pub fn load(path: &Path, key: &CacheKey<'_>) -> std::result::Result<SearchResult, CacheMiss> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CacheMiss::Absent {
                path: path.to_path_buf(),
            })
        }
        Err(e) => {
            return Err(CacheMiss::Unreadable {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        }
    };
    let r: SearchResult = serde_json::from_str(&text).map_err(|e| CacheMiss::Unreadable {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let check = |what: &'static str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(CacheMiss::Other {
                path: path.to_path_buf(),
                what,
            })
        }
    };
    check("format", r.format == CACHE_FORMAT)?;
    check("bundle", r.bundle_sha256 == key.bundle_sha256)?;
    check("device", r.fingerprint == key.fingerprint)?;
    check("search data set", key.data.is_none_or(|d| r.data == d))?;
    check("search space", key.space.is_none_or(|s| r.space == s))?;
    check(
        "set of search parameters",
        key.params.is_none_or(|p| r.params == *p),
    )?;
    Ok(r)
}

/// Store atomically and durably (temporary file, fsync, rename, fsync of
/// the folder).
pub fn store(path: &Path, r: &SearchResult) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| SearchError::io(dir, e))?;
    }
    let text = serde_json::to_vec(r).map_err(|source| SearchError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    adaptivenet_onnx::write_atomically(path, &text)?;
    Ok(())
}

/// Remove the stored results in `state_dir` of bundles other than `keep`
/// (sha256s); returns how many were removed.
pub fn prune(state_dir: &Path, keep: &[&str]) -> usize {
    let dir = state_dir.join(CACHE_DIR);
    adaptivenet_onnx::fsutil::remove_stale_temps(&dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let keep: Vec<&str> = keep.iter().map(|s| s.get(..16).unwrap_or(s)).collect();
    let mut removed = 0;
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(sha) = n.strip_suffix(".json").and_then(|s| s.split('-').next()) else {
            continue;
        };
        if !keep.contains(&sha) && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(s: &str, ms: f64, acc: f64) -> FrontPoint {
        FrontPoint {
            subnet: s.parse().unwrap(),
            predicted_ms: ms,
            accuracy: acc,
            images: 100,
        }
    }

    fn result() -> SearchResult {
        let front = vec![
            point("m0x3 m3x3 m6x3", 1.0, 0.80),
            point("b0 b1 b2 m3x3 m6x3", 2.0, 0.86),
            point("b0 b1 b2 b3 b4 b5 b6 b7 b8", 3.0, 0.93),
        ];
        SearchResult::of_front("ab12", "cpu x2 threads-2", front, 3.0, "test")
    }

    #[test]
    fn the_choice_prefers_points_whose_measurement_also_fits() {
        let mut r = result();
        assert_eq!(r.choice(2.5).unwrap().point.predicted_ms, 2.0);
        // measured over the budget: the next most accurate point that fits
        r.measured.insert("b0 b1 b2 m3x3 m6x3".into(), 2.7);
        let c = r.choice(2.5).unwrap();
        assert_eq!(c.point.predicted_ms, 1.0);
        assert!(!c.over_budget);
        // below the fastest: the fastest, flagged
        assert!(r.choice(0.5).unwrap().over_budget);
    }

    #[test]
    fn stored_results_round_trip_and_misses_say_why() {
        let dir = std::env::temp_dir().join(format!("search-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let r = result();
        let path = cache_path(&dir, &r.bundle_sha256, &r.fingerprint);
        let key = CacheKey {
            bundle_sha256: "ab12",
            fingerprint: "cpu x2 threads-2",
            data: None,
            space: None,
            params: None,
        };
        assert!(matches!(load(&path, &key), Err(CacheMiss::Absent { .. })));
        store(&path, &r).unwrap();
        assert_eq!(load(&path, &key).unwrap(), r);
        let other_device = CacheKey {
            fingerprint: "cpu x4 threads-4",
            ..key
        };
        let e = load(&path, &other_device).unwrap_err();
        assert!(e.to_string().contains("another device"), "{e}");
        let other_data = CacheKey {
            data: Some("10x0000"),
            ..key
        };
        assert!(load(&path, &other_data)
            .unwrap_err()
            .to_string()
            .contains("search data set"));
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(matches!(
            load(&path, &key),
            Err(CacheMiss::Unreadable { .. })
        ));
        store(&path, &r).unwrap();
        assert_eq!(prune(&dir, &["ab12"]), 0);
        assert_eq!(prune(&dir, &["ffff"]), 1);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
