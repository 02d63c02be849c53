//! ONNX operators on candle tensors. Every float computation goes through
//! candle ops that have a backward pass, so gradients flow through any graph
//! made of these nodes. Integer values (shapes, axes) are computed on the host.

use adaptivenet_onnx::tract_onnx::pb::{AttributeProto, NodeProto};
use candle_core::{DType, Device, Tensor, D};

use super::activation::Clamp;
use super::geom::ConvGeom;
use super::params::tensor_from_proto;
use super::value::{IntTensor, Value};

/// Whether `op_type` (default domain) is supported.
pub fn is_supported(op_type: &str) -> bool {
    lookup(op_type).is_some()
}

/// The ops this interpreter evaluates, by name (also what `is_supported`
/// answers from, so the two cannot disagree).
pub fn supported() -> impl Iterator<Item = &'static str> {
    OPS.iter().map(|(name, _)| *name)
}

/// Failure inside one op; the caller adds the node's name and op.
#[derive(Debug)]
pub enum OpError {
    Unsupported,
    Msg(String),
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for OpError {
    fn from(e: candle_core::Error) -> Self {
        OpError::Candle(e)
    }
}

type R<T> = std::result::Result<T, OpError>;

macro_rules! fail {
    ($($t:tt)*) => { return Err(OpError::Msg(format!($($t)*))) };
}

/// One node's evaluation context.
pub struct Ctx<'a> {
    pub node: &'a NodeProto,
    pub inputs: Vec<Option<Value>>,
    pub device: &'a Device,
    pub opset: i64,
    /// Which outputs anyone reads (optional outputs that nobody reads need
    /// not be produced).
    pub outputs_needed: Vec<bool>,
    /// A Relu/Clip fused into this node (Conv or Add): its output is the
    /// activation's.
    pub activation: Option<Clamp>,
    /// A residual Add fused into this Conv: added to the conv's output
    /// (before `activation`), the node's output is the Add's.
    pub residual: Option<Value>,
    /// A depthwise Conv (and its Relu/Clip) fused after this 1x1 Conv
    /// (and its `activation`): the node's output is the depthwise's.
    pub depthwise: Option<DepthwiseStage<'a>>,
}

/// The depthwise Conv node of an expansion + depthwise fusion, with its
/// weight and bias and the Relu/Clip fused after it.
pub struct DepthwiseStage<'a> {
    pub node: &'a NodeProto,
    pub weight: Value,
    pub bias: Option<Value>,
    pub activation: Option<Clamp>,
}

impl<'a> Ctx<'a> {
    fn attr(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }
    fn attr_i(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map(|a| a.i).unwrap_or(default)
    }
    fn attr_f(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map(|a| a.f).unwrap_or(default)
    }
    fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }
    fn attr_s(&self, name: &str) -> Option<String> {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
    fn opt(&self, i: usize) -> Option<&Value> {
        self.inputs.get(i).and_then(|v| v.as_ref())
    }
    fn input(&self, i: usize) -> R<&Value> {
        match self.opt(i) {
            Some(v) => Ok(v),
            None => fail!("input {i} is missing"),
        }
    }
    fn float(&self, i: usize) -> R<Tensor> {
        Ok(self.input(i)?.to_float(self.device)?)
    }
    fn int(&self, i: usize) -> R<IntTensor> {
        Ok(self.input(i)?.to_int()?)
    }
    fn output_needed(&self, i: usize) -> bool {
        self.outputs_needed.get(i).copied().unwrap_or(false)
    }
    fn n_inputs(&self) -> usize {
        self.inputs.len()
    }
    /// Axes from input `i` (newer opsets) or attribute `axes` (older ones).
    fn axes(&self, i: usize) -> R<Option<Vec<i64>>> {
        if let Some(v) = self.opt(i) {
            return Ok(Some(v.to_int()?.data));
        }
        Ok(self.attr_ints("axes"))
    }
}

fn one(v: Value) -> R<Vec<Value>> {
    Ok(vec![v])
}

fn f(t: Tensor) -> R<Vec<Value>> {
    Ok(vec![Value::Float(t)])
}

/// Normalise a possibly negative axis for rank `rank`.
fn axis(a: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if v < 0 || v >= r.max(1) {
        fail!("axis {a} is out of range for rank {rank}");
    }
    Ok(v as usize)
}

type OpFn = fn(&Ctx) -> R<Vec<Value>>;

/// Every op: its ONNX name and its evaluation.
const OPS: &[(&str, OpFn)] = &[
    ("Identity", |ctx| one(ctx.input(0)?.clone())),
    ("Dropout", dropout),
    ("Constant", constant),
    ("ConstantOfShape", constant_of_shape),
    ("Shape", shape),
    ("Size", |ctx| {
        one(Value::Int(IntTensor::scalar(
            ctx.input(0)?.dims().iter().product::<usize>() as i64,
        )))
    }),
    ("Cast", cast),
    ("Gather", gather),
    ("Unsqueeze", unsqueeze),
    ("Squeeze", squeeze),
    ("Concat", concat),
    ("Slice", slice),
    ("Reshape", reshape),
    ("Flatten", flatten),
    ("Transpose", transpose),
    ("Add", binary),
    ("Sub", binary),
    ("Mul", binary),
    ("Div", binary),
    ("Sum", sum),
    ("Relu", clamp_op),
    ("LeakyRelu", leaky_relu),
    ("PRelu", prelu),
    ("Sigmoid", |ctx| f(candle_nn::ops::sigmoid(&ctx.float(0)?)?)),
    ("HardSigmoid", hard_sigmoid),
    ("HardSwish", |ctx| {
        let x = ctx.float(0)?;
        f((&x * x.affine(1.0 / 6.0, 0.5)?.clamp(0f32, 1f32)?)?)
    }),
    ("Tanh", |ctx| f(ctx.float(0)?.tanh()?)),
    ("Neg", |ctx| f(ctx.float(0)?.neg()?)),
    ("Exp", |ctx| f(ctx.float(0)?.exp()?)),
    ("Sqrt", |ctx| f(ctx.float(0)?.sqrt()?)),
    ("Abs", |ctx| f(ctx.float(0)?.abs()?)),
    ("Clip", clamp_op),
    ("Softmax", softmax),
    ("LRN", lrn),
    ("Conv", conv),
    ("BatchNormalization", batch_norm),
    ("MaxPool", |ctx| pool(ctx, PoolKind::Max)),
    ("AveragePool", |ctx| pool(ctx, PoolKind::Avg)),
    ("GlobalAveragePool", |ctx| {
        let x = ctx.float(0)?;
        let dims: Vec<usize> = (2..x.rank()).collect();
        f(x.mean_keepdim(dims)?)
    }),
    ("GlobalMaxPool", |ctx| {
        let x = ctx.float(0)?;
        let mut y = x.clone();
        for d in 2..x.rank() {
            y = y.max_keepdim(d)?;
        }
        f(y)
    }),
    ("ReduceMean", reduce_mean),
    ("Gemm", gemm),
    ("MatMul", matmul),
    ("Pad", pad),
];

