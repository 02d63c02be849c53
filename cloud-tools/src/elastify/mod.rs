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

use adaptivenet_onnx::branches::BuiltBranch;
use adaptivenet_onnx::bundle::{BundleWriter, CreatedBy, ModelDescription, Preprocess, SignError};
use adaptivenet_onnx::dataset::max_abs_diff;
use adaptivenet_onnx::datasource::DataSource;
use adaptivenet_onnx::supernet::{build_branches, embed_manifest, supernet_with_manifest};
use adaptivenet_onnx::weights::SplitMix;
use adaptivenet_onnx::{model_io, Oracle, Plan};
use anyhow::{bail, Context, Result};
use clap::Args;

pub use spec::ElastifySpec;

use crate::interp::Interpreter;

/// `adaptivenet elastify` arguments (the doc comments are the `--help`
/// text, so they keep plain `[START:END]`).
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Args)]
#[command(
    override_usage = "adaptivenet elastify <ORACLE> --data <DATA> --output <OUTPUT> [OPTIONS]\n       adaptivenet elastify --print-default-spec"
)]
pub struct ElastifyArgs {
    /// Required: the oracle (pretrained ONNX model).
    #[arg(required_unless_present = "print_default_spec")]
    pub oracle: Option<PathBuf>,
    /// Required: training data: idx:IMAGES,LABELS | npy:TENSOR,LABELS | folder:DIR, optionally [START:END].
    #[arg(long, required_unless_present = "print_default_spec")]
    pub data: Option<String>,
    /// The elastify.yaml spec (defaults for every key not given).
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Print the default spec and exit.
    #[arg(long)]
    pub print_default_spec: bool,
    /// Required: where to write the bundle.
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
    let spec = load_spec(args)?;
    let signer = match &args.key {
        Some(k) => Some(crate::cmd_bundle::read_secret_key(k)?),
        None => None,
    };
    let source: DataSource = data.parse()?;
    let t0 = Instant::now();

    // 1. blocks
    let oracle = Oracle::load(oracle_path, args.cuts.as_deref())?;
    check_trainable(&oracle, oracle_path)?;
    let summary = oracle.summary()?;
    crate::cmd_blocks::print_summary(&summary);

    // 2. branches
    let branches = build_branches(&oracle, &spec.branches)?;
    print_branches(&branches);
    let desc = description(&spec, oracle_path);
    let (mut supernet, mut manifest) = supernet_with_manifest(&oracle, &branches, &desc)?;

    // 3. data
    let item_shape: Vec<usize> = summary.stem.input_shape[1..].to_vec();
    let data = source.load(&item_shape, &desc.preprocess, &desc.labels)?;
    let batch = spec.training.batch_size.max(1);
    let (holdout, train) = split(data.len(), batch, &spec);
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
    let trainable: HashSet<String> = branches
        .iter()
        .flat_map(|b| b.initializers.iter().map(|t| t.name.clone()))
        .collect();
    let trained = train_branches(
        &oracle, &supernet, &manifest, &trainable, &data, &train, &holdout, &spec,
    )?;

