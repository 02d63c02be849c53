//! The MobileNetV2-style oracle fixture (`tests/fixtures/make_mobilenet.py`):
//! block detection finds its 10 inverted residuals, and shrink branches
//! prune each one on its expansion channels through ReLU6 (`Clip`), the
//! depthwise conv and into the projection, keeping the block's shapes. The
//! supernet's oracle path is the oracle bit for bit; every single-branch
//! shrink subnet materialises and runs in tract and onnxruntime, and equals
//! the oracle with the dropped channels zeroed.

use adaptivenet_onnx::branches::{build_pruned_copy, build_shrink, BuiltBranch};
use adaptivenet_onnx::dataset::{argmax_rows, max_abs_diff};
use adaptivenet_onnx::extract::materialise;
use adaptivenet_onnx::facts::infer_facts;
use adaptivenet_onnx::npy::read_npy;
use adaptivenet_onnx::supernet::assemble;
use adaptivenet_onnx::tract_onnx::pb::ModelProto;
use adaptivenet_onnx::tract_onnx::prelude::Tensor;
use adaptivenet_onnx::{GraphIndex, Oracle, Plan, Span};
use adaptivenet_testkit::fixtures::{fixtures, mobilenet_path, subset};
use adaptivenet_testkit::reference::{onnxruntime, oracle_with_dropped_channels_zeroed};

fn oracle() -> Oracle {
    Oracle::load(mobilenet_path(), None).unwrap()
}

fn meta() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("oracle/fmnist_mobilenetv2.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn path_with(oracle: &Oracle, b: &BuiltBranch) -> Vec<Span> {
    let l = &oracle.layout;
    let mut path = vec![l.stem()];
    for i in 0..l.num_blocks() {
        if i == b.id.from_cut() {
            path.push(Span::new(&l.cuts[i], &b.output));
        } else {
            path.push(l.block(i));
        }
    }
    path.push(l.head());
    path
}

fn run(m: &ModelProto, x: &Tensor) -> Tensor {
    Plan::whole_model(m, x.shape()[0])
        .unwrap()
        .run(x.clone())
        .unwrap()
}

#[test]
fn blocks_are_the_ten_inverted_residuals() {
    let oracle = oracle();
    let l = &oracle.layout;
    assert_eq!(l.num_blocks(), 10);
    let meta = meta();
    let arch = meta["architecture"]["blocks"].as_array().unwrap();
    assert_eq!(arch.len(), 10);
    // the residual Adds close blocks: each is a cut
    for t in meta["residual_block_outputs"].as_array().unwrap() {
        let t = t.as_str().unwrap();
        assert!(l.cuts.iter().any(|c| c == t), "{t} is not a cut");
    }
    for (i, a) in arch.iter().enumerate() {
        let part = oracle.part(&l.block(i), Some(i)).unwrap();
        let n = |op: &str| part.stats.op_counts.get(op).copied().unwrap_or(0);
        // expand 1x1, depthwise 3x3, project 1x1; ReLU6 after the first two
        assert_eq!(n("Conv"), 3, "block {i}: {:?}", part.stats.op_counts);
        assert_eq!(n("Clip"), 2, "block {i}: {:?}", part.stats.op_counts);
        let residual = a["residual"].as_bool().unwrap();
        assert_eq!(n("Add"), residual as usize, "block {i}");
        let (cin, cout) = (a["in"].as_u64().unwrap(), a["out"].as_u64().unwrap());
        assert_eq!(part.input_shape[1] as u64, cin, "block {i}");
        assert_eq!(part.output_shape[1] as u64, cout, "block {i}");
    }
}

#[test]
fn every_shrink_branch_keeps_its_block_shapes_and_the_oracle_path_is_exact() {
    let oracle = oracle();
    let meta = meta();
    let arch = meta["architecture"]["blocks"].as_array().unwrap();
    let n = oracle.layout.num_blocks();
    let mut branches = Vec::new();
    assert_eq!(arch.len(), n);
    for (b, block) in arch.iter().enumerate() {
        let hidden = block["hidden"].as_u64().unwrap() as usize;
        for r in [0.5, 0.25] {
            let br = build_shrink(&oracle, b, r).unwrap();
            assert_eq!(br.pruned.len(), 1, "{}", br.id);
            let layer = &br.pruned[0];
            assert_eq!(layer.channels, hidden, "{}", br.id);
            assert_eq!(layer.keep.len(), (hidden as f64 * r).round() as usize);
            assert_eq!(layer.depthwise.len(), 1, "{}", br.id);
            assert_eq!(layer.readers.len(), 1, "{}", br.id);
            assert!(layer.conv.contains("/pw/"), "{}: {}", br.id, layer.conv);
            assert!(layer.depthwise[0].contains("/dw/"), "{}", br.id);
            assert!(layer.readers[0].contains("/pwl/"), "{}", br.id);
            branches.push(br);
        }
    }
    let supernet = assemble(&oracle, &branches).unwrap();
    let facts = infer_facts(&supernet, 1).unwrap();
    for b in &branches {
        let want = &oracle
            .facts
            .get(&oracle.layout.cuts[b.id.to_cut()])
            .unwrap()
            .shape;
        assert_eq!(&facts.get(&b.output).unwrap().shape, want, "{}", b.id);
    }
    let x = subset(1000).batch(0, 16).unwrap();
    let a = run(&oracle.model, &x);
    assert_eq!(max_abs_diff(&a, &run(&supernet, &x)).unwrap(), 0.0);
    let index = GraphIndex::of_model(&supernet).unwrap();
    let sub = materialise(&supernet, &index, &oracle.layout.oracle_path()).unwrap();
    assert_eq!(max_abs_diff(&a, &run(&sub, &x)).unwrap(), 0.0);
}

