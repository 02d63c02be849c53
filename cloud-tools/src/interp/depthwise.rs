//! Depthwise 2-D convolution (one filter per channel, ONNX `Conv` with
//! `group` = channels) on the CPU: the forward pass and both gradients as
//! direct loops over each (sample, channel) plane, without im2col and
//! without splitting the tensor per channel. Planes (forward, input
//! gradient) and channels (weight gradient) run in parallel on rayon's
//! global pool, the one candle's CPU kernels and GEMM use.
//!
//! Each plane is first copied into padded phase form (`Phases`): zero
//! padding made explicit and the rows and columns split by their phase
//! modulo the stride. Every kernel tap is then one shifted window of one
//! phase plane, and each pass is one long contiguous loop per tap over the
//! whole plane (rows included), which vectorises; short output rows (14
//! wide in MobileNetV2 at stride 2) left the row-by-row loops mostly
//! scalar, and strided reads did not vectorise at all.
//!
//! Padding is given per side (top, left) with the output size, so any
//! explicit or `auto_pad` padding, stride and dilation is exact: input rows
//! and columns no window reaches get a zero gradient. The bias is fused
//! (each output plane starts as its channel's bias), and so can be a
//! following Relu/Clip, as in `gemm_conv`; backward, its mask is applied to
//! each plane's gradient in the gradient kernels.

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::{masked, Clamp};
use super::cpu::{apply_conv, conv_backward, dot, par_output, sum, In, Kernel};
use super::geom::ConvGeom;

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
    apply_conv(x, w, b, c, DwConv { geom, act })
}

/// The padded phase form of an `h` x `w` input plane for one geometry.
///
/// Padded input row `r` (input row `r - pad_top`) is row `r / sh` of the
/// row phase `r % sh`, likewise for columns, so `P[p][q][i][j]` is padded
/// input `(i·sh + p, j·sw + q)`. Output `(oy, ox)` of tap `(ky, kx)` reads
/// padded input `(oy·sh + ky·dh, ox·sw + kx·dw)`: phase
/// `((ky·dh) % sh, (kx·dw) % sw)` at `(oy + ky·dh / sh, ox + kx·dw / sw)`.
/// With output positions laid out `wq` apart per row (`ext` layout, the
/// columns `ow..wq` unused), every tap is a fixed shift of the flat index.
#[derive(Debug, Clone)]
pub(super) struct Phases {
    h: usize,
    w: usize,
    s: [usize; 2],
    pad: [usize; 2],
    out: [usize; 2],
    /// Rows and columns of one phase plane.
    hq: usize,
    wq: usize,
    /// Per tap (kernel row-major): offset of its window in the phase form.
    taps: Vec<usize>,
}

impl Phases {
    pub(super) fn new(g: &ConvGeom, h: usize, w: usize) -> Phases {
        let [oh, ow] = g.out;
        let (s, d) = (g.s, g.d);
        let reach = |k: usize, axis: usize| (d[axis] * k.saturating_sub(1)) / s[axis];
        let hq = oh + reach(g.k[0], 0);
        let wq = ow + reach(g.k[1], 1);
        let mut taps = Vec::with_capacity(g.taps());
        for ky in 0..g.k[0] {
            for kx in 0..g.k[1] {
                let (ry, rx) = (ky * d[0], kx * d[1]);
                let phase = (ry % s[0]) * s[1] + rx % s[1];
                taps.push((phase * hq + ry / s[0]) * wq + rx / s[1]);
            }
        }
        Phases {
            h,
            w,
            s,
            pad: g.pad,
            out: g.out,
            hq,
            wq,
            taps,
        }
    }

    /// Length of the phase form.
    pub(super) fn len(&self) -> usize {
        self.s[0] * self.s[1] * self.hq * self.wq
    }

    /// Length of a plane in `ext` layout (up to the last output).
    pub(super) fn ext_len(&self) -> usize {
        let [oh, ow] = self.out;
        if oh == 0 || ow == 0 {
            0
        } else {
            (oh - 1) * self.wq + ow
        }
    }

