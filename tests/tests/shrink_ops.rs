//! Shrink branches through every element-wise op a CNN puts between two
//! convs, on small hand-made ONNX graphs (stem conv -> block -> head conv,
//! the block being `expand` 1x1 -> ops under test -> `project` 3x3).
//!
//! For each op: the pruned copy at ratio 1.0 computes exactly what the block
//! computes (tract, bit for bit); at ratio 0.5 the subnet with the pruned
//! copy equals the oracle with the dropped channels' input weights of every
//! reading conv set to zero (tract and onnxruntime), and differs from the
//! unmodified oracle, so the check can fail. Ops that cannot carry pruned
//! channels (a channel shuffle, an Add with an unpruned tensor) stop the
//! shrink with an error that names the op, the node and `skip_blocks`.

use adaptivenet_onnx::branches::{build_pruned_copy, build_shrink, BuiltBranch};
use adaptivenet_onnx::dataset::max_abs_diff;
use adaptivenet_onnx::extract::{batched, materialise, value_info};
use adaptivenet_onnx::supernet::assemble;
use adaptivenet_onnx::tract_onnx::pb::{
    attribute_proto::AttributeType, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto,
};
use adaptivenet_onnx::tract_onnx::prelude::Tensor;
use adaptivenet_onnx::weights::{dims, make_f32, SplitMix};
use adaptivenet_onnx::{Error, GraphIndex, Oracle, Plan, Span};
use adaptivenet_testkit::reference::{onnxruntime, oracle_with_dropped_channels_zeroed};

const CIN: usize = 3;
const C: usize = 6; // block input and output channels
const HID: usize = 16; // hidden (expansion) channels, the ones pruned
const HW: usize = 6;

fn node(
    name: &str,
    op: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: name.into(),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

fn tensor_attr(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Tensor as i32,
        t: Some(t),
        ..Default::default()
    }
}

fn i64s(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![v.len() as i64],
        data_type: 7,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// The graph under construction: nodes, initializers and a generator.
struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    rng: SplitMix,
}

impl Builder {
    fn init(&mut self, name: &str, d: &[usize], scale: f32, offset: f32) -> String {
        let n: usize = d.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| self.rng.uniform() * scale + offset)
            .collect();
        self.inits.push(make_f32(name, d, &data));
        name.to_string()
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        input: &str,
        cout: usize,
        cin_per_group: usize,
        k: usize,
        group: usize,
        output: &str,
    ) {
        let w = self.init(
            &format!("{name}.weight"),
            &[cout, cin_per_group, k, k],
            1.5 / ((cin_per_group * k * k) as f32).sqrt(),
            0.0,
        );
        let b = self.init(&format!("{name}.bias"), &[cout], 0.2, 0.0);
        let p = (k / 2) as i64;
        let mut attrs = vec![
            ints("kernel_shape", &[k as i64, k as i64]),
            ints("pads", &[p, p, p, p]),
        ];
        if group > 1 {
            attrs.push(int("group", group as i64));
        }
        self.nodes
            .push(node(name, "Conv", &[input, &w, &b], output, attrs));
    }
}

/// stem -> c0 -> expand -> `h` -> middle(h) -> `m` -> project -> c1 -> head -> y.
fn model(opset: i64, middle: impl FnOnce(&mut Builder)) -> Oracle {
    let mut b = Builder {
        nodes: vec![],
        inits: vec![],
        rng: SplitMix(12),
    };
    b.conv("stem", "x", C, CIN, 3, 1, "c0");
    b.conv("expand", "c0", HID, C, 1, 1, "h");
    middle(&mut b);
    b.conv("project", "m", C, HID, 3, 1, "c1");
    b.conv("head", "c1", 3, C, 1, 1, "y");
    let graph = GraphProto {
        name: "shrink-ops".into(),
        node: b.nodes,
        initializer: b.inits,
        input: vec![value_info("x", 1, Some(&batched(&[1, CIN, HW, HW])))],
        output: vec![value_info("y", 1, None)],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        producer_name: "adaptivenet-tests".into(),
        graph: Some(graph),
        ..Default::default()
    };
    Oracle::from_model(
        model,
        "shrink-ops",
        Some(&["c0".to_string(), "c1".to_string()]),
    )
    .unwrap()
}