fn lookup(op_type: &str) -> Option<OpFn> {
    OPS.iter()
        .find(|(name, _)| *name == op_type)
        .map(|(_, f)| *f)
}

/// Evaluate one node.
pub fn eval(ctx: &Ctx) -> R<Vec<Value>> {
    let node = ctx.node;
    if !node.domain.is_empty() && node.domain != "ai.onnx" {
        return Err(OpError::Unsupported);
    }
    match lookup(&node.op_type) {
        Some(op) => op(ctx),
        None => Err(OpError::Unsupported),
    }
}

fn dropout(ctx: &Ctx) -> R<Vec<Value>> {
    let x = ctx.input(0)?.clone();
    if ctx.output_needed(1) {
        // Inference: the mask keeps everything.
        let dims = x.dims();
        let n = dims.iter().product();
        return Ok(vec![x, Value::Int(IntTensor::new(dims, vec![1; n]))]);
    }
    one(x)
}

fn sum(ctx: &Ctx) -> R<Vec<Value>> {
    let mut acc = ctx.float(0)?;
    for i in 1..ctx.n_inputs() {
        acc = acc.broadcast_add(&ctx.float(i)?)?;
    }
    f(acc)
}

fn leaky_relu(ctx: &Ctx) -> R<Vec<Value>> {
    let alpha = ctx.attr_f("alpha", 0.01) as f64;
    let x = ctx.float(0)?;
    f((x.relu()? + x.neg()?.relu()?.affine(-alpha, 0.0)?)?)
}

/// `max(0, x) + slope * min(0, x)`, the slope broadcast to `x` (per channel
/// as `[C, 1, 1]`, or shared as `[1]`); the slope is a weight, so it trains.
fn prelu(ctx: &Ctx) -> R<Vec<Value>> {
    let x = ctx.float(0)?;
    let slope = ctx.float(1)?;
    let negative = x.neg()?.relu()?.neg()?;
    f((x.relu()? + negative.broadcast_mul(&slope)?)?)
}

fn hard_sigmoid(ctx: &Ctx) -> R<Vec<Value>> {
    let (a, b) = (
        ctx.attr_f("alpha", 0.2) as f64,
        ctx.attr_f("beta", 0.5) as f64,
    );
    f(ctx.float(0)?.affine(a, b)?.clamp(0f32, 1f32)?)
}

// ---------------------------------------------------------------- constants and shapes

fn constant(ctx: &Ctx) -> R<Vec<Value>> {
    if let Some(a) = ctx.attr("value") {
        let t =
            a.t.as_ref()
                .ok_or_else(|| OpError::Msg("attribute `value` holds no tensor".into()))?;
        return one(tensor_from_proto(t, ctx.device).map_err(|e| OpError::Msg(e.to_string()))?);
    }
    if let Some(a) = ctx.attr("value_float") {
        return f(Tensor::new(a.f, ctx.device)?);
    }
    if let Some(a) = ctx.attr("value_floats") {
        return f(Tensor::new(a.floats.as_slice(), ctx.device)?);
    }
    if let Some(a) = ctx.attr("value_int") {
        return one(Value::Int(IntTensor::scalar(a.i)));
    }
    if let Some(a) = ctx.attr("value_ints") {
        return one(Value::Int(IntTensor::vector(a.ints.clone())));
    }
    fail!("Constant without a supported value attribute (value, value_float(s), value_int(s))")
}

fn constant_of_shape(ctx: &Ctx) -> R<Vec<Value>> {
    let shape = ctx.int(0)?;
    let dims: Vec<usize> = shape.data.iter().map(|&d| d.max(0) as usize).collect();
    let value = match ctx.attr("value").and_then(|a| a.t.as_ref()) {
        Some(t) => tensor_from_proto(t, ctx.device).map_err(|e| OpError::Msg(e.to_string()))?,
        None => Value::Float(Tensor::new(&[0f32], ctx.device)?),
    };
    match value {
        Value::Float(t) => {
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            let v = v.first().copied().unwrap_or(0.0);
            f(Tensor::full(v, dims, ctx.device)?)
        }
        Value::Int(i) => {
            let v = i.data.first().copied().unwrap_or(0);
            let n = dims.iter().product();
            one(Value::Int(IntTensor::new(dims, vec![v; n])))
        }
    }
}

fn shape(ctx: &Ctx) -> R<Vec<Value>> {
    let dims: Vec<i64> = ctx.input(0)?.dims().iter().map(|&d| d as i64).collect();
    let r = dims.len() as i64;
    let clampi = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
    let start = clampi(ctx.attr_i("start", 0));
    let end = clampi(ctx.attr_i("end", r));
    let part = if start < end {
        dims[start as usize..end as usize].to_vec()
    } else {
        vec![]
    };
    one(Value::Int(IntTensor::vector(part)))
}

fn cast(ctx: &Ctx) -> R<Vec<Value>> {
    let to = ctx.attr_i("to", 1);
    let v = ctx.input(0)?;
    match to {
        1 | 10 | 11 | 16 => f(v.to_float(ctx.device)?),
        2..=7 | 9 | 12 | 13 => one(Value::Int(v.to_int()?)),
        other => fail!("Cast to data type {other} is not supported"),
    }
}

/// Broadcast shape of two dims lists (numpy rules).
fn broadcast_dims(a: &[usize], b: &[usize]) -> R<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            fail!("shapes {a:?} and {b:?} do not broadcast");
        };
    }
    Ok(out)
}

fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Elementwise integer op with broadcasting (shape arithmetic).
fn int_binary(a: &IntTensor, b: &IntTensor, op: &str) -> R<IntTensor> {
    let dims = broadcast_dims(&a.dims, &b.dims)?;
    let n: usize = dims.iter().product();
    let os = strides(&dims);
    let index = |t: &IntTensor, flat: usize| -> usize {
        let ts = strides(&t.dims);
        let off = dims.len() - t.dims.len();
        let mut ix = 0;
        for (k, &d) in t.dims.iter().enumerate() {
            let coord = (flat / os[k + off]) % dims[k + off];
            if d != 1 {
                ix += coord * ts[k];
            }
        }
        ix
    };
    let mut data = Vec::with_capacity(n);
    for i in 0..n {
        let (x, y) = (a.data[index(a, i)], b.data[index(b, i)]);
        data.push(match op {
            "Add" => x + y,
            "Sub" => x - y,
            "Mul" => x * y,
            "Div" => {
                if y == 0 {
                    fail!("integer division by zero");
                }
                x / y
            }
            _ => return Err(OpError::Unsupported),
        });
    }
    Ok(IntTensor::new(dims, data))
}

fn binary(ctx: &Ctx) -> R<Vec<Value>> {
    let op = ctx.node.op_type.as_str();
    if let (Value::Int(a), Value::Int(b)) = (ctx.input(0)?, ctx.input(1)?) {
        let v = Value::Int(int_binary(a, b, op)?);
        return match ctx.activation {
            // as the standalone Relu/Clip would: on the values as floats
            Some(act) => f(apply_clamp(&v.to_float(ctx.device)?, act)?),
            None => one(v),
        };
    }
    let (a, b) = (ctx.float(0)?, ctx.float(1)?);
    if let (Some(act), "Add") = (ctx.activation, op) {
        // fused by the interpreter: Add then Relu/Clip (a residual join)
        if a.dims() == b.dims() && a.device().is_cpu() {
            return f(super::activation::add_clamp(&a, &b, act)?);
        }
        return f(apply_clamp(&a.broadcast_add(&b)?, act)?);
    }
    let t = match op {
        "Add" => a.broadcast_add(&b)?,
        "Sub" => a.broadcast_sub(&b)?,
        "Mul" => a.broadcast_mul(&b)?,
        "Div" => a.broadcast_div(&b)?,
        _ => return Err(OpError::Unsupported),
    };
    f(t)
}

fn gather(ctx: &Ctx) -> R<Vec<Value>> {
    let data = ctx.input(0)?;
    let idx = ctx.int(1)?;
    let dims = data.dims();
    let ax = axis(ctx.attr_i("axis", 0), dims.len())?;
    let n = dims[ax] as i64;
    let mut ids = Vec::with_capacity(idx.data.len());
    for &i in &idx.data {
        let j = if i < 0 { i + n } else { i };
        if j < 0 || j >= n {
            fail!("index {i} is out of range for axis {ax} of size {n}");
        }
        ids.push(j as usize);
    }
    let mut out_dims = dims[..ax].to_vec();
    out_dims.extend_from_slice(&idx.dims);
    out_dims.extend_from_slice(&dims[ax + 1..]);
    match data {
        Value::Int(d) => {
            let outer: usize = dims[..ax].iter().product();
            let inner: usize = dims[ax + 1..].iter().product();
            let mut out = Vec::with_capacity(outer * ids.len() * inner);
            for o in 0..outer {
                for &j in &ids {
                    let base = (o * dims[ax] + j) * inner;
                    out.extend_from_slice(&d.data[base..base + inner]);
                }
            }
            one(Value::Int(IntTensor::new(out_dims, out)))
        }
        Value::Float(t) => {
            let ids_t = Tensor::from_vec(
                ids.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                ids.len(),
                ctx.device,
            )?;
            let g = t.index_select(&ids_t, ax)?;
            f(g.reshape(out_dims)?)
        }
    }
}

fn reshape_value(v: &Value, dims: Vec<usize>) -> R<Value> {
    Ok(match v {
        Value::Float(t) => Value::Float(t.reshape(dims)?),
        Value::Int(i) => {
            if dims.iter().product::<usize>() != i.data.len() {
                fail!("cannot reshape {:?} to {dims:?}", i.dims);
            }
            Value::Int(IntTensor::new(dims, i.data.clone()))
        }
    })
}

fn unsqueeze(ctx: &Ctx) -> R<Vec<Value>> {
    let v = ctx.input(0)?;
    let axes = ctx
        .axes(1)?
        .ok_or_else(|| OpError::Msg("Unsqueeze without axes".into()))?;
    let mut dims = v.dims();
    let out_rank = dims.len() + axes.len();
    let mut axes: Vec<usize> = axes.iter().map(|&a| axis(a, out_rank)).collect::<R<_>>()?;
    axes.sort_unstable();
    for a in axes {
        if a > dims.len() {
            fail!("Unsqueeze axis {a} out of range");
        }
        dims.insert(a, 1);
    }
    one(reshape_value(v, dims)?)
}

fn squeeze(ctx: &Ctx) -> R<Vec<Value>> {
    let v = ctx.input(0)?;
    let dims = v.dims();
    let axes: Vec<usize> = match ctx.axes(1)? {
        Some(a) => a.iter().map(|&a| axis(a, dims.len())).collect::<R<_>>()?,
        None => (0..dims.len()).filter(|&i| dims[i] == 1).collect(),
    };
    for &a in &axes {
        if dims[a] != 1 {
            fail!("Squeeze axis {a} has size {}", dims[a]);
        }
    }
    let out: Vec<usize> = dims
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect();
    one(reshape_value(v, out)?)
}

fn concat(ctx: &Ctx) -> R<Vec<Value>> {
    let vals: Vec<&Value> = ctx.inputs.iter().flatten().collect();
    if vals.is_empty() {
        fail!("Concat without inputs");
    }
    let rank = vals[0].dims().len();
    let ax = axis(ctx.attr_i("axis", 0), rank)?;
    if vals.iter().all(|v| matches!(v, Value::Int(_))) {
        let ints: Vec<IntTensor> = vals
            .iter()
            .map(|v| v.to_int())
            .collect::<candle_core::Result<_>>()?;
        let mut dims = ints[0].dims.clone();
        dims[ax] = ints.iter().map(|t| t.dims[ax]).sum();
        let outer: usize = dims[..ax].iter().product();
        let mut data = Vec::new();
        for o in 0..outer {
            for t in &ints {
                let chunk: usize = t.dims[ax..].iter().product();
                data.extend_from_slice(&t.data[o * chunk..(o + 1) * chunk]);
            }
        }
        return one(Value::Int(IntTensor::new(dims, data)));
    }
    let ts: Vec<Tensor> = vals
        .iter()
        .map(|v| v.to_float(ctx.device))
        .collect::<candle_core::Result<_>>()?;
    f(Tensor::cat(&ts, ax)?)
}

