//! Dense 2-D convolution (`group` = 1) on the CPU as one GEMM per sample,
//! forward and both gradients, with the samples in parallel on rayon's
//! global pool (each GEMM single-threaded):
//!
//! - forward: `y[n] = W · cols(x[n])`, `W` `[O, C·kh·kw]`;
//! - input gradient: `gx[n] = col2im(Wᵀ · g[n])`;
//! - weight and bias gradients: `gW = Σ_n g[n] · cols(x[n])ᵀ` and the
//!   row sums of `g[n]`, in one pass, summed in a fixed order (one partial
//!   sum per run of 8 samples), so results do not depend on scheduling.
//!
//! A 1x1 convolution with stride 1 and no padding is a plain GEMM on the
//! sample's `[C, H·W]` plane: no im2col at all. Otherwise `cols` is built
//! per sample from the tap geometry of [`super::geom`] (padding is never
//! materialised). The bias is fused: each output plane starts as its bias
//! and the GEMM accumulates onto it. A following Relu/Clip can be fused
//! too ([`super::activation::Clamp`]: applied to each sample's output while
//! it is in cache; backward, its mask is applied to each sample's gradient
//! inside the gradient kernels). Only the gradients of tracked arguments
//! are computed (`cpu::conv_backward`, shared with the depthwise kernel).

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::clamp_grad;
use super::activation::{masked, Clamp};
use super::cpu::{apply_conv, conv_backward, gemm, par_output, sum, In, Kernel, Mat, Op};
use super::geom::{ConvGeom, Taps};

/// Samples per partial sum of the weight gradient (fixed, not per thread,
/// so the result does not depend on the thread count).
pub(super) const GRAD_SAMPLES: usize = 8;

/// Convolution of `x` `[N,C,H,W]` with `w` `[O,C,kh,kw]` plus the bias
/// `b` `[O]` if any, then the activation `act` if any.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    geom: ConvGeom,
    act: Option<Clamp>,
) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let (o, ci, kh, kw) = w.dims4()?;
    if ci != c || [kh, kw] != geom.k {
        candle_core::bail!(
            "conv: weight {:?} does not fit {c} input channels and kernel {:?}",
            w.dims(),
            geom.k
        );
    }
    apply_conv(x, w, b, o, GemmConv { geom, act })
}

/// `act(conv(x, w) + b + r)`: the convolution with a residual input `r`
/// (`[N,O,oh,ow]`) added before the activation, as one op (a ResNet
/// block's second conv, its shortcut Add and Relu). The weight and bias
/// travel packed in one tensor (custom ops take three arguments); its
/// gradient is the weight-then-bias vector the gradient kernel gives.
pub fn conv2d_residual(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    r: &Tensor,
    geom: ConvGeom,
    act: Option<Clamp>,
) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let (o, ci, kh, kw) = w.dims4()?;
    if ci != c || [kh, kw] != geom.k || r.dims() != [n, o, geom.out[0], geom.out[1]] {
        candle_core::bail!(
            "conv: weight {:?} and residual {:?} do not fit input {:?} and kernel {:?}",
            w.dims(),
            r.dims(),
            x.dims(),
            geom.k
        );
    }
    let b = match b {
        Some(b) if b.elem_count() == o => b.reshape(o)?,
        Some(b) => candle_core::bail!("conv: bias {:?} for {o} output channels", b.dims()),
        None => Tensor::zeros(o, x.dtype(), x.device())?,
    };
    let wb = Tensor::cat(&[&w.flatten_all()?, &b], 0)?;
    x.contiguous()?.apply_op3(
        &wb,
        &r.contiguous()?,
        Op(GemmConvRes {
            conv: GemmConv { geom, act },
            w: [o, ci, kh, kw],
        }),
    )
}

/// Shapes of one convolution.
#[derive(Clone, Copy)]
struct Dims {
    c: usize,
    h: usize,
    w: usize,
}

impl Dims {
    fn plane(&self) -> usize {
        self.h * self.w
    }
}

/// Per-sample work of one geometry.
struct Conv<'a> {
    g: &'a ConvGeom,
    taps: Taps,
    d: Dims,
    pointwise: bool,
}

