//! Cost statistics of a span: operator counts, learned parameters and
//! multiply-accumulates per sample, from the graph and inferred shapes.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use tract_onnx::pb::GraphProto;
use tract_onnx::prelude::DatumType;

use crate::blocks::Span;
use crate::error::Result;
use crate::facts::ModelFacts;
use crate::graph::GraphIndex;

/// Costs of one span.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SpanStats {
    /// Number of non-constant operators.
    pub ops: usize,
    /// Operators by type.
    pub op_counts: BTreeMap<String, usize>,
    /// Learned parameters (elements of float constants the span's operators read).
    pub params: u64,
    /// Multiply-accumulates per sample of the Conv, Gemm and MatMul operators.
    pub macs: u64,
}

/// Compute the statistics of `span`. `facts` should be inferred at batch 1
/// (MACs are divided by the facts' batch size anyway).
pub fn span_stats(
    graph: &GraphProto,
    index: &GraphIndex,
    facts: &ModelFacts,
    span: &Span,
) -> Result<SpanStats> {
    let ids = index.nodes_between(graph, &span.from, &[span.to.as_str()])?;
    let mut stats = SpanStats::default();
    let mut weights: HashSet<&str> = HashSet::new();
    let numel = |name: &str| {
        facts
            .tensors
            .get(name)
            .map(|f| f.shape.iter().product::<usize>() as u64)
    };
    for id in ids.into_iter().filter(|&i| !index.const_node[i]) {
        let node = &graph.node[id];
        stats.ops += 1;
        *stats.op_counts.entry(node.op_type.clone()).or_default() += 1;
        for i in node.input.iter().filter(|i| index.constant.contains(*i)) {
            if facts
                .tensors
                .get(i)
                .is_some_and(|f| f.dtype == DatumType::F32 || f.dtype == DatumType::F16)
            {
                weights.insert(i.as_str());
            }
        }
        let out = node.output.first().and_then(|o| numel(o)).unwrap_or(0);
        let shape = |k: usize| {
            node.input
                .get(k)
                .and_then(|n| facts.tensors.get(n))
                .map(|f| f.shape.clone())
        };
        let macs = match node.op_type.as_str() {
            "Conv" => shape(1)
                .map(|w| out * w.iter().skip(1).product::<usize>() as u64)
                .unwrap_or(0),
            "ConvTranspose" => match (node.input.first().and_then(|n| numel(n)), shape(1)) {
                (Some(inp), Some(w)) => inp * w.iter().skip(1).product::<usize>() as u64,
                _ => 0,
            },
            "Gemm" => {
                let trans_a = node
                    .attribute
                    .iter()
                    .any(|a| a.name == "transA" && a.i != 0);
                shape(0)
                    .and_then(|a| {
                        if trans_a {
                            a.first().copied()
                        } else {
                            a.last().copied()
                        }
                    })
                    .map(|k| out * k as u64)
                    .unwrap_or(0)
            }
            "MatMul" => shape(0)
                .and_then(|a| a.last().copied())
                .map(|k| out * k as u64)
                .unwrap_or(0),
            _ => 0,
        };
        stats.macs += macs;
    }
    stats.macs /= facts.batch.max(1) as u64;
    stats.params = weights.iter().filter_map(|w| numel(w)).sum();
    Ok(stats)
}
