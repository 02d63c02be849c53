//! Float weights in ONNX `TensorProto`s: reading them (typed or raw data),
//! making new ones, and the deterministic initialisers used when a layer has
//! to be re-created.

use tract_onnx::pb::TensorProto;

use crate::error::{Error, Result};

const FLOAT: i32 = 1;

/// The elements of a float initializer.
pub fn read_f32(t: &TensorProto) -> Result<Vec<f32>> {
    if t.data_type != FLOAT {
        return Err(Error::Graph(format!(
            "initializer `{}` is not float32 (type {})",
            t.name, t.data_type
        )));
    }
    let n: usize = t.dims.iter().map(|&d| d.max(0) as usize).product();
    let data: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if data.len() != n {
        return Err(Error::Graph(format!(
            "initializer `{}` has {} elements, its dims {:?} say {n}",
            t.name,
            data.len(),
            t.dims
        )));
    }
    Ok(data)
}

/// A float initializer with raw little-endian data.
pub fn make_f32(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// Dims of an initializer as usize.
pub fn dims(t: &TensorProto) -> Vec<usize> {
    t.dims.iter().map(|&d| d.max(0) as usize).collect()
}

pub use crate::rng::SplitMix;

/// Kaiming-uniform weights for a conv of shape [out, in/groups, kh, kw].
pub fn kaiming_uniform(shape: &[usize], rng: &mut SplitMix) -> Vec<f32> {
    let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
    let bound = (6.0 / fan_in as f32).sqrt();
    (0..shape.iter().product::<usize>())
        .map(|_| rng.uniform() * bound)
        .collect()
}