fn input(batch: usize) -> Tensor {
    let mut rng = SplitMix(99);
    let data: Vec<f32> = (0..batch * CIN * HW * HW)
        .map(|_| rng.uniform() * 2.0)
        .collect();
    Tensor::from_shape(&[batch, CIN, HW, HW], &data).unwrap()
}

fn run(m: &ModelProto, x: &Tensor) -> Tensor {
    Plan::whole_model(m, x.shape()[0])
        .unwrap()
        .run(x.clone())
        .unwrap()
}

/// The subnet stem -> branch -> head.
fn subnet(oracle: &Oracle, b: &BuiltBranch) -> ModelProto {
    let supernet = assemble(oracle, std::slice::from_ref(b)).unwrap();
    let index = GraphIndex::of_model(&supernet).unwrap();
    let l = &oracle.layout;
    materialise(
        &supernet,
        &index,
        &[l.stem(), Span::new(&l.cuts[0], &b.output), l.head()],
    )
    .unwrap()
}

/// The checks every prunable op must pass; returns the pruned branch at 0.5.
fn check_prunes(what: &str, oracle: &Oracle, depthwise: &[&str]) -> BuiltBranch {
    let x = input(2);
    let want = run(&oracle.model, &x);
    // ratio 1.0: every channel kept, the copy is the block exactly
    let full = build_pruned_copy(oracle, 0, 1.0).unwrap();
    assert_eq!(full.pruned.len(), 1, "{what}");
    assert_eq!(full.pruned[0].keep, (0..HID).collect::<Vec<_>>(), "{what}");
    let got = run(&subnet(oracle, &full), &x);
    assert_eq!(max_abs_diff(&want, &got).unwrap(), 0.0, "{what}: ratio 1.0");
    // ratio 0.5: the shrink branch elastify builds
    let half = build_shrink(oracle, 0, 0.5).unwrap();
    assert_eq!(half.id.to_string(), "s0@50");
    assert_eq!(half.pruned.len(), 1, "{what}");
    let layer = &half.pruned[0];
    assert_eq!(layer.conv, "expand");
    assert_eq!(layer.channels, HID);
    assert_eq!(layer.keep.len(), HID / 2, "{what}");
    assert_eq!(layer.readers, vec!["project".to_string()], "{what}");
    assert_eq!(layer.depthwise, depthwise, "{what}");
    let expand_w = half
        .initializers
        .iter()
        .find(|t| t.name.ends_with("expand.weight"))
        .unwrap();
    assert_eq!(dims(expand_w), vec![HID / 2, C, 1, 1], "{what}");
    let sub = subnet(oracle, &half);
    let got = run(&sub, &x);
    let zeroed = run(
        &oracle_with_dropped_channels_zeroed(oracle, &half).unwrap(),
        &x,
    );
    let d = max_abs_diff(&zeroed, &got).unwrap();
    let changed = max_abs_diff(&want, &got).unwrap();
    println!("{what}: ratio 0.5 vs zeroed channels {d:e}, vs oracle {changed:e}");
    assert!(d <= 1e-5, "{what}: pruned vs zeroed channels {d}");
    assert!(
        changed > 1e-3,
        "{what}: pruning half the channels must change the output"
    );
    let ort = onnxruntime(&sub, &x, &format!("shrink-ops-{what}")).unwrap();
    let d_ort = max_abs_diff(&got, &ort).unwrap();
    assert!(d_ort <= 1e-5, "{what}: tract vs onnxruntime {d_ort}");
    half
}