impl<'a> Conv<'a> {
    fn new(g: &'a ConvGeom, d: Dims) -> Conv<'a> {
        Conv {
            g,
            taps: Taps::new(g, d.h, d.w),
            d,
            pointwise: g.is_pointwise([d.h, d.w]),
        }
    }

    /// Rows of the column matrix (C·kh·kw).
    fn k(&self) -> usize {
        self.d.c * self.g.taps()
    }

    fn p(&self) -> usize {
        self.g.out_len()
    }

    /// Scratch for one sample's column matrix (empty when pointwise).
    fn scratch(&self) -> Vec<f32> {
        if self.pointwise {
            Vec::new()
        } else {
            vec![0f32; self.k() * self.p()]
        }
    }

    /// The column matrix of sample plane set `x` (`[C, H·W]`): `x` itself
    /// when pointwise, else built into `buf`.
    fn cols<'b>(&self, x: &'b [f32], buf: &'b mut [f32]) -> &'b [f32] {
        if self.pointwise {
            return x;
        }
        let (p, ow, w) = (self.p(), self.g.out[1], self.d.w);
        let kw = self.g.k[1];
        for ch in 0..self.d.c {
            let xc = &x[ch * self.d.plane()..(ch + 1) * self.d.plane()];
            for ky in 0..self.g.k[0] {
                let r = self.taps.rows[ky];
                for (kx, span) in self.taps.cols.iter().enumerate() {
                    let row = ((ch * self.g.k[0] + ky) * kw + kx) * p;
                    // zero only what no input position reaches (padding)
                    let block = &mut buf[row..row + p];
                    block[..r.lo * ow].fill(0.0);
                    block[r.hi * ow..].fill(0.0);
                    if span.lo > 0 || span.hi < ow {
                        for oy in r.lo..r.hi {
                            block[oy * ow..oy * ow + span.lo].fill(0.0);
                            block[oy * ow + span.hi..(oy + 1) * ow].fill(0.0);
                        }
                    }
                    let start = self.taps.col_start(span);
                    let len = span.hi - span.lo;
                    self.taps.for_each_row_of(ky, |oy, iy| {
                        let dst = &mut buf[row + oy * ow + span.lo..][..len];
                        let src = &xc[iy * w + start..];
                        if self.taps.sw == 1 {
                            dst.copy_from_slice(&src[..len]);
                        } else {
                            for (v, x) in dst.iter_mut().zip(src.iter().step_by(self.taps.sw)) {
                                *v = *x;
                            }
                        }
                    });
                }
            }
        }
        buf
    }

    /// Add the column-matrix gradient `cols` into the sample's input
    /// gradient `gx` (`[C, H·W]`, zeroed by the caller).
    fn col2im(&self, cols: &[f32], gx: &mut [f32]) {
        let (p, ow, w) = (self.p(), self.g.out[1], self.d.w);
        let kw = self.g.k[1];
        for ch in 0..self.d.c {
            let gc = &mut gx[ch * self.d.plane()..(ch + 1) * self.d.plane()];
            for ky in 0..self.g.k[0] {
                for (kx, span) in self.taps.cols.iter().enumerate() {
                    let row = ((ch * self.g.k[0] + ky) * kw + kx) * p;
                    let start = self.taps.col_start(span);
                    let len = span.hi - span.lo;
                    self.taps.for_each_row_of(ky, |oy, iy| {
                        let src = &cols[row + oy * ow + span.lo..][..len];
                        let dst = &mut gc[iy * w + start..];
                        if self.taps.sw == 1 {
                            for (a, b) in dst[..len].iter_mut().zip(src) {
                                *a += b;
                            }
                        } else {
                            for (a, b) in dst.iter_mut().step_by(self.taps.sw).zip(src) {
                                *a += b;
                            }
                        }
                    });
                }
            }
        }
    }
}

/// Forward: `x` `[N,C,H,W]`, `w` `[O,C,kh,kw]`, `b` `[O]` -> `[N,O,oh,ow]`.
struct GemmConv {
    geom: ConvGeom,
    act: Option<Clamp>,
}

impl Kernel<3> for GemmConv {
    const NAME: &'static str = "adaptivenet-gemm-conv2d";

