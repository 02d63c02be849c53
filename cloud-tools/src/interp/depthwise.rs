//! Depthwise 2-D convolution (one filter per channel, ONNX `Conv` with
//! `group` = channels) on the CPU: the forward pass and both gradients as
//! direct loops over each (sample, channel) plane, without im2col and
//! without splitting the tensor per channel. Planes (forward, input
//! gradient) and channels (weight gradient) run in parallel on rayon's
//! global pool, the one candle's CPU kernels and GEMM use.
//!
//! Padding is given per side (top, left) with the output size, so any
//! explicit or `auto_pad` padding, stride and dilation is exact: input rows
//! and columns no window reaches get a zero gradient. The bias is fused
//! (each output plane starts as its channel's bias), and so can be a
//! following Relu/Clip, as in `gemm_conv`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::{clamp_grad, Clamp};
use super::cpu::{bias_grad, bias_or_zeros, slice};
use super::geom::{ConvGeom, Taps};

/// Depthwise convolution of `x` `[N,C,H,W]` with `w` `[C,1,kh,kw]` plus
/// the bias `b` `[C]` if any, then the activation `act` if any. On a
/// non-CPU device this is an error: the caller falls back to candle's own
/// ops there.
pub fn depthwise_conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    geom: ConvGeom,
    act: Option<Clamp>,
) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let (o, ci, kh, kw) = w.dims4()?;
    if o != c || ci != 1 || [kh, kw] != geom.k {
        candle_core::bail!(
            "depthwise conv: weight {:?} does not fit {c} channels and kernel {:?}",
            w.dims(),
            geom.k
        );
    }
    let b = bias_or_zeros(b, c, x)?;
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    x.apply_op3(&w, &b, DwConv { geom, act })
}

/// The per-plane loops of the three passes.
trait PlaneOps {
    fn forward(&self, x: &[f32], wk: &[f32], bias: f32, y: &mut [f32]);
    fn input_grad(&self, g: &[f32], wk: &[f32], gx: &mut [f32]);
    fn weight_grad(&self, x: &[f32], g: &[f32], acc: &mut [f32]);
}

impl PlaneOps for Taps {
    /// y[oy, ox] = bias + sum w[ky, kx] * x[iy, ix] over the plane.
    fn forward(&self, x: &[f32], wk: &[f32], bias: f32, y: &mut [f32]) {
        let kw = self.cols.len();
        y.fill(bias);
        self.for_each_row(|ky, yo, xo| {
            for (kx, c) in self.cols.iter().enumerate() {
                let wv = wk[ky * kw + kx];
                let yr = &mut y[yo + c.lo..yo + c.hi];
                let start = xo + self.col_start(c);
                if self.sw == 1 {
                    let xr = &x[start..start + yr.len()];
                    for (a, b) in yr.iter_mut().zip(xr) {
                        *a += wv * b;
                    }
                } else {
                    for (a, b) in yr.iter_mut().zip(x[start..].iter().step_by(self.sw)) {
                        *a += wv * b;
                    }
                }
            }
        });
    }

    /// gx[iy, ix] += w[ky, kx] * g[oy, ox] over the plane.
    fn input_grad(&self, g: &[f32], wk: &[f32], gx: &mut [f32]) {
        let kw = self.cols.len();
        gx.fill(0.0);
        self.for_each_row(|ky, go, xo| {
            for (kx, c) in self.cols.iter().enumerate() {
                let wv = wk[ky * kw + kx];
                let gr = &g[go + c.lo..go + c.hi];
                let start = xo + self.col_start(c);
                if self.sw == 1 {
                    let xr = &mut gx[start..start + gr.len()];
                    for (a, b) in xr.iter_mut().zip(gr) {
                        *a += wv * b;
                    }
                } else {
                    for (a, b) in gx[start..].iter_mut().step_by(self.sw).zip(gr) {
                        *a += wv * b;
                    }
                }
            }
        });
    }

    /// acc[ky, kx, ox] += g[oy, ox] * x[iy, ix] over the plane: per-tap
    /// partial sums by output column (`acc` is `kh·kw·ow`), so the inner
    /// loop is an elementwise multiply-add, not a dependent chain of adds.
    fn weight_grad(&self, x: &[f32], g: &[f32], acc: &mut [f32]) {
        let kw = self.cols.len();
        let ow = acc.len() / (self.rows.len() * kw).max(1);
        self.for_each_row(|ky, go, xo| {
            for (kx, c) in self.cols.iter().enumerate() {
                let gr = &g[go + c.lo..go + c.hi];
                let start = xo + self.col_start(c);
                let ar = &mut acc[(ky * kw + kx) * ow + c.lo..][..gr.len()];
                if self.sw == 1 {
                    for ((a, u), v) in ar.iter_mut().zip(gr).zip(&x[start..]) {
                        *a += u * v;
                    }
                } else {
                    for ((a, u), v) in ar
                        .iter_mut()
                        .zip(gr)
                        .zip(x[start..].iter().step_by(self.sw))
                    {
                        *a += u * v;
                    }
                }
            }
        });
    }
}

fn dims4(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    l.shape().dims4()
}

/// Forward: `x` `[N,C,H,W]`, `w` `[C,1,kh,kw]`, `b` `[C]` -> `[N,C,oh,ow]`.
struct DwConv {
    geom: ConvGeom,
    act: Option<Clamp>,
}

