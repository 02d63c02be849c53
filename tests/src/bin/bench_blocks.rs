//! Benchmark: for the ResNet fixture and the MobileNetV2 fixture, at batch 1
//! on one thread, all measured in this run:
//! - tract's whole-model plan against its chained block plans (goal:
//!   chained at most 1.05x whole);
//! - tract against onnxruntime (PyPI) on the same model (goal of issue 15:
//!   at most 1.5x);
//! - where tract's time goes, per optimised op (`Plan::profile_ops`).
//!
//! `cargo run --release -p adaptivenet-tests --bin bench-blocks [-- --runs N]`

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use adaptivenet_onnx::measure::median;
use adaptivenet_onnx::npy::read_npy;
use adaptivenet_onnx::tract_onnx::prelude::*;
use adaptivenet_onnx::Oracle;
use adaptivenet_testkit::fixtures::{fixtures, mobilenet_path, oracle_path};
use anyhow::{Context, Result};

/// Ops shown in the breakdown (the rest are summed as "other").
const TOP_OPS: usize = 6;

struct Measured {
    name: &'static str,
    blocks: usize,
    whole_ms: f64,
    chained_ms: f64,
    chained_plans: usize,
    ort_ms: Option<f64>,
    /// (op, share of the profiled time, nodes per run)
    ops: Vec<(String, f64, f64)>,
}

fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(500);
    let a = read_npy(fixtures().join("oracle/ref_input.npy"))?;
    let mut shape = a.shape.clone();
    shape[0] = 1;
    let x = Tensor::from_shape(&shape, &a.to_f32()[..shape.iter().product::<usize>()])?;

    let models = [
        ("ResNet fixture", oracle_path()),
        ("MobileNetV2 fixture", mobilenet_path()),
    ];
    let mut results = Vec::new();
    for (name, path) in &models {
        results.push(measure(name, path, &x, runs)?);
    }

    println!("batch 1, 1 thread, median of {runs} runs, measured in this run");
    println!(
        "{:<22} {:>7} {:>10} {:>10} {:>9} {:>10} {:>12}",
        "model", "blocks", "tract ms", "chained", "ch/whole", "ort ms", "tract/ort"
    );
    for m in &results {
        let (ort, ratio) = match m.ort_ms {
            Some(o) => (format!("{o:.4}"), format!("{:.3}", m.whole_ms / o)),
            None => ("-".into(), "not measured".into()),
        };
        println!(
            "{:<22} {:>7} {:>10.4} {:>10.4} {:>9.3} {:>10} {:>12}",
            m.name,
            m.blocks,
            m.whole_ms,
            m.chained_ms,
            m.chained_ms / m.whole_ms,
            ort,
            ratio
        );
    }
    for m in &results {
        println!(
            "\nwhere tract's time goes, {} (whole plan, share of the time inside ops):",
            m.name
        );
        println!("  {:<28} {:>7} {:>14}", "op", "share", "nodes per run");
        for (op, share, nodes) in &m.ops {
            println!("  {:<28} {:>6.1}% {:>14.0}", op, share * 100.0, nodes);
        }
    }
    println!();
    for m in &results {
        println!(
            "{}: chained / whole {:.3} (goal <= 1.05), {} ({} plans)",
            m.name,
            m.chained_ms / m.whole_ms,
            match m.ort_ms {
                Some(o) => format!("tract / onnxruntime {:.3} (goal <= 1.5)", m.whole_ms / o),
                None => "onnxruntime not measured".into(),
            },
            m.chained_plans
        );
    }
    Ok(())
}

fn measure(name: &'static str, path: &Path, x: &Tensor, runs: usize) -> Result<Measured> {
    let oracle = Oracle::load(path, None).with_context(|| format!("loading {}", path.display()))?;
    let whole = oracle.whole_plan(1)?;
    let chained = oracle.block_plans(1)?;
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
    let profile = whole.profile_ops(x, runs.clamp(1, 200))?;
    let total: f64 = profile.iter().map(|o| o.seconds).sum();
    let per_run = runs.clamp(1, 200) as f64;
    let mut ops: Vec<(String, f64, f64)> = profile
        .iter()
        .take(TOP_OPS)
        .map(|o| {
            (
                o.op.clone(),
                o.seconds / total,
                o.nodes_run as f64 / per_run,
            )
        })
        .collect();
    let rest = &profile[TOP_OPS.min(profile.len())..];
    if !rest.is_empty() {
        ops.push((
            format!("other ({} ops)", rest.len()),
            rest.iter().map(|o| o.seconds).sum::<f64>() / total,
            rest.iter().map(|o| o.nodes_run).sum::<usize>() as f64 / per_run,
        ));
    }
    Ok(Measured {
        name,
        blocks: oracle.layout.num_blocks(),
        whole_ms: median(&mut tw),
        chained_ms: median(&mut tc),
        chained_plans: chained.plans.len(),
        ort_ms: onnxruntime_ms(path, runs),
        ops,
    })
}

/// onnxruntime's median batch-1 latency on one thread (None, with the
/// reason on stderr, when it cannot run).
fn onnxruntime_ms(model: &Path, runs: usize) -> Option<f64> {
    let script = fixtures().join("bench_ort.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(model)
        .args([
            "--threads",
            "1",
            "--warmup",
            "50",
            "--runs",
            &runs.to_string(),
        ])
        .output();
    match out {
        Ok(out) if out.status.success() => serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["median_ms"].as_f64()),
        Ok(out) => {
            eprintln!(
                "onnxruntime benchmark failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("running python3 {}: {e}", script.display());
            None
        }
    }
}
