//! The adaptation loop: every `policy.check_interval_s` (and at once on a
//! config reload) it samples the environment ([`crate::monitor`]), turns the
//! recent compute latencies of the served subnet into a contention factor,
//! asks the [`crate::policy`] which front point to serve, and hot-swaps it
//! in. When the slowdown is not uniform (the CPU clock throttled or
//! recovered, CPUs went offline) it re-times the front's subnets end to end
//! with tract and chooses again.
//!
//! The latency model: the front's predicted latencies (the latency table)
//! refer to the board as it was when the table was first seen (clock ratio,
//! online CPUs). The slowdown applied to every point is the larger of
//! - the measured contention factor: the budget's percentile of recent
//!   batch-1 compute latencies of the served subnet / its predicted latency,
//!   smoothed; and
//! - the hardware factor: clock ratio then / now, times the loss of cores
//!   (`min(workers, cores then) / min(workers, cores now)`).
//!
//! A re-time measures every front subnet now and keeps the table's absolute
//! level (so a slowdown is not counted twice): the new table has the
//! measured *relative* costs (a throttled clock does not slow convolutions
//! and memory-bound parts alike), scaled to the old table's total.
//!
//! Swaps are atomic ([`Shared::promote_if`]): requests in flight hold their
//! own `Arc` of the old model and finish on it. Compiled subnets are cached
//! for fast swaps within `memory_budget_mb`; the least recently used ones
//! beyond it are dropped (a request still running on one keeps it alive).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use adaptivenet_onnx::bundle::{Bundle, SubnetId};
use serde::Serialize;

use crate::config::Config;
use crate::engine::Engine;
use crate::monitor::{engine_key, Environment, LatencyWindow, Monitor};
use crate::policy::{self, Action, Point, PolicyState};
use crate::shared::{Active, Shared};
use crate::state::{rfc3339, unix_ms, unix_now};

/// Re-timing: untimed and timed interleaved rounds.
const RETIME_WARMUP: usize = 3;
const RETIME_ROUNDS: usize = 21;

/// Decisions kept for `/adaptation`.
pub const DECISIONS: usize = 100;

/// One adaptation decision.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub time: String,
    pub unix_ms: u64,
    /// `over_budget`, `slack`, `budget_change`, `retime_throttle`, `no_fit`,
    /// `config_reload`, `config_rejected`...
    pub kind: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// A row of the latency table as the policy uses it.
#[derive(Clone, Debug, Serialize)]
pub struct TableRow {
    pub subnet: String,
    /// The table's predicted latency (re-timed when `retimed`), ms.
    pub predicted_ms: f64,
    /// The search's prediction, ms.
    pub search_ms: f64,
    pub accuracy: f64,
    /// predicted x slowdown, ms.
    pub estimate_ms: f64,
    pub fits: bool,
}

/// Compiled subnets kept in memory.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PlansStatus {
    pub resident: Vec<String>,
    pub approx_mb: f64,
    pub budget_mb: u64,
    /// Compiled subnets dropped to stay within the budget.
    pub dropped: u64,
}

/// Config reloads (SIGHUP).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReloadStatus {
    pub ok: u64,
    pub failed: u64,
    pub last_error: Option<String>,
    pub last: Option<String>,
}

/// What `/adaptation` and `/metrics` show of the loop.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AdaptStatus {
    pub environment: Environment,
    /// The budget in force, ms (the config's, at `percentile`).
    pub budget_ms: Option<f64>,
    pub percentile: f64,
    /// The slowdown applied to the table (max of contention and hardware factor).
    pub slowdown: Option<f64>,
    pub table: Vec<TableRow>,
    /// `search` or `retimed`.
    pub table_source: String,
    pub retimed_at: Option<String>,
    pub decisions: VecDeque<Decision>,
    /// Decisions by kind since the start.
    pub counts: BTreeMap<String, u64>,
    pub plans: PlansStatus,
    pub reloads: ReloadStatus,
}

/// The loop's shared part (inside [`Shared`]).
#[derive(Default)]
pub struct AdaptShared {
    pub window: Mutex<LatencyWindow>,
    pub status: Mutex<AdaptStatus>,
    config: Mutex<Option<Arc<Config>>>,
    wake: Mutex<Option<Sender<()>>>,
    /// Unix ms of the loop's last check (the systemd watchdog looks at it).
    pub heartbeat_ms: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

