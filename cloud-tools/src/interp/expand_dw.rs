//! A MobileNetV2 block's expansion and depthwise convolutions as one CPU
//! op: the 1x1 expansion conv (bias, Relu/Clip) then the depthwise conv
//! (bias, Relu/Clip), sample by sample, so the expanded tensor (6x the
//! block's input channels at full resolution: 12.8 MB for a batch of 64
//! in the Fashion-MNIST MobileNetV2) never exists in memory. Forward, each
//! sample's expansion is computed into a per-task scratch that stays in
//! cache (one GEMM, as `gemm_conv`'s pointwise path), directly in
//! `depthwise`'s padded phase form, and the depthwise conv reads it from
//! there.
//!
//! Backward recomputes the sample's expansion from the input, then runs
//! the depthwise backward (its activation's mask from the saved output)
//! into a scratch expansion gradient, applies the expansion's activation
//! mask, and finishes with the 1x1's weight, bias and input gradients, all
//! in one kernel (which gets its own copy of the small packed parameters,
//! so that input, output gradient and output fit in three arguments).
//! Unfused, the expansion and its gradient were written, copied to phase
//! form and back, masked and read twice more, each a pass over memory.
//! The weight-gradient partial sums run over fixed runs of samples
//! (`gemm_conv::GRAD_SAMPLES`) added in order, so the result does not
//! depend on the thread count.
//!
//! The four parameters travel packed in one tensor (custom ops take at
//! most three arguments): expansion weight `[E·C]`, its bias `[E]`,
//! depthwise weight `[E·kh·kw]`, its bias `[E]`; the gradient kernel gives
//! the input gradient and the packed parameters' gradient as one vector.

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::{masked, Clamp};
use super::cpu::{gemm, par_output, par_output_with, sum, In, Kernel, Mat, Op};
use super::depthwise::Phases;
use super::gemm_conv::GRAD_SAMPLES;
use super::geom::ConvGeom;

/// `act2(dwconv(act1(conv1x1(x, w1) + b1), wd) + bd)`: `x` `[N,C,H,W]`,
/// `w1` `[E,C,1,1]`, `wd` `[E,1,kh,kw]` with the geometry `geom` of the
/// depthwise conv, biases `[E]` (zeros, untracked, when absent). CPU only.
#[allow(clippy::too_many_arguments)]
pub fn expand_depthwise(
    x: &Tensor,
    w1: &Tensor,
    b1: Option<&Tensor>,
    act1: Option<Clamp>,
    wd: &Tensor,
    bd: Option<&Tensor>,
    geom: ConvGeom,
    act2: Option<Clamp>,
) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let (e, ci, kh, kw) = w1.dims4()?;
    let (eo, one, dkh, dkw) = wd.dims4()?;
    if ci != c || [kh, kw] != [1, 1] || eo != e || one != 1 || [dkh, dkw] != geom.k {
        candle_core::bail!(
            "expand+depthwise: weights {:?} and {:?} do not fit {c} input channels and kernel {:?}",
            w1.dims(),
            wd.dims(),
            geom.k
        );
    }
    let bias = |b: Option<&Tensor>| match b {
        Some(b) if b.elem_count() == e => b.flatten_all(),
        Some(b) => candle_core::bail!("expand+depthwise: bias {:?} for {e} channels", b.dims()),
        None => Tensor::zeros(e, x.dtype(), x.device()),
    };
    let wb = Tensor::cat(
        &[
            &w1.flatten_all()?,
            &bias(b1)?,
            &wd.flatten_all()?,
            &bias(bd)?,
        ],
        0,
    )?;
    x.contiguous()?.apply_op2(
        &wb,
        Op(ExpandDw {
            e,
            geom,
            act1,
            act2,
        }),
    )
}

/// The fused op: `(x, packed parameters)` -> `[N,E,oh,ow]`.
#[derive(Clone, Copy)]
struct ExpandDw {
    /// Expansion channels.
    e: usize,
    /// Geometry of the depthwise conv.
    geom: ConvGeom,
    act1: Option<Clamp>,
    act2: Option<Clamp>,
}

/// The packed parameters, split.
struct Params<'a> {
    w1: &'a [f32],
    b1: &'a [f32],
    wd: &'a [f32],
    bd: &'a [f32],
}