    fn run(&self, [x, wk, bias]: [In<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let g = &self.geom;
        let (_, c, _, _) = x.dims4("input")?;
        let (o, ci, kh, kw) = wk.dims4("weight")?;
        if ci != c || [kh, kw] != g.k || bias.dims != [o] {
            candle_core::bail!(
                "weight {:?} and bias {:?} for input {:?}",
                wk.dims,
                bias.dims,
                x.dims
            );
        }
        self.forward(x, wk.data, o, bias.data, None)
    }

    fn backward(
        &self,
        args: [&Tensor; 3],
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let (geom, act) = (self.geom, self.act);
        conv_backward(
            args,
            res,
            grad,
            |in_hw| InputGrad { geom, in_hw, act },
            ParamsGrad { geom, act },
        )
    }
}

impl GemmConv {
    /// `act(W · cols(x[n]) + bias (+ residual[n]))` for every sample.
    fn forward(
        &self,
        x: In<'_>,
        wk: &[f32],
        o: usize,
        bias: &[f32],
        residual: Option<&[f32]>,
    ) -> Result<(Vec<f32>, Shape)> {
        let g = &self.geom;
        let (n, c, h, w) = x.dims4("input")?;
        let x = x.data;
        let conv = Conv::new(g, Dims { c, h, w });
        let (k, p) = (conv.k(), conv.p());
        let y = par_output(
            n * o * p,
            o * p,
            || conv.scratch(),
            |buf, b, yn| {
                let xn = &x[b * c * h * w..(b + 1) * c * h * w];
                let cols = conv.cols(xn, buf);
                match residual {
                    Some(r) => {
                        let rn = &r[b * o * p..(b + 1) * o * p];
                        for ((row, rr), &bv) in yn.chunks_mut(p).zip(rn.chunks(p)).zip(bias) {
                            for (v, &u) in row.iter_mut().zip(rr) {
                                *v = bv + u;
                            }
                        }
                    }
                    None => {
                        for (row, &bv) in yn.chunks_mut(p).zip(bias) {
                            row.fill(bv);
                        }
                    }
                }
                gemm(
                    o,
                    p,
                    k,
                    yn,
                    true,
                    Mat {
                        data: wk,
                        rs: k,
                        cs: 1,
                    },
                    Mat {
                        data: cols,
                        rs: p,
                        cs: 1,
                    },
                )?;
                if let Some(act) = &self.act {
                    act.apply_slice(yn);
                }
                Ok(())
            },
        )?;
        Ok((y, Shape::from((n, o, g.out[0], g.out[1]))))
    }
}

/// Forward with a residual: `x` `[N,C,H,W]`, weight and bias packed
/// (`[O·C·kh·kw + O]`), `r` `[N,O,oh,ow]` -> `[N,O,oh,ow]`.
struct GemmConvRes {
    conv: GemmConv,
    /// The weight's dims.
    w: [usize; 4],
}

impl Kernel<3> for GemmConvRes {
    const NAME: &'static str = "adaptivenet-gemm-conv2d-residual";

    fn run(&self, [x, wb, r]: [In<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let (n, c, _, _) = x.dims4("input")?;
        let [o, ci, kh, kw] = self.w;
        let g = &self.conv.geom;
        let nw = o * ci * kh * kw;
        if ci != c || wb.data.len() != nw + o || r.dims != [n, o, g.out[0], g.out[1]] {
            candle_core::bail!(
                "packed weight {:?} and residual {:?} for weight {:?} and input {:?}",
                wb.dims,
                r.dims,
                self.w,
                x.dims
            );
        }
        let (wk, bias) = wb.data.split_at(nw);
        self.conv.forward(x, wk, o, bias, Some(r.data))
    }

    fn backward(
        &self,
        [x, wb, r]: [&Tensor; 3],
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let (geom, act) = (self.conv.geom, self.conv.act);
        let grad_c = grad.contiguous()?;
        let res_d = res.detach();
        let gx = if x.track_op() {
            let (_, _, h, wd) = x.dims4()?;
            let nw = self.w.iter().product();
            let w = wb.detach().narrow(0, 0, nw)?.reshape(self.w.to_vec())?;
            let k = InputGrad {
                geom,
                in_hw: [h, wd],
                act,
            };
            Some(grad_c.apply_op3_no_bwd(&w, &res_d, &Op(k))?)
        } else {
            None
        };
        // the packed parameters' gradient is the weight-then-bias vector
        // of the gradient kernel
        let gwb = if wb.track_op() {
            let k = ParamsGrad { geom, act };
            Some(x.detach().apply_op3_no_bwd(&grad_c, &res_d, &Op(k))?)
        } else {
            None
        };
        let gr = if r.track_op() {
            Some(match act {
                Some(act) => clamp_grad(res, grad, act)?,
                None => grad.contiguous()?,
            })
        } else {
            None
        };
        Ok([gx, gwb, gr])
    }
}

/// Input gradient: `grad` `[N,O,oh,ow]`, `w` `[O,C,kh,kw]` and the
/// output `[N,O,oh,ow]` (for the mask of `act`) -> `[N,C,H,W]`.
struct InputGrad {
    geom: ConvGeom,
    in_hw: [usize; 2],
    act: Option<Clamp>,
}

impl Kernel<3> for InputGrad {
    const NAME: &'static str = "adaptivenet-gemm-conv2d-input-grad";

