//! Merge and shrink branches built from the fixture's pretrained blocks,
//! assembled into a supernet: shapes fit, the oracle path is the oracle bit
//! for bit, and every single-branch subnet runs in tract.

use adaptivenet_onnx::branches::{build_merge, build_shrink, BuiltBranch, MergeSource};
use adaptivenet_onnx::bundle::{BranchId, SubnetId};
use adaptivenet_onnx::dataset::{argmax_rows, max_abs_diff};
use adaptivenet_onnx::extract::materialise;
use adaptivenet_onnx::facts::infer_facts;
use adaptivenet_onnx::supernet::assemble;
use adaptivenet_onnx::{GraphIndex, Oracle, Plan, Span};
use adaptivenet_testkit::fixtures::{oracle_path, subset};

fn all_branches(oracle: &Oracle, source: MergeSource) -> Vec<BuiltBranch> {
    let n = oracle.layout.num_blocks();
    let mut out = Vec::new();
    for span in [2, 3] {
        for from in 0..=n - span {
            out.push(build_merge(oracle, from, span, source, 7).unwrap());
        }
    }
    for b in 0..n {
        for r in [0.5, 0.25] {
            out.push(build_shrink(oracle, b, r).unwrap());
        }
    }
    out
}

fn path_with(oracle: &Oracle, b: &BuiltBranch) -> Vec<Span> {
    let l = &oracle.layout;
    let mut path = vec![l.stem()];
    let (f, t) = (b.id.from_cut(), b.id.to_cut());
    for i in 0..f {
        path.push(l.block(i));
    }
    path.push(Span::new(&l.cuts[f], &b.output));
    for i in t..l.num_blocks() {
        path.push(l.block(i));
    }
    path.push(l.head());
    path
}

#[test]
fn supernet_branches_have_the_shapes_of_their_cuts_and_the_oracle_path_is_exact() {
    let oracle = Oracle::load(oracle_path(), None).unwrap();
    let branches = all_branches(&oracle, MergeSource::Best);
    assert_eq!(branches.len(), 15 + 18);
    // with `best`, every merge of the fixture copies a block whose shapes fit: nothing re-created
    assert!(branches.iter().all(|b| b.reinitialised.is_empty()));
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
    // run as is, the supernet computes the oracle's output exactly
    let data = subset(1000);
    let x = data.batch(0, 16).unwrap();
    let a = Plan::whole_model(&oracle.model, 16)
        .unwrap()
        .run(x.clone())
        .unwrap();
    let s = Plan::whole_model(&supernet, 16)
        .unwrap()
        .run(x.clone())
        .unwrap();
    assert_eq!(max_abs_diff(&a, &s).unwrap(), 0.0);
    // the oracle path materialised from the supernet, too
    let index = GraphIndex::of_model(&supernet).unwrap();
    let sub = materialise(&supernet, &index, &oracle.layout.oracle_path()).unwrap();
    let o = Plan::whole_model(&sub, 16).unwrap().run(x).unwrap();
    assert_eq!(max_abs_diff(&a, &o).unwrap(), 0.0);
    // subnet ids round-trip
    let id: SubnetId = "b0 m1x2 b3 s4@50 b5 b6 b7 b8".parse().unwrap();
    assert_eq!(id.to_string(), "b0 m1x2 b3 s4@50 b5 b6 b7 b8");
}

#[test]
fn every_single_branch_subnet_runs_and_pretrained_copies_keep_some_accuracy() {
    let oracle = Oracle::load(oracle_path(), None).unwrap();
    let branches = all_branches(&oracle, MergeSource::Best);
    let supernet = assemble(&oracle, &branches).unwrap();
    let index = GraphIndex::of_model(&supernet).unwrap();
    let data = subset(1000);
    let n = 200;
    let x = data.batch(0, n).unwrap();
    let labels = &data.labels.as_ref().unwrap()[..n];
    let acc = |m: &adaptivenet_onnx::tract_onnx::pb::ModelProto| {
        let p = argmax_rows(&Plan::whole_model(m, n).unwrap().run(x.clone()).unwrap()).unwrap();
        p.iter()
            .zip(labels)
            .filter(|(a, b)| **a as i64 == **b)
            .count() as f64
            / n as f64
    };
    let oracle_acc = acc(&oracle.model);
    for b in &branches {
        let sub = materialise(&supernet, &index, &path_with(&oracle, b)).unwrap();
        let a = acc(&sub);
        println!(
            "{:<8} untrained top-1 {:.3} (oracle {:.3})",
            b.id.to_string(),
            a,
            oracle_acc
        );
        if matches!(b.id, BranchId::Shrink { percent: 50, .. }) {
            // pruning half the hidden filters by L1 norm keeps the model useful before any training
            assert!(a > 0.3, "{}: {a}", b.id);
        }
    }
}

#[test]
fn first_block_merges_fold_strides_and_recreate_what_must_change() {
    let oracle = Oracle::load(oracle_path(), None).unwrap();
    // m2x2 spans B2 (16 ch, 28x28) and B3 (32 ch, 14x14): a copy of B2 needs
    // stride 2, a wider exit conv and a projection shortcut.
    let b = build_merge(&oracle, 2, 2, MergeSource::First, 7).unwrap();
    assert_eq!(b.source_block, 2);
    assert!(
        b.reinitialised.iter().any(|n| n.contains("conv2")),
        "{:?}",
        b.reinitialised
    );
    assert!(
        b.reinitialised
            .iter()
            .any(|n| n.ends_with("shortcut_projection")),
        "{:?}",
        b.reinitialised
    );
    assert!(
        !b.reinitialised.iter().any(|n| n.contains("conv1")),
        "conv1 keeps its pretrained weights"
    );
    // m4x3 spans B4..B6 (32 ch 14x14 -> 64 ch 7x7)
    let c = build_merge(&oracle, 4, 3, MergeSource::First, 7).unwrap();
    let supernet = assemble(&oracle, &[b.clone(), c.clone()]).unwrap();
    let facts = infer_facts(&supernet, 1).unwrap();
    assert_eq!(facts.get(&b.output).unwrap().shape, vec![1, 32, 14, 14]);
    assert_eq!(facts.get(&c.output).unwrap().shape, vec![1, 64, 7, 7]);
    let index = GraphIndex::of_model(&supernet).unwrap();
    let sub = materialise(&supernet, &index, &path_with(&oracle, &b)).unwrap();
    let out = Plan::whole_model(&sub, 2)
        .unwrap()
        .run(subset(1000).batch(0, 2).unwrap())
        .unwrap();
    assert_eq!(out.shape(), &[2, 10]);
}
