//! `adaptived search`: search a bundle's best subnets for this device on
//! local data and print the budget table (optionally JSON and an SVG chart).

use std::path::PathBuf;

use adaptivenet_onnx::bundle::{read_public_key, BranchKind, Bundle};
use adaptivenet_onnx::dataset::Dataset;
use adaptivenet_onnx::datasource::DataSource;
use anyhow::{anyhow, bail, Context, Result};

use adaptivenet_search::report::{self, ChosenJson, OracleJson};
use adaptivenet_search::{Options, SearchParams, Searched, StrategyKind, TimingOptions};

/// Which strategy (`--strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// Exhaustive when the space fits `--max-evals`, else evolutionary.
    Auto,
    Exhaustive,
    Evolutionary,
}

impl From<Strategy> for StrategyKind {
    fn from(s: Strategy) -> StrategyKind {
        match s {
            Strategy::Auto => StrategyKind::Auto,
            Strategy::Exhaustive => StrategyKind::Exhaustive,
            Strategy::Evolutionary => StrategyKind::Evolutionary,
        }
    }
}

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
    /// Cache results in this state directory's `search/` (keyed by bundle
    /// sha256 and device fingerprint); also accepted before `search`.
    #[arg(long)]
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
    pub strategy: Strategy,
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
    /// Evaluation batch size (1: tract's lazy im2col, the least CPU).
    #[arg(long, default_value_t = Options::default().eval_batch)]
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
    src.load(
        item_shape,
        &bundle.manifest.input.layout,
        &bundle.manifest.input.preprocess,
        &bundle.manifest.input.labels,
    )
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
    args.state_dir = args.state_dir.or(state_dir);
    let args = &args;
    check_args(args)?;
    let bundle = open_bundle(args)?;
    let net_shape = bundle.manifest.item_shape().ok_or_else(|| {
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
    let mut s = adaptivenet_search::search(&bundle, &data, &options(args))?;
    print_search(&s);
    let oracle_id = s.net.oracle();
    let oracle_hold = match &holdout {
        Some(h) => Some(s.holdout(h, std::slice::from_ref(&oracle_id))?[0]),
        None => None,
    };
    let c = s.cached.clone();
    let oracle = OracleJson {
        subnet: oracle_id.to_string(),
        predicted_ms: c
            .table
            .as_ref()
            .map(|t| t.predict(&oracle_id))
            .unwrap_or(c.oracle_ms),
        measured_ms: c.oracle_ms,
        accuracy: c.oracle_accuracy,
        holdout_accuracy: oracle_hold,
    };
    let budget_ms = s.budget_ms(args.budget_ms, args.budget_frac);
    let rows = budget_rows(&mut s, args, budget_ms, holdout.as_ref())?;
    s.save()?;
    print!("{}", report::table_text(&rows, &oracle));
    let chosen = &rows[0];
    if chosen.over_budget {
        eprintln!(
            "adaptived: warning: the budget {budget_ms:.3} ms is below the fastest subnet found ({:.3} ms predicted): chose the fastest subnet `{}`, which does not fit",
            chosen.predicted_ms, chosen.subnet
        );
    }
    if let Some(path) = &args.plot {
        write_chart(path, &c, &oracle, chosen, budget_ms, data.len(), &bundle)?;
    }
    if let Some(path) = &args.json {
        let chosen = chosen.clone();
        let rep = report::report_json(
            &s,
            oracle,
            chosen,
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
    Ok(())
}

/// Refuse arguments that cannot work before any work is done.
fn check_args(args: &SearchArgs) -> Result<()> {
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
    Ok(())
}

/// Open and verify the bundle against the given keys.
fn open_bundle(args: &SearchArgs) -> Result<Bundle> {
    let keys = args
        .pubkey
        .iter()
        .map(|p| read_public_key(p).with_context(|| format!("--pubkey {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    Ok(Bundle::open(&args.bundle, &keys, args.allow_unsigned)?)
}

/// The search options the arguments ask for.
fn options(args: &SearchArgs) -> Options {
    Options {
        threads: args.threads.unwrap_or(Options::default().threads).max(1),
        timing: TimingOptions {
            warmup: args.warmup,
            runs: args.runs.max(1),
            back_to_back: args.back_to_back.max(1),
        },
        check_sample: args.check_sample.max(1),
        eval_batch: args.eval_batch.max(1),
        params: SearchParams {
            strategy: args.strategy.into(),
            population: args.population.max(2),
            parents: args.parents.clamp(0.01, 1.0),
            mutation: args.mutation.clamp(0.0, 1.0),
            crossover: args.crossover.clamp(0.0, 1.0),
            generations: args.generations.max(1),
            max_evals: args.max_evals.max(2),
            screen_images: args.screen_images,
            polish: args.polish.clamp(0.0, 0.9),
            seed: args.seed,
            ..SearchParams::default()
        },
        kinds: match args.space {
            Space::All => None,
            Space::Merge => Some(vec![BranchKind::Merge]),
            Space::Shrink => Some(vec![BranchKind::Shrink]),
        },
        state_dir: args.state_dir.clone(),
        progress: Some(adaptivenet_daemon::progress::terminal_hook()),
    }
}

/// What the search measured and how it was found (or loaded).
fn print_search(s: &Searched) {
    let c = &s.cached;
    if s.from_cache {
        println!(
            "search result loaded from {} in {:.3} s (searched in {:.1} s when stored)",
            s.cache_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            s.cache_load_seconds,
            c.search_seconds
        );
    } else if let Some(why) = &s.cache_miss {
        log::info!("no usable cached result ({why}); searched");
    }
    if let (Some(t), Some(k)) = (&c.table, &c.check) {
        println!(
            "latency table: stem {:.3} ms, head {:.3} ms, {} branches ({} warm-up + {} timed rounds of {} back-to-back runs, median)",
            t.stem_ms,
            t.head_ms,
            t.branch_ms.len(),
            t.timing.warmup,
            t.timing.runs,
            t.timing.back_to_back
        );
        println!(
            "latency prediction vs {} whole subnets: materialised mean error {:.1}%, max {:.1}%; chained mean {:.1}%, max {:.1}%",
            k.rows.len(),
            k.mean_error_pct,
            k.max_error_pct,
            k.chained_mean_error_pct,
            k.chained_max_error_pct
        );
    }
    println!(
        "{}: {} of {} subnets evaluated; front of {}; search {:.1} s; the prefix tree ran {} block plans where one-subnet-at-a-time would run {} ({:.2}x fewer), cut-tensor memory <= {:.1} MiB",
        c.method(),
        c.outcome.evaluations,
        s.net.count_subnets(),
        c.front().len(),
        c.search_seconds,
        c.outcome.tree_runs,
        c.outcome.naive_runs,
        c.outcome.naive_runs as f64 / c.outcome.tree_runs.max(1) as f64,
        c.cache_bound_bytes as f64 / (1 << 20) as f64
    );
    let ph = &c.outcome.phases;
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} s"));
    println!(
        "phases: latency table {}, prediction check {}, screening {:.1} s, polish {:.1} s, finishing {:.1} s",
        secs(c.table.as_ref().map(|t| t.seconds)),
        secs(c.check.as_ref().map(|k| k.seconds)),
        ph.screening,
        ph.polish,
        ph.finishing
    );
}

/// The choice at the asked budget first, then at each `--table` fraction.
fn budget_rows(
    s: &mut Searched,
    args: &SearchArgs,
    budget_ms: f64,
    holdout: Option<&Dataset>,
) -> Result<Vec<ChosenJson>> {
    let chosen = s.choose(budget_ms, holdout)?;
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
        let ch = s.choose(f * s.cached.oracle_ms, holdout)?;
        rows.push(ChosenJson::of(&ch, Some(f)));
    }
    rows[1..].sort_by(|a, b| a.budget_ms.total_cmp(&b.budget_ms));
    Ok(rows)
}

#[cfg(feature = "chart")]
fn write_chart(
    path: &std::path::Path,
    c: &adaptivenet_search::SearchResult,
    oracle: &OracleJson,
    chosen: &ChosenJson,
    budget_ms: f64,
    images: usize,
    bundle: &Bundle,
) -> Result<()> {
    report::write_svg(
        path,
        &c.outcome.points,
        c.front(),
        (oracle.predicted_ms, oracle.accuracy),
        (chosen.predicted_ms, chosen.accuracy),
        budget_ms,
        images as u64,
        &format!(
            "{} v{}: {} subnets evaluated",
            bundle.manifest.model.name, bundle.manifest.model.version, c.outcome.evaluations
        ),
    )?;
    println!("chart: {}", path.display());
    Ok(())
}

#[cfg(not(feature = "chart"))]
fn write_chart(
    path: &std::path::Path,
    _: &adaptivenet_search::SearchResult,
    _: &OracleJson,
    _: &ChosenJson,
    _: f64,
    _: usize,
    _: &Bundle,
) -> Result<()> {
    bail!(
        "--plot {}: this build has no chart support (built without the `chart` feature)",
        path.display()
    )
}