/// One block on one input size: the per-sample steps forward and
/// backward share.
///
/// The expansion is computed directly in the depthwise's padded phase
/// form: a 1x1 conv commutes with moving positions, so the sample's input
/// (C planes) is split into phase form and the GEMM runs over phase-form
/// positions, giving the E expanded planes already split (C planes to
/// split instead of E, and none to unsplit backward). Padding
/// positions are then zeroed (the GEMM put act1(bias) there).
struct Block<'a> {
    p: Params<'a>,
    c: usize,
    e: usize,
    /// Input plane (H·W), phase-form plane and output plane (oh·ow) sizes.
    hw: usize,
    pl: usize,
    ohw: usize,
    kk: usize,
    ph: Phases,
    /// Phase-form positions no input position maps to (padding).
    pad: Vec<usize>,
    act1: Option<Clamp>,
    act2: Option<Clamp>,
}

impl ExpandDw {
    /// Check the inputs' shapes and split the packed parameters.
    fn block<'a>(&self, x: &In<'_>, wb: &'a [f32]) -> Result<(usize, Block<'a>)> {
        let (n, c, h, w) = x.dims4("input")?;
        let (e, kk) = (self.e, self.geom.taps());
        if wb.len() != e * c + e + e * kk + e {
            candle_core::bail!(
                "packed parameters of {} floats for {c} input and {e} expansion channels",
                wb.len()
            );
        }
        let (w1, rest) = wb.split_at(e * c);
        let (b1, rest) = rest.split_at(e);
        let (wd, bd) = rest.split_at(e * kk);
        let ph = Phases::new(&self.geom, h, w);
        let mut probe = vec![0f32; ph.len()];
        ph.split(&vec![1f32; h * w], &mut probe);
        let pad = (0..probe.len()).filter(|&i| probe[i] == 0.0).collect();
        Ok((
            n,
            Block {
                p: Params { w1, b1, wd, bd },
                c,
                e,
                hw: h * w,
                pl: ph.len(),
                ohw: self.geom.out_len(),
                kk,
                ph,
                pad,
                act1: self.act1,
                act2: self.act2,
            },
        ))
    }
}

impl Block<'_> {
    /// `ex` (`[E, P]`, phase form) = act1(w1 · `xn` + b1) for one sample
    /// `xn`, 0 in the padding; `xp` (`[C, P]`, zero padding kept from the
    /// previous call) gets `xn` in phase form.
    fn expand(&self, xn: &[f32], xp: &mut [f32], ex: &mut [f32]) -> Result<()> {
        let (c, e, pl) = (self.c, self.e, self.pl);
        for (plane, xc) in xp.chunks_exact_mut(pl).zip(xn.chunks_exact(self.hw)) {
            self.ph.split(xc, plane);
        }
        for (row, &bv) in ex.chunks_exact_mut(pl).zip(self.p.b1) {
            row.fill(bv);
        }
        gemm(
            e,
            pl,
            c,
            ex,
            true,
            Mat {
                data: self.p.w1,
                rs: c,
                cs: 1,
            },
            Mat {
                data: xp,
                rs: pl,
                cs: 1,
            },
        )?;
        if let Some(act) = &self.act1 {
            act.apply_slice(ex);
        }
        self.zero_padding(ex);
        Ok(())
    }

    /// Zero the padding positions of every phase-form plane of `v`.
    fn zero_padding(&self, v: &mut [f32]) {
        for plane in v.chunks_exact_mut(self.pl) {
            for &i in &self.pad {
                plane[i] = 0.0;
            }
        }
    }

    /// Channel `ch`'s depthwise output `y` (act2 applied) from the phase
    /// form `p` of its expanded plane, via `ext` scratch.
    fn depthwise(&self, ch: usize, p: &[f32], ext: &mut [f32], y: &mut [f32]) {
        let kk = self.kk;
        self.ph
            .forward(p, &self.p.wd[ch * kk..(ch + 1) * kk], self.p.bd[ch], ext, y);
        if let Some(act) = &self.act2 {
            act.apply_slice(y);
        }
    }

    /// Scratch for one sample's input in phase form (zeroed: its padding
    /// stays 0).
    fn input_phases(&self) -> Vec<f32> {
        vec![0f32; self.c * self.pl]
    }

    /// Scratch for one sample's expansion in phase form.
    fn expansion(&self) -> Vec<f32> {
        vec![0f32; self.e * self.pl]
    }
}

