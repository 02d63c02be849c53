//! Benchmark: whole-model tract latency vs chained block plans at batch 1 on
//! the fixture oracle (goal: chained at most 1.05x whole), and tract vs
//! onnxruntime (PyPI) on the same model, all measured in this run.
//!
//! `cargo run --release -p adaptivenet-tests --bin bench-blocks [-- --runs N]`

use std::process::Command;
use std::time::Instant;

use adaptivenet_onnx::measure::median;
use adaptivenet_onnx::npy::read_npy;
use adaptivenet_onnx::tract_onnx::prelude::*;
use adaptivenet_onnx::Oracle;
use adaptivenet_testkit::fixtures::{fixtures, oracle_path};
use anyhow::{Context, Result};

fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(500);
    let oracle = Oracle::load(oracle_path(), None)?;
    let whole = oracle.whole_plan(1)?;
    let chained = oracle.block_plans(1)?;
    let a = read_npy(fixtures().join("oracle/ref_input.npy"))?;
    let mut shape = a.shape.clone();
    shape[0] = 1;
    let x = Tensor::from_shape(&shape, &a.to_f32()[..shape.iter().product::<usize>()])?;

    for _ in 0..50 {
        whole.run(x.clone())?;
        chained.run(x.clone())?;
    }
    // Interleave the two so drift on a shared machine hits both alike.
    let (mut tw, mut tc) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let t = Instant::now();
        whole.run(x.clone())?;
        tw.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        chained.run(x.clone())?;
        tc.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (mw, mc) = (median(&mut tw), median(&mut tc));

    let script = fixtures().join("bench_ort.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(oracle_path())
        .args([
            "--threads",
            "1",
            "--warmup",
            "50",
            "--runs",
            &runs.to_string(),
        ])
        .output()
        .context("running python3 bench_ort.py")?;
    let ort_ms = if out.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        v["median_ms"].as_f64()
    } else {
        eprintln!(
            "onnxruntime benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        None
    };

    println!(
        "fixture oracle {} ({} blocks), batch 1, 1 thread, median of {runs} runs",
        oracle.origin,
        oracle.layout.num_blocks()
    );
    println!("{:<34} {:>10} {:>14}", "what", "median ms", "ratio");
    println!(
        "{:<34} {:>10.4} {:>14}",
        "tract whole model", mw, "1.000 (ref)"
    );
    println!(
        "{:<34} {:>10.4} {:>14.3}",
        format!("tract chained plans ({} plans)", chained.plans.len()),
        mc,
        mc / mw
    );
    match ort_ms {
        Some(o) => {
            println!(
                "{:<34} {:>10.4} {:>14.3}",
                "onnxruntime whole model",
                o,
                o / mw
            );
            println!("tract / onnxruntime: {:.3}", mw / o);
        }
        None => println!("onnxruntime: not measured (see error above)"),
    }
    println!("chained / whole: {:.3} (goal <= 1.05)", mc / mw);
    Ok(())
}
