//! Block detection on real graphs: the PyTorch-exported fixture and two
//! third-party graphs from the `onnx` wheel (ResNet50, SqueezeNet).

use adaptivenet_onnx::graph::GraphIndex;
use adaptivenet_onnx::Oracle;
use adaptivenet_testkit::fixtures::{oracle_path, thirdparty};

fn producer_op<'a>(oracle: &'a Oracle, tensor: &str) -> &'a str {
    let n = oracle.index.producer[tensor];
    &oracle.graph().node[n].op_type
}

#[test]
fn fixture_splits_into_its_residual_blocks() {
    let oracle = Oracle::load(oracle_path(), None).unwrap();
    let s = oracle.summary().unwrap();
    assert_eq!(s.blocks.len(), 9, "{:#?}", oracle.layout);
    for b in &s.blocks {
        // every block is one residual unit: it merges with an Add and ends on the activation after it
        assert_eq!(b.stats.op_counts.get("Add"), Some(&1), "block {:?}", b);
        assert_eq!(producer_op(&oracle, &b.output), "Relu");
        assert!(b.stats.macs > 0 && b.stats.params > 0);
    }
    // stem: one conv and its activation; head: pooling, flatten, linear
    assert_eq!(s.stem.stats.op_counts.get("Conv"), Some(&1), "{:?}", s.stem);
    assert!(!s.stem.stats.op_counts.contains_key("Add"));
    assert_eq!(s.head.stats.op_counts.get("Gemm"), Some(&1), "{:?}", s.head);
    assert_eq!(s.head.output_shape, vec![1, 10]);
    // three stages: channels double and resolution halves twice
    let chans: Vec<usize> = s.blocks.iter().map(|b| b.output_shape[1]).collect();
    let sizes: Vec<usize> = s.blocks.iter().map(|b| b.output_shape[2]).collect();
    let mut distinct = chans.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "channels per block {chans:?}");
    assert_eq!(distinct[1], distinct[0] * 2);
    assert_eq!(distinct[2], distinct[1] * 2);
    assert_eq!(sizes.first(), Some(&28));
    assert_eq!(sizes.last(), Some(&7));
}

#[test]
fn resnet50_gives_16_bottleneck_blocks() {
    let oracle = Oracle::load(thirdparty("light_resnet50.onnx"), None).unwrap();
    let s = oracle.summary().unwrap();
    assert_eq!(s.blocks.len(), 16, "{:#?}", oracle.layout);
    for b in &s.blocks {
        assert_eq!(b.stats.op_counts.get("Sum"), Some(&1), "{b:?}");
        // a bottleneck: three convs on the main path, plus the projection in the first of a stage
        let convs = b.stats.op_counts.get("Conv").copied().unwrap_or(0);
        assert!(convs == 3 || convs == 4, "{b:?}");
        assert_eq!(producer_op(&oracle, &b.output), "Relu");
    }
    let stage_starts = s
        .blocks
        .iter()
        .filter(|b| b.stats.op_counts.get("Conv") == Some(&4))
        .count();
    assert_eq!(stage_starts, 4);
    assert_eq!(s.stem.stats.op_counts.get("MaxPool"), Some(&1));
    assert_eq!(s.head.stats.op_counts.get("Gemm"), Some(&1));
    assert_eq!(
        s.blocks.last().map(|b| b.output_shape.clone()),
        Some(vec![1, 2048, 7, 7])
    );
    // ResNet50 has about 25.5M parameters and 4.1 GMACs at 224x224
    let params: u64 = std::iter::once(&s.stem)
        .chain(&s.blocks)
        .chain(std::iter::once(&s.head))
        .map(|p| p.stats.params)
        .sum();
    let macs: u64 = std::iter::once(&s.stem)
        .chain(&s.blocks)
        .chain(std::iter::once(&s.head))
        .map(|p| p.stats.macs)
        .sum();
    assert!(
        (25_000_000..26_000_000).contains(&params),
        "params {params}"
    );
    assert!(
        (3_800_000_000..4_200_000_000).contains(&macs),
        "MACs {macs}"
    );
}

