//! The latency table: the stem, the head and every branch compiled as its
//! own batch-1 tract plan and timed on real cut tensors (the oracle path run
//! on a real input item), after warm-up, as the median of repeated runs.
//! Runs are interleaved (one run of every plan per round) so that a burst of
//! load on the machine hits all plans alike rather than a few. Within a round
//! a plan runs `back_to_back` times and only the last run is timed: a served
//! subnet runs request after request with its weights in cache, while a plan
//! timed right after 40 others would find them evicted and be overestimated.
//!
//! A subnet's predicted latency is stem + its branches + head. [`check`]
//! times a sample of whole subnets, both as chained span plans and as one
//! materialised plan (what the daemon serves), against the prediction.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use crate::error::{Context, Result};
use adaptivenet_onnx::bundle::{BranchId, SubnetId};
use adaptivenet_onnx::tract_onnx::prelude::Tensor;
use adaptivenet_onnx::Plan;
use serde::{Deserialize, Serialize};

use adaptivenet_onnx::measure::median;

use crate::{Rng, SpanPlans, Supernet};

/// How to time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimingOptions {
    /// Untimed rounds first.
    pub warmup: usize,
    /// Timed rounds; the median is kept.
    pub runs: usize,
    /// Runs of a plan in a row per round, the last one timed (at least 1).
    #[serde(default = "one")]
    pub back_to_back: usize,
}

fn one() -> usize {
    1
}

impl Default for TimingOptions {
    fn default() -> Self {
        TimingOptions {
            warmup: 10,
            runs: 41,
            back_to_back: 2,
        }
    }
}

/// Per-part batch-1 latency on this device, ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyTable {
    pub stem_ms: f64,
    pub head_ms: f64,
    /// Branch id -> median ms.
    pub branch_ms: BTreeMap<String, f64>,
    pub timing: TimingOptions,
    /// Wall time spent compiling and timing, s.
    pub seconds: f64,
}

impl LatencyTable {
    /// A fast lookup by branch id.
    pub fn lookup(&self) -> LatencyLookup {
        LatencyLookup {
            stem_head: self.stem_ms + self.head_ms,
            branch: self
                .branch_ms
                .iter()
                .filter_map(|(k, v)| k.parse::<BranchId>().ok().map(|id| (id, *v)))
                .collect(),
        }
    }

    /// Predicted batch-1 latency of `subnet`, ms (NaN if a branch is unknown).
    pub fn predict(&self, subnet: &SubnetId) -> f64 {
        self.lookup().predict(subnet)
    }
}

/// [`LatencyTable`] indexed by branch id.
#[derive(Debug, Clone)]
pub struct LatencyLookup {
    pub stem_head: f64,
    pub branch: HashMap<BranchId, f64>,
}

impl LatencyLookup {
    pub fn predict(&self, subnet: &SubnetId) -> f64 {
        self.stem_head
            + subnet
                .branches()
                .iter()
                .map(|b| self.branch.get(b).copied().unwrap_or(f64::NAN))
                .sum::<f64>()
    }
    pub fn branch(&self, id: &BranchId) -> f64 {
        self.branch.get(id).copied().unwrap_or(f64::NAN)
    }
}

/// One batch-1 input item: the first item of `data`, or zeros.
pub fn sample_input(
    net: &Supernet,
    data: Option<&adaptivenet_onnx::dataset::Dataset>,
) -> Result<Tensor> {
    if let Some(d) = data.filter(|d| !d.is_empty()) {
        return Ok(d.batch(0, 1)?);
    }
    let mut shape = vec![1];
    shape.extend(&net.item_shape);
    let n: usize = shape.iter().product();
    Ok(Tensor::from_shape(&shape, &vec![0f32; n])?)
}

/// Time `plans` (each with its input) in interleaved rounds; medians in ms.
pub fn time_interleaved(plans: &[(&Plan, &Tensor)], t: TimingOptions) -> Result<Vec<f64>> {
    time_rounds(plans, t, &|_| {})
}