    fn run(&self, [gy, wk, res]: [In<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let g = &self.geom;
        let (n, o, oh, ow) = gy.dims4("output gradient")?;
        let (wo, c, kh, kw) = wk.dims4("weight")?;
        if wo != o || [kh, kw] != g.k || [oh, ow] != g.out {
            candle_core::bail!(
                "gradient {:?} and weight {:?} for output {:?}",
                gy.dims,
                wk.dims,
                g.out
            );
        }
        if res.dims != gy.dims {
            candle_core::bail!("output {:?} for gradient {:?}", res.dims, gy.dims);
        }
        let (gy, wk, res) = (gy.data, wk.data, res.data);
        let [h, w] = self.in_hw;
        if let Some(t) = self.transposed() {
            return Ok((
                t.input_grad(gy, res, self.act, wk, n, o, c)?,
                Shape::from((n, c, h, w)),
            ));
        }
        let conv = Conv::new(g, Dims { c, h, w });
        let (k, p) = (conv.k(), conv.p());
        let gx = par_output(
            n * c * h * w,
            c * h * w,
            || (conv.scratch(), self.mask_scratch(o * p)),
            |(buf, mbuf), b, gxn| {
                let at = b * o * p..(b + 1) * o * p;
                let gn = masked(self.act, &res[at.clone()], &gy[at], mbuf);
                let wt = Mat {
                    data: wk,
                    rs: 1,
                    cs: k,
                };
                let gm = Mat {
                    data: gn,
                    rs: p,
                    cs: 1,
                };
                if conv.pointwise {
                    gemm(k, p, o, gxn, false, wt, gm)
                } else {
                    gemm(k, p, o, buf, false, wt, gm)?;
                    conv.col2im(buf, gxn);
                    Ok(())
                }
            },
        )?;
        Ok((gx, Shape::from((n, c, h, w))))
    }
}

impl InputGrad {
    /// Scratch for one sample's masked gradient (empty without `act`).
    fn mask_scratch(&self, len: usize) -> Vec<f32> {
        vec![0f32; if self.act.is_some() { len } else { 0 }]
    }

