//! Tensor facts (shape and element type) for every tensor of a model at a
//! concrete batch size, inferred by tract's analyser. Used for cut shapes,
//! block statistics and for giving extracted spans concrete input shapes.

use std::collections::HashMap;

use tract_onnx::pb::{tensor_shape_proto::dimension::Value as DimValue, type_proto, ModelProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use crate::error::{Error, Result};
use crate::graph::GraphIndex;

/// Shape and element type of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorFact {
    pub shape: Vec<usize>,
    pub dtype: DatumType,
}

impl TensorFact {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Facts of every tensor whose shape and type tract could fully determine.
#[derive(Debug, Clone, Default)]
pub struct ModelFacts {
    pub batch: usize,
    pub tensors: HashMap<String, TensorFact>,
}

impl ModelFacts {
    pub fn get(&self, name: &str) -> Result<&TensorFact> {
        self.tensors.get(name).ok_or_else(|| {
            Error::Graph(format!(
                "the shape of tensor `{name}` could not be inferred"
            ))
        })
    }
}

/// The declared shape of a graph input, with `batch` substituted for a
/// symbolic first dimension. Any other symbolic dimension is an error.
pub fn input_shape(model: &ModelProto, input: &str, batch: usize) -> Result<Vec<usize>> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Graph("model has no graph".into()))?;
    let vi = graph
        .input
        .iter()
        .find(|i| i.name == input)
        .ok_or_else(|| Error::Graph(format!("`{input}` is not a graph input")))?;
    let dims = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => {
            t.shape.as_ref().map(|s| s.dim.clone()).unwrap_or_default()
        }
        None => {
            return Err(Error::Graph(format!(
                "graph input `{input}` has no tensor type"
            )))
        }
    };
    if dims.is_empty() {
        return Err(Error::Graph(format!(
            "graph input `{input}` has no declared shape"
        )));
    }
    dims.iter()
        .enumerate()
        .map(|(axis, d)| match &d.value {
            Some(DimValue::DimValue(v)) if *v > 0 => {
                Ok(if axis == 0 { batch } else { *v as usize })
            }
            _ if axis == 0 => Ok(batch),
            other => Err(Error::Graph(format!(
                "graph input `{input}` has a non-concrete dimension {other:?} on axis {axis}"
            ))),
        })
        .collect()
}

/// Element type of a graph input (FLOAT if undeclared).
pub fn input_dtype(model: &ModelProto, input: &str) -> DatumType {
    let elem = model
        .graph
        .as_ref()
        .and_then(|g| g.input.iter().find(|i| i.name == input))
        .and_then(|i| i.r#type.as_ref())
        .and_then(|t| {
            t.value
                .as_ref()
                .map(|type_proto::Value::TensorType(t)| t.elem_type)
        })
        .unwrap_or(1);
    onnx_elem_to_datum(elem).unwrap_or(DatumType::F32)
}

/// ONNX element type code -> tract datum type, for the types CNNs use.
pub fn onnx_elem_to_datum(elem: i32) -> Option<DatumType> {
    Some(match elem {
        1 => DatumType::F32,
        2 => DatumType::U8,
        3 => DatumType::I8,
        6 => DatumType::I32,
        7 => DatumType::I64,
        9 => DatumType::Bool,
        10 => DatumType::F16,
        11 => DatumType::F64,
        _ => return None,
    })
}

/// Run tract's analyser over the whole model with the data input fixed to
/// `batch`, and collect every fully determined tensor fact.
pub fn infer_facts(model: &ModelProto, batch: usize) -> Result<ModelFacts> {
    let index = GraphIndex::of_model(model)?;
    let input = index.single_input()?.to_string();
    let shape = input_shape(model, &input, batch)?;
    let dtype = input_dtype(model, &input);
    let onnx = tract_onnx::onnx();
    let parsed = crate::guard("parsing the model", || onnx.parse(model, None))?;
    let mut inference = parsed.model;
    let input_outlet = parsed
        .outlets_by_name
        .get(&input)
        .copied()
        .ok_or_else(|| Error::Graph(format!("tract did not find the input `{input}`")))?;
    inference
        .set_outlet_fact(input_outlet, InferenceFact::dt_shape(dtype, shape))
        .map_err(|e| Error::tract("setting the input shape", e))?;
    crate::guard("analysing shapes", || inference.analyse(false))?;
    let mut tensors = HashMap::new();
    for (name, outlet) in parsed.outlets_by_name.iter() {
        let Ok(fact) = inference.outlet_fact(*outlet) else {
            continue;
        };
        let Some(dtype) = fact.datum_type.concretize() else {
            continue;
        };
        let Some(dims) = fact.shape.concretize() else {
            continue;
        };
        let dims: Option<Vec<usize>> = dims.iter().map(|d| d.to_usize().ok()).collect();
        if let Some(shape) = dims {
            tensors.insert(name.clone(), TensorFact { shape, dtype });
        }
    }
    // Initializers are always known from their own dims.
    if let Some(graph) = model.graph.as_ref() {
        for init in &graph.initializer {
            if let Some(dt) = onnx_elem_to_datum(init.data_type) {
                tensors
                    .entry(init.name.clone())
                    .or_insert_with(|| TensorFact {
                        shape: init.dims.iter().map(|&d| d.max(0) as usize).collect(),
                        dtype: dt,
                    });
            }
        }
    }
    Ok(ModelFacts { batch, tensors })
}
