//! A manifest for an oracle's own blocks: cuts, shapes and the original
//! branches with their MACs and parameter counts, measured from the graph.
//! `elastify` adds its merge and shrink branches to it.

use std::collections::BTreeMap;

use super::manifest::*;
use crate::oracle::Oracle;

/// What the graph does not say about a model.
#[derive(Clone, Debug)]
pub struct ModelDescription {
    pub name: String,
    pub version: u64,
    pub compatible: String,
    pub preprocess: Preprocess,
    pub labels: Vec<String>,
}

/// ONNX `TensorProto.DataType` as its ONNX name.
fn dtype_name(elem_type: i32) -> &'static str {
    match elem_type {
        1 => "float",
        2 => "uint8",
        3 => "int8",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        10 => "float16",
        11 => "double",
        16 => "bfloat16",
        _ => "unknown",
    }
}

fn layout_for_rank(rank: usize) -> String {
    match rank {
        4 => "NCHW".into(),
        3 => "NCL".into(),
        2 => "NC".into(),
        5 => "NCDHW".into(),
        n => "N".to_string() + &"?".repeat(n.saturating_sub(1)),
    }
}

/// The manifest of a supernet that holds only the oracle (every block as an
/// original branch); shapes have a symbolic batch `N`.
pub fn oracle_manifest(oracle: &Oracle, desc: &ModelDescription) -> crate::Result<Manifest> {
    let summary = oracle.summary()?;
    let graph = oracle.graph();
    let input_name = oracle.layout.input.clone();
    let elem_type = graph
        .input
        .iter()
        .find(|v| v.name == input_name)
        .and_then(|v| v.r#type.as_ref())
        .and_then(|t| t.value.as_ref())
        .map(|v| match v {
            tract_onnx::pb::type_proto::Value::TensorType(t) => t.elem_type,
            #[allow(unreachable_patterns)]
            _ => 0,
        })
        .unwrap_or(0);
    let in_shape = &summary.stem.input_shape;
    let rest = |s: &[usize]| s.get(1..).map(<[usize]>::to_vec).unwrap_or_default();
    let mut cuts = vec![Cut {
        index: 0,
        tensor: summary.stem.output.clone(),
        shape: batch_shape("N", &rest(&summary.stem.output_shape)),
    }];
    let mut branches = Vec::new();
    for (i, b) in summary.blocks.iter().enumerate() {
        cuts.push(Cut {
            index: i + 1,
            tensor: b.output.clone(),
            shape: batch_shape("N", &rest(&b.output_shape)),
        });
        branches.push(Branch::original(
            i,
            b.output.clone(),
            b.stats.macs,
            b.stats.params,
        ));
    }
    Ok(Manifest {
        format_version: FORMAT_VERSION,
        model: ModelInfo {
            name: desc.name.clone(),
            version: desc.version,
        },
        compatible: desc.compatible.clone(),
        input: InputSpec {
            name: input_name,
            shape: batch_shape("N", &rest(in_shape)),
            dtype: dtype_name(elem_type).to_string(),
            layout: layout_for_rank(in_shape.len()),
            preprocess: desc.preprocess.clone(),
            labels: desc.labels.clone(),
        },
        output: OutputSpec {
            name: oracle.layout.output.clone(),
        },
        cuts,
        branches,
        files: BTreeMap::new(),
        created_by: None,
    })
}
