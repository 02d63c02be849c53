//! Tests of the dedicated convolution kernels (depthwise, 1x1): values and
//! both gradients against candle's reference `conv2d` and its backward.

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

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    to_vec(a)
        .iter()
        .zip(to_vec(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `y1` and `y2` agree, and so do the gradients of `sum(y * r)` with
/// respect to each of `vars` (candle's backward on `y2` is the reference).
fn check_grads(label: &str, vars: &[(&str, &Var)], y1: &Tensor, y2: &Tensor, seed: u64) {
    let d = max_abs_diff(y1, y2);
    let scale = to_vec(y2).iter().fold(1f32, |m, v| m.max(v.abs()));
    assert!(d < 1e-5 * scale, "{label}: values differ by {d}");
    let r = Tensor::from_vec(rand_vec(y1.elem_count(), seed), y1.dims(), &Device::Cpu).unwrap();
    let g1 = (y1 * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = (y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for &(name, v) in vars {
        let a = g1.get(v.as_tensor()).expect("gradient of the kernel");
        let b = g2.get(v.as_tensor()).expect("reference gradient");
        let d = max_abs_diff(a, b);
        let scale = to_vec(b).iter().fold(1f32, |m, v| m.max(v.abs()));
        assert!(
            d < 1e-5 * scale,
            "{label}: gradient of {name} differs by {d} (scale {scale})"
        );
    }
}

#[test]
fn depthwise_matches_candle_conv2d_values_and_gradients() {
    let mut seed = 1;
    let mut checked = 0;
    for &c in &[1usize, 3, 8, 17] {
        for &(h, w) in &[(9usize, 9usize), (8, 8), (7, 10)] {
            for &s in &[1usize, 2] {
                for &p in &[0usize, 1] {
                    for &d in &[1usize, 2] {
                        let k = 3;
                        let ek = d * (k - 1) + 1;
                        if h + 2 * p < ek || w + 2 * p < ek {
                            continue;
                        }
                        // candle's own backward needs the same remainder on both axes
                        if (h + 2 * p - ek) % s != (w + 2 * p - ek) % s {
                            continue;
                        }
                        seed += 3;
                        let x = var(&[2, c, h, w], seed);
                        let wv = var(&[c, 1, k, k], seed + 1);
                        let out = [(h + 2 * p - ek) / s + 1, (w + 2 * p - ek) / s + 1];
                        let geom = ConvGeom {
                            k: [k, k],
                            s: [s, s],
                            d: [d, d],
                            pad: [p, p],
                            out,
                        };
                        let b = var(&[c], seed + 5);
                        let y1 = depthwise_conv2d(
                            x.as_tensor(),
                            wv.as_tensor(),
                            Some(b.as_tensor()),
                            geom,
                            None,
                        )
                        .unwrap();
                        let y2 = x
                            .as_tensor()
                            .conv2d(wv.as_tensor(), p, s, d, c)
                            .unwrap()
                            .broadcast_add(&b.as_tensor().reshape((1, c, 1, 1)).unwrap())
                            .unwrap();
                        let label = format!("c{c} {h}x{w} s{s} p{p} d{d}");
                        check_grads(
                            &label,
                            &[("x", &x), ("w", &wv), ("b", &b)],
                            &y1,
                            &y2,
                            seed + 2,
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked >= 40, "only {checked} cases ran");
}

/// Asymmetric padding and windows that leave input rows unused: the
/// reference pads explicitly and crops what no window reaches.
#[test]
fn depthwise_asymmetric_padding_matches_padded_reference() {
    // (h, w, stride, pad top, pad left, pad bottom, pad right)
    let cases = [
        (8usize, 8usize, 2usize, 0usize, 0usize, 1usize, 1usize),
        (9, 7, 2, 1, 0, 0, 2),
        (7, 7, 1, 2, 1, 0, 1),
        (10, 9, 3, 1, 1, 1, 1),
    ];
    for (i, &(h, w, s, pt, pl, pb, pr)) in cases.iter().enumerate() {
        let c = 5;
        let k = 3;
        let x = var(&[3, c, h, w], 100 + i as u64);
        let wv = var(&[c, 1, k, k], 200 + i as u64);
        let out = [(h + pt + pb - k) / s + 1, (w + pl + pr - k) / s + 1];
        let geom = ConvGeom {
            k: [k, k],
            s: [s, s],
            d: [1, 1],
            pad: [pt, pl],
            out,
        };
        let y1 = depthwise_conv2d(x.as_tensor(), wv.as_tensor(), None, geom, None).unwrap();
        let used = [(out[0] - 1) * s + k, (out[1] - 1) * s + k];
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
        let y2 = xp.conv2d(wv.as_tensor(), 0, s, 1, c).unwrap();
        let label = format!("{h}x{w} s{s} pads {pt},{pl},{pb},{pr}");
        check_grads(&label, &[("x", &x), ("w", &wv)], &y1, &y2, 300 + i as u64);
    }
}

/// Only tracked arguments get a gradient (a fed cut tensor gets none).
#[test]
fn depthwise_gradients_only_for_tracked_arguments() {
    let geom = ConvGeom {
        k: [3, 3],
        s: [1, 1],
        d: [1, 1],
        pad: [1, 1],
        out: [6, 6],
    };
    let x = Tensor::from_vec(rand_vec(2 * 4 * 36, 1), (2, 4, 6, 6), &Device::Cpu).unwrap();
    let wv = var(&[4, 1, 3, 3], 2);
    let g = depthwise_conv2d(&x, wv.as_tensor(), None, geom, None)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(&x).is_none());
    assert!(g.get(wv.as_tensor()).is_some());
    // a weight of the wrong shape is an error, not a panic
    let bad = var(&[3, 1, 3, 3], 3);
    assert!(depthwise_conv2d(&x, bad.as_tensor(), None, geom, None).is_err());
    let bad_bias = var(&[3], 4);
    assert!(depthwise_conv2d(&x, wv.as_tensor(), Some(bad_bias.as_tensor()), geom, None).is_err());
}

#[test]
fn gemm_conv_matches_candle_conv2d_values_and_gradients() {
    let mut seed = 500;
    let mut checked = 0;
    // (C, O, kernel)
    for &(c, o, k) in &[
        (3usize, 5usize, 1usize),
        (16, 8, 1),
        (4, 6, 3),
        (1, 3, 3),
        (5, 2, 2),
    ] {
        for &(h, w) in &[(9usize, 9usize), (8, 8), (7, 10)] {
            for &s in &[1usize, 2] {
                for &p in &[0usize, 1] {
                    for &d in &[1usize, 2] {
                        let ek = d * (k - 1) + 1;
                        if h + 2 * p < ek || w + 2 * p < ek || (k == 1 && d > 1) {
                            continue;
                        }
                        if (h + 2 * p - ek) % s != (w + 2 * p - ek) % s {
                            continue;
                        }
                        seed += 3;
                        let x = var(&[3, c, h, w], seed);
                        let wv = var(&[o, c, k, k], seed + 1);
                        let out = [(h + 2 * p - ek) / s + 1, (w + 2 * p - ek) / s + 1];
                        let geom = ConvGeom {
                            k: [k, k],
                            s: [s, s],
                            d: [d, d],
                            pad: [p, p],
                            out,
                        };
                        let b = var(&[o], seed + 5);
                        let y1 = gemm_conv::conv2d(
                            x.as_tensor(),
                            wv.as_tensor(),
                            Some(b.as_tensor()),
                            geom,
                            None,
                        )
                        .unwrap();
                        let y2 = x
                            .as_tensor()
                            .conv2d(wv.as_tensor(), p, s, d, 1)
                            .unwrap()
                            .broadcast_add(&b.as_tensor().reshape((1, o, 1, 1)).unwrap())
                            .unwrap();
                        let label = format!("c{c} o{o} k{k} {h}x{w} s{s} p{p} d{d}");
                        check_grads(
                            &label,
                            &[("x", &x), ("w", &wv), ("b", &b)],
                            &y1,
                            &y2,
                            seed + 2,
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked >= 60, "only {checked} cases ran");
}

#[test]
fn gemm_conv_asymmetric_padding_matches_padded_reference() {
    let cases = [
        (8usize, 8usize, 2usize, 0usize, 0usize, 1usize, 1usize),
        (9, 7, 2, 1, 0, 0, 2),
        (7, 7, 1, 2, 1, 0, 1),
        (10, 9, 3, 1, 1, 1, 1),
    ];
    for (i, &(h, w, s, pt, pl, pb, pr)) in cases.iter().enumerate() {
        let (c, o, k) = (4, 3, 3);
        let x = var(&[2, c, h, w], 600 + i as u64);
        let wv = var(&[o, c, k, k], 700 + i as u64);
        let out = [(h + pt + pb - k) / s + 1, (w + pl + pr - k) / s + 1];
        let geom = ConvGeom {
            k: [k, k],
            s: [s, s],
            d: [1, 1],
            pad: [pt, pl],
            out,
        };
        let y1 = gemm_conv::conv2d(x.as_tensor(), wv.as_tensor(), None, geom, None).unwrap();
        let used = [(out[0] - 1) * s + k, (out[1] - 1) * s + k];
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
        let y2 = xp.conv2d(wv.as_tensor(), 0, s, 1, 1).unwrap();
        let label = format!("{h}x{w} s{s} pads {pt},{pl},{pb},{pr}");
        check_grads(&label, &[("x", &x), ("w", &wv)], &y1, &y2, 800 + i as u64);
    }
}

/// Only tracked arguments get a gradient; a mismatched weight is an error.
#[test]
fn gemm_conv_gradients_only_for_tracked_arguments() {
    let geom = ConvGeom {
        k: [1, 1],
        s: [1, 1],
        d: [1, 1],
        pad: [0, 0],
        out: [5, 5],
    };
    let x = Tensor::from_vec(rand_vec(2 * 4 * 25, 9), (2, 4, 5, 5), &Device::Cpu).unwrap();
    let wv = var(&[6, 4, 1, 1], 10);
    let g = gemm_conv::conv2d(&x, wv.as_tensor(), None, geom, None)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(&x).is_none());
    assert!(g.get(wv.as_tensor()).is_some());
    let xv = var(&[2, 4, 5, 5], 11);
    let w = Tensor::from_vec(rand_vec(24, 12), (6, 4, 1, 1), &Device::Cpu).unwrap();
    let g = gemm_conv::conv2d(xv.as_tensor(), &w, None, geom, None)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(xv.as_tensor()).is_some());
    assert!(g.get(&w).is_none());
    let bad = var(&[6, 3, 1, 1], 13);
    assert!(gemm_conv::conv2d(&x, bad.as_tensor(), None, geom, None).is_err());
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
    for (lo, hi) in [
        (Some(0f32), None),
        (Some(0f32), Some(6f32)),
        (None, Some(1f32)),
    ] {
        let y = super::activation::clamp(x.as_tensor(), Clamp { lo, hi }).unwrap();
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

/// A Relu/ReLU6 fused into either kernel equals the conv followed by
/// candle's relu and minimum, values and all gradients (random data: no
/// exact ties).
#[test]
fn fused_activation_matches_conv_then_clamp() {
    let relu6 = Clamp {
        lo: Some(0.0),
        hi: Some(6.0),
    };
    let relu = Clamp {
        lo: Some(0.0),
        hi: None,
    };
    let reference = |y: Tensor, act: Clamp| -> Tensor {
        let y = y.relu().unwrap();
        match act.hi {
            Some(h) => y.minimum(h).unwrap(),
            None => y,
        }
    };
    for (i, act) in [relu6, relu].into_iter().enumerate() {
        let seed = 1000 + 10 * i as u64;
        let geom = ConvGeom {
            k: [3, 3],
            s: [2, 2],
            d: [1, 1],
            pad: [1, 1],
            out: [4, 4],
        };
        // values up to about +-12 so ReLU6 saturates somewhere
        let x = Var::from_vec(
            rand_vec(2 * 6 * 64, seed).iter().map(|v| v * 4.0).collect(),
            (2, 6, 8, 8),
            &Device::Cpu,
        )
        .unwrap();
        let wd = var(&[6, 1, 3, 3], seed + 1);
        let bd = var(&[6], seed + 2);
        let y1 = depthwise_conv2d(
            x.as_tensor(),
            wd.as_tensor(),
            Some(bd.as_tensor()),
            geom,
            Some(act),
        )
        .unwrap();
        let pre = x
            .as_tensor()
            .conv2d(wd.as_tensor(), 1, 2, 1, 6)
            .unwrap()
            .broadcast_add(&bd.as_tensor().reshape((1, 6, 1, 1)).unwrap())
            .unwrap();
        let vars = [("x", &x), ("w", &wd), ("b", &bd)];
        check_grads(
            "depthwise + clamp",
            &vars,
            &y1,
            &reference(pre, act),
            seed + 3,
        );
        let wg = var(&[5, 6, 3, 3], seed + 4);
        let bg = var(&[5], seed + 5);
        let y1 = gemm_conv::conv2d(
            x.as_tensor(),
            wg.as_tensor(),
            Some(bg.as_tensor()),
            geom,
            Some(act),
        )
        .unwrap();
        let pre = x
            .as_tensor()
            .conv2d(wg.as_tensor(), 1, 2, 1, 1)
            .unwrap()
            .broadcast_add(&bg.as_tensor().reshape((1, 5, 1, 1)).unwrap())
            .unwrap();
        let vars = [("x", &x), ("w", &wg), ("b", &bg)];
        check_grads(
            "gemm conv + clamp",
            &vars,
            &y1,
            &reference(pre, act),
            seed + 6,
        );
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