fn unary(op: &'static str, attrs: Vec<AttributeProto>) -> impl FnOnce(&mut Builder) {
    move |b: &mut Builder| b.nodes.push(node(op, op, &["h"], "m", attrs))
}

#[test]
fn relu_leaky_relu_sigmoid_hard_sigmoid_and_hard_swish_prune_exactly() {
    check_prunes("Relu", &model(14, unary("Relu", vec![])), &[]);
    check_prunes(
        "LeakyRelu",
        &model(14, unary("LeakyRelu", vec![float("alpha", 0.1)])),
        &[],
    );
    check_prunes("Sigmoid", &model(14, unary("Sigmoid", vec![])), &[]);
    check_prunes(
        "HardSigmoid",
        &model(
            14,
            unary("HardSigmoid", vec![float("alpha", 0.3), float("beta", 0.4)]),
        ),
        &[],
    );
    check_prunes("HardSwish", &model(14, unary("HardSwish", vec![])), &[]);
}

#[test]
fn clip_prunes_with_min_max_as_initializers_constants_or_attributes() {
    // opset 13: min/max are inputs, here initializers (as torch exports ReLU6)
    let o = model(13, |b| {
        let lo = b.init("clip.min", &[], 0.0, -0.2);
        let hi = b.init("clip.max", &[], 0.0, 0.4);
        b.nodes
            .push(node("clip", "Clip", &["h", &lo, &hi], "m", vec![]));
    });
    check_prunes("Clip(initializers)", &o, &[]);
    // min/max made by Constant nodes, max only
    let o = model(13, |b| {
        b.nodes.push(node(
            "max_const",
            "Constant",
            &[],
            "clip.max",
            vec![tensor_attr("value", make_f32("v", &[], &[0.3]))],
        ));
        b.nodes
            .push(node("clip", "Clip", &["h", "", "clip.max"], "m", vec![]));
    });
    check_prunes("Clip(Constant max)", &o, &[]);
    // opset 10: min/max are attributes
    let o = model(
        10,
        unary("Clip", vec![float("min", -0.1), float("max", 0.5)]),
    );
    check_prunes("Clip(attributes)", &o, &[]);
}

#[test]
fn prelu_slices_a_per_channel_slope_and_keeps_a_shared_one() {
    let o = model(13, |b| {
        let s = b.init("prelu.slope", &[HID, 1, 1], 0.5, 0.0);
        b.nodes
            .push(node("prelu", "PRelu", &["h", &s], "m", vec![]));
    });
    let half = check_prunes("PRelu(per channel)", &o, &[]);
    let slope = half
        .initializers
        .iter()
        .find(|t| t.name.ends_with("prelu.slope"))
        .unwrap();
    assert_eq!(dims(slope), vec![HID / 2, 1, 1]);
    let o = model(13, |b| {
        let s = b.init("prelu.slope", &[1], 0.0, 0.25);
        b.nodes
            .push(node("prelu", "PRelu", &["h", &s], "m", vec![]));
    });
    let half = check_prunes("PRelu(shared)", &o, &[]);
    let slope = half
        .initializers
        .iter()
        .find(|t| t.name.ends_with("prelu.slope"))
        .unwrap();
    assert_eq!(dims(slope), vec![1]);
}

#[test]
fn silu_as_x_times_sigmoid_x_prunes_both_operands_alike() {
    let o = model(13, |b| {
        b.nodes.push(node("sig", "Sigmoid", &["h"], "s", vec![]));
        b.nodes.push(node("silu", "Mul", &["h", "s"], "m", vec![]));
    });
    check_prunes("SiLU", &o, &[]);
    // a per-channel scale after it, as a constant Mul operand
    let o = model(13, |b| {
        let sc = b.init("scale", &[1, HID, 1, 1], 1.0, 0.5);
        b.nodes
            .push(node("scale_mul", "Mul", &["h", &sc], "s_in", vec![]));
        b.nodes.push(node("sig", "Sigmoid", &["s_in"], "s", vec![]));
        b.nodes
            .push(node("silu", "Mul", &["s_in", "s"], "m", vec![]));
    });
    check_prunes("scale+SiLU", &o, &[]);
}

