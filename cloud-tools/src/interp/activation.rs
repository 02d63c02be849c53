//! Clamping activations (ONNX `Relu`, and `Clip`: ReLU6 in MobileNetV2) on
//! the CPU as one pass forward and one pass backward, standalone or fused
//! into the convolution kernels (the interpreter fuses a Conv whose only
//! reader is a Relu or Clip). candle's own chain (`relu`, then `minimum`
//! with a broadcast scalar) costs several full-size temporaries forward and
//! about ten backward (the `minimum` gradient builds masks for both
//! operands).
//!
//! The gradient passes where the output is strictly inside `(lo, hi)` (a
//! missing bound is no limit), as in PyTorch's `threshold`/`hardtanh`
//! backward; only exact ties (`x == lo` or `x == hi`) differ from candle's
//! `relu` (1 at 0) and `minimum` (1/2 at a tie).

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{par_output, In, Kernel, Op};

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// Bounds of a clamping activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clamp {
    pub lo: Option<f32>,
    pub hi: Option<f32>,
}

impl Clamp {
    #[inline]
    pub fn apply(&self, v: f32) -> f32 {
        let v = match self.lo {
            Some(lo) if v < lo => lo,
            _ => v,
        };
        match self.hi {
            Some(hi) if v > hi => hi,
            _ => v,
        }
    }

    /// Clamp every element in place (as [`Clamp::apply`], branch-free).
    pub fn apply_slice(&self, v: &mut [f32]) {
        let (lo, hi) = self.open_range();
        for a in v {
            let x = if *a < lo { lo } else { *a };
            *a = if x > hi { hi } else { x };
        }
    }

    /// The open interval where the gradient passes (a missing bound is
    /// infinite), as plain floats so the mask loops vectorise.
    #[inline]
    fn open_range(&self) -> (f32, f32) {
        (
            self.lo.unwrap_or(f32::NEG_INFINITY),
            self.hi.unwrap_or(f32::INFINITY),
        )
    }

    /// `out[i]` = `g[i]` where the output `y[i]` passed the clamp, else 0.
    pub fn mask_into(&self, y: &[f32], g: &[f32], out: &mut [f32]) {
        let (lo, hi) = self.open_range();
        for ((o, &yv), &gv) in out.iter_mut().zip(y).zip(g) {
            *o = if yv > lo && yv < hi { gv } else { 0.0 };
        }
    }

    /// `g[i]` zeroed where the output `y[i]` did not pass the clamp.
    pub fn mask_in_place(&self, y: &[f32], g: &mut [f32]) {
        let (lo, hi) = self.open_range();
        for (o, &yv) in g.iter_mut().zip(y) {
            *o = if yv > lo && yv < hi { *o } else { 0.0 };
        }
    }
}

/// The gradient `g` of one sample or plane of a clamp's output `y` as the
/// kernels use it: `g` itself without `act`, else masked into `buf`.
pub(super) fn masked<'a>(
    act: Option<Clamp>,
    y: &[f32],
    g: &'a [f32],
    buf: &'a mut [f32],
) -> &'a [f32] {
    match act {
        None => g,
        Some(act) => {
            let out = &mut buf[..g.len()];
            act.mask_into(y, g, out);
            out
        }
    }
}

/// `a + b` (same shape) clamped by `act`, as one op whose backward passes
/// the masked gradient to whichever of `a` and `b` is tracked (the residual
/// Add and Relu ending a ResNet block; candle's add and relu would each
/// keep a full-size tensor and build several more backward).
pub fn add_clamp(a: &Tensor, b: &Tensor, act: Clamp) -> Result<Tensor> {
    if a.dims() != b.dims() {
        candle_core::bail!("add+clamp: {:?} and {:?} differ", a.dims(), b.dims());
    }
    a.contiguous()?
        .apply_op2(&b.contiguous()?, Op(AddClamp(act)))
}

/// `(a, b)` -> `clamp(a + b)`.
struct AddClamp(Clamp);

impl Kernel<2> for AddClamp {
    const NAME: &'static str = "adaptivenet-add-clamp";

    fn run(&self, [a, b]: [In<'_>; 2]) -> Result<(Vec<f32>, Shape)> {
        if a.dims != b.dims {
            candle_core::bail!("{:?} and {:?} differ", a.dims, b.dims);
        }
        let mut y = Vec::with_capacity(a.data.len());
        a.data
            .par_iter()
            .zip(b.data.par_iter())
            .with_min_len(CHUNK)
            .map(|(&u, &v)| self.0.apply(u + v))
            .collect_into_vec(&mut y);
        Ok((y, Shape::from(a.dims)))
    }

    fn backward(
        &self,
        [a, b]: [&Tensor; 2],
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 2]> {
        if !(a.track_op() || b.track_op()) {
            return Ok([None, None]);
        }
        let g = clamp_grad(y, grad, self.0)?;
        Ok([a.track_op().then(|| g.clone()), b.track_op().then_some(g)])
    }
}

/// `x` clamped to `[lo, hi]`, with its gradient.
pub fn clamp(x: &Tensor, act: Clamp) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Op(act))
}

/// The gradient before a clamp whose output is `y`: `grad` where `y` is
/// strictly inside the bounds, 0 elsewhere.
pub fn clamp_grad(y: &Tensor, grad: &Tensor, act: Clamp) -> Result<Tensor> {
    y.detach()
        .contiguous()?
        .apply_op2_no_bwd(&grad.contiguous()?, &Op(ClampGrad(act)))
}

impl Kernel<1> for Clamp {
    const NAME: &'static str = "adaptivenet-clamp";

    fn run(&self, [x]: [In<'_>; 1]) -> Result<(Vec<f32>, Shape)> {
        let mut y = Vec::with_capacity(x.data.len());
        x.data
            .par_iter()
            .with_min_len(CHUNK)
            .map(|&v| self.apply(v))
            .collect_into_vec(&mut y);
        Ok((y, Shape::from(x.dims)))
    }

    fn backward(&self, _x: [&Tensor; 1], y: &Tensor, grad: &Tensor) -> Result<[Option<Tensor>; 1]> {
        Ok([Some(clamp_grad(y, grad, *self)?)])
    }
}

/// `(y, grad)` -> `grad` where `y` passed the clamp, 0 elsewhere.
struct ClampGrad(Clamp);

impl Kernel<2> for ClampGrad {
    const NAME: &'static str = "adaptivenet-clamp-grad";

    fn run(&self, [y, g]: [In<'_>; 2]) -> Result<(Vec<f32>, Shape)> {
        if y.dims != g.dims {
            candle_core::bail!("gradient {:?} for output {:?}", g.dims, y.dims);
        }
        let dims = y.dims;
        let (y, g) = (y.data, g.data);
        let gx = par_output(
            g.len(),
            CHUNK,
            || (),
            |_, i, o| {
                let at = i * CHUNK..i * CHUNK + o.len();
                self.0.mask_into(&y[at.clone()], &g[at], o);
                Ok(())
            },
        )?;
        Ok((gx, Shape::from(dims)))
    }
}
