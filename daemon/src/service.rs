//! The bundle lifecycle: restore the last good bundle at start, verify and
//! install new ones, run the search on a background thread, and promote the
//! chosen subnet. A bundle that fails a check is never served; the model
//! being served keeps serving throughout.
//!
//! Order for a new bundle: open (container, sha256 of every file, minisign
//! signature, manifest) -> `compatible` -> version (no downgrade nor the same
//! version unless `pin_version` names it) -> the oracle path compiles and
//! runs -> persisted in `state_dir` -> served at once if nothing else is
//! (or a stored result exists), else searched first -> the chosen subnet is
//! swapped in.

use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use adaptivenet_onnx::bundle::{read_public_key, Bundle, KeyError, PublicKey, SubnetId};
use adaptivenet_onnx::dataset::Dataset;
use adaptivenet_onnx::datasource::{DataSource, SourceKind};
use adaptivenet_search::cache::{self, CacheKey};
use adaptivenet_search::{SearchError, SearchResult};

use crate::clock::unix_now;
use crate::config::{Config, ValidationData};
use crate::engine::{Engine, EngineError};
use crate::shared::{Active, Shared};
use crate::state::{ActiveInfo, Slot, State, StateError};
use crate::status::SearchState;

/// What happened to a candidate file.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Verified and installed (served now or after its search).
    Accepted { name: String, version: u64 },
    /// The same bundle is already installed; nothing to do.
    AlreadyInstalled,
    /// Refused, with the reason.
    Rejected(String),
    /// The file went away before it could be read.
    Gone,
}

/// A search to run.
struct SearchJob {
    bundle: Arc<Bundle>,
}

/// The daemon's bundle lifecycle.
pub struct Service {
    pub config: Config,
    pub shared: Arc<Shared>,
    pub state: State,
    keys: Vec<PublicKey>,
    /// The device fingerprint search results are keyed by.
    pub fingerprint: String,
    /// sha256 and version of the newest installed bundle.
    latest: Mutex<Option<(String, u64)>>,
    search_tx: Mutex<Option<Sender<SearchJob>>>,
}

