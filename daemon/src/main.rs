//! `adaptived`: the command line of the on-device daemon.
//!
//! ```text
//! adaptived [serve] [--config F] [--listen ADDR] [--bundle-dir D] [--state-dir D]
//! adaptived check-config [--config F] [...overrides]
//! adaptived --demo [--listen ADDR]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use adaptivenet_daemon::config::{Config, Listen, DEFAULT_CONFIG_PATH};
use adaptivenet_daemon::server::pool::WorkerPool;
use adaptivenet_daemon::server::{router, AppState, Bound};
use adaptivenet_daemon::service::{read_keys, Outcome, Service};
use adaptivenet_daemon::shared::Shared;
use adaptivenet_daemon::{demo, search_api, watcher};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "adaptived",
    version,
    about = "Serve the best subnet of a supernet bundle for this device"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// The config file (default /etc/adaptivenet/config.yaml; absent means defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Listen address: HOST:PORT or unix:/path (overrides `listen`).
    #[arg(long, global = true)]
    listen: Option<String>,
    /// The watched bundle directory (overrides `bundle_dir`).
    #[arg(long, global = true)]
    bundle_dir: Option<PathBuf>,
    /// The state directory (overrides `state_dir`).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Serve the demo bundle with the demo validation data on 127.0.0.1:8080.
    #[arg(long)]
    demo: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (the default).
    Serve,
    /// Validate the config and print the effective config as YAML.
    CheckConfig,
    /// Search a bundle's best subnets for this device on local data.
    Search(adaptivenet_daemon::search::cli::SearchArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::CheckConfig) => check_config(&cli),
        Some(Cmd::Search(ref args)) => {
            adaptivenet_daemon::search::cli::run(args, cli.state_dir.clone())
        }
        Some(Cmd::Serve) | None => serve(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("adaptived: error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// Where the config comes from: the file and the command-line overrides
/// (kept to re-read it on SIGHUP).
#[derive(Clone)]
struct Source {
    config: Option<PathBuf>,
    listen: Option<String>,
    bundle_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

impl Source {
    fn of(cli: &Cli) -> Source {
        Source {
            config: cli.config.clone(),
            listen: cli.listen.clone(),
            bundle_dir: cli.bundle_dir.clone(),
            state_dir: cli.state_dir.clone(),
        }
    }
}

/// The config file with the command-line overrides applied, validated.
fn effective_config(cli: &Cli) -> Result<Config> {
    load_config(&Source::of(cli))
}

fn load_config(src: &Source) -> Result<Config> {
    let (path, allow_missing) = match &src.config {
        Some(p) => (p.clone(), false),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), true),
    };
    let loaded = Config::load(&path, allow_missing)?;
    if loaded.text.is_none() {
        log::info!("{}: not found; using the defaults", path.display());
    }
    let mut c = loaded.config;
    apply_overrides(src, &mut c)?;
    c.validate()
        .map_err(|(k, m)| anyhow!("`{k}` (after command-line overrides): {m}"))?;
    Ok(c)
}

fn apply_overrides(cli: &Source, c: &mut Config) -> Result<()> {
    if let Some(l) = &cli.listen {
        c.listen = l.parse::<Listen>().map_err(|e| anyhow!("--listen: {e}"))?;
    }
    if let Some(d) = &cli.bundle_dir {
        c.bundle_dir = d.clone();
    }
    if let Some(d) = &cli.state_dir {
        c.state_dir = d.clone();
    }
    Ok(())
}

fn check_config(cli: &Cli) -> Result<()> {
    let c = effective_config(cli)?;
    read_keys(&c).map_err(|e| anyhow!(e))?;
    if let Some(v) = &c.validation_data {
        for (key, p) in [
            ("validation_data.images", Some(&v.images)),
            ("validation_data.labels", v.labels.as_ref()),
        ] {
            if let Some(p) = p {
                if !p.is_file() {
                    bail!("`{key}`: {} is not a readable file", p.display());
                }
            }
        }
    }
    print!("{}", c.to_yaml());
    Ok(())
}

fn serve(cli: &Cli) -> Result<()> {
    let (config, demo) = if cli.demo {
        if cli.config.is_some() || cli.bundle_dir.is_some() || cli.state_dir.is_some() {
            bail!("--demo sets its own config and folders; only --listen may be given with it");
        }
        let listen = cli
            .listen
            .as_deref()
            .map(|l| l.parse::<Listen>().map_err(|e| anyhow!("--listen: {e}")))
            .transpose()?;
        let d = demo::prepare(listen).map_err(|e| anyhow!("demo: {e}"))?;
        (d.config.clone(), Some(d))
    } else {
        (effective_config(cli)?, None)
    };
    log::info!(
        "adaptived {}: bundle_dir {}, state_dir {}, {} worker(s), queue {}",
        env!("CARGO_PKG_VERSION"),
        config.bundle_dir.display(),
        config.state_dir.display(),
        config.worker_threads,
        config.queue_depth
    );
    let shared = Arc::new(Shared::default());
    let service = Service::start(config.clone(), shared.clone(), search_api::default_search())
        .map_err(|e| anyhow!(e))?;
    let source = (!cli.demo).then(|| Source::of(cli));
    // The last good bundle serves at once (before the listener is up).
    service.restore();
    if let Some(d) = &demo {
        match service.consider(&d.bundle) {
            Outcome::Accepted { .. } | Outcome::AlreadyInstalled => {}
            other => bail!(
                "demo: the demo bundle {} was not accepted: {other:?}",
                d.bundle.display()
            ),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (svc, stop) = (service.clone(), stop.clone());
        std::thread::Builder::new()
            .name("watcher".into())
            .spawn(move || watcher::run(svc, stop))?;
    }
    adaptivenet_daemon::adapt::spawn(shared.clone(), Arc::new(config.clone()))
        .context("starting the adaptation loop")?;
    let pool = Arc::new(
        WorkerPool::new(config.worker_threads, config.queue_depth)
            .context("starting the worker pool")?,
    );
    let state = AppState {
        shared: shared.clone(),
        pool,
        max_batch: config.max_batch,
        percentile: config.latency_budget.percentile,
    };
    let demo_dir = demo.as_ref().map(|d| d.workdir.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("http")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let bound = Bound::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let url = bound.url();
        log::info!("listening on {url}");
        tokio::spawn(notify_ready(shared.clone(), config.bundle_dir.clone()));
        tokio::spawn(reload_on_sighup(source, config.clone(), shared.clone()));
        tokio::spawn(watchdog(shared.clone()));
        if let Some(d) = &demo {
            print_demo_help(d, &url, &shared);
        }
        bound
            .serve(router(state), shutdown_signal())
            .await
            .context("serving")?;
        log::info!("stopped");
        Ok::<(), anyhow::Error>(())
    })?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(dir) = demo_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn print_demo_help(d: &demo::Demo, url: &str, shared: &Shared) {
    let Some(active) = shared.current() else {
        return;
    };
    let name = active.name().to_string();
    log::info!(
        "demo: serving `{name}` v{}, subnet `{}`",
        active.version(),
        active.engine.subnet
    );
    match demo::write_example_request(d, &active.bundle.manifest.input.name) {
        Ok((req, label)) => {
            println!();
            println!("adaptived demo is up at {url}. Try (the image is a `{label}`):");
            println!();
            println!("  curl -s -X POST {url}/v2/models/{name}/infer -H 'Content-Type: application/json' -d @{}", req.display());
            println!("  curl -s {url}/v2/models/{name}/adaptation");
            println!("  curl -s {url}/metrics");
            println!();
        }
        Err(e) => log::warn!("demo: cannot write the example request: {e}"),
    }
}

/// `READY=1` once a subnet serves (at once after a restart with a stored
/// bundle); until then `STATUS=` says what it waits for.
async fn notify_ready(shared: Arc<Shared>, bundle_dir: PathBuf) {
    use sd_notify::NotifyState;
    if shared.current().is_none() {
        let status = format!(
            "listening; waiting for a bundle in {}",
            bundle_dir.display()
        );
        let _ = sd_notify::notify(false, &[NotifyState::Status(&status)]);
        while shared.current().is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let status = shared
        .current()
        .map(|a| format!("serving {}", a.label()))
        .unwrap_or_default();
    match sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(&status)]) {
        Ok(()) => log::info!("ready: {status}"),
        Err(e) => log::debug!("sd_notify: {e}"),
    }
}

/// SIGHUP: `RELOADING=1` with `MONOTONIC_USEC`, re-read the config, put
/// the reloadable keys in force (`latency_budget`, `policy`, `monitor`,
/// `memory_budget_mb`), then `READY=1`. A bad new config is logged and the
/// old one stays.
async fn reload_on_sighup(source: Option<Source>, mut current: Config, shared: Arc<Shared>) {
    use sd_notify::NotifyState;
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("cannot handle SIGHUP ({e}); config reloads are off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let mut states = vec![NotifyState::Reloading];
        if let Ok(m) = NotifyState::monotonic_usec_now() {
            states.push(m);
        }
        let _ = sd_notify::notify(false, &states);
        let Some(src) = &source else {
            log::info!("SIGHUP: --demo has no config file to re-read");
            let _ = sd_notify::notify(false, &[NotifyState::Ready]);
            continue;
        };
        log::info!("SIGHUP: re-reading the config");
        let status = match load_config(src) {
            Ok(next) => {
                let restart: Vec<&str> = [
                    ("bundle_dir", current.bundle_dir != next.bundle_dir),
                    ("state_dir", current.state_dir != next.state_dir),
                    ("listen", current.listen != next.listen),
                    ("compatible", current.compatible != next.compatible),
                    (
                        "validation_data",
                        current.validation_data != next.validation_data,
                    ),
                    ("trusted_keys", current.trusted_keys != next.trusted_keys),
                    (
                        "allow_unsigned",
                        current.allow_unsigned != next.allow_unsigned,
                    ),
                    (
                        "worker_threads",
                        current.worker_threads != next.worker_threads,
                    ),
                    ("queue_depth", current.queue_depth != next.queue_depth),
                    ("max_batch", current.max_batch != next.max_batch),
                    ("pin_version", current.pin_version != next.pin_version),
                    ("watch", current.watch != next.watch),
                ]
                .into_iter()
                .filter_map(|(k, changed)| changed.then_some(k))
                .collect();
                let mut applied = Vec::new();
                if current.latency_budget != next.latency_budget {
                    applied.push(format!(
                        "latency_budget {:?} -> {:?}",
                        current.latency_budget.budget(),
                        next.latency_budget.budget()
                    ));
                }
                for (k, changed) in [
                    ("policy", current.policy != next.policy),
                    ("monitor", current.monitor != next.monitor),
                    (
                        "memory_budget_mb",
                        current.memory_budget_mb != next.memory_budget_mb,
                    ),
                ] {
                    if changed {
                        applied.push(k.to_string());
                    }
                }
                let mut what = if applied.is_empty() {
                    "config re-read; nothing reloadable changed".to_string()
                } else {
                    format!("config reloaded: {}", applied.join("; "))
                };
                if !restart.is_empty() {
                    log::warn!(
                        "SIGHUP: {} changed; that takes a restart (kept as before)",
                        restart.join(", ")
                    );
                    what.push_str(&format!(
                        "; needs a restart (not applied): {}",
                        restart.join(", ")
                    ));
                }
                // Keys that need a restart keep their running values.
                let kept = Config {
                    latency_budget: next.latency_budget.clone(),
                    policy: next.policy.clone(),
                    monitor: next.monitor.clone(),
                    memory_budget_mb: next.memory_budget_mb,
                    ..current.clone()
                };
                current = kept.clone();
                shared.adapt.set_config(Arc::new(kept));
                shared.adapt.reloaded(Ok(what.clone()));
                what
            }
            Err(e) => {
                let msg = format!("{e:#}").replace('\n', " ");
                shared.adapt.reloaded(Err(msg.clone()));
                format!("config reload failed (old config kept): {msg}")
            }
        };
        let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(&status)]);
    }
}

/// `WATCHDOG=1` every half `WATCHDOG_USEC` while the adaptation loop is
/// alive (its heartbeat is recent); a wedged loop lets systemd restart us.
async fn watchdog(shared: Arc<Shared>) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = std::time::Duration::from_micros(usec / 2);
    log::info!(
        "systemd watchdog on: pinging every {:.1} s",
        period.as_secs_f64()
    );
    loop {
        let beat = shared
            .adapt
            .heartbeat_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let tick_ms = shared
            .adapt
            .config()
            .map(|c| (c.policy.check_interval_s.min(c.monitor.interval_s) * 1000.0) as u64)
            .unwrap_or(1000);
        let age = adaptivenet_daemon::state::unix_ms().saturating_sub(beat);
        if beat == 0 || age <= (3 * tick_ms).max(usec / 1000) + 60_000 {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else {
            log::error!("the adaptation loop has not run for {age} ms; not pinging the watchdog");
        }
        tokio::time::sleep(period).await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("cannot handle SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: shutting down"),
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}