    /// With stride 1 (and no 1x1 shortcut), the input gradient is itself a
    /// convolution: of the output gradient with the flipped, transposed
    /// kernel, padded by `d·(k-1) - pad`. That GEMM has `O·kh·kw` as its
    /// inner dimension instead of `O` (and needs no col2im), which is much
    /// faster for the narrow layers here. None when it does not apply.
    fn transposed(&self) -> Option<TransposedGrad> {
        let g = &self.geom;
        if g.s != [1, 1] || g.is_pointwise(self.in_hw) {
            return None;
        }
        let pad = [
            (g.d[0] * (g.k[0] - 1)).checked_sub(g.pad[0])?,
            (g.d[1] * (g.k[1] - 1)).checked_sub(g.pad[1])?,
        ];
        Some(TransposedGrad {
            geom: ConvGeom {
                k: g.k,
                s: [1, 1],
                d: g.d,
                pad,
                out: self.in_hw,
            },
            out_hw: g.out,
        })
    }
}

/// The input gradient of a stride-1 convolution as a forward convolution.
struct TransposedGrad {
    /// Geometry on the output gradient (input size: the forward's output).
    geom: ConvGeom,
    out_hw: [usize; 2],
}

impl TransposedGrad {
    #[allow(clippy::too_many_arguments)]
    fn input_grad(
        &self,
        gy: &[f32],
        res: &[f32],
        act: Option<Clamp>,
        wk: &[f32],
        n: usize,
        o: usize,
        c: usize,
    ) -> Result<Vec<f32>> {
        let g = &self.geom;
        let kk = g.taps();
        // wt[c][o][ky][kx] = w[o][c][kh-1-ky][kw-1-kx]
        let mut wt = vec![0f32; c * o * kk];
        for oc in 0..o {
            for ic in 0..c {
                for t in 0..kk {
                    wt[(ic * o + oc) * kk + (kk - 1 - t)] = wk[(oc * c + ic) * kk + t];
                }
            }
        }
        let [oh, ow] = self.out_hw;
        let conv = Conv::new(g, Dims { c: o, h: oh, w: ow });
        let (k, p) = (conv.k(), conv.p());
        let len = o * oh * ow;
        par_output(
            n * c * p,
            c * p,
            || {
                (
                    conv.scratch(),
                    vec![0f32; if act.is_some() { len } else { 0 }],
                )
            },
            |(buf, mbuf), b, gxn| {
                let at = b * len..(b + 1) * len;
                let gn = masked(act, &res[at.clone()], &gy[at], mbuf);
                let cols = conv.cols(gn, buf);
                gemm(
                    c,
                    p,
                    k,
                    gxn,
                    false,
                    Mat {
                        data: &wt,
                        rs: k,
                        cs: 1,
                    },
                    Mat {
                        data: cols,
                        rs: p,
                        cs: 1,
                    },
                )
            },
        )
    }
}

/// Weight and bias gradients: `x` `[N,C,H,W]`, `grad` `[N,O,oh,ow]` and
/// the output (for the mask of `act`) -> `[O·C·kh·kw + O]` (the weight
/// gradient, then the bias gradient).
struct ParamsGrad {
    geom: ConvGeom,
    act: Option<Clamp>,
}

impl Kernel<3> for ParamsGrad {
    const NAME: &'static str = "adaptivenet-gemm-conv2d-params-grad";

    fn run(&self, [x, gy, res]: [In<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let g = &self.geom;
        let (n, c, h, w) = x.dims4("input")?;
        let (gn, o, oh, ow) = gy.dims4("output gradient")?;
        if gn != n || [oh, ow] != g.out || res.dims != gy.dims {
            candle_core::bail!(
                "gradient {:?} and output {:?} for input {:?} and output size {:?}",
                gy.dims,
                res.dims,
                x.dims,
                g.out
            );
        }
        let (x, gy, res) = (x.data, gy.data, res.data);
        let conv = Conv::new(g, Dims { c, h, w });
        let (k, p) = (conv.k(), conv.p());
        let mask_len = if self.act.is_some() { o * p } else { 0 };
        // One partial sum per run of GRAD_SAMPLES samples, added in order:
        // the same sums in the same order whatever the thread count, so a
        // sharded elastify (one thread per shard) gives the weights of one
        // process with several threads bit for bit.
        let per = GRAD_SAMPLES;
        let parts = n.div_ceil(per).max(1);
        let partials = (0..parts)
            .into_par_iter()
            .map(|t| -> Result<Vec<f32>> {
                let mut acc = vec![0f32; o * k + o];
                let mut buf = conv.scratch();
                let mut mbuf = vec![0f32; mask_len];
                for b in (t * per)..((t + 1) * per).min(n) {
                    let xn = &x[b * c * h * w..(b + 1) * c * h * w];
                    let at = b * o * p..(b + 1) * o * p;
                    let gn = masked(self.act, &res[at.clone()], &gy[at], &mut mbuf);
                    let cols = conv.cols(xn, &mut buf);
                    let (aw, ab) = acc.split_at_mut(o * k);
                    gemm(
                        o,
                        k,
                        p,
                        aw,
                        true,
                        Mat {
                            data: gn,
                            rs: p,
                            cs: 1,
                        },
                        Mat {
                            data: cols,
                            rs: 1,
                            cs: p,
                        },
                    )?;
                    for (a, row) in ab.iter_mut().zip(gn.chunks_exact(p.max(1))) {
                        *a += sum(row);
                    }
                }
                Ok(acc)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut gw = vec![0f32; o * k + o];
        for part in partials {
            for (a, b) in gw.iter_mut().zip(part) {
                *a += b;
            }
        }
        Ok((gw, Shape::from(o * k + o)))
    }
}