/// Why the bundle service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("trusted_keys[{index}]: {source}")]
    Key {
        index: usize,
        #[source]
        source: KeyError,
    },
    #[error("state_dir: {0}")]
    State(#[from] StateError),
    #[error("cannot start the search thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Read the trusted keys named by the config; errors name the file.
pub fn read_keys(config: &Config) -> Result<Vec<PublicKey>, ServiceError> {
    config
        .trusted_keys
        .iter()
        .enumerate()
        .map(|(index, p)| read_public_key(p).map_err(|source| ServiceError::Key { index, source }))
        .collect()
}

/// Why the configured validation data could not be used for a bundle.
#[derive(Debug, thiserror::Error)]
#[error("validation_data {}: {source}", path.display())]
pub struct ValidationError {
    path: std::path::PathBuf,
    #[source]
    source: adaptivenet_onnx::Error,
}

/// Load the configured validation data with the bundle's preprocessing
/// (at most `limit` items): NPY, IDX, or a folder of images, laid out as
/// the model takes them (NCHW or NHWC) and checked against its input shape.
pub fn load_validation(v: &ValidationData, bundle: &Bundle) -> Result<Dataset, ValidationError> {
    let pre = &bundle.manifest.input.preprocess;
    let err = |source| ValidationError {
        path: v.images.clone(),
        source,
    };
    let m = &bundle.manifest;
    let kind = if v.images.is_dir() {
        // A folder of class sub-folders of PNG/JPEG images, resized (labels
        // come from the sub-folder names).
        SourceKind::Folder {
            dir: v.images.clone(),
        }
    } else if v.is_npy() {
        SourceKind::Npy {
            tensor: v.images.clone(),
            labels: v.labels.clone(),
        }
    } else {
        SourceKind::Idx {
            images: v.images.clone(),
            labels: v.labels.clone(),
        }
    };
    // The data source lays images out as the model takes them (NCHW or
    // NHWC) and checks the item shape against the model's input.
    let src = DataSource {
        kind,
        start: 0,
        end: Some(v.limit),
    };
    let item = m.item_shape().unwrap_or_default();
    src.load(&item, &m.input.layout, pre, &m.input.labels)
        .map_err(err)
}

impl Service {
    /// Open the state directory and read the keys; starts the search thread.
    pub fn start(config: Config, shared: Arc<Shared>) -> Result<Arc<Service>, ServiceError> {
        let keys = read_keys(&config)?;
        if keys.is_empty() && !config.allow_unsigned {
            log::warn!("no trusted_keys are configured and allow_unsigned is false: every bundle will be rejected");
        }
        let state = State::open(&config.state_dir)?;
        let fingerprint = adaptivenet_search::fingerprint(config.worker_threads.max(1));
        let (tx, rx) = channel();
        let svc = Arc::new(Service {
            config,
            shared,
            state,
            keys,
            fingerprint,
            latest: Mutex::new(None),
            search_tx: Mutex::new(Some(tx)),
        });
        let weak = Arc::downgrade(&svc);
        let shared = svc.shared.clone();
        crate::supervise::spawn(
            "search",
            move || search_thread(weak.clone(), &rx),
            move |m| shared.thread_panicked("search", m),
        )
        .map_err(ServiceError::Thread)?;
        Ok(svc)
    }

    fn latest(&self) -> Option<(String, u64)> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_latest(&self, sha: &str, version: u64) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some((sha.to_string(), version));
    }

    fn queue_search(&self, bundle: Arc<Bundle>) {
        let tx = self.search_tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref().map(|tx| tx.send(SearchJob { bundle })) {
            Some(Ok(())) => {}
            _ => log::error!("the search thread is gone; the bundle keeps its current subnet"),
        }
    }

    /// Open and check one installed slot: the signature against the
    /// current trusted keys, the sizes it describes, and (for the active
    /// slot) its version against the floor.
    fn open_slot(&self, slot: Slot, floor: Option<u64>) -> Result<Arc<Bundle>, String> {
        let path = self.state.slot_path(slot);
        if !path.is_file() {
            return Err(format!("{}: missing", path.display()));
        }
        let bundle = Bundle::open_limited(
            &path,
            &self.keys,
            self.config.allow_unsigned,
            Some(self.config.max_bundle_bytes()),
        )
        .map_err(|e| e.to_string())?;
        self.check_sizes(&bundle)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let version = bundle.manifest.model.version;
        if slot == Slot::Active {
            match (self.config.pin_version, floor) {
                (Some(pin), _) if version != pin => {
                    return Err(format!(
                        "{}: version {version}, but this device is pinned to version {pin}",
                        path.display()
                    ))
                }
                (None, Some(f)) if version < f => {
                    return Err(format!(
                    "{}: version {version} is older than the highest installed version {f} ({})",
                    path.display(),
                    crate::state::FLOOR
                ))
                }
                _ => {}
            }
        }
        Ok(Arc::new(bundle))
    }

    /// Serve the last good bundle from `state_dir` at once: with its stored
    /// search result if there is one (no search), else its oracle path while
    /// a search runs in the background. When the active slot fails its
    /// checks (damaged, no longer trusted, below the version floor, does not
    /// run), the previous slot is served and the fallback is reported.
    pub fn restore(&self) {
        let floor = self.state.floor().map(|f| f.version);
        // An older state without a floor file: the active bundle sets it.
        let mut fallback: Option<String> = None;
        for slot in [Slot::Active, Slot::Previous] {
            let path = self.state.slot_path(slot);
            if slot == Slot::Active
                && !path.is_file()
                && !self.state.previous_bundle_path().is_file()
            {
                log::info!(
                    "{}: no active bundle yet; waiting for one in {}",
                    path.display(),
                    self.config.bundle_dir.display()
                );
                break;
            }
            let bundle = match self.open_slot(slot, floor) {
                Ok(b) => b,
                Err(e) => {
                    log::error!("the stored {slot:?} bundle is not usable: {e}");
                    fallback = Some(e);
                    continue;
                }
            };
            let version = bundle.manifest.model.version;
            let stored = self.stored_result(&bundle.sha256);
            let mut reason = if stored.is_some() {
                "restored from state_dir with its stored search result".to_string()
            } else {
                "restored from state_dir; no stored search result, serving the oracle path until the search finishes".to_string()
            };
            if slot == Slot::Previous {
                reason = format!(
                    "the active bundle failed its checks ({}); serving the previous bundle",
                    fallback.as_deref().unwrap_or("unknown")
                );
            }
            if let Err(e) = self.activate(bundle.clone(), stored.clone(), &reason) {
                log::error!(
                    "the stored {slot:?} bundle {} does not run: {e}",
                    path.display()
                );
                fallback = Some(format!("{}: does not run: {e}", path.display()));
                continue;
            }
            if slot == Slot::Previous {
                log::warn!("{reason}");
                self.shared.fell_back(&reason);
            } else {
                if let Err(e) = self.state.raise_floor(version, &bundle.sha256) {
                    log::warn!("cannot record the version floor: {e}");
                }
                // A stop between writing the bundle and its record leaves
                // the record behind: the file is the truth.
                if self
                    .state
                    .active_info()
                    .is_none_or(|i| i.sha256 != bundle.sha256)
                {
                    let info = ActiveInfo {
                        sha256: bundle.sha256.clone(),
                        name: bundle.manifest.model.name.clone(),
                        version,
                        source: crate::state::ACTIVE_BUNDLE.into(),
                        installed_at: unix_now(),
                    };
                    if let Err(e) = self.state.write_active_info(&info) {
                        log::warn!("cannot rewrite the active bundle's record: {e}");
                    }
                }
            }
            self.set_latest(&bundle.sha256, version);
            if stored.is_none() {
                self.queue_search(bundle);
            }
            break;
        }
        if self.shared.current().is_none() && fallback.is_some() {
            log::error!("no stored bundle verifies; serving nothing until a new bundle arrives");
        }
        self.shared
            .set_version_floor(self.state.floor().map(|f| f.version));
    }

    /// Everything a bundle describes that sizes a buffer must fit the
    /// configured cap (`intake.max_tensor_mb`), and the shapes it gives must
    /// be those of its ONNX graph (the batch aside).
    pub fn check_sizes(&self, bundle: &Bundle) -> Result<(), SizeError> {
        check_sizes(bundle, self.config.max_tensor_bytes())
    }

    /// The stored search result of this bundle on this device, if any. An
    /// unreadable one is reported and ignored (the bundle is searched again).
    fn stored_result(&self, sha256: &str) -> Option<Arc<SearchResult>> {
        let path = cache::cache_path(&self.state.dir, sha256, &self.fingerprint);
        let key = CacheKey {
            bundle_sha256: sha256,
            fingerprint: &self.fingerprint,
            data: None,
            space: None,
            params: None,
        };
        match cache::load(&path, &key) {
            Ok(r) => Some(Arc::new(r)),
            Err(cache::CacheMiss::Absent { .. }) => None,
            Err(e) => {
                log::info!("{e}; searching again");
                None
            }
        }
    }

    /// The subnet to serve from `result` under the configured budget.
    fn chosen(&self, result: &SearchResult) -> Option<SubnetId> {
        let budget = self.config.latency_budget.budget_ms(result.oracle_ms);
        result.choice(budget).map(|c| c.point.subnet)
    }

    /// Build the engine for `result`'s chosen subnet (or the oracle path) and
    /// serve it. A chosen subnet that does not build falls back to the oracle.
    fn activate(
        &self,
        bundle: Arc<Bundle>,
        result: Option<Arc<SearchResult>>,
        reason: &str,
    ) -> Result<(), EngineError> {
        let oracle = bundle.manifest.oracle_subnet();
        let chosen: SubnetId = result
            .as_deref()
            .and_then(|r| self.chosen(r))
            .filter(|s| bundle.manifest.validate_subnet(s).is_ok())
            .unwrap_or_else(|| oracle.clone());
        let (engine, reason) = match Engine::build(&bundle, &chosen) {
            Ok(e) => (e, reason.to_string()),
            Err(e) if chosen != oracle => {
                log::error!("subnet `{chosen}` does not build ({e}); serving the oracle path");
                let eng = Engine::build(&bundle, &oracle)?;
                (
                    eng,
                    format!("{reason}; chosen subnet failed to build, oracle path"),
                )
            }
            Err(e) => return Err(e),
        };
        self.shared.promote(
            Active {
                bundle,
                engine: Arc::new(engine),
                result,
                since: unix_now(),
            },
            &reason,
        );
        Ok(())
    }

    /// Verify the bundle at `path` and install it. Does not move or delete
    /// the file (the watcher does).
    pub fn consider(&self, path: &Path) -> Outcome {
        let bundle = match Bundle::open_limited(
            path,
            &self.keys,
            self.config.allow_unsigned,
            Some(self.config.max_bundle_bytes()),
        ) {
            Ok(b) => b,
            Err(e) => match e.problem {
                adaptivenet_onnx::bundle::BundleProblem::Io(io)
                    if io.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Outcome::Gone
                }
                p => return Outcome::Rejected(p.to_string()),
            },
        };
        let m = &bundle.manifest;
        if m.compatible != self.config.compatible {
            return Outcome::Rejected(format!(
                "the bundle is for `{}` devices; this device is `{}` (config key `compatible`)",
                m.compatible, self.config.compatible
            ));
        }
        let version = m.model.version;
        // The newest installed version: the one in memory, or the floor
        // file (which survives a damaged or lost bundle file).
        let floor = self.state.floor().map(|f| f.version);
        let latest = match (self.latest(), floor) {
            (Some((sha, v)), Some(f)) => Some((sha, v.max(f))),
            (None, Some(f)) => Some((String::new(), f)),
            (l, None) => l,
        };
        if latest
            .as_ref()
            .is_some_and(|(sha, _)| *sha == bundle.sha256)
        {
            log::info!(
                "{}: this bundle is already installed; removing the copy",
                path.display()
            );
            return Outcome::AlreadyInstalled;
        }
        match (self.config.pin_version, &latest) {
            (Some(pin), _) if version != pin => {
                return Outcome::Rejected(format!("version {version}: this device is pinned to version {pin} (config key `pin_version`)"))
            }
            (Some(_), _) => {}
            (None, Some((_, current))) if version <= *current => {
                let what = if version == *current { "the same version as" } else { "older than" };
                return Outcome::Rejected(format!(
                    "version {version} is {what} the installed version {current}; only newer versions are accepted (set `pin_version` to force one)"
                ));
            }
            (None, _) => {}
        }
        if let Err(e) = self.check_sizes(&bundle) {
            return Outcome::Rejected(e.to_string());
        }
        // The oracle path must compile and run before the bundle is accepted.
        let oracle = m.oracle_subnet();
        let oracle_engine = match Engine::build(&bundle, &oracle) {
            Ok(e) => e,
            Err(e) => {
                return Outcome::Rejected(format!("the supernet does not run on this device: {e}"))
            }
        };
        let info = ActiveInfo {
            sha256: bundle.sha256.clone(),
            name: m.model.name.clone(),
            version,
            source: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            installed_at: unix_now(),
        };
        // Serving the previous slot: the active file failed its checks, and
        // the previous one is kept as the fallback.
        let rotate = self.shared.history().intake.slot == Slot::Active;
        if let Err(e) = self.state.install(path, &info, rotate) {
            return Outcome::Rejected(format!("cannot persist it in state_dir: {e}"));
        }
        self.shared.history().intake.slot = Slot::Active;
        self.shared
            .set_version_floor(self.state.floor().map(|f| f.version));
        self.set_latest(&bundle.sha256, version);
        let name = m.model.name.clone();
        log::info!(
            "accepted bundle {} ({name} v{version}, sha256 {})",
            path.display(),
            bundle.sha256
        );
        let bundle = Arc::new(bundle);
        let stored = self.stored_result(&bundle.sha256);
        if stored.is_some() {
            if let Err(e) = self.activate(bundle, stored, "new bundle with a stored search result")
            {
                log::error!("{e}");
            }
        } else {
            if self.shared.current().is_none() {
                self.shared.promote(
                    Active {
                        bundle: bundle.clone(),
                        engine: Arc::new(oracle_engine),
                        result: None,
                        since: unix_now(),
                    },
                    "first bundle: serving its oracle path until the search finishes",
                );
            }
            self.queue_search(bundle);
        }
        Outcome::Accepted { name, version }
    }

    /// Run the search for `bundle` and swap its chosen subnet in (unless a
    /// newer bundle was installed meanwhile).
    fn search_and_promote(&self, bundle: Arc<Bundle>) {
        let sha = bundle.sha256.clone();
        if self.latest().is_some_and(|(s, _)| s != sha) {
            log::info!("search for {sha} skipped: a newer bundle was installed");
            return;
        }
        let label = format!(
            "{} v{}",
            bundle.manifest.model.name, bundle.manifest.model.version
        );
        log::info!("search started for {label} (sha256 {sha})");
        self.shared
            .set_search(SearchState::Running, Some(&sha), None);
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.search(&bundle)))
                .unwrap_or_else(|_| Err(SearchError::Invalid("the search panicked".into())));
        let superseded = self.latest().is_some_and(|(s, _)| s != sha);
        let result = match outcome {
            Ok(r) => Arc::new(r),
            Err(e) => return self.search_failed(&bundle, format!("search: {e}"), superseded),
        };
        let Some(chosen) = self.chosen(&result) else {
            return self.search_failed(&bundle, "the search found no subnet".into(), superseded);
        };
        if let Err(e) = bundle.manifest.validate_subnet(&chosen) {
            return self.search_failed(
                &bundle,
                format!("the search chose an invalid subnet: {e}"),
                superseded,
            );
        }
        let budget_ms = self.config.latency_budget.budget_ms(result.oracle_ms);
        log::info!(
            "search done for {label} in {:.2} s ({}): chosen subnet `{chosen}` (predicted {:.3} ms, budget {budget_ms:.3} ms, oracle {:.3} ms, {} front points)",
            result.search_seconds,
            result.method(),
            result.point(&chosen).map(|p| p.predicted_ms).unwrap_or(f64::NAN),
            result.oracle_ms,
            result.front().len()
        );
        cache::prune(&self.state.dir, &[sha.as_str()]);
        self.shared.set_search(
            SearchState::Idle,
            Some(&sha),
            Some(format!("chose `{chosen}`")),
        );
        if superseded {
            log::info!("{label} was superseded while searching; its result is not served");
            return;
        }
        let reason = format!("search done: chose `{chosen}` for a budget of {budget_ms:.3} ms");
        // Already serving the chosen subnet of this bundle: no swap.
        if self.shared.update_result(&sha, &chosen, result.clone()) {
            log::info!("already serving `{chosen}`; no swap needed");
            return;
        }
        if let Err(e) = self.activate(bundle, Some(result), &reason) {
            log::error!("{e}");
        }
    }

    /// The search of `bundle` on the configured validation data (stored in
    /// the state directory's cache), or the oracle path alone without data.
    fn search(&self, bundle: &Bundle) -> Result<SearchResult, SearchError> {
        let options = adaptivenet_search::Options {
            threads: self.config.worker_threads.max(1),
            state_dir: Some(self.state.dir.clone()),
            // Progress into /adaptation and the log (issue 14).
            progress: Some(crate::progress::hook(self.shared.clone())),
            ..Default::default()
        };
        let data = match self.config.validation_data.as_ref() {
            None => {
                log::info!("no validation_data configured: serving the oracle path (the search needs local data)");
                return adaptivenet_search::oracle_only(bundle, &options);
            }
            Some(v) => match load_validation(v, bundle) {
                Ok(d) => d,
                Err(e) => {
                    log::warn!("{e}; serving the oracle path");
                    return adaptivenet_search::oracle_only(bundle, &options);
                }
            },
        };
        let mut s = adaptivenet_search::search(bundle, &data, &options)?;
        let budget_ms = self.config.latency_budget.budget_ms(s.cached.oracle_ms);
        let (chosen, _) = s.choose_measured(budget_ms)?;
        if chosen.over_budget {
            log::warn!(
                "search: the budget {budget_ms:.3} ms is below the fastest subnet ({:.3} ms predicted): serving the fastest, `{}`",
                chosen.point.predicted_ms,
                chosen.point.subnet
            );
        }
        s.save()?;
        Ok(s.cached)
    }

    fn search_failed(&self, bundle: &Arc<Bundle>, message: String, superseded: bool) {
        log::error!("{message}");
        self.shared.set_search(
            SearchState::Failed,
            Some(&bundle.sha256),
            Some(message.clone()),
        );
        let serving_it = self
            .shared
            .current()
            .is_some_and(|a| a.bundle.sha256 == bundle.sha256);
        if !superseded && !serving_it {
            let reason = format!("{message}; serving the new bundle's oracle path");
            if let Err(e) = self.activate(bundle.clone(), None, &reason) {
                log::error!("{e}");
            }
        }
    }
}

