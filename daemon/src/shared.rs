//! What the server, the intake, the search thread and the adaptation loop
//! share: the active model behind an [`ArcSwapOption`] (a swap is one atomic
//! pointer store; a request holds its own `Arc` and finishes on the model it
//! started with), the metrics, the status shown by `/adaptation`, and the
//! adaptation loop's inputs (latency samples, the config in force, its wake
//! channel), and the threads' [`Liveness`].

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use adaptivenet_onnx::bundle::Bundle;
use adaptivenet_search::SearchResult;
use arc_swap::ArcSwapOption;

use crate::clock::{rfc3339, unix_ms, unix_now};
use crate::config::Config;
use crate::engine::Engine;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::monitor::{engine_key, LatencyWindow};
use crate::status::{
    AdaptStatus, Decision, DecisionKind, History, Rejected, SearchState, SearchStatus, Swap,
    DECISIONS, HISTORY,
};

/// The model being served: a bundle and one of its subnets, compiled.
#[derive(Debug)]
pub struct Active {
    pub bundle: Arc<Bundle>,
    pub engine: Arc<Engine>,
    /// The search result, when the search has run (or was restored).
    pub result: Option<Arc<SearchResult>>,
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
        self.result
            .as_ref()?
            .point(&self.engine.subnet)
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

/// Shared daemon state.
pub struct Shared {
    pub active: ArcSwapOption<Active>,
    pub metrics: Metrics,
    pub history: Mutex<History>,
    /// The adaptation loop's inputs and status (latency samples, live
    /// config, environment, decisions).
    pub adapt: AdaptShared,
    /// Beats and panic counts of the long-lived threads (watchdog, metrics).
    pub liveness: Liveness,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            active: ArcSwapOption::empty(),
            metrics: Metrics::default(),
            history: Mutex::new(History::default()),
            adapt: Default::default(),
            liveness: Liveness::default(),
        }
    }
}

impl Shared {
    pub fn history(&self) -> MutexGuard<'_, History> {
        lock(&self.history)
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
        // A swap replaces a serving model; the first load is not one.
        if from.is_some() {
            self.metrics
                .swaps
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.metrics.clear_recent();
        let mut h = self.history();
        h.swaps.push_back(Swap {
            time: rfc3339(unix_now()),
            unix_ms: unix_ms(),
            from,
            to,
            reason: reason.to_string(),
        });
        while h.swaps.len() > HISTORY {
            h.swaps.pop_front();
        }
    }

