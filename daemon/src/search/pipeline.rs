//! The whole search for one bundle: latency table, prediction check,
//! accuracy evaluator, strategy, cache; then choices under budgets with
//! measured latency and held-out accuracy. Used by `adaptived search` and by
//! the daemon's background search.

use std::path::PathBuf;
use std::time::Instant;

use adaptivenet_onnx::bundle::{BranchKind, Bundle, SubnetId};
use adaptivenet_onnx::dataset::Dataset;
use adaptivenet_onnx::tract_onnx::prelude::Tensor;
use anyhow::{anyhow, Result};

use super::accuracy::Evaluator;
use super::cache::{self, Cached};
use super::front::{choose, Choice, Point};
use super::latency::{self, TimingOptions};
use super::strategy::{self, SearchParams};
use super::Supernet;

/// Everything the search can be told.
#[derive(Debug, Clone)]
pub struct Options {
    /// Evaluation worker threads.
    pub threads: usize,
    pub timing: TimingOptions,
    /// Whole subnets timed to check the prediction (the oracle included).
    pub check_sample: usize,
    /// Evaluation batch size.
    pub eval_batch: usize,
    pub params: SearchParams,
    /// Restrict new branches to these kinds (`None`: all).
    pub kinds: Option<Vec<BranchKind>>,
    /// Where results are cached (`None`: no cache).
    pub state_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            timing: TimingOptions::default(),
            check_sample: 12,
            eval_batch: 50,
            params: SearchParams::default(),
            kinds: None,
            state_dir: None,
        }
    }
}

impl Options {
    fn space(&self) -> String {
        match &self.kinds {
            None => "all".into(),
            Some(k) => {
                let mut v: Vec<String> = k.iter().map(|k| k.to_string()).collect();
                v.sort();
                v.join("+")
            }
        }
    }
}

/// A finished (or cached) search.
pub struct Searched {
    pub net: Supernet,
    pub cached: Cached,
    /// Loaded from the state directory rather than searched.
    pub from_cache: bool,
    /// Time to load the cache, s (when loaded).
    pub cache_load_seconds: f64,
    pub cache_file: Option<PathBuf>,
    /// Why the cache was not used (when a state dir was given).
    pub cache_miss: Option<String>,
    pub options: Options,
    input: Tensor,
    dirty: bool,
}

/// One budget's choice with its measurements.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub budget_ms: f64,
    pub choice: Choice,
    pub measured_ms: f64,
    pub holdout_accuracy: Option<f64>,
}

/// Run (or load) the search of `bundle` on `data`.
pub fn search(bundle: &Bundle, data: &Dataset, options: &Options) -> Result<Searched> {
    let net = Supernet::restricted(bundle, options.kinds.as_deref())?;
    if data.item_shape != net.item_shape {
        return Err(anyhow!(
            "the search data items have shape {:?} but the bundle's input `{}` takes {:?} (per item, without the batch)",
            data.item_shape,
            net.manifest.input.name,
            net.item_shape
        ));
    }
    let threads = options.threads.max(1);
    let fingerprint = cache::fingerprint(threads);
    let data_id = cache::data_id(data);
    let space = options.space();
    let input = latency::sample_input(&net, Some(data))?;
    let cache_file = options
        .state_dir
        .as_ref()
        .map(|d| cache::cache_path(d, &bundle.sha256, &fingerprint));
    let mut cache_miss = None;
    if let Some(path) = &cache_file {
        let t = Instant::now();
        match cache::load(
            path,
            &bundle.sha256,
            &fingerprint,
            &data_id,
            &space,
            &options.params,
        ) {
            Ok(cached) => {
                return Ok(Searched {
                    net,
                    cached,
                    from_cache: true,
                    cache_load_seconds: t.elapsed().as_secs_f64(),
                    cache_file,
                    cache_miss: None,
                    options: options.clone(),
                    input,
                    dirty: false,
                })
            }
            Err(why) => cache_miss = Some(why),
        }
    }
    let start = Instant::now();
    log::info!(
        "search: {} subnets in the space ({} branches), {} images, {} thread(s)",
        net.count_subnets(),
        net.branches().count(),
        data.len(),
        threads
    );
    let (table, plans1) = latency::measure(&net, &input, options.timing)?;
    log::info!(
        "latency table: {} parts in {:.1} s",
        table.branch_ms.len() + 2,
        table.seconds
    );
    let check = latency::check(
        &net,
        &table,
        &plans1,
        &input,
        options.check_sample,
        options.params.seed,
    )?;
    drop(plans1);
    let oracle_ms = check.rows[0].measured_ms;
    log::info!(
        "latency prediction: mean error {:.1}%, max {:.1}% over {} subnets; oracle {:.3} ms",
        check.mean_error_pct,
        check.max_error_pct,
        check.rows.len(),
        oracle_ms
    );
    let ev = Evaluator::new(&net, data, options.eval_batch, threads)?;
    let look = table.lookup();
    let outcome = strategy::search(&net, &look, &ev, &options.params)?;
    let oracle = net.oracle();
    let oracle_accuracy = match outcome
        .points
        .iter()
        .find(|p| p.subnet == oracle && p.images == data.len() as u64)
    {
        Some(p) => p.accuracy,
        None => ev.evaluate(std::slice::from_ref(&oracle), 0..ev.batches())?[0].accuracy(),
    };
    log::info!(
        "{}: {} subnets evaluated, front of {} in {:.1} s (prefix tree: {} plan runs instead of {})",
        outcome.method,
        outcome.evaluations,
        outcome.front.len(),
        outcome.seconds,
        outcome.tree_runs,
        outcome.naive_runs
    );
    let cached = Cached {
        format: cache::CACHE_FORMAT,
        bundle_sha256: bundle.sha256.clone(),
        fingerprint,
        data: data_id,
        space,
        params: options.params.clone(),
        table,
        check,
        outcome,
        oracle_ms,
        oracle_accuracy,
        cache_bound_bytes: ev.cache_bound_bytes(),
        search_seconds: start.elapsed().as_secs_f64(),
        measured: Default::default(),
        holdout: Default::default(),
    };
    let mut s = Searched {
        net,
        cached,
        from_cache: false,
        cache_load_seconds: 0.0,
        cache_file,
        cache_miss,
        options: options.clone(),
        input,
        dirty: true,
    };
    s.save()?;
    Ok(s)
}

