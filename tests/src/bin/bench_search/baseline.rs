//! The "drop blocks" baseline of the search report (the untrained-branches
//! baseline is the untrained bundle, `bench_search make-bundle`):
//!
//! - [`drop_blocks`]: no branches at all; blocks whose input and output
//!   shapes agree are replaced by the identity. Every such subnet is
//!   materialised (the path simply skips the block) and evaluated; its
//!   predicted latency is the latency table without the skipped blocks.

use adaptivenet_onnx::dataset::Dataset;
use adaptivenet_search::{LatencyTable, Supernet};
use anyhow::Result;
use serde::{Deserialize, Serialize};

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
    if data.labels.is_none() {
        anyhow::bail!("the drop-blocks baseline needs labelled data");
    }
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
        let acc = adaptivenet_onnx::subnet::top1(&model, data, batch)?;
        out.push(DropPoint {
            skipped,
            predicted_ms: ms,
            accuracy: acc,
        });
    }
    Ok(out)
}

/// The best drop-blocks point whose predicted latency fits `budget_ms`.
pub fn best_drop_under(points: &[DropPoint], budget_ms: f64) -> Option<&DropPoint> {
    points
        .iter()
        .filter(|p| p.predicted_ms <= budget_ms)
        .max_by(|a, b| a.accuracy.total_cmp(&b.accuracy))
}
