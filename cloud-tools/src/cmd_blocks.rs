//! `adaptivenet blocks MODEL.onnx`: prints how the model splits into a stem,
//! blocks and a head (tensors, shapes, op counts, parameters, MACs), as a
//! table or as one JSON object.

use std::path::PathBuf;

use adaptivenet_onnx::oracle::PartSummary;
use adaptivenet_onnx::{LayoutSummary, Oracle};
use anyhow::Result;
use clap::Args;

use crate::table::Table;

#[derive(Args)]
pub struct BlocksArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Print one JSON object with keys `stem`, `blocks` and `head`.
    #[arg(long)]
    pub json: bool,
    /// Cut tensors to use instead of automatic detection (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub cuts: Option<Vec<String>>,
}

pub fn run(args: &BlocksArgs) -> Result<()> {
    let oracle = Oracle::load(&args.model, args.cuts.as_deref())?;
    let summary = oracle.summary()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    print_summary(&summary);
    Ok(())
}

/// Print the split as a table.
pub fn print_summary(summary: &LayoutSummary) {
    let mut table = Table::new(&[
        "part",
        "input -> output",
        "in shape",
        "out shape",
        "ops",
        "params",
        "MACs",
        "op counts",
    ]);
    let mut add = |name: String, p: &PartSummary| {
        table.row(vec![
            name,
            format!("{} -> {}", p.input, p.output),
            format!("{:?}", p.input_shape),
            format!("{:?}", p.output_shape),
            p.stats.ops.to_string(),
            p.stats.params.to_string(),
            p.stats.macs.to_string(),
            p.stats
                .op_counts
                .iter()
                .map(|(k, v)| format!("{k}x{v}"))
                .collect::<Vec<_>>()
                .join(" "),
        ])
    };
    add("stem".into(), &summary.stem);
    for b in &summary.blocks {
        add(format!("B{}", b.index.unwrap_or(0)), b);
    }
    add("head".into(), &summary.head);
    let total_params: u64 = std::iter::once(&summary.stem)
        .chain(&summary.blocks)
        .chain(std::iter::once(&summary.head))
        .map(|p| p.stats.params)
        .sum();
    let total_macs: u64 = std::iter::once(&summary.stem)
        .chain(&summary.blocks)
        .chain(std::iter::once(&summary.head))
        .map(|p| p.stats.macs)
        .sum();
    println!("model: {}", summary.model);
    println!(
        "{} blocks; {} parameters; {} MACs per sample",
        summary.blocks.len(),
        total_params,
        total_macs
    );
    print!("{}", table.render());
}
