//! The committed demo bundle (`demo/fmnist-resnet.bundle`, made by
//! `demo/make-demo-bundle.sh`): it verifies against the demo key, its oracle
//! path is the oracle bit for bit, and on the full 10k Fashion-MNIST test set
//! its single-branch and most merged subnets keep the accuracy the committed
//! bundle was measured at (worst single-branch subnet -4.88 points, most
//! merged 82.87%): a regression guard. The goals (every single-branch
//! subnet within 2 points, most merged >= 85%) are not met yet by this bundle;
//! see README.

use adaptivenet_cloud_tools::cmd_subnet::{
    most_merged_subnet, single_branch_subnet, subnet_model, top1,
};
use adaptivenet_onnx::bundle::{read_public_key, BranchKind, Bundle};
use adaptivenet_onnx::dataset::max_abs_diff;
use adaptivenet_onnx::{GraphIndex, Oracle, Plan};
use adaptivenet_tests::{fixtures, fmnist_subset, fmnist_test_full, oracle_path};

fn demo() -> Bundle {
    let root = fixtures().join("../..");
    let key = read_public_key(&fixtures().join("keys/demo.pub")).unwrap();
    Bundle::open(&root.join("demo/fmnist-resnet.bundle"), &[key], false).unwrap()
}

#[test]
fn demo_bundle_oracle_path_is_the_oracle_bit_for_bit() {
    let bundle = demo();
    let index = GraphIndex::of_model(&bundle.model).unwrap();
    let oracle = Oracle::load(oracle_path(), None).unwrap();
    let sub = subnet_model(&bundle, &index, &bundle.manifest.oracle_subnet()).unwrap();
    let x = fmnist_subset().unwrap().batch(0, 64).unwrap();
    let a = oracle.whole_plan(64).unwrap().run(x.clone()).unwrap();
    assert_eq!(
        max_abs_diff(
            &a,
            &Plan::whole_model(&sub, 64).unwrap().run(x.clone()).unwrap()
        )
        .unwrap(),
        0.0
    );
    // and the supernet run as is
    assert_eq!(
        max_abs_diff(
            &a,
            &Plan::whole_model(&bundle.model, 64)
                .unwrap()
                .run(x)
                .unwrap()
        )
        .unwrap(),
        0.0
    );
}

#[test]
fn demo_bundle_subnets_keep_their_measured_accuracy() {
    let bundle = demo();
    let m = &bundle.manifest;
    let index = GraphIndex::of_model(&bundle.model).unwrap();
    let data = fmnist_test_full().unwrap();
    let oracle = top1(&bundle, &index, &m.oracle_subnet(), &data, 200).unwrap();
    println!("oracle path {:.2}%", oracle * 100.0);
    let mut worst = (f64::INFINITY, String::new());
    for b in m.branches.iter().filter(|b| b.kind != BranchKind::Original) {
        let acc = top1(&bundle, &index, &single_branch_subnet(m, b), &data, 200).unwrap();
        println!("{:<8} {:.2}%", b.id.to_string(), acc * 100.0);
        if acc - oracle < worst.0 {
            worst = (acc - oracle, b.id.to_string());
        }
    }
    let merged = most_merged_subnet(m);
    let acc = top1(&bundle, &index, &merged, &data, 200).unwrap();
    println!("most merged `{merged}`: {:.2}%", acc * 100.0);
    // Regression guard at the committed bundle's measured level (issue goals:
    // -2 points and 85%, not met yet; see README).
    assert!(
        worst.0 >= -0.055,
        "single-branch subnet {} is {:.2} points below the oracle",
        worst.1,
        -worst.0 * 100.0
    );
    assert!(acc >= 0.82, "most merged subnet {merged}: {acc}");
    assert!(
        (oracle - 0.932).abs() < 1e-9,
        "the oracle path must stay the oracle: {oracle}"
    );
}
