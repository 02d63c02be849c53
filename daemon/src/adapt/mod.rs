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
//! Swaps are atomic ([`crate::shared::Shared::promote_if`]): requests in flight hold their
//! own `Arc` of the old model and finish on it. Compiled subnets are cached
//! for fast swaps within `memory_budget_mb`; the least recently used ones
//! beyond it are dropped (a request still running on one keeps it alive).

mod engines;
mod hardware;

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use adaptivenet_onnx::bundle::Bundle;
use adaptivenet_onnx::measure::median;
use adaptivenet_search::{FrontPoint, SearchResult};

use crate::clock::{rfc3339, unix_now};
use crate::config::Config;
use crate::engine::Engine;
use crate::liveness::Thread;
use crate::monitor::{engine_key, Environment, Monitor};
use crate::policy::{self, Action, PolicyState};
use crate::shared::{Active, Shared};
use crate::status::{DecisionKind, TableRow};
use engines::EngineCache;
use hardware::{hardware_factor, nonuniform, Hw};

/// Re-timing: untimed and timed interleaved rounds.
const RETIME_WARMUP: usize = 3;
const RETIME_ROUNDS: usize = 21;

/// The loop's private state.
struct Controller {
    shared: Arc<Shared>,
    monitor: Monitor,
    monitor_root: std::path::PathBuf,
    policy: PolicyState,
    engines: EngineCache,
    /// The bundle and front the table belongs to.
    source: Option<(String, Vec<FrontPoint>)>,
    /// The front with the table's (possibly re-timed) latencies.
    table: Vec<FrontPoint>,
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

/// Start the loop on its own supervised thread: a panic outside a check is
/// logged, counted, and the loop starts again with fresh state (a panic in
/// one check leaves the served subnet unchanged and the loop running).
pub fn spawn(shared: Arc<Shared>, config: Arc<Config>) -> std::io::Result<()> {
    let (tx, rx) = channel();
    shared.adapt.set_waker(tx);
    shared.adapt.set_config(config.clone());
    let sh = shared.clone();
    crate::supervise::spawn(
        "adapt",
        move || {
            let mut c = Controller {
                monitor: Monitor::new(&config.monitor.root),
                monitor_root: config.monitor.root.clone(),
                shared: shared.clone(),
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
            c.run(&rx)
        },
        move |m| sh.thread_panicked("adapt", m),
    )?;
    Ok(())
}

impl Controller {
    fn run(&mut self, wake: &Receiver<()>) {
        loop {
            let Some(cfg) = self.shared.adapt.config() else {
                return;
            };
            let tick =
                Duration::from_secs_f64(cfg.policy.check_interval_s.min(cfg.monitor.interval_s));
            self.shared.liveness.beat(Thread::Adapt, tick);
            match wake.recv_timeout(tick) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while wake.try_recv().is_ok() {}
            let cfg = self.shared.adapt.config().unwrap_or(cfg);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.check(&cfg)));
            if r.is_err() {
                log::error!("adaptation: a check panicked; the served subnet is unchanged");
            }
        }
    }

