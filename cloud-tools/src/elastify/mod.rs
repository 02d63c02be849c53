//! `adaptivenet elastify`: turns a pretrained ONNX oracle into a trained,
//! signed supernet bundle: detect blocks, build merge and shrink branches
//! from pretrained weights, train them (stage 1 branch-wise distillation,
//! stage 2 subnet fine-tuning), check the oracle path is still the oracle
//! bit for bit, and write the bundle atomically.

pub mod shard;
pub mod spec;
pub mod train;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use adaptivenet_onnx::branches::BuiltBranch;
use adaptivenet_onnx::bundle::{
    Branch, BundleWriter, CreatedBy, ModelDescription, Preprocess, SignError,
};
use adaptivenet_onnx::dataset::max_abs_diff;
use adaptivenet_onnx::datasource::DataSource;
use adaptivenet_onnx::supernet::{build_branches, embed_manifest, supernet_with_manifest};
use adaptivenet_onnx::weights::SplitMix;
use adaptivenet_onnx::{model_io, Oracle, Plan};
use anyhow::{bail, Context, Result};
use clap::Args;

use shard::{ShardArg, ShardIndex};
pub use spec::ElastifySpec;

use crate::interp::Interpreter;

/// `adaptivenet elastify` arguments (the doc comments are the `--help`
/// text, so they keep plain `[START:END]`).
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Args)]
#[command(
    override_usage = "adaptivenet elastify <ORACLE> --data <DATA> --output <OUTPUT> [OPTIONS]\n       adaptivenet elastify <ORACLE> --data <DATA> --stage1-shard <I/N> --shard-dir <DIR> [OPTIONS]\n       adaptivenet elastify <ORACLE> --data <DATA> --assemble <DIR> --output <OUTPUT> [OPTIONS]\n       adaptivenet elastify --print-default-spec"
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
    /// Required (except with --stage1-shard): where to write the bundle.
    #[arg(short, long, required_unless_present_any = ["print_default_spec", "stage1_shard"])]
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
    /// Train only stage 1 of shard I of N (0-based) and write its branches
    /// to --shard-dir. `auto/N` takes I from JOB_COMPLETION_INDEX
    /// (Kubernetes Indexed Job), else SLURM_ARRAY_TASK_ID minus
    /// SLURM_ARRAY_TASK_MIN (Slurm array).
    #[arg(long, value_name = "I/N", requires = "shard_dir", conflicts_with_all = ["assemble", "output", "key"])]
    pub stage1_shard: Option<String>,
    /// The folder shard files go to (shared by all shards and the assemble step).
    #[arg(long, value_name = "DIR", requires = "stage1_shard")]
    pub shard_dir: Option<PathBuf>,
    /// Run stage 2 from the N shard files in DIR and write the bundle
    /// (same oracle, data, spec and seed as the shards).
    #[arg(long, value_name = "DIR", requires = "output")]
    pub assemble: Option<PathBuf>,
}