/// Elements `off, off+step, ...` (`count` of them) along `dim`, step >= 1.
fn strided_narrow(x: &Tensor, dim: usize, off: usize, count: usize, step: usize) -> R<Tensor> {
    if step == 1 {
        return Ok(x.narrow(dim, off, count)?);
    }
    let need = count * step;
    let avail = x.dim(dim)? - off;
    let t = if avail < need {
        x.narrow(dim, off, avail)?
            .pad_with_zeros(dim, 0, need - avail)?
    } else {
        x.narrow(dim, off, need)?
    };
    let mut shape = t.dims().to_vec();
    shape[dim] = count;
    shape.insert(dim + 1, step);
    Ok(t.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)?)
}

fn slice(ctx: &Ctx) -> R<Vec<Value>> {
    let v = ctx.input(0)?;
    let dims = v.dims();
    let (starts, ends, axes, steps) = if ctx.n_inputs() > 1 {
        (
            ctx.int(1)?.data,
            ctx.int(2)?.data,
            ctx.opt(3).map(|v| v.to_int()).transpose()?.map(|t| t.data),
            ctx.opt(4).map(|v| v.to_int()).transpose()?.map(|t| t.data),
        )
    } else {
        (
            ctx.attr_ints("starts").unwrap_or_default(),
            ctx.attr_ints("ends").unwrap_or_default(),
            ctx.attr_ints("axes"),
            None,
        )
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        fail!("Slice: starts, ends, axes and steps differ in length");
    }
    // Per axis: (start, count, step).
    let mut ranges: Vec<(usize, usize, usize)> = dims.iter().map(|&d| (0, d, 1)).collect();
    for k in 0..starts.len() {
        let a = axis(axes[k], dims.len())?;
        let n = dims[a] as i64;
        let step = steps[k];
        if step <= 0 {
            fail!("Slice with step {step} is not supported (positive steps are)");
        }
        let norm = |v: i64| -> i64 {
            let v = if v < 0 { v + n } else { v };
            v.clamp(0, n)
        };
        let (s, e) = (norm(starts[k]), norm(ends[k]));
        let count = if e > s {
            ((e - s) + step - 1) / step
        } else {
            0
        };
        ranges[a] = (s as usize, count as usize, step as usize);
    }
    match v {
        Value::Float(t) => {
            let mut t = t.clone();
            for (d, &(s, c, st)) in ranges.iter().enumerate() {
                if (s, c, st) != (0, dims[d], 1) {
                    t = strided_narrow(&t, d, s, c, st)?;
                }
            }
            f(t)
        }
        Value::Int(i) => {
            let out_dims: Vec<usize> = ranges.iter().map(|r| r.1).collect();
            let n: usize = out_dims.iter().product();
            let (os, is) = (strides(&out_dims), strides(&i.dims));
            let mut data = Vec::with_capacity(n);
            for flat in 0..n {
                let mut ix = 0;
                for d in 0..out_dims.len() {
                    let c = (flat / os[d]) % out_dims[d];
                    ix += (ranges[d].0 + c * ranges[d].2) * is[d];
                }
                data.push(i.data[ix]);
            }
            one(Value::Int(IntTensor::new(out_dims, data)))
        }
    }
}

fn reshape(ctx: &Ctx) -> R<Vec<Value>> {
    let v = ctx.input(0)?;
    let shape = ctx.int(1)?.data;
    let dims = v.dims();
    let allowzero = ctx.attr_i("allowzero", 0) != 0;
    let total: usize = dims.iter().product();
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            0 if !allowzero => match dims.get(i) {
                Some(&d) => out.push(d),
                None => fail!(
                    "Reshape: 0 at position {i} but the input has rank {}",
                    dims.len()
                ),
            },
            -1 => {
                if infer.replace(i).is_some() {
                    fail!("Reshape: more than one -1 in {shape:?}");
                }
                out.push(1);
            }
            s if s < 0 => fail!("Reshape: invalid dimension {s} in {shape:?}"),
            s => out.push(s as usize),
        }
    }
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            fail!("Reshape: cannot infer -1 in {shape:?} for input shape {dims:?}");
        }
        out[i] = total / known;
    }
    if out.iter().product::<usize>() != total {
        fail!("Reshape: shape {shape:?} does not fit input shape {dims:?}");
    }
    one(reshape_value(v, out)?)
}

fn flatten(ctx: &Ctx) -> R<Vec<Value>> {
    let v = ctx.input(0)?;
    let dims = v.dims();
    let a = ctx.attr_i("axis", 1);
    let a = if a < 0 { a + dims.len() as i64 } else { a };
    if a < 0 || a as usize > dims.len() {
        fail!("Flatten axis {a} out of range for rank {}", dims.len());
    }
    let a = a as usize;
    let outer: usize = dims[..a].iter().product();
    let inner: usize = dims[a..].iter().product();
    one(reshape_value(v, vec![outer, inner])?)
}

fn transpose(ctx: &Ctx) -> R<Vec<Value>> {
    let x = ctx.float(0)?;
    let rank = x.rank();
    let perm: Vec<usize> = match ctx.attr_ints("perm") {
        Some(p) => p.iter().map(|&a| axis(a, rank)).collect::<R<_>>()?,
        None => (0..rank).rev().collect(),
    };
    f(x.permute(perm)?.contiguous()?)
}

// ---------------------------------------------------------------- activations

/// The bounds of a Relu or Clip node (None for any other op). Clip's
/// bounds come from attributes (opset < 11) or from its inputs 1 and 2,
/// which must be available scalars; input 0 is not read.
pub fn clamp_bounds(ctx: &Ctx) -> R<Option<Clamp>> {
    match ctx.node.op_type.as_str() {
        "Relu" => Ok(Some(Clamp {
            lo: Some(0.0),
            hi: None,
        })),
        "Clip" => {
            let scalar = |i: usize| -> R<Option<f32>> {
                match ctx.opt(i) {
                    Some(v) => {
                        let t = v.to_float(ctx.device)?.flatten_all()?.to_vec1::<f32>()?;
                        match t.as_slice() {
                            [s] => Ok(Some(*s)),
                            _ => fail!("Clip bound (input {i}) must be a scalar"),
                        }
                    }
                    None => Ok(None),
                }
            };
            let (lo, hi) = if ctx.opset < 11
                || (ctx.n_inputs() == 1 && (ctx.attr("min").is_some() || ctx.attr("max").is_some()))
            {
                (ctx.attr("min").map(|a| a.f), ctx.attr("max").map(|a| a.f))
            } else {
                (scalar(1)?, scalar(2)?)
            };
            Ok(Some(Clamp { lo, hi }))
        }
        _ => Ok(None),
    }
}