impl Kernel<2> for ExpandDw {
    const NAME: &'static str = "adaptivenet-expand-depthwise";

    fn run(&self, [x, wb]: [In<'_>; 2]) -> Result<(Vec<f32>, Shape)> {
        let (n, blk) = self.block(&x, wb.data)?;
        let (c, e, hw, ohw) = (blk.c, blk.e, blk.hw, blk.ohw);
        let x = x.data;
        let y = par_output(
            n * e * ohw,
            e * ohw,
            || {
                (
                    blk.input_phases(),
                    blk.expansion(),
                    vec![0f32; blk.ph.ext_len()],
                )
            },
            |(xp, ex, ext), b, yn| {
                blk.expand(&x[b * c * hw..(b + 1) * c * hw], xp, ex)?;
                for (ch, (p, y)) in ex
                    .chunks_exact(blk.pl)
                    .zip(yn.chunks_exact_mut(ohw))
                    .enumerate()
                {
                    blk.depthwise(ch, p, ext, y);
                }
                Ok(())
            },
        )?;
        let [oh, ow] = self.geom.out;
        Ok((y, Shape::from((n, e, oh, ow))))
    }

    fn backward(
        &self,
        [x, wb]: [&Tensor; 2],
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 2]> {
        let (want_x, want_p) = (x.track_op(), wb.track_op());
        if !want_x && !want_p {
            return Ok([None, None]);
        }
        // the parameters are small: the kernel gets a copy, so the output
        // (for the depthwise's mask) can be its third argument
        let k = ExpandDwGrad {
            fwd: *self,
            params: wb.detach().flatten_all()?.to_vec1::<f32>()?,
            want_x,
            want_p,
        };
        let all = x
            .detach()
            .apply_op3_no_bwd(&grad.contiguous()?, &res.detach(), &Op(k))?;
        let nx = if want_x { x.elem_count() } else { 0 };
        let gx = if want_x {
            Some(all.narrow(0, 0, nx)?.reshape(x.shape())?)
        } else {
            None
        };
        let gwb = if want_p {
            Some(all.narrow(0, nx, wb.elem_count())?)
        } else {
            None
        };
        Ok([gx, gwb])
    }
}

/// Gradients: `(x, output gradient, output)` -> the input gradient
/// `[N·C·H·W]` (if `want_x`), then the packed parameters' gradient (if
/// `want_p`).
struct ExpandDwGrad {
    fwd: ExpandDw,
    /// The packed parameters.
    params: Vec<f32>,
    want_x: bool,
    want_p: bool,
}

/// Per-task scratch of the gradient kernel.
struct GradScratch {
    /// The sample's input, expansion and expansion gradient in phase
    /// form, `[C, P]`, `[E, P]` and `[E, P]`.
    xp: Vec<f32>,
    ex: Vec<f32>,
    gex: Vec<f32>,
    /// The input gradient in phase form, `[C, P]` (empty without `want_x`).
    gxp: Vec<f32>,
    /// One output plane's gradient in `ext` layout.
    gext: Vec<f32>,
    /// One output plane's masked gradient.
    gm: Vec<f32>,
}

impl ExpandDwGrad {
    /// The packed parameters' gradient over samples `samples` (zero length
    /// without `want_p`), and the input gradient of each into `gx` (the
    /// samples' `[C, H·W]` pieces in order) if given, from the input, the
    /// output gradient and the output.
    fn part(
        &self,
        blk: &Block<'_>,
        [x, gy, res]: [&[f32]; 3],
        samples: std::ops::Range<usize>,
        s: &mut GradScratch,
        mut gx: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        let (c, e, hw, pl, ohw, kk) = (blk.c, blk.e, blk.hw, blk.pl, blk.ohw, blk.kk);
        let mut acc = vec![
            0f32;
            if self.want_p {
                e * c + e + e * kk + e
            } else {
                0
            }
        ];
        let first = samples.start;
        for b in samples {
            blk.expand(&x[b * c * hw..(b + 1) * c * hw], &mut s.xp, &mut s.ex)?;
            for ch in 0..e {
                let p = &s.ex[ch * pl..(ch + 1) * pl];
                let at = (b * e + ch) * ohw..(b * e + ch + 1) * ohw;
                let g = masked(blk.act2, &res[at.clone()], &gy[at], &mut s.gm);
                blk.ph.to_ext(g, &mut s.gext);
                if self.want_p {
                    let (_, rest) = acc.split_at_mut(e * c + e);
                    let (gwd, gbd) = rest.split_at_mut(e * kk);
                    blk.ph
                        .weight_grad_dot(p, &s.gext, &mut gwd[ch * kk..(ch + 1) * kk]);
                    gbd[ch] += sum(g);
                }
                let gp = &mut s.gex[ch * pl..(ch + 1) * pl];
                blk.ph
                    .input_grad(&s.gext, &blk.p.wd[ch * kk..(ch + 1) * kk], gp);
                if let Some(act) = &blk.act1 {
                    act.mask_in_place(p, gp);
                }
            }
            blk.zero_padding(&mut s.gex);
            if self.want_p {
                let (gw1, rest) = acc.split_at_mut(e * c);
                gemm(
                    e,
                    c,
                    pl,
                    gw1,
                    true,
                    Mat {
                        data: &s.gex,
                        rs: pl,
                        cs: 1,
                    },
                    Mat {
                        data: &s.xp,
                        rs: 1,
                        cs: pl,
                    },
                )?;
                for (a, row) in rest[..e].iter_mut().zip(s.gex.chunks_exact(pl)) {
                    *a += sum(row);
                }
            }
            if let Some(gx) = gx.as_deref_mut() {
                gemm(
                    c,
                    pl,
                    e,
                    &mut s.gxp,
                    false,
                    Mat {
                        data: blk.p.w1,
                        rs: 1,
                        cs: c,
                    },
                    Mat {
                        data: &s.gex,
                        rs: pl,
                        cs: 1,
                    },
                )?;
                let at = (b - first) * c * hw;
                for (gxc, gpc) in gx[at..at + c * hw]
                    .chunks_exact_mut(hw)
                    .zip(s.gxp.chunks_exact(pl))
                {
                    blk.ph.unsplit(gpc, gxc);
                }
            }
        }
        Ok(acc)
    }
}

impl Kernel<3> for ExpandDwGrad {
    const NAME: &'static str = "adaptivenet-expand-depthwise-grad";

