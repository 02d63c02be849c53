//! `adaptived search`: search a bundle's best subnets for this device on
//! local data and print the budget table (optionally JSON and an SVG chart).

use std::path::PathBuf;
use std::time::Instant;

use adaptivenet_onnx::bundle::{read_public_key, BranchKind, Bundle};
use adaptivenet_onnx::dataset::{Dataset, Preprocess};
use adaptivenet_onnx::datasource::DataSource;
use anyhow::{anyhow, bail, Context, Result};

use super::latency::TimingOptions;
use super::pipeline::{self, Options};
use super::report::{self, ChosenJson, OracleJson};
use super::strategy::{SearchParams, StrategyKind};

/// Which new branches the search may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Space {
    All,
    Merge,
    Shrink,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// The supernet bundle.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Search data: `idx:IMAGES[,LABELS]`, `npy:T[,L]` or `folder:DIR`, with an
    /// optional slice `[START:END]`. Without labels, accuracy is agreement with
    /// the oracle path. Default: the bundle's calibration sample, if any.
    #[arg(long)]
    pub data: Option<String>,
    /// Held-out data (same forms): the oracle and every chosen subnet are evaluated on it.
    #[arg(long)]
    pub holdout: Option<String>,
    /// Latency budget in ms (batch 1).
    #[arg(long, conflicts_with = "budget_frac")]
    pub budget_ms: Option<f64>,
    /// Latency budget as a fraction of the oracle's measured latency (default 1.0).
    #[arg(long)]
    pub budget_frac: Option<f64>,
    /// Also report these budgets (fractions of the oracle's latency) in the table.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.8")]
    pub table_fracs: Vec<f64>,
    /// Evaluation threads (default: the number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Cache results here (keyed by bundle sha256 and device fingerprint):
    /// the global `--state-dir`, passed in by `main`.
    #[arg(skip)]
    pub state_dir: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG chart of the evaluated subnets, the front and the choice here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Trusted minisign public key (repeatable); the bundle must be signed by one.
    #[arg(long)]
    pub pubkey: Vec<PathBuf>,
    /// Accept an unsigned bundle (development only).
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Search strategy.
    #[arg(long, value_enum, default_value = "auto")]
    pub strategy: StrategyKind,
    /// Restrict the new branches to one kind.
    #[arg(long, value_enum, default_value = "all")]
    pub space: Space,
    /// Evaluation budget: most distinct subnets evaluated (exhaustive if the space fits).
    #[arg(long, default_value_t = SearchParams::default().max_evals)]
    pub max_evals: usize,
    #[arg(long, default_value_t = SearchParams::default().population)]
    pub population: usize,
    #[arg(long, default_value_t = SearchParams::default().generations)]
    pub generations: usize,
    /// Fraction of the population kept as parents.
    #[arg(long, default_value_t = SearchParams::default().parents)]
    pub parents: f64,
    /// Per-position mutation probability.
    #[arg(long, default_value_t = SearchParams::default().mutation)]
    pub mutation: f64,
    /// Probability that a child comes from crossover.
    #[arg(long, default_value_t = SearchParams::default().crossover)]
    pub crossover: f64,
    /// Images each generation is screened on (0: all); points near the front are finished on all.
    #[arg(long, default_value_t = SearchParams::default().screen_images)]
    pub screen_images: usize,
    /// Share of the evaluation budget kept for the local search around the front.
    #[arg(long, default_value_t = SearchParams::default().polish)]
    pub polish: f64,
    #[arg(long, default_value_t = SearchParams::default().seed)]
    pub seed: u64,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 50)]
    pub eval_batch: usize,
    /// Latency timing: warm-up rounds.
    #[arg(long, default_value_t = TimingOptions::default().warmup)]
    pub warmup: usize,
    /// Latency timing: timed rounds (median kept).
    #[arg(long, default_value_t = TimingOptions::default().runs)]
    pub runs: usize,
    /// Latency timing: runs of a plan in a row per round, the last one timed.
    #[arg(long, default_value_t = TimingOptions::default().back_to_back)]
    pub back_to_back: usize,
    /// Whole subnets timed to check the latency prediction.
    #[arg(long, default_value_t = 12)]
    pub check_sample: usize,
}