/// `x` clamped: one fused op on the CPU, candle's relu/maximum/minimum
/// elsewhere.
fn apply_clamp(x: &Tensor, act: Clamp) -> R<Tensor> {
    if x.device().is_cpu() {
        return Ok(super::activation::clamp(x, act)?);
    }
    let mut y = x.clone();
    if let Some(lo) = act.lo {
        y = if lo == 0.0 { y.relu()? } else { y.maximum(lo)? };
    }
    if let Some(hi) = act.hi {
        y = y.minimum(hi)?;
    }
    Ok(y)
}

/// Relu and Clip.
fn clamp_op(ctx: &Ctx) -> R<Vec<Value>> {
    let x = ctx.float(0)?;
    match clamp_bounds(ctx)? {
        Some(act) => f(apply_clamp(&x, act)?),
        None => Err(OpError::Unsupported),
    }
}

fn softmax(ctx: &Ctx) -> R<Vec<Value>> {
    let x = ctx.float(0)?;
    let rank = x.rank();
    let default = if ctx.opset >= 13 { -1 } else { 1 };
    let a = axis(ctx.attr_i("axis", default), rank)?;
    if ctx.opset >= 13 || a == rank - 1 {
        return f(candle_nn::ops::softmax(&x, a)?);
    }
    // Before opset 13: softmax over the flattened trailing dimensions.
    let dims = x.dims().to_vec();
    let outer: usize = dims[..a].iter().product();
    let y = candle_nn::ops::softmax_last_dim(&x.reshape((outer, ()))?.contiguous()?)?;
    f(y.reshape(dims)?)
}

/// Local response normalisation across channels (ONNX `LRN`):
/// `x / (bias + alpha / size * sum of x^2 over a window of size channels)^beta`,
/// the window covering `floor((size-1)/2)` channels before and
/// `ceil((size-1)/2)` after (fewer at the edges).
fn lrn(ctx: &Ctx) -> R<Vec<Value>> {
    let x = ctx.float(0)?;
    let size = ctx.attr_i("size", 0);
    if size < 1 || x.rank() < 3 {
        fail!(
            "LRN needs `size` >= 1 and an input with channels (size {size}, rank {})",
            x.rank()
        );
    }
    let size = size as usize;
    let (alpha, beta, bias) = (
        ctx.attr_f("alpha", 1e-4),
        ctx.attr_f("beta", 0.75),
        ctx.attr_f("bias", 1.0),
    );
    let c = x.dim(1)?;
    let sq = x.sqr()?.pad_with_zeros(1, (size - 1) / 2, size / 2)?;
    let mut sum = sq.narrow(1, 0, c)?;
    for k in 1..size {
        sum = (sum + sq.narrow(1, k, c)?)?;
    }
    let denom = sum
        .affine((alpha / size as f32) as f64, bias as f64)?
        .powf(beta as f64)?;
    f((x / denom)?)
}

fn reduce_mean(ctx: &Ctx) -> R<Vec<Value>> {
    let x = ctx.float(0)?;
    let rank = x.rank();
    let axes: Vec<usize> = match ctx.axes(1)? {
        Some(a) if !a.is_empty() => a.iter().map(|&a| axis(a, rank)).collect::<R<_>>()?,
        _ => (0..rank).collect(),
    };
    let mut y = x.mean_keepdim(axes.clone())?;
    if ctx.attr_i("keepdims", 1) == 0 {
        let dims: Vec<usize> = y
            .dims()
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect();
        y = y.reshape(dims)?;
    }
    f(y)
}

// ---------------------------------------------------------------- linear algebra

fn gemm(ctx: &Ctx) -> R<Vec<Value>> {
    let (mut a, mut b) = (ctx.float(0)?, ctx.float(1)?);
    if a.rank() != 2 || b.rank() != 2 {
        fail!(
            "Gemm expects 2-D inputs, got {:?} and {:?}",
            a.dims(),
            b.dims()
        );
    }
    if ctx.attr_i("transA", 0) != 0 {
        a = a.t()?;
    }
    if ctx.attr_i("transB", 0) != 0 {
        b = b.t()?;
    }
    let alpha = ctx.attr_f("alpha", 1.0) as f64;
    let beta = ctx.attr_f("beta", 1.0) as f64;
    let mut y = a.matmul(&b)?;
    if alpha != 1.0 {
        y = y.affine(alpha, 0.0)?;
    }
    if let Some(c) = ctx.opt(2) {
        let mut c = c.to_float(ctx.device)?;
        if beta != 1.0 {
            c = c.affine(beta, 0.0)?;
        }
        y = y.broadcast_add(&c)?;
    }
    f(y)
}

fn matmul(ctx: &Ctx) -> R<Vec<Value>> {
    let (a, b) = (ctx.float(0)?, ctx.float(1)?);
    let (ra, rb) = (a.rank(), b.rank());
    let a2 = if ra == 1 { a.unsqueeze(0)? } else { a };
    let b2 = if rb == 1 { b.unsqueeze(1)? } else { b };
    let mut y = if a2.rank() == 2 && b2.rank() == 2 {
        a2.matmul(&b2)?
    } else {
        a2.broadcast_matmul(&b2)?
    };
    if rb == 1 {
        y = y.squeeze(D::Minus1)?;
    }
    if ra == 1 {
        let r = y.rank();
        y = y.squeeze(if rb == 1 { r - 1 } else { r - 2 })?;
    }
    f(y)
}

// ---------------------------------------------------------------- convolution and pooling

/// Spatial attributes of a Conv or pooling node, resolved for a 2-D input.
struct Spatial {
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
    /// top, left, bottom, right
    pads: [usize; 4],
}

impl Spatial {
    /// The kernel's extent with dilation, per axis.
    fn extent(&self) -> [usize; 2] {
        [
            self.d[0] * (self.k[0] - 1) + 1,
            self.d[1] * (self.k[1] - 1) + 1,
        ]
    }

    /// The geometry of a Conv whose weight `weight` has the spatial kernel
    /// `k`, on an `in_hw` input (floor output sizes); an error if the
    /// node's `kernel_shape` disagrees with the weight.
    fn conv_geom(&self, k: [usize; 2], in_hw: [usize; 2], weight: &[usize]) -> R<ConvGeom> {
        if self.k != k {
            fail!(
                "kernel_shape {:?} does not match the weight {weight:?}",
                self.k
            );
        }
        let ek = self.extent();
        let [pt, pl, pb, pr] = self.pads;
        Ok(ConvGeom {
            k: self.k,
            s: self.s,
            d: self.d,
            pad: [pt, pl],
            out: [
                out_size(in_hw[0], pt + pb, ek[0], self.s[0], false)?,
                out_size(in_hw[1], pl + pr, ek[1], self.s[1], false)?,
            ],
        })
    }
}

