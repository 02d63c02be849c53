//! Training the new branches with candle, originals, stem and head frozen:
//! stage 1 distils each branch on the oracle's cut tensors (MSE from c_i to
//! c_j); stage 2 fine-tunes sampled subnets that contain new branches on the
//! oracle's logits (temperature-scaled KL) plus labels. The oracle's cut
//! tensors and logits come from tract block plans, so the teacher is the
//! exact oracle the device runs.

use std::collections::HashMap;
use std::time::Instant;

use adaptivenet_onnx::bundle::{Branch, BranchKind, Manifest, SubnetId};
use adaptivenet_onnx::dataset::Dataset;
use adaptivenet_onnx::tract_onnx::prelude::Tensor as TractTensor;
use adaptivenet_onnx::weights::SplitMix;
use adaptivenet_onnx::ChainedPlans;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use indicatif::{ProgressBar, ProgressStyle};

use super::spec::{Stage1Spec, Stage2Spec};

/// Print the bar's state as a line when it is hidden (not a terminal) and
/// another tenth of the work is done.
fn log_progress(pb: &ProgressBar, what: &str, last: &mut u64) {
    let (pos, len) = (pb.position(), pb.length().unwrap_or(0).max(1));
    if pb.is_hidden() && (pos * 10 / len > *last * 10 / len || pos == len) {
        *last = pos;
        eprintln!(
            "{what}: {pos}/{len} [{:.0} s] {}",
            pb.elapsed().as_secs_f64(),
            pb.message()
        );
    }
}
use crate::interp::Interpreter;

/// The frozen oracle as tract plans at the training batch size, and the data.
pub struct Teacher<'a> {
    pub plans: ChainedPlans,
    pub data: &'a Dataset,
    pub batch: usize,
    pub device: Device,
}

/// One teacher batch: the cut tensors c_0..c_N, the logits and the labels.
pub struct TeacherBatch {
    pub cuts: Vec<Tensor>,
    pub logits: Tensor,
    pub labels: Option<Tensor>,
}

impl Teacher<'_> {
    /// Run the oracle on the items `idx` (exactly `batch` of them).
    pub fn batch(&self, idx: &[usize]) -> Result<TeacherBatch> {
        let k: usize = self.data.item_shape.iter().product();
        let mut x = Vec::with_capacity(idx.len() * k);
        for &i in idx {
            x.extend_from_slice(&self.data.data[i * k..(i + 1) * k]);
        }
        let mut shape = vec![idx.len()];
        shape.extend(&self.data.item_shape);
        let input = TractTensor::from_shape(&shape, &x)?;
        let mut outs = self.plans.run_collect(input)?;
        let logits = outs.pop().context("the oracle chain produced no output")?;
        let cuts = outs
            .iter()
            .map(|t| to_candle(t, &self.device))
            .collect::<Result<Vec<_>>>()?;
        let labels = match &self.data.labels {
            Some(l) => Some(Tensor::from_vec(
                idx.iter().map(|&i| l[i] as u32).collect::<Vec<_>>(),
                idx.len(),
                &self.device,
            )?),
            None => None,
        };
        Ok(TeacherBatch {
            cuts,
            logits: to_candle(&logits, &self.device)?,
            labels,
        })
    }
}

fn to_candle(t: &TractTensor, device: &Device) -> Result<Tensor> {
    let view = t.to_plain_array_view::<f32>()?;
    let data: Vec<f32> = view.iter().copied().collect();
    Ok(Tensor::from_vec(data, t.shape(), device)?)
}

/// A progress bar on a terminal; elsewhere (logs, CI) the same message is
/// printed as a plain line every tenth of the way.
fn bar(len: u64, what: &str) -> ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::hidden());
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>8} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// The variables the optimiser trains for one branch: initializers under
/// its `branch/{id}/` prefix (the branch copy renames every weight it owns
/// that way), BatchNormalization statistics left out.
fn branch_vars(interp: &Interpreter, b: &Branch) -> Vec<candle_core::Var> {
    let prefix = format!("{}/", b.tensor);
    interp
        .optimised_vars()
        .filter(|(n, _)| n.starts_with(&prefix))
        .map(|(_, v)| v.clone())
        .collect()
}