/// What this `elastify` process does.
enum Mode<'a> {
    /// Both stages and the bundle (the default).
    Whole { output: &'a Path },
    /// Stage 1 of one shard's branches, written to a shard file in `dir`.
    Shard { shard: ShardIndex, dir: &'a Path },
    /// Stage 2 on the shard files in `dir`, then the bundle.
    Assemble { dir: &'a Path, output: &'a Path },
}

impl<'a> Mode<'a> {
    fn of(args: &'a ElastifyArgs) -> Result<Mode<'a>> {
        match (&args.stage1_shard, &args.assemble, &args.output) {
            (Some(s), None, None) => {
                let Some(dir) = &args.shard_dir else {
                    bail!("--stage1-shard needs --shard-dir DIR (where the shard file goes)");
                };
                let shard = s
                    .parse::<ShardArg>()?
                    .resolve(&|name| std::env::var(name).ok())?;
                Ok(Mode::Shard { shard, dir })
            }
            (None, Some(dir), Some(output)) => Ok(Mode::Assemble { dir, output }),
            (None, None, Some(output)) => Ok(Mode::Whole { output }),
            (Some(_), _, _) => {
                bail!("--stage1-shard writes a shard file, not a bundle: drop --output/--assemble")
            }
            (None, _, None) => bail!("elastify needs --output (or --stage1-shard I/N)"),
        }
    }
}

pub fn run(args: &ElastifyArgs) -> Result<()> {
    if args.print_default_spec {
        print!("{}", ElastifySpec::default_yaml()?);
        return Ok(());
    }
    let (Some(oracle_path), Some(data)) = (&args.oracle, &args.data) else {
        bail!("elastify needs ORACLE and --data");
    };
    let mode = Mode::of(args)?;
    if let Some(n) = args.threads {
        // candle's CPU kernels size their thread pool from this variable.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let spec = load_spec(args)?;
    let signer = match (&args.key, &mode) {
        (Some(_), Mode::Shard { .. }) => bail!("--key signs bundles; a stage-1 shard writes none"),
        (Some(k), _) => Some(crate::cmd_bundle::read_secret_key(k)?),
        (None, _) => None,
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
    if let Some(layout) = &spec.model.layout {
        manifest
            .set_input_layout(layout)
            .context("the spec's model.layout")?;
    }

    // 3. data
    let item_shape: Vec<usize> = summary.stem.input_shape[1..].to_vec();
    let data = source.load(
        &item_shape,
        &manifest.input.layout,
        &desc.preprocess,
        &desc.labels,
    )?;
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
    let run_key = || -> Result<shard::RunKey> {
        Ok(shard::RunKey {
            tool_version: env!("CARGO_PKG_VERSION").into(),
            oracle_sha256: adaptivenet_onnx::bundle::sha256_of_file(oracle_path)
                .with_context(|| format!("{}", oracle_path.display()))?,
            spec_sha256: shard::stage1_spec_sha256(&spec, args.cuts.as_deref())?,
            data_sha256: shard::data_sha256(&data),
            seed: spec.training.seed,
        })
    };
    let ctx = TrainCtx {
        oracle: &oracle,
        supernet: &supernet,
        manifest: &manifest,
        trainable: &trainable,
        data: &data,
        train: &train,
        holdout: &holdout,
        spec: &spec,
    };
    let (trained, output) = match mode {
        Mode::Shard { shard, dir } => {
            return write_shard(&ctx, &branches, shard, dir, run_key()?, t0);
        }
        Mode::Whole { output } => (train_branches(&ctx, None)?, output),
        Mode::Assemble { dir, output } => {
            let shards = shard::read_all(dir, &run_key()?, &expected_branches(&branches))?;
            println!(
                "stage 1: {} branches from the shard files in {}",
                shards.len(),
                dir.display()
            );
            (train_branches(&ctx, Some(&shards))?, output)
        }
    };

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
    let stage1 = match trained.stage1_s {
        Some(s) => format!("{s:.0} s"),
        None => "in shards".into(),
    };
    println!(
        "wrote {} ({} branches, {} subnets); stage 1 {stage1}, stage 2 {:.0} s, total {:.0} s",
        output.display(),
        manifest.branches.len(),
        manifest.count_subnets(),
        trained.stage2_s,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Each new branch's id with its initializers' names and dims: what the
/// assemble step expects from the shard files.
fn expected_branches(branches: &[BuiltBranch]) -> shard::Expected {
    branches
        .iter()
        .map(|b| {
            let inits = b
                .initializers
                .iter()
                .map(|t| {
                    let dims = t.dims.iter().map(|&d| d.max(0) as usize).collect();
                    (t.name.clone(), dims)
                })
                .collect();
            (b.id.to_string(), inits)
        })
        .collect()
}

/// Stage 1 of this shard's branches, written to its shard file in `dir`.
fn write_shard(
    ctx: &TrainCtx,
    branches: &[BuiltBranch],
    shard: ShardIndex,
    dir: &Path,
    key: shard::RunKey,
    t0: Instant,
) -> Result<()> {
    let batch = ctx.spec.training.batch_size.max(1);
    let news = train::new_branches(ctx.manifest);
    let costs: Vec<u64> = news
        .iter()
        .map(|b| {
            let steps = train::stage1_steps(b, &ctx.spec.training.stage1, batch) as u64;
            steps.saturating_mul(b.macs.max(1))
        })
        .collect();
    let mine: Vec<&Branch> = shard::assign(&costs, shard)
        .into_iter()
        .map(|i| news[i])
        .collect();
    println!(
        "stage-1 shard {shard}: {} of {} new branches: {}",
        mine.len(),
        news.len(),
        mine.iter()
            .map(|b| b.id.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = shard.file_in(dir);
    let device = device()?;
    let interp = Interpreter::new(ctx.supernet, ctx.trainable, &device)?;
    let t1 = Instant::now();
    let losses = if ctx.spec.training.stage1.samples > 0 && !mine.is_empty() {
        let teacher = teacher(ctx, &device)?;
        train::stage1(
            &interp,
            ctx.manifest,
            &mine,
            &teacher,
            ctx.train,
            ctx.holdout,
            &ctx.spec.training.stage1,
        )?
    } else {
        Default::default()
    };
    let stage1_s = t1.elapsed().as_secs_f64();
    let vars: HashMap<&str, &candle_core::Var> = interp
        .named_vars()
        .iter()
        .map(|(n, v)| (n.as_str(), v))
        .collect();
    let mut out = Vec::with_capacity(mine.len());
    for b in &mine {
        let built = branches
            .iter()
            .find(|x| x.id == b.id)
            .with_context(|| format!("branch {} is in the manifest but was not built", b.id))?;
        let mut tensors = Vec::with_capacity(built.initializers.len());
        for init in &built.initializers {
            let var = vars
                .get(init.name.as_str())
                .with_context(|| format!("branch {}: `{}` is not trainable", b.id, init.name))?;
            let t = var.as_tensor();
            tensors.push(shard::NamedTensor {
                name: init.name.clone(),
                dims: t.dims().to_vec(),
                data: t.reshape(t.elem_count())?.to_vec1::<f32>()?,
            });
        }
        out.push(shard::ShardBranch {
            id: b.id,
            // none when stage 1 was skipped (samples 0)
            distill_loss: losses.get(&b.id.to_string()).copied(),
            tensors,
        });
    }
    let file = shard::ShardFile {
        key,
        shard,
        branches: out,
    };
    file.write(&path)?;
    for b in &file.branches {
        if let Some(l) = b.distill_loss {
            println!("  {:<8} distill loss {l:.5}", b.id.to_string());
        }
    }
    println!(
        "wrote {} ({} branches); stage 1 {stage1_s:.0} s, total {:.0} s",
        path.display(),
        file.branches.len(),
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
    losses: HashMap<String, f64>,
    /// Stage 1's time in this process (none when it ran in shards).
    stage1_s: Option<f64>,
    stage2_s: f64,
}

/// What both stages train on.
struct TrainCtx<'a> {
    oracle: &'a Oracle,
    supernet: &'a adaptivenet_onnx::tract_onnx::pb::ModelProto,
    manifest: &'a adaptivenet_onnx::bundle::Manifest,
    trainable: &'a HashSet<String>,
    data: &'a adaptivenet_onnx::dataset::Dataset,
    train: &'a [usize],
    holdout: &'a [usize],
    spec: &'a ElastifySpec,
}

fn teacher<'a>(ctx: &TrainCtx<'a>, device: &candle_core::Device) -> Result<train::Teacher<'a>> {
    let batch = ctx.spec.training.batch_size.max(1);
    Ok(train::Teacher {
        plans: ctx.oracle.block_plans(batch)?,
        data: ctx.data,
        batch,
        device: device.clone(),
    })
}

/// Stage 1 (branch-wise distillation; or its result from the shard files)
/// then stage 2 (subnet fine-tuning) of the new branches' initializers.
fn train_branches(
    ctx: &TrainCtx,
    shards: Option<&BTreeMap<String, (PathBuf, shard::ShardBranch)>>,
) -> Result<Trained> {
    let device = device()?;
    let interp = Interpreter::new(ctx.supernet, ctx.trainable, &device)?;
    let teacher = teacher(ctx, &device)?;
    let t1 = Instant::now();
    let (losses, stage1_s) = match shards {
        Some(shards) => (load_shards(&interp, shards)?, None),
        None if ctx.spec.training.stage1.samples > 0 => {
            let losses = train::stage1(
                &interp,
                ctx.manifest,
                &train::new_branches(ctx.manifest),
                &teacher,
                ctx.train,
                ctx.holdout,
                &ctx.spec.training.stage1,
            )?;
            (losses, Some(t1.elapsed().as_secs_f64()))
        }
        None => (Default::default(), Some(0.0)),
    };
    let t2 = Instant::now();
    if ctx.spec.training.stage2.steps > 0 {
        let l = train::stage2(
            &interp,
            ctx.manifest,
            &teacher,
            ctx.train,
            &ctx.spec.training.stage2,
            ctx.spec.training.seed,
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

/// Set the trainable variables to the shard files' trained values (checked
/// against the branches by [`shard::read_all`]); returns the losses.
fn load_shards(
    interp: &Interpreter,
    shards: &BTreeMap<String, (PathBuf, shard::ShardBranch)>,
) -> Result<HashMap<String, f64>> {
    let vars: HashMap<&str, &candle_core::Var> = interp
        .named_vars()
        .iter()
        .map(|(n, v)| (n.as_str(), v))
        .collect();
    let mut losses = HashMap::new();
    for (id, (path, b)) in shards {
        for t in &b.tensors {
            let var = vars.get(t.name.as_str()).with_context(|| {
                format!(
                    "{}: branch {id}: `{}` is not a trainable initializer",
                    path.display(),
                    t.name
                )
            })?;
            let value =
                candle_core::Tensor::from_vec(t.data.clone(), t.dims.as_slice(), interp.device())?;
            var.set(&value)
                .with_context(|| format!("{}: branch {id}: `{}`", path.display(), t.name))?;
        }
        // none: the shard ran no stage 1 (a whole run records no loss either)
        if let Some(l) = b.distill_loss {
            losses.insert(id.clone(), l);
        }
    }
    Ok(losses)
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