    fn run(&self, [x, gy, res]: [In<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let (n, blk) = self.fwd.block(&x, &self.params)?;
        let (c, e, hw) = (blk.c, blk.e, blk.hw);
        let [oh, ow] = self.fwd.geom.out;
        if gy.dims != [n, e, oh, ow] || res.dims != gy.dims {
            candle_core::bail!(
                "output gradient {:?} for input {:?} and output size {:?}",
                gy.dims,
                x.dims,
                self.fwd.geom.out
            );
        }
        let (x, gy, res) = (x.data, gy.data, res.data);
        let np = if self.want_p { self.params.len() } else { 0 };
        let init = || GradScratch {
            xp: blk.input_phases(),
            ex: blk.expansion(),
            gex: blk.expansion(),
            gxp: if self.want_x {
                blk.input_phases()
            } else {
                Vec::new()
            },
            gext: vec![0f32; blk.ph.ext_len()],
            gm: vec![0f32; blk.ohw],
        };
        // one task (and one partial sum) per run of GRAD_SAMPLES samples
        let per = GRAD_SAMPLES;
        let runs = |t: usize| t * per..((t + 1) * per).min(n);
        let (mut out, partials) = if self.want_x {
            par_output_with(n * c * hw, np, per * c * hw, init, |s, t, gx| {
                self.part(&blk, [x, gy, res], runs(t), s, Some(gx))
            })?
        } else {
            let partials = (0..n.div_ceil(per))
                .into_par_iter()
                .map_init(init, |s, t| self.part(&blk, [x, gy, res], runs(t), s, None))
                .collect::<Result<Vec<_>>>()?;
            (Vec::with_capacity(np), partials)
        };
        if self.want_p {
            let at = out.len();
            out.resize(at + np, 0.0);
            for part in partials {
                for (a, v) in out[at..].iter_mut().zip(part) {
                    *a += v;
                }
            }
        }
        let len = out.len();
        Ok((out, Shape::from(len)))
    }
}