/// The manifest's new (merge and shrink) branches, in manifest order.
pub fn new_branches(manifest: &Manifest) -> Vec<&Branch> {
    manifest
        .branches
        .iter()
        .filter(|b| b.kind != BranchKind::Original)
        .collect()
}

/// Stage-1 optimiser steps of `b`: a merge of k blocks trains for longer,
/// `samples + (k - 1) x samples_per_extra_block` samples.
pub fn stage1_steps(b: &Branch, spec: &Stage1Spec, batch: usize) -> usize {
    let extra = b.to.saturating_sub(b.from).saturating_sub(1);
    (spec.samples + extra * spec.samples_per_extra_block) / batch.max(1)
}

/// Stage 1 of `branches` (new branches of `manifest`). Returns each
/// branch's distillation loss (MSE) on the held-out samples.
///
/// Each branch has its own optimiser and sees the batches `train` gives at
/// steps 0, 1, ... (the same for every branch), so what a branch learns does
/// not depend on which other branches are trained with it: a stage-1 shard
/// of some branches gives them the weights a run of all of them gives.
pub fn stage1(
    interp: &Interpreter,
    manifest: &Manifest,
    branches: &[&Branch],
    teacher: &Teacher,
    train: &[usize],
    holdout: &[usize],
    spec: &Stage1Spec,
) -> Result<HashMap<String, f64>> {
    let cut = |i: usize| manifest.cuts[i].tensor.as_str();
    let params = ParamsAdamW {
        lr: spec.learning_rate,
        weight_decay: spec.weight_decay,
        ..Default::default()
    };
    let mut opts: Vec<AdamW> = branches
        .iter()
        .map(|b| AdamW::new(branch_vars(interp, b), params.clone()))
        .collect::<candle_core::Result<_>>()?;
    let own_steps: Vec<usize> = branches
        .iter()
        .map(|b| stage1_steps(b, spec, teacher.batch))
        .collect();
    let steps = own_steps.iter().copied().max().unwrap_or(0);
    let pb = bar(own_steps.iter().sum::<usize>() as u64, "stage 1");
    let start = Instant::now();
    let mut ema = vec![0f64; branches.len()];
    let mut seen = 0usize;
    let mut logged = 0;
    for step in 0..steps {
        let idx: Vec<usize> = (0..teacher.batch)
            .map(|k| train[(step * teacher.batch + k) % train.len()])
            .collect();
        let tb = teacher.batch(&idx)?;
        for (j, b) in branches.iter().enumerate() {
            if step >= own_steps[j] {
                continue;
            }
            opts[j].set_learning_rate(spec.schedule.rate(spec.learning_rate, step, own_steps[j]));
            let pred = interp.forward(
                &[(cut(b.from), tb.cuts[b.from].clone())],
                &[b.tensor.as_str()],
            )?;
            let loss = (&pred[0] - &tb.cuts[b.to])?.sqr()?.mean_all()?;
            opts[j].backward_step(&loss)?;
            let l = loss.to_scalar::<f32>()? as f64;
            ema[j] = if step == 0 { l } else { 0.9 * ema[j] + 0.1 * l };
            seen += teacher.batch;
            pb.inc(1);
        }
        pb.set_message(format!(
            "mean mse {:.4}  {:.0} samples/s",
            ema.iter().sum::<f64>() / ema.len().max(1) as f64,
            seen as f64 / start.elapsed().as_secs_f64()
        ));
        log_progress(&pb, "stage 1", &mut logged);
    }
    pb.finish();
    // distillation loss on held-out samples
    let mut sums = vec![0f64; branches.len()];
    let mut n = 0;
    for chunk in holdout.chunks_exact(teacher.batch) {
        let tb = teacher.batch(chunk)?;
        for (j, b) in branches.iter().enumerate() {
            let pred = interp.forward(
                &[(cut(b.from), tb.cuts[b.from].clone())],
                &[b.tensor.as_str()],
            )?;
            sums[j] += (&pred[0] - &tb.cuts[b.to])?
                .sqr()?
                .mean_all()?
                .to_scalar::<f32>()? as f64;
        }
        n += 1;
    }
    Ok(branches
        .iter()
        .zip(sums)
        .map(|(b, s)| (b.id.to_string(), s / n.max(1) as f64))
        .collect())
}