#[test]
fn hard_swish_written_out_with_constant_nodes_prunes() {
    // x * Clip(x + 3, 0, 6) / 6 with every constant a Constant node, as
    // exporters write HardSwish for opsets without it
    let o = model(13, |b| {
        for (name, v) in [("three", 3.0), ("zero", 0.0), ("six", 6.0)] {
            b.nodes.push(node(
                name,
                "Constant",
                &[],
                name,
                vec![tensor_attr("value", make_f32(name, &[], &[v]))],
            ));
        }
        b.nodes
            .push(node("plus3", "Add", &["h", "three"], "p", vec![]));
        b.nodes
            .push(node("relu6", "Clip", &["p", "zero", "six"], "q", vec![]));
        b.nodes.push(node("times", "Mul", &["h", "q"], "r", vec![]));
        b.nodes
            .push(node("div6", "Div", &["r", "six"], "m", vec![]));
    });
    check_prunes("HardSwish(written out)", &o, &[]);
    // a per-channel scale stored in a Constant node is sliced in the node
    let o = model(13, |b| {
        let mut rng = SplitMix(5);
        let v: Vec<f32> = (0..HID).map(|_| rng.uniform() + 1.5).collect();
        b.nodes.push(node(
            "scale_const",
            "Constant",
            &[],
            "scale",
            vec![tensor_attr("value", make_f32("scale", &[HID, 1, 1], &v))],
        ));
        b.nodes
            .push(node("scale_mul", "Mul", &["h", "scale"], "m", vec![]));
    });
    let half = check_prunes("Mul(per-channel Constant)", &o, &[]);
    let c = half
        .nodes
        .iter()
        .find(|n| n.name.ends_with("/scale_const"))
        .unwrap();
    assert_eq!(
        c.attribute[0].t.as_ref().unwrap().dims,
        vec![HID as i64 / 2, 1, 1]
    );
}

#[test]
fn batch_normalization_is_sliced() {
    let o = model(14, |b| {
        let s = b.init("bn.scale", &[HID], 0.5, 1.0);
        let bias = b.init("bn.bias", &[HID], 0.3, 0.0);
        let mean = b.init("bn.mean", &[HID], 0.3, 0.0);
        let var = b.init("bn.var", &[HID], 0.4, 0.6);
        b.nodes.push(node(
            "bn",
            "BatchNormalization",
            &["h", &s, &bias, &mean, &var],
            "bn_out",
            vec![float("epsilon", 1e-5)],
        ));
        b.nodes.push(node("relu", "Relu", &["bn_out"], "m", vec![]));
    });
    let half = check_prunes("BatchNormalization", &o, &[]);
    for name in ["bn.scale", "bn.bias", "bn.mean", "bn.var"] {
        let t = half
            .initializers
            .iter()
            .find(|t| t.name.ends_with(name))
            .unwrap();
        assert_eq!(dims(t), vec![HID / 2], "{name}");
    }
}