fn load_data(spec: &str, what: &str, bundle: &Bundle, item_shape: &[usize]) -> Result<Dataset> {
    let src: DataSource = spec.parse().map_err(|e| anyhow!("{what} `{spec}`: {e}"))?;
    let pp = &bundle.manifest.input.preprocess;
    let pre = Preprocess {
        mean: pp.mean.clone(),
        std: pp.std.clone(),
    };
    src.load(item_shape, &pre, &bundle.manifest.input.labels)
        .map_err(|e| anyhow!("{what}: {e}"))
}

/// A bundle's calibration sample (`calibration/*.npy`, already preprocessed).
fn calibration(bundle: &Bundle) -> Result<Option<Dataset>> {
    let Some((name, bytes)) = bundle
        .files
        .iter()
        .find(|(n, _)| n.starts_with("calibration/") && n.ends_with(".npy"))
    else {
        return Ok(None);
    };
    let tmp = std::env::temp_dir().join(format!("adaptived-calib-{}.npy", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    let d = Dataset::from_npy(&tmp, None);
    let _ = std::fs::remove_file(&tmp);
    Ok(Some(d.map_err(|e| {
        anyhow!("{}: {name}: {e}", bundle.path.display())
    })?))
}

/// Run `adaptived search`.
pub fn run(args: &SearchArgs, state_dir: Option<PathBuf>) -> Result<()> {
    let mut args = args.clone();
    args.state_dir = state_dir.or(args.state_dir);
    let args = &args;
    let t0 = Instant::now();
    if args.pubkey.is_empty() && !args.allow_unsigned {
        bail!("give the trusted public key with --pubkey KEY (or --allow-unsigned for an unsigned development bundle)");
    }
    if let Some(f) = args.budget_frac {
        if !(f.is_finite() && f > 0.0) {
            bail!(
                "--budget-frac {f}: expected a positive fraction of the oracle's latency, e.g. 0.6"
            );
        }
    }
    if let Some(ms) = args.budget_ms {
        if !(ms.is_finite() && ms > 0.0) {
            bail!("--budget-ms {ms}: expected a positive number of milliseconds");
        }
    }
    let keys = args
        .pubkey
        .iter()
        .map(|p| read_public_key(p).map_err(|e| anyhow!("--pubkey {}: {e}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let bundle = Bundle::open(&args.bundle, &keys, args.allow_unsigned)?;
    let net_shape: Vec<usize> = bundle
        .manifest
        .input
        .shape
        .iter()
        .skip(1)
        .map(|d| d.fixed())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            anyhow!(
                "{}: input.shape has a non-fixed item dim",
                args.bundle.display()
            )
        })?;
    let data = match &args.data {
        Some(d) => load_data(d, "--data", &bundle, &net_shape)?,
        None => calibration(&bundle)?.ok_or_else(|| {
            anyhow!(
                "--data is required: {} carries no calibration sample",
                args.bundle.display()
            )
        })?,
    };
    let holdout = args
        .holdout
        .as_deref()
        .map(|h| load_data(h, "--holdout", &bundle, &net_shape))
        .transpose()?;
    let options = Options {
        threads: args.threads.unwrap_or(Options::default().threads).max(1),
        timing: TimingOptions {
            warmup: args.warmup,
            runs: args.runs.max(1),
            back_to_back: args.back_to_back.max(1),
        },
        check_sample: args.check_sample.max(1),
        eval_batch: args.eval_batch.max(1),
        params: SearchParams {
            strategy: args.strategy,
            population: args.population.max(2),
            parents: args.parents.clamp(0.01, 1.0),
            mutation: args.mutation.clamp(0.0, 1.0),
            crossover: args.crossover.clamp(0.0, 1.0),
            generations: args.generations.max(1),
            max_evals: args.max_evals.max(2),
            screen_images: args.screen_images,
            polish: args.polish.clamp(0.0, 0.9),
            ..SearchParams::default()
        },
        kinds: match args.space {
            Space::All => None,
            Space::Merge => Some(vec![BranchKind::Merge]),
            Space::Shrink => Some(vec![BranchKind::Shrink]),
        },
        state_dir: args.state_dir.clone(),
    };
    let mut options = options;
    options.params.seed = args.seed;
    let mut s = pipeline::search(&bundle, &data, &options)?;
    if s.from_cache {
        println!(
            "search result loaded from {} in {:.3} s (searched in {:.1} s when stored)",
            s.cache_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            s.cache_load_seconds,
            s.cached.search_seconds
        );
    } else if let Some(why) = &s.cache_miss {
        log::info!("no usable cached result ({why}); searched");
    }
    let c = s.cached.clone();
    println!(
        "latency table: stem {:.3} ms, head {:.3} ms, {} branches ({} warm-up + {} timed rounds of {} back-to-back runs, median)",
        c.table.stem_ms,
        c.table.head_ms,
        c.table.branch_ms.len(),
        c.table.timing.warmup,
        c.table.timing.runs,
        c.table.timing.back_to_back
    );
    println!(
        "latency prediction vs {} whole subnets: materialised mean error {:.1}%, max {:.1}%; chained mean {:.1}%, max {:.1}%",
        c.check.rows.len(),
        c.check.mean_error_pct,
        c.check.max_error_pct,
        c.check.chained_mean_error_pct,
        c.check.chained_max_error_pct
    );
    println!(
        "{}: {} of {} subnets evaluated; front of {}; search {:.1} s; the prefix tree ran {} block plans where one-subnet-at-a-time would run {} ({:.2}x fewer), cut-tensor memory <= {:.1} MiB",
        c.outcome.method,
        c.outcome.evaluations,
        s.net.count_subnets(),
        c.outcome.front.len(),
        c.search_seconds,
        c.outcome.tree_runs,
        c.outcome.naive_runs,
        c.outcome.naive_runs as f64 / c.outcome.tree_runs.max(1) as f64,
        c.cache_bound_bytes as f64 / (1 << 20) as f64
    );
    let oracle_id = s.net.oracle();
    let oracle_hold = match &holdout {
        Some(h) => Some(s.holdout(h, std::slice::from_ref(&oracle_id))?[0]),
        None => None,
    };
    let oracle = OracleJson {
        subnet: oracle_id.to_string(),
        predicted_ms: c.table.predict(&oracle_id),
        measured_ms: c.oracle_ms,
        accuracy: c.oracle_accuracy,
        holdout_accuracy: oracle_hold,
    };
    let budget_ms = s.budget_ms(args.budget_ms, args.budget_frac);
    let chosen = s.choose(budget_ms, holdout.as_ref())?;
    let given_frac = if args.budget_ms.is_some() {
        None
    } else {
        Some(args.budget_frac.unwrap_or(1.0))
    };
    let mut rows = vec![ChosenJson::of(&chosen, given_frac)];
    for &f in &args.table_fracs {
        if given_frac.is_some_and(|g| (g - f).abs() < 1e-9) {
            continue;
        }
        let ch = s.choose(f * c.oracle_ms, holdout.as_ref())?;
        rows.push(ChosenJson::of(&ch, Some(f)));
    }
    rows[1..].sort_by(|a, b| a.budget_ms.total_cmp(&b.budget_ms));
    s.save()?;
    print!("{}", report::table_text(&rows, &oracle));
    if chosen.choice.over_budget {
        eprintln!(
            "adaptived: warning: the budget {:.3} ms is below the fastest subnet found ({:.3} ms predicted): chose the fastest subnet `{}`, which does not fit",
            budget_ms, chosen.choice.point.predicted_ms, chosen.choice.point.subnet
        );
    }
    let chosen_json = rows[0].clone();
    if let Some(path) = &args.plot {
        report::write_svg(
            path,
            &c.outcome.points,
            &c.outcome.front,
            (oracle.predicted_ms, oracle.accuracy),
            (chosen_json.predicted_ms, chosen_json.accuracy),
            budget_ms,
            data.len() as u64,
            &format!(
                "{} v{}: {} subnets evaluated",
                bundle.manifest.model.name, bundle.manifest.model.version, c.outcome.evaluations
            ),
        )?;
        println!("chart: {}", path.display());
    }
    if let Some(path) = &args.json {
        let rep = report::report_json(
            &s,
            oracle,
            chosen_json,
            rows,
            serde_json::json!({
                "search": args.data.clone().unwrap_or_else(|| "calibration".into()),
                "search_images": data.len(),
                "labelled": data.labels.is_some(),
                "holdout": args.holdout,
                "holdout_images": holdout.as_ref().map(|h| h.len()),
            }),
            serde_json::json!({
                "path": args.bundle.display().to_string(),
                "sha256": bundle.sha256,
                "name": bundle.manifest.model.name,
                "version": bundle.manifest.model.version,
            }),
        );
        let text = serde_json::to_string_pretty(&rep)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("json: {}", path.display());
    }
    log::debug!(
        "adaptived search done in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
