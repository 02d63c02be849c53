//! CPU plumbing shared by the convolution kernels (`gemm_conv`,
//! `depthwise`) and the activations: `Kernel`, a kernel on contiguous
//! f32 slices, and `Op`, which makes one a candle custom op (storage
//! checks, output storage, backward); the entry and the shared backward of
//! a convolution with fused bias and activation (`apply_conv`,
//! `conv_backward`); a single-threaded GEMM on slices (the kernels
//! parallelise over samples themselves) and a vectorisable sum.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
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

/// One input of a [`Kernel`]: contiguous f32 data and its dims.
#[derive(Clone, Copy)]
pub(super) struct In<'a> {
    pub data: &'a [f32],
    pub dims: &'a [usize],
}

impl In<'_> {
    /// The dims of a 4-D input, or an error naming `what`.
    pub fn dims4(&self, what: &str) -> Result<(usize, usize, usize, usize)> {
        match *self.dims {
            [a, b, c, d] => Ok((a, b, c, d)),
            _ => candle_core::bail!("CPU kernel: {what} {:?} is not 4-D", self.dims),
        }
    }
}

/// A CPU kernel on `N` contiguous f32 tensors that gives one f32 tensor.
/// Wrapped in [`Op`] it is a candle custom op of arity `N`.
pub(super) trait Kernel<const N: usize>: Send + Sync + 'static {
    /// The op's name in candle's graph.
    const NAME: &'static str;
    /// The output data and shape. `inputs[i]` is the `i`-th argument.
    fn run(&self, inputs: [In<'_>; N]) -> Result<(Vec<f32>, Shape)>;
    /// Gradients of the arguments, given the output `res` and its
    /// gradient. By default the op has no backward (an error if needed).
    fn backward(
        &self,
        _args: [&Tensor; N],
        _res: &Tensor,
        _grad: &Tensor,
    ) -> Result<[Option<Tensor>; N]> {
        Err(candle_core::Error::BackwardNotSupported { op: Self::NAME })
    }
}

/// A [`Kernel`] as a candle custom op.
pub(super) struct Op<K>(pub K);

const ARG_NAMES: [&str; 3] = ["first argument", "second argument", "third argument"];

impl<K> Op<K> {
    fn run<const N: usize>(&self, args: [(&CpuStorage, &Layout); N]) -> Result<(CpuStorage, Shape)>
    where
        K: Kernel<N>,
    {
        let mut inputs = [In {
            data: &[],
            dims: &[],
        }; N];
        for (i, (s, l)) in args.into_iter().enumerate() {
            inputs[i] = In {
                data: slice(s, l, ARG_NAMES[i.min(2)])?,
                dims: l.dims(),
            };
        }
        let (v, shape) = self.0.run(inputs).map_err(|e| e.context(K::NAME))?;
        Ok((CpuStorage::F32(v), shape))
    }
}

impl<K: Kernel<1>> CustomOp1 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run([(s, l)])
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let [g] = self.0.backward([x], res, grad)?;
        Ok(g)
    }
}

impl<K: Kernel<2>> CustomOp2 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run([(s1, l1), (s2, l2)])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [ga, gb] = self.0.backward([a, b], res, grad)?;
        Ok((ga, gb))
    }
}