#[test]
fn squeezenet_gives_8_fire_modules() {
    let oracle = Oracle::load(thirdparty("light_squeezenet.onnx"), None).unwrap();
    let s = oracle.summary().unwrap();
    assert_eq!(s.blocks.len(), 8, "{:#?}", oracle.layout);
    for b in &s.blocks {
        assert_eq!(producer_op(&oracle, &b.output), "Concat", "{b:?}");
        assert_eq!(b.stats.op_counts.get("Conv"), Some(&3), "{b:?}");
    }
    // the head holds the classifier conv after the last fire module
    assert_eq!(s.head.stats.op_counts.get("Conv"), Some(&1), "{:?}", s.head);
}

#[test]
fn named_cuts_override_detection() {
    let auto = Oracle::load(oracle_path(), None).unwrap();
    let picked: Vec<String> = vec![
        auto.layout.cuts[4].clone(),
        auto.layout.cuts[1].clone(),
        auto.layout.cuts[7].clone(),
    ];
    let manual = Oracle::load(oracle_path(), Some(&picked)).unwrap();
    assert_eq!(
        manual.layout.cuts,
        vec![
            auto.layout.cuts[1].clone(),
            auto.layout.cuts[4].clone(),
            auto.layout.cuts[7].clone()
        ]
    );
    assert_eq!(manual.layout.num_blocks(), 2);

    // a tensor inside a residual block is not a cut
    let graph = auto.graph();
    let inside = graph
        .node
        .iter()
        .find(|n| n.op_type == "Conv" && n.input[0] == auto.layout.cuts[2])
        .unwrap();
    let err = Oracle::load(oracle_path(), Some(&[inside.output[0].clone()]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a cut"), "{err}");
}

#[test]
fn constant_subgraphs_are_weights_not_paths() {
    // ResNet50's weights are made by ConstantOfShape nodes: none of them may be live.
    let model = adaptivenet_onnx::load_model(thirdparty("light_resnet50.onnx")).unwrap();
    let index = GraphIndex::of_model(&model).unwrap();
    let graph = model.graph.as_ref().unwrap();
    let cos: Vec<usize> = (0..graph.node.len())
        .filter(|&i| graph.node[i].op_type == "ConstantOfShape")
        .collect();
    assert!(cos.len() > 200);
    assert!(cos.iter().all(|&i| index.const_node[i] && !index.live[i]));
    assert_eq!(index.inputs, vec!["gpu_0/data_0".to_string()]);
}

#[test]
fn other_zoo_graphs_split_into_their_units() {
    // VGG19: a plain chain, so units of one weighted op: 16 convs + 3 linear
    // layers = stem + 17 blocks + head.
    let vgg = Oracle::load(thirdparty("light_vgg19.onnx"), None)
        .unwrap()
        .summary()
        .unwrap();
    assert_eq!(vgg.blocks.len(), 17);
    assert!(vgg
        .blocks
        .iter()
        .all(|b| b.stats.op_counts.values().sum::<usize>() <= 4
            && b.stats
                .op_counts
                .get("Conv")
                .or(b.stats.op_counts.get("Gemm"))
                == Some(&1)));
    // DenseNet121: 6 + 12 + 24 + 16 dense layers, each closing at its Concat.
    let dense = Oracle::load(thirdparty("light_densenet121.onnx"), None)
        .unwrap()
        .summary()
        .unwrap();
    assert_eq!(dense.blocks.len(), 58);
    assert!(dense
        .blocks
        .iter()
        .all(|b| b.stats.op_counts.get("Concat") == Some(&1)));
    // Inception v1: nine inception modules.
    let inc = Oracle::load(thirdparty("light_inception_v1.onnx"), None)
        .unwrap()
        .summary()
        .unwrap();
    assert_eq!(inc.blocks.len(), 9);
    assert!(inc
        .blocks
        .iter()
        .all(|b| b.stats.op_counts.get("Concat") == Some(&1)));
}
