//! Clamping activations (ONNX `Relu`, and `Clip`: ReLU6 in MobileNetV2) on
//! the CPU as one pass forward and one pass backward. candle's own chain
//! (`relu`, then `minimum` with a broadcast scalar) costs several
//! full-size temporaries forward and about ten backward (the `minimum`
//! gradient builds masks for both operands).
//!
//! The gradient passes where `lo <= x < hi` (a missing bound is no limit):
//! candle's `relu` gradient at `x = 0` is kept (1), and at `x = hi`, where
//! candle's `minimum` split the gradient in half, it is 0, as in PyTorch's
//! `hardtanh`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm_conv::slice;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `x` clamped to `[lo, hi]` (either bound optional), with its gradient.
pub fn clamp(x: &Tensor, lo: Option<f32>, hi: Option<f32>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Clamp { lo, hi })
}

#[derive(Clone, Copy)]
struct Clamp {
    lo: Option<f32>,
    hi: Option<f32>,
}

impl Clamp {
    #[inline]
    fn apply(&self, v: f32) -> f32 {
        let v = match self.lo {
            Some(lo) if v < lo => lo,
            _ => v,
        };
        match self.hi {
            Some(hi) if v > hi => hi,
            _ => v,
        }
    }

    #[inline]
    fn passes(&self, v: f32) -> bool {
        self.lo.is_none_or(|lo| v >= lo) && self.hi.is_none_or(|hi| v < hi)
    }
}

impl CustomOp1 for Clamp {
    fn name(&self) -> &'static str {
        "adaptivenet-clamp"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "input")?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| {
                for (a, &b) in y.iter_mut().zip(x) {
                    *a = self.apply(b);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.detach().contiguous()?.apply_op2_no_bwd(
            &grad.contiguous()?,
            &ClampGrad(*self),
        )?))
    }
}

/// `grad` where the input passed the clamp, 0 elsewhere.
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
        let x = slice(s1, l1, "input")?;
        let g = slice(s2, l2, "gradient")?;
        if x.len() != g.len() {
            candle_core::bail!(
                "clamp grad: gradient {:?} for input {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let mut gx = vec![0f32; x.len()];
        gx.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(o, (x, g))| {
                for ((a, &xv), &gv) in o.iter_mut().zip(x).zip(g) {
                    *a = if self.0.passes(xv) { gv } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}
