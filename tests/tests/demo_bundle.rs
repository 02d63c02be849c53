//! The committed demo bundles, made by `demo/make-demo-bundle.sh`:
//! `demo/fmnist-resnet.bundle` (the ResNet fixture) and
//! `demo/fmnist-mobilenetv2.bundle` (the MobileNetV2-style fixture). Each
//! verifies against the demo key, its oracle path is the oracle bit for
//! bit, and its single-branch subnets stay within their bound of the oracle
//! path (2 points, the issues' goal); the ResNet bundle's most merged
//! subnet also reaches 85% (see [`Demo`] and docs/results.md).
//!
//! The accuracy checks run on a stratified 2,000-image subset of the
//! Fashion-MNIST test set (200 per class; a few minutes per bundle on 2
//! cores) with margins of two standard errors of a paired difference on
//! 2,000 images (1 point); the full 10k runs with the exact goals (about 17
//! minutes for the ResNet bundle, 8 for the MobileNetV2 one) are
//! `ADAPTIVENET_FULL_EVAL=1 cargo test --release -p adaptivenet-tests
//! --test demo_bundle -- --nocapture`.

use std::path::PathBuf;

use adaptivenet_cloud_tools::cmd_subnet::{subnet_model, top1};
use adaptivenet_onnx::bundle::{read_public_key, BranchKind, Bundle, SubnetId};
use adaptivenet_onnx::dataset::max_abs_diff;
use adaptivenet_onnx::subnet::{most_merged_subnet, single_branch_subnet};
use adaptivenet_onnx::{GraphIndex, Oracle, Plan};
use adaptivenet_testkit::fixtures::{
    demo_bundle, demo_mobilenet_bundle, demo_pub, fmnist_test_full, mobilenet_path, oracle_path,
    subset,
};

/// No single-branch subnet is further below the oracle path than this
/// (top-1, fraction): the issues' goal.
const MAX_SINGLE_BRANCH_DROP: f64 = -0.02;
/// Images per class of the stratified subset CI evaluates on.
const PER_CLASS: usize = 200;
/// The subset's sampling margin on both goals (two standard errors of a
/// paired accuracy difference at about 5% disagreement on 2,000 images).
const SUBSET_MARGIN: f64 = 0.01;

/// One committed demo bundle and what it must reach.
struct Demo {
    bundle: PathBuf,
    oracle: PathBuf,
    /// The oracle's top-1 on the full 10k test set when the bundle was made.
    oracle_full_top1: f64,
    /// No single-branch subnet is further below the oracle path than this.
    max_single_branch_drop: f64,
    /// The most merged subnet reaches at least this top-1, if a goal is set.
    min_most_merged: Option<f64>,
}

fn resnet() -> Demo {
    Demo {
        bundle: demo_bundle(),
        oracle: oracle_path(),
        oracle_full_top1: 0.932,
        max_single_branch_drop: MAX_SINGLE_BRANCH_DROP,
        // the ResNet issue's goal; the committed bundle measures 88.69%
        min_most_merged: Some(0.85),
    }
}

fn mobilenet() -> Demo {
    Demo {
        bundle: demo_mobilenet_bundle(),
        oracle: mobilenet_path(),
        oracle_full_top1: 0.9061,
        // issue 12's goal; on the full test set the committed bundle's worst
        // single-branch subnets are m6x3 (-1.64 points), m1x3 (-1.59) and
        // s0@25 (-1.48) (2026-12-05, docs/results.md)
        max_single_branch_drop: MAX_SINGLE_BRANCH_DROP,
        // issue 12 sets no goal for the most merged MobileNetV2 subnet
        min_most_merged: None,
    }
}

fn open(demo: &Demo) -> Bundle {
    let key = read_public_key(&demo_pub()).unwrap();
    Bundle::open(&demo.bundle, &[key], false).unwrap()
}

#[test]
fn resnet_demo_oracle_path_is_the_oracle_bit_for_bit() {
    oracle_path_is_the_oracle_bit_for_bit(&resnet());
}

