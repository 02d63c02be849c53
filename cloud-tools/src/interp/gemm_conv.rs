//! Dense 2-D convolution (`group` = 1) on the CPU as one GEMM per sample,
//! forward and both gradients, with the samples in parallel on rayon's
//! global pool (each GEMM single-threaded):
//!
//! - forward: `y[n] = W · cols(x[n])`, `W` `[O, C·kh·kw]`;
//! - input gradient: `gx[n] = col2im(Wᵀ · g[n])`;
//! - weight gradient: `gW = Σ_n g[n] · cols(x[n])ᵀ`, summed in a fixed
//!   order (one partial sum per contiguous slice of the batch), so results
//!   do not depend on scheduling.
//!
//! A 1x1 convolution with stride 1 and no padding is a plain GEMM on the
//! sample's `[C, H·W]` plane: no im2col at all. Otherwise `cols` is built
//! per sample from the tap geometry of [`super::geom`] (padding is never
//! materialised). The bias is fused: each output plane starts as its bias
//! and the GEMM accumulates onto it; its gradient is one pass over the
//! output gradient ([`bias_grad`], shared with the depthwise kernel). A
//! following Relu/Clip can be fused too ([`super::activation::Clamp`]:
//! applied to each sample's output while it is in cache, its mask applied
//! to the incoming gradient). Only the gradients of tracked arguments are
//! computed.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::{clamp_grad, Clamp};
use super::geom::{ConvGeom, Taps};

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
    let b = bias_or_zeros(b, o, x)?;
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    x.apply_op3(&w, &b, GemmConv { geom, act })
}

/// The bias as a contiguous `[o]` tensor (zeros, untracked, when absent).
pub(super) fn bias_or_zeros(b: Option<&Tensor>, o: usize, like: &Tensor) -> Result<Tensor> {
    match b {
        Some(b) => {
            if b.elem_count() != o {
                candle_core::bail!("conv: bias {:?} for {o} output channels", b.dims());
            }
            b.reshape(o)?.contiguous()
        }
        None => Tensor::zeros(o, like.dtype(), like.device()),
    }
}

/// Gradient of a per-channel bias: `grad` `[N,O,...]` summed over all but
/// the channel axis, shaped like `b`.
pub(super) fn bias_grad(grad: &Tensor, b: &Tensor) -> Result<Tensor> {
    grad.apply_op1_no_bwd(&BiasGrad)?.reshape(b.shape())
}

/// The sum of `a` in 8 interleaved partial sums (a plain `iter().sum()`
/// is one dependent chain of adds: latency-bound, never vectorised).
fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (s, v) in acc.iter_mut().zip(c) {
            *s += v;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `[N,O,...]` -> `[O]`: the sum over samples and positions per channel.
struct BiasGrad;

impl CustomOp1 for BiasGrad {
    fn name(&self) -> &'static str {
        "adaptivenet-conv-bias-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        if dims.len() < 2 {
            candle_core::bail!("conv bias grad: gradient {dims:?} has no channel axis");
        }
        let (n, o) = (dims[0], dims[1]);
        let p: usize = dims[2..].iter().product();
        let g = slice(s, l, "output gradient")?;
        let mut gb = vec![0f32; o];
        gb.par_iter_mut().enumerate().for_each(|(ch, acc)| {
            *acc = (0..n)
                .map(|b| sum(&g[(b * o + ch) * p..(b * o + ch + 1) * p]))
                .sum();
        });
        Ok((CpuStorage::F32(gb), Shape::from(o)))
    }
}