/// [`time_interleaved`], calling `on_round` with the number of rounds done
/// after each round (of `t.warmup + t.runs` in all).
fn time_rounds(
    plans: &[(&Plan, &Tensor)],
    t: TimingOptions,
    on_round: &dyn Fn(usize),
) -> Result<Vec<f64>> {
    let mut samples = vec![Vec::with_capacity(t.runs); plans.len()];
    for round in 0..t.warmup + t.runs.max(1) {
        for (k, (plan, input)) in plans.iter().enumerate() {
            for _ in 1..t.back_to_back {
                drop(plan.run((*input).clone())?);
            }
            let x = (*input).clone();
            let start = Instant::now();
            let out = plan.run(x)?;
            let el = start.elapsed().as_secs_f64() * 1e3;
            drop(out);
            if round >= t.warmup {
                samples[k].push(el);
            }
        }
        on_round(round + 1);
    }
    Ok(samples.iter_mut().map(|s| median(s)).collect())
}

/// Compile batch-1 plans and measure the table. Returns the plans too (the
/// prediction check reuses them).
pub fn measure(
    net: &Supernet,
    input: &Tensor,
    timing: TimingOptions,
) -> Result<(LatencyTable, SpanPlans)> {
    measure_with_progress(net, input, timing, &|_, _| {})
}

/// [`measure`], calling `progress(done, total)`: 0 before compiling the
/// plans, 1 after, then once per timing round (`total` is the rounds + 1).
pub fn measure_with_progress(
    net: &Supernet,
    input: &Tensor,
    timing: TimingOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<(LatencyTable, SpanPlans)> {
    let start = Instant::now();
    let total = (timing.warmup + timing.runs.max(1)) as u64 + 1;
    progress(0, total);
    let facts = net.facts(1)?;
    let plans = net.span_plans(&facts)?;
    progress(1, total);
    // Real cut tensors: the oracle path on a real item.
    let mut cuts = Vec::with_capacity(net.num_blocks() + 1);
    let c0 = plans.stem.run(input.clone()).context("running the stem")?;
    cuts.push(c0);
    for i in 0..net.num_blocks() {
        let next = plans
            .branch(&BranchId::Original { block: i })?
            .run(cuts[i].clone())?;
        cuts.push(next);
    }
    let ids: Vec<BranchId> = net.branches().collect();
    let mut jobs: Vec<(&Plan, &Tensor)> =
        vec![(&plans.stem, input), (&plans.head, &cuts[net.num_blocks()])];
    for id in &ids {
        jobs.push((plans.branch(id)?, &cuts[id.from_cut()]));
    }
    let ms = time_rounds(&jobs, timing, &|r| progress(1 + r as u64, total))?;
    let table = LatencyTable {
        stem_ms: ms[0],
        head_ms: ms[1],
        branch_ms: ids
            .iter()
            .zip(&ms[2..])
            .map(|(id, v)| (id.to_string(), *v))
            .collect(),
        timing,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((table, plans))
}

/// One subnet of the prediction check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRow {
    pub subnet: SubnetId,
    pub predicted_ms: f64,
    /// Span plans run one after the other.
    pub chained_ms: f64,
    /// One materialised plan (what the daemon serves).
    pub measured_ms: f64,
    /// (predicted - measured) / measured, %.
    pub error_pct: f64,
    pub chained_error_pct: f64,
}

/// The prediction check over a sample of subnets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionCheck {
    pub rows: Vec<CheckRow>,
    /// Mean and max |error| against the materialised plans, %.
    pub mean_error_pct: f64,
    pub max_error_pct: f64,
    /// The same against chained plans, %.
    pub chained_mean_error_pct: f64,
    pub chained_max_error_pct: f64,
    /// Wall time of the check (compiling and timing the sample), s.
    #[serde(default)]
    pub seconds: f64,
}

/// Materialise `subnet` and compile it at batch 1.
pub fn materialised_plan(net: &Supernet, subnet: &SubnetId) -> Result<Plan> {
    let model = net.materialise(subnet)?;
    Plan::whole_model(&model, 1).with_context(|| format!("compiling subnet `{subnet}`"))
}

