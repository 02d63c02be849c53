//! Cut detection: the tensors that every path from the data input to the
//! output passes through. Constant subgraphs (initializers, `Constant`,
//! `ConstantOfShape` and whatever depends only on them) are weights, not
//! paths, so they never keep a region open.

use std::collections::HashMap;

use tract_onnx::pb::GraphProto;

use crate::error::Result;
use crate::graph::GraphIndex;

/// One cut tensor, in execution order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutCandidate {
    /// Tensor name.
    pub tensor: String,
    /// The node producing it (`None` for the model input).
    pub producer: Option<usize>,
    /// Position of the producer among live nodes (`None` for the input).
    pub live_position: Option<usize>,
}

/// All cut tensors of the graph, from the data input to the main output, in
/// order. The first is the input itself, the last the main output.
///
/// A tensor `t` is a cut iff every live node is either an ancestor of `t` or a
/// descendant of it; then any topological order places `t` at a point where
/// it is the only open tensor (produced earlier, read later). So one sweep
/// over the live nodes, counting open tensors, finds them all.
pub fn find_cuts(graph: &GraphProto, index: &GraphIndex) -> Result<Vec<CutCandidate>> {
    let input = index.single_input()?.to_string();
    let output = index.main_output()?.to_string();
    let live: Vec<usize> = index
        .order
        .iter()
        .copied()
        .filter(|&n| index.live[n])
        .collect();
    let live_pos: HashMap<usize, usize> = live.iter().enumerate().map(|(p, &n)| (n, p)).collect();

    // Last live position at which each tensor is read (usize::MAX for the output).
    let last_use = |tensor: &str| -> Option<usize> {
        if tensor == output {
            return Some(usize::MAX);
        }
        index
            .live_consumers(tensor)
            .iter()
            .filter_map(|c| live_pos.get(c).copied())
            .max()
    };

    let mut cuts = vec![CutCandidate {
        tensor: input.clone(),
        producer: None,
        live_position: None,
    }];
    // open tensors: name -> last use
    let mut open: HashMap<String, usize> = HashMap::new();
    if let Some(l) = last_use(&input) {
        open.insert(input.clone(), l);
    }
    for (p, &n) in live.iter().enumerate() {
        for out in graph.node[n].output.iter().filter(|o| !o.is_empty()) {
            if let Some(l) = last_use(out) {
                if l > p {
                    open.insert(out.clone(), l);
                }
            }
        }
        open.retain(|_, &mut l| l > p);
        if open.len() == 1 {
            if let Some(t) = open.keys().next() {
                if graph.node[n].output.iter().any(|o| o == t) {
                    cuts.push(CutCandidate {
                        tensor: t.clone(),
                        producer: Some(n),
                        live_position: Some(p),
                    });
                }
            }
        }
    }
    Ok(cuts)
}
