//! `adaptivenet`: the cloud-side command line. It inspects oracles (block
//! detection), and builds, signs and inspects supernet bundles.

use adaptivenet_cloud_tools::{cmd_blocks, cmd_bundle, cmd_subnet, elastify};

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "adaptivenet",
    version,
    about = "Build elastic supernets from pretrained ONNX models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the stem, blocks and head that the model splits into.
    Blocks(cmd_blocks::BlocksArgs),
    /// Build, train and sign a supernet bundle from a pretrained ONNX model.
    Elastify(elastify::ElastifyArgs),
    /// Write one subnet of a bundle as a standalone ONNX model.
    ExportSubnet(cmd_subnet::ExportSubnetArgs),
    /// Make a minisign key pair (NAME.key unencrypted, NAME.pub) for signing bundles.
    Keygen(cmd_bundle::KeygenArgs),
    /// Sign a bundle's manifest (replaces manifest.sig).
    Sign(cmd_bundle::SignArgs),
    /// Check a bundle's files, checksums and signature against trusted keys.
    Verify(cmd_bundle::VerifyArgs),
    /// Print a bundle's model, input, cuts and branches.
    Inspect(cmd_bundle::InspectArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Elastify(_)) {
        adaptivenet_cloud_tools::alloc::keep_freed_memory();
    }
    let result = match cli.command {
        Command::Blocks(args) => cmd_blocks::run(&args),
        Command::Elastify(args) => elastify::run(&args),
        Command::ExportSubnet(args) => cmd_subnet::export_subnet(&args),
        Command::Keygen(args) => cmd_bundle::keygen(&args),
        Command::Sign(args) => cmd_bundle::sign(&args),
        Command::Verify(args) => cmd_bundle::verify(&args),
        Command::Inspect(args) => cmd_bundle::inspect(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("adaptivenet: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    // Each cause once: typed errors often repeat their source in their own
    // message, so a cause already in the text is not appended again.
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