    /// The input columns of row `iy` that some window reaches, by column
    /// phase: `f(ix0, at, len)` for input columns `ix0 + t·sw` (t <
    /// `len`), which live at `at + t` in the phase form.
    #[inline]
    fn row_runs(&self, iy: usize, mut f: impl FnMut(usize, usize, usize)) {
        let (s0, s1) = (self.s[0], self.s[1]);
        let r = iy + self.pad[0];
        let i = r / s0;
        if i >= self.hq {
            return;
        }
        let pl = self.pad[1];
        for q in 0..s1 {
            // first input column of phase q, and its phase column
            let ix0 = (q + s1 - pl % s1) % s1;
            if ix0 >= self.w {
                continue;
            }
            let j0 = (ix0 + pl) / s1;
            if j0 >= self.wq {
                continue;
            }
            let len = (self.w - ix0).div_ceil(s1).min(self.wq - j0);
            let at = (((r % s0) * s1 + q) * self.hq + i) * self.wq + j0;
            f(ix0, at, len);
        }
    }

    /// Copy plane `x` into phase form `p`. Positions no input maps to
    /// (the padding) are never written: `p` must start zeroed, and stays
    /// valid for the next plane.
    pub(super) fn split(&self, x: &[f32], p: &mut [f32]) {
        let s1 = self.s[1];
        for iy in 0..self.h {
            let row = &x[iy * self.w..(iy + 1) * self.w];
            self.row_runs(iy, |ix0, at, len| {
                let dst = &mut p[at..at + len];
                let src = &row[ix0..ix0 + (len - 1) * s1 + 1];
                if s1 == 1 {
                    dst.copy_from_slice(src);
                } else if s1 == 2 {
                    // stride 2 as indexed loads: vectorised as a de-interleave
                    for (t, d) in dst.iter_mut().enumerate() {
                        *d = src[2 * t];
                    }
                } else {
                    for (d, v) in dst.iter_mut().zip(src.iter().step_by(s1)) {
                        *d = *v;
                    }
                }
            });
        }
    }

    /// Plane `gx` from the phase-form gradient `gp` (inputs no window
    /// reaches get 0).
    pub(super) fn unsplit(&self, gp: &[f32], gx: &mut [f32]) {
        let s1 = self.s[1];
        for iy in 0..self.h {
            let row = &mut gx[iy * self.w..(iy + 1) * self.w];
            row.fill(0.0);
            self.row_runs(iy, |ix0, at, len| {
                let src = &gp[at..at + len];
                if s1 == 1 {
                    row[ix0..ix0 + len].copy_from_slice(src);
                } else {
                    for (d, v) in row[ix0..].iter_mut().step_by(s1).zip(src) {
                        *d = *v;
                    }
                }
            });
        }
    }

    /// `ext[oy·wq + ox] = g[oy·ow + ox]` (the unused columns of `ext` are
    /// never written: it must start zeroed, and stays valid).
    pub(super) fn to_ext(&self, g: &[f32], ext: &mut [f32]) {
        let ow = self.out[1];
        for (oy, row) in g.chunks_exact(ow.max(1)).enumerate() {
            ext[oy * self.wq..oy * self.wq + ow].copy_from_slice(row);
        }
    }

    /// y (`[oh·ow]`) = bias + Σ_taps w · window, via `ext` scratch.
    pub(super) fn forward(&self, p: &[f32], wk: &[f32], bias: f32, ext: &mut [f32], y: &mut [f32]) {
        let n = self.ext_len();
        let ext = &mut ext[..n];
        ext.fill(bias);
        for (&wv, &off) in wk.iter().zip(&self.taps) {
            for (a, b) in ext.iter_mut().zip(&p[off..off + n]) {
                *a += wv * b;
            }
        }
        let ow = self.out[1];
        for (oy, row) in y.chunks_exact_mut(ow.max(1)).enumerate() {
            row.copy_from_slice(&ext[oy * self.wq..oy * self.wq + ow]);
        }
    }

    /// Phase-form input gradient `gp` = Σ_taps w · shifted `g_ext`.
    pub(super) fn input_grad(&self, g_ext: &[f32], wk: &[f32], gp: &mut [f32]) {
        let n = self.ext_len();
        gp.fill(0.0);
        for (&wv, &off) in wk.iter().zip(&self.taps) {
            for (a, b) in gp[off..off + n].iter_mut().zip(&g_ext[..n]) {
                *a += wv * b;
            }
        }
    }

    /// `acc[t][i] += g_ext[i] · window_t[i]`: per-tap partial sums by
    /// position (`acc` is `taps · ext_len`), an elementwise multiply-add.
    fn weight_grad(&self, p: &[f32], g_ext: &[f32], acc: &mut [f32]) {
        let n = self.ext_len();
        for (t, &off) in self.taps.iter().enumerate() {
            let a = &mut acc[t * n..(t + 1) * n];
            for ((a, u), v) in a.iter_mut().zip(&g_ext[..n]).zip(&p[off..off + n]) {
                *a += u * v;
            }
        }
    }

