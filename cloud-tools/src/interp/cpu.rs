//! CPU helpers shared by the convolution kernels (`gemm_conv`,
//! `depthwise`) and the activations: f32 access to contiguous candle
//! storage, a single-threaded GEMM on slices (the kernels parallelise over
//! samples themselves), and the per-channel bias (absent bias as zeros, its
//! gradient in one pass).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The f32 data of a contiguous CPU tensor.
pub(super) fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("CPU kernel: {what} must be f32");
    };
    if !l.is_contiguous() {
        candle_core::bail!("CPU kernel: {what} must be contiguous");
    }
    let start = l.start_offset();
    let n = l.shape().elem_count();
    v.get(start..start + n)
        .ok_or_else(|| candle_core::Error::Msg(format!("CPU kernel: {what} out of bounds")))
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
pub(super) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl Mat<'_> {
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst` (`m` x `n`, contiguous) = (`dst` +, if `accumulate`) `lhs` (`m` x
/// `k`) · `rhs` (`k` x `n`), single-threaded.
pub(super) fn gemm(
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