    /// One check: sample the board, refresh the table, re-time if the
    /// slowdown is not uniform, update the contention factor, decide, act,
    /// warm the next subnet, publish the status.
    fn check(&mut self, cfg: &Config) {
        if cfg.monitor.root != self.monitor_root {
            self.monitor = Monitor::new(&cfg.monitor.root);
            self.monitor_root = cfg.monitor.root.clone();
        }
        let mut env = self
            .monitor
            .sample(cfg.policy.throttle_freq_ratio, cfg.monitor.hot_c);
        let served = self.shared.current();
        let Some((active, result)) = served.and_then(|a| {
            let r = a.result.clone().filter(|r| !r.front().is_empty())?;
            Some((a, r))
        }) else {
            env.hardware_factor = 1.0;
            let mut s = self.shared.adapt.status();
            s.environment = env;
            s.percentile = cfg.latency_budget.percentile;
            return;
        };
        self.refresh_table(&active, &result, &env);
        self.engines.insert(&active.engine);
        let budget = cfg.latency_budget.budget_ms(result.oracle_ms);
        self.shared.adapt.status().budget_ms = Some(budget);
        let now_hw = Hw::of(&env);
        if cfg.policy.retime_on_throttle {
            self.retime_if_nonuniform(&active.bundle, now_hw);
        }
        if cfg.monitor.probe_idle_s > 0.0 {
            self.probe_if_idle(&active.engine, cfg);
        }
        let active_idx = self
            .table
            .iter()
            .position(|p| p.subnet == active.engine.subnet);
        self.update_contention(&active.engine, active_idx, cfg);
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
                    DecisionKind::BudgetChange,
                    &format!(
                        "budget changed from {old:.3} ms to {new:.3} ms; `{}` still the best fit",
                        active.engine.subnet
                    ),
                    None,
                    None,
                );
            }
        }
        self.act(action, &active, now);
        let budget_bytes = cfg.memory_budget_mb.saturating_mul(1 << 20);
        self.warm_next(&active, budget_bytes);
        self.publish(cfg, env, &result, budget, slowdown);
    }

    /// A new bundle or a new search result: a fresh table and policy state.
    fn refresh_table(&mut self, active: &Active, result: &SearchResult, env: &Environment) {
        let sha = &active.bundle.sha256;
        let front = result.front();
        if self
            .source
            .as_ref()
            .is_some_and(|(s, f)| s == sha && f.as_slice() == front)
        {
            return;
        }
        self.engines.reset(sha);
        self.table = front.to_vec();
        self.table_hw = Hw::of(env);
        self.timed_hw = self.table_hw;
        self.retimed = false;
        self.retimed_at = None;
        self.contention = None;
        self.contention_raw = None;
        self.policy = PolicyState::default();
        self.last_budget = None;
        self.no_fit_noted = false;
        self.source = Some((sha.clone(), front.to_vec()));
        log::info!(
            "adaptation: front of {} point(s) for {} (sha256 {sha})",
            self.table.len(),
            active.label()
        );
    }

    /// Non-uniform slowdown (throttling, cores, clock): re-time the front.
    fn retime_if_nonuniform(&mut self, bundle: &Bundle, now_hw: Hw) {
        let Some((kind, why)) = nonuniform(&self.timed_hw, &now_hw) else {
            return;
        };
        self.timed_hw = now_hw;
        let reason = if self.table.len() > 1 {
            match self.retime(bundle) {
                Ok((secs, summary)) => format!(
                    "{why}: re-timed {} subnets in {secs:.2} s ({summary}); choosing again",
                    self.table.len()
                ),
                Err(e) => format!("{why}: re-timing failed ({e}); keeping the table"),
            }
        } else {
            format!("{why}; the front has one point, nothing to re-time")
        };
        self.shared.adapt.record(kind, &reason, None, None);
    }

    /// Keep the contention factor current when no requests come: time the
    /// served subnet on zeros.
    fn probe_if_idle(&mut self, engine: &Arc<Engine>, cfg: &Config) {
        let idle = Duration::from_secs_f64(cfg.monitor.probe_idle_s);
        let quiet = self
            .shared
            .adapt
            .window()
            .idle_for()
            .is_none_or(|d| d >= idle);
        if !(quiet && self.last_probe.elapsed() >= idle) {
            return;
        }
        self.last_probe = Instant::now();
        let Ok(plan) = engine.plan(1) else { return };
        let Ok(input) = engine.zeros(1) else { return };
        let key = engine_key(engine);
        for _ in 0..cfg.monitor.probe_runs {
            let t = Instant::now();
            if plan.run(input.clone()).is_err() {
                return;
            }
            let ms = t.elapsed().as_secs_f64() * 1e3;
            self.shared.adapt.window().observe(key, ms, true);
        }
    }

    /// The contention factor from recent samples of the served subnet.
    fn update_contention(&mut self, engine: &Arc<Engine>, active: Option<usize>, cfg: &Config) {
        let window = Duration::from_secs_f64(cfg.monitor.window_s);
        let mut w = self.shared.adapt.window();
        w.prune(window.max(Duration::from_secs(1)));
        let (p, n) = w.percentile(engine_key(engine), window, cfg.latency_budget.percentile);
        let (Some(p), Some(i)) = (p, active) else {
            return;
        };
        if n >= cfg.policy.min_samples && self.table[i].predicted_ms > 0.0 {
            let raw = p / self.table[i].predicted_ms;
            let a = cfg.monitor.smoothing;
            self.contention_raw = Some(raw);
            self.contention = Some(match self.contention {
                Some(c) => a * raw + (1.0 - a) * c,
                None => raw,
            });
        }
    }

    /// Carry out the policy's action: a switch is an atomic swap that loses
    /// to a bundle swapped in meanwhile.
    fn act(&mut self, action: Action, active: &Arc<Active>, now: Instant) {
        let (to, kind, reason) = match action {
            Action::Stay => {
                self.no_fit_noted = false;
                return;
            }
            Action::NoFit { reason } => {
                if !self.no_fit_noted {
                    self.no_fit_noted = true;
                    self.shared
                        .adapt
                        .record(DecisionKind::NoFit, &reason, None, None);
                }
                return;
            }
            Action::Switch { to, kind, reason } => (to, kind, reason),
        };
        self.no_fit_noted = false;
        let subnet = self.table[to].subnet.clone();
        let t = Instant::now();
        let engine = match self.engines.get_or_build(&active.bundle, &subnet) {
            Ok(e) => e,
            Err(e) => {
                self.shared.adapt.record(
                    DecisionKind::Error,
                    &format!(
                        "cannot build `{subnet}` ({e}); staying on `{}`",
                        active.engine.subnet
                    ),
                    None,
                    None,
                );
                return;
            }
        };
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
        if self
            .shared
            .promote_if(active, next, &format!("adaptation [{kind}]: {reason}"))
        {
            self.policy.switched(now);
            self.shared
                .adapt
                .record(kind, &full, Some(from), Some(subnet.to_string()));
        } else {
            log::info!("adaptation: the served model changed meanwhile; decision dropped");
        }
    }

    /// Drop compiled subnets beyond the memory budget, then compile one more
    /// front point while the budget allows, so a later swap does not wait
    /// for a compile.
    fn warm_next(&mut self, active: &Active, budget_bytes: u64) {
        let serving = self
            .shared
            .current()
            .map(|a| a.engine.subnet.clone())
            .unwrap_or_else(|| active.engine.subnet.clone());
        self.engines.evict(budget_bytes, &serving);
        let Some(p) = self
            .table
            .iter()
            .find(|p| !self.engines.contains(&p.subnet))
        else {
            return;
        };
        let subnet = p.subnet.clone();
        if self.engines.bytes() + self.engines.mean_bytes() <= budget_bytes {
            if let Err(e) = self.engines.get_or_build(&active.bundle, &subnet) {
                log::warn!("adaptation: cannot compile `{subnet}`: {e}");
            }
            self.engines.evict(budget_bytes, &serving);
        }
    }

    /// What `/adaptation` and `/metrics` show of this check.
    fn publish(
        &self,
        cfg: &Config,
        env: Environment,
        result: &SearchResult,
        budget: f64,
        slowdown: f64,
    ) {
        let mut s = self.shared.adapt.status();
        s.environment = env;
        s.budget_ms = Some(budget);
        s.percentile = cfg.latency_budget.percentile;
        s.slowdown = Some(slowdown);
        s.table = self
            .table
            .iter()
            .zip(result.front())
            .map(|(p, f)| TableRow {
                subnet: p.subnet.to_string(),
                predicted_ms: p.predicted_ms,
                search_ms: f.predicted_ms,
                accuracy: p.accuracy,
                estimate_ms: p.predicted_ms * slowdown,
                fits: p.predicted_ms * slowdown <= budget,
            })
            .collect();
        s.table_source = if self.retimed { "retimed" } else { "search" }.into();
        s.retimed_at = self.retimed_at.clone();
        s.plans = self.engines.status(cfg.memory_budget_mb);
    }

    /// Re-time every front subnet end to end (median of batch-1 runs of its
    /// compiled subnet) and keep the table's total, taking the measured
    /// relative costs. Returns the time taken and a summary.
    fn retime(&mut self, bundle: &Bundle) -> Result<(f64, String), RetimeError> {
        let t = Instant::now();
        // Interleaved rounds (one run of every subnet per round), so that a
        // burst of load on the machine hits every subnet alike.
        let mut runs = Vec::with_capacity(self.table.len());
        for p in &self.table {
            let e = self.engines.get_or_build(bundle, &p.subnet)?;
            let plan = e.plan(1)?;
            let input = e.zeros(1)?;
            runs.push((plan, input, Vec::with_capacity(RETIME_ROUNDS)));
        }
        for round in 0..RETIME_WARMUP + RETIME_ROUNDS {
            for (plan, input, times) in runs.iter_mut() {
                let t = Instant::now();
                plan.run(input.clone())
                    .map_err(crate::engine::EngineError::from)?;
                if round >= RETIME_WARMUP {
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        let measured: Vec<f64> = runs
            .into_iter()
            .map(|(_, _, mut v)| median(&mut v))
            .collect();
        let old: f64 = self.table.iter().map(|p| p.predicted_ms).sum();
        let new: f64 = measured.iter().sum();
        if !(new > 0.0 && old > 0.0) {
            return Err(RetimeError::NoTimings);
        }
        let scale = old / new;
        let mut parts = Vec::new();
        for (p, m) in self.table.iter_mut().zip(&measured) {
            let next = m * scale;
            parts.push(format!("{:.3}->{:.3}", p.predicted_ms, next));
            p.predicted_ms = next;
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

/// Why re-timing the front failed.
#[derive(Debug, thiserror::Error)]
enum RetimeError {
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("no usable timings")]
    NoTimings,
}
