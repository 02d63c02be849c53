//! Strategies on the real untrained bundle: on the merge-only space (149
//! subnets, small enough to evaluate exhaustively) the default evolutionary
//! search, given half the evaluations, finds subnets within 1 point of the
//! exhaustive optimum at 0.5, 0.6 and 0.8 of the oracle's latency (median
//! of three seeds); the local search's neighbourhood is right; and the
//! latency table predicts whole-subnet latency.

use adaptivenet_onnx::bundle::BranchKind;
use adaptivenet_search::{choose, latency, strategy};
use adaptivenet_search::{Evaluator, SearchParams, StrategyKind, Supernet, TimingOptions};
use adaptivenet_testkit::bundles::untrained_bundle;
use adaptivenet_testkit::fixtures::subset;

#[test]
fn evolutionary_search_is_within_one_point_of_exhaustive_on_the_merge_space() {
    let bundle = untrained_bundle();
    let net = Supernet::restricted(&bundle, Some(&[BranchKind::Merge])).unwrap();
    assert_eq!(net.count_subnets(), 149);
    let data = subset(500);
    let input = latency::sample_input(&net, Some(&data)).unwrap();
    let (table, _) = latency::measure(
        &net,
        &input,
        TimingOptions {
            warmup: 5,
            runs: 21,
            ..TimingOptions::default()
        },
    )
    .unwrap();
    let look = table.lookup();
    let ev = Evaluator::new(&net, &data, 100, 2).unwrap();
    let ex = strategy::exhaustive(&net, &look, &ev).unwrap();
    assert_eq!(ex.evaluations, 149);
    let oracle_ms = look.predict(&net.oracle());
    let budgets = [0.5, 0.6, 0.8];
    // the strategy is randomised: each budget is judged on the median gap
    // of three seeds, so one unlucky run is not the verdict
    let mut gaps: Vec<Vec<f64>> = vec![Vec::new(); budgets.len()];
    for seed in 1..=3 {
        let params = SearchParams {
            strategy: StrategyKind::Evolutionary,
            population: 25,
            max_evals: 75,
            screen_images: 0,
            seed,
            ..SearchParams::default()
        };
        let evo = strategy::search(&net, &look, &ev, &params).unwrap();
        println!(
            "exhaustive: 149 subnets in {:.1} s; seed {seed}, {}: {} subnets in {:.1} s",
            ex.seconds, evo.method, evo.evaluations, evo.seconds
        );
        assert!(evo.evaluations <= 75);
        // every point was scored once on every image
        assert!(evo.points.iter().all(|p| p.images == 500));
        for (k, f) in budgets.iter().enumerate() {
            let budget = f * oracle_ms;
            let best = choose(&ex.front, budget).unwrap();
            let got = choose(&evo.front, budget).unwrap();
            println!(
                "  {f:.1}x ({budget:.3} ms): exhaustive `{}` {:.2}%, evolutionary `{}` {:.2}%",
                best.point.subnet,
                best.point.accuracy * 100.0,
                got.point.subnet,
                got.point.accuracy * 100.0
            );
            assert!(!got.over_budget || best.over_budget);
            assert!(got.point.accuracy <= best.point.accuracy + 1e-12);
            gaps[k].push(best.point.accuracy - got.point.accuracy);
        }
    }
    for (k, f) in budgets.iter().enumerate() {
        let mut g = gaps[k].clone();
        g.sort_by(|a, b| a.total_cmp(b));
        println!("{f:.1}x: gaps {g:.3?}, median {:.3}", g[1]);
        assert!(
            g[1] <= 0.01 + 1e-9,
            "{f}x: median gap {:.3} over 1 point",
            g[1]
        );
    }
}

#[test]
fn neighbours_of_the_oracle_are_the_single_branch_subnets() {
    let bundle = untrained_bundle();
    let net = Supernet::of_bundle(&bundle).unwrap();
    let oracle = net.oracle();
    let mut n = strategy::neighbours(&net, &oracle);
    let count = n.len();
    n.sort_by_key(|s| s.to_string());
    n.dedup();
    assert_eq!(n.len(), count, "duplicates");
    let new_branches = bundle
        .manifest
        .branches
        .iter()
        .filter(|b| b.kind != BranchKind::Original)
        .count();
    assert_eq!(count, new_branches);
    for s in &n {
        assert_eq!(
            s.branches()
                .iter()
                .filter(|b| b.kind() != BranchKind::Original)
                .count(),
            1,
            "{s}"
        );
        assert!(bundle.manifest.validate_subnet(s).is_ok(), "{s}");
    }
    // from a subnet with a merge: undoing it is a neighbour, and every
    // neighbour differs from it and is a valid path
    let merged = n
        .iter()
        .find(|s| s.to_string().contains("x2"))
        .unwrap()
        .clone();
    let around = strategy::neighbours(&net, &merged);
    assert!(around.contains(&oracle));
    assert!(around
        .iter()
        .all(|s| *s != merged && bundle.manifest.validate_subnet(s).is_ok()));
}

#[test]
fn latency_prediction_error_is_small() {
    let bundle = untrained_bundle();
    let net = Supernet::of_bundle(&bundle).unwrap();
    let data = subset(1);
    let input = latency::sample_input(&net, Some(&data)).unwrap();
    let timing = TimingOptions {
        warmup: 10,
        runs: 41,
        ..TimingOptions::default()
    };
    // Load from other processes only adds error (the table and the check
    // are measured at different moments); a wrong prediction fails every
    // attempt, so the best of three attempts is held to the bound.
    let mut best = f64::INFINITY;
    let mut table = None;
    for attempt in 1..=3 {
        let (t, plans) = latency::measure(&net, &input, timing).unwrap();
        let check = latency::check(&net, &t, &plans, &input, 10, 3).unwrap();
        for r in &check.rows {
            println!(
                "{:<44} predicted {:.3} ms, materialised {:.3} ms ({:+.1}%), chained {:.3} ms ({:+.1}%)",
                r.subnet.to_string(),
                r.predicted_ms,
                r.measured_ms,
                r.error_pct,
                r.chained_ms,
                r.chained_error_pct
            );
        }
        println!(
            "attempt {attempt}: prediction error vs materialised: mean {:.1}%, max {:.1}%; vs chained: mean {:.1}%, max {:.1}%",
            check.mean_error_pct, check.max_error_pct, check.chained_mean_error_pct, check.chained_max_error_pct
        );
        best = best.min(check.mean_error_pct);
        table = Some(t);
        if best <= 20.0 {
            break;
        }
    }
    // The goal is a mean of 10%; the bound is looser because other builds
    // share this 2-core machine while tests run and timing noise is real.
    assert!(best <= 20.0, "best mean error of 3 attempts: {best:.1}%");
    let table = table.expect("measured at least once");
    // the fastest subnet really is faster than the oracle
    let fast = strategy::fastest_subnet(&net, &table.lookup()).unwrap();
    assert!(table.predict(&fast) < table.predict(&net.oracle()));
}
