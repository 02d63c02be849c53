//! Search strategies. Predicted latency is cheap (a sum over the latency
//! table), accuracy is the cost: every strategy spends an evaluation budget
//! (distinct subnets evaluated) and returns every evaluated point and the
//! Pareto front.
//!
//! - **exhaustive**: every subnet of the space, as one prefix tree over all
//!   the data; used by `auto` when the space fits the evaluation budget.
//! - **evolutionary** (the paper's): a population (default 100); each
//!   generation the top 25% by latency-aware fitness (non-dominated rank on predicted
//!   latency and accuracy, then crowding distance so the whole front is kept
//!   covered) become parents; children come from crossover at a cut both
//!   parents pass through and from per-position mutation (probability 0.1);
//!   a child already evaluated is redrawn. Each generation is evaluated as
//!   one prefix tree. With `screen_images` below the data size, successive
//!   halving is used: generations are scored on the first `screen_images`
//!   images; the points near the front (at most `max_finish`) are then
//!   scored on 4x as many images, the better half of them on 4x again, and
//!   so on until the last rung scores its points on all the data; the front
//!   is built from points scored on all the data only.
//!   The first generation is the paper's: the oracle, the fastest subnet
//!   and random subnets spread evenly over the predicted latency range.
//!   A share of the evaluation budget (`polish`, default 40%) is kept
//!   for a local search around the front after the generations: the
//!   one-step neighbours of front points (see [`neighbours`]) are ranked
//!   by the front area they would add if they were `polish_margin` more
//!   accurate than the point they come from, and evaluated best first, a
//!   few at a time, until the share is spent or no neighbour could add to
//!   the front. Generations find the region; the polish finds the points a
//!   single swap away that random mutation and crossover miss.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::error::{invalid, Result};
use adaptivenet_onnx::bundle::{BranchId, SubnetId};
use adaptivenet_onnx::subnet::cheapest_path;
use serde::{Deserialize, Serialize};

use crate::accuracy::{Evaluator, Score};
use crate::front::{pareto_front, ranks, FrontPoint};
use crate::latency::LatencyLookup;
use crate::{Rng, Supernet};

/// Which strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyKind {
    /// Exhaustive when the space fits `max_evals`, else evolutionary.
    Auto,
    Exhaustive,
    Evolutionary,
}

/// Search parameters (defaults: the paper's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchParams {
    pub strategy: StrategyKind,
    pub population: usize,
    /// Fraction of the population kept as parents.
    pub parents: f64,
    /// Per-position mutation probability.
    pub mutation: f64,
    /// Probability that a child comes from crossover (then mutation).
    pub crossover: f64,
    pub generations: usize,
    /// Most distinct subnets evaluated (on the screening images).
    pub max_evals: usize,
    /// Images for screening generations (successive halving); 0 or >= the
    /// data size: every generation on all the data.
    pub screen_images: usize,
    /// Screened points within this accuracy of the screened front are finished.
    pub finish_margin: f64,
    /// At most this many points enter the first finishing rung (each
    /// further rung keeps the better half of them).
    pub max_finish: usize,
    /// Share of `max_evals` kept for the local search around the front.
    pub polish: f64,
    /// The local search's optimism: a neighbour is ranked as if it were
    /// this much more accurate than the front point it comes from.
    pub polish_margin: f64,
    /// Stop starting new generations after this many seconds (0: no limit).
    pub time_limit_s: f64,
    pub seed: u64,
}

impl Default for SearchParams {
    fn default() -> Self {
        SearchParams {
            strategy: StrategyKind::Auto,
            population: 100,
            parents: 0.25,
            mutation: 0.1,
            crossover: 0.5,
            generations: 10,
            max_evals: 300,
            screen_images: 250,
            finish_margin: 0.02,
            max_finish: 24,
            polish: 0.4,
            polish_margin: 0.02,
            time_limit_s: 0.0,
            seed: 1,
        }
    }
}