    /// `out[t] += Σ_i g_ext[i] · window_t[i]` for every tap: one plane's
    /// contribution to its channel's weight gradient, reduced at once
    /// (the fused expansion + depthwise kernel, which goes sample by
    /// sample rather than channel by channel).
    pub(super) fn weight_grad_dot(&self, p: &[f32], g_ext: &[f32], out: &mut [f32]) {
        let n = self.ext_len();
        for (o, &off) in out.iter_mut().zip(&self.taps) {
            *o += dot(&g_ext[..n], &p[off..off + n]);
        }
    }
}

/// Forward: `x` `[N,C,H,W]`, `w` `[C,1,kh,kw]`, `b` `[C]` -> `[N,C,oh,ow]`.
struct DwConv {
    geom: ConvGeom,
    act: Option<Clamp>,
}

impl Kernel<3> for DwConv {
    const NAME: &'static str = "adaptivenet-depthwise-conv2d";

    fn run(&self, [x, wk, bias]: [In<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let g = &self.geom;
        let (n, c, h, w) = x.dims4("input")?;
        if wk.dims != [c, 1, g.k[0], g.k[1]] || bias.dims != [c] {
            candle_core::bail!(
                "weight {:?} and bias {:?} for {c} channels",
                wk.dims,
                bias.dims
            );
        }
        let (x, wk, bias) = (x.data, wk.data, bias.data);
        let (oh, ow) = (g.out[0], g.out[1]);
        let ph = Phases::new(g, h, w);
        let kk = g.taps();
        let y = par_output(
            n * c * oh * ow,
            oh * ow,
            || (vec![0f32; ph.len()], vec![0f32; ph.ext_len()]),
            |(p, ext), pl, yp| {
                let ch = pl % c;
                ph.split(&x[pl * h * w..(pl + 1) * h * w], p);
                ph.forward(p, &wk[ch * kk..(ch + 1) * kk], bias[ch], ext, yp);
                if let Some(act) = &self.act {
                    act.apply_slice(yp);
                }
                Ok(())
            },
        )?;
        Ok((y, Shape::from((n, c, oh, ow))))
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
            |in_hw| DwInputGrad { geom, in_hw, act },
            DwParamsGrad { geom, act },
        )
    }
}

/// Input gradient: `grad` `[N,C,oh,ow]`, `w` `[C,1,kh,kw]` and the output
/// (for the mask of `act`) -> `[N,C,H,W]`.
struct DwInputGrad {
    geom: ConvGeom,
    in_hw: [usize; 2],
    act: Option<Clamp>,
}

impl Kernel<3> for DwInputGrad {
    const NAME: &'static str = "adaptivenet-depthwise-conv2d-input-grad";

    fn run(&self, [gy, wk, res]: [In<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let g = &self.geom;
        let (n, c, oh, ow) = gy.dims4("output gradient")?;
        if [oh, ow] != g.out || wk.dims != [c, 1, g.k[0], g.k[1]] || res.dims != gy.dims {
            candle_core::bail!(
                "gradient {:?} and weight {:?} for output {:?}",
                gy.dims,
                wk.dims,
                g.out
            );
        }
        let (gy, wk, res) = (gy.data, wk.data, res.data);
        let [h, w] = self.in_hw;
        let ph = Phases::new(g, h, w);
        let kk = g.taps();
        let gx = par_output(
            n * c * h * w,
            h * w,
            || {
                (
                    vec![0f32; ph.len()],
                    vec![0f32; ph.ext_len()],
                    vec![0f32; oh * ow],
                )
            },
            |(gp, ext, mbuf), pl, gxp| {
                let ch = pl % c;
                let at = pl * oh * ow..(pl + 1) * oh * ow;
                ph.to_ext(masked(self.act, &res[at.clone()], &gy[at], mbuf), ext);
                ph.input_grad(ext, &wk[ch * kk..(ch + 1) * kk], gp);
                ph.unsplit(gp, gxp);
                Ok(())
            },
        )?;
        Ok((gx, Shape::from((n, c, h, w))))
    }
}

/// Weight and bias gradients: `x` `[N,C,H,W]`, `grad` `[N,C,oh,ow]` and
/// the output (for the mask of `act`) -> `[C·kh·kw + C]` (the weight
/// gradient, then the bias gradient). Channels run in parallel, each
/// summing its samples in order.
struct DwParamsGrad {
    geom: ConvGeom,
    act: Option<Clamp>,
}

impl Kernel<3> for DwParamsGrad {
    const NAME: &'static str = "adaptivenet-depthwise-conv2d-params-grad";

