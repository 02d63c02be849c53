//! ONNX `TensorProto` <-> interpreter values: initializers and constant
//! attributes in, trained weights out.

use adaptivenet_onnx::tract_onnx::pb::tensor_proto::DataType;
use adaptivenet_onnx::tract_onnx::pb::TensorProto;
use candle_core::{Device, Tensor};

use super::value::{IntTensor, Value};
use super::{InterpError, Result};

fn bad(name: &str, msg: impl Into<String>) -> InterpError {
    InterpError::Tensor {
        name: name.to_string(),
        msg: msg.into(),
    }
}

/// Dimensions of a proto, checked non-negative.
pub fn proto_dims(t: &TensorProto) -> Result<Vec<usize>> {
    t.dims
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| bad(&t.name, format!("negative dimension {d} in {:?}", t.dims)))
        })
        .collect()
}

/// Decode fixed-width little-endian elements of `raw`.
fn raw_elems<const N: usize, T>(
    name: &str,
    raw: &[u8],
    count: usize,
    f: impl Fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    if raw.len() != count * N {
        return Err(bad(
            name,
            format!(
                "raw_data has {} bytes, {} elements of {} bytes expected",
                raw.len(),
                count,
                N
            ),
        ));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect())
}

fn check_len<T>(name: &str, v: Vec<T>, count: usize, field: &str) -> Result<Vec<T>> {
    if v.len() != count {
        return Err(bad(
            name,
            format!(
                "{field} has {} elements, the dims {count} elements",
                v.len()
            ),
        ));
    }
    Ok(v)
}

/// Decode a tensor proto into a value on `device`.
pub fn tensor_from_proto(t: &TensorProto, device: &Device) -> Result<Value> {
    let name = t.name.as_str();
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(bad(
            name,
            "external data is not supported; load the model with its weights inlined",
        ));
    }
    let dims = proto_dims(t)?;
    let count: usize = dims.iter().product();
    let dt = DataType::try_from(t.data_type)
        .map_err(|_| bad(name, format!("unknown data type {}", t.data_type)))?;
    let raw = !t.raw_data.is_empty();
    let float = |data: Vec<f32>| -> Result<Value> {
        let tensor = Tensor::from_vec(data, dims.as_slice(), device)
            .map_err(|e| bad(name, format!("cannot create a tensor: {e}")))?;
        Ok(Value::Float(tensor))
    };
    let int =
        |data: Vec<i64>| -> Result<Value> { Ok(Value::Int(IntTensor::new(dims.clone(), data))) };
    match dt {
        DataType::Float => {
            if raw {
                float(raw_elems::<4, f32>(
                    name,
                    &t.raw_data,
                    count,
                    f32::from_le_bytes,
                )?)
            } else {
                float(check_len(name, t.float_data.clone(), count, "float_data")?)
            }
        }
        DataType::Double => {
            let v = if raw {
                raw_elems::<8, f64>(name, &t.raw_data, count, f64::from_le_bytes)?
            } else {
                check_len(name, t.double_data.clone(), count, "double_data")?
            };
            float(v.into_iter().map(|x| x as f32).collect())
        }
        DataType::Int64 => {
            if raw {
                int(raw_elems::<8, i64>(
                    name,
                    &t.raw_data,
                    count,
                    i64::from_le_bytes,
                )?)
            } else {
                int(check_len(name, t.int64_data.clone(), count, "int64_data")?)
            }
        }
        DataType::Int32 => {
            let v = if raw {
                raw_elems::<4, i32>(name, &t.raw_data, count, i32::from_le_bytes)?
            } else {
                check_len(name, t.int32_data.clone(), count, "int32_data")?
            };
            int(v.into_iter().map(i64::from).collect())
        }
        DataType::Int8 | DataType::Uint8 | DataType::Bool | DataType::Int16 | DataType::Uint16 => {
            let v: Vec<i64> = if raw {
                match dt {
                    DataType::Int8 => raw_elems::<1, i64>(name, &t.raw_data, count, |b| {
                        i8::from_le_bytes(b) as i64
                    })?,
                    DataType::Int16 => raw_elems::<2, i64>(name, &t.raw_data, count, |b| {
                        i16::from_le_bytes(b) as i64
                    })?,
                    DataType::Uint16 => raw_elems::<2, i64>(name, &t.raw_data, count, |b| {
                        u16::from_le_bytes(b) as i64
                    })?,
                    _ => raw_elems::<1, i64>(name, &t.raw_data, count, |b| b[0] as i64)?,
                }
            } else {
                check_len(
                    name,
                    t.int32_data.iter().map(|&x| x as i64).collect(),
                    count,
                    "int32_data",
                )?
            };
            int(v)
        }
        DataType::Uint32 | DataType::Uint64 => {
            let v: Vec<i64> = if raw {
                if dt == DataType::Uint32 {
                    raw_elems::<4, i64>(name, &t.raw_data, count, |b| u32::from_le_bytes(b) as i64)?
                } else {
                    raw_elems::<8, i64>(name, &t.raw_data, count, |b| u64::from_le_bytes(b) as i64)?
                }
            } else {
                check_len(
                    name,
                    t.uint64_data.iter().map(|&x| x as i64).collect(),
                    count,
                    "uint64_data",
                )?
            };
            int(v)
        }
        other => Err(bad(
            name,
            format!("data type {other:?} is not supported (float, double and integer types are)"),
        )),
    }
}

/// Encode a float tensor as an ONNX float initializer (raw little-endian data).
pub fn tensor_to_proto(name: &str, t: &Tensor) -> Result<TensorProto> {
    let data = t
        .flatten_all()
        .and_then(|f| f.to_dtype(candle_core::DType::F32))
        .and_then(|f| f.to_vec1::<f32>())
        .map_err(|e| bad(name, format!("cannot read the tensor back: {e}")))?;
    let mut raw = Vec::with_capacity(data.len() * 4);
    for v in data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    Ok(TensorProto {
        name: name.to_string(),
        dims: t.dims().iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: raw,
        ..Default::default()
    })
}