fn two(v: &[i64], name: &str) -> R<[usize; 2]> {
    match v {
        [a, b] if *a >= 1 && *b >= 1 => Ok([*a as usize, *b as usize]),
        _ => fail!("`{name}` = {v:?}: two positive values expected"),
    }
}

/// Read kernel/strides/dilations/pads/auto_pad; `one_d` means the node's
/// input was 1-D spatial and has been lifted to 2-D with H = 1.
fn spatial(ctx: &Ctx, kernel: Option<[usize; 2]>, in_hw: [usize; 2], one_d: bool) -> R<Spatial> {
    let lift = |v: Option<Vec<i64>>, default: i64| -> Option<Vec<i64>> {
        v.map(|v| {
            if one_d {
                [vec![default], v].concat()
            } else {
                v
            }
        })
    };
    let k = match lift(ctx.attr_ints("kernel_shape"), 1) {
        Some(v) => two(&v, "kernel_shape")?,
        None => match kernel {
            Some(k) => k,
            None => fail!("missing attribute `kernel_shape`"),
        },
    };
    let s = two(
        &lift(ctx.attr_ints("strides"), 1).unwrap_or(vec![1, 1]),
        "strides",
    )?;
    let d = two(
        &lift(ctx.attr_ints("dilations"), 1).unwrap_or(vec![1, 1]),
        "dilations",
    )?;
    let auto = ctx.attr_s("auto_pad").unwrap_or_default();
    let pads = match auto.as_str() {
        "" | "NOTSET" => {
            let p = ctx
                .attr_ints("pads")
                .unwrap_or(vec![0; if one_d { 2 } else { 4 }]);
            let p = if one_d && p.len() == 2 {
                vec![0, p[0], 0, p[1]]
            } else {
                p
            };
            if p.len() != 4 || p.iter().any(|&x| x < 0) {
                fail!("`pads` = {p:?}: four non-negative values expected");
            }
            [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]
        }
        "VALID" => [0; 4],
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut p = [0usize; 4];
            for i in 0..2 {
                let ek = d[i] * (k[i] - 1) + 1;
                let out = in_hw[i].div_ceil(s[i]);
                let total = ((out - 1) * s[i] + ek).saturating_sub(in_hw[i]);
                let (small, big) = (total / 2, total - total / 2);
                if auto == "SAME_UPPER" {
                    p[i] = small;
                    p[i + 2] = big;
                } else {
                    p[i] = big;
                    p[i + 2] = small;
                }
            }
            p
        }
        other => fail!("auto_pad `{other}` is not supported"),
    };
    Ok(Spatial { k, s, d, pads })
}

/// Pad `x` along `dim` with `value`.
fn pad_value(x: &Tensor, dim: usize, left: usize, right: usize, value: f32) -> R<Tensor> {
    if left == 0 && right == 0 {
        return Ok(x.clone());
    }
    if value == 0.0 {
        return Ok(x.pad_with_zeros(dim, left, right)?);
    }
    let mut parts = Vec::with_capacity(3);
    let mut dims = x.dims().to_vec();
    if left > 0 {
        dims[dim] = left;
        parts.push(Tensor::full(value, dims.clone(), x.device())?);
    }
    parts.push(x.clone());
    if right > 0 {
        dims[dim] = right;
        parts.push(Tensor::full(value, dims, x.device())?);
    }
    Ok(Tensor::cat(&parts, dim)?)
}

/// The window of a padded NCHW tensor at kernel offset (oh, ow).
fn window(x: &Tensor, oh: usize, ow: usize, out: [usize; 2], s: [usize; 2]) -> R<Tensor> {
    let t = strided_narrow(x, 2, oh, out[0], s[0])?;
    strided_narrow(&t, 3, ow, out[1], s[1])
}

fn out_size(input: usize, pad: usize, ek: usize, s: usize, ceil: bool) -> R<usize> {
    if input + pad < ek {
        fail!(
            "kernel extent {ek} is larger than the padded input {}",
            input + pad
        );
    }
    let span = input + pad - ek;
    Ok(if ceil {
        span.div_ceil(s) + 1
    } else {
        span / s + 1
    })
}

/// A 1x1 Conv and the depthwise Conv after it as one CPU op (the
/// interpreter checked the pattern: 1x1 with stride 1, no padding; the
/// depthwise's group equals its channels).
fn expand_depthwise(ctx: &Ctx, dw: &DepthwiseStage) -> R<Vec<Value>> {
    let x = ctx.float(0)?;
    let w1 = ctx.float(1)?;
    let wd = dw.weight.to_float(ctx.device)?;
    if x.rank() != 4 || w1.rank() != 4 || wd.rank() != 4 {
        fail!(
            "expand+depthwise: 2-D convolutions only; input {:?}, weights {:?} and {:?}",
            x.dims(),
            w1.dims(),
            wd.dims()
        );
    }
    let (_, c, h, w) = x.dims4()?;
    let (e, ci, kh, kw) = w1.dims4()?;
    let (_, _, dkh, dkw) = wd.dims4()?;
    let sp1 = spatial(ctx, Some([kh, kw]), [h, w], false)?;
    if ctx.attr_i("group", 1) != 1
        || ci != c
        || [kh, kw] != [1, 1]
        || sp1.k != [1, 1]
        || sp1.s != [1, 1]
        || sp1.d != [1, 1]
        || sp1.pads != [0; 4]
    {
        fail!("expand+depthwise: the first Conv is not a 1x1 conv with stride 1 and no padding");
    }
    let dctx = Ctx {
        node: dw.node,
        inputs: vec![None, Some(dw.weight.clone()), dw.bias.clone()],
        device: ctx.device,
        opset: ctx.opset,
        outputs_needed: vec![true],
        activation: dw.activation,
        residual: None,
        depthwise: None,
    };
    if dctx.attr_i("group", 1) != e as i64 {
        fail!("expand+depthwise: the second Conv is not depthwise over {e} channels");
    }
    let geom = spatial(&dctx, Some([dkh, dkw]), [h, w], false)?.conv_geom(
        [dkh, dkw],
        [h, w],
        wd.dims(),
    )?;
    let b1 = ctx.opt(2).map(|b| b.to_float(ctx.device)).transpose()?;
    let bd = dw
        .bias
        .as_ref()
        .map(|b| b.to_float(ctx.device))
        .transpose()?;
    f(super::expand_dw::expand_depthwise(
        &x,
        &w1,
        b1.as_ref(),
        ctx.activation,
        &wd,
        bd.as_ref(),
        geom,
        dw.activation,
    )?)
}