/// What a strategy returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// `exhaustive` or `evolutionary (...)`.
    pub method: String,
    /// Every evaluated subnet (`images` says on how many images).
    pub points: Vec<FrontPoint>,
    /// The Pareto front, by increasing predicted latency (points evaluated
    /// on all the data only).
    pub front: Vec<FrontPoint>,
    /// Distinct subnets evaluated.
    pub evaluations: usize,
    pub generations: usize,
    /// Plan runs (stem, branches, heads, over all batches), with the prefix
    /// tree and one subnet at a time, summed over every evaluation call.
    pub tree_runs: usize,
    pub naive_runs: usize,
    pub seconds: f64,
    /// Where `seconds` went.
    #[serde(default)]
    pub phases: PhaseSeconds,
}

/// Wall time of a strategy's phases, s: screening generations (or the
/// exhaustive evaluation), the local search around the front, and
/// finishing the points near the front on all the data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseSeconds {
    pub screening: f64,
    pub polish: f64,
    pub finishing: f64,
}

/// The subnet of least predicted latency (shortest path over the table).
pub fn fastest_subnet(net: &Supernet, look: &LatencyLookup) -> Result<SubnetId> {
    cheapest_path(net.num_blocks(), net.by_cut.iter().flatten(), |b| {
        look.branch(b)
    })
    .ok_or_else(|| invalid!("no path of usable branches reaches the last cut"))
}

/// Per-position mutation: at each cut of the path, with probability `p`, a
/// random other branch; where the path then no longer lines up with the
/// parent, random branches until it does.
pub fn mutate(net: &Supernet, s: &SubnetId, p: f64, rng: &mut Rng) -> SubnetId {
    let starts: HashMap<usize, BranchId> =
        s.branches().iter().map(|b| (b.from_cut(), *b)).collect();
    let mut at = 0;
    let mut path = Vec::new();
    while at < net.num_blocks() {
        let opts = &net.by_cut[at];
        let b = match starts.get(&at) {
            Some(&keep) if rng.unit() >= p || opts.len() == 1 => keep,
            Some(&old) => {
                let others: Vec<BranchId> = opts.iter().copied().filter(|o| *o != old).collect();
                others[rng.below(others.len())]
            }
            None => opts[rng.below(opts.len())],
        };
        path.push(b);
        at = b.to_cut();
    }
    SubnetId(path)
}

/// One-point crossover at a cut both parents pass through: `a` up to the
/// cut, `b` after it (`a` itself if they share no inner cut).
pub fn crossover(a: &SubnetId, b: &SubnetId, rng: &mut Rng) -> SubnetId {
    let ca: HashSet<usize> = a.branches().iter().map(|x| x.to_cut()).collect();
    let common: Vec<usize> = b
        .branches()
        .iter()
        .map(|x| x.from_cut())
        .filter(|c| *c > 0 && ca.contains(c))
        .collect();
    if common.is_empty() {
        return a.clone();
    }
    let cut = common[rng.below(common.len())];
    let mut path: Vec<BranchId> = a
        .branches()
        .iter()
        .copied()
        .take_while(|x| x.to_cut() <= cut)
        .collect();
    path.extend(b.branches().iter().copied().filter(|x| x.from_cut() >= cut));
    SubnetId(path)
}

/// The one-step neighbours of `s`: at each cut of the path, every other
/// usable branch from that cut, followed by originals until the path meets
/// `s` again, then `s`'s own branches. Undoing a merge, merging where `s`
/// ran originals and swapping a shrink ratio are single steps.
pub fn neighbours(net: &Supernet, s: &SubnetId) -> Vec<SubnetId> {
    let path = s.branches();
    let starts: HashSet<usize> = path.iter().map(|b| b.from_cut()).collect();
    let mut out = Vec::new();
    for (i, b) in path.iter().enumerate() {
        for o in &net.by_cut[b.from_cut()] {
            if o == b {
                continue;
            }
            let mut p: Vec<BranchId> = path[..i].to_vec();
            p.push(*o);
            let mut c = o.to_cut();
            while c < net.num_blocks() && !starts.contains(&c) {
                p.push(BranchId::Original { block: c });
                c += 1;
            }
            p.extend(path.iter().copied().filter(|x| x.from_cut() >= c));
            out.push(SubnetId(p));
        }
    }
    out
}

