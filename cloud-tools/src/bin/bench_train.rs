//! Benchmark: candle's training-step throughput against PyTorch's (Debian
//! `python3-torch`) on two branches that stage 1 really trains, measured in
//! the same run with the same batch and thread count, each on the same real
//! cut tensors for both frameworks:
//!
//! - ResNet: the fixture's m1x2 merge (a copy of a pretrained BasicBlock,
//!   16 channels at 28x28, two 3x3 convs);
//! - MobileNetV2: by default its m0x2 merge (a copy of inverted residual
//!   block 1: 1x1 expansion 16->64 at 28x28, depthwise 3x3 stride 2, 1x1
//!   projection to 24 channels), or `--mobilenet-branch <id>` (e.g. s0@50).
//!
//! Per block it prints the median step time of both frameworks (the median
//! of `--steps` timed steps after 3 warm-up steps: robust to bursts of
//! other work on a shared machine), candle/PyTorch throughput, and the
//! branch's MACs per sample, so the per-MAC throughput of the two blocks
//! can be compared.
//!
//! `cargo run --release -p adaptivenet-cloud-tools --bin bench-train [-- --threads 2 --batch 64 --steps 20 --mobilenet-branch m0x2]`

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use adaptivenet_cloud_tools::interp::Interpreter;
use adaptivenet_onnx::branches::{build_merge, build_shrink, BuiltBranch, MergeSource};
use adaptivenet_onnx::bundle::BranchId;
use adaptivenet_onnx::dataset::Preprocess;
use adaptivenet_onnx::datasource::DataSource;
use adaptivenet_onnx::npy::encode_npy_f32;
use adaptivenet_onnx::supernet::assemble;
use adaptivenet_onnx::{model_io, GraphIndex, Oracle, Span};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