fn conv(ctx: &Ctx) -> R<Vec<Value>> {
    if let Some(dw) = &ctx.depthwise {
        return expand_depthwise(ctx, dw);
    }
    let mut x = ctx.float(0)?;
    let mut w = ctx.float(1)?;
    let mut residual = ctx
        .residual
        .as_ref()
        .map(|r| r.to_float(ctx.device))
        .transpose()?;
    let one_d = x.rank() == 3;
    if one_d {
        x = x.unsqueeze(2)?;
        w = w.unsqueeze(2)?;
        residual = residual.map(|r| r.unsqueeze(2)).transpose()?;
    }
    if x.rank() != 4 || w.rank() != 4 {
        fail!(
            "Conv supports 1-D and 2-D inputs; got input {:?}, weight {:?}",
            x.dims(),
            w.dims()
        );
    }
    let (_n, c, h, wd) = x.dims4()?;
    let (o, ci, kh, kw) = w.dims4()?;
    let group = ctx.attr_i("group", 1).max(1) as usize;
    if c != ci * group || o % group != 0 {
        fail!(
            "channel mismatch: input has {c} channels, weight {:?}, group {group}",
            w.dims()
        );
    }
    let sp = spatial(ctx, Some([kh, kw]), [h, wd], one_d)?;
    let geom = sp.conv_geom([kh, kw], [h, wd], w.dims())?;
    let (ek, out) = (sp.extent(), geom.out);
    let depthwise_shape = group == c && ci == 1 && o == c && group > 1;
    let mut y = if x.device().is_cpu() && (group == 1 || depthwise_shape) {
        // Dedicated CPU kernels: exact for any padding, stride and dilation.
        let b = ctx.opt(2).map(|b| b.to_float(ctx.device)).transpose()?;
        let act = ctx.activation;
        let y = match &residual {
            Some(r) if group == 1 && r.dims() == [x.dim(0)?, o, out[0], out[1]] => {
                super::gemm_conv::conv2d_residual(&x, &w, b.as_ref(), r, geom, act)?
            }
            Some(r) => {
                // a broadcasting Add or a depthwise conv: conv, add, clamp
                let y = if group == 1 {
                    super::gemm_conv::conv2d(&x, &w, b.as_ref(), geom, None)?
                } else {
                    super::depthwise::depthwise_conv2d(&x, &w, b.as_ref(), geom, None)?
                };
                let y = y.broadcast_add(r)?;
                match act {
                    Some(act) => apply_clamp(&y, act)?,
                    None => y,
                }
            }
            None if group == 1 => super::gemm_conv::conv2d(&x, &w, b.as_ref(), geom, act)?,
            None => super::depthwise::depthwise_conv2d(&x, &w, b.as_ref(), geom, act)?,
        };
        return f(if one_d { y.squeeze(2)? } else { y });
    } else if depthwise_shape {
        depthwise(&x, &w, &sp, out)?
    } else {
        let [pt, pl, pb, pr] = sp.pads;
        let rem = [
            (h + pt + pb - ek[0]) % sp.s[0],
            (wd + pl + pr - ek[1]) % sp.s[1],
        ];
        let uniform = sp.s[0] == sp.s[1] && sp.d[0] == sp.d[1];
        if !uniform {
            fail!(
                "Conv with different strides or dilations per axis ({:?}, {:?}) is not supported",
                sp.s,
                sp.d
            );
        }
        if pt == pl && pt == pb && pt == pr && rem[0] == rem[1] {
            // candle pads symmetrically itself; its backward is exact when
            // the unused remainder is the same on both axes.
            super::conv_grad::conv2d(&x, &w, pt, sp.s[0], sp.d[0], group)?
        } else {
            let xp = pad_value(&x, 2, pt, pb, 0.0)?;
            let xp = pad_value(&xp, 3, pl, pr, 0.0)?;
            // Drop rows/columns no window reaches so the backward is exact.
            let used = [
                (out[0] - 1) * sp.s[0] + ek[0],
                (out[1] - 1) * sp.s[1] + ek[1],
            ];
            let xp = xp.narrow(2, 0, used[0])?.narrow(3, 0, used[1])?;
            super::conv_grad::conv2d(&xp, &w, 0, sp.s[0], sp.d[0], group)?
        }
    };
    if let Some(b) = ctx.opt(2) {
        let b = b.to_float(ctx.device)?;
        y = y.broadcast_add(&b.reshape((1, o, 1, 1))?)?;
    }
    if let Some(r) = &residual {
        y = y.broadcast_add(r)?;
    }
    if let Some(act) = ctx.activation {
        y = apply_clamp(&y, act)?;
    }
    if one_d {
        y = y.squeeze(2)?;
    }
    f(y)
}

