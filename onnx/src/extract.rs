//! Cutting graphs at the proto level: a span c_i -> c_j becomes a standalone
//! ONNX model (input `c_i`, output `c_j`) holding exactly the nodes and
//! weights it needs, and a path of spans becomes one materialised subnet.
//! Cutting protos (rather than tract graphs) keeps every piece a valid ONNX
//! file that any runtime opens.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb::{
    tensor_shape_proto::{dimension::Value as DimValue, Dimension},
    type_proto, GraphProto, ModelProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::blocks::Span;
use crate::error::{Error, Result};
use crate::graph::GraphIndex;

/// One dimension of a declared tensor shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    Param(String),
}

/// A `ValueInfoProto` for a tensor of ONNX element type `elem` and shape `dims`.
pub fn value_info(name: &str, elem: i32, dims: Option<&[Dim]>) -> ValueInfoProto {
    let shape = dims.map(|dims| TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| Dimension {
                denotation: String::new(),
                value: Some(match d {
                    Dim::Fixed(v) => DimValue::DimValue(*v as i64),
                    Dim::Param(p) => DimValue::DimParam(p.clone()),
                }),
            })
            .collect(),
    });
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem,
                shape,
            })),
        }),
        doc_string: String::new(),
    }
}

/// Concrete dims.
pub fn fixed(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::Fixed(d)).collect()
}

/// Concrete dims with a symbolic batch (`batch`) on axis 0.
pub fn batched(shape: &[usize]) -> Vec<Dim> {
    shape
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            if i == 0 {
                Dim::Param("batch".into())
            } else {
                Dim::Fixed(d)
            }
        })
        .collect()
}

const FLOAT: i32 = 1;

/// A new model around `graph`, inheriting opsets and IR version from `base`.
fn model_like(base: &ModelProto, mut graph: GraphProto) -> ModelProto {
    // Before IR 4 initializers had to be listed as graph inputs too.
    if base.ir_version < 4 {
        let listed: HashSet<String> = graph.input.iter().map(|i| i.name.clone()).collect();
        let extra: Vec<ValueInfoProto> = graph
            .initializer
            .iter()
            .filter(|t| !listed.contains(&t.name))
            .map(|t| {
                value_info(
                    &t.name,
                    t.data_type,
                    Some(&fixed(
                        &t.dims.iter().map(|&d| d as usize).collect::<Vec<_>>(),
                    )),
                )
            })
            .collect();
        graph.input.extend(extra);
    }
    ModelProto {
        ir_version: base.ir_version,
        opset_import: base.opset_import.clone(),
        producer_name: "adaptivenet".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: base.domain.clone(),
        model_version: base.model_version,
        doc_string: String::new(),
        graph: Some(graph),
        ..Default::default()
    }
}

/// Copy the initializers that `nodes` read.
fn used_initializers(
    graph: &GraphProto,
    nodes: &[tract_onnx::pb::NodeProto],
) -> Vec<tract_onnx::pb::TensorProto> {
    let read: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    graph
        .initializer
        .iter()
        .filter(|t| read.contains(t.name.as_str()))
        .cloned()
        .collect()
}

/// Extract span `from -> to` as a standalone model whose input `from` has the
/// given dims (use [`fixed`] for a tract plan, [`batched`] for a portable
/// file) and whose output is `to`.
pub fn extract_span(
    model: &ModelProto,
    index: &GraphIndex,
    span: &Span,
    input_dims: &[Dim],
    output_dims: Option<&[Dim]>,
) -> Result<ModelProto> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Graph("model has no graph".into()))?;
    let ids = index.nodes_between(graph, &span.from, &[span.to.as_str()])?;
    if ids.is_empty() {
        return Err(Error::Graph(format!(
            "span `{}` -> `{}` contains no node",
            span.from, span.to
        )));
    }
    let nodes: Vec<_> = ids.iter().map(|&i| graph.node[i].clone()).collect();
    let sub = GraphProto {
        name: format!("span {} -> {}", span.from, span.to),
        initializer: used_initializers(graph, &nodes),
        input: vec![value_info(&span.from, FLOAT, Some(input_dims))],
        output: vec![value_info(&span.to, FLOAT, output_dims)],
        node: nodes,
        ..Default::default()
    };
    Ok(model_like(model, sub))
}

/// Materialise a subnet: chain `path` (spans of `model`, the first starting at
/// the model input) into one standalone model. Where a span starts at a tensor
/// other than the previous span's output (a branch that skips blocks), its
/// reads of that tensor are rewired to the previous output. The result keeps
/// the model's declared input (dynamic batch included).
pub fn materialise(model: &ModelProto, index: &GraphIndex, path: &[Span]) -> Result<ModelProto> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Graph("model has no graph".into()))?;
    let first = path
        .first()
        .ok_or_else(|| Error::Graph("an empty path has no subnet".into()))?;
    let input_vi = graph
        .input
        .iter()
        .find(|i| i.name == first.from)
        .ok_or_else(|| {
            Error::Graph(format!(
                "the path starts at `{}`, which is not a graph input",
                first.from
            ))
        })?
        .clone();
    let mut taken: HashMap<usize, usize> = HashMap::new(); // node -> span that took it
    let mut nodes = Vec::new();
    let mut prev_out: Option<&str> = None;
    for (k, span) in path.iter().enumerate() {
        let ids = index.nodes_between(graph, &span.from, &[span.to.as_str()])?;
        let rename = match prev_out {
            Some(p) if p != span.from => Some((span.from.as_str(), p)),
            _ => None,
        };
        for id in ids {
            if let Some(&other) = taken.get(&id) {
                if !index.const_node[id] {
                    return Err(Error::Graph(format!(
                        "spans {} and {} of the path both compute node `{}`: they overlap",
                        other, k, graph.node[id].name
                    )));
                }
                continue;
            }
            taken.insert(id, k);
            let mut node = graph.node[id].clone();
            if let Some((from, to)) = rename {
                for i in node.input.iter_mut().filter(|i| i.as_str() == from) {
                    *i = to.to_string();
                }
            }
            nodes.push(node);
        }
        prev_out = Some(span.to.as_str());
    }
    let last = &path[path.len() - 1].to;
    let output_vi = graph
        .output
        .iter()
        .find(|o| &o.name == last)
        .cloned()
        .unwrap_or_else(|| value_info(last, FLOAT, None));
    let sub = GraphProto {
        name: "subnet".into(),
        initializer: used_initializers(graph, &nodes),
        input: vec![input_vi],
        output: vec![output_vi],
        node: nodes,
        ..Default::default()
    };
    Ok(model_like(model, sub))
}