/// The front area (latency x accuracy) a point at (`ms`, `acc`) would add
/// to `front` (sorted by increasing latency and accuracy): from `ms` to the
/// first front point at least as accurate, how far `acc` is above the
/// front's staircase (0 below the fastest front point).
fn added_area(front: &[FrontPoint], ms: f64, acc: f64) -> f64 {
    let mut level = front
        .iter()
        .filter(|p| p.predicted_ms <= ms)
        .map(|p| p.accuracy)
        .fold(0.0, f64::max);
    let mut x = ms;
    let mut area = 0.0;
    for p in front.iter().filter(|p| p.predicted_ms > ms) {
        if level >= acc {
            break;
        }
        area += (p.predicted_ms - x) * (acc - level);
        x = p.predicted_ms;
        level = level.max(p.accuracy);
    }
    area
}

/// NSGA-II crowding distance of `idx` (points of one rank) along latency.
fn crowding(points: &[FrontPoint], idx: &[usize]) -> HashMap<usize, f64> {
    let mut d: HashMap<usize, f64> = idx.iter().map(|&i| (i, 0.0)).collect();
    if idx.len() <= 2 {
        for &i in idx {
            d.insert(i, f64::INFINITY);
        }
        return d;
    }
    for key in [0, 1] {
        let val = |i: usize| {
            if key == 0 {
                points[i].predicted_ms
            } else {
                points[i].accuracy
            }
        };
        let mut o = idx.to_vec();
        o.sort_by(|&a, &b| val(a).total_cmp(&val(b)));
        let span = (val(o[o.len() - 1]) - val(o[0])).max(1e-12);
        d.insert(o[0], f64::INFINITY);
        d.insert(o[o.len() - 1], f64::INFINITY);
        for k in 1..o.len() - 1 {
            *d.entry(o[k]).or_insert(0.0) += (val(o[k + 1]) - val(o[k - 1])) / span;
        }
    }
    d
}

/// The best `k` of `points` by latency-aware fitness: non-dominated rank,
/// then crowding distance.
pub fn select(points: &[FrontPoint], k: usize) -> Vec<usize> {
    let r = ranks(points);
    let mut out = Vec::new();
    let mut rank = 0;
    while out.len() < k && out.len() < points.len() {
        let layer: Vec<usize> = (0..points.len()).filter(|&i| r[i] == rank).collect();
        if layer.is_empty() {
            rank += 1;
            if rank > points.len() {
                break;
            }
            continue;
        }
        if out.len() + layer.len() <= k {
            out.extend(layer);
        } else {
            let c = crowding(points, &layer);
            let mut l = layer;
            l.sort_by(|a, b| c[b].total_cmp(&c[a]));
            out.extend(l.into_iter().take(k - out.len()));
        }
        rank += 1;
    }
    out
}

/// Book-keeping shared by the strategies. Every subnet is scored on a
/// prefix of the batches (`done`), extended on demand, never twice.
struct Archive<'a> {
    ev: &'a Evaluator,
    look: &'a LatencyLookup,
    scores: HashMap<SubnetId, Score>,
    /// Batches 0..done[s] are in scores[s].
    done: HashMap<SubnetId, usize>,
    order: Vec<SubnetId>,
    tree_runs: usize,
    naive_runs: usize,
}

impl<'a> Archive<'a> {
    fn new(ev: &'a Evaluator, look: &'a LatencyLookup) -> Archive<'a> {
        Archive {
            ev,
            look,
            scores: HashMap::new(),
            done: HashMap::new(),
            order: Vec::new(),
            tree_runs: 0,
            naive_runs: 0,
        }
    }

    /// Score `subnets` on the first `upto` batches (only the batches each
    /// one has not been scored on yet), one prefix tree per starting batch.
    fn eval_to(&mut self, subnets: &[SubnetId], upto: usize) -> Result<()> {
        let mut groups: std::collections::BTreeMap<usize, Vec<SubnetId>> = Default::default();
        let mut seen = HashSet::new();
        for s in subnets {
            let from = self.done.get(s).copied().unwrap_or(0);
            if from < upto && seen.insert(s) {
                groups.entry(from).or_default().push(s.clone());
            }
        }
        for (from, group) in groups {
            self.eval_range(&group, from..upto)?;
        }
        Ok(())
    }

    fn eval_range(&mut self, subnets: &[SubnetId], batches: std::ops::Range<usize>) -> Result<()> {
        if subnets.is_empty() || batches.is_empty() {
            return Ok(());
        }
        let w = Evaluator::work(subnets);
        self.tree_runs += w.tree * batches.len();
        self.naive_runs += w.naive * batches.len();
        let end = batches.end;
        let scores = self.ev.evaluate(subnets, batches)?;
        for (s, sc) in subnets.iter().zip(scores) {
            self.done.insert(s.clone(), end);
            match self.scores.get_mut(s) {
                Some(old) => old.add(sc),
                None => {
                    self.scores.insert(s.clone(), sc);
                    self.order.push(s.clone());
                }
            }
        }
        self.ev.evaluated_subnets(self.order.len() as u64);
        Ok(())
    }
    fn point(&self, s: &SubnetId) -> FrontPoint {
        let sc = self.scores[s];
        FrontPoint {
            subnet: s.clone(),
            predicted_ms: self.look.predict(s),
            accuracy: sc.accuracy(),
            images: sc.seen,
        }
    }
    fn points(&self) -> Vec<FrontPoint> {
        self.order.iter().map(|s| self.point(s)).collect()
    }
}