/// A random path c_0 -> c_N with at least one new branch.
pub fn sample_subnet<'m>(
    manifest: &'m Manifest,
    rng: &mut SplitMix,
    new_prob: f64,
) -> Vec<&'m Branch> {
    let n = manifest.num_blocks();
    for _ in 0..100 {
        let mut path = Vec::new();
        let mut at = 0;
        while at < n {
            let here: Vec<&Branch> = manifest
                .branches
                .iter()
                .filter(|b| b.from == at && b.to <= n)
                .collect();
            let news: Vec<&&Branch> = here
                .iter()
                .filter(|b| b.kind != BranchKind::Original)
                .collect();
            let coin = unit(rng);
            let pick = if !news.is_empty() && coin < new_prob {
                *news[(rng.next_u64() % news.len() as u64) as usize]
            } else {
                match here.iter().find(|b| b.kind == BranchKind::Original) {
                    Some(b) => *b,
                    None => here[0],
                }
            };
            at = pick.to;
            path.push(pick);
        }
        if path.iter().any(|b| b.kind != BranchKind::Original) {
            return path;
        }
    }
    manifest
        .branches
        .iter()
        .filter(|b| b.from == 0 && b.kind == BranchKind::Original)
        .collect()
}

/// The manifest's branches of `subnet`.
fn path_of<'m>(manifest: &'m Manifest, subnet: &SubnetId) -> Vec<&'m Branch> {
    subnet
        .branches()
        .iter()
        .filter_map(|id| manifest.branch(id))
        .collect()
}

/// The path with the fewest branches (longest merges), fewest MACs among those.
pub fn most_merged_path(manifest: &Manifest) -> Vec<&Branch> {
    let merged = adaptivenet_onnx::subnet::most_merged_subnet(manifest)
        .unwrap_or_else(|| SubnetId(Vec::new()));
    path_of(manifest, &merged)
}

/// The input cut and the branches to run for `path`: the frozen originals
/// before its first new branch are skipped, since the teacher already has
/// their output (the oracle's cut tensor there).
fn trainable_suffix<'p, 'm>(path: &'p [&'m Branch]) -> (usize, &'p [&'m Branch]) {
    let first = path
        .iter()
        .position(|b| b.kind != BranchKind::Original)
        .unwrap_or(path.len());
    match path.get(first) {
        Some(b) => (b.from, &path[first..]),
        None => (0, path),
    }
}

/// Picks an index with probability proportional to `weights` (all >= 0).
fn weighted_pick(weights: &[f64], rng: &mut SplitMix) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = unit(rng) * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len().saturating_sub(1)
}

fn unit(rng: &mut SplitMix) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The oracle path with `branch` swapped in.
fn with_branch<'m>(manifest: &'m Manifest, branch: &'m Branch) -> Vec<&'m Branch> {
    path_of(
        manifest,
        &adaptivenet_onnx::subnet::single_branch_subnet(manifest, branch),
    )
}

