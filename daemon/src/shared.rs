//! What the server, the watcher and the search share: the active model behind
//! an [`ArcSwapOption`] (a swap is one atomic pointer store; a request holds
//! its own `Arc` and finishes on the model it started with), the metrics,
//! and the recent history shown by `/adaptation` (rejected bundles, swaps).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use adaptivenet_onnx::bundle::Bundle;
use arc_swap::ArcSwapOption;
use serde::Serialize;

use crate::engine::Engine;
use crate::search_api::SearchResult;
use crate::server::metrics::Metrics;
use crate::state::{rfc3339, unix_now};

/// How many rejected bundles and swaps `/adaptation` keeps.
pub const HISTORY: usize = 50;

/// The model being served: a bundle and one of its subnets, compiled.
#[derive(Debug)]
pub struct Active {
    pub bundle: Arc<Bundle>,
    pub engine: Arc<Engine>,
    /// The search result, when the search has run (or was restored).
    pub result: Option<SearchResult>,
    /// Unix time it started serving.
    pub since: u64,
}

impl Active {
    pub fn name(&self) -> &str {
        &self.bundle.manifest.model.name
    }
    pub fn version(&self) -> u64 {
        self.bundle.manifest.model.version
    }
    /// The predicted latency of the served subnet, if the search gave one.
    pub fn predicted_ms(&self) -> Option<f64> {
        let r = self.result.as_ref()?;
        r.front
            .iter()
            .find(|p| p.subnet == self.engine.subnet)
            .map(|p| p.predicted_ms)
    }
    /// `name vVERSION [subnet]`, for logs and swap records.
    pub fn label(&self) -> String {
        format!(
            "{} v{} [{}]",
            self.name(),
            self.version(),
            self.engine.subnet
        )
    }
}

/// A bundle that was refused.
#[derive(Clone, Debug, Serialize)]
pub struct Rejected {
    pub file: String,
    pub reason: String,
    pub time: String,
}

/// A change of the served model.
#[derive(Clone, Debug, Serialize)]
pub struct Swap {
    pub time: String,
    /// Unix time in milliseconds.
    pub unix_ms: u64,
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
}

/// What the search is doing.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SearchStatus {
    /// `idle`, `running` or `failed`.
    pub state: String,
    /// The bundle being (or last) searched.
    pub bundle_sha256: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Default)]
pub struct History {
    pub rejected: VecDeque<Rejected>,
    pub swaps: VecDeque<Swap>,
    pub search: SearchStatus,
}

/// Shared daemon state.
pub struct Shared {
    pub active: ArcSwapOption<Active>,
    pub metrics: Metrics,
    pub history: Mutex<History>,
    /// The adaptation loop's inputs and status (latency samples, live
    /// config, environment, decisions).
    pub adapt: crate::adapt::AdaptShared,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            active: ArcSwapOption::empty(),
            metrics: Metrics::default(),
            history: Mutex::new(History {
                search: SearchStatus {
                    state: "idle".into(),
                    ..Default::default()
                },
                ..Default::default()
            }),
            adapt: Default::default(),
        }
    }
}

impl Shared {
    pub fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The model serving now.
    pub fn current(&self) -> Option<Arc<Active>> {
        self.active.load_full()
    }

    /// Serve `next` from now on; requests in flight finish on the old model.
    pub fn promote(&self, next: Active, reason: &str) {
        let to = next.label();
        let old = self.active.swap(Some(Arc::new(next)));
        let from = old.as_ref().map(|a| a.label());
        self.swapped(from, to, reason);
    }

    /// Serve `next` only if `current` is still what serves (a bundle swapped
    /// in meanwhile wins over an adaptation decided on the old one). True
    /// when swapped.
    pub fn promote_if(&self, current: &Arc<Active>, next: Active, reason: &str) -> bool {
        let to = next.label();
        let prev = self
            .active
            .compare_and_swap(Arc::as_ptr(current), Some(Arc::new(next)));
        let ok = prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, current));
        if ok {
            self.swapped(Some(current.label()), to, reason);
        }
        ok
    }

    fn swapped(&self, from: Option<String>, to: String, reason: &str) {
        log::info!(
            "serving {to} (was {}): {reason}",
            from.as_deref().unwrap_or("nothing")
        );
        self.metrics
            .swaps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics.clear_recent();
        let mut h = self.history();
        h.swaps.push_back(Swap {
            time: rfc3339(unix_now()),
            unix_ms: crate::state::unix_ms(),
            from,
            to,
            reason: reason.to_string(),
        });
        while h.swaps.len() > HISTORY {
            h.swaps.pop_front();
        }
    }

    /// Attach a (new) search result to the model serving now without
    /// changing what runs (the chosen subnet is the one being served).
    pub fn update_result(&self, bundle_sha256: &str, result: SearchResult) -> bool {
        let Some(cur) = self.current() else {
            return false;
        };
        if cur.bundle.sha256 != bundle_sha256 || cur.engine.subnet != result.chosen {
            return false;
        }
        let next = Active {
            bundle: cur.bundle.clone(),
            engine: cur.engine.clone(),
            result: Some(result),
            since: cur.since,
        };
        self.active.store(Some(Arc::new(next)));
        true
    }

    /// Record a rejected bundle.
    pub fn reject(&self, file: &str, reason: &str) {
        log::warn!("rejected bundle {file}: {reason}");
        self.metrics
            .rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut h = self.history();
        h.rejected.push_back(Rejected {
            file: file.to_string(),
            reason: reason.to_string(),
            time: rfc3339(unix_now()),
        });
        while h.rejected.len() > HISTORY {
            h.rejected.pop_front();
        }
    }

    pub fn set_search(&self, state: &str, sha: Option<&str>, message: Option<String>) {
        self.history().search = SearchStatus {
            state: state.to_string(),
            bundle_sha256: sha.map(str::to_string),
            message,
        };
    }
}
