//! Block detection: groups consecutive cut tensors into the model's repeated
//! units and splits the oracle into a stem, blocks B_0..B_{N-1} and a head.
//!
//! The rule, for models no one here has seen:
//! - a block ends where a parallel region closes: at the Add, Sum or Concat
//!   that merges two or more data paths, extended over the elementwise
//!   activations right after it;
//! - a block also ends at a linear projection: a Conv or BatchNormalization
//!   output, with no activation, that feeds the next Conv;
//! - a block holds everything since the previous block ended;
//! - the stem runs from the input through the first weighted op and the
//!   non-weighted ops after it, up to the next weighted op or parallel region;
//! - the head runs from the last block's end to the output;
//! - a plain chain with none of the above (VGG-like) splits into units of one
//!   weighted op (Conv, Gemm, MatMul) with the ops that follow it; the first
//!   unit is the stem and the last the head.
//!
//! Named cut tensors given by the user override detection.

use serde::{Deserialize, Serialize};
use tract_onnx::pb::GraphProto;

use crate::cuts::{find_cuts, CutCandidate};
use crate::error::{Error, Result};
use crate::graph::{GraphIndex, ELEMENTWISE_UNARY, MERGE, WEIGHTED};

/// A piece of the model between two tensors: the stem, a block, the head, or a branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub from: String,
    pub to: String,
}

impl Span {
    pub fn new(from: impl Into<String>, to: impl Into<String>) -> Span {
        Span {
            from: from.into(),
            to: to.into(),
        }
    }
}

/// The oracle split at its cuts c_0..c_N.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockLayout {
    /// The model's data input.
    pub input: String,
    /// The model's main output.
    pub output: String,
    /// Cut tensors c_0..c_N (stem output .. last block output).
    pub cuts: Vec<String>,
}

impl BlockLayout {
    /// input -> c_0
    pub fn stem(&self) -> Span {
        Span::new(&self.input, &self.cuts[0])
    }
    /// B_i: c_i -> c_{i+1}
    pub fn block(&self, i: usize) -> Span {
        Span::new(&self.cuts[i], &self.cuts[i + 1])
    }
    /// c_N -> output
    pub fn head(&self) -> Span {
        Span::new(&self.cuts[self.cuts.len() - 1], &self.output)
    }
    /// Number of blocks N.
    pub fn num_blocks(&self) -> usize {
        self.cuts.len() - 1
    }
    /// All blocks in order.
    pub fn blocks(&self) -> Vec<Span> {
        (0..self.num_blocks()).map(|i| self.block(i)).collect()
    }
    /// Stem, blocks, head: the oracle path.
    pub fn oracle_path(&self) -> Vec<Span> {
        let mut path = vec![self.stem()];
        path.extend(self.blocks());
        path.push(self.head());
        path
    }
}

/// Detect the block layout of a model's main graph, or validate and use
/// `overrides` (cut tensor names, in any order) when given.
pub fn detect_blocks(
    graph: &GraphProto,
    index: &GraphIndex,
    overrides: Option<&[String]>,
) -> Result<BlockLayout> {
    let cands = find_cuts(graph, index)?;
    let input = cands[0].tensor.clone();
    let output = index.main_output()?.to_string();
    let cuts = match overrides {
        Some(names) => override_cuts(&cands, names, &input, &output)?,
        None => auto_cuts(graph, index, &cands, &output)?,
    };
    if cuts.len() < 2 {
        return Err(Error::Graph(format!(
            "found {} cut(s) between the stem and the head; a supernet needs at least one block (2 cuts)",
            cuts.len()
        )));
    }
    Ok(BlockLayout {
        input,
        output,
        cuts,
    })
}

fn override_cuts(
    cands: &[CutCandidate],
    names: &[String],
    input: &str,
    output: &str,
) -> Result<Vec<String>> {
    let mut picked: Vec<(usize, String)> = Vec::new();
    for name in names {
        if name == input || name == output {
            return Err(Error::Graph(format!(
                "cut `{name}` is the model's input or output; cuts lie strictly between them"
            )));
        }
        match cands.iter().position(|c| &c.tensor == name) {
            Some(p) => picked.push((p, name.clone())),
            None => {
                return Err(Error::Graph(format!(
                    "`{name}` is not a cut: some path from `{input}` to `{output}` bypasses it (or no such tensor)"
                )))
            }
        }
    }
    picked.sort();
    picked.dedup();
    Ok(picked.into_iter().map(|(_, n)| n).collect())
}