impl Searched {
    pub fn front(&self) -> &[Point] {
        &self.cached.outcome.front
    }

    /// Budget in ms: explicit, or a fraction of the oracle's measured latency.
    pub fn budget_ms(&self, ms: Option<f64>, frac: Option<f64>) -> f64 {
        match (ms, frac) {
            (Some(ms), _) => ms,
            (None, Some(f)) => f * self.cached.oracle_ms,
            (None, None) => self.cached.oracle_ms,
        }
    }

    /// Measured batch-1 latency of `subnet` (materialised), ms (cached).
    pub fn measured_ms(&mut self, subnet: &SubnetId) -> Result<f64> {
        let key = subnet.to_string();
        if let Some(v) = self.cached.measured.get(&key) {
            return Ok(*v);
        }
        let v = if *subnet == self.net.oracle() {
            self.cached.oracle_ms
        } else {
            latency::measure_subnet(&self.net, subnet, &self.input, self.cached.table.timing)?
        };
        self.cached.measured.insert(key, v);
        self.dirty = true;
        Ok(v)
    }

    /// Held-out accuracy of `subnets` (cached per data set).
    pub fn holdout(&mut self, data: &Dataset, subnets: &[SubnetId]) -> Result<Vec<f64>> {
        let id = cache::data_id(data);
        let known = self.cached.holdout.entry(id.clone()).or_default();
        let missing: Vec<SubnetId> = subnets
            .iter()
            .filter(|s| !known.contains_key(&s.to_string()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let ev = Evaluator::new(
                &self.net,
                data,
                self.options.eval_batch,
                self.options.threads,
            )?;
            let scores = ev.evaluate(&missing, 0..ev.batches())?;
            let known = self.cached.holdout.entry(id.clone()).or_default();
            for (s, sc) in missing.iter().zip(scores) {
                known.insert(s.to_string(), sc.accuracy());
            }
            self.dirty = true;
        }
        let known = self.cached.holdout.entry(id).or_default();
        subnets
            .iter()
            .map(|s| {
                known
                    .get(&s.to_string())
                    .copied()
                    .ok_or_else(|| anyhow!("no held-out accuracy for `{s}`"))
            })
            .collect()
    }

    /// The choice for a budget, checked by measurement: the most accurate
    /// front point predicted to fit is timed as the materialised subnet the
    /// daemon serves; while it measures over the budget, the next most
    /// accurate point predicted to fit is tried (the prediction is a few per
    /// cent off, so a point right at the budget can measure just over it).
    /// Returns the choice and its measured latency, ms.
    pub fn choose_measured(&mut self, budget_ms: f64) -> Result<(Choice, f64)> {
        let first = choose(self.front(), budget_ms)
            .ok_or_else(|| anyhow!("the search found no subnet (empty front)"))?;
        if first.over_budget {
            let ms = self.measured_ms(&first.point.subnet)?;
            return Ok((first, ms));
        }
        let mut fits: Vec<Point> = self
            .front()
            .iter()
            .filter(|p| p.predicted_ms <= budget_ms)
            .cloned()
            .collect();
        fits.sort_by(|a, b| b.accuracy.total_cmp(&a.accuracy));
        let mut fastest: Option<(Point, f64)> = None;
        for p in fits {
            let ms = self.measured_ms(&p.subnet)?;
            if ms <= budget_ms {
                if p.subnet != first.point.subnet {
                    log::info!(
                        "search: `{}` measured {:.3} ms over the {budget_ms:.3} ms budget; chose `{}` ({ms:.3} ms)",
                        first.point.subnet,
                        self.measured_ms(&first.point.subnet)?,
                        p.subnet
                    );
                }
                return Ok((
                    Choice {
                        point: p,
                        over_budget: false,
                    },
                    ms,
                ));
            }
            if fastest.as_ref().is_none_or(|(_, f)| ms < *f) {
                fastest = Some((p, ms));
            }
        }
        // every candidate measured over: keep the fastest measured, flagged
        let (point, ms) = fastest.ok_or_else(|| anyhow!("no front point fits the budget"))?;
        Ok((
            Choice {
                point,
                over_budget: true,
            },
            ms,
        ))
    }

    /// The choice for a budget, measured (and evaluated on `holdout`).
    pub fn choose(&mut self, budget_ms: f64, holdout: Option<&Dataset>) -> Result<Chosen> {
        let (choice, measured_ms) = self.choose_measured(budget_ms)?;
        let holdout_accuracy = match holdout {
            Some(h) => Some(self.holdout(h, std::slice::from_ref(&choice.point.subnet))?[0]),
            None => None,
        };
        Ok(Chosen {
            budget_ms,
            choice,
            measured_ms,
            holdout_accuracy,
        })
    }

    /// Write the cache file if anything new was measured.
    pub fn save(&mut self) -> Result<()> {
        if let (true, Some(path)) = (self.dirty, &self.cache_file) {
            cache::store(path, &self.cached)?;
        }
        self.dirty = false;
        Ok(())
    }
}

/// The daemon's background search ([`crate::search_api::SearchFn`]): the
/// search of this module on the configured validation data (the bundle's
/// calibration sample is not used here; without data the oracle-only
/// stand-in runs), the choice under the configured budget. The daemon
/// persists the result itself, so nothing is cached here.
pub fn search_for_daemon(
    bundle: &Bundle,
    input: &crate::search_api::SearchInput,
) -> std::result::Result<crate::search_api::SearchResult, crate::search_api::SearchError> {
    use crate::search_api::{FrontPoint, SearchError, SearchResult};
    let Some(data) = input.validation.as_deref() else {
        return crate::search_api::oracle_only(bundle, input);
    };
    let t = Instant::now();
    let options = Options {
        threads: input.threads.max(1),
        ..Options::default()
    };
    let err = |e: anyhow::Error| SearchError(format!("{e:#}"));
    let mut s = search(bundle, data, &options).map_err(err)?;
    let budget_ms = input.budget.budget_ms(s.cached.oracle_ms);
    let (chosen, _) = s.choose_measured(budget_ms).map_err(err)?;
    if chosen.over_budget {
        log::warn!(
            "search: the budget {budget_ms:.3} ms is below the fastest subnet ({:.3} ms predicted): serving the fastest, `{}`",
            chosen.point.predicted_ms,
            chosen.point.subnet
        );
    }
    let c = &s.cached;
    let result = SearchResult {
        bundle_sha256: bundle.sha256.clone(),
        fingerprint: input.fingerprint.clone(),
        front: c
            .outcome
            .front
            .iter()
            .map(|p| FrontPoint {
                subnet: p.subnet.clone(),
                predicted_ms: p.predicted_ms,
                accuracy: p.accuracy,
            })
            .collect(),
        chosen: chosen.point.subnet.clone(),
        budget_ms,
        oracle_ms: c.oracle_ms,
        method: format!(
            "{}; latency prediction mean error {:.1}%{}",
            c.outcome.method,
            c.check.mean_error_pct,
            if chosen.over_budget {
                "; budget below the fastest subnet: fastest chosen"
            } else {
                ""
            }
        ),
        elapsed_s: t.elapsed().as_secs_f64(),
    };
    let _ = s.save();
    Ok(result)
}
