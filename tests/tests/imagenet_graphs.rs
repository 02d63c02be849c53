//! ImageNet-size third-party graphs through the whole cloud path, at
//! 224x224: the `onnx` wheel's light SqueezeNet and Inception v1 in every
//! run; ResNet50, VGG19 and DenseNet121 (5 to 15 minutes each on the 2-core
//! dev machine) with `ADAPTIVENET_ALL_GRAPHS=1 cargo test --release -p
//! adaptivenet-tests --test imagenet_graphs -- --nocapture --test-threads 1`.
//!
//! `tests/fixtures/materialise_light.py` gives each graph seeded random
//! weights in place of its run-time placeholders and a free batch; elastify
//! with `demo/elastify-smoke.yaml` (two training steps per branch, two
//! stage-2 steps) makes a bundle whose oracle path is the graph bit for bit,
//! and every single-branch subnet of it materialises and runs in tract and
//! in onnxruntime with the same outputs. The inputs are generated (the
//! weights are random, so no accuracy is measured here). Each graph's spec
//! leaves out the branches that cannot be built on it, with the reason.
//!
//! The graphs' weights are generated at test time (ResNet50's are 100 MB).

use std::path::Path;
use std::time::Instant;

use adaptivenet_cloud_tools::cmd_subnet::subnet_model;
use adaptivenet_cloud_tools::elastify::{self, ElastifyArgs};
use adaptivenet_onnx::bundle::{BranchKind, Bundle};
use adaptivenet_onnx::dataset::max_abs_diff;
use adaptivenet_onnx::npy::encode_npy_f32;
use adaptivenet_onnx::subnet::single_branch_subnet;
use adaptivenet_onnx::tract_onnx::prelude::Tensor;
use adaptivenet_onnx::{GraphIndex, Oracle, Plan, SplitMix};
use adaptivenet_testkit::fixtures::{repo, thirdparty};
use adaptivenet_testkit::reference::onnxruntime;
use adaptivenet_testkit::tempdir::TempDir;

/// tract against onnxruntime on a subnet's output (softmax probabilities).
const MAX_ORT_DIFF: f32 = 1e-4;
/// Generated training images (a few steps of batch 4 and a holdout of 4).
const IMAGES: usize = 16;

/// One graph and the branch part of its smoke spec (the branches that
/// cannot be built on it are left out; docs/results.md says why).
struct Graph {
    file: &'static str,
    branches: &'static str,
}

const RESNET50: Graph = Graph {
    file: "light_resnet50.onnx",
    branches: "{}",
};
/// A merge of 3 fire modules would span a ceil-mode pool (55 -> 27).
const SQUEEZENET: Graph = Graph {
    file: "light_squeezenet.onnx",
    branches: "{merge_spans: [2]}",
};
/// Inception modules end in a Concat of 4 paths: a merge cannot give its
/// copy the span's output channels; block 0 has an LRN, which mixes
/// channels, so it cannot be shrunk.
const INCEPTION_V1: Graph = Graph {
    file: "light_inception_v1.onnx",
    branches: "{merge_spans: [], skip_blocks: [0]}",
};
/// Its units are single convs (nothing to shrink); units 14-16 are the
/// fully connected layers, which no merge can fold.
const VGG19: Graph = Graph {
    file: "light_vgg19.onnx",
    branches: "{shrink_ratios: [], skip_blocks: [14, 15, 16]}",
};
/// Each dense layer reads all the features before it: a merge's copy would
/// need its entry BatchNormalization re-created for more channels.
const DENSENET121: Graph = Graph {
    file: "light_densenet121.onnx",
    branches: "{merge_spans: []}",
};

/// The long graphs run only when asked for.
fn all_graphs(which: &str) -> bool {
    let on = std::env::var_os("ADAPTIVENET_ALL_GRAPHS").is_some();
    if !on {
        println!("{which} runs with ADAPTIVENET_ALL_GRAPHS=1 (5 to 15 minutes per graph)");
    }
    on
}

#[test]
fn resnet50_elastifies_and_every_single_branch_subnet_runs_in_tract_and_onnxruntime() {
    if all_graphs("ResNet50") {
        check(&RESNET50);
    }
}

#[test]
fn squeezenet_elastifies_and_every_single_branch_subnet_runs_in_tract_and_onnxruntime() {
    check(&SQUEEZENET);
}

#[test]
fn inception_v1_elastifies_and_every_single_branch_subnet_runs_in_tract_and_onnxruntime() {
    check(&INCEPTION_V1);
}

#[test]
fn vgg19_elastifies_and_every_single_branch_subnet_runs_in_tract_and_onnxruntime() {
    if all_graphs("VGG19") {
        check(&VGG19);
    }
}

