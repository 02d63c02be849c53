//! Compiled subnets of the served bundle kept for fast swaps, least
//! recently used dropped beyond `memory_budget_mb` (a request still running
//! on a dropped one keeps it alive through its own `Arc`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use adaptivenet_onnx::bundle::{Bundle, SubnetId};

use crate::engine::{Engine, EngineError};
use crate::status::PlansStatus;

struct Cached {
    engine: Arc<Engine>,
    used: Instant,
    bytes: u64,
}

/// Compiled subnets of one bundle.
#[derive(Default)]
pub(super) struct EngineCache {
    sha: String,
    map: HashMap<String, Cached>,
    dropped: u64,
}

fn approx_bytes(e: &Engine) -> u64 {
    // The materialised model plus tract's copy of its weights.
    2 * adaptivenet_onnx::model_io::encode_model(e.model()).len() as u64
}

impl EngineCache {
    pub(super) fn reset(&mut self, sha: &str) {
        if self.sha != sha {
            self.map.clear();
            self.sha = sha.to_string();
        }
    }

    pub(super) fn insert(&mut self, engine: &Arc<Engine>) {
        let key = engine.subnet.to_string();
        match self.map.get_mut(&key) {
            Some(c) if Arc::ptr_eq(&c.engine, engine) => c.used = Instant::now(),
            _ => {
                let bytes = approx_bytes(engine);
                self.map.insert(
                    key,
                    Cached {
                        engine: engine.clone(),
                        used: Instant::now(),
                        bytes,
                    },
                );
            }
        }
    }

    pub(super) fn get_or_build(
        &mut self,
        bundle: &Bundle,
        subnet: &SubnetId,
    ) -> Result<Arc<Engine>, EngineError> {
        let key = subnet.to_string();
        if let Some(c) = self.map.get_mut(&key) {
            c.used = Instant::now();
            return Ok(c.engine.clone());
        }
        let engine = Arc::new(Engine::build(bundle, subnet)?);
        self.insert(&engine);
        Ok(engine)
    }

    pub(super) fn contains(&self, subnet: &SubnetId) -> bool {
        self.map.contains_key(&subnet.to_string())
    }

    pub(super) fn bytes(&self) -> u64 {
        self.map.values().map(|c| c.bytes).sum()
    }

    /// The mean size of a compiled subnet kept here (0 when none).
    pub(super) fn mean_bytes(&self) -> u64 {
        self.bytes() / self.map.len().max(1) as u64
    }

    /// Drop the least recently used engines (never `keep`) beyond `budget`.
    pub(super) fn evict(&mut self, budget: u64, keep: &SubnetId) {
        let keep = keep.to_string();
        while self.bytes() > budget {
            let Some(oldest) = self
                .map
                .iter()
                .filter(|(k, _)| **k != keep)
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.map.remove(&oldest);
            self.dropped += 1;
            log::info!("dropped the compiled subnet `{oldest}` (memory_budget_mb)");
        }
    }

    pub(super) fn status(&self, budget_mb: u64) -> PlansStatus {
        let mut resident: Vec<String> = self.map.keys().cloned().collect();
        resident.sort();
        PlansStatus {
            resident,
            approx_mb: self.bytes() as f64 / (1 << 20) as f64,
            budget_mb,
            dropped: self.dropped,
        }
    }
}