impl<K: Kernel<3>> CustomOp3 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
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
        self.run([(s1, l1), (s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [ga, gb, gc] = self.0.backward([a, b, c], res, grad)?;
        Ok((ga, gb, gc))
    }
}

/// `x` convolved with `w` by `kernel` (a `Kernel<3>` on input, weight and
/// bias): the bias as a contiguous `[o]` tensor (zeros, untracked, when
/// absent), input and weight made contiguous.
pub(super) fn apply_conv<K: Kernel<3>>(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    o: usize,
    kernel: K,
) -> Result<Tensor> {
    let b = match b {
        Some(b) => {
            if b.elem_count() != o {
                candle_core::bail!("conv: bias {:?} for {o} output channels", b.dims());
            }
            b.reshape(o)?.contiguous()?
        }
        None => Tensor::zeros(o, x.dtype(), x.device())?,
    };
    x.contiguous()?.apply_op3(&w.contiguous()?, &b, Op(kernel))
}

/// The backward of a convolution kernel with fused bias and activation
/// `act`. The kernels take the output gradient as it arrives with the
/// output `res` and apply `act`'s mask themselves, sample by sample while
/// it is in cache (no masked full-size gradient is built): the input
/// gradient by `input_grad(in_hw)` on (gradient, weight, output), the
/// weight and bias gradients together by `params_grad` on (input,
/// gradient, output), as one `[w.len() + o]` vector split here. Only the
/// tracked arguments get a gradient.
pub(super) fn conv_backward<I: Kernel<3>, W: Kernel<3>>(
    [x, w, b]: [&Tensor; 3],
    res: &Tensor,
    grad: &Tensor,
    input_grad: impl FnOnce([usize; 2]) -> I,
    params_grad: W,
) -> Result<[Option<Tensor>; 3]> {
    let grad = grad.contiguous()?;
    let res = res.detach();
    let gx = if x.track_op() {
        let (_, _, h, wd) = x.dims4()?;
        Some(grad.apply_op3_no_bwd(&w.detach(), &res, &Op(input_grad([h, wd])))?)
    } else {
        None
    };
    let (mut gw, mut gb) = (None, None);
    if w.track_op() || b.track_op() {
        let both = x.detach().apply_op3_no_bwd(&grad, &res, &Op(params_grad))?;
        let nw = w.elem_count();
        if w.track_op() {
            gw = Some(both.narrow(0, 0, nw)?.reshape(w.shape())?);
        }
        if b.track_op() {
            gb = Some(both.narrow(0, nw, b.elem_count())?.reshape(b.shape())?);
        }
    }
    Ok([gx, gw, gb])
}

/// A kernel output of `len` floats, computed in parallel by pieces of
/// `chunk` (a sample, a plane): `f(state, i, piece)` gets the `i`-th piece
/// zeroed, with per-task `state` from `init`. Each piece is zeroed right
/// before `f` fills it, in cache; `vec![0.0; len]` would zero the whole
/// output first, one more pass over memory (on one thread).
pub(super) fn par_output<S>(
    len: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [f32]) -> Result<()> + Sync + Send,
) -> Result<Vec<f32>> {
    Ok(par_output_with(len, 0, chunk, init, f)?.0)
}

/// [`par_output`] whose pieces also give a value each (a partial sum of
/// weight gradients), returned in piece order; the output vector has room
/// for `extra` more floats (appended without reallocating).
pub(super) fn par_output_with<S, T: Send>(
    len: usize,
    extra: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [f32]) -> Result<T> + Sync + Send,
) -> Result<(Vec<f32>, Vec<T>)> {
    if len == 0 || chunk == 0 {
        return Ok((vec![0f32; len], Vec::new()));
    }
    let mut v: Vec<f32> = Vec::with_capacity(len + extra);
    let parts = v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .map_init(init, |state, (i, piece)| {
            for e in piece.iter_mut() {
                e.write(0.0);
            }
            // SAFETY: every element of `piece` was initialised just above,
            // and `MaybeUninit<f32>` has the layout of `f32`.
            let piece = unsafe { &mut *(piece as *mut [MaybeUninit<f32>] as *mut [f32]) };
            f(state, i, piece)
        })
        .collect::<Result<Vec<T>>>()?;
    // SAFETY: the pieces cover `0..len` (capacity >= len) and every one was
    // initialised (an error returned above, before this).
    unsafe { v.set_len(len) };
    Ok((v, parts))
}

/// The sum of `a` in 8 interleaved partial sums (a plain `iter().sum()`
/// is one dependent chain of adds: latency-bound, never vectorised).
pub(super) fn sum(a: &[f32]) -> f32 {
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

/// The dot product of `a` and `b` (as long as the shorter), in 8
/// interleaved partial sums like [`sum`].
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (u, v) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(u).zip(v) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + rest
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