fn search_thread(svc: std::sync::Weak<Service>, rx: &Receiver<SearchJob>) {
    while let Ok(mut job) = rx.recv() {
        // Only the newest queued bundle matters.
        while let Ok(next) = rx.try_recv() {
            job = next;
        }
        let Some(svc) = svc.upgrade() else { return };
        svc.search_and_promote(job.bundle);
    }
}

/// Bytes of one f32 tensor of `dims`, or `None` if it overflows.
fn tensor_bytes(dims: &[usize]) -> Option<u64> {
    dims.iter()
        .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64))
}

/// See [`Service::check_sizes`]: the input item and every cut (at batch 1)
/// fit `max_bytes`, and their shapes are those the graph gives.
pub fn check_sizes(bundle: &Bundle, max_bytes: u64) -> Result<(), SizeError> {
    check_sizes_inner(bundle, max_bytes).map_err(SizeError)
}

/// A bundle describes a tensor that is too large or a shape its graph does
/// not have (the message names the manifest field).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SizeError(pub String);

fn check_sizes_inner(bundle: &Bundle, max_bytes: u64) -> Result<(), String> {
    let m = &bundle.manifest;
    let cap = |at: &str, shape: &[adaptivenet_onnx::bundle::Dim]| -> Result<Vec<usize>, String> {
        let text = adaptivenet_onnx::bundle::shape_string(shape);
        let dims: Option<Vec<usize>> = shape.iter().skip(1).map(|d| d.fixed()).collect();
        let dims =
            dims.ok_or_else(|| format!("{at} {text}: every dim after the batch must be fixed"))?;
        match tensor_bytes(&dims) {
            Some(b) if b <= max_bytes => Ok(dims),
            b => Err(format!(
                "{at} {text}: one item takes {} bytes, more than the {max_bytes} allowed (config key `intake.max_tensor_mb`)",
                b.map(|b| b.to_string()).unwrap_or_else(|| "more than 2^64".into())
            )),
        }
    };
    let item = cap("input.shape", &m.input.shape)?;
    let mut cuts = Vec::with_capacity(m.cuts.len());
    for c in &m.cuts {
        cuts.push((c, cap(&format!("cuts[{}].shape", c.index), &c.shape)?));
    }
    // The sizes are bounded: now compare them with what the graph computes.
    let graph = adaptivenet_onnx::facts::input_shape(&bundle.model, &m.input.name, 1)
        .map_err(|e| format!("input.shape: {e}"))?;
    if graph.get(1..) != Some(item.as_slice()) {
        return Err(format!(
            "input.shape {} differs from the graph's input `{}` {graph:?} (batch aside)",
            adaptivenet_onnx::bundle::shape_string(&m.input.shape),
            m.input.name
        ));
    }
    let facts = adaptivenet_onnx::facts::infer_facts(&bundle.model, 1)
        .map_err(|e| format!("cannot infer the graph's shapes: {e}"))?;
    for (c, dims) in cuts {
        match facts.tensors.get(&c.tensor) {
            Some(f) if f.shape.get(1..) == Some(dims.as_slice()) => {}
            Some(f) => {
                return Err(format!(
                    "cuts[{}].shape {} differs from the graph's `{}` {:?} (batch aside)",
                    c.index,
                    adaptivenet_onnx::bundle::shape_string(&c.shape),
                    c.tensor,
                    f.shape
                ))
            }
            None => {
                return Err(format!(
                    "cuts[{}]: the shape of `{}` cannot be inferred from the graph",
                    c.index, c.tensor
                ))
            }
        }
    }
    Ok(())
}
