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

use adaptivenet_onnx::bundle::{read_public_key, Bundle, PublicKey, SubnetId};

use crate::config::Config;
use crate::engine::Engine;
use crate::search_api::{device_fingerprint, load_validation, SearchFn, SearchInput, SearchResult};
use crate::shared::{Active, Shared};
use crate::state::{unix_now, ActiveInfo, State};

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
    search: SearchFn,
    pub fingerprint: String,
    /// sha256 and version of the newest installed bundle.
    latest: Mutex<Option<(String, u64)>>,
    search_tx: Mutex<Option<Sender<SearchJob>>>,
}

/// Read the trusted keys named by the config; errors name the file.
pub fn read_keys(config: &Config) -> Result<Vec<PublicKey>, String> {
    config
        .trusted_keys
        .iter()
        .enumerate()
        .map(|(i, p)| read_public_key(p).map_err(|e| format!("trusted_keys[{i}]: {e}")))
        .collect()
}

impl Service {
    /// Open the state directory and read the keys; starts the search thread.
    pub fn start(
        config: Config,
        shared: Arc<Shared>,
        search: SearchFn,
    ) -> Result<Arc<Service>, String> {
        let keys = read_keys(&config)?;
        if keys.is_empty() && !config.allow_unsigned {
            log::warn!("no trusted_keys are configured and allow_unsigned is false: every bundle will be rejected");
        }
        let state = State::open(&config.state_dir).map_err(|e| format!("state_dir: {e}"))?;
        let (tx, rx) = channel();
        let svc = Arc::new(Service {
            config,
            shared,
            state,
            keys,
            search,
            fingerprint: device_fingerprint(),
            latest: Mutex::new(None),
            search_tx: Mutex::new(Some(tx)),
        });
        let weak = Arc::downgrade(&svc);
        std::thread::Builder::new()
            .name("search".into())
            .spawn(move || search_thread(weak, rx))
            .map_err(|e| format!("cannot start the search thread: {e}"))?;
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

    /// Serve the last good bundle from `state_dir` at once: with its stored
    /// search result if there is one (no search), else its oracle path while
    /// a search runs in the background.
    pub fn restore(&self) {
        let path = self.state.active_bundle_path();
        if !path.is_file() {
            log::info!(
                "{}: no active bundle yet; waiting for one in {}",
                path.display(),
                self.config.bundle_dir.display()
            );
            return;
        }
        let bundle = match Bundle::open(&path, &self.keys, self.config.allow_unsigned) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                log::error!("the stored bundle does not verify any more ({e}); serving nothing until a new bundle arrives");
                return;
            }
        };
        let m = &bundle.manifest;
        self.set_latest(&bundle.sha256, m.model.version);
        let stored = self.state.load_result(&bundle.sha256, &self.fingerprint);
        let reason = if stored.is_some() {
            "restored from state_dir with its stored search result"
        } else {
            "restored from state_dir; no stored search result, serving the oracle path until the search finishes"
        };
        match self.activate(bundle.clone(), stored.clone(), reason) {
            Ok(()) => {}
            Err(e) => {
                log::error!("the stored bundle {} does not run: {e}", path.display());
                return;
            }
        }
        if stored.is_none() {
            self.queue_search(bundle);
        }
    }

    /// Build the engine for `result`'s chosen subnet (or the oracle path) and
    /// serve it. A chosen subnet that does not build falls back to the oracle.
    fn activate(
        &self,
        bundle: Arc<Bundle>,
        result: Option<SearchResult>,
        reason: &str,
    ) -> Result<(), String> {
        let oracle = bundle.manifest.oracle_subnet();
        let chosen: SubnetId = result
            .as_ref()
            .map(|r| r.chosen.clone())
            .filter(|s| bundle.manifest.validate_subnet(s).is_ok())
            .unwrap_or_else(|| oracle.clone());
        let (engine, reason) = match Engine::build(&bundle, &chosen) {
            Ok(e) => (e, reason.to_string()),
            Err(e) if chosen != oracle => {
                log::error!("subnet `{chosen}` does not build ({e}); serving the oracle path");
                let eng = Engine::build(&bundle, &oracle).map_err(|e| e.to_string())?;
                (
                    eng,
                    format!("{reason}; chosen subnet failed to build, oracle path"),
                )
            }
            Err(e) => return Err(e.to_string()),
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
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::Gone,
            Err(e) => return Outcome::Rejected(format!("cannot read the file: {e}")),
        };
        let bundle = match Bundle::from_bytes(path, &bytes, &self.keys, self.config.allow_unsigned)
        {
            Ok(b) => b,
            Err(e) => return Outcome::Rejected(e.problem.to_string()),
        };
        let m = &bundle.manifest;
        if m.compatible != self.config.compatible {
            return Outcome::Rejected(format!(
                "the bundle is for `{}` devices; this device is `{}` (config key `compatible`)",
                m.compatible, self.config.compatible
            ));
        }
        let version = m.model.version;
        let latest = self.latest();
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
        if let Err(e) = self.state.save_active(&bytes, &info) {
            return Outcome::Rejected(format!("cannot persist it in state_dir: {e}"));
        }
        self.set_latest(&bundle.sha256, version);
        let name = m.model.name.clone();
        log::info!(
            "accepted bundle {} ({name} v{version}, sha256 {})",
            path.display(),
            bundle.sha256
        );
        let bundle = Arc::new(bundle);
        let stored = self.state.load_result(&bundle.sha256, &self.fingerprint);
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
        self.shared.set_search("running", Some(&sha), None);
        let validation =
            self.config
                .validation_data
                .as_ref()
                .and_then(|v| match load_validation(v, &bundle) {
                    Ok(d) => Some(Arc::new(d)),
                    Err(e) => {
                        log::warn!("validation_data: {e}; searching without local data");
                        None
                    }
                });
        let input = SearchInput {
            budget: self.config.latency_budget.clone(),
            validation,
            threads: self.config.worker_threads,
            fingerprint: self.fingerprint.clone(),
        };
        let search = self.search.clone();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| search(&bundle, &input)))
                .unwrap_or_else(|_| {
                    Err(crate::search_api::SearchError("the search panicked".into()))
                });
        let superseded = self.latest().is_some_and(|(s, _)| s != sha);
        match outcome {
            Ok(result) => {
                if let Err(e) = bundle.manifest.validate_subnet(&result.chosen) {
                    self.search_failed(
                        &bundle,
                        format!("the search chose an invalid subnet: {e}"),
                        superseded,
                    );
                    return;
                }
                log::info!(
                    "search done for {label} in {:.2} s ({}): chosen subnet `{}` (predicted {:.3} ms, budget {:.3} ms, oracle {:.3} ms, {} front points)",
                    result.elapsed_s,
                    result.method,
                    result.chosen,
                    result.chosen_point().map(|p| p.predicted_ms).unwrap_or(f64::NAN),
                    result.budget_ms,
                    result.oracle_ms,
                    result.front.len()
                );
                if let Err(e) = self.state.save_result(&result) {
                    log::error!("cannot store the search result: {e}");
                }
                self.state.prune_results(&[sha.as_str()]);
                self.shared.set_search(
                    "idle",
                    Some(&sha),
                    Some(format!("chose `{}`", result.chosen)),
                );
                if superseded {
                    log::info!("{label} was superseded while searching; its result is not served");
                    return;
                }
                let reason = format!(
                    "search done: chose `{}` for a budget of {:.3} ms",
                    result.chosen, result.budget_ms
                );
                // Already serving the chosen subnet of this bundle: no swap.
                if self.shared.update_result(&sha, result.clone()) {
                    log::info!("already serving `{}`; no swap needed", result.chosen);
                    return;
                }
                if let Err(e) = self.activate(bundle, Some(result), &reason) {
                    log::error!("{e}");
                }
            }
            Err(e) => self.search_failed(&bundle, e.to_string(), superseded),
        }
    }

    fn search_failed(&self, bundle: &Arc<Bundle>, message: String, superseded: bool) {
        log::error!("{message}");
        self.shared
            .set_search("failed", Some(&bundle.sha256), Some(message.clone()));
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

fn search_thread(svc: std::sync::Weak<Service>, rx: Receiver<SearchJob>) {
    while let Ok(mut job) = rx.recv() {
        // Only the newest queued bundle matters.
        while let Ok(next) = rx.try_recv() {
            job = next;
        }
        let Some(svc) = svc.upgrade() else { return };
        svc.search_and_promote(job.bundle);
    }
}