    /// Attach a (new) search result to the model serving now without
    /// changing what runs, when `chosen` is what serves. A compare-and-swap:
    /// if the served model changed meanwhile, nothing is stored. True when
    /// attached.
    pub fn update_result(
        &self,
        bundle_sha256: &str,
        chosen: &adaptivenet_onnx::bundle::SubnetId,
        result: Arc<SearchResult>,
    ) -> bool {
        let Some(cur) = self.current() else {
            return false;
        };
        if cur.bundle.sha256 != bundle_sha256 || cur.engine.subnet != *chosen {
            return false;
        }
        let next = Active {
            bundle: cur.bundle.clone(),
            engine: cur.engine.clone(),
            result: Some(result),
            since: cur.since,
        };
        let prev = self
            .active
            .compare_and_swap(Arc::as_ptr(&cur), Some(Arc::new(next)));
        prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, &cur))
    }

    /// Record a rejected bundle.
    pub fn reject(&self, file: &str, reason: &str) {
        self.reject_with(file, reason, || ());
    }

    /// Record a rejection while `files` puts the rejected bundle and its
    /// `.reason` in place, under the status lock: whoever sees the
    /// rejection in `/adaptation` finds the files, and whoever sees the
    /// `.reason` file (the OTA modules wait on it) finds it in
    /// `/adaptation` (a read waits for the lock).
    pub fn reject_with<T>(&self, file: &str, reason: &str, files: impl FnOnce() -> T) -> T {
        log::warn!("rejected bundle {file}: {reason}");
        let mut h = self.history();
        let out = files();
        self.metrics
            .rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        h.rejected.push_back(Rejected {
            file: file.to_string(),
            reason: reason.to_string(),
            time: rfc3339(unix_now()),
        });
        while h.rejected.len() > HISTORY {
            h.rejected.pop_front();
        }
        out
    }

    /// The active bundle failed its checks at start and the previous slot
    /// is served instead.
    pub fn fell_back(&self, reason: &str) {
        let mut h = self.history();
        h.intake.slot = crate::status::Slot::Previous;
        h.intake.fallbacks += 1;
        h.intake.fallback_reason = Some(reason.to_string());
    }

    /// The downgrade floor in force.
    pub fn set_version_floor(&self, version: Option<u64>) {
        self.history().intake.version_floor = version;
    }

    /// A supervised thread panicked (and is restarted).
    pub fn thread_panicked(&self, thread: &str, message: &str) {
        self.liveness.panicked(thread);
        let mut h = self.history();
        h.intake.thread_restarts += 1;
        h.intake.last_panic = Some(format!("{thread}: {message}"));
    }

    pub fn set_search(&self, state: SearchState, sha: Option<&str>, message: Option<String>) {
        self.history().search = SearchStatus {
            state,
            bundle_sha256: sha.map(str::to_string),
            message,
            progress: None,
        };
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The adaptation loop's shared part: what requests and reloads feed it and
/// what it shows.
#[derive(Default)]
pub struct AdaptShared {
    pub window: Mutex<LatencyWindow>,
    pub status: Mutex<AdaptStatus>,
    config: Mutex<Option<Arc<Config>>>,
    wake: Mutex<Option<Sender<()>>>,
}

impl AdaptShared {
    /// A served request: batch-1 compute latencies feed the contention factor.
    pub fn observe(&self, engine: &Arc<Engine>, batch: usize, ms: f64) {
        if batch == 1 {
            lock(&self.window).observe(engine_key(engine), ms, false);
        }
    }

    pub fn status(&self) -> MutexGuard<'_, AdaptStatus> {
        lock(&self.status)
    }

    pub fn window(&self) -> MutexGuard<'_, LatencyWindow> {
        lock(&self.window)
    }

    /// The config in force (its reloadable parts apply at once).
    pub fn config(&self) -> Option<Arc<Config>> {
        lock(&self.config).clone()
    }

    /// Put a (re)loaded config in force and wake the loop.
    pub fn set_config(&self, c: Arc<Config>) {
        *lock(&self.config) = Some(c);
        self.wake();
    }

    /// The channel the loop waits on between checks.
    pub fn set_waker(&self, tx: Sender<()>) {
        *lock(&self.wake) = Some(tx);
    }

    pub fn wake(&self) {
        if let Some(tx) = lock(&self.wake).as_ref() {
            let _ = tx.send(());
        }
    }

    /// Record a decision: logged, listed, counted.
    pub fn record(
        &self,
        kind: DecisionKind,
        reason: &str,
        from: Option<String>,
        to: Option<String>,
    ) {
        match (&from, &to) {
            (Some(f), Some(t)) => log::info!("adaptation [{kind}]: {f} -> {t}: {reason}"),
            _ => log::info!("adaptation [{kind}]: {reason}"),
        }
        let mut s = self.status();
        *s.counts.entry(kind).or_insert(0) += 1;
        s.decisions.push_back(Decision {
            time: rfc3339(unix_now()),
            unix_ms: unix_ms(),
            kind,
            reason: reason.to_string(),
            from,
            to,
        });
        while s.decisions.len() > DECISIONS {
            s.decisions.pop_front();
        }
    }

    /// A config reload put in force: `what` says what changed.
    pub fn reloaded(&self, what: &str) {
        {
            let mut s = self.status();
            s.reloads.ok += 1;
            s.reloads.last = Some(rfc3339(unix_now()));
        }
        self.record(DecisionKind::ConfigReload, what, None, None);
    }

    /// A config reload refused: the old config stays in force.
    pub fn reload_failed(&self, error: &str) {
        {
            let mut s = self.status();
            s.reloads.failed += 1;
            s.reloads.last_error = Some(error.to_string());
        }
        log::error!("config reload failed, keeping the old config: {error}");
        self.record(
            DecisionKind::ConfigRejected,
            &format!("{error}; the old config stays in force"),
            None,
            None,
        );
    }
}
