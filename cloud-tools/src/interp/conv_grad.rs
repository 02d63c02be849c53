//! 2-D convolution with a faster backward pass than candle's built-in one.
//!
//! candle's `Conv2D` backward always computes both gradients, and the input
//! gradient goes through a direct (non-GEMM) transposed convolution. Here the
//! forward is candle's im2col/GEMM `conv2d` on detached tensors, and a custom
//! op attaches a backward that computes only the gradients that are needed
//! (frozen weights and fed cut tensors get none), both as GEMM convolutions:
//! the input gradient is the convolution of the stride-dilated output
//! gradient with the flipped, transposed kernel.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// Convolution of `x` `[N,C,H,W]` with `w` `[O,C/groups,kh,kw]`, symmetric
/// `padding`, square `stride` and `dilation`. Same result as
/// `x.conv2d(w, padding, stride, dilation, groups)`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let custom_backend = x.device().is_cpu() || (cfg!(feature = "cuda") && x.device().is_cuda());
    if !(x.track_op() || w.track_op()) || !custom_backend {
        return x.conv2d(w, padding, stride, dilation, groups);
    }
    if groups > 1 {
        let xs = x.chunk(groups, 1)?;
        let ws = w.chunk(groups, 0)?;
        let ys = xs
            .iter()
            .zip(&ws)
            .map(|(x, w)| conv2d(x, w, padding, stride, dilation, 1))
            .collect::<Result<Vec<_>>>()?;
        return Tensor::cat(&ys, 1);
    }
    let y = x
        .detach()
        .conv2d(&w.detach(), padding, stride, dilation, 1)?
        .contiguous()?;
    x.apply_op3(
        w,
        &y,
        ConvBackward {
            padding,
            stride,
            dilation,
        },
    )
}

/// Passes the precomputed output through and carries the backward pass.
struct ConvBackward {
    padding: usize,
    stride: usize,
    dilation: usize,
}

fn pass_through_check(l: &Layout) -> Result<()> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("conv backward carrier: the output must be contiguous");
    }
    Ok(())
}

impl CustomOp3 for ConvBackward {
    fn name(&self) -> &'static str {
        "adaptivenet-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        pass_through_check(l3)?;
        Ok((s3.clone(), l3.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        pass_through_check(l3)?;
        Ok((s3.try_clone(l3)?, l3.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gx = if x.track_op() {
            Some(self.input_grad(x, w, grad)?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(self.weight_grad(x, w, grad)?)
        } else {
            None
        };
        Ok((gx, gw, None))
    }
}

/// Insert `s - 1` zeros between the elements of `t` along `dim`.
fn dilate(t: &Tensor, dim: usize, s: usize) -> Result<Tensor> {
    if s == 1 {
        return Ok(t.clone());
    }
    let n = t.dim(dim)?;
    let mut dims = t.dims().to_vec();
    let spread = t.unsqueeze(dim + 1)?.pad_with_zeros(dim + 1, 0, s - 1)?;
    dims[dim] = n * s;
    spread.reshape(dims)?.narrow(dim, 0, (n - 1) * s + 1)
}

/// Pad (positive) or crop (negative) `t` along `dim` on each side.
fn pad_or_crop(t: &Tensor, dim: usize, left: isize, right: isize) -> Result<Tensor> {
    let mut t = t.clone();
    if left < 0 {
        let n = t.dim(dim)?;
        let c = (-left) as usize;
        t = t.narrow(dim, c.min(n), n - c.min(n))?;
    }
    if right < 0 {
        let n = t.dim(dim)?;
        let c = ((-right) as usize).min(n);
        t = t.narrow(dim, 0, n - c)?;
    }
    t.pad_with_zeros(dim, left.max(0) as usize, right.max(0) as usize)
}

fn flip(t: &Tensor, dim: usize) -> Result<Tensor> {
    let n = t.dim(dim)?;
    let ids = Tensor::from_vec((0..n as u32).rev().collect::<Vec<_>>(), n, t.device())?;
    t.index_select(&ids, dim)
}

impl ConvBackward {
    fn input_grad(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (p, s, d) = (self.padding as isize, self.stride, self.dilation);
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let (_, _, ho, wo) = grad.dims4()?;
        let g = dilate(&dilate(grad, 2, s)?, 3, s)?;
        let lh = ((ho - 1) * s + 1) as isize;
        let lw = ((wo - 1) * s + 1) as isize;
        let g = pad_or_crop(&g, 2, (d * (kh - 1)) as isize - p, h as isize + p - lh)?;
        let g = pad_or_crop(&g, 3, (d * (kw - 1)) as isize - p, wd as isize + p - lw)?;
        let wt = flip(&flip(w, 2)?, 3)?.transpose(0, 1)?.contiguous()?;
        g.contiguous()?.conv2d(&wt, 0, 1, d, 1)
    }

    fn weight_grad(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<Tensor> {
        let (_, _, kh, kw) = w.dims4()?;
        let gw = x
            .detach()
            .transpose(0, 1)?
            .conv2d(
                &grad.transpose(0, 1)?,
                self.padding,
                self.dilation,
                self.stride,
                1,
            )?
            .transpose(0, 1)?;
        let (_, _, gh, gwid) = gw.dims4()?;
        if gh != kh || gwid != kw {
            gw.narrow(2, 0, kh)?.narrow(3, 0, kw)?.contiguous()
        } else {
            gw.contiguous()
        }
    }
}
