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

use adaptivenet_daemon::config::{ConfigSource, Listen};
use adaptivenet_daemon::server::limits::Limits;
use adaptivenet_daemon::server::pool::WorkerPool;
use adaptivenet_daemon::server::{router, AppState, Bound};
use adaptivenet_daemon::service::{read_keys, Outcome, Service};
use adaptivenet_daemon::shared::Shared;
use adaptivenet_daemon::{demo, grpc, systemd, watcher};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};

mod cmd_search;

#[derive(Parser)]
#[command(
    name = "adaptived",
    version,
    about = "Serve the best subnet of a supernet bundle for this device"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Serve the demo bundle with the demo validation data on 127.0.0.1:8080
    /// (takes no other option than --listen).
    #[arg(long)]
    demo: bool,
}

/// Where the daemon's config and folders come from (given before or after
/// `serve` / `check-config`; after wins).
#[derive(clap::Args, Clone, Default)]
struct DaemonArgs {
    /// The config file (default /etc/adaptivenet/config.yaml; absent means defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address: HOST:PORT or unix:/path (overrides `listen`).
    #[arg(long)]
    listen: Option<String>,
    /// The watched bundle directory (overrides `bundle_dir`).
    #[arg(long)]
    bundle_dir: Option<PathBuf>,
    /// The state directory (overrides `state_dir`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

impl DaemonArgs {
    /// These, with `later`'s (the subcommand's) where given.
    fn with(&self, later: &DaemonArgs) -> DaemonArgs {
        DaemonArgs {
            config: later.config.clone().or_else(|| self.config.clone()),
            listen: later.listen.clone().or_else(|| self.listen.clone()),
            bundle_dir: later.bundle_dir.clone().or_else(|| self.bundle_dir.clone()),
            state_dir: later.state_dir.clone().or_else(|| self.state_dir.clone()),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon (the default).
    Serve(DaemonArgs),
    /// Validate the config and print the effective config as YAML.
    CheckConfig(DaemonArgs),
    /// Search a bundle's best subnets for this device on local data.
    Search(Box<cmd_search::SearchArgs>),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Cmd::CheckConfig(a)) => check_config(&cli.daemon.with(a)),
        Some(Cmd::Search(args)) => cmd_search::run(args, cli.daemon.state_dir.clone()),
        Some(Cmd::Serve(a)) => serve(&cli.daemon.with(a), cli.demo),
        None => serve(&cli.daemon, cli.demo),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("adaptived: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line.
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

/// The config source the command line names.
fn source(cli: &DaemonArgs) -> ConfigSource {
    ConfigSource {
        file: cli.config.clone(),
        listen: cli.listen.clone(),
        bundle_dir: cli.bundle_dir.clone(),
        state_dir: cli.state_dir.clone(),
    }
}

fn check_config(cli: &DaemonArgs) -> Result<()> {
    let c = source(cli).load()?;
    read_keys(&c)?;
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

fn serve(cli: &DaemonArgs, demo: bool) -> Result<()> {
    let (config, demo) = if demo {
        if cli.config.is_some() || cli.bundle_dir.is_some() || cli.state_dir.is_some() {
            bail!("--demo sets its own config and folders; only --listen may be given with it");
        }
        let listen = cli
            .listen
            .as_deref()
            .map(|l| l.parse::<Listen>().map_err(|e| anyhow!("--listen: {e}")))
            .transpose()?;
        let d = demo::prepare(listen).context("demo")?;
        (d.config.clone(), Some(d))
    } else {
        (source(cli).load()?, None)
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
    let service = Service::start(config.clone(), shared.clone())?;
    let reload_source = demo.is_none().then(|| source(cli));
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
        let (svc, stop, sh) = (service.clone(), stop.clone(), shared.clone());
        adaptivenet_daemon::supervise::spawn(
            "watcher",
            move || watcher::run(svc.clone(), stop.clone()),
            move |m| sh.thread_panicked("watcher", m),
        )?;
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
        // One request-bytes budget for HTTP and gRPC; one shutdown for both.
        let budget = Limits::new(
            config.server.max_inflight_mb,
            std::time::Duration::from_secs_f64(config.server.body_timeout_s),
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let grpc = match config.grpc_listen {
            None => None,
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("grpc_listen: cannot listen on {addr}"))?;
                log::info!("gRPC listening on {}", l.local_addr()?);
                let (state, budget, server) =
                    (state.clone(), budget.clone(), config.server.clone());
                let stopped = stopped();
                Some(tokio::spawn(async move {
                    grpc::serve(l, state, budget, &server, stopped).await
                }))
            }
        };
        tokio::spawn(async move {
            systemd::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        tokio::spawn(systemd::notify_ready(
            shared.clone(),
            config.bundle_dir.clone(),
        ));
        tokio::spawn(systemd::reload_on_sighup(
            reload_source,
            config.clone(),
            shared.clone(),
        ));
        tokio::spawn(adaptivenet_daemon::server::beat(shared.clone()));
        tokio::spawn(systemd::watchdog(shared.clone()));
        if let (Some(d), Some(active)) = (&demo, shared.current()) {
            demo::print_help(d, &url, &active);
        }
        bound
            .serve(router(state), &config.server, budget, stopped())
            .await
            .context("serving")?;
        if let Some(g) = grpc {
            g.await
                .context("the gRPC server task")?
                .context("serving gRPC")?;
        }
        log::info!("stopped");
        Ok::<(), anyhow::Error>(())
    })?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(dir) = demo_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