    // 5. write back and check the oracle path is untouched
    let written = trained.interp.export_into(&mut supernet)?;
    if written != trainable.len() {
        bail!(
            "wrote back {written} of {} trained initializers",
            trainable.len()
        );
    }
    check_oracle_path(&oracle, &supernet, &data, batch)?;
    for br in manifest.branches.iter_mut() {
        if let Some(l) = trained.losses.get(&br.id.to_string()) {
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

    // 6. the bundle
    embed_manifest(&mut supernet, &manifest.to_yaml()?);
    let mut writer = BundleWriter::new(manifest);
    writer.add_file("supernet.onnx", model_io::encode_model(&supernet))?;
    let sign = |bytes: &[u8]| -> std::result::Result<Vec<u8>, SignError> {
        match &signer {
            Some(k) => Ok(crate::cmd_bundle::sign_manifest(bytes, k)?),
            None => Err("no signing key".into()),
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
    print_losses(&manifest);
    println!(
        "wrote {} ({} branches, {} subnets); stage 1 {:.0} s, stage 2 {:.0} s, total {:.0} s",
        output.display(),
        manifest.branches.len(),
        manifest.count_subnets(),
        trained.stage1_s,
        trained.stage2_s,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The spec file (or the defaults) with `--seed` applied.
fn load_spec(args: &ElastifyArgs) -> Result<ElastifySpec> {
    let mut spec = match &args.spec {
        Some(p) => ElastifySpec::load(p)?,
        None => ElastifySpec::default(),
    };
    if let Some(seed) = args.seed {
        spec.training.seed = seed;
        spec.branches.seed = seed;
    }
    Ok(spec)
}

/// Training differentiates through the whole oracle: refuse before any work
/// when an operator the trainer cannot differentiate is on a live path.
fn check_trainable(oracle: &Oracle, path: &std::path::Path) -> Result<()> {
    for (i, node) in oracle.graph().node.iter().enumerate() {
        if oracle.index.live[i] && !crate::interp::ops::is_supported(&node.op_type) {
            bail!(
                "{}: operator `{}` (node `{}`) is not supported by the trainer",
                path.display(),
                node.op_type,
                node.name
            );
        }
    }
    Ok(())
}

fn print_branches(branches: &[BuiltBranch]) {
    println!("{} new branches:", branches.len());
    for b in branches {
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
}

/// The model description of the bundle: the spec's, named after the oracle
/// file when the spec gives no name.
fn description(spec: &ElastifySpec, oracle_path: &std::path::Path) -> ModelDescription {
    ModelDescription {
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
    }
}

/// Shuffle the sample indices with the training seed and split them into
/// (held out, training); the held-out count is whole batches.
fn split(len: usize, batch: usize, spec: &ElastifySpec) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = SplitMix(spec.training.seed);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let n_hold = (spec.training.holdout / batch * batch).min(order.len().saturating_sub(batch));
    let train = order.split_off(n_hold);
    (order, train)
}

/// What training produced.
struct Trained {
    interp: Interpreter,
    /// Branch id -> stage-1 held-out distillation loss.
    losses: std::collections::HashMap<String, f64>,
    stage1_s: f64,
    stage2_s: f64,
}

/// Stage 1 (branch-wise distillation) then stage 2 (subnet fine-tuning)
/// of the new branches' initializers.
#[allow(clippy::too_many_arguments)]
fn train_branches(
    oracle: &Oracle,
    supernet: &adaptivenet_onnx::tract_onnx::pb::ModelProto,
    manifest: &adaptivenet_onnx::bundle::Manifest,
    trainable: &HashSet<String>,
    data: &adaptivenet_onnx::dataset::Dataset,
    train: &[usize],
    holdout: &[usize],
    spec: &ElastifySpec,
) -> Result<Trained> {
    let device = device()?;
    let batch = spec.training.batch_size.max(1);
    let interp = Interpreter::new(supernet, trainable, &device)?;
    let teacher = train::Teacher {
        plans: oracle.block_plans(batch)?,
        data,
        batch,
        device: device.clone(),
    };
    let t1 = Instant::now();
    let losses = if spec.training.stage1.samples > 0 {
        train::stage1(
            &interp,
            manifest,
            &teacher,
            train,
            holdout,
            &spec.training.stage1,
        )?
    } else {
        Default::default()
    };
    let stage1_s = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    if spec.training.stage2.steps > 0 {
        let l = train::stage2(
            &interp,
            manifest,
            &teacher,
            train,
            &spec.training.stage2,
            spec.training.seed,
        )?;
        println!("stage 2 final loss {l:.4}");
    }
    Ok(Trained {
        interp,
        losses,
        stage1_s,
        stage2_s: t2.elapsed().as_secs_f64(),
    })
}

/// The supernet run as is must be the oracle bit for bit.
fn check_oracle_path(
    oracle: &Oracle,
    supernet: &adaptivenet_onnx::tract_onnx::pb::ModelProto,
    data: &adaptivenet_onnx::dataset::Dataset,
    batch: usize,
) -> Result<()> {
    let check = data.batch(0, batch.min(data.len()))?;
    let a = Plan::whole_model(&oracle.model, check.shape()[0])?.run(check.clone())?;
    let b = Plan::whole_model(supernet, check.shape()[0])?.run(check)?;
    let d = max_abs_diff(&a, &b)?;
    if d != 0.0 {
        bail!("the supernet's oracle path differs from the oracle (max abs diff {d}); refusing to write");
    }
    Ok(())
}

fn print_losses(manifest: &adaptivenet_onnx::bundle::Manifest) {
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
}

#[cfg(feature = "cuda")]
fn device() -> Result<candle_core::Device> {
    Ok(candle_core::Device::new_cuda(0)?)
}

#[cfg(not(feature = "cuda"))]
fn device() -> Result<candle_core::Device> {
    Ok(candle_core::Device::Cpu)
}
