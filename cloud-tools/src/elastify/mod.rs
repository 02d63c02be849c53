//! `adaptivenet elastify`: turns a pretrained ONNX oracle into a trained,
//! signed supernet bundle: detect blocks, build merge and shrink branches
//! from pretrained weights, train them (stage 1 branch-wise distillation,
//! stage 2 subnet fine-tuning), check the oracle path is still the oracle
//! bit for bit, and write the bundle atomically.

pub mod spec;
pub mod train;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use adaptivenet_onnx::bundle::{BundleWriter, CreatedBy, ModelDescription, Preprocess};
use adaptivenet_onnx::dataset::max_abs_diff;
use adaptivenet_onnx::datasource::DataSource;
use adaptivenet_onnx::supernet::{build_branches, embed_manifest, supernet_with_manifest};
use adaptivenet_onnx::weights::SplitMix;
use adaptivenet_onnx::{model_io, Oracle, Plan};
use anyhow::{bail, Context, Result};
use clap::Args;

pub use spec::ElastifySpec;

use crate::interp::Interpreter;

#[derive(Args)]
pub struct ElastifyArgs {
    /// The oracle (pretrained ONNX model).
    #[arg(required_unless_present = "print_default_spec")]
    pub oracle: Option<PathBuf>,
    /// Training data: idx:IMAGES,LABELS | npy:TENSOR,LABELS | folder:DIR, optionally [START:END].
    #[arg(long, required_unless_present = "print_default_spec")]
    pub data: Option<String>,
    /// The elastify.yaml spec (defaults for every key not given).
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Print the default spec and exit.
    #[arg(long)]
    pub print_default_spec: bool,
    /// Where to write the bundle.
    #[arg(short, long, required_unless_present = "print_default_spec")]
    pub output: Option<PathBuf>,
    /// minisign secret key to sign the manifest (unsigned without).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Override `training.seed`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads for training (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Cut tensors to use instead of automatic detection.
    #[arg(long, value_delimiter = ',')]
    pub cuts: Option<Vec<String>>,
}