#[test]
fn a_copy_keeping_every_channel_is_each_block_bit_for_bit() {
    let oracle = oracle();
    let x = subset(1000).batch(0, 8).unwrap();
    let want = run(&oracle.model, &x);
    for b in 0..oracle.layout.num_blocks() {
        let br = build_pruned_copy(&oracle, b, 1.0).unwrap();
        let supernet = assemble(&oracle, std::slice::from_ref(&br)).unwrap();
        let index = GraphIndex::of_model(&supernet).unwrap();
        let sub = materialise(&supernet, &index, &path_with(&oracle, &br)).unwrap();
        assert_eq!(
            max_abs_diff(&want, &run(&sub, &x)).unwrap(),
            0.0,
            "block {b}"
        );
    }
}

#[test]
fn every_single_branch_shrink_subnet_runs_in_tract_and_onnxruntime() {
    let oracle = oracle();
    let n = oracle.layout.num_blocks();
    let mut branches = Vec::new();
    for b in 0..n {
        for r in [0.5, 0.25] {
            branches.push(build_shrink(&oracle, b, r).unwrap());
        }
    }
    let supernet = assemble(&oracle, &branches).unwrap();
    let index = GraphIndex::of_model(&supernet).unwrap();
    let data = subset(1000);
    let m = 200;
    let x = data.batch(0, m).unwrap();
    let labels = &data.labels.as_ref().unwrap()[..m];
    let acc = |t: &Tensor| {
        argmax_rows(t)
            .unwrap()
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p as i64 == **l)
            .count() as f64
            / m as f64
    };
    let oracle_out = run(&oracle.model, &x);
    let oracle_acc = acc(&oracle_out);
    let x8 = data.batch(0, 8).unwrap();
    for b in &branches {
        let sub = materialise(&supernet, &index, &path_with(&oracle, b)).unwrap();
        let out = run(&sub, &x);
        let a = acc(&out);
        // the pruned subnet is the oracle with the dropped channels zeroed
        let zeroed = run(
            &oracle_with_dropped_channels_zeroed(&oracle, b).unwrap(),
            &x,
        );
        let d = max_abs_diff(&zeroed, &out).unwrap();
        let changed = max_abs_diff(&oracle_out, &out).unwrap();
        // onnxruntime opens the materialised file and agrees with tract
        let t8 = run(&sub, &x8);
        let ort = onnxruntime(&sub, &x8, &b.id.to_string()).unwrap();
        let d_ort = max_abs_diff(&t8, &ort).unwrap();
        println!(
            "{:<7} untrained top-1 {a:.3} (oracle {oracle_acc:.3}); vs zeroed channels {d:.1e}, vs oracle {changed:.2}, tract vs ort {d_ort:.1e}",
            b.id.to_string()
        );
        assert!(d <= 1e-4, "{}: pruned vs zeroed channels {d}", b.id);
        assert!(changed > 1e-3, "{}: pruning must change the logits", b.id);
        assert!(d_ort <= 1e-4, "{}: tract vs onnxruntime {d_ort}", b.id);
    }
}

#[test]
fn onnxruntime_reference_logits_match_tract() {
    let a = read_npy(fixtures().join("oracle/ref_input.npy")).unwrap();
    let x = Tensor::from_shape(&a.shape, &a.to_f32()).unwrap();
    let r = read_npy(fixtures().join("oracle/ref_logits_ort_mobilenetv2.npy")).unwrap();
    let want = Tensor::from_shape(&r.shape, &r.to_f32()).unwrap();
    let got = oracle().whole_plan(a.shape[0]).unwrap().run(x).unwrap();
    let d = max_abs_diff(&want, &got).unwrap();
    println!("tract vs committed onnxruntime logits: {d:e}");
    assert!(d <= 1e-4, "{d}");
}