impl CustomOp3 for DwConv {
    fn name(&self) -> &'static str {
        "adaptivenet-depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let (n, c, h, w) = dims4(l1)?;
        let x = slice(s1, l1, "input")?;
        let wk = slice(s2, l2, "weight")?;
        let bias = slice(s3, l3, "bias")?;
        let (oh, ow) = (g.out[0], g.out[1]);
        let plan = Taps::new(g, h, w);
        let kk = g.k[0] * g.k[1];
        if l2.dims() != [c, 1, g.k[0], g.k[1]] || l3.dims() != [c] {
            candle_core::bail!(
                "depthwise conv: weight {:?} and bias {:?} for {c} channels",
                l2.dims(),
                l3.dims()
            );
        }
        let mut y = vec![0f32; n * c * oh * ow];
        if oh * ow > 0 {
            y.par_chunks_mut(oh * ow).enumerate().for_each(|(p, yp)| {
                let ch = p % c;
                plan.forward(
                    &x[p * h * w..(p + 1) * h * w],
                    &wk[ch * kk..(ch + 1) * kk],
                    bias[ch],
                    yp,
                );
                if let Some(act) = &self.act {
                    act.apply_slice(yp);
                }
            });
        }
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = match self.act {
            Some(act) => clamp_grad(res, grad, act)?,
            None => grad.contiguous()?,
        };
        let gx = if x.track_op() {
            let (_, _, h, wd) = x.dims4()?;
            Some(grad.apply_op2_no_bwd(
                &w.detach(),
                &DwInputGrad {
                    geom: self.geom,
                    in_hw: [h, wd],
                },
            )?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(
                x.detach()
                    .apply_op2_no_bwd(&grad, &DwWeightGrad(self.geom))?,
            )
        } else {
            None
        };
        let gb = if b.track_op() {
            Some(bias_grad(&grad, b)?)
        } else {
            None
        };
        Ok((gx, gw, gb))
    }
}

/// Input gradient: `grad` `[N,C,oh,ow]`, `w` `[C,1,kh,kw]` -> `[N,C,H,W]`.
struct DwInputGrad {
    geom: ConvGeom,
    in_hw: [usize; 2],
}

impl CustomOp2 for DwInputGrad {
    fn name(&self) -> &'static str {
        "adaptivenet-depthwise-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let (n, c, oh, ow) = dims4(l1)?;
        if [oh, ow] != g.out {
            candle_core::bail!(
                "depthwise conv input grad: gradient {oh}x{ow} for output {:?}",
                g.out
            );
        }
        let gy = slice(s1, l1, "output gradient")?;
        let wk = slice(s2, l2, "weight")?;
        let [h, w] = self.in_hw;
        let plan = Taps::new(g, h, w);
        let kk = g.k[0] * g.k[1];
        if l2.dims() != [c, 1, g.k[0], g.k[1]] {
            candle_core::bail!(
                "depthwise conv input grad: weight {:?} for {c} channels",
                l2.dims()
            );
        }
        let mut gx = vec![0f32; n * c * h * w];
        if h * w > 0 {
            gx.par_chunks_mut(h * w).enumerate().for_each(|(p, gp)| {
                let ch = p % c;
                plan.input_grad(
                    &gy[p * oh * ow..(p + 1) * oh * ow],
                    &wk[ch * kk..(ch + 1) * kk],
                    gp,
                );
            });
        }
        Ok((CpuStorage::F32(gx), Shape::from((n, c, h, w))))
    }
}

/// Weight gradient: `x` `[N,C,H,W]`, `grad` `[N,C,oh,ow]` -> `[C,1,kh,kw]`.
struct DwWeightGrad(ConvGeom);

impl CustomOp2 for DwWeightGrad {
    fn name(&self) -> &'static str {
        "adaptivenet-depthwise-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let (n, c, h, w) = dims4(l1)?;
        let (gn, gc, oh, ow) = dims4(l2)?;
        if (gn, gc) != (n, c) || [oh, ow] != g.out {
            candle_core::bail!(
                "depthwise conv weight grad: gradient {:?} for input {:?} and output {:?}",
                l2.dims(),
                l1.dims(),
                g.out
            );
        }
        let x = slice(s1, l1, "input")?;
        let gy = slice(s2, l2, "output gradient")?;
        let plan = Taps::new(g, h, w);
        let kk = g.k[0] * g.k[1];
        let mut gw = vec![0f32; c * kk];
        if kk > 0 {
            gw.par_chunks_mut(kk).enumerate().for_each_init(
                || vec![0f32; kk * ow],
                |acc, (ch, gwc)| {
                    acc.fill(0.0);
                    for b in 0..n {
                        let p = b * c + ch;
                        plan.weight_grad(
                            &x[p * h * w..(p + 1) * h * w],
                            &gy[p * oh * ow..(p + 1) * oh * ow],
                            acc,
                        );
                    }
                    for (t, v) in gwc.iter_mut().enumerate() {
                        *v = acc[t * ow..(t + 1) * ow].iter().sum();
                    }
                },
            );
        }
        Ok((CpuStorage::F32(gw), Shape::from((c, 1, g.k[0], g.k[1]))))
    }
}
