//! Benchmarks and report helpers for the on-device search:
//!
//! ```text
//! bench_search make-bundle OUT                 # the untrained supernet bundle of the fixture (unsigned)
//! bench_search prefix --bundle B --data D      # prefix tree vs naive on a population of 100
//! bench_search baselines --bundle B --data D --holdout H   # drop same-shape blocks baseline
//! ```

use std::path::PathBuf;
use std::time::Instant;

mod baseline;

use adaptivenet_onnx::bundle::{read_public_key, Bundle, SubnetId};
use adaptivenet_onnx::dataset::Dataset;
use adaptivenet_onnx::datasource::DataSource;
use adaptivenet_search::latency;
use adaptivenet_search::strategy::{crossover, mutate};
use adaptivenet_search::{Evaluator, Rng, Supernet, TimingOptions};
use adaptivenet_testkit::bundles::build_untrained_bundle;
use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the untrained supernet bundle of the oracle fixture (unsigned).
    MakeBundle {
        out: PathBuf,
        #[arg(long, default_value = "tests/fixtures/oracle/fmnist_resnet.onnx")]
        oracle: PathBuf,
    },
    /// Prefix-tree vs naive evaluation of a population.
    Prefix {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        data: String,
        #[arg(long, default_value_t = 100)]
        population: usize,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 100)]
        batch: usize,
        #[arg(long)]
        pubkey: Option<PathBuf>,
    },
    /// Drop-same-shape-blocks baseline at fractions of the oracle latency.
    Baselines {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        data: String,
        #[arg(long)]
        holdout: Option<String>,
        #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.8")]
        fracs: Vec<f64>,
        #[arg(long)]
        pubkey: Option<PathBuf>,
        #[arg(long, default_value_t = 7)]
        max_drop: usize,
    },
}

fn open(bundle: &PathBuf, pubkey: &Option<PathBuf>) -> Result<Bundle> {
    let keys = match pubkey {
        Some(k) => vec![read_public_key(k)?],
        None => vec![],
    };
    Ok(Bundle::open(bundle, &keys, pubkey.is_none())?)
}

fn load(spec: &str, b: &Bundle, net: &Supernet) -> Result<Dataset> {
    let src: DataSource = spec.parse()?;
    Ok(src.load(
        &net.item_shape,
        &b.manifest.input.layout,
        &b.manifest.input.preprocess,
        &b.manifest.input.labels,
    )?)
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match Cli::parse().cmd {
        Cmd::MakeBundle { out, oracle } => {
            build_untrained_bundle(&oracle, &out, None)?;
            println!("wrote {}", out.display());
        }
        Cmd::Prefix {
            bundle,
            data,
            population,
            threads,
            batch,
            pubkey,
        } => {
            let b = open(&bundle, &pubkey)?;
            let net = Supernet::of_bundle(&b)?;
            let d = load(&data, &b, &net)?;
            let ev = Evaluator::new(&net, &d, batch, threads)?;
            println!(
                "{} images, batch {}, {} thread(s); cut-tensor memory bound {:.1} MiB",
                d.len(),
                ev.batch_size(),
                threads,
                ev.cache_bound_bytes() as f64 / (1 << 20) as f64
            );
            let mut rng = Rng::seeded(7);
            // (a) random subnets; (b) one evolutionary generation: children of 25 parents
            let mut random = Vec::new();
            while random.len() < population {
                let s = net.random_subnet(&mut rng);
                if !random.contains(&s) {
                    random.push(s);
                }
            }
            let parents: Vec<SubnetId> = random[..population / 4].to_vec();
            let mut generation: Vec<SubnetId> = parents.clone();
            while generation.len() < population {
                let a = &parents[rng.below(parents.len())];
                let c = if rng.unit() < 0.5 {
                    let bb = &parents[rng.below(parents.len())];
                    mutate(&net, &crossover(a, bb, &mut rng), 0.1, &mut rng)
                } else {
                    mutate(&net, a, 0.1, &mut rng)
                };
                if !generation.contains(&c) {
                    generation.push(c);
                }
            }
            for (name, pop) in [
                ("random population", &random),
                ("evolutionary generation", &generation),
            ] {
                let w = Evaluator::work(pop);
                let t = Instant::now();
                let tree = ev.evaluate(pop, 0..ev.batches())?;
                let tt = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let naive = ev.evaluate_naive(pop, 0..ev.batches())?;
                let tn = t.elapsed().as_secs_f64();
                assert_eq!(tree, naive, "prefix tree and naive evaluation differ");
                println!(
                    "{name} of {}: prefix tree {tt:.2} s, naive {tn:.2} s, speed-up {:.2}x (part runs per batch {} vs {}); results identical",
                    pop.len(),
                    tn / tt,
                    w.tree,
                    w.naive
                );
            }
        }
        Cmd::Baselines {
            bundle,
            data,
            holdout,
            fracs,
            pubkey,
            max_drop,
        } => {
            let b = open(&bundle, &pubkey)?;
            let net = Supernet::of_bundle(&b)?;
            let d = load(&data, &b, &net)?;
            let input = latency::sample_input(&net, Some(&d))?;
            let (table, _) = latency::measure(&net, &input, TimingOptions::default())?;
            let oracle_ms =
                latency::measure_subnet(&net, &net.oracle(), &input, TimingOptions::default())?;
            println!(
                "same-shape blocks: {:?}; oracle measured {:.3} ms",
                baseline::same_shape_blocks(&net),
                oracle_ms
            );
            let t = Instant::now();
            let pts = baseline::drop_blocks(&net, &table, &d, 200, max_drop)?;
            println!(
                "{} drop-block subnets evaluated in {:.1} s",
                pts.len(),
                t.elapsed().as_secs_f64()
            );
            let hold = holdout.as_deref().map(|h| load(h, &b, &net)).transpose()?;
            println!(
                "{:>6} {:>9}  {:<24} {:>9} {:>9} {:>8} {:>8}",
                "budget", "budget ms", "dropped", "pred ms", "meas ms", "acc %", "hold %"
            );
            for f in fracs {
                let budget = f * oracle_ms;
                match baseline::best_drop_under(&pts, budget) {
                    Some(p) => {
                        let mut path = vec![net.stem_span()];
                        for i in 0..net.num_blocks() {
                            if !p.skipped.contains(&i) {
                                path.push(net.branch_span(
                                    &adaptivenet_onnx::bundle::BranchId::Original { block: i },
                                )?);
                            }
                        }
                        path.push(net.head_span());
                        let model =
                            adaptivenet_onnx::extract::materialise(&net.model, &net.index, &path)?;
                        let plan = adaptivenet_onnx::Plan::whole_model(&model, 1)?;
                        let meas = latency::time_interleaved(
                            &[(&plan, &input)],
                            TimingOptions::default(),
                        )?[0];
                        let h = match &hold {
                            Some(h) => format!(
                                "{:.2}",
                                100.0 * adaptivenet_onnx::subnet::top1(&model, h, 200)?
                            ),
                            None => "-".into(),
                        };
                        println!(
                            "{:>5.2}x {:>9.3}  {:<24} {:>9.3} {:>9.3} {:>8.2} {:>8}",
                            f,
                            budget,
                            p.label(),
                            p.predicted_ms,
                            meas,
                            p.accuracy * 100.0,
                            h
                        );
                    }
                    None => println!("{f:>5.2}x {budget:>9.3}  nothing fits"),
                }
            }
        }
    }
    Ok(())
}
