//! Values flowing through the interpreter: float tensors on the candle
//! device (they carry gradients) and small integer tensors kept on the host
//! (shapes, axes, indices), which only ever feed shape arithmetic.

use candle_core::{DType, Device, Tensor};

/// An integer tensor on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct IntTensor {
    pub dims: Vec<usize>,
    pub data: Vec<i64>,
}

impl IntTensor {
    pub fn new(dims: Vec<usize>, data: Vec<i64>) -> IntTensor {
        IntTensor { dims, data }
    }
    pub fn vector(data: Vec<i64>) -> IntTensor {
        IntTensor {
            dims: vec![data.len()],
            data,
        }
    }
    pub fn scalar(v: i64) -> IntTensor {
        IntTensor {
            dims: vec![],
            data: vec![v],
        }
    }
    pub fn rank(&self) -> usize {
        self.dims.len()
    }
}

/// A value of the graph.
#[derive(Debug, Clone)]
pub enum Value {
    /// Float data (always f32) on the interpreter's device.
    Float(Tensor),
    /// Integer (and boolean) data on the host.
    Int(IntTensor),
}

impl Value {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Value::Float(t) => t.dims().to_vec(),
            Value::Int(i) => i.dims.clone(),
        }
    }

    /// Convert to a float tensor on `device`.
    pub fn to_float(&self, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Value::Float(t) => Ok(t.clone()),
            Value::Int(i) => {
                let data: Vec<f32> = i.data.iter().map(|&v| v as f32).collect();
                Tensor::from_vec(data, i.dims.as_slice(), device)
            }
        }
    }

    /// Convert to host integers (floats are truncated towards zero, as ONNX Cast does).
    pub fn to_int(&self) -> candle_core::Result<IntTensor> {
        match self {
            Value::Int(i) => Ok(i.clone()),
            Value::Float(t) => {
                let data = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                Ok(IntTensor::new(
                    t.dims().to_vec(),
                    data.into_iter().map(|v| v as i64).collect(),
                ))
            }
        }
    }

    /// As a candle tensor for the caller: floats as they are, integers as i64.
    pub fn into_tensor(self, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Value::Float(t) => Ok(t),
            Value::Int(i) => Tensor::from_vec(i.data, i.dims.as_slice(), device),
        }
    }

    /// From a caller's tensor: integer dtypes go to the host, floats become f32.
    pub fn from_tensor(t: &Tensor) -> candle_core::Result<Value> {
        if t.dtype().is_int() {
            let data = t.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
            Ok(Value::Int(IntTensor::new(t.dims().to_vec(), data)))
        } else if t.dtype() == DType::F32 {
            Ok(Value::Float(t.clone()))
        } else {
            Ok(Value::Float(t.to_dtype(DType::F32)?))
        }
    }
}