/// Per-candidate facts used by the rule.
struct Segment {
    /// Live nodes after the previous candidate up to and including this one's producer.
    nodes: Vec<usize>,
}

fn auto_cuts(
    graph: &GraphProto,
    index: &GraphIndex,
    cands: &[CutCandidate],
    output: &str,
) -> Result<Vec<String>> {
    let live: Vec<usize> = index
        .order
        .iter()
        .copied()
        .filter(|&n| index.live[n])
        .collect();
    // segments[k] = nodes between cands[k-1] and cands[k] (k >= 1)
    let mut segments: Vec<Segment> = vec![Segment { nodes: vec![] }];
    let mut prev = 0usize;
    for c in cands.iter().skip(1) {
        let p = c.live_position.unwrap_or(0);
        segments.push(Segment {
            nodes: live[prev..=p].to_vec(),
        });
        prev = p + 1;
    }
    let op = |n: usize| graph.node[n].op_type.as_str();
    let is_weighted = |seg: &Segment| seg.nodes.iter().any(|&n| WEIGHTED.contains(&op(n)));
    let is_parallel = |seg: &Segment| {
        seg.nodes
            .iter()
            .any(|&n| index.data_inputs(graph, n).len() >= 2)
    };
    let is_unary_step = |k: usize| {
        let seg = &segments[k];
        seg.nodes.len() == 1 && ELEMENTWISE_UNARY.contains(&op(seg.nodes[0]))
    };

    let k_max = cands.len() - 1; // the output
    let mut ends: Vec<usize> = Vec::new();
    for k in 1..k_max {
        let producer = match cands[k].producer {
            Some(p) => p,
            None => continue,
        };
        // (a) a merge closes a parallel region: walk back over unary activations.
        let mut j = k;
        while j > 0 && is_unary_step(j) {
            j -= 1;
        }
        let merge_closes = j >= 1
            && cands[j]
                .producer
                .is_some_and(|m| MERGE.contains(&op(m)) && index.data_inputs(graph, m).len() >= 2)
            && is_parallel(&segments[j]);
        let next_is_unary = k < k_max && is_unary_step(k + 1);
        if merge_closes && !next_is_unary {
            ends.push(k);
            continue;
        }
        // (b) a linear projection feeding the next conv.
        let linear = matches!(op(producer), "Conv" | "BatchNormalization");
        let feeds_conv = index
            .live_consumers(&cands[k].tensor)
            .iter()
            .any(|&c| op(c) == "Conv");
        if linear && feeds_conv {
            ends.push(k);
        }
    }

    if ends.is_empty() {
        return Ok(plain_chain_cuts(graph, index, cands, output));
    }

    // The stem: through the first weighted op and the non-weighted ops after
    // it, up to the next segment with a weighted op or a parallel region.
    let mut stem_end = None;
    let mut seen_weighted = false;
    for (k, seg) in segments.iter().enumerate().take(k_max).skip(1) {
        if seen_weighted && (is_weighted(seg) || is_parallel(seg)) {
            stem_end = Some(k - 1);
            break;
        }
        seen_weighted |= is_weighted(seg);
    }
    let first_end = ends[0];
    let stem_end = match stem_end {
        Some(s) if s >= 1 && s < first_end => s,
        // The stem would swallow the first block, or be empty: the first block is the stem.
        _ => first_end,
    };
    let mut cut_ix: Vec<usize> = vec![stem_end];
    cut_ix.extend(ends.into_iter().filter(|&e| e > stem_end));
    Ok(cut_ix
        .into_iter()
        .map(|k| cands[k].tensor.clone())
        .collect())
}

/// Units of one weighted op and the ops after it; boundaries are the cut
/// tensors read by each weighted op.
fn plain_chain_cuts(
    graph: &GraphProto,
    index: &GraphIndex,
    cands: &[CutCandidate],
    output: &str,
) -> Vec<String> {
    let is_cut = |t: &str| cands.iter().any(|c| c.tensor == t);
    let input = &cands[0].tensor;
    let mut bounds: Vec<String> = Vec::new();
    for &n in index.order.iter().filter(|&&n| index.live[n]) {
        if !WEIGHTED.contains(&graph.node[n].op_type.as_str()) {
            continue;
        }
        for t in index.data_inputs(graph, n) {
            if is_cut(t) && t != input && t != output && !bounds.iter().any(|b| b == t) {
                bounds.push(t.to_string());
            }
        }
    }
    bounds
}