#[test]
fn densenet121_elastifies_and_every_single_branch_subnet_runs_in_tract_and_onnxruntime() {
    if all_graphs("DenseNet121") {
        check(&DENSENET121);
    }
}

/// Generated images `[n, 3, 224, 224]`, uniform in [-2, 2).
fn images(n: usize, seed: u64) -> (Vec<usize>, Vec<f32>) {
    let shape = vec![n, 3, 224, 224];
    let mut rng = SplitMix(seed);
    let data = (0..shape.iter().product::<usize>())
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
        .collect();
    (shape, data)
}

fn materialise_light(src: &Path, dst: &Path) {
    let out = std::process::Command::new("python3")
        .arg(repo().join("tests/fixtures/materialise_light.py"))
        .arg(src)
        .arg(dst)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "materialise_light.py {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check(graph: &Graph) {
    let tmp = TempDir::new(graph.file.trim_end_matches(".onnx"));
    let oracle_path = tmp.path().join("oracle.onnx");
    materialise_light(&thirdparty(graph.file), &oracle_path);

    let (shape, data) = images(IMAGES, 7);
    let x_path = tmp.path().join("x.npy");
    std::fs::write(&x_path, encode_npy_f32(&shape, &data)).unwrap();
    let smoke = std::fs::read_to_string(repo().join("demo/elastify-smoke.yaml")).unwrap();
    let spec = tmp.path().join("spec.yaml");
    std::fs::write(&spec, format!("{smoke}branches: {}\n", graph.branches)).unwrap();
    let bundle_path = tmp.path().join("smoke.bundle");
    let t = Instant::now();
    elastify::run(&ElastifyArgs {
        oracle: Some(oracle_path.clone()),
        data: Some(format!("npy:{}", x_path.display())),
        spec: Some(spec),
        print_default_spec: false,
        output: Some(bundle_path.clone()),
        key: None,
        seed: Some(0),
        threads: Some(2),
        cuts: None,
        stage1_shard: None,
        shard_dir: None,
        assemble: None,
    })
    .unwrap();
    let elastify_s = t.elapsed().as_secs_f64();

    let bundle = Bundle::open(&bundle_path, &[], true).unwrap();
    let m = &bundle.manifest;
    let index = GraphIndex::of_model(&bundle.model).unwrap();
    let oracle = Oracle::load(&oracle_path, None).unwrap();
    let x2 = Tensor::from_shape(&[2, 3, 224, 224], &data[..2 * 3 * 224 * 224]).unwrap();
    let x1 = Tensor::from_shape(&[1, 3, 224, 224], &data[..3 * 224 * 224]).unwrap();

    // the oracle path is the graph bit for bit
    let want = oracle.whole_plan(2).unwrap().run(x2.clone()).unwrap();
    let path = subnet_model(&bundle, &index, &m.oracle_subnet()).unwrap();
    let got = Plan::whole_model(&path, 2).unwrap().run(x2).unwrap();
    assert_eq!(
        max_abs_diff(&want, &got).unwrap(),
        0.0,
        "{}: oracle path",
        graph.file
    );

    // every single-branch subnet in tract and onnxruntime
    let news: Vec<_> = m
        .branches
        .iter()
        .filter(|b| b.kind != BranchKind::Original)
        .collect();
    assert!(!news.is_empty(), "{}: no new branch", graph.file);
    let t = Instant::now();
    let mut worst = (0f32, String::new());
    for b in &news {
        let id = single_branch_subnet(m, b);
        let sub = subnet_model(&bundle, &index, &id).unwrap();
        let tract = Plan::whole_model(&sub, 1).unwrap().run(x1.clone()).unwrap();
        let ort = onnxruntime(&sub, &x1, &b.id.to_string()).unwrap();
        let d = max_abs_diff(&tract, &ort).unwrap();
        assert!(
            tract
                .to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .all(|v| v.is_finite()),
            "{}: subnet {id} gives non-finite outputs",
            graph.file
        );
        if d >= worst.0 {
            worst = (d, b.id.to_string());
        }
        assert!(
            d <= MAX_ORT_DIFF,
            "{}: subnet {id}: tract vs onnxruntime {d}",
            graph.file
        );
    }
    println!(
        "{}: {} blocks, {} new branches, bundle {:.0} MB; elastify {elastify_s:.0} s; \
         {} single-branch subnets in tract and onnxruntime in {:.0} s, worst difference {:.1e} ({})",
        graph.file,
        oracle.layout.num_blocks(),
        news.len(),
        std::fs::metadata(&bundle_path).unwrap().len() as f64 / (1 << 20) as f64,
        news.len(),
        t.elapsed().as_secs_f64(),
        worst.0,
        worst.1
    );
}