#[test]
fn an_inverted_residual_prunes_through_its_depthwise_conv() {
    // expand -> ReLU6 -> depthwise 3x3 (+bias) -> ReLU6 -> project
    let o = model(13, |b| {
        let lo = b.init("six.min", &[], 0.0, 0.0);
        let hi = b.init("six.max", &[], 0.0, 6.0);
        b.nodes
            .push(node("relu6a", "Clip", &["h", &lo, &hi], "a", vec![]));
        b.conv("dw", "a", HID, 1, 3, HID, "d");
        b.nodes
            .push(node("relu6b", "Clip", &["d", &lo, &hi], "m", vec![]));
    });
    let half = check_prunes("depthwise", &o, &["dw"]);
    let dw = half.nodes.iter().find(|n| n.name.ends_with("/dw")).unwrap();
    let g = dw.attribute.iter().find(|a| a.name == "group").unwrap();
    assert_eq!(g.i as usize, HID / 2);
    let w = half
        .initializers
        .iter()
        .find(|t| t.name.ends_with("dw.weight"))
        .unwrap();
    assert_eq!(dims(w), vec![HID / 2, 1, 3, 3]);
    // depthwise without bias, then BN and HardSwish (MobileNetV3 style)
    let o = model(14, |b| {
        let w = b.init("dw.weight", &[HID, 1, 3, 3], 0.5, 0.0);
        b.nodes.push(node(
            "dw",
            "Conv",
            &["h", &w],
            "d",
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("pads", &[1, 1, 1, 1]),
                int("group", HID as i64),
            ],
        ));
        let s = b.init("bn.scale", &[HID], 0.5, 1.0);
        let bias = b.init("bn.bias", &[HID], 0.3, 0.0);
        let mean = b.init("bn.mean", &[HID], 0.3, 0.0);
        let var = b.init("bn.var", &[HID], 0.4, 0.6);
        b.nodes.push(node(
            "bn",
            "BatchNormalization",
            &["d", &s, &bias, &mean, &var],
            "bn_out",
            vec![],
        ));
        b.nodes
            .push(node("hswish", "HardSwish", &["bn_out"], "m", vec![]));
    });
    check_prunes("depthwise+BN+HardSwish", &o, &["dw"]);
}

fn cannot_prune(oracle: &Oracle) -> (String, String, String) {
    let err = build_shrink(oracle, 0, 0.5).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("skip_blocks"), "{msg}");
    assert!(msg.contains("block 0"), "{msg}");
    match err {
        Error::CannotPrune(e) => {
            assert_eq!(e.conv, "expand", "{msg}");
            assert!(msg.contains(&format!("`{}` ({})", e.node, e.op)), "{msg}");
            (e.node, e.op, msg)
        }
        other => panic!("expected CannotPrune, got {other}"),
    }
}

#[test]
fn a_channel_shuffle_cannot_be_pruned_and_the_error_names_the_op_and_skip_blocks() {
    let o = model(13, |b| {
        b.inits
            .push(i64s("shape5", &[1, 2, 8, HW as i64, HW as i64]));
        b.inits
            .push(i64s("shape4", &[1, HID as i64, HW as i64, HW as i64]));
        b.nodes.push(node(
            "split_groups",
            "Reshape",
            &["h", "shape5"],
            "r5",
            vec![],
        ));
        b.nodes.push(node(
            "shuffle",
            "Transpose",
            &["r5"],
            "t5",
            vec![ints("perm", &[0, 2, 1, 3, 4])],
        ));
        b.nodes.push(node(
            "merge_groups",
            "Reshape",
            &["t5", "shape4"],
            "m",
            vec![],
        ));
    });
    // the block itself is fine: the oracle runs
    run(&o.model, &input(1));
    let (node, op, msg) = cannot_prune(&o);
    assert_eq!(
        (node.as_str(), op.as_str()),
        ("split_groups", "Reshape"),
        "{msg}"
    );
    println!("{msg}");
}

#[test]
fn an_add_with_an_unpruned_tensor_cannot_be_pruned() {
    // h + expand2(c0): the second operand has all 16 channels
    let o = model(13, |b| {
        b.conv("expand2", "c0", HID, C, 1, 1, "h2");
        b.nodes.push(node("sum", "Add", &["h", "h2"], "m", vec![]));
    });
    let err = build_shrink(&o, 0, 0.5).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::CannotPrune(e) if e.op == "Add" && e.node == "sum"),
        "{msg}"
    );
    assert!(
        msg.contains("does not carry the same pruned channels"),
        "{msg}"
    );
    assert!(msg.contains("skip_blocks"), "{msg}");
}