    /// The config in force (reloadable parts: `latency_budget`, `policy`,
    /// `monitor`, `memory_budget_mb`).
    pub fn config(&self) -> Option<Arc<Config>> {
        lock(&self.config).clone()
    }

    /// Put a (re)loaded config in force and wake the loop.
    pub fn set_config(&self, c: Arc<Config>) {
        *lock(&self.config) = Some(c);
        self.wake();
    }

    pub fn wake(&self) {
        if let Some(tx) = lock(&self.wake).as_ref() {
            let _ = tx.send(());
        }
    }

    /// Record a decision: logged, listed, counted.
    pub fn record(&self, kind: &str, reason: &str, from: Option<String>, to: Option<String>) {
        match (&from, &to) {
            (Some(f), Some(t)) => log::info!("adaptation [{kind}]: {f} -> {t}: {reason}"),
            _ => log::info!("adaptation [{kind}]: {reason}"),
        }
        let mut s = self.status();
        *s.counts.entry(kind.to_string()).or_insert(0) += 1;
        s.decisions.push_back(Decision {
            time: rfc3339(unix_now()),
            unix_ms: unix_ms(),
            kind: kind.to_string(),
            reason: reason.to_string(),
            from,
            to,
        });
        while s.decisions.len() > DECISIONS {
            s.decisions.pop_front();
        }
    }

    /// A reload's outcome.
    pub fn reloaded(&self, result: Result<String, String>) {
        match result {
            Ok(what) => {
                {
                    let mut s = self.status();
                    s.reloads.ok += 1;
                    s.reloads.last = Some(rfc3339(unix_now()));
                }
                self.record("config_reload", &what, None, None);
            }
            Err(e) => {
                {
                    let mut s = self.status();
                    s.reloads.failed += 1;
                    s.reloads.last_error = Some(e.clone());
                }
                log::error!("config reload failed, keeping the old config: {e}");
                self.record(
                    "config_rejected",
                    &format!("{e}; the old config stays in force"),
                    None,
                    None,
                );
            }
        }
    }
}

/// The board conditions a table refers to.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Hw {
    freq_ratio: Option<f64>,
    online: Option<usize>,
    throttled: bool,
}

impl Hw {
    fn of(e: &Environment) -> Hw {
        Hw {
            freq_ratio: e.freq_ratio,
            online: e.online_cpus,
            throttled: e.throttled,
        }
    }
}

/// The slowdown `now` implies against `then` for `workers` parallel requests.
fn hardware_factor(then: &Hw, now: &Hw, workers: usize) -> f64 {
    let clock = match (then.freq_ratio, now.freq_ratio) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => a / b,
        _ => 1.0,
    };
    let cores = match (then.online, now.online) {
        (Some(a), Some(b)) if a > 0 && b > 0 => {
            let w = workers.max(1);
            (a.min(w) as f64 / b.min(w) as f64).max(1.0)
        }
        _ => 1.0,
    };
    (clock * cores).clamp(0.1, 100.0)
}

/// Why the slowdown is no longer uniform, if it is not.
fn nonuniform(then: &Hw, now: &Hw) -> Option<(&'static str, String)> {
    let pct = |r: Option<f64>| {
        r.map(|r| format!("{:.0}%", r * 100.0))
            .unwrap_or_else(|| "unknown".into())
    };
    if then.online != now.online {
        return Some((
            "retime_cores",
            format!(
                "online CPUs changed from {} to {}",
                then.online.map(|n| n.to_string()).unwrap_or("?".into()),
                now.online.map(|n| n.to_string()).unwrap_or("?".into())
            ),
        ));
    }
    if then.throttled != now.throttled {
        let what = if now.throttled {
            "retime_throttle"
        } else {
            "retime_recovered"
        };
        return Some((
            what,
            format!(
                "{} (clock at {} of max, was {})",
                if now.throttled {
                    "the board throttles"
                } else {
                    "the board no longer throttles"
                },
                pct(now.freq_ratio),
                pct(then.freq_ratio)
            ),
        ));
    }
    if let (Some(a), Some(b)) = (then.freq_ratio, now.freq_ratio) {
        if (a - b).abs() > 0.15 {
            return Some((
                "retime_clock",
                format!(
                    "the CPU clock moved from {} to {} of max",
                    pct(Some(a)),
                    pct(Some(b))
                ),
            ));
        }
    }
    None
}

