//! Tests of the dedicated convolution kernels (dense GEMM, depthwise, the
//! fused expansion + depthwise) and the clamping activations: values and
//! all gradients against candle's reference `conv2d` and its backward,
//! case by case from tables.

use candle_core::{Device, Tensor, Var};

use super::activation::Clamp;
use super::depthwise::depthwise_conv2d;
use super::gemm_conv;
use super::geom::ConvGeom;

/// Deterministic pseudo-random floats in [-1, 1).
fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(7);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn var(dims: &[usize], seed: u64) -> Var {
    Var::from_vec(rand_vec(dims.iter().product(), seed), dims, &Device::Cpu).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    to_vec(t).iter().fold(1f32, |m, v| m.max(v.abs()))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    to_vec(a)
        .iter()
        .zip(to_vec(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const RELU: Clamp = Clamp {
    lo: Some(0.0),
    hi: None,
};
const RELU6: Clamp = Clamp {
    lo: Some(0.0),
    hi: Some(6.0),
};

/// Which kernel a case runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `gemm_conv` with this many output channels.
    Dense(usize),
    /// `depthwise` (one filter per channel).
    Depthwise,
}

/// One convolution: the kernel's values and gradients are checked against
/// candle's `conv2d` on the explicitly padded input (cropped to what the
/// windows reach, so candle's own backward is exact), plus the bias and
/// candle's `relu`/`minimum` for a fused activation.
#[derive(Debug, Clone, Copy)]
struct Case {
    kind: Kind,
    n: usize,
    c: usize,
    hw: [usize; 2],
    k: usize,
    s: usize,
    d: usize,
    /// Top, left, bottom, right.
    pads: [usize; 4],
    bias: bool,
    act: Option<Clamp>,
}

impl Case {
    fn new(kind: Kind, c: usize, hw: [usize; 2], k: usize, s: usize, d: usize, p: usize) -> Case {
        Case {
            kind,
            n: 3,
            c,
            hw,
            k,
            s,
            d,
            pads: [p; 4],
            bias: true,
            act: None,
        }
    }

    /// The output size, None when the window does not fit.
    fn out(&self) -> Option<[usize; 2]> {
        let ek = self.d * (self.k - 1) + 1;
        let [pt, pl, pb, pr] = self.pads;
        let (h, w) = (self.hw[0] + pt + pb, self.hw[1] + pl + pr);
        (h >= ek && w >= ek).then(|| [(h - ek) / self.s + 1, (w - ek) / self.s + 1])
    }

    /// Run the case; `seed` picks the data.
    fn check(&self, seed: u64) {
        let label = format!("{self:?}");
        let out = self.out().expect("a window that fits");
        let [h, w] = self.hw;
        let (o, ci, groups) = match self.kind {
            Kind::Dense(o) => (o, self.c, 1),
            Kind::Depthwise => (self.c, 1, self.c),
        };
        // values up to +-4 so ReLU6 saturates somewhere
        let x = Var::from_vec(
            rand_vec(self.n * self.c * h * w, seed)
                .iter()
                .map(|v| v * 4.0)
                .collect(),
            (self.n, self.c, h, w),
            &Device::Cpu,
        )
        .unwrap();
        let wv = var(&[o, ci, self.k, self.k], seed + 1);
        let b = var(&[o], seed + 2);
        let geom = ConvGeom {
            k: [self.k; 2],
            s: [self.s; 2],
            d: [self.d; 2],
            pad: [self.pads[0], self.pads[1]],
            out,
        };
        let bias = self.bias.then(|| b.as_tensor());
        let y1 = match self.kind {
            Kind::Dense(_) => {
                gemm_conv::conv2d(x.as_tensor(), wv.as_tensor(), bias, geom, self.act)
            }
            Kind::Depthwise => {
                depthwise_conv2d(x.as_tensor(), wv.as_tensor(), bias, geom, self.act)
            }
        }
        .unwrap();
        let ek = self.d * (self.k - 1) + 1;
        let used = [(out[0] - 1) * self.s + ek, (out[1] - 1) * self.s + ek];
        let [pt, pl, pb, pr] = self.pads;
        let xp = x
            .as_tensor()
            .pad_with_zeros(2, pt, pb)
            .unwrap()
            .pad_with_zeros(3, pl, pr)
            .unwrap()
            .narrow(2, 0, used[0])
            .unwrap()
            .narrow(3, 0, used[1])
            .unwrap();
        let mut y2 = xp
            .conv2d(wv.as_tensor(), 0, self.s, self.d, groups)
            .unwrap();
        if self.bias {
            y2 = y2
                .broadcast_add(&b.as_tensor().reshape((1, o, 1, 1)).unwrap())
                .unwrap();
        }
        if let Some(act) = self.act {
            y2 = y2.relu().unwrap();
            if let Some(hi) = act.hi {
                y2 = y2.minimum(hi).unwrap();
            }
        }
        let d = max_abs_diff(&y1, &y2);
        assert!(d < 1e-5 * max_abs(&y2), "{label}: values differ by {d}");
        // gradients of sum(y * r) for random r; candle's backward on y2 is
        // the reference
        let r =
            Tensor::from_vec(rand_vec(y1.elem_count(), seed + 3), y1.dims(), &Device::Cpu).unwrap();
        let g1 = (&y1 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut vars = vec![("x", &x), ("w", &wv)];
        if self.bias {
            vars.push(("b", &b));
        }
        for (name, v) in vars {
            let a = g1.get(v.as_tensor()).expect("gradient of the kernel");
            let want = g2.get(v.as_tensor()).expect("reference gradient");
            let d = max_abs_diff(a, want);
            let scale = max_abs(want);
            assert!(
                d < 1e-5 * scale,
                "{label}: gradient of {name} differs by {d} (scale {scale})"
            );
        }
    }
}

/// Symmetric padding, strides 1 and 2, dilations 1 and 2 on odd, even and
/// non-square planes, for each of `kinds` (channels, kernel size).
fn grid(kinds: &[(Kind, usize, usize)]) -> Vec<Case> {
    let mut cases = Vec::new();
    for &(kind, c, k) in kinds {
        for hw in [[9, 9], [8, 8], [7, 10]] {
            for s in [1, 2] {
                for p in [0, 1] {
                    for d in [1, 2] {
                        let case = Case::new(kind, c, hw, k, s, d, p);
                        if case.out().is_some() && !(k == 1 && d > 1) {
                            cases.push(case);
                        }
                    }
                }
            }
        }
    }
    cases
}

/// Asymmetric padding and windows that leave input rows unused.
fn asymmetric(kind: Kind, c: usize) -> Vec<Case> {
    // (h, w, stride, pads)
    [
        (8, 8, 2, [0, 0, 1, 1]),
        (9, 7, 2, [1, 0, 0, 2]),
        (7, 7, 1, [2, 1, 0, 1]),
        (10, 9, 3, [1, 1, 1, 1]),
        (28, 28, 2, [1, 1, 1, 1]),
    ]
    .into_iter()
    .map(|(h, w, s, pads)| Case {
        pads,
        bias: false,
        ..Case::new(kind, c, [h, w], 3, s, 1, 0)
    })
    .collect()
}

/// Run every case of `cases` (each with its own data) and make sure there
/// were at least `min` of them.
fn check_all(cases: &[Case], seed: u64, min: usize) {
    assert!(cases.len() >= min, "only {} cases", cases.len());
    for (i, case) in cases.iter().enumerate() {
        case.check(seed + 10 * i as u64);
    }
}

#[test]
fn depthwise_matches_candle_conv2d_values_and_gradients() {
    let kinds: Vec<_> = [1, 3, 8, 17]
        .map(|c| (Kind::Depthwise, c, 3))
        .into_iter()
        .collect();
    check_all(&grid(&kinds), 1, 40);
    check_all(&asymmetric(Kind::Depthwise, 5), 100, 5);
}

#[test]
fn gemm_conv_matches_candle_conv2d_values_and_gradients() {
    // (C, O, kernel)
    let kinds = [(3, 5, 1), (16, 8, 1), (4, 6, 3), (1, 3, 3), (5, 2, 2)]
        .map(|(c, o, k)| (Kind::Dense(o), c, k));
    check_all(&grid(&kinds), 500, 60);
    check_all(&asymmetric(Kind::Dense(3), 4), 600, 5);
}

/// A Relu/ReLU6 fused into either kernel equals the conv followed by
/// candle's relu and minimum, values and all gradients (random data: no
/// exact ties), with the shapes of the benchmarked blocks among them.
#[test]
fn fused_activation_matches_conv_then_clamp() {
    let mut cases = Vec::new();
    for act in [RELU6, RELU] {
        for case in [
            Case::new(Kind::Depthwise, 6, [8, 8], 3, 2, 1, 1),
            Case::new(Kind::Depthwise, 8, [14, 14], 3, 1, 1, 1),
            Case::new(Kind::Dense(5), 6, [8, 8], 3, 2, 1, 1),
            Case::new(Kind::Dense(16), 16, [12, 12], 3, 1, 1, 1),
            Case::new(Kind::Dense(24), 16, [10, 10], 1, 1, 1, 0),
        ] {
            cases.push(Case {
                act: Some(act),
                ..case
            });
        }
    }
    check_all(&cases, 1000, 10);
}

/// Only tracked arguments get a gradient (a fed cut tensor gets none); a
/// weight or bias of the wrong shape is an error, not a panic.
#[test]
fn gradients_only_for_tracked_arguments() {
    for kind in [Kind::Depthwise, Kind::Dense(6)] {
        let k = if kind == Kind::Depthwise { 3 } else { 1 };
        let geom = ConvGeom {
            k: [k, k],
            s: [1, 1],
            d: [1, 1],
            pad: [k / 2, k / 2],
            out: [6, 6],
        };
        let (o, ci) = match kind {
            Kind::Dense(o) => (o, 4),
            Kind::Depthwise => (4, 1),
        };
        let conv = |x: &Tensor, w: &Tensor, b: Option<&Tensor>| match kind {
            Kind::Dense(_) => gemm_conv::conv2d(x, w, b, geom, None),
            Kind::Depthwise => depthwise_conv2d(x, w, b, geom, None),
        };
        let grads = |x: &Tensor, w: &Tensor| {
            conv(x, w, None)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let x = Tensor::from_vec(rand_vec(2 * 4 * 36, 1), (2, 4, 6, 6), &Device::Cpu).unwrap();
        let wv = var(&[o, ci, k, k], 2);
        let g = grads(&x, wv.as_tensor());
        assert!(g.get(&x).is_none(), "{kind:?}");
        assert!(g.get(wv.as_tensor()).is_some(), "{kind:?}");
        let xv = var(&[2, 4, 6, 6], 3);
        let w = Tensor::from_vec(rand_vec(o * ci * k * k, 4), (o, ci, k, k), &Device::Cpu).unwrap();
        let g = grads(xv.as_tensor(), &w);
        assert!(g.get(xv.as_tensor()).is_some(), "{kind:?}");
        assert!(g.get(&w).is_none(), "{kind:?}");
        let bad = var(&[o, ci + 1, k, k], 5);
        assert!(conv(&x, bad.as_tensor(), None).is_err(), "{kind:?}");
        let bad_bias = var(&[o + 1], 6);
        assert!(
            conv(&x, wv.as_tensor(), Some(bad_bias.as_tensor())).is_err(),
            "{kind:?}"
        );
    }
}

/// The clamp equals candle's clamp forward, and its gradient passes
/// exactly where `lo < x < hi` (ties included: 0 at x = 0 and x = 6).
#[test]
fn clamp_values_and_gradient() {
    let x = var(&[2, 3, 5, 7], 900);
    // scale to [-8, 8) so both bounds of ReLU6 are crossed, plus exact ties
    let xs = (x.as_tensor() * 8.0).unwrap();
    let mut data = to_vec(&xs);
    data[0] = 0.0;
    data[1] = 6.0;
    let x = Var::from_vec(data.clone(), xs.dims(), &Device::Cpu).unwrap();
    for act in [
        RELU,
        RELU6,
        Clamp {
            lo: None,
            hi: Some(1.0),
        },
    ] {
        let (lo, hi) = (act.lo, act.hi);
        let y = super::activation::clamp(x.as_tensor(), act).unwrap();
        let want = x
            .as_tensor()
            .clamp(lo.unwrap_or(f32::MIN), hi.unwrap_or(f32::MAX))
            .unwrap();
        assert_eq!(to_vec(&y), to_vec(&want));
        let r = Tensor::from_vec(rand_vec(y.elem_count(), 901), y.dims(), &Device::Cpu).unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g = to_vec(g.get(x.as_tensor()).unwrap());
        for ((&gv, &xv), &rv) in g.iter().zip(&data).zip(&to_vec(&r)) {
            let passes = lo.is_none_or(|l| xv > l) && hi.is_none_or(|h| xv < h);
            assert_eq!(
                gv,
                if passes { rv } else { 0.0 },
                "x = {xv}, {lo:?}..{hi:?}"
            );
        }
    }
}
/// The MobileNetV2 fixture (1x1, depthwise stride 1 and 2, ReLU6 fused into
/// its convs, residual Adds) through the interpreter equals tract, and a
/// training step's gradient reaches every conv weight.
#[test]
fn mobilenet_fixture_through_the_kernels_matches_tract() {
    use std::collections::HashSet;

    use adaptivenet_onnx::tract_onnx::prelude::Tensor as TractTensor;
    use adaptivenet_onnx::Plan;

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/oracle/fmnist_mobilenetv2.onnx");
    let model = adaptivenet_onnx::load_model(&path).unwrap();
    let g = model.graph.as_ref().unwrap();
    let (inp, out) = (g.input[0].name.clone(), g.output[0].name.clone());
    let convs: HashSet<String> = g
        .node
        .iter()
        .filter(|n| n.op_type == "Conv")
        .map(|n| n.input[1].clone())
        .collect();
    let shape = [4usize, 1, 28, 28];
    let data = rand_vec(shape.iter().product(), 77);
    let interp = super::Interpreter::new(&model, &convs, &Device::Cpu).unwrap();
    let x = Tensor::from_vec(data.clone(), shape.as_slice(), &Device::Cpu).unwrap();
    let y = interp
        .forward(&[(inp.as_str(), x)], &[out.as_str()])
        .unwrap()
        .remove(0);
    let tract = Plan::whole_model(&model, shape[0])
        .unwrap()
        .run(TractTensor::from_shape(&shape, &data).unwrap())
        .unwrap();
    let want: Vec<f32> = tract
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let got = to_vec(&y);
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-3, "logits differ from tract by {d}");
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in interp.named_vars() {
        let gv = grads
            .get(v.as_tensor())
            .expect("a gradient for every conv weight");
        let norm = to_vec(gv).iter().map(|a| a.abs()).sum::<f32>();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
}

/// Add then Relu/ReLU6 as one op equals candle's add, relu and minimum,
/// values and gradients, with either side or both tracked (an untracked
/// side, like a fed cut tensor on a residual join, gets none).
#[test]
fn add_clamp_matches_add_then_clamp() {
    for (i, act) in [RELU, RELU6].into_iter().enumerate() {
        let seed = 1200 + 10 * i as u64;
        let scaled = |s: u64| {
            Var::from_vec(
                rand_vec(2 * 3 * 5 * 4, s).iter().map(|v| v * 8.0).collect(),
                (2, 3, 5, 4),
                &Device::Cpu,
            )
            .unwrap()
        };
        let (a, b) = (scaled(seed), scaled(seed + 1));
        let r = Tensor::from_vec(rand_vec(120, seed + 2), (2, 3, 5, 4), &Device::Cpu).unwrap();
        for (track_a, track_b) in [(true, true), (true, false), (false, true)] {
            let ta = if track_a {
                a.as_tensor().clone()
            } else {
                a.as_tensor().detach()
            };
            let tb = if track_b {
                b.as_tensor().clone()
            } else {
                b.as_tensor().detach()
            };
            let y1 = super::activation::add_clamp(&ta, &tb, act).unwrap();
            let mut y2 = (&ta + &tb).unwrap().relu().unwrap();
            if let Some(hi) = act.hi {
                y2 = y2.minimum(hi).unwrap();
            }
            assert_eq!(to_vec(&y1), to_vec(&y2));
            let g1 = (&y1 * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for (v, tracked) in [(&a, track_a), (&b, track_b)] {
                let got = g1.get(v.as_tensor());
                assert_eq!(got.is_some(), tracked);
                if let Some(got) = got {
                    let want = g2.get(v.as_tensor()).unwrap();
                    assert_eq!(to_vec(got), to_vec(want), "{act:?}");
                }
            }
        }
    }
    let a = var(&[2, 3], 1);
    let b = var(&[3, 2], 2);
    assert!(super::activation::add_clamp(a.as_tensor(), b.as_tensor(), RELU).is_err());
}

/// A conv with a residual input (and Relu, or none) equals candle's conv,
/// bias, add and relu, values and the gradients of input, weight, bias and
/// residual (the last one tracked or not).
#[test]
fn residual_conv_matches_conv_add_clamp() {
    for (i, act) in [Some(RELU), None, Some(RELU6)].into_iter().enumerate() {
        let seed = 1300 + 10 * i as u64;
        let (n, c, o, h) = (3, 4, 5, 7);
        let geom = ConvGeom {
            k: [3, 3],
            s: [1, 1],
            d: [1, 1],
            pad: [1, 1],
            out: [h, h],
        };
        let x = var(&[n, c, h, h], seed);
        let w = var(&[o, c, 3, 3], seed + 1);
        let b = var(&[o], seed + 2);
        let r = var(&[n, o, h, h], seed + 3);
        let y1 = gemm_conv::conv2d_residual(
            x.as_tensor(),
            w.as_tensor(),
            Some(b.as_tensor()),
            r.as_tensor(),
            geom,
            act,
        )
        .unwrap();
        let mut y2 = x
            .as_tensor()
            .conv2d(w.as_tensor(), 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b.as_tensor().reshape((1, o, 1, 1)).unwrap())
            .unwrap()
            .add(r.as_tensor())
            .unwrap();
        if let Some(act) = act {
            y2 = y2.relu().unwrap();
            if let Some(hi) = act.hi {
                y2 = y2.minimum(hi).unwrap();
            }
        }
        let d = max_abs_diff(&y1, &y2);
        assert!(d < 1e-5 * max_abs(&y2), "{act:?}: values differ by {d}");
        let rr =
            Tensor::from_vec(rand_vec(y1.elem_count(), seed + 4), y1.dims(), &Device::Cpu).unwrap();
        let g1 = (&y1 * &rr).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&y2 * &rr).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("x", &x), ("w", &w), ("b", &b), ("r", &r)] {
            let got = g1.get(v.as_tensor()).expect("gradient of the kernel");
            let want = g2.get(v.as_tensor()).expect("reference gradient");
            let d = max_abs_diff(got, want);
            assert!(
                d < 1e-5 * max_abs(want),
                "{act:?}: gradient of {name} differs by {d}"
            );
        }
    }
    // an untracked residual (a fed cut tensor) gets no gradient
    let x = var(&[2, 3, 5, 5], 1);
    let w = var(&[3, 3, 1, 1], 2);
    let r = Tensor::from_vec(rand_vec(150, 3), (2, 3, 5, 5), &Device::Cpu).unwrap();
    let geom = ConvGeom {
        k: [1, 1],
        s: [1, 1],
        d: [1, 1],
        pad: [0, 0],
        out: [5, 5],
    };
    let y = gemm_conv::conv2d_residual(x.as_tensor(), w.as_tensor(), None, &r, geom, Some(RELU))
        .unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&r).is_none());
    assert!(g.get(w.as_tensor()).is_some());
    // a residual of the wrong shape is an error
    let bad = Tensor::zeros((2, 3, 4, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(
        gemm_conv::conv2d_residual(x.as_tensor(), w.as_tensor(), None, &bad, geom, None).is_err()
    );
}

/// The fused expansion (1x1) + depthwise op equals candle's conv2d, bias
/// and relu/minimum for both convs, values and the gradients of the input
/// and all four parameters: strides 1 and 2, paddings 0 and 1 (and one
/// asymmetric), with and without each Relu6, odd and non-square planes.
#[test]
fn expand_depthwise_matches_conv_clamp_conv_clamp() {
    use super::expand_dw::expand_depthwise;

    let reference = |x: &Tensor,
                     w1: &Tensor,
                     b1: &Tensor,
                     act1: Option<Clamp>,
                     wd: &Tensor,
                     bd: &Tensor,
                     [s, d]: [usize; 2],
                     [pt, pl, pb, pr]: [usize; 4],
                     act2: Option<Clamp>| {
        let clamp = |y: Tensor, act: Option<Clamp>| match act {
            Some(act) => {
                let y = y.relu().unwrap();
                match act.hi {
                    Some(hi) => y.minimum(hi).unwrap(),
                    None => y,
                }
            }
            None => y,
        };
        let e = w1.dim(0).unwrap();
        let y = x
            .conv2d(w1, 0, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b1.reshape((1, e, 1, 1)).unwrap())
            .unwrap();
        let y = clamp(y, act1);
        let (_, _, h, w) = y.dims4().unwrap();
        let k = wd.dim(2).unwrap();
        let ek = d * (k - 1) + 1;
        let out = [(h + pt + pb - ek) / s + 1, (w + pl + pr - ek) / s + 1];
        let used = [(out[0] - 1) * s + ek, (out[1] - 1) * s + ek];
        let yp = y
            .pad_with_zeros(2, pt, pb)
            .unwrap()
            .pad_with_zeros(3, pl, pr)
            .unwrap()
            .narrow(2, 0, used[0])
            .unwrap()
            .narrow(3, 0, used[1])
            .unwrap();
        let z = yp
            .conv2d(wd, 0, s, d, e)
            .unwrap()
            .broadcast_add(&bd.reshape((1, e, 1, 1)).unwrap())
            .unwrap();
        (clamp(z, act2), out)
    };
    let mut n_cases = 0;
    // (c, e, h, w, k, stride, dilation, pads)
    let shapes = [
        (3, 5, 9, 9, 3, 1, 1, [1; 4]),
        (3, 5, 9, 9, 3, 2, 1, [1; 4]),
        (4, 6, 7, 10, 3, 2, 1, [0; 4]),
        (2, 7, 8, 8, 3, 1, 1, [0; 4]),
        (5, 4, 11, 7, 3, 2, 2, [1; 4]),
        (3, 6, 9, 8, 3, 2, 1, [1, 0, 0, 2]),
        (16, 64, 28, 28, 3, 2, 1, [1; 4]),
    ];
    for (i, &(c, e, h, w, k, s, d, pads)) in shapes.iter().enumerate() {
        for (j, (act1, act2)) in [
            (Some(RELU6), Some(RELU6)),
            (None, Some(RELU6)),
            (Some(RELU6), None),
            (None, None),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 1400 + 100 * i as u64 + 10 * j as u64;
            let n = 3;
            let x = Var::from_vec(
                rand_vec(n * c * h * w, seed)
                    .iter()
                    .map(|v| v * 4.0)
                    .collect(),
                (n, c, h, w),
                &Device::Cpu,
            )
            .unwrap();
            let w1 = var(&[e, c, 1, 1], seed + 1);
            let b1 = var(&[e], seed + 2);
            // weights up to +-2 so the depthwise's ReLU6 saturates too
            let wd = Var::from_vec(
                rand_vec(e * k * k, seed + 3)
                    .iter()
                    .map(|v| v * 2.0)
                    .collect(),
                (e, 1, k, k),
                &Device::Cpu,
            )
            .unwrap();
            let bd = var(&[e], seed + 4);
            let (y2, out) = reference(
                x.as_tensor(),
                w1.as_tensor(),
                b1.as_tensor(),
                act1,
                wd.as_tensor(),
                bd.as_tensor(),
                [s, d],
                pads,
                act2,
            );
            let geom = ConvGeom {
                k: [k, k],
                s: [s, s],
                d: [d, d],
                pad: [pads[0], pads[1]],
                out,
            };
            let y1 = expand_depthwise(
                x.as_tensor(),
                w1.as_tensor(),
                Some(b1.as_tensor()),
                act1,
                wd.as_tensor(),
                Some(bd.as_tensor()),
                geom,
                act2,
            )
            .unwrap();
            let label = format!("{c}->{e} {h}x{w} k{k} s{s} d{d} {pads:?} {act1:?} {act2:?}");
            let diff = max_abs_diff(&y1, &y2);
            assert!(
                diff < 1e-5 * max_abs(&y2),
                "{label}: values differ by {diff}"
            );
            let r = Tensor::from_vec(rand_vec(y1.elem_count(), seed + 5), y1.dims(), &Device::Cpu)
                .unwrap();
            let g1 = (&y1 * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [
                ("x", &x),
                ("w1", &w1),
                ("b1", &b1),
                ("wd", &wd),
                ("bd", &bd),
            ] {
                let got = g1.get(v.as_tensor()).expect("gradient of the fused op");
                let want = g2.get(v.as_tensor()).expect("reference gradient");
                let diff = max_abs_diff(got, want);
                let scale = max_abs(want);
                assert!(
                    diff < 1e-5 * scale,
                    "{label}: gradient of {name} differs by {diff} (scale {scale})"
                );
            }
            n_cases += 1;
        }
    }
    assert_eq!(n_cases, 28);

    // an untracked input (a fed cut tensor) gets no gradient, the
    // parameters still do; no biases; wrong shapes are errors
    let x = Tensor::from_vec(rand_vec(2 * 3 * 36, 1), (2, 3, 6, 6), &Device::Cpu).unwrap();
    let w1 = var(&[4, 3, 1, 1], 2);
    let wd = var(&[4, 1, 3, 3], 3);
    let geom = ConvGeom {
        k: [3, 3],
        s: [1, 1],
        d: [1, 1],
        pad: [1, 1],
        out: [6, 6],
    };
    let y = expand_depthwise(
        &x,
        w1.as_tensor(),
        None,
        Some(RELU6),
        wd.as_tensor(),
        None,
        geom,
        None,
    )
    .unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&x).is_none());
    assert!(g.get(w1.as_tensor()).is_some() && g.get(wd.as_tensor()).is_some());
    let bad = var(&[5, 1, 3, 3], 4);
    assert!(expand_depthwise(
        &x,
        w1.as_tensor(),
        None,
        None,
        bad.as_tensor(),
        None,
        geom,
        None
    )
    .is_err());
    let bad = var(&[4, 2, 1, 1], 5);
    assert!(expand_depthwise(
        &x,
        bad.as_tensor(),
        None,
        None,
        wd.as_tensor(),
        None,
        geom,
        None
    )
    .is_err());
}

/// The fused expansion + depthwise gradients are bit for bit the same on 1
/// and 3 threads (weight-gradient partial sums over fixed runs of samples,
/// added in order): a sharded elastify must match one process.
#[test]
fn expand_depthwise_gradients_do_not_depend_on_threads() {
    use super::expand_dw::expand_depthwise;

    let (n, c, e, h) = (21, 4, 12, 10);
    let x = var(&[n, c, h, h], 1500);
    let w1 = var(&[e, c, 1, 1], 1501);
    let b1 = var(&[e], 1502);
    let wd = var(&[e, 1, 3, 3], 1503);
    let bd = var(&[e], 1504);
    let geom = ConvGeom {
        k: [3, 3],
        s: [2, 2],
        d: [1, 1],
        pad: [1, 1],
        out: [5, 5],
    };
    let grads = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let y = expand_depthwise(
                x.as_tensor(),
                w1.as_tensor(),
                Some(b1.as_tensor()),
                Some(RELU6),
                wd.as_tensor(),
                Some(bd.as_tensor()),
                geom,
                Some(RELU6),
            )
            .unwrap();
            let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            [&x, &w1, &b1, &wd, &bd].map(|v| to_vec(g.get(v.as_tensor()).unwrap()))
        })
    };
    let (one, three) = (grads(1), grads(3));
    for (a, b) in one.iter().zip(&three) {
        assert!(a.iter().any(|v| *v != 0.0));
        let (a, b): (Vec<u32>, Vec<u32>) = (
            a.iter().map(|v| v.to_bits()).collect(),
            b.iter().map(|v| v.to_bits()).collect(),
        );
        assert_eq!(a, b);
    }
}
