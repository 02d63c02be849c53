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

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::slice;

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

    /// Clamp every element in place.
    pub fn apply_slice(&self, v: &mut [f32]) {
        for a in v {
            *a = self.apply(*a);
        }
    }

    /// Whether the gradient passes at output value `y`.
    #[inline]
    fn passes(&self, y: f32) -> bool {
        self.lo.is_none_or(|lo| y > lo) && self.hi.is_none_or(|hi| y < hi)
    }
}

/// `x` clamped to `[lo, hi]`, with its gradient.
pub fn clamp(x: &Tensor, act: Clamp) -> Result<Tensor> {
    x.contiguous()?.apply_op1(act)
}

/// The gradient before a clamp whose output is `y`: `grad` where `y` is
/// strictly inside the bounds, 0 elsewhere.
pub fn clamp_grad(y: &Tensor, grad: &Tensor, act: Clamp) -> Result<Tensor> {
    y.detach()
        .contiguous()?
        .apply_op2_no_bwd(&grad.contiguous()?, &ClampGrad(act))
}

impl CustomOp1 for Clamp {
    fn name(&self) -> &'static str {
        "adaptivenet-clamp"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "input")?;
        let mut y = Vec::with_capacity(x.len());
        x.par_iter()
            .with_min_len(CHUNK)
            .map(|&v| self.apply(v))
            .collect_into_vec(&mut y);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(clamp_grad(y, grad, *self)?))
    }
}

/// `(y, grad)` -> `grad` where `y` passed the clamp, 0 elsewhere.
struct ClampGrad(Clamp);

impl CustomOp2 for ClampGrad {
    fn name(&self) -> &'static str {
        "adaptivenet-clamp-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, "output")?;
        let g = slice(s2, l2, "gradient")?;
        if y.len() != g.len() {
            candle_core::bail!(
                "clamp grad: gradient {:?} for output {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let mut gx = Vec::with_capacity(g.len());
        y.par_iter()
            .zip(g.par_iter())
            .with_min_len(CHUNK)
            .map(|(&yv, &gv)| if self.0.passes(yv) { gv } else { 0.0 })
            .collect_into_vec(&mut gx);
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}