#[test]
fn mobilenet_demo_oracle_path_is_the_oracle_bit_for_bit() {
    oracle_path_is_the_oracle_bit_for_bit(&mobilenet());
}

#[test]
fn resnet_demo_subnets_keep_their_measured_accuracy() {
    subnets_keep_their_measured_accuracy(&resnet());
}

#[test]
fn mobilenet_demo_subnets_keep_their_measured_accuracy() {
    subnets_keep_their_measured_accuracy(&mobilenet());
}

fn oracle_path_is_the_oracle_bit_for_bit(demo: &Demo) {
    let bundle = open(demo);
    let index = GraphIndex::of_model(&bundle.model).unwrap();
    let oracle = Oracle::load(&demo.oracle, None).unwrap();
    let sub = subnet_model(&bundle, &index, &bundle.manifest.oracle_subnet()).unwrap();
    let x = subset(1000).batch(0, 64).unwrap();
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

fn subnets_keep_their_measured_accuracy(demo: &Demo) {
    let bundle = open(demo);
    let m = &bundle.manifest;
    let index = GraphIndex::of_model(&bundle.model).unwrap();
    let full = std::env::var_os("ADAPTIVENET_FULL_EVAL").is_some();
    let all = fmnist_test_full();
    let (data, margin) = if full {
        (all, 0.0)
    } else {
        (all.stratified(PER_CLASS), SUBSET_MARGIN)
    };
    println!(
        "{}: {} images ({})",
        demo.bundle.display(),
        data.len(),
        if full {
            "the full test set"
        } else {
            "stratified subset; ADAPTIVENET_FULL_EVAL=1 for all 10k"
        }
    );
    let oracle_model = Oracle::load(&demo.oracle, None).unwrap();
    let expected_oracle = adaptivenet_onnx::subnet::top1(&oracle_model.model, &data, 200).unwrap();
    // every single-branch subnet, then the most merged one; two workers
    let news: Vec<_> = m
        .branches
        .iter()
        .filter(|b| b.kind != BranchKind::Original)
        .collect();
    let mut subnets: Vec<SubnetId> = vec![m.oracle_subnet()];
    subnets.extend(news.iter().map(|b| single_branch_subnet(m, b)));
    let merged = most_merged_subnet(m).expect("a path");
    subnets.push(merged.clone());
    let workers = 2;
    let mut accs = vec![0f64; subnets.len()];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (subnets, bundle, index, data) = (&subnets, &bundle, &index, &data);
                s.spawn(move || {
                    (w..subnets.len())
                        .step_by(workers)
                        .map(|k| (k, top1(bundle, index, &subnets[k], data, 200).unwrap()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (k, a) in h.join().unwrap() {
                accs[k] = a;
            }
        }
    });
    let oracle = accs[0];
    println!("oracle path {:.2}%", oracle * 100.0);
    let mut worst = (f64::INFINITY, String::new());
    for (b, acc) in news.iter().zip(&accs[1..]) {
        println!("{:<8} {:.2}%", b.id.to_string(), acc * 100.0);
        if acc - oracle < worst.0 {
            worst = (acc - oracle, b.id.to_string());
        }
    }
    let acc = accs[accs.len() - 1];
    println!("most merged `{merged}`: {:.2}%", acc * 100.0);
    assert_eq!(
        oracle, expected_oracle,
        "the oracle path must score exactly what the oracle scores"
    );
    if full {
        assert!(
            (oracle - demo.oracle_full_top1).abs() < 1e-9,
            "the oracle scored {:.2}% on the full test set when the bundle was made: {oracle}",
            demo.oracle_full_top1 * 100.0
        );
    }
    assert!(
        worst.0 >= demo.max_single_branch_drop - margin,
        "single-branch subnet {} is {:.2} points below the oracle",
        worst.1,
        -worst.0 * 100.0
    );
    if let Some(min) = demo.min_most_merged {
        assert!(acc >= min - margin, "most merged subnet {merged}: {acc}");
    }
}