struct Cached {
    engine: Arc<Engine>,
    used: Instant,
    bytes: u64,
}

/// Compiled subnets of one bundle.
#[derive(Default)]
struct EngineCache {
    sha: String,
    map: HashMap<String, Cached>,
    dropped: u64,
}

fn approx_bytes(e: &Engine) -> u64 {
    // The materialised model plus tract's copy of its weights.
    2 * adaptivenet_onnx::model_io::encode_model(e.model()).len() as u64
}

impl EngineCache {
    fn reset(&mut self, sha: &str) {
        if self.sha != sha {
            self.map.clear();
            self.sha = sha.to_string();
        }
    }

    fn insert(&mut self, engine: &Arc<Engine>) {
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

    fn get_or_build(&mut self, bundle: &Bundle, subnet: &SubnetId) -> Result<Arc<Engine>, String> {
        let key = subnet.to_string();
        if let Some(c) = self.map.get_mut(&key) {
            c.used = Instant::now();
            return Ok(c.engine.clone());
        }
        let engine = Arc::new(Engine::build(bundle, subnet).map_err(|e| e.to_string())?);
        self.insert(&engine);
        Ok(engine)
    }

    fn contains(&self, subnet: &SubnetId) -> bool {
        self.map.contains_key(&subnet.to_string())
    }

    fn bytes(&self) -> u64 {
        self.map.values().map(|c| c.bytes).sum()
    }

    /// Drop the least recently used engines (never `keep`) beyond `budget`.
    fn evict(&mut self, budget: u64, keep: &SubnetId) {
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

    fn status(&self, budget_mb: u64) -> PlansStatus {
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

/// The loop's private state.
struct Controller {
    shared: Arc<Shared>,
    monitor: Monitor,
    monitor_root: std::path::PathBuf,
    policy: PolicyState,
    engines: EngineCache,
    /// The bundle and front the table belongs to.
    source: Option<(String, Vec<crate::search_api::FrontPoint>)>,
    table: Vec<Point>,
    /// Conditions the table's absolute level refers to.
    table_hw: Hw,
    /// Conditions at the last (re)timing.
    timed_hw: Hw,
    retimed: bool,
    retimed_at: Option<String>,
    contention: Option<f64>,
    contention_raw: Option<f64>,
    last_budget: Option<f64>,
    last_probe: Instant,
    no_fit_noted: bool,
    workers: usize,
}

/// Start the loop on its own thread.
pub fn spawn(shared: Arc<Shared>, config: Arc<Config>) -> std::io::Result<()> {
    let (tx, rx) = channel();
    *lock(&shared.adapt.wake) = Some(tx);
    shared.adapt.set_config(config.clone());
    std::thread::Builder::new()
        .name("adapt".into())
        .spawn(move || {
            let mut c = Controller {
                monitor: Monitor::new(&config.monitor.root),
                monitor_root: config.monitor.root.clone(),
                shared,
                policy: PolicyState::default(),
                engines: EngineCache::default(),
                source: None,
                table: Vec::new(),
                table_hw: Hw::default(),
                timed_hw: Hw::default(),
                retimed: false,
                retimed_at: None,
                contention: None,
                contention_raw: None,
                last_budget: None,
                last_probe: Instant::now(),
                no_fit_noted: false,
                workers: config.worker_threads,
            };
            c.run(rx)
        })?;
    Ok(())
}

impl Controller {
    fn run(&mut self, wake: Receiver<()>) {
        loop {
            let Some(cfg) = self.shared.adapt.config() else {
                return;
            };
            let tick = cfg.policy.check_interval_s.min(cfg.monitor.interval_s);
            match wake.recv_timeout(Duration::from_secs_f64(tick)) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while wake.try_recv().is_ok() {}
            let cfg = self.shared.adapt.config().unwrap_or(cfg);
            self.shared
                .adapt
                .heartbeat_ms
                .store(unix_ms(), Ordering::Relaxed);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.check(&cfg)));
            if r.is_err() {
                log::error!("adaptation: a check panicked; the served subnet is unchanged");
            }
        }
    }

    fn check(&mut self, cfg: &Config) {
        if cfg.monitor.root != self.monitor_root {
            self.monitor = Monitor::new(&cfg.monitor.root);
            self.monitor_root = cfg.monitor.root.clone();
        }
        let mut env = self
            .monitor
            .sample(cfg.policy.throttle_freq_ratio, cfg.monitor.hot_c);
        let active = self.shared.current();
        let front = active
            .as_ref()
            .and_then(|a| a.result.as_ref())
            .map(|r| r.front.clone())
            .unwrap_or_default();
        let (Some(active), false) = (active, front.is_empty()) else {
            env.hardware_factor = 1.0;
            let mut s = self.shared.adapt.status();
            s.environment = env;
            s.percentile = cfg.latency_budget.percentile;
            return;
        };
        // the front came from this result, so it is present
        let Some(result) = active.result.as_ref() else {
            return;
        };
        let sha = active.bundle.sha256.clone();
        // A new bundle or a new search result: a fresh table.
        if self.source.as_ref() != Some(&(sha.clone(), front.clone())) {
            self.engines.reset(&sha);
            self.table = front
                .iter()
                .map(|p| Point {
                    subnet: p.subnet.clone(),
                    table_ms: p.predicted_ms,
                    accuracy: p.accuracy,
                })
                .collect();
            self.table_hw = Hw::of(&env);
            self.timed_hw = self.table_hw;
            self.retimed = false;
            self.retimed_at = None;
            self.contention = None;
            self.contention_raw = None;
            self.policy = PolicyState::default();
            self.last_budget = None;
            self.no_fit_noted = false;
            self.source = Some((sha.clone(), front.clone()));
            log::info!(
                "adaptation: front of {} point(s) for {} (sha256 {sha})",
                self.table.len(),
                active.label()
            );
        }
        self.engines.insert(&active.engine);
        let budget = cfg.latency_budget.budget_ms(result.oracle_ms);
        self.shared.adapt.status().budget_ms = Some(budget);
        let now_hw = Hw::of(&env);

        // Non-uniform slowdown: re-time, then choose.
        if cfg.policy.retime_on_throttle {
            if let Some((kind, why)) = nonuniform(&self.timed_hw, &now_hw) {
                self.timed_hw = now_hw;
                if self.table.len() > 1 {
                    match self.retime(&active.bundle) {
                        Ok((secs, summary)) => self.shared.adapt.record(
                            kind,
                            &format!("{why}: re-timed {} subnets in {secs:.2} s ({summary}); choosing again", self.table.len()),
                            None,
                            None,
                        ),
                        Err(e) => self.shared.adapt.record(
                            kind,
                            &format!("{why}: re-timing failed ({e}); keeping the table"),
                            None,
                            None,
                        ),
                    }
                } else {
                    self.shared.adapt.record(
                        kind,
                        &format!("{why}; the front has one point, nothing to re-time"),
                        None,
                        None,
                    );
                }
            }
        }

        // Keep the contention factor current when no requests come.
        let key = engine_key(&active.engine);
        let window = Duration::from_secs_f64(cfg.monitor.window_s);
        if cfg.monitor.probe_idle_s > 0.0 {
            let idle = Duration::from_secs_f64(cfg.monitor.probe_idle_s);
            let quiet = lock(&self.shared.adapt.window)
                .idle_for()
                .is_none_or(|d| d >= idle);
            if quiet && self.last_probe.elapsed() >= idle {
                self.last_probe = Instant::now();
                self.probe(&active.engine, cfg.monitor.probe_runs);
            }
        }

        // The contention factor from recent samples of the served subnet.
        let active_idx = self
            .table
            .iter()
            .position(|p| p.subnet == active.engine.subnet);
        {
            let mut w = lock(&self.shared.adapt.window);
            w.prune(window.max(Duration::from_secs(1)));
            let (p, n) = w.percentile(key, window, cfg.latency_budget.percentile);
            if let (Some(p), Some(i)) = (p, active_idx) {
                if n >= cfg.policy.min_samples && self.table[i].table_ms > 0.0 {
                    let raw = p / self.table[i].table_ms;
                    let a = cfg.monitor.smoothing;
                    self.contention_raw = Some(raw);
                    self.contention = Some(match self.contention {
                        Some(c) => a * raw + (1.0 - a) * c,
                        None => raw,
                    });
                }
            }
        }
        let hw = hardware_factor(&self.table_hw, &now_hw, self.workers);
        let slowdown = self.contention.unwrap_or(1.0).max(hw);
        env.contention = self.contention;
        env.contention_raw = self.contention_raw;
        env.hardware_factor = hw;

        let budget_changed = self
            .last_budget
            .filter(|b| (b - budget).abs() > 1e-9)
            .map(|b| (b, budget));
        self.last_budget = Some(budget);
        let now = Instant::now();
        let action = policy::decide(
            &cfg.policy,
            &mut self.policy,
            &policy::Inputs {
                now,
                front: &self.table,
                active: active_idx,
                budget_ms: budget,
                slowdown,
                budget_changed,
            },
        );
        if let Some((old, new)) = budget_changed {
            if !matches!(action, Action::Switch { .. }) {
                self.shared.adapt.record(
                    "budget_change",
                    &format!(
                        "budget changed from {old:.3} ms to {new:.3} ms; `{}` still the best fit",
                        active.engine.subnet
                    ),
                    None,
                    None,
                );
            }
        }
        let budget_bytes = cfg.memory_budget_mb.saturating_mul(1 << 20);
        match action {
            Action::Stay => self.no_fit_noted = false,
            Action::NoFit { reason } => {
                if !self.no_fit_noted {
                    self.no_fit_noted = true;
                    self.shared.adapt.record("no_fit", &reason, None, None);
                }
            }
            Action::Switch { to, kind, reason } => {
                self.no_fit_noted = false;
                let subnet = self.table[to].subnet.clone();
                let t = Instant::now();
                match self.engines.get_or_build(&active.bundle, &subnet) {
                    Ok(engine) => {
                        let next = Active {
                            bundle: active.bundle.clone(),
                            engine,
                            result: active.result.clone(),
                            since: unix_now(),
                        };
                        let from = active.engine.subnet.to_string();
                        let full = format!(
                            "{reason} (compiled in {:.0} ms)",
                            t.elapsed().as_secs_f64() * 1e3
                        );
                        if self.shared.promote_if(
                            &active,
                            next,
                            &format!("adaptation [{}]: {reason}", kind.label()),
                        ) {
                            self.policy.switched(now);
                            self.shared.adapt.record(
                                kind.label(),
                                &full,
                                Some(from),
                                Some(subnet.to_string()),
                            );
                        } else {
                            log::info!(
                                "adaptation: the served model changed meanwhile; decision dropped"
                            );
                        }
                    }
                    Err(e) => self.shared.adapt.record(
                        "error",
                        &format!(
                            "cannot build `{subnet}` ({e}); staying on `{}`",
                            active.engine.subnet
                        ),
                        None,
                        None,
                    ),
                }
            }
        }
        let serving = self
            .shared
            .current()
            .map(|a| a.engine.subnet.clone())
            .unwrap_or_else(|| active.engine.subnet.clone());
        self.engines.evict(budget_bytes, &serving);
        // Warm one more front point per check while the memory budget allows,
        // so that a later swap does not wait for a compile.
        if let Some(p) = self
            .table
            .iter()
            .find(|p| !self.engines.contains(&p.subnet))
        {
            let subnet = p.subnet.clone();
            let avg = self.engines.bytes() / self.engines.map.len().max(1) as u64;
            if self.engines.bytes() + avg <= budget_bytes {
                if let Err(e) = self.engines.get_or_build(&active.bundle, &subnet) {
                    log::warn!("adaptation: cannot compile `{subnet}`: {e}");
                }
                self.engines.evict(budget_bytes, &serving);
            }
        }

        let mut s = self.shared.adapt.status();
        s.environment = env;
        s.budget_ms = Some(budget);
        s.percentile = cfg.latency_budget.percentile;
        s.slowdown = Some(slowdown);
        s.table = self
            .table
            .iter()
            .zip(&front)
            .map(|(p, f)| TableRow {
                subnet: p.subnet.to_string(),
                predicted_ms: p.table_ms,
                search_ms: f.predicted_ms,
                accuracy: p.accuracy,
                estimate_ms: p.table_ms * slowdown,
                fits: p.table_ms * slowdown <= budget,
            })
            .collect();
        s.table_source = if self.retimed { "retimed" } else { "search" }.into();
        s.retimed_at = self.retimed_at.clone();
        s.plans = self.engines.status(cfg.memory_budget_mb);
    }

    /// Time the served subnet on zeros (`runs` batch-1 runs) as samples.
    fn probe(&mut self, engine: &Arc<Engine>, runs: usize) {
        let Ok(plan) = engine.plan(1) else { return };
        let Ok(input) = engine.zeros(1) else { return };
        let key = engine_key(engine);
        for _ in 0..runs {
            let t = Instant::now();
            if plan.run(input.clone()).is_err() {
                return;
            }
            let ms = t.elapsed().as_secs_f64() * 1e3;
            lock(&self.shared.adapt.window).observe(key, ms, true);
        }
    }

    /// Re-time every front subnet end to end (median of batch-1 runs of its
    /// compiled subnet) and keep the table's total, taking the measured
    /// relative costs. Returns the time taken and a summary.
    fn retime(&mut self, bundle: &Bundle) -> Result<(f64, String), String> {
        let t = Instant::now();
        // Interleaved rounds (one run of every subnet per round), so that a
        // burst of load on the machine hits every subnet alike.
        let mut runs = Vec::with_capacity(self.table.len());
        for p in &self.table {
            let e = self.engines.get_or_build(bundle, &p.subnet)?;
            let plan = e.plan(1).map_err(|e| e.to_string())?;
            let input = e.zeros(1).map_err(|e| e.to_string())?;
            runs.push((plan, input, Vec::with_capacity(RETIME_ROUNDS)));
        }
        for round in 0..RETIME_WARMUP + RETIME_ROUNDS {
            for (plan, input, times) in runs.iter_mut() {
                let t = Instant::now();
                plan.run(input.clone()).map_err(|e| e.to_string())?;
                if round >= RETIME_WARMUP {
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        let measured: Vec<f64> = runs
            .into_iter()
            .map(|(_, _, mut v)| {
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            })
            .collect();
        let old: f64 = self.table.iter().map(|p| p.table_ms).sum();
        let new: f64 = measured.iter().sum();
        if !(new > 0.0 && old > 0.0) {
            return Err("no usable timings".into());
        }
        let scale = old / new;
        let mut parts = Vec::new();
        for (p, m) in self.table.iter_mut().zip(&measured) {
            let next = m * scale;
            parts.push(format!("{:.3}->{:.3}", p.table_ms, next));
            p.table_ms = next;
        }
        self.retimed = true;
        self.retimed_at = Some(rfc3339(unix_now()));
        // The contention factor referred to the old table.
        self.contention = None;
        self.contention_raw = None;
        Ok((
            t.elapsed().as_secs_f64(),
            format!("ms {}", parts.join(", ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_factor_and_nonuniform_changes() {
        let full = Hw {
            freq_ratio: Some(1.0),
            online: Some(4),
            throttled: false,
        };
        let slow = Hw {
            freq_ratio: Some(0.4),
            online: Some(4),
            throttled: true,
        };
        assert!((hardware_factor(&full, &slow, 2) - 2.5).abs() < 1e-9);
        let fewer = Hw {
            online: Some(1),
            ..full
        };
        assert!((hardware_factor(&full, &fewer, 2) - 2.0).abs() < 1e-9);
        assert!((hardware_factor(&full, &fewer, 1) - 1.0).abs() < 1e-9);
        assert_eq!(hardware_factor(&Hw::default(), &slow, 2), 1.0);
        assert_eq!(nonuniform(&full, &slow).unwrap().0, "retime_throttle");
        assert_eq!(nonuniform(&slow, &full).unwrap().0, "retime_recovered");
        assert_eq!(nonuniform(&full, &fewer).unwrap().0, "retime_cores");
        assert!(nonuniform(&full, &full).is_none());
    }
}