/// Depthwise convolution (one filter per channel) as a sum of shifted,
/// per-channel scaled windows: kh*kw fused elementwise ops instead of one
/// convolution call per channel.
fn depthwise(x: &Tensor, w: &Tensor, sp: &Spatial, out: [usize; 2]) -> R<Tensor> {
    let c = x.dim(1)?;
    let [pt, pl, pb, pr] = sp.pads;
    let xp = pad_value(x, 2, pt, pb, 0.0)?;
    let xp = pad_value(&xp, 3, pl, pr, 0.0)?;
    let mut acc: Option<Tensor> = None;
    for ky in 0..sp.k[0] {
        for kx in 0..sp.k[1] {
            let win = window(&xp, ky * sp.d[0], kx * sp.d[1], out, sp.s)?;
            let wk = w
                .narrow(2, ky, 1)?
                .narrow(3, kx, 1)?
                .reshape((1, c, 1, 1))?;
            let term = win.broadcast_mul(&wk)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
    }
    match acc {
        Some(a) => Ok(a),
        None => fail!("empty kernel"),
    }
}

fn batch_norm(ctx: &Ctx) -> R<Vec<Value>> {
    if ctx.attr_i("training_mode", 0) != 0 {
        fail!("BatchNormalization in training mode is not supported (inference form with frozen statistics only)");
    }
    if (1..ctx.node.output.len()).any(|i| ctx.output_needed(i)) {
        fail!("BatchNormalization running-statistics outputs are not supported");
    }
    let x = ctx.float(0)?;
    let (scale, bias, mean, var) = (ctx.float(1)?, ctx.float(2)?, ctx.float(3)?, ctx.float(4)?);
    let eps = ctx.attr_f("epsilon", 1e-5) as f64;
    let c = x.dim(1)?;
    let mut shape = vec![1usize; x.rank()];
    shape[1] = c;
    // y = x * a + b with a = scale / sqrt(var + eps), b = bias - mean * a.
    let a = scale.div(&var.affine(1.0, eps)?.sqrt()?)?;
    let b = bias.sub(&mean.mul(&a)?)?;
    let y = x
        .broadcast_mul(&a.reshape(shape.clone())?)?
        .broadcast_add(&b.reshape(shape)?)?;
    f(y)
}

#[derive(Clone, Copy, PartialEq)]
enum PoolKind {
    Max,
    Avg,
}

fn pool(ctx: &Ctx, kind: PoolKind) -> R<Vec<Value>> {
    if ctx.output_needed(1) {
        fail!("the Indices output of MaxPool is not supported");
    }
    let mut x = ctx.float(0)?;
    let one_d = x.rank() == 3;
    if one_d {
        x = x.unsqueeze(2)?;
    }
    if x.rank() != 4 {
        fail!("pooling supports 1-D and 2-D inputs; got {:?}", x.dims());
    }
    let (_n, _c, h, w) = x.dims4()?;
    let sp = spatial(ctx, None, [h, w], one_d)?;
    let ceil = ctx.attr_i("ceil_mode", 0) != 0;
    let include_pad = ctx.attr_i("count_include_pad", 0) != 0;
    let ek = sp.extent();
    let [pt, pl, pb, pr] = sp.pads;
    let mut out = [
        out_size(h, pt + pb, ek[0], sp.s[0], ceil)?,
        out_size(w, pl + pr, ek[1], sp.s[1], ceil)?,
    ];
    if ceil {
        // The last window must start inside the input or the left padding.
        if (out[0] - 1) * sp.s[0] >= h + pt {
            out[0] -= 1;
        }
        if (out[1] - 1) * sp.s[1] >= w + pl {
            out[1] -= 1;
        }
    }
    let no_pad = sp.pads == [0; 4];
    let simple = no_pad && sp.k == sp.s && sp.d == [1, 1] && h % sp.k[0] == 0 && w % sp.k[1] == 0;
    let mut y = if simple {
        // candle's own kernels (with backward) cover non-overlapping windows.
        match kind {
            PoolKind::Max => x.max_pool2d_with_stride((sp.k[0], sp.k[1]), (sp.s[0], sp.s[1]))?,
            PoolKind::Avg => x.avg_pool2d_with_stride((sp.k[0], sp.k[1]), (sp.s[0], sp.s[1]))?,
        }
    } else {
        let extra = [
            ((out[0] - 1) * sp.s[0] + ek[0]).saturating_sub(h + pt + pb),
            ((out[1] - 1) * sp.s[1] + ek[1]).saturating_sub(w + pl + pr),
        ];
        let fill = if kind == PoolKind::Max {
            f32::NEG_INFINITY
        } else {
            0.0
        };
        let xp = pad_value(&x, 2, pt, pb + extra[0], fill)?;
        let xp = pad_value(&xp, 3, pl, pr + extra[1], fill)?;
        let mut acc: Option<Tensor> = None;
        for ky in 0..sp.k[0] {
            for kx in 0..sp.k[1] {
                let win = window(&xp, ky * sp.d[0], kx * sp.d[1], out, sp.s)?;
                acc = Some(match (acc, kind) {
                    (None, _) => win,
                    (Some(a), PoolKind::Max) => a.maximum(&win)?,
                    (Some(a), PoolKind::Avg) => (a + win)?,
                });
            }
        }
        let acc = match acc {
            Some(a) => a,
            None => fail!("empty kernel"),
        };
        match kind {
            PoolKind::Max => acc,
            PoolKind::Avg => {
                // Divisor per output position: the window's count of real
                // (and, with count_include_pad, explicitly padded) cells.
                let ones = Tensor::ones((1, 1, h, w), DType::F32, ctx.device)?;
                let pv = if include_pad { 1.0 } else { 0.0 };
                let m = pad_value(&ones, 2, pt, pb, pv)?;
                let m = pad_value(&m, 2, 0, extra[0], 0.0)?;
                let m = pad_value(&m, 3, pl, pr, pv)?;
                let m = pad_value(&m, 3, 0, extra[1], 0.0)?;
                let mut cnt: Option<Tensor> = None;
                for ky in 0..sp.k[0] {
                    for kx in 0..sp.k[1] {
                        let win = window(&m, ky * sp.d[0], kx * sp.d[1], out, sp.s)?;
                        cnt = Some(match cnt {
                            None => win,
                            Some(a) => (a + win)?,
                        });
                    }
                }
                match cnt {
                    Some(cnt) => acc.broadcast_div(&cnt.contiguous()?)?,
                    None => fail!("empty kernel"),
                }
            }
        }
    };
    if one_d {
        y = y.squeeze(2)?;
    }
    f(y)
}

fn pad(ctx: &Ctx) -> R<Vec<Value>> {
    let mode = ctx.attr_s("mode").unwrap_or_else(|| "constant".into());
    if mode != "constant" {
        fail!("Pad mode `{mode}` is not supported (constant is)");
    }
    let x = ctx.float(0)?;
    let rank = x.rank();
    let pads = match ctx.opt(1) {
        Some(p) => p.to_int()?.data,
        None => ctx.attr_ints("pads").unwrap_or_default(),
    };
    let value = match ctx.opt(2) {
        Some(v) => v
            .to_float(ctx.device)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .first()
            .copied()
            .unwrap_or(0.0),
        None => ctx.attr_f("value", 0.0),
    };
    let axes: Vec<usize> = match ctx.opt(3) {
        Some(a) => a
            .to_int()?
            .data
            .iter()
            .map(|&a| axis(a, rank))
            .collect::<R<_>>()?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        fail!("Pad: {} pads for {} axes", pads.len(), axes.len());
    }
    let mut y = x;
    for (k, &a) in axes.iter().enumerate() {
        let (l, r) = (pads[k], pads[k + axes.len()]);
        if l < 0 || r < 0 {
            let n = y.dim(a)? as i64;
            let start = (-l).max(0);
            let end = n - (-r).max(0);
            y = y.narrow(a, start as usize, (end - start).max(0) as usize)?;
        }
        y = pad_value(&y, a, l.max(0) as usize, r.max(0) as usize, value)?;
    }
    f(y)
}
