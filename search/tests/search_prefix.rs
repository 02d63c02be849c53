//! Prefix-tree evaluation equals naive per-subnet evaluation exactly, on the
//! real untrained bundle and real Fashion-MNIST images.

use adaptivenet_onnx::dataset::max_abs_diff;
use adaptivenet_search::{Evaluator, Rng, Supernet};
use adaptivenet_testkit::bundles::untrained_bundle;
use adaptivenet_testkit::fixtures::subset;

#[test]
fn prefix_tree_equals_naive_evaluation_exactly_on_50_subnets() {
    let bundle = untrained_bundle();
    let net = Supernet::of_bundle(&bundle).unwrap();
    // 150 images: a full batch of 100 and a padded one of 50
    let data = subset(150);
    let ev = Evaluator::new(&net, &data, 100, 2).unwrap();
    assert_eq!(ev.batches(), 2);
    let mut rng = Rng::seeded(42);
    let mut pop = vec![net.oracle()];
    while pop.len() < 50 {
        let s = net.random_subnet(&mut rng);
        if !pop.contains(&s) {
            pop.push(s);
        }
    }
    let w = Evaluator::work(&pop);
    println!(
        "50 subnets: {} part runs per batch with the tree, {} naive; cut-tensor memory bound {:.1} MiB",
        w.tree,
        w.naive,
        ev.cache_bound_bytes() as f64 / (1 << 20) as f64
    );
    assert!(w.tree < w.naive);
    let tree = ev.evaluate(&pop, 0..ev.batches()).unwrap();
    let naive = ev.evaluate_naive(&pop, 0..ev.batches()).unwrap();
    assert_eq!(tree, naive, "scores differ");
    assert!(tree.iter().all(|s| s.seen == 150));
    // the logits themselves, bit for bit, on the padded last batch
    let lt = ev.logits(&pop, 1, true).unwrap();
    let ln = ev.logits(&pop, 1, false).unwrap();
    for (a, b) in lt.iter().zip(&ln) {
        assert_eq!(max_abs_diff(a, b).unwrap(), 0.0);
    }
    // per-image predictions too
    let pt = ev.predictions(&pop, 0..ev.batches()).unwrap();
    for (k, s) in pop.iter().enumerate().take(5) {
        let alone = ev
            .predictions(std::slice::from_ref(s), 0..ev.batches())
            .unwrap();
        assert_eq!(pt[k], alone[0]);
    }
    // the oracle path reaches the fixture's accuracy range on these images
    let oracle = tree[0].accuracy();
    println!("oracle top-1 on 150 images: {oracle:.3}");
    assert!(oracle > 0.85, "{oracle}");
}

#[test]
fn unlabelled_data_scores_agreement_with_the_oracle_path() {
    let bundle = untrained_bundle();
    let net = Supernet::of_bundle(&bundle).unwrap();
    let mut data = subset(100);
    data.labels = None;
    let ev = Evaluator::new(&net, &data, 50, 1).unwrap();
    assert!(!ev.labelled);
    let s = ev.evaluate(&[net.oracle()], 0..ev.batches()).unwrap();
    assert_eq!(s[0].correct, 100, "the oracle agrees with itself");
}