/// Each finishing rung scores its points on this many times the images of
/// the rung before (capped at all the data) and keeps the better half.
const FINISH_RUNG_FACTOR: usize = 4;

/// At most `keep` of `points` within `margin` accuracy of the best point at
/// their predicted latency or below, closest first.
fn near_front(points: &[FrontPoint], margin: f64, keep: usize) -> Vec<SubnetId> {
    let mut by_lat: Vec<usize> = (0..points.len()).collect();
    by_lat.sort_by(|&a, &b| points[a].predicted_ms.total_cmp(&points[b].predicted_ms));
    let mut best = f64::NEG_INFINITY;
    let mut near: Vec<(f64, usize)> = Vec::new();
    for &i in &by_lat {
        best = best.max(points[i].accuracy);
        let gap = best - points[i].accuracy;
        if gap <= margin {
            near.push((gap, i));
        }
    }
    near.sort_by(|a, b| a.0.total_cmp(&b.0));
    near.into_iter()
        .take(keep.max(1))
        .map(|(_, i)| points[i].subnet.clone())
        .collect()
}

/// Run the configured strategy.
pub fn search(
    net: &Supernet,
    look: &LatencyLookup,
    ev: &Evaluator,
    params: &SearchParams,
) -> Result<Outcome> {
    let count = net.count_subnets();
    let kind = match params.strategy {
        StrategyKind::Auto if count <= params.max_evals as u128 => StrategyKind::Exhaustive,
        StrategyKind::Auto => StrategyKind::Evolutionary,
        k => k,
    };
    ev.expect_subnets(match kind {
        StrategyKind::Exhaustive => u64::try_from(count).unwrap_or(u64::MAX),
        _ => u64::try_from(count.min(params.max_evals as u128)).unwrap_or(u64::MAX),
    });
    match kind {
        StrategyKind::Exhaustive => {
            if count > 200_000 {
                return Err(invalid!(
                    "the space has {count} subnets: too many to evaluate exhaustively"
                ));
            }
            exhaustive(net, look, ev)
        }
        _ => evolutionary(net, look, ev, params),
    }
}

/// Every subnet of the space on all the data.
pub fn exhaustive(net: &Supernet, look: &LatencyLookup, ev: &Evaluator) -> Result<Outcome> {
    let t = Instant::now();
    let all = net.enumerate();
    let mut ar = Archive::new(ev, look);
    ar.eval_to(&all, ev.batches())?;
    let points = ar.points();
    let front = pareto_front(&points)
        .iter()
        .map(|&i| points[i].clone())
        .collect();
    Ok(Outcome {
        method: "exhaustive".into(),
        evaluations: points.len(),
        points,
        front,
        generations: 0,
        tree_runs: ar.tree_runs,
        naive_runs: ar.naive_runs,
        seconds: t.elapsed().as_secs_f64(),
        phases: PhaseSeconds {
            screening: t.elapsed().as_secs_f64(),
            ..PhaseSeconds::default()
        },
    })
}