fn arg_str(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn arg(name: &str, default: usize) -> Result<usize> {
    Ok(arg_str(name)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(default))
}

/// What the benchmark runs: batch, threads, steps and where things are.
struct Setup {
    batch: usize,
    threads: usize,
    steps: usize,
    root: PathBuf,
    dir: PathBuf,
}

/// One block's measurement.
struct BlockResult {
    label: String,
    nodes: usize,
    macs: u64,
    candle_sps: f64,
    torch_sps: f64,
    torch_version: String,
}

impl BlockResult {
    fn ms(&self, sps: f64, batch: usize) -> f64 {
        1000.0 * batch as f64 / sps
    }
}

/// Build the branch `id` of `oracle` with the same API elastify uses.
fn build_branch(oracle: &Oracle, id: &BranchId) -> Result<BuiltBranch> {
    Ok(match *id {
        BranchId::Merge { from, span } => build_merge(oracle, from, span, MergeSource::Best, 0)?,
        BranchId::Shrink { block, percent } => build_shrink(oracle, block, percent as f64 / 100.0)?,
        BranchId::Original { .. } => bail!("`{id}` is an original block, not a new branch"),
    })
}

/// Train `branch` of `fixture` for `setup.steps` steps in candle and in
/// PyTorch on the real cut tensors of the first `batch` test images.
fn measure(setup: &Setup, fixture: &str, id: &BranchId) -> Result<BlockResult> {
    let (batch, threads, steps) = (setup.batch, setup.threads, setup.steps);
    let oracle = Oracle::load(setup.root.join("tests/fixtures/oracle").join(fixture), None)?;
    let branch = build_branch(&oracle, id)?;
    let supernet = assemble(&oracle, std::slice::from_ref(&branch))?;
    let from = branch.id.from_cut();
    let to = branch.id.to_cut();
    let cut = oracle.layout.cuts[from].clone();

    // MACs per sample of the branch, as the manifest counts them.
    let graph = supernet.graph.as_ref().context("supernet has no graph")?;
    let index = GraphIndex::of_model(&supernet)?;
    let facts = adaptivenet_onnx::facts::infer_facts(&supernet, 1)?;
    let macs = adaptivenet_onnx::stats::span_stats(
        graph,
        &index,
        &facts,
        &Span::new(&cut, &branch.output),
    )?
    .macs;

    let tag = fixture.trim_end_matches(".onnx");
    let model_path = setup.dir.join(format!("{tag}.onnx"));
    model_io::save_model(&model_path, &supernet)?;

    // real cut tensors c_from (input) and c_to (target) for one batch
    let d = setup.root.join("tests/fixtures/data");
    let source: DataSource = format!(
        "idx:{},{}[0:{batch}]",
        d.join("fmnist-test-1k-images-idx3-ubyte.gz").display(),
        d.join("fmnist-test-1k-labels-idx1-ubyte.gz").display()
    )
    .parse()?;
    let data = source.load(
        &[1, 28, 28],
        "NCHW",
        &Preprocess {
            mean: vec![0.286],
            std: vec![0.353],
        },
        &[],
    )?;
    let outs = oracle
        .block_plans(batch)?
        .run_collect(data.batch(0, batch)?)?;
    let (cx, cy) = (&outs[from], &outs[to]);
    let flat = |t: &adaptivenet_onnx::tract_onnx::prelude::Tensor| -> Result<Vec<f32>> {
        Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect())
    };
    let (x, y) = (flat(cx)?, flat(cy)?);
    let (x_npy, y_npy) = (
        setup.dir.join(format!("{tag}-x.npy")),
        setup.dir.join(format!("{tag}-y.npy")),
    );
    std::fs::write(&x_npy, encode_npy_f32(cx.shape(), &x))?;
    std::fs::write(&y_npy, encode_npy_f32(cy.shape(), &y))?;

    // candle
    let dev = Device::Cpu;
    let trainable: HashSet<String> = branch.initializers.iter().map(|t| t.name.clone()).collect();
    let interp = Interpreter::new(&supernet, &trainable, &dev)?;
    let mut opt = AdamW::new(
        interp.vars(),
        ParamsAdamW {
            lr: 1e-3,
            ..Default::default()
        },
    )?;
    let xt = Tensor::from_vec(x, cx.shape(), &dev)?;
    let yt = Tensor::from_vec(y, cy.shape(), &dev)?;
    let mut step = || -> Result<()> {
        let p = interp.forward(&[(cut.as_str(), xt.clone())], &[branch.output.as_str()])?;
        let loss = (&p[0] - &yt)?.sqr()?.mean_all()?;
        opt.backward_step(&loss)?;
        Ok(())
    };
    for _ in 0..3 {
        step()?;
    }
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    // the median step, as on the PyTorch side: robust to other processes'
    // bursts on a shared machine
    times.sort_by(f64::total_cmp);
    let median = times
        .get(steps / 2)
        .copied()
        .context("--steps must be at least 1")?;
    let candle_sps = batch as f64 / median;

    // PyTorch
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_branch_step.py");
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&model_path)
        .args(["--input", &cut, "--output", &branch.output])
        .arg("--x")
        .arg(&x_npy)
        .arg("--y")
        .arg(&y_npy)
        .args([
            "--threads",
            &threads.to_string(),
            "--steps",
            &steps.to_string(),
        ])
        .output()
        .context("running /usr/bin/python3 (Debian python3-torch)")?;
    if !out.status.success() {
        bail!(
            "PyTorch benchmark of {fixture} {} failed: {}",
            branch.id,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let torch_sps = v["samples_per_s"]
        .as_f64()
        .context("no samples_per_s from the PyTorch script")?;
    Ok(BlockResult {
        label: format!("{tag} {}", branch.id),
        nodes: branch.nodes.len(),
        macs,
        candle_sps,
        torch_sps,
        torch_version: v["torch"].as_str().unwrap_or("?").to_string(),
    })
}

fn main() -> Result<()> {
    let threads = arg("--threads", 2)?;
    let batch = arg("--batch", 64)?;
    let steps = arg("--steps", 20)?;
    let mobilenet: BranchId = arg_str("--mobilenet-branch")
        .unwrap_or_else(|| "m0x2".into())
        .parse()
        .map_err(|e: adaptivenet_onnx::bundle::IdError| anyhow::anyhow!(e.0))?;
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // as `adaptivenet elastify` does
    adaptivenet_cloud_tools::alloc::keep_freed_memory();
    let dir = std::env::temp_dir().join(format!("adaptivenet-bench-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let setup = Setup {
        batch,
        threads,
        steps,
        root: Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        dir: dir.clone(),
    };
    let results = [
        measure(
            &setup,
            "fmnist_resnet.onnx",
            &BranchId::Merge { from: 1, span: 2 },
        ),
        measure(&setup, "fmnist_mobilenetv2.onnx", &mobilenet),
    ];
    let _ = std::fs::remove_dir_all(&dir);
    let results = results.into_iter().collect::<Result<Vec<_>>>()?;

    println!(
        "training step (forward, backward, AdamW) of one branch, batch {batch}, {threads} threads, median of {steps} steps; PyTorch {}",
        results[0].torch_version
    );
    println!(
        "{:<28} {:>5} {:>10} {:>10} {:>10} {:>12} {:>12} {:>8}",
        "block (branch)",
        "nodes",
        "MMAC/smp",
        "candle ms",
        "torch ms",
        "candle GMAC/s",
        "torch GMAC/s",
        "c/torch"
    );
    for r in &results {
        let gmac = |sps: f64| sps * r.macs as f64 / 1e9;
        println!(
            "{:<28} {:>5} {:>10.2} {:>10.1} {:>10.1} {:>12.2} {:>12.2} {:>8.3}",
            r.label,
            r.nodes,
            r.macs as f64 / 1e6,
            r.ms(r.candle_sps, batch),
            r.ms(r.torch_sps, batch),
            gmac(r.candle_sps),
            gmac(r.torch_sps),
            r.candle_sps / r.torch_sps
        );
    }
    // per-MAC throughput of the MobileNetV2 block relative to the ResNet block
    let per_mac = |r: &BlockResult, sps: f64| sps * r.macs as f64;
    let (a, b) = (&results[0], &results[1]);
    println!(
        "per-MAC throughput {} / {}: candle {:.3}, PyTorch {:.3}",
        b.label,
        a.label,
        per_mac(b, b.candle_sps) / per_mac(a, a.candle_sps),
        per_mac(b, b.torch_sps) / per_mac(a, a.torch_sps)
    );
    Ok(())
}
