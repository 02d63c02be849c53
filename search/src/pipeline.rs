//! The whole search for one bundle: latency table, prediction check,
//! accuracy evaluator, strategy, cache; then choices under budgets with
//! measured latency and held-out accuracy. Used by `adaptived search` and by
//! the daemon's background search.

use std::path::PathBuf;
use std::time::Instant;

use crate::error::{invalid, Result};
use adaptivenet_onnx::bundle::{BranchKind, Bundle, SubnetId};
use adaptivenet_onnx::dataset::Dataset;
use adaptivenet_onnx::tract_onnx::prelude::Tensor;

use crate::accuracy::Evaluator;
use crate::cache::{self, CacheKey, SearchResult};
use crate::front::{choose, Choice, FrontPoint};
use crate::latency::{self, TimingOptions};
use crate::progress::{self, Phase, ProgressHook};
use crate::strategy::{self, SearchParams};
use crate::Supernet;

/// Everything the search can be told.
#[derive(Debug, Clone)]
pub struct Options {
    /// Evaluation worker threads.
    pub threads: usize,
    pub timing: TimingOptions,
    /// Whole subnets timed to check the prediction (the oracle included).
    pub check_sample: usize,
    /// Evaluation batch size. 1 (the default) evaluates with the plans the
    /// latency table compiled, which tract runs with lazy im2col; at a
    /// larger batch it materialises im2col matrices and the demo search
    /// took 1.8x the CPU time (docs/results.md).
    pub eval_batch: usize,
    pub params: SearchParams,
    /// Restrict new branches to these kinds (`None`: all).
    pub kinds: Option<Vec<BranchKind>>,
    /// Where results are cached (`None`: no cache).
    pub state_dir: Option<PathBuf>,
    /// Called with the search's progress (phase, done, total).
    pub progress: Option<ProgressHook>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            timing: TimingOptions::default(),
            check_sample: 12,
            eval_batch: 1,
            params: SearchParams::default(),
            kinds: None,
            state_dir: None,
            progress: None,
        }
    }
}

impl Options {
    /// The space name recorded with a result (`all`, `merge`, `merge+shrink`...).
    pub fn space(&self) -> String {
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
    pub cached: SearchResult,
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
        return Err(invalid!(
            "the search data items have shape {:?} but the bundle's input `{}` takes {:?} (per item, without the batch)",
            data.item_shape,
            net.manifest.input.name,
            net.item_shape
        ));
    }
    let threads = options.threads.max(1);
    let fingerprint = crate::fingerprint(threads);
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
        let key = CacheKey {
            bundle_sha256: &bundle.sha256,
            fingerprint: &fingerprint,
            data: Some(&data_id),
            space: Some(&space),
            params: Some(&options.params),
        };
        match cache::load(path, &key) {
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
            Err(why) => cache_miss = Some(why.to_string()),
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
    let (table, plans1) = latency::measure_with_progress(&net, &input, options.timing, &|d, t| {
        progress::report(&options.progress, Phase::Latency, d, t)
    })?;
    log::info!(
        "latency table: {} parts in {:.1} s",
        table.branch_ms.len() + 2,
        table.seconds
    );
    let check = latency::check_with_progress(
        &net,
        &table,
        &plans1,
        &input,
        options.check_sample,
        options.params.seed,
        &|d, t| progress::report(&options.progress, Phase::Check, d, t),
    )?;
    let oracle_ms = check.rows[0].measured_ms;
    log::info!(
        "latency prediction: mean error {:.1}%, max {:.1}% over {} subnets; oracle {:.3} ms",
        check.mean_error_pct,
        check.max_error_pct,
        check.rows.len(),
        oracle_ms
    );
    let mut ev = if options.eval_batch <= 1 {
        Evaluator::with_plans(&net, data, plans1, threads)?
    } else {
        drop(plans1);
        Evaluator::new(&net, data, options.eval_batch, threads)?
    };
    ev.set_progress(options.progress.clone());
    let look = table.lookup();
    let outcome = strategy::search(&net, &look, &ev, &options.params)?;
    let oracle = net.oracle();
    let oracle_accuracy = match outcome
        .points
        .iter()
        .find(|p| p.subnet == oracle && p.images == data.len() as u64)
    {
        Some(p) => p.accuracy,
        None => {
            progress::report(&options.progress, Phase::Oracle, 0, 1);
            ev.evaluate(std::slice::from_ref(&oracle), 0..ev.batches())?[0].accuracy()
        }
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
    let cached = SearchResult {
        format: cache::CACHE_FORMAT,
        bundle_sha256: bundle.sha256.clone(),
        fingerprint,
        data: data_id,
        space,
        params: options.params.clone(),
        table: Some(table),
        check: Some(check),
        outcome,
        oracle_ms,
        oracle_accuracy,
        images: data.len() as u64,
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
    pub fn front(&self) -> &[FrontPoint] {
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
            latency::measure_subnet(&self.net, subnet, &self.input, self.options.timing)?
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
                    .ok_or_else(|| invalid!("no held-out accuracy for `{s}`"))
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
            .ok_or_else(|| invalid!("the search found no subnet (empty front)"))?;
        if first.over_budget {
            let ms = self.measured_ms(&first.point.subnet)?;
            return Ok((first, ms));
        }
        let mut fits: Vec<FrontPoint> = self
            .front()
            .iter()
            .filter(|p| p.predicted_ms <= budget_ms)
            .cloned()
            .collect();
        fits.sort_by(|a, b| b.accuracy.total_cmp(&a.accuracy));
        let mut fastest: Option<(FrontPoint, f64)> = None;
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
        let (point, ms) = fastest.ok_or_else(|| invalid!("no front point fits the budget"))?;
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

/// The search without local data: the front is the oracle path alone, its
/// latency measured here, its accuracy 1 by definition (agreement with
/// itself). Stored like any result, so a restart does not measure again.
pub fn oracle_only(bundle: &Bundle, options: &Options) -> Result<SearchResult> {
    let start = Instant::now();
    let net = Supernet::of_bundle(bundle)?;
    let threads = options.threads.max(1);
    let fingerprint = crate::fingerprint(threads);
    let input = latency::sample_input(&net, None)?;
    let oracle = net.oracle();
    let oracle_ms = latency::measure_subnet(&net, &oracle, &input, options.timing)?;
    let point = FrontPoint {
        subnet: oracle.clone(),
        predicted_ms: oracle_ms,
        accuracy: 1.0,
        images: 0,
    };
    let mut result = SearchResult::of_front(
        &bundle.sha256,
        &fingerprint,
        vec![point],
        oracle_ms,
        "oracle-only (no validation data)",
    );
    result.space = options.space();
    result.params = options.params.clone();
    result.search_seconds = start.elapsed().as_secs_f64();
    result.outcome.seconds = result.search_seconds;
    result.measured.insert(oracle.to_string(), oracle_ms);
    if let Some(dir) = &options.state_dir {
        cache::store(
            &cache::cache_path(dir, &bundle.sha256, &result.fingerprint),
            &result,
        )?;
    }
    Ok(result)
}
