//! Subnets as paths over the cuts: the one implementation of the paths the
//! cloud tools, the search and the tests name (the oracle path with one
//! branch swapped in, the cheapest path under a branch cost) and of the
//! batched top-1 of a materialised subnet on labelled data.

use crate::bundle::{Branch, BranchId, Manifest, SubnetId};
use crate::dataset::{argmax_rows, Dataset};
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::tract_onnx::pb::ModelProto;

/// The oracle path with branch `b` swapped in (originals before and after it).
pub fn single_branch_subnet(m: &Manifest, b: &Branch) -> SubnetId {
    let mut ids = Vec::new();
    let mut at = 0;
    while at < m.num_blocks() {
        if at == b.from {
            ids.push(b.id);
            at = b.to.max(at + 1);
        } else {
            ids.push(BranchId::Original { block: at });
            at += 1;
        }
    }
    SubnetId(ids)
}

/// The path from c_0 to c_`num_blocks` through `branches` of least total
/// `cost` (shortest path over the cuts; ties keep the branch seen first).
/// `None` when no path reaches the last cut.
pub fn cheapest_path<'a>(
    num_blocks: usize,
    branches: impl IntoIterator<Item = &'a BranchId>,
    cost: impl Fn(&BranchId) -> f64,
) -> Option<SubnetId> {
    let mut by_cut: Vec<Vec<BranchId>> = vec![Vec::new(); num_blocks];
    for b in branches {
        if b.from_cut() < num_blocks && b.to_cut() <= num_blocks && b.to_cut() > b.from_cut() {
            by_cut[b.from_cut()].push(*b);
        }
    }
    let mut best: Vec<(f64, Option<BranchId>)> = vec![(f64::INFINITY, None); num_blocks + 1];
    best[0].0 = 0.0;
    for at in 0..num_blocks {
        if !best[at].0.is_finite() {
            continue;
        }
        for b in &by_cut[at] {
            let c = best[at].0 + cost(b);
            if c < best[b.to_cut()].0 {
                best[b.to_cut()] = (c, Some(*b));
            }
        }
    }
    let mut path = Vec::new();
    let mut at = num_blocks;
    while at > 0 {
        let b = best[at].1?;
        path.push(b);
        at = b.from_cut();
    }
    path.reverse();
    Some(SubnetId(path))
}

/// The subnet with the fewest multiply-accumulates (the manifest's MACs).
pub fn fewest_macs_subnet(m: &Manifest) -> Option<SubnetId> {
    let macs = |id: &BranchId| m.branch(id).map(|b| b.macs as f64).unwrap_or(f64::INFINITY);
    cheapest_path(m.num_blocks(), m.branches.iter().map(|b| &b.id), macs)
}

/// The subnet with the fewest branches (the longest merges), the fewest
/// MACs among those.
pub fn most_merged_subnet(m: &Manifest) -> Option<SubnetId> {
    let cost = |id: &BranchId| {
        m.branch(id)
            .map(|b| (1u64 << 40) as f64 + b.macs as f64)
            .unwrap_or(f64::INFINITY)
    };
    cheapest_path(m.num_blocks(), m.branches.iter().map(|b| &b.id), cost)
}

/// Top-1 of a standalone model (a materialised subnet) on labelled data,
/// through tract, `batch` items at a time (the last batch may be smaller).
pub fn top1(model: &ModelProto, data: &Dataset, batch: usize) -> Result<f64> {
    let origin = "top-1 evaluation";
    let labels = data
        .labels
        .as_ref()
        .ok_or_else(|| Error::bad_data(origin, "the data set has no labels"))?;
    let n = data.len();
    if n == 0 {
        return Err(Error::bad_data(origin, "the data set is empty"));
    }
    let batch = batch.clamp(1, n);
    let plan = Plan::whole_model(model, batch)?;
    let mut tail: Option<Plan> = None;
    let mut correct = 0usize;
    let mut start = 0;
    while start < n {
        let b = batch.min(n - start);
        let logits = if b == batch {
            plan.run(data.batch(start, b)?)?
        } else {
            let p = match tail.take() {
                Some(p) => p,
                None => Plan::whole_model(model, b)?,
            };
            let y = p.run(data.batch(start, b)?)?;
            tail = Some(p);
            y
        };
        correct += argmax_rows(&logits)?
            .iter()
            .zip(&labels[start..start + b])
            .filter(|(p, l)| **p as i64 == **l)
            .count();
        start += b;
    }
    Ok(correct as f64 / n as f64)
}