    fn run(&self, [x, gy, res]: [In<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let g = &self.geom;
        let (n, c, h, w) = x.dims4("input")?;
        let (gn, gc, oh, ow) = gy.dims4("output gradient")?;
        if (gn, gc) != (n, c) || [oh, ow] != g.out || res.dims != gy.dims {
            candle_core::bail!(
                "gradient {:?} for input {:?} and output {:?}",
                gy.dims,
                x.dims,
                g.out
            );
        }
        let (x, gy, res) = (x.data, gy.data, res.data);
        let ph = Phases::new(g, h, w);
        let kk = g.taps();
        let m = ph.ext_len();
        // per channel: kk weight gradients, then its bias gradient
        let mut both = vec![0f32; c * (kk + 1)];
        both.par_chunks_mut(kk + 1).enumerate().for_each_init(
            || {
                (
                    vec![0f32; kk * m],
                    vec![0f32; ph.len()],
                    vec![0f32; m],
                    vec![0f32; oh * ow],
                )
            },
            |(acc, p, ext, mbuf), (ch, out)| {
                acc.fill(0.0);
                let mut gb = 0f32;
                for b in 0..n {
                    let pl = b * c + ch;
                    ph.split(&x[pl * h * w..(pl + 1) * h * w], p);
                    let at = pl * oh * ow..(pl + 1) * oh * ow;
                    let gp = masked(self.act, &res[at.clone()], &gy[at], mbuf);
                    gb += sum(gp);
                    ph.to_ext(gp, ext);
                    ph.weight_grad(p, ext, acc);
                }
                for (t, v) in out[..kk].iter_mut().enumerate() {
                    *v = sum(&acc[t * m..(t + 1) * m]);
                }
                out[kk] = gb;
            },
        );
        // [C, kk + 1] -> weights [C·kk], then biases [C]
        let mut gw = Vec::with_capacity(both.len());
        gw.extend(both.chunks_exact(kk + 1).flat_map(|r| &r[..kk]));
        gw.extend(both.chunks_exact(kk + 1).map(|r| r[kk]));
        Ok((gw, Shape::from(c * (kk + 1))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tap's window in phase form reads the input position the
    /// convolution reads (0 in the padding), for strides, dilations and
    /// paddings; and `unsplit` inverts `split` on the reached inputs.
    #[test]
    fn phase_windows_read_the_convolved_inputs() {
        for (h, w, k, s, d, pad) in [
            (7, 9, 3, 2, 1, [1, 1]),
            (8, 8, 3, 2, 1, [1, 0]),
            (6, 10, 3, 3, 1, [0, 2]),
            (9, 9, 3, 1, 2, [2, 2]),
            (10, 7, 2, 2, 2, [1, 0]),
            (28, 28, 3, 2, 1, [1, 1]),
        ] {
            let ek = d * (k - 1) + 1;
            let out = [(h + 2 * pad[0] - ek) / s + 1, (w + 2 * pad[1] - ek) / s + 1];
            let g = ConvGeom {
                k: [k, k],
                s: [s, s],
                d: [d, d],
                pad,
                out,
            };
            let ph = Phases::new(&g, h, w);
            let x: Vec<f32> = (0..h * w).map(|i| 1.0 + i as f32).collect();
            let mut p = vec![0f32; ph.len()];
            ph.split(&x, &mut p);
            for (t, &off) in ph.taps.iter().enumerate() {
                let (ky, kx) = (t / k, t % k);
                for oy in 0..out[0] {
                    for ox in 0..out[1] {
                        let iy = (oy * s + ky * d) as isize - pad[0] as isize;
                        let ix = (ox * s + kx * d) as isize - pad[1] as isize;
                        let inside = (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
                        let want = if inside {
                            x[iy as usize * w + ix as usize]
                        } else {
                            0.0
                        };
                        let got = p[off + oy * ph.wq + ox];
                        assert_eq!(
                            got, want,
                            "{h}x{w} k{k} s{s} d{d} {pad:?} tap {t} ({oy},{ox})"
                        );
                    }
                }
            }
            let mut back = vec![f32::NAN; h * w];
            ph.unsplit(&p, &mut back);
            for (i, (&b, &v)) in back.iter().zip(&x).enumerate() {
                assert!(b == v || b == 0.0, "input {i}: {b} for {v}");
            }
        }
    }
}
