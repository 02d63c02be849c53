//! Benchmark: candle's training-step throughput against PyTorch's (Debian
//! `python3-torch`) on the same branch (the fixture's m1x2 merge: a copy of
//! a pretrained BasicBlock, 16 channels at 28x28), the same batch and thread
//! count, on the same real cut tensors, measured in the same run.
//!
//! `cargo run --release -p adaptivenet-cloud-tools --bin bench-train [-- --threads 2 --batch 64 --steps 20]`

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use adaptivenet_cloud_tools::interp::Interpreter;
use adaptivenet_onnx::branches::{build_merge, MergeSource};
use adaptivenet_onnx::dataset::Preprocess;
use adaptivenet_onnx::datasource::DataSource;
use adaptivenet_onnx::npy::encode_npy_f32;
use adaptivenet_onnx::supernet::assemble;
use adaptivenet_onnx::{model_io, Oracle};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

fn arg(name: &str, default: usize) -> Result<usize> {
    let v = std::env::args().skip_while(|a| a != name).nth(1);
    Ok(v.map(|s| s.parse()).transpose()?.unwrap_or(default))
}

fn main() -> Result<()> {
    let threads = arg("--threads", 2)?;
    let batch = arg("--batch", 64)?;
    let steps = arg("--steps", 20)?;
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let oracle = Oracle::load(root.join("tests/fixtures/oracle/fmnist_resnet.onnx"), None)?;
    let branch = build_merge(&oracle, 1, 2, MergeSource::Best, 0)?;
    let supernet = assemble(&oracle, std::slice::from_ref(&branch))?;
    let dir = std::env::temp_dir().join(format!("adaptivenet-bench-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let model_path = dir.join("supernet.onnx");
    model_io::save_model(&model_path, &supernet)?;

    // real cut tensors c1 (input) and c3 (target) for one batch
    let d = root.join("tests/fixtures/data");
    let source: DataSource = format!(
        "idx:{},{}[0:{batch}]",
        d.join("fmnist-test-1k-images-idx3-ubyte.gz").display(),
        d.join("fmnist-test-1k-labels-idx1-ubyte.gz").display()
    )
    .parse()?;
    let data = source.load(
        &[1, 28, 28],
        &Preprocess {
            mean: vec![0.286],
            std: vec![0.353],
        },
        &[],
    )?;
    let outs = oracle
        .block_plans(batch)?
        .run_collect(data.batch(0, batch)?)?;
    let (c1, c3) = (&outs[1], &outs[3]);
    let flat = |t: &adaptivenet_onnx::tract_onnx::prelude::Tensor| -> Result<Vec<f32>> {
        Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect())
    };
    let (x, y) = (flat(c1)?, flat(c3)?);
    std::fs::write(dir.join("x.npy"), encode_npy_f32(c1.shape(), &x))?;
    std::fs::write(dir.join("y.npy"), encode_npy_f32(c3.shape(), &y))?;

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
    let xt = Tensor::from_vec(x, c1.shape(), &dev)?;
    let yt = Tensor::from_vec(y, c3.shape(), &dev)?;
    let cut = oracle.layout.cuts[1].clone();
    let mut step = || -> Result<()> {
        let p = interp.forward(&[(cut.as_str(), xt.clone())], &[branch.output.as_str()])?;
        let loss = (&p[0] - &yt)?.sqr()?.mean_all()?;
        opt.backward_step(&loss)?;
        Ok(())
    };
    for _ in 0..3 {
        step()?;
    }
    let t = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    let candle_sps = (steps * batch) as f64 / t.elapsed().as_secs_f64();

    // PyTorch
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_branch_step.py");
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&model_path)
        .args(["--input", &cut, "--output", &branch.output])
        .arg("--x")
        .arg(dir.join("x.npy"))
        .arg("--y")
        .arg(dir.join("y.npy"))
        .args([
            "--threads",
            &threads.to_string(),
            "--steps",
            &steps.to_string(),
        ])
        .output()
        .context("running /usr/bin/python3 (Debian python3-torch)")?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        anyhow::bail!(
            "PyTorch benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let torch_sps = v["samples_per_s"]
        .as_f64()
        .context("no samples_per_s from the PyTorch script")?;
    println!("training step (forward, backward, AdamW) of branch {} ({} nodes), batch {batch}, {threads} threads, {steps} steps", branch.id, branch.nodes.len());
    println!("{:<28} {:>12} {:>8}", "framework", "samples/s", "ratio");
    println!(
        "{:<28} {:>12.0} {:>8}",
        format!("PyTorch {}", v["torch"].as_str().unwrap_or("?")),
        torch_sps,
        "1.000"
    );
    println!(
        "{:<28} {:>12.0} {:>8.3}",
        "candle (our interpreter)",
        candle_sps,
        candle_sps / torch_sps
    );
    Ok(())
}