/// A row-major view of a matrix inside a slice: element (i, j) is at
/// `i * rs + j * cs`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl Mat<'_> {
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst` (`m` x `n`, contiguous) = (`dst` +, if `accumulate`) `lhs` (`m` x
/// `k`) · `rhs` (`k` x `n`), single-threaded.
fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
) -> Result<()> {
    if dst.len() < m * n || !lhs.fits(m, k) || !rhs.fits(k, n) {
        candle_core::bail!("conv gemm: operands do not fit {m}x{k} · {k}x{n}");
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return Ok(());
    }
    // SAFETY: the checks above keep every index the kernel reads
    // (`i * rs + j * cs` within each operand's shape) and writes
    // (`i * n + j`, i < m, j < n) inside the borrowed slices; `dst` is
    // borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
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

/// The f32 data of a contiguous CPU tensor.
pub(super) fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("conv: {what} must be f32");
    };
    if !l.is_contiguous() {
        candle_core::bail!("conv: {what} must be contiguous");
    }
    let start = l.start_offset();
    let n = l.shape().elem_count();
    v.get(start..start + n)
        .ok_or_else(|| candle_core::Error::Msg(format!("conv: {what} out of bounds")))
}

/// Forward: `x` `[N,C,H,W]`, `w` `[O,C,kh,kw]`, `b` `[O]` -> `[N,O,oh,ow]`.
struct GemmConv {
    geom: ConvGeom,
    act: Option<Clamp>,
}

impl CustomOp3 for GemmConv {
    fn name(&self) -> &'static str {
        "adaptivenet-gemm-conv2d"
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
        let (n, c, h, w) = l1.shape().dims4()?;
        let (o, ci, kh, kw) = l2.shape().dims4()?;
        if ci != c || [kh, kw] != g.k || l3.dims() != [o] {
            candle_core::bail!(
                "conv: weight {:?} and bias {:?} for input {:?}",
                l2.dims(),
                l3.dims(),
                l1.dims()
            );
        }
        let x = slice(s1, l1, "input")?;
        let wk = slice(s2, l2, "weight")?;
        let bias = slice(s3, l3, "bias")?;
        let conv = Conv::new(g, Dims { c, h, w });
        let (k, p) = (conv.k(), conv.p());
        let mut y = vec![0f32; n * o * p];
        if o * p > 0 {
            y.par_chunks_mut(o * p).enumerate().try_for_each_init(
                || conv.scratch(),
                |buf, (b, yn)| {
                    let xn = &x[b * c * h * w..(b + 1) * c * h * w];
                    let cols = conv.cols(xn, buf);
                    for (row, &bv) in yn.chunks_mut(p).zip(bias) {
                        row.fill(bv);
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
                    Ok::<(), candle_core::Error>(())
                },
            )?;
        }
        Ok((CpuStorage::F32(y), Shape::from((n, o, g.out[0], g.out[1]))))
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
                &InputGrad {
                    geom: self.geom,
                    in_hw: [h, wd],
                },
            )?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(x.detach().apply_op2_no_bwd(&grad, &WeightGrad(self.geom))?)
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

/// Input gradient: `grad` `[N,O,oh,ow]`, `w` `[O,C,kh,kw]` -> `[N,C,H,W]`.
struct InputGrad {
    geom: ConvGeom,
    in_hw: [usize; 2],
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "adaptivenet-gemm-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geom;
        let (n, o, oh, ow) = l1.shape().dims4()?;
        let (wo, c, kh, kw) = l2.shape().dims4()?;
        if wo != o || [kh, kw] != g.k || [oh, ow] != g.out {
            candle_core::bail!(
                "conv input grad: gradient {:?} and weight {:?} for output {:?}",
                l1.dims(),
                l2.dims(),
                g.out
            );
        }
        let gy = slice(s1, l1, "output gradient")?;
        let wk = slice(s2, l2, "weight")?;
        let [h, w] = self.in_hw;
        if let Some(t) = self.transposed() {
            return Ok((
                CpuStorage::F32(t.input_grad(gy, wk, n, o, c)?),
                Shape::from((n, c, h, w)),
            ));
        }
        let conv = Conv::new(g, Dims { c, h, w });
        let (k, p) = (conv.k(), conv.p());
        let mut gx = vec![0f32; n * c * h * w];
        if c * h * w > 0 {
            gx.par_chunks_mut(c * h * w).enumerate().try_for_each_init(
                || conv.scratch(),
                |buf, (b, gxn)| {
                    let gn = &gy[b * o * p..(b + 1) * o * p];
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
        }
        Ok((CpuStorage::F32(gx), Shape::from((n, c, h, w))))
    }
}

impl InputGrad {
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
    fn input_grad(&self, gy: &[f32], wk: &[f32], n: usize, o: usize, c: usize) -> Result<Vec<f32>> {
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
        let mut gx = vec![0f32; n * c * p];
        if c * p > 0 {
            gx.par_chunks_mut(c * p).enumerate().try_for_each_init(
                || conv.scratch(),
                |buf, (b, gxn)| {
                    let cols = conv.cols(&gy[b * o * oh * ow..(b + 1) * o * oh * ow], buf);
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
            )?;
        }
        Ok(gx)
    }
}

/// Weight gradient: `x` `[N,C,H,W]`, `grad` `[N,O,oh,ow]` -> `[O,C,kh,kw]`.
struct WeightGrad(ConvGeom);

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "adaptivenet-gemm-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let (n, c, h, w) = l1.shape().dims4()?;
        let (gn, o, oh, ow) = l2.shape().dims4()?;
        if gn != n || [oh, ow] != g.out {
            candle_core::bail!(
                "conv weight grad: gradient {:?} for input {:?} and output {:?}",
                l2.dims(),
                l1.dims(),
                g.out
            );
        }
        let x = slice(s1, l1, "input")?;
        let gy = slice(s2, l2, "output gradient")?;
        let conv = Conv::new(g, Dims { c, h, w });
        let (k, p) = (conv.k(), conv.p());
        // One partial sum per contiguous slice of the batch, added in order.
        let parts = rayon::current_num_threads().clamp(1, n.max(1));
        let per = n.div_ceil(parts.max(1)).max(1);
        let partials = (0..parts)
            .into_par_iter()
            .map(|t| -> Result<Vec<f32>> {
                let mut acc = vec![0f32; o * k];
                let mut buf = conv.scratch();
                for b in (t * per)..((t + 1) * per).min(n) {
                    let xn = &x[b * c * h * w..(b + 1) * c * h * w];
                    let cols = conv.cols(xn, &mut buf);
                    gemm(
                        o,
                        k,
                        p,
                        &mut acc,
                        true,
                        Mat {
                            data: &gy[b * o * p..(b + 1) * o * p],
                            rs: p,
                            cs: 1,
                        },
                        Mat {
                            data: cols,
                            rs: 1,
                            cs: p,
                        },
                    )?;
                }
                Ok(acc)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut gw = vec![0f32; o * k];
        for part in partials {
            for (a, b) in gw.iter_mut().zip(part) {
                *a += b;
            }
        }
        Ok((CpuStorage::F32(gw), Shape::from((o, c, g.k[0], g.k[1]))))
    }
}