/// The initial population: the oracle, the fastest subnet, and random
/// subnets spread evenly over the predicted latency range.
fn seed_population(
    net: &Supernet,
    look: &LatencyLookup,
    n: usize,
    rng: &mut Rng,
) -> Result<Vec<SubnetId>> {
    let mut pop = vec![net.oracle(), fastest_subnet(net, look)?];
    let mut seen: HashSet<SubnetId> = pop.iter().cloned().collect();
    let mut pool: Vec<(f64, SubnetId)> = Vec::new();
    for _ in 0..n.saturating_mul(20).max(100) {
        let s = net.random_subnet(rng);
        if seen.insert(s.clone()) {
            pool.push((look.predict(&s), s));
        }
    }
    pool.sort_by(|a, b| a.0.total_cmp(&b.0));
    let want = n.saturating_sub(pop.len());
    if want > 0 && !pool.is_empty() {
        let step = pool.len() as f64 / want as f64;
        let mut taken = HashSet::new();
        for k in 0..want {
            let i = ((k as f64 + rng.unit()) * step) as usize;
            let i = i.min(pool.len() - 1);
            if taken.insert(i) {
                pop.push(pool[i].1.clone());
            }
        }
    }
    pop.truncate(n.max(2));
    Ok(pop)
}

/// The paper's evolutionary search (see the module doc).
pub fn evolutionary(
    net: &Supernet,
    look: &LatencyLookup,
    ev: &Evaluator,
    params: &SearchParams,
) -> Result<Outcome> {
    let t = Instant::now();
    let mut rng = Rng::seeded(params.seed);
    let all_batches = ev.batches();
    let screen = if params.screen_images == 0 {
        all_batches
    } else {
        params
            .screen_images
            .div_ceil(ev.batch_size())
            .clamp(1, all_batches)
    };
    let mut ar = Archive::new(ev, look);
    let pop_size = params.population.max(2);
    let n_parents = ((pop_size as f64 * params.parents).round() as usize).max(2);
    let max_evals = params.max_evals.max(2);
    let polish_evals = ((max_evals as f64 * params.polish.clamp(0.0, 0.9)).round() as usize)
        .min(max_evals.saturating_sub(2));
    let ga_evals = max_evals - polish_evals;
    let out_of_time =
        || params.time_limit_s > 0.0 && t.elapsed().as_secs_f64() > params.time_limit_s;
    let mut population = seed_population(net, look, pop_size, &mut rng)?;
    population.truncate(ga_evals);
    ar.eval_to(&population, screen)?;
    let mut generations = 1;
    let mut parents: Vec<SubnetId> = Vec::new();
    while generations < params.generations.max(1) {
        if ar.order.len() >= ga_evals || out_of_time() {
            break;
        }
        // elitist selection over this generation and the previous parents
        let mut pool: Vec<SubnetId> = population.clone();
        for p in &parents {
            if !pool.contains(p) {
                pool.push(p.clone());
            }
        }
        let pts: Vec<FrontPoint> = pool.iter().map(|s| ar.point(s)).collect();
        parents = select(&pts, n_parents)
            .into_iter()
            .map(|i| pool[i].clone())
            .collect();
        let budget_left = ga_evals - ar.order.len();
        let want = pop_size.min(budget_left);
        let mut children: Vec<SubnetId> = Vec::new();
        let mut fresh: HashSet<SubnetId> = HashSet::new();
        let mut tries = 0;
        while children.len() < want && tries < want * 50 {
            tries += 1;
            let a = &parents[rng.below(parents.len())];
            let child = if rng.unit() < params.crossover && parents.len() > 1 {
                let b = &parents[rng.below(parents.len())];
                mutate(net, &crossover(a, b, &mut rng), params.mutation, &mut rng)
            } else {
                mutate(net, a, params.mutation, &mut rng)
            };
            if !ar.scores.contains_key(&child) && fresh.insert(child.clone()) {
                children.push(child);
            }
        }
        if children.is_empty() {
            break;
        }
        ar.eval_to(&children, screen)?;
        // the next generation: children plus the parents (elitism)
        population = children;
        population.extend(parents.iter().cloned());
        generations += 1;
    }
    let screened_at = t.elapsed().as_secs_f64();
    // local search around the front with what is left of the budget
    let polish_batch = polish_evals.div_ceil(4).max(1);
    let mut polished = 0;
    while ar.order.len() < max_evals && !out_of_time() {
        let pts = ar.points();
        let front: Vec<FrontPoint> = pareto_front(&pts)
            .into_iter()
            .map(|i| pts[i].clone())
            .collect();
        let mut seen: HashSet<SubnetId> = HashSet::new();
        let mut ranked: Vec<(f64, SubnetId)> = Vec::new();
        for p in &front {
            for n in neighbours(net, &p.subnet) {
                if ar.scores.contains_key(&n) || !seen.insert(n.clone()) {
                    continue;
                }
                let gain = added_area(&front, look.predict(&n), p.accuracy + params.polish_margin);
                if gain > 0.0 {
                    ranked.push((gain, n));
                }
            }
        }
        if ranked.is_empty() {
            break;
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let take = polish_batch.min(max_evals - ar.order.len());
        let batch: Vec<SubnetId> = ranked.into_iter().take(take).map(|(_, s)| s).collect();
        polished += batch.len();
        ar.eval_to(&batch, screen)?;
    }
    let polished_at = t.elapsed().as_secs_f64();
    // finish the points near the screened front on the rest of the data,
    // in rungs of FINISH_RUNG_FACTOR times more images, halving the points
    // kept at each rung
    let mut finished: Vec<SubnetId> = Vec::new();
    if screen < all_batches {
        let mut upto = screen;
        let mut keep = params.max_finish.max(1);
        let mut candidates = near_front(&ar.points(), params.finish_margin, keep);
        loop {
            if !candidates.contains(&net.oracle()) {
                candidates.push(net.oracle());
            }
            let next = upto.saturating_mul(FINISH_RUNG_FACTOR).min(all_batches);
            ar.eval_to(&candidates, next)?;
            upto = next;
            if upto >= all_batches {
                finished = candidates;
                break;
            }
            keep = keep.div_ceil(2);
            let pts: Vec<FrontPoint> = candidates.iter().map(|s| ar.point(s)).collect();
            candidates = near_front(&pts, params.finish_margin, keep);
        }
    }
    let points = ar.points();
    let full = ev.items(0..all_batches) as u64;
    let complete: Vec<FrontPoint> = points
        .iter()
        .filter(|p| p.images == full)
        .cloned()
        .collect();
    let front = pareto_front(&complete)
        .iter()
        .map(|&i| complete[i].clone())
        .collect();
    let method = if screen < all_batches {
        format!(
            "evolutionary (population {pop_size}, {generations} generations, {polished} polished, screened on {} images, {} finished on {full})",
            ev.items(0..screen),
            finished.len()
        )
    } else {
        format!(
            "evolutionary (population {pop_size}, {generations} generations, {polished} polished)"
        )
    };
    Ok(Outcome {
        method,
        evaluations: points.len(),
        points,
        front,
        generations,
        tree_runs: ar.tree_runs,
        naive_runs: ar.naive_runs,
        seconds: t.elapsed().as_secs_f64(),
        phases: PhaseSeconds {
            screening: screened_at,
            polish: polished_at - screened_at,
            finishing: t.elapsed().as_secs_f64() - polished_at,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(ms: f64, acc: f64) -> FrontPoint {
        FrontPoint {
            subnet: SubnetId::oracle(1),
            predicted_ms: ms,
            accuracy: acc,
            images: 1,
        }
    }

    #[test]
    fn added_area_is_the_new_strip_under_the_point() {
        // staircase: 0.5 from 1 ms, 0.7 from 2 ms, 0.9 from 4 ms
        let front = vec![pt(1.0, 0.5), pt(2.0, 0.7), pt(4.0, 0.9)];
        // dominated: nothing
        assert_eq!(added_area(&front, 2.5, 0.7), 0.0);
        assert_eq!(added_area(&front, 4.5, 0.95), 0.0);
        // 1.5 ms at 0.8: 0.3 over [1.5, 2) and 0.1 over [2, 4)
        let a = added_area(&front, 1.5, 0.8);
        assert!((a - (0.5 * 0.3 + 2.0 * 0.1)).abs() < 1e-12, "{a}");
        // stops at the first front point at least as accurate
        let b = added_area(&front, 1.5, 0.7);
        assert!((b - 0.5 * 0.2).abs() < 1e-12, "{b}");
        // faster than the whole front: measured from 0 accuracy
        let c = added_area(&front, 0.5, 0.5);
        assert!((c - 0.5 * 0.5).abs() < 1e-12, "{c}");
    }
}
