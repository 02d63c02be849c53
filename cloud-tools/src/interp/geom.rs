//! Geometry of a 2-D convolution window on one NCHW plane: for each kernel
//! tap, which output rows and columns read which input rows and columns.
//! [`ConvGeom`] is shared by the CPU convolution kernels (`depthwise`,
//! `gemm_conv`); [`Taps`] serves `gemm_conv`'s im2col and col2im, which
//! then only loop over valid ranges: padding is never materialised.

/// Geometry of a 2-D convolution (or of its gradients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    /// Kernel height and width.
    pub k: [usize; 2],
    /// Strides (height, width).
    pub s: [usize; 2],
    /// Dilations (height, width).
    pub d: [usize; 2],
    /// Padding before the first row and column (top, left); the padding
    /// after follows from `out`.
    pub pad: [usize; 2],
    /// Output height and width.
    pub out: [usize; 2],
}

impl ConvGeom {
    /// Kernel taps (kh * kw).
    pub fn taps(&self) -> usize {
        self.k[0] * self.k[1]
    }

    /// Output positions per plane.
    pub fn out_len(&self) -> usize {
        self.out[0] * self.out[1]
    }

    /// Whether the convolution is a plain channel mix (1x1 kernel, stride
    /// 1, no padding): the input plane is the output plane.
    pub fn is_pointwise(&self, in_hw: [usize; 2]) -> bool {
        self.k == [1, 1] && self.s == [1, 1] && self.pad == [0, 0] && self.out == in_hw
    }
}

/// Along one axis for one kernel offset: output positions `lo..hi` read
/// input position `o * stride + off`, all inside the input.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub lo: usize,
    pub hi: usize,
    pub off: isize,
}

/// For each kernel offset along one axis, the output positions whose input
/// position `o * s + k * d - pad` falls inside `0..len`.
fn spans(len: usize, out: usize, k: usize, s: usize, d: usize, pad: usize) -> Vec<Span> {
    (0..k)
        .map(|kk| {
            let off = (kk * d) as isize - pad as isize;
            let lo = if off >= 0 {
                0
            } else {
                ((-off) as usize).div_ceil(s)
            };
            let hi = if (len as isize) <= off {
                0
            } else {
                ((len as isize - off) as usize).div_ceil(s).min(out)
            };
            Span {
                lo: lo.min(hi),
                hi,
                off,
            }
        })
        .collect()
}

/// The valid row and column ranges of every kernel tap on an `h` x `w`
/// input plane.
#[derive(Debug, Clone)]
pub struct Taps {
    pub rows: Vec<Span>,
    pub cols: Vec<Span>,
    /// Column stride.
    pub sw: usize,
    sh: usize,
}

impl Taps {
    pub fn new(g: &ConvGeom, h: usize, w: usize) -> Taps {
        Taps {
            rows: spans(h, g.out[0], g.k[0], g.s[0], g.d[0], g.pad[0]),
            cols: spans(w, g.out[1], g.k[1], g.s[1], g.d[1], g.pad[1]),
            sh: g.s[0],
            sw: g.s[1],
        }
    }

    /// For kernel row `ky`: call `f(oy, iy)` for each valid output row and
    /// its input row (indices, not offsets).
    #[inline]
    pub fn for_each_row_of(&self, ky: usize, mut f: impl FnMut(usize, usize)) {
        let r = self.rows[ky];
        for oy in r.lo..r.hi {
            f(oy, ((oy * self.sh) as isize + r.off) as usize);
        }
    }

    /// Input element offset (within its row) of output column `c.lo`.
    #[inline]
    pub fn col_start(&self, c: &Span) -> usize {
        ((c.lo * self.sw) as isize + c.off) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_exactly_the_inside_positions() {
        for len in 1..9 {
            for s in 1..4 {
                for d in 1..3 {
                    for pad in 0..3 {
                        for k in 1..4 {
                            let ek = d * (k - 1) + 1;
                            if len + 2 * pad < ek {
                                continue;
                            }
                            let out = (len + 2 * pad - ek) / s + 1;
                            for (kk, sp) in spans(len, out, k, s, d, pad).iter().enumerate() {
                                for o in 0..out {
                                    let i = (o * s + kk * d) as isize - pad as isize;
                                    let inside = i >= 0 && i < len as isize;
                                    assert_eq!(
                                        inside,
                                        (sp.lo..sp.hi).contains(&o),
                                        "len {len} s {s} d {d} pad {pad} k {k} tap {kk} o {o}"
                                    );
                                    if inside {
                                        assert_eq!((o * s) as isize + sp.off, i);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