/// Stage 2. Returns the mean loss of the last steps.
///
/// Each step trains `paths_per_step` subnets on one teacher batch: the most
/// merged path (every `most_merged_every` steps), then single-branch subnets
/// drawn in proportion to each branch's running distillation loss, or random
/// paths. Their losses are averaged into one optimiser step.
pub fn stage2(
    interp: &Interpreter,
    manifest: &Manifest,
    teacher: &Teacher,
    train: &[usize],
    spec: &Stage2Spec,
    seed: u64,
) -> Result<f64> {
    let n = manifest.num_blocks();
    let cut = |i: usize| manifest.cuts[i].tensor.as_str();
    let news = new_branches(manifest);
    let vars: Vec<candle_core::Var> = news.iter().flat_map(|b| branch_vars(interp, b)).collect();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: spec.learning_rate,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut rng = SplitMix(seed ^ 0x5eed_0002);
    let t = spec.temperature;
    let per_step = spec.paths_per_step.max(1);
    // The loss of one path on the batch: (total, distillation part).
    let path_loss = |path: &[&Branch], tb: &TeacherBatch| -> Result<(Tensor, f64)> {
        let (from, run) = trainable_suffix(path);
        let mut h = tb.cuts[from].clone();
        for b in run {
            h = interp
                .forward(&[(cut(b.from), h)], &[b.tensor.as_str()])?
                .remove(0);
        }
        let logits = interp
            .forward(&[(cut(n), h)], &[manifest.output.name.as_str()])?
            .remove(0);
        let log_p = candle_nn::ops::log_softmax(&(&logits / t)?, D::Minus1)?;
        let log_q = candle_nn::ops::log_softmax(&(&tb.logits / t)?, D::Minus1)?;
        let kl = (log_q.exp()? * (&log_q - &log_p)?)?
            .sum(D::Minus1)?
            .mean_all()?;
        let distill = (kl * (t * t))?;
        let d = distill.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let loss = match (&tb.labels, spec.label_weight > 0.0) {
            (Some(labels), true) => {
                let ce = candle_nn::loss::cross_entropy(&logits, labels)?;
                ((distill * (1.0 - spec.label_weight))? + (ce * spec.label_weight)?)?
            }
            _ => distill,
        };
        Ok((loss, d))
    };
    let batch_at = |step: usize| -> Vec<usize> {
        (0..teacher.batch)
            .map(|k| train[(step * teacher.batch + k) % train.len()])
            .collect()
    };

    // Every branch's single-branch distillation loss on the first batch seeds
    // the sampling weights; each step then updates the ones it trained.
    let mut single_loss = vec![0f64; news.len()];
    if spec.single_branch_prob > 0.0 {
        let tb = teacher.batch(&batch_at(0))?;
        for (k, b) in news.iter().enumerate() {
            single_loss[k] = path_loss(&with_branch(manifest, b), &tb)?.1;
        }
    }
    let merged = most_merged_path(manifest);

    let pb = bar(spec.steps as u64, "stage 2");
    let start = Instant::now();
    let mut ema = 0f64;
    let mut logged = 0;
    for step in 0..spec.steps {
        let tb = teacher.batch(&batch_at(step))?;
        opt.set_learning_rate(spec.schedule.rate(spec.learning_rate, step, spec.steps));
        let mut total: Option<Tensor> = None;
        for slot in 0..per_step {
            let mut single = None;
            let path =
                if slot == 0 && spec.most_merged_every > 0 && step % spec.most_merged_every == 0 {
                    merged.clone()
                } else if !news.is_empty() && unit(&mut rng) < spec.single_branch_prob {
                    let mean = single_loss.iter().sum::<f64>() / single_loss.len() as f64;
                    // a floor keeps every branch in rotation once it is close
                    let w: Vec<f64> = single_loss
                        .iter()
                        .map(|l| l.max(0.0) + 0.1 * mean)
                        .collect();
                    let k = weighted_pick(&w, &mut rng);
                    single = Some(k);
                    with_branch(manifest, news[k])
                } else {
                    sample_subnet(manifest, &mut rng, spec.new_branch_prob)
                };
            let (loss, d) = path_loss(&path, &tb)?;
            if let Some(k) = single {
                single_loss[k] = 0.5 * single_loss[k] + 0.5 * d;
            }
            total = Some(match total {
                Some(acc) => (acc + loss)?,
                None => loss,
            });
        }
        let Some(total) = total else { continue };
        let loss = (total / per_step as f64)?;
        opt.backward_step(&loss)?;
        let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        ema = if step == 0 { l } else { 0.95 * ema + 0.05 * l };
        pb.inc(1);
        pb.set_message(format!(
            "loss {ema:.4}  {:.0} subnet-samples/s",
            ((step + 1) * teacher.batch * per_step) as f64 / start.elapsed().as_secs_f64()
        ));
        log_progress(&pb, "stage 2", &mut logged);
    }
    pb.finish();
    Ok(ema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_pick_follows_the_weights() {
        let mut rng = SplitMix(3);
        for _ in 0..100 {
            assert_eq!(weighted_pick(&[0.0, 2.0, 0.0], &mut rng), 1);
        }
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| weighted_pick(&[1.0, 3.0], &mut rng) == 1)
            .count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.02, "{share}");
    }
}
