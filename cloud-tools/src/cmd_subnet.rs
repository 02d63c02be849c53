//! Subnets of a bundle on the cloud side: `adaptivenet export-subnet` writes
//! one subnet as a standalone ONNX file, and `adaptivenet inspect --eval`
//! measures the top-1 of the oracle path, of every single-branch subnet (the
//! oracle path with one branch swapped in) and of the fastest subnet, through
//! tract.

use std::path::PathBuf;

use adaptivenet_onnx::bundle::{Branch, Bundle, Manifest, SubnetId};
use adaptivenet_onnx::dataset::{argmax_rows, Dataset};
use adaptivenet_onnx::datasource::DataSource;
use adaptivenet_onnx::extract::materialise;
use adaptivenet_onnx::supernet::subnet_path;
use adaptivenet_onnx::tract_onnx::pb::ModelProto;
use adaptivenet_onnx::{model_io, GraphIndex, Plan};
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
            let key =
                adaptivenet_onnx::bundle::read_public_key(k).map_err(|e| anyhow::anyhow!("{e}"))?;
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

/// The oracle path with branch `b` swapped in.
pub fn single_branch_subnet(m: &Manifest, b: &Branch) -> SubnetId {
    let mut ids = Vec::new();
    let mut at = 0;
    while at < m.num_blocks() {
        if at == b.from {
            ids.push(b.id);
            at = b.to;
        } else {
            ids.push(adaptivenet_onnx::bundle::BranchId::Original { block: at });
            at += 1;
        }
    }
    SubnetId(ids)
}

/// The subnet with the fewest MACs (shortest path over cuts).
pub fn fastest_subnet(m: &Manifest) -> SubnetId {
    cheapest_path(m, |b| b.macs)
}

/// The subnet with the fewest branches (most merging), fewest MACs among those.
pub fn most_merged_subnet(m: &Manifest) -> SubnetId {
    cheapest_path(m, |b| (1u64 << 40) + b.macs)
}

fn cheapest_path(m: &Manifest, cost_of: impl Fn(&Branch) -> u64) -> SubnetId {
    let n = m.num_blocks();
    let mut best: Vec<Option<(u64, Vec<adaptivenet_onnx::bundle::BranchId>)>> = vec![None; n + 1];
    best[0] = Some((0, vec![]));
    for i in 0..n {
        let Some((cost, path)) = best[i].clone() else {
            continue;
        };
        for b in m.branches.iter().filter(|b| b.from == i && b.to <= n) {
            let c = cost + cost_of(b);
            if best[b.to].as_ref().is_none_or(|(bc, _)| c < *bc) {
                let mut p = path.clone();
                p.push(b.id);
                best[b.to] = Some((c, p));
            }
        }
    }
    SubnetId(best[n].clone().map(|x| x.1).unwrap_or_default())
}

/// Top-1 of a subnet on labelled data through tract.
pub fn top1(
    bundle: &Bundle,
    index: &GraphIndex,
    subnet: &SubnetId,
    data: &Dataset,
    batch: usize,
) -> Result<f64> {
    let labels = data
        .labels
        .as_ref()
        .context("evaluation needs labelled data")?;
    let model = subnet_model(bundle, index, subnet)?;
    let n = data.len();
    let full = n / batch * batch;
    let mut correct = 0usize;
    let mut plan = Plan::whole_model(&model, batch)?;
    let mut start = 0;
    while start < n {
        let b = if start < full { batch } else { n - start };
        if b != batch {
            plan = Plan::whole_model(&model, b)?;
        }
        let pred = argmax_rows(&plan.run(data.batch(start, b)?)?)?;
        correct += pred
            .iter()
            .zip(&labels[start..start + b])
            .filter(|(p, l)| **p as i64 == **l)
            .count();
        start += b;
    }
    Ok(correct as f64 / n.max(1) as f64)
}

/// `inspect --eval`: the single-branch table.
pub fn eval_table(bundle: &Bundle, source: &str) -> Result<()> {
    let m = &bundle.manifest;
    let source: DataSource = source.parse()?;
    let item_shape: Vec<usize> = m
        .input
        .shape
        .iter()
        .skip(1)
        .map(|d| d.fixed().unwrap_or(0))
        .collect();
    let data = source.load(&item_shape, &m.input.preprocess, &m.input.labels)?;
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
        ("fewest MACs", fastest_subnet(m)),
        ("most merged", most_merged_subnet(m)),
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