pub fn run(args: &ElastifyArgs) -> Result<()> {
    if args.print_default_spec {
        print!("{}", ElastifySpec::default_yaml()?);
        return Ok(());
    }
    let (Some(oracle_path), Some(data), Some(output)) = (&args.oracle, &args.data, &args.output)
    else {
        bail!("elastify needs ORACLE, --data and --output");
    };
    if let Some(n) = args.threads {
        // candle's CPU kernels size their thread pool from this variable.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let mut spec = match &args.spec {
        Some(p) => ElastifySpec::load(p)?,
        None => ElastifySpec::default(),
    };
    if let Some(seed) = args.seed {
        spec.training.seed = seed;
        spec.branches.seed = seed;
    }
    let signer = match &args.key {
        Some(k) => Some(crate::cmd_bundle::read_secret_key(k)?),
        None => None,
    };
    let source: DataSource = data.parse()?;
    let t0 = Instant::now();

    // 1. blocks
    let oracle = Oracle::load(oracle_path, args.cuts.as_deref())?;
    // Training differentiates through the whole oracle: refuse before any work
    // when an operator the trainer cannot differentiate is on a live path.
    for (i, node) in oracle.graph().node.iter().enumerate() {
        if oracle.index.live[i] && !crate::interp::ops::is_supported(&node.op_type) {
            bail!(
                "{}: operator `{}` (node `{}`) is not supported by the trainer",
                oracle_path.display(),
                node.op_type,
                node.name
            );
        }
    }
    let summary = oracle.summary()?;
    crate::cmd_blocks::print_summary(&summary);

    // 2. branches
    let branches = build_branches(&oracle, &spec.branches)?;
    println!("{} new branches:", branches.len());
    for b in &branches {
        let note = if b.reinitialised.is_empty() {
            format!("copy of B{} with its pretrained weights", b.source_block)
        } else {
            format!(
                "copy of B{}; re-initialised: {}",
                b.source_block,
                b.reinitialised.join(", ")
            )
        };
        println!("  {:<8} {note}", b.id.to_string());
    }
    let desc = ModelDescription {
        name: spec.model.name.clone().unwrap_or_else(|| {
            oracle_path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "model".into())
        }),
        version: spec.model.version,
        compatible: spec.model.compatible.clone(),
        preprocess: Preprocess {
            mean: spec.model.mean.clone(),
            std: spec.model.std.clone(),
        },
        labels: spec.model.labels.clone(),
    };
    let (mut supernet, mut manifest) = supernet_with_manifest(&oracle, &branches, &desc)?;

    // 3. data
    let item_shape: Vec<usize> = summary.stem.input_shape[1..].to_vec();
    let data = source.load(&item_shape, &desc.preprocess, &desc.labels)?;
    let batch = spec.training.batch_size.max(1);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut rng = SplitMix(spec.training.seed);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let n_hold = (spec.training.holdout / batch * batch).min(order.len().saturating_sub(batch));
    let (holdout, train) = order.split_at(n_hold);
    if train.len() < batch {
        bail!(
            "{}: {} samples is fewer than one training batch of {batch}",
            args.data.as_deref().unwrap_or(""),
            data.len()
        );
    }
    println!(
        "data: {} samples ({} for training, {} held out)",
        data.len(),
        train.len(),
        holdout.len()
    );

    // 4. training
    let device = device()?;
    let trainable: HashSet<String> = branches
        .iter()
        .flat_map(|b| b.initializers.iter().map(|t| t.name.clone()))
        .collect();
    let interp = Interpreter::new(&supernet, &trainable, &device)?;
    let teacher = train::Teacher {
        plans: oracle.block_plans(batch)?,
        data: &data,
        batch,
        device: device.clone(),
    };
    let t1 = Instant::now();
    let losses = if spec.training.stage1.samples > 0 {
        train::stage1(
            &interp,
            &manifest,
            &teacher,
            train,
            holdout,
            &spec.training.stage1,
        )?
    } else {
        Default::default()
    };
    let s1 = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    if spec.training.stage2.steps > 0 {
        let l = train::stage2(
            &interp,
            &manifest,
            &teacher,
            train,
            &spec.training.stage2,
            spec.training.seed,
        )?;
        println!("stage 2 final loss {l:.4}");
    }
    let s2 = t2.elapsed().as_secs_f64();

    // 5. write back and check the oracle path is untouched
    let written = interp.export_into(&mut supernet)?;
    if written != trainable.len() {
        bail!(
            "wrote back {written} of {} trained initializers",
            trainable.len()
        );
    }
    let check = data.batch(0, batch.min(data.len()))?;
    let a = Plan::whole_model(&oracle.model, check.shape()[0])?.run(check.clone())?;
    let b = Plan::whole_model(&supernet, check.shape()[0])?.run(check)?;
    let d = max_abs_diff(&a, &b)?;
    if d != 0.0 {
        bail!("the supernet's oracle path differs from the oracle (max abs diff {d}); refusing to write");
    }
    for br in manifest.branches.iter_mut() {
        if let Some(l) = losses.get(&br.id.to_string()) {
            br.distill_loss = Some(*l);
        }
    }
    manifest.created_by = Some(CreatedBy {
        tool: "adaptivenet elastify".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        note: Some(format!(
            "seed {}, stage 1 {} samples/branch (+{} per extra merged block), stage 2 {} steps x {} subnets, batch {batch}",
            spec.training.seed,
            spec.training.stage1.samples,
            spec.training.stage1.samples_per_extra_block,
            spec.training.stage2.steps,
            spec.training.stage2.paths_per_step
        )),
    });
    embed_manifest(&mut supernet, &manifest.to_yaml()?);
    let mut writer = BundleWriter::new(manifest);
    writer.add_file("supernet.onnx", model_io::encode_model(&supernet))?;
    let sign = |bytes: &[u8]| -> std::result::Result<Vec<u8>, String> {
        match &signer {
            Some(k) => crate::cmd_bundle::sign_manifest(bytes, k).map_err(|e| e.to_string()),
            None => Err("no key".into()),
        }
    };
    let manifest = writer
        .write(output, if signer.is_some() { Some(&sign) } else { None })
        .with_context(|| format!("writing {}", output.display()))?;
    if signer.is_none() {
        eprintln!(
            "warning: {} is unsigned (no --key); devices accept it only with allow_unsigned",
            output.display()
        );
    }
    println!("\nbranch    kind      MACs        params   distill loss");
    for b in manifest
        .branches
        .iter()
        .filter(|b| b.distill_loss.is_some())
    {
        println!(
            "{:<9} {:<9} {:<11} {:<8} {:.5}",
            b.id.to_string(),
            format!("{:?}", b.kind).to_lowercase(),
            b.macs,
            b.param_count,
            b.distill_loss.unwrap_or(0.0)
        );
    }
    println!(
        "wrote {} ({} branches, {} subnets); stage 1 {s1:.0} s, stage 2 {s2:.0} s, total {:.0} s",
        output.display(),
        manifest.branches.len(),
        manifest.count_subnets(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(feature = "cuda")]
fn device() -> Result<candle_core::Device> {
    Ok(candle_core::Device::new_cuda(0)?)
}

#[cfg(not(feature = "cuda"))]
fn device() -> Result<candle_core::Device> {
    Ok(candle_core::Device::Cpu)
}
