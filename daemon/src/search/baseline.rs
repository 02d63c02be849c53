//! Baselines for the report, and the untrained bundle the tests use:
//!
//! - [`build_untrained_bundle`]: the oracle fixture with merge spans 2, 3 and
//!   shrink ratios 0.5, 0.25 (33 branches), branches left as copies of the
//!   pretrained blocks (no training). Searched like any bundle, it is the
//!   "untrained branches" baseline.
//! - [`drop_blocks`]: no branches at all; blocks whose input and output
//!   shapes agree are replaced by the identity. Every such subnet is
//!   materialised (the path simply skips the block) and evaluated; its
//!   predicted latency is the latency table without the skipped blocks.

use std::path::Path;

use adaptivenet_onnx::bundle::{BundleWriter, ModelDescription, Preprocess, Signer, SUPERNET_FILE};
use adaptivenet_onnx::dataset::{argmax_rows, Dataset};
use adaptivenet_onnx::model_io::encode_model;
use adaptivenet_onnx::supernet::{
    build_branches, embed_manifest, supernet_with_manifest, BranchSpec,
};
use adaptivenet_onnx::{Oracle, Plan};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::front::{pareto_front, Point};
use super::latency::LatencyTable;
use super::Supernet;

pub use crate::demo::FMNIST_LABELS;

/// Write the untrained supernet bundle of `oracle` (the Fashion-MNIST
/// fixture's description) to `out`, signed by `sign` if given.
pub fn build_untrained_bundle(oracle: &Path, out: &Path, sign: Option<Signer<'_>>) -> Result<()> {
    let oracle = Oracle::load(oracle, None)?;
    let branches = build_branches(&oracle, &BranchSpec::default())?;
    let desc = ModelDescription {
        name: "fmnist-resnet-untrained".into(),
        version: 1,
        compatible: "generic-cpu".into(),
        preprocess: Preprocess {
            mean: vec![0.2860],
            std: vec![0.3530],
        },
        labels: FMNIST_LABELS.iter().map(|s| s.to_string()).collect(),
    };
    let (mut model, manifest) = supernet_with_manifest(&oracle, &branches, &desc)?;
    let yaml = manifest.to_yaml()?;
    embed_manifest(&mut model, &yaml);
    let mut w = BundleWriter::new(manifest);
    w.add_file(SUPERNET_FILE, encode_model(&model))?;
    w.write(out, sign)?;
    Ok(())
}

/// A drop-blocks subnet: the oracle with the listed blocks replaced by the identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DropPoint {
    /// Which blocks are skipped, e.g. `b1 b4`; empty for the oracle.
    pub skipped: Vec<usize>,
    pub predicted_ms: f64,
    pub accuracy: f64,
}

impl DropPoint {
    pub fn label(&self) -> String {
        if self.skipped.is_empty() {
            "oracle".into()
        } else {
            format!(
                "skip {}",
                self.skipped
                    .iter()
                    .map(|b| format!("b{b}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
    }
}

/// Blocks whose input and output cut shapes agree.
pub fn same_shape_blocks(net: &Supernet) -> Vec<usize> {
    (0..net.num_blocks())
        .filter(|&i| net.manifest.cuts[i].shape == net.manifest.cuts[i + 1].shape)
        .collect()
}

/// Evaluate every subset of same-shape blocks dropped (at most `max_drop`
/// at once), each materialised into one plan at `batch`, on `data`.
pub fn drop_blocks(
    net: &Supernet,
    table: &LatencyTable,
    data: &Dataset,
    batch: usize,
    max_drop: usize,
) -> Result<Vec<DropPoint>> {
    let droppable = same_shape_blocks(net);
    let look = table.lookup();
    let labels = data
        .labels
        .as_ref()
        .context("the drop-blocks baseline needs labelled data")?;
    let mut out = Vec::new();
    for mask in 0u32..(1 << droppable.len()) {
        if mask.count_ones() as usize > max_drop {
            continue;
        }
        let skipped: Vec<usize> = droppable
            .iter()
            .enumerate()
            .filter(|(k, _)| mask & (1 << k) != 0)
            .map(|(_, b)| *b)
            .collect();
        let mut path = vec![net.stem_span()];
        let mut ms = table.stem_ms + table.head_ms;
        for i in 0..net.num_blocks() {
            if skipped.contains(&i) {
                continue;
            }
            let id = adaptivenet_onnx::bundle::BranchId::Original { block: i };
            path.push(net.branch_span(&id)?);
            ms += look.branch(&id);
        }
        path.push(net.head_span());
        let model = adaptivenet_onnx::extract::materialise(&net.model, &net.index, &path)?;
        let acc = accuracy_of_model(&model, data, labels, batch)?;
        out.push(DropPoint {
            skipped,
            predicted_ms: ms,
            accuracy: acc,
        });
    }
    Ok(out)
}

/// Top-1 of a standalone model on labelled data.
pub fn accuracy_of_model(
    model: &adaptivenet_onnx::tract_onnx::pb::ModelProto,
    data: &Dataset,
    labels: &[i64],
    batch: usize,
) -> Result<f64> {
    let batch = batch.clamp(1, data.len());
    let plan = Plan::whole_model(model, batch)?;
    let mut correct = 0usize;
    let mut start = 0;
    while start < data.len() {
        let n = batch.min(data.len() - start);
        let preds = if n == batch {
            argmax_rows(&plan.run(data.batch(start, n)?)?)?
        } else {
            let p = Plan::whole_model(model, n)?;
            argmax_rows(&p.run(data.batch(start, n)?)?)?
        };
        correct += preds
            .iter()
            .zip(&labels[start..start + n])
            .filter(|(p, l)| **p as i64 == **l)
            .count();
        start += n;
    }
    Ok(correct as f64 / data.len() as f64)
}

/// The best drop-blocks point whose predicted latency fits `budget_ms`.
pub fn best_drop_under(points: &[DropPoint], budget_ms: f64) -> Option<&DropPoint> {
    points
        .iter()
        .filter(|p| p.predicted_ms <= budget_ms)
        .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy))
}

/// Drop points as front points (for charts).
pub fn drop_front(points: &[DropPoint]) -> Vec<DropPoint> {
    let pts: Vec<Point> = points
        .iter()
        .map(|p| Point {
            subnet: adaptivenet_onnx::bundle::SubnetId(vec![]),
            predicted_ms: p.predicted_ms,
            accuracy: p.accuracy,
            images: 0,
        })
        .collect();
    pareto_front(&pts)
        .iter()
        .map(|&i| points[i].clone())
        .collect()
}
