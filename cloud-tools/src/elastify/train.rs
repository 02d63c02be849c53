//! Training the new branches with candle, originals, stem and head frozen:
//! stage 1 distils each branch on the oracle's cut tensors (MSE from c_i to
//! c_j); stage 2 fine-tunes sampled subnets that contain new branches on the
//! oracle's logits (temperature-scaled KL) plus labels. The oracle's cut
//! tensors and logits come from tract block plans, so the teacher is the
//! exact oracle the device runs.

use std::collections::HashMap;
use std::time::Instant;

use adaptivenet_onnx::bundle::{Branch, BranchKind, Manifest};
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

/// The variables of one branch: initializers under its `branch/{id}/` prefix
/// (the branch copy renames every weight it owns that way).
fn branch_vars(interp: &Interpreter, b: &Branch) -> Vec<candle_core::Var> {
    let prefix = format!("{}/", b.tensor);
    interp
        .named_vars()
        .iter()
        .filter(|(n, _)| n.starts_with(&prefix))
        .map(|(_, v)| v.clone())
        .collect()
}

fn new_branches(manifest: &Manifest) -> Vec<&Branch> {
    manifest
        .branches
        .iter()
        .filter(|b| b.kind != BranchKind::Original)
        .collect()
}

/// Stage 1. Returns each branch's distillation loss (MSE) on the held-out samples.
pub fn stage1(
    interp: &Interpreter,
    manifest: &Manifest,
    teacher: &Teacher,
    train: &[usize],
    holdout: &[usize],
    spec: &Stage1Spec,
) -> Result<HashMap<String, f64>> {
    let branches = new_branches(manifest);
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
    let steps = spec.samples / teacher.batch;
    let pb = bar((steps * branches.len()) as u64, "stage 1");
    let start = Instant::now();
    let mut ema = vec![0f64; branches.len()];
    let mut logged = 0;
    for step in 0..steps {
        let idx: Vec<usize> = (0..teacher.batch)
            .map(|k| train[(step * teacher.batch + k) % train.len()])
            .collect();
        let tb = teacher.batch(&idx)?;
        for (j, b) in branches.iter().enumerate() {
            let pred = interp.forward(
                &[(cut(b.from), tb.cuts[b.from].clone())],
                &[b.tensor.as_str()],
            )?;
            let loss = (&pred[0] - &tb.cuts[b.to])?.sqr()?.mean_all()?;
            opts[j].backward_step(&loss)?;
            let l = loss.to_scalar::<f32>()? as f64;
            ema[j] = if step == 0 { l } else { 0.9 * ema[j] + 0.1 * l };
            pb.inc(1);
        }
        let done = (step + 1) * teacher.batch;
        pb.set_message(format!(
            "mean mse {:.4}  {:.0} samples/s",
            ema.iter().sum::<f64>() / ema.len().max(1) as f64,
            done as f64 * branches.len() as f64 / start.elapsed().as_secs_f64()
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
            let coin = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
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

/// The oracle path with one random new branch swapped in.
pub fn single_branch_path<'m>(manifest: &'m Manifest, rng: &mut SplitMix) -> Vec<&'m Branch> {
    let news = new_branches(manifest);
    if news.is_empty() {
        return manifest
            .branches
            .iter()
            .filter(|b| b.kind == BranchKind::Original)
            .collect();
    }
    let pick = news[(rng.next_u64() % news.len() as u64) as usize];
    let mut path = Vec::new();
    let mut at = 0;
    while at < manifest.num_blocks() {
        if at == pick.from {
            path.push(pick);
            at = pick.to;
        } else {
            match manifest
                .branches
                .iter()
                .find(|b| b.kind == BranchKind::Original && b.from == at)
            {
                Some(b) => path.push(b),
                None => break,
            }
            at += 1;
        }
    }
    path
}

/// The path with the fewest branches (longest merges), fewest MACs among those.
pub fn most_merged_path(manifest: &Manifest) -> Vec<&Branch> {
    crate::cmd_subnet::most_merged_subnet(manifest)
        .branches()
        .iter()
        .filter_map(|id| manifest.branch(id))
        .collect()
}

/// Stage 2. Returns the mean loss of the last steps.
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
    let vars: Vec<candle_core::Var> = new_branches(manifest)
        .iter()
        .flat_map(|b| branch_vars(interp, b))
        .collect();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: spec.learning_rate,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut rng = SplitMix(seed ^ 0x5eed_0002);
    let pb = bar(spec.steps as u64, "stage 2");
    let start = Instant::now();
    let t = spec.temperature;
    let mut ema = 0f64;
    let mut logged = 0;
    for step in 0..spec.steps {
        let idx: Vec<usize> = (0..teacher.batch)
            .map(|k| train[(step * teacher.batch + k) % train.len()])
            .collect();
        let tb = teacher.batch(&idx)?;
        let path = if spec.most_merged_every > 0
            && step % spec.most_merged_every == spec.most_merged_every - 1
        {
            most_merged_path(manifest)
        } else if ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < spec.single_branch_prob {
            single_branch_path(manifest, &mut rng)
        } else {
            sample_subnet(manifest, &mut rng, spec.new_branch_prob)
        };
        let mut h = tb.cuts[0].clone();
        for b in &path {
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
        let loss = match (&tb.labels, spec.label_weight > 0.0) {
            (Some(labels), true) => {
                let ce = candle_nn::loss::cross_entropy(&logits, labels)?;
                ((distill * (1.0 - spec.label_weight))? + (ce * spec.label_weight)?)?
            }
            _ => distill,
        };
        opt.backward_step(&loss)?;
        let l = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        ema = if step == 0 { l } else { 0.95 * ema + 0.05 * l };
        pb.inc(1);
        pb.set_message(format!(
            "loss {ema:.4}  {:.0} samples/s",
            ((step + 1) * teacher.batch) as f64 / start.elapsed().as_secs_f64()
        ));
        log_progress(&pb, "stage 2", &mut logged);
    }
    pb.finish();
    Ok(ema)
}