/// Median batch-1 latency of the materialised `subnet`, ms.
pub fn measure_subnet(
    net: &Supernet,
    subnet: &SubnetId,
    input: &Tensor,
    timing: TimingOptions,
) -> Result<f64> {
    let plan = materialised_plan(net, subnet)?;
    Ok(time_interleaved(&[(&plan, input)], timing)?[0])
}

/// Time the oracle and `sample - 1` random subnets (chained and
/// materialised, interleaved) against the table's prediction.
pub fn check(
    net: &Supernet,
    table: &LatencyTable,
    plans: &SpanPlans,
    input: &Tensor,
    sample: usize,
    seed: u64,
) -> Result<PredictionCheck> {
    check_with_progress(net, table, plans, input, sample, seed, &|_, _| {})
}

/// [`check`], calling `progress(done, total)` before the first subnet and
/// after each one.
pub fn check_with_progress(
    net: &Supernet,
    table: &LatencyTable,
    plans: &SpanPlans,
    input: &Tensor,
    sample: usize,
    seed: u64,
    progress: &dyn Fn(u64, u64),
) -> Result<PredictionCheck> {
    let start = Instant::now();
    let look = table.lookup();
    let mut rng = Rng::seeded(seed);
    let mut subnets = vec![net.oracle()];
    let mut tries = 0;
    while subnets.len() < sample.max(1) && tries < sample * 20 {
        tries += 1;
        let s = net.random_subnet(&mut rng);
        if !subnets.contains(&s) {
            subnets.push(s);
        }
    }
    struct Chain<'a> {
        plans: Vec<&'a Plan>,
    }
    let mut rows = Vec::new();
    progress(0, subnets.len() as u64);
    for s in &subnets {
        let whole = materialised_plan(net, s)?;
        let mut chain = Chain {
            plans: vec![&plans.stem],
        };
        for b in s.branches() {
            chain.plans.push(plans.branch(b)?);
        }
        chain.plans.push(&plans.head);
        // interleave: chained runs, then materialised runs, every round
        let (mut tc, mut tw) = (Vec::new(), Vec::new());
        let run_chain = || -> Result<f64> {
            let mut y = input.clone();
            let t0 = Instant::now();
            for p in &chain.plans {
                y = p.run(y)?;
            }
            drop(y);
            Ok(t0.elapsed().as_secs_f64() * 1e3)
        };
        let run_whole = || -> Result<f64> {
            let x = input.clone();
            let t0 = Instant::now();
            let out = whole.run(x)?;
            let el = t0.elapsed().as_secs_f64() * 1e3;
            drop(out);
            Ok(el)
        };
        for round in 0..table.timing.warmup + table.timing.runs.max(1) {
            for _ in 1..table.timing.back_to_back {
                run_chain()?;
            }
            let c = run_chain()?;
            for _ in 1..table.timing.back_to_back {
                run_whole()?;
            }
            let w = run_whole()?;
            if round >= table.timing.warmup {
                tc.push(c);
                tw.push(w);
            }
        }
        let predicted_ms = look.predict(s);
        let (chained_ms, measured_ms) = (median(&mut tc), median(&mut tw));
        rows.push(CheckRow {
            subnet: s.clone(),
            predicted_ms,
            chained_ms,
            measured_ms,
            error_pct: (predicted_ms - measured_ms) / measured_ms * 100.0,
            chained_error_pct: (predicted_ms - chained_ms) / chained_ms * 100.0,
        });
        progress(rows.len() as u64, subnets.len() as u64);
    }
    let stats = |f: &dyn Fn(&CheckRow) -> f64| {
        let v: Vec<f64> = rows.iter().map(|r| f(r).abs()).collect();
        (
            v.iter().sum::<f64>() / v.len().max(1) as f64,
            v.iter().cloned().fold(0.0, f64::max),
        )
    };
    let (mean_error_pct, max_error_pct) = stats(&|r| r.error_pct);
    let (chained_mean_error_pct, chained_max_error_pct) = stats(&|r| r.chained_error_pct);
    Ok(PredictionCheck {
        rows,
        mean_error_pct,
        max_error_pct,
        chained_mean_error_pct,
        chained_max_error_pct,
        seconds: start.elapsed().as_secs_f64(),
    })
}
