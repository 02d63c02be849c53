//! `elastify.yaml`: which branches to build, how to train them, and what the
//! bundle says about the model. Every key has a default
//! (`adaptivenet elastify --print-default-spec`); an unknown key is an error.

use std::path::Path;

use adaptivenet_onnx::supernet::BranchSpec;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ElastifySpec {
    pub model: ModelSpec,
    pub branches: BranchSpec,
    pub training: TrainingSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSpec {
    /// Model name in the manifest (default: the oracle file's stem).
    pub name: Option<String>,
    /// Monotonically increasing bundle version.
    pub version: u64,
    /// Device class the bundle is for.
    pub compatible: String,
    /// Class names, in output order.
    pub labels: Vec<String>,
    /// Input normalisation of raw pixels: (x / 255 - mean) / std, per channel.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// The input's image layout, `NCHW` or `NHWC` (default: `NCHW` for a
    /// 4-d input, as PyTorch exports). Data sources build images in it and
    /// the daemon reads it to accept raw pixels in either layout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec {
            name: None,
            version: 1,
            compatible: "generic-cpu".into(),
            labels: vec![],
            mean: vec![0.0],
            std: vec![1.0],
            layout: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSpec {
    /// Seed for shuffling, subnet sampling and re-created layers.
    pub seed: u64,
    /// Samples per training step.
    pub batch_size: usize,
    /// Samples held out of training to measure each branch's distillation loss.
    pub holdout: usize,
    pub stage1: Stage1Spec,
    pub stage2: Stage2Spec,
}

impl Default for TrainingSpec {
    fn default() -> Self {
        TrainingSpec {
            seed: 0,
            batch_size: 64,
            holdout: 512,
            stage1: Stage1Spec::default(),
            stage2: Stage2Spec::default(),
        }
    }
}

/// Stage 1: branch-wise distillation (MSE on the cut tensor c_j).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stage1Spec {
    /// Training samples each branch sees (0 skips the stage).
    pub samples: usize,
    /// More samples for a merge branch for each block beyond the first it
    /// stands in for (a merge of 3 blocks sees `samples + 2 x this`).
    pub samples_per_extra_block: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// How the learning rate changes over the stage.
    pub schedule: Schedule,
}

impl Default for Stage1Spec {
    fn default() -> Self {
        Stage1Spec {
            samples: 6144,
            samples_per_extra_block: 0,
            learning_rate: 1e-3,
            weight_decay: 0.0,
            schedule: Schedule::Cosine,
        }
    }
}

/// Learning-rate schedule of a training stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The spec's learning rate throughout.
    Constant,
    /// Half-cosine decay from the spec's learning rate to zero at the last step.
    Cosine,
}

impl Schedule {
    /// The learning rate for `step` of `steps`, starting from `lr`.
    pub fn rate(self, lr: f64, step: usize, steps: usize) -> f64 {
        match self {
            Schedule::Constant => lr,
            Schedule::Cosine => {
                let t = step as f64 / steps.max(1) as f64;
                0.5 * lr * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// Stage 2: fine-tuning sampled subnets on the oracle's logits and labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stage2Spec {
    /// Optimiser steps (0 skips the stage).
    pub steps: usize,
    pub learning_rate: f64,
    /// How the learning rate changes over the stage.
    pub schedule: Schedule,
    /// Subnets trained on each batch; their losses are averaged into one
    /// optimiser step, so the teacher's pass over the batch is shared.
    pub paths_per_step: usize,
    /// Distillation temperature.
    pub temperature: f64,
    /// Weight of the label loss (the rest goes to distillation); unused without labels.
    pub label_weight: f64,
    /// Probability of taking a new branch at each cut when sampling a subnet.
    pub new_branch_prob: f64,
    /// Probability that a sampled subnet is a single-branch subnet (the
    /// oracle path with one new branch swapped in) rather than a random path.
    /// The branch is drawn in proportion to its running distillation loss,
    /// so the branches furthest from the oracle get the most steps.
    pub single_branch_prob: f64,
    /// Every this many steps, the first subnet of the step is the most merged
    /// one (fewest branches), so the fastest end of the space is trained too
    /// (0: never).
    pub most_merged_every: usize,
}

impl Default for Stage2Spec {
    fn default() -> Self {
        Stage2Spec {
            steps: 300,
            learning_rate: 5e-4,
            schedule: Schedule::Cosine,
            paths_per_step: 3,
            temperature: 4.0,
            label_weight: 0.5,
            new_branch_prob: 0.5,
            single_branch_prob: 0.5,
            most_merged_every: 1,
        }
    }
}

impl ElastifySpec {
    pub fn load(path: &Path) -> Result<ElastifySpec> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        yaml_serde::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn default_yaml() -> Result<String> {
        Ok(yaml_serde::to_string(&ElastifySpec::default())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule_decays_from_the_rate_to_zero() {
        let s = Schedule::Cosine;
        assert_eq!(s.rate(1e-3, 0, 100), 1e-3);
        assert!((s.rate(1e-3, 50, 100) - 5e-4).abs() < 1e-12);
        assert!(s.rate(1e-3, 99, 100) < 1e-6);
        let rates: Vec<f64> = (0..100).map(|k| s.rate(1e-3, k, 100)).collect();
        assert!(rates.windows(2).all(|w| w[1] < w[0]));
        assert_eq!(Schedule::Constant.rate(1e-3, 99, 100), 1e-3);
    }

    #[test]
    fn schedules_parse_from_the_spec() {
        let spec: ElastifySpec = yaml_serde::from_str(
            "training:\n  stage1: {schedule: constant}\n  stage2: {schedule: cosine, paths_per_step: 2}\n",
        )
        .unwrap();
        assert_eq!(spec.training.stage1.schedule, Schedule::Constant);
        assert_eq!(spec.training.stage2.paths_per_step, 2);
        assert!(
            yaml_serde::from_str::<ElastifySpec>("training:\n  stage1: {schedule: linear}\n")
                .is_err()
        );
    }
}
