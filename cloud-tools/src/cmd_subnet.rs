//! Subnets of a bundle on the cloud side: `adaptivenet export-subnet` writes
//! one subnet as a standalone ONNX file, and `adaptivenet inspect --eval`
//! measures the top-1 of the oracle path, of every single-branch subnet (the
//! oracle path with one branch swapped in) and of the fastest subnet, through
//! tract.

use std::path::PathBuf;

use adaptivenet_onnx::bundle::{Bundle, SubnetId};
use adaptivenet_onnx::dataset::Dataset;
use adaptivenet_onnx::datasource::DataSource;
use adaptivenet_onnx::extract::materialise;
use adaptivenet_onnx::subnet::{fewest_macs_subnet, most_merged_subnet, single_branch_subnet};
use adaptivenet_onnx::supernet::subnet_path;
use adaptivenet_onnx::tract_onnx::pb::ModelProto;
use adaptivenet_onnx::{model_io, GraphIndex};
use anyhow::{bail, Context, Result};
use clap::Args;

use crate::table::Table;

#[derive(Args)]
pub struct ExportSubnetArgs {
    /// The bundle.
    #[arg(long)]
    pub bundle: PathBuf,
    /// The subnet: branch ids of its path joined by spaces, e.g. "b0 m1x2 b3 ...".
    #[arg(long)]
    pub subnet: String,
    /// Output ONNX file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Trusted public key; without one the signature is not checked.
    #[arg(long)]
    pub pubkey: Option<PathBuf>,
}

/// Open a bundle, verifying its signature when a key is given.
pub fn open_bundle(path: &std::path::Path, pubkey: Option<&std::path::Path>) -> Result<Bundle> {
    Ok(match pubkey {
        Some(k) => {
            let key = adaptivenet_onnx::bundle::read_public_key(k)?;
            Bundle::open(path, &[key], false)?
        }
        None => Bundle::open(path, &[], true)?,
    })
}

/// One subnet of the bundle as a standalone model.
pub fn subnet_model(bundle: &Bundle, index: &GraphIndex, subnet: &SubnetId) -> Result<ModelProto> {
    let path = subnet_path(&bundle.manifest, subnet)?;
    Ok(materialise(&bundle.model, index, &path)?)
}

pub fn export_subnet(args: &ExportSubnetArgs) -> Result<()> {
    let bundle = open_bundle(&args.bundle, args.pubkey.as_deref())?;
    let subnet = bundle
        .manifest
        .parse_subnet(&args.subnet)
        .map_err(|e| anyhow::anyhow!("--subnet: {}", e.0))?;
    let index = GraphIndex::of_model(&bundle.model)?;
    let model = subnet_model(&bundle, &index, &subnet)?;
    model_io::save_model(&args.output, &model)?;
    println!(
        "wrote subnet `{subnet}` of {} to {}",
        args.bundle.display(),
        args.output.display()
    );
    Ok(())
}

/// Top-1 of a subnet on labelled data through tract.
pub fn top1(
    bundle: &Bundle,
    index: &GraphIndex,
    subnet: &SubnetId,
    data: &Dataset,
    batch: usize,
) -> Result<f64> {
    let model = subnet_model(bundle, index, subnet)?;
    Ok(adaptivenet_onnx::subnet::top1(&model, data, batch)?)
}

/// `inspect --eval`: the single-branch table.
pub fn eval_table(bundle: &Bundle, source: &str) -> Result<()> {
    let m = &bundle.manifest;
    let source: DataSource = source.parse()?;
    let item_shape = m
        .item_shape()
        .context("input.shape: every dim after the batch must be fixed")?;
    let data = source.load(
        &item_shape,
        &m.input.layout,
        &m.input.preprocess,
        &m.input.labels,
    )?;
    if data.labels.is_none() {
        bail!("--eval needs labelled data");
    }
    let index = GraphIndex::of_model(&bundle.model)?;
    let macs = |s: &SubnetId| -> u64 {
        s.branches()
            .iter()
            .filter_map(|id| m.branch(id))
            .map(|b| b.macs)
            .sum()
    };
    let oracle = m.oracle_subnet();
    let oracle_acc = top1(bundle, &index, &oracle, &data, 100)?;
    let mut table = Table::new(&["subnet", "branch", "block MACs", "top-1 %", "vs oracle"]);
    table.row(vec![
        "oracle path".into(),
        "-".into(),
        macs(&oracle).to_string(),
        format!("{:.2}", oracle_acc * 100.0),
        "0.00".into(),
    ]);
    let mut worst = f64::INFINITY;
    for b in m
        .branches
        .iter()
        .filter(|b| b.kind != adaptivenet_onnx::bundle::BranchKind::Original)
    {
        let s = single_branch_subnet(m, b);
        let acc = top1(bundle, &index, &s, &data, 100)?;
        worst = worst.min(acc - oracle_acc);
        table.row(vec![
            "single".into(),
            b.id.to_string(),
            macs(&s).to_string(),
            format!("{:.2}", acc * 100.0),
            format!("{:+.2}", (acc - oracle_acc) * 100.0),
        ]);
    }
    for (what, s) in [
        (
            "fewest MACs",
            fewest_macs_subnet(m).context("no path of branches")?,
        ),
        (
            "most merged",
            most_merged_subnet(m).context("no path of branches")?,
        ),
    ] {
        let acc = top1(bundle, &index, &s, &data, 100)?;
        table.row(vec![
            format!("{what}: {s}"),
            "-".into(),
            macs(&s).to_string(),
            format!("{:.2}", acc * 100.0),
            format!("{:+.2}", (acc - oracle_acc) * 100.0),
        ]);
    }
    println!("top-1 on {} samples through tract", data.len());
    print!("{}", table.render());
    println!(
        "worst single-branch subnet: {:+.2} points vs the oracle path",
        worst * 100.0
    );
    Ok(())
}
