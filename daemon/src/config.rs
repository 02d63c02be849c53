//! The daemon's configuration: one YAML file (`--config`, default
//! `/etc/adaptivenet/config.yaml`). Every key has a default, so an absent file
//! means "all defaults". Unknown keys and bad values are errors that name the
//! key and its line. `adaptived check-config` prints the effective config.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/adaptivenet/config.yaml";

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The watched drop directory for new bundles.
    pub bundle_dir: PathBuf,
    /// Where the active bundle and search results are kept across restarts.
    pub state_dir: PathBuf,
    /// `HOST:PORT` or `unix:/path/to/socket`.
    pub listen: Listen,
    /// `HOST:PORT` of the KServe v2 gRPC endpoint; unset: no gRPC.
    pub grpc_listen: Option<SocketAddr>,
    /// The device class; a bundle whose `compatible` differs is rejected.
    pub compatible: String,
    pub latency_budget: LatencyBudget,
    /// Local labelled (or unlabelled) data for measuring subnet accuracy.
    pub validation_data: Option<ValidationData>,
    /// Minisign public key files; a bundle must be signed by one of them.
    pub trusted_keys: Vec<PathBuf>,
    /// Accept bundles without `manifest.sig` (development only).
    pub allow_unsigned: bool,
    /// Inference worker threads (each runs one request at a time).
    pub worker_threads: usize,
    /// Requests that may wait for a worker; past this the answer is 503.
    pub queue_depth: usize,
    /// Largest batch accepted in one infer request.
    pub max_batch: usize,
    pub policy: Policy,
    /// Memory budget for resident branch plans, in MiB.
    pub memory_budget_mb: u64,
    /// Serve exactly this bundle version (allows a downgrade to it).
    pub pin_version: Option<u64>,
    /// How long a long-lived thread (watcher, adaptation, HTTP) may be
    /// silent past three of its periods before the systemd watchdog stops
    /// being pinged (a bundle check or a re-timing legitimately takes a
    /// while on a slow board); the watchdog's own `WatchdogSec` adds to it.
    pub watchdog_grace_s: f64,
    pub watch: Watch,
    pub monitor: Monitor,
    pub intake: Intake,
    pub server: Server,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bundle_dir: PathBuf::from("/var/lib/adaptivenet/bundles"),
            state_dir: PathBuf::from("/var/lib/adaptivenet/state"),
            listen: Listen::default(),
            grpc_listen: None,
            compatible: "generic-cpu".into(),
            latency_budget: LatencyBudget::default(),
            validation_data: None,
            trusted_keys: Vec::new(),
            allow_unsigned: false,
            worker_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            queue_depth: 64,
            max_batch: 64,
            policy: Policy::default(),
            memory_budget_mb: 256,
            pin_version: None,
            watchdog_grace_s: 60.0,
            watch: Watch::default(),
            monitor: Monitor::default(),
            intake: Intake::default(),
            server: Server::default(),
        }
    }
}

/// The listen address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Default for Listen {
    fn default() -> Self {
        Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A `listen` value that is neither `HOST:PORT` nor `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ListenError(String);

impl FromStr for Listen {
    type Err = ListenError;
    fn from_str(s: &str) -> Result<Self, ListenError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ListenError(
                    "`unix:` needs a socket path, for example `unix:/run/adaptived.sock`".into(),
                ));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(Listen::Tcp).map_err(|_| {
            ListenError(format!("`{s}` is not an address; expected HOST:PORT (`127.0.0.1:8080`) or `unix:/path/to/socket`"))
        })
    }
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("listen: {e}")))
    }
}

/// The latency budget: an absolute `ms`, or a `fraction` of the oracle's
/// latency on this device, at a `percentile` of request latencies. Two
/// budgets are equal when they mean the same ([`LatencyBudget::budget`]):
/// no key given equals `fraction: 1.0` (which is how the config prints).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyBudget {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    pub percentile: f64,
}

impl Default for LatencyBudget {
    fn default() -> Self {
        LatencyBudget {
            ms: None,
            fraction: None,
            percentile: 95.0,
        }
    }
}

/// The budget in one of its two forms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Ms(f64),
    Fraction(f64),
}

impl PartialEq for LatencyBudget {
    fn eq(&self, other: &Self) -> bool {
        self.budget() == other.budget() && self.percentile == other.percentile
    }
}

impl LatencyBudget {
    /// The budget; neither key given means the oracle's own latency.
    pub fn budget(&self) -> Budget {
        match (self.ms, self.fraction) {
            (Some(ms), _) => Budget::Ms(ms),
            (None, Some(f)) => Budget::Fraction(f),
            (None, None) => Budget::Fraction(1.0),
        }
    }
    /// The budget in milliseconds, given the oracle's latency.
    pub fn budget_ms(&self, oracle_ms: f64) -> f64 {
        match self.budget() {
            Budget::Ms(ms) => ms,
            Budget::Fraction(f) => f * oracle_ms,
        }
    }
}

/// Local data for accuracy: IDX images (plain or `.gz`) with the bundle's
/// preprocessing applied, or a preprocessed float32 `.npy`; labels optional
/// (without them accuracy is agreement with the oracle path).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationData {
    pub images: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<PathBuf>,
    /// Use at most this many items.
    #[serde(default = "default_validation_limit")]
    pub limit: usize,
}

fn default_validation_limit() -> usize {
    500
}

impl ValidationData {
    /// Is `images` an NPY file (else IDX)?
    pub fn is_npy(&self) -> bool {
        self.images
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
    }
}

/// Adaptation policy (used by the adaptation loop).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Relative margin a measurement must cross before switching (0.1 = 10%).
    pub hysteresis: f64,
    /// Minimum seconds between two switches.
    pub cooldown_s: f64,
    /// Seconds between two checks of the measured latency.
    pub check_interval_s: f64,
    /// Seconds of sustained slack before switching up the front.
    pub upgrade_after_s: f64,
    /// Re-time the front's subnets when the slowdown is not uniform
    /// (CPU clock throttled, fewer online cores) and choose again.
    pub retime_on_throttle: bool,
    /// The clock is throttled when the mean `scaling_cur_freq /
    /// cpuinfo_max_freq` of the online CPUs falls below this.
    pub throttle_freq_ratio: f64,
    /// Latency samples of the served subnet needed before judging it.
    pub min_samples: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            hysteresis: 0.1,
            cooldown_s: 30.0,
            check_interval_s: 5.0,
            upgrade_after_s: 60.0,
            retime_on_throttle: true,
            throttle_freq_ratio: 0.85,
            min_samples: 10,
        }
    }
}

/// How the bundle directory is watched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Watch {
    /// Use filesystem events (inotify); the directory is polled in any case.
    pub events: bool,
    /// Seconds between two scans of the directory.
    pub poll_interval_s: f64,
    /// A file written in place (no rename, no close event seen) counts as
    /// complete once its size and mtime have not changed for this long. A
    /// file that is not a whole bundle yet is re-checked until it has been
    /// unchanged this long, and only then rejected.
    pub settle_s: f64,
    /// Rejected bundles kept in `rejected/` (the oldest beyond are removed).
    pub keep_rejected: usize,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            events: true,
            poll_interval_s: 1.0,
            settle_s: 5.0,
            keep_rejected: 20,
        }
    }
}

/// Limits on what a bundle may make the daemon read or allocate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Intake {
    /// A bundle file larger than this (MiB) is refused from its size,
    /// before it is read.
    pub max_bundle_mb: u64,
    /// The largest tensor a bundle may describe (its input item, a cut at
    /// batch 1), in MiB; unset: a quarter of `memory_budget_mb`.
    pub max_tensor_mb: Option<u64>,
}

impl Default for Intake {
    fn default() -> Self {
        Intake {
            max_bundle_mb: 512,
            max_tensor_mb: None,
        }
    }
}

impl Config {
    /// The largest bundle file accepted, in bytes.
    pub fn max_bundle_bytes(&self) -> u64 {
        self.intake.max_bundle_mb.saturating_mul(1 << 20)
    }

    /// The largest tensor a bundle may describe, in bytes
    /// (`intake.max_tensor_mb`, else a quarter of `memory_budget_mb`).
    pub fn max_tensor_bytes(&self) -> u64 {
        self.intake
            .max_tensor_mb
            .unwrap_or((self.memory_budget_mb / 4).max(1))
            .saturating_mul(1 << 20)
    }
}

/// The resource monitor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Monitor {
    /// Where `/sys` and `/proc` are read from (tests fake a board in a
    /// folder): `ROOT/sys/devices/system/cpu`, `ROOT/sys/class/thermal`,
    /// `ROOT/proc/pressure`.
    pub root: PathBuf,
    /// Seconds between two samples of the environment.
    pub interval_s: f64,
    /// Seconds of recent request latencies the contention factor is taken over.
    pub window_s: f64,
    /// Weight of a new measurement in the smoothed contention factor (0, 1].
    pub smoothing: f64,
    /// With no request for this long, time the served subnet on a zero input
    /// (`probe_runs` runs) to keep the contention factor current; 0 = never.
    pub probe_idle_s: f64,
    pub probe_runs: usize,
    /// A thermal zone at or above this temperature counts as hot (throttling).
    pub hot_c: f64,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            root: PathBuf::from("/"),
            interval_s: 1.0,
            window_s: 3.0,
            smoothing: 0.5,
            probe_idle_s: 5.0,
            probe_runs: 5,
            hot_c: 80.0,
        }
    }
}

/// The HTTP server's limits (`daemon/README.md`, "Server limits"). The
/// defaults suit a board: `systemd/adaptived.service` sizes `LimitNOFILE=`
/// and `MemoryMax=` from them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Connections served at once. A connection past it closes the oldest
    /// connection that has no request in progress; when every connection
    /// has one, it waits (unanswered, in the kernel's backlog) until one
    /// ends or goes idle.
    pub max_connections: usize,
    /// Seconds a request head may take from its first byte to its last.
    pub header_timeout_s: f64,
    /// Seconds a connection may stay open with no request in progress and
    /// no byte of a new one (a fresh connection too).
    pub idle_timeout_s: f64,
    /// Seconds a request body may take to arrive in full; past it the
    /// answer is 408 and the connection is closed.
    pub body_timeout_s: f64,
    /// MiB of request bodies held at once across all connections; a request
    /// whose body would exceed it gets 503.
    pub max_inflight_mb: u64,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            max_connections: 64,
            header_timeout_s: 10.0,
            idle_timeout_s: 30.0,
            body_timeout_s: 30.0,
            max_inflight_mb: 64,
        }
    }
}

impl Server {
    /// Check the values; the error is (key path, message).
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((k.to_string(), m));
        if self.max_connections == 0 || self.max_connections > 65_536 {
            return bad(
                "server.max_connections",
                format!("{} must be between 1 and 65536", self.max_connections),
            );
        }
        for (k, v) in [
            ("server.header_timeout_s", self.header_timeout_s),
            ("server.idle_timeout_s", self.idle_timeout_s),
            ("server.body_timeout_s", self.body_timeout_s),
        ] {
            if !(v.is_finite() && (0.05..=3600.0).contains(&v)) {
                return bad(k, format!("{v} must be between 0.05 and 3600 seconds"));
            }
        }
        if self.max_inflight_mb == 0 || self.max_inflight_mb > 65_536 {
            return bad(
                "server.max_inflight_mb",
                format!("{} must be between 1 and 65536", self.max_inflight_mb),
            );
        }
        Ok(())
    }
}

/// A config that cannot be used; the message names the file, line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The OS error is part of the message and not a `source`, so that an
    // error chain prints it once.
    #[error("{}: cannot read the config: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {}`{key}`: {message}", path.display(), line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        key: String,
        line: Option<usize>,
        message: String,
    },
    #[error("{flag}: {message}")]
    Override { flag: &'static str, message: String },
}

/// Where the config comes from: the file (`None`: the default path, which
/// may be absent) and the command-line overrides. Kept to re-read the same
/// config on SIGHUP.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub listen: Option<String>,
    pub bundle_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

impl ConfigSource {
    /// The file with the overrides applied, validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let (path, allow_missing) = match &self.file {
            Some(p) => (p.clone(), false),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), true),
        };
        let loaded = Config::load(&path, allow_missing)?;
        if loaded.text.is_none() {
            log::info!("{}: not found; using the defaults", path.display());
        }
        let mut c = loaded.config;
        if let Some(l) = &self.listen {
            c.listen = l.parse::<Listen>().map_err(|e| ConfigError::Override {
                flag: "--listen",
                message: e.to_string(),
            })?;
        }
        if let Some(d) = &self.bundle_dir {
            c.bundle_dir = d.clone();
        }
        if let Some(d) = &self.state_dir {
            c.state_dir = d.clone();
        }
        c.validate()
            .map_err(|(key, message)| ConfigError::Override {
                flag: "the command-line overrides",
                message: format!("`{key}`: {message}"),
            })?;
        Ok(c)
    }
}

/// A re-read config sorted into what takes effect now and what needs a
/// restart (those keys keep their running values).
#[derive(Clone, Debug)]
pub struct Reload {
    /// The config in force from now on.
    pub config: Config,
    /// What changed among the reloadable keys.
    pub applied: Vec<String>,
    /// Keys that changed but take a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Reload {
    /// One line for the log and `/adaptation`.
    pub fn summary(&self) -> String {
        let mut what = if self.applied.is_empty() {
            "config re-read; nothing reloadable changed".to_string()
        } else {
            format!("config reloaded: {}", self.applied.join("; "))
        };
        if !self.needs_restart.is_empty() {
            what.push_str(&format!(
                "; needs a restart (not applied): {}",
                self.needs_restart.join(", ")
            ));
        }
        what
    }
}

/// The config file and its text (kept to find the line of a key).
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    /// `None` when the file did not exist (defaults).
    pub text: Option<String>,
}

impl Config {
    /// Read `path`; a missing file is the default config when `allow_missing`.
    pub fn load(path: &Path, allow_missing: bool) -> Result<Loaded, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && allow_missing => None,
            Err(e) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    error: e,
                })
            }
        };
        let config = match &text {
            Some(t) => Config::from_yaml(t, path)?,
            None => Config::default(),
        };
        Ok(Loaded {
            config,
            path: path.to_path_buf(),
            text,
        })
    }

    /// Put `next` in force where it can be without a restart: the latency
    /// budget, the policy, the monitor and the memory budget reload; every
    /// other key keeps its running value until a restart.
    pub fn reload(&self, next: Config) -> Reload {
        let needs_restart: Vec<&'static str> = [
            ("bundle_dir", self.bundle_dir != next.bundle_dir),
            ("state_dir", self.state_dir != next.state_dir),
            ("listen", self.listen != next.listen),
            ("compatible", self.compatible != next.compatible),
            (
                "validation_data",
                self.validation_data != next.validation_data,
            ),
            ("trusted_keys", self.trusted_keys != next.trusted_keys),
            ("grpc_listen", self.grpc_listen != next.grpc_listen),
            ("allow_unsigned", self.allow_unsigned != next.allow_unsigned),
            ("worker_threads", self.worker_threads != next.worker_threads),
            ("queue_depth", self.queue_depth != next.queue_depth),
            ("max_batch", self.max_batch != next.max_batch),
            ("pin_version", self.pin_version != next.pin_version),
            ("watch", self.watch != next.watch),
            ("intake", self.intake != next.intake),
            ("server", self.server != next.server),
        ]
        .into_iter()
        .filter_map(|(k, changed)| changed.then_some(k))
        .collect();
        let mut applied = Vec::new();
        if self.latency_budget != next.latency_budget {
            applied.push(format!(
                "latency_budget {:?} -> {:?}",
                self.latency_budget.budget(),
                next.latency_budget.budget()
            ));
        }
        for (k, changed) in [
            ("policy", self.policy != next.policy),
            ("monitor", self.monitor != next.monitor),
            (
                "memory_budget_mb",
                self.memory_budget_mb != next.memory_budget_mb,
            ),
            (
                "watchdog_grace_s",
                self.watchdog_grace_s != next.watchdog_grace_s,
            ),
        ] {
            if changed {
                applied.push(k.to_string());
            }
        }
        let config = Config {
            latency_budget: next.latency_budget,
            policy: next.policy,
            monitor: next.monitor,
            memory_budget_mb: next.memory_budget_mb,
            watchdog_grace_s: next.watchdog_grace_s,
            ..self.clone()
        };
        Reload {
            config,
            applied,
            needs_restart,
        }
    }

    /// Parse and validate YAML text (`path` names it in errors).
    pub fn from_yaml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        // An empty file (or only comments) is the default config.
        let config: Config = if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            Config::default()
        } else {
            yaml_serde::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: yaml_error(&e),
            })?
        };
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: line_of_key(text, &key),
                key,
                message,
            })?;
        Ok(config)
    }

    /// Check values the types do not; the error is (key path, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((k.to_string(), m));
        if self.bundle_dir.as_os_str().is_empty() {
            return bad("bundle_dir", "must not be empty".into());
        }
        if self.state_dir.as_os_str().is_empty() {
            return bad("state_dir", "must not be empty".into());
        }
        if self.bundle_dir == self.state_dir {
            return bad("state_dir", "must differ from bundle_dir".into());
        }
        if self.compatible.trim().is_empty() {
            return bad(
                "compatible",
                "must name a device class (for example `generic-cpu`)".into(),
            );
        }
        let b = &self.latency_budget;
        if b.ms.is_some() && b.fraction.is_some() {
            return bad(
                "latency_budget.fraction",
                "give either `ms` or `fraction`, not both".into(),
            );
        }
        if let Some(ms) = b.ms {
            if !(ms.is_finite() && ms > 0.0) {
                return bad(
                    "latency_budget.ms",
                    format!("{ms} must be a positive number of milliseconds"),
                );
            }
        }
        if let Some(f) = b.fraction {
            if !(f.is_finite() && f > 0.0 && f <= 1.0) {
                return bad(
                    "latency_budget.fraction",
                    format!("{f} must be in (0, 1] (a fraction of the oracle's latency)"),
                );
            }
        }
        if !(b.percentile > 0.0 && b.percentile <= 100.0) {
            return bad(
                "latency_budget.percentile",
                format!("{} must be in (0, 100]", b.percentile),
            );
        }
        if let Some(v) = &self.validation_data {
            if v.images.as_os_str().is_empty() {
                return bad("validation_data.images", "must not be empty".into());
            }
            if v.limit == 0 {
                return bad("validation_data.limit", "must be at least 1".into());
            }
        }
        for (i, k) in self.trusted_keys.iter().enumerate() {
            if k.as_os_str().is_empty() {
                return bad("trusted_keys", format!("entry {i} is empty"));
            }
        }
        if self.worker_threads == 0 || self.worker_threads > 256 {
            return bad(
                "worker_threads",
                format!("{} must be between 1 and 256", self.worker_threads),
            );
        }
        if self.queue_depth > 100_000 {
            return bad(
                "queue_depth",
                format!("{} is too large (at most 100000)", self.queue_depth),
            );
        }
        if self.max_batch == 0 || self.max_batch > 4096 {
            return bad(
                "max_batch",
                format!("{} must be between 1 and 4096", self.max_batch),
            );
        }
        let p = &self.policy;
        if !(p.hysteresis.is_finite() && (0.0..1.0).contains(&p.hysteresis)) {
            return bad(
                "policy.hysteresis",
                format!("{} must be in [0, 1)", p.hysteresis),
            );
        }
        for (k, v) in [
            ("policy.cooldown_s", p.cooldown_s),
            ("policy.upgrade_after_s", p.upgrade_after_s),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(k, format!("{v} must be a non-negative number of seconds"));
            }
        }
        if !(p.check_interval_s.is_finite() && p.check_interval_s > 0.0) {
            return bad(
                "policy.check_interval_s",
                format!(
                    "{} must be a positive number of seconds",
                    p.check_interval_s
                ),
            );
        }
        if !(p.throttle_freq_ratio.is_finite()
            && p.throttle_freq_ratio > 0.0
            && p.throttle_freq_ratio <= 1.0)
        {
            return bad(
                "policy.throttle_freq_ratio",
                format!("{} must be in (0, 1]", p.throttle_freq_ratio),
            );
        }
        if p.min_samples == 0 || p.min_samples > 10_000 {
            return bad(
                "policy.min_samples",
                format!("{} must be between 1 and 10000", p.min_samples),
            );
        }
        let mo = &self.monitor;
        if mo.root.as_os_str().is_empty() {
            return bad(
                "monitor.root",
                "must not be empty (`/` for the real system)".into(),
            );
        }
        for (k, v, lo, hi) in [
            ("monitor.interval_s", mo.interval_s, 0.05, 3600.0),
            ("monitor.window_s", mo.window_s, 0.1, 3600.0),
        ] {
            if !(v.is_finite() && v >= lo && v <= hi) {
                return bad(k, format!("{v} must be between {lo} and {hi}"));
            }
        }
        if !(mo.smoothing.is_finite() && mo.smoothing > 0.0 && mo.smoothing <= 1.0) {
            return bad(
                "monitor.smoothing",
                format!("{} must be in (0, 1]", mo.smoothing),
            );
        }
        if !(mo.probe_idle_s.is_finite() && mo.probe_idle_s >= 0.0) {
            return bad(
                "monitor.probe_idle_s",
                format!(
                    "{} must be a non-negative number of seconds (0 = no probe)",
                    mo.probe_idle_s
                ),
            );
        }
        if mo.probe_runs == 0 || mo.probe_runs > 1000 {
            return bad(
                "monitor.probe_runs",
                format!("{} must be between 1 and 1000", mo.probe_runs),
            );
        }
        if !(mo.hot_c.is_finite() && mo.hot_c > 0.0 && mo.hot_c < 200.0) {
            return bad(
                "monitor.hot_c",
                format!("{} must be a temperature in (0, 200) °C", mo.hot_c),
            );
        }
        if self.memory_budget_mb == 0 {
            return bad("memory_budget_mb", "must be at least 1".into());
        }
        if !(self.watchdog_grace_s.is_finite()
            && self.watchdog_grace_s >= 1.0
            && self.watchdog_grace_s <= 3600.0)
        {
            return bad(
                "watchdog_grace_s",
                format!("{} must be between 1 and 3600", self.watchdog_grace_s),
            );
        }
        self.server.validate()?;
        let w = &self.watch;
        if !(w.poll_interval_s.is_finite()
            && w.poll_interval_s >= 0.05
            && w.poll_interval_s <= 3600.0)
        {
            return bad(
                "watch.poll_interval_s",
                format!("{} must be between 0.05 and 3600", w.poll_interval_s),
            );
        }
        if !(w.settle_s.is_finite() && w.settle_s >= 0.1 && w.settle_s <= 3600.0) {
            return bad(
                "watch.settle_s",
                format!("{} must be between 0.1 and 3600", w.settle_s),
            );
        }
        if w.keep_rejected == 0 || w.keep_rejected > 100_000 {
            return bad(
                "watch.keep_rejected",
                format!("{} must be between 1 and 100000", w.keep_rejected),
            );
        }
        let i = &self.intake;
        if i.max_bundle_mb == 0 || i.max_bundle_mb > 1 << 20 {
            return bad(
                "intake.max_bundle_mb",
                format!("{} must be between 1 and 1048576", i.max_bundle_mb),
            );
        }
        if i.max_tensor_mb.is_some_and(|m| m == 0 || m > 1 << 20) {
            return bad(
                "intake.max_tensor_mb",
                "must be between 1 and 1048576".into(),
            );
        }
        Ok(())
    }

    /// The config as YAML, with the budget's implicit default spelled out.
    pub fn to_yaml(&self) -> String {
        let mut c = self.clone();
        if c.latency_budget.ms.is_none() && c.latency_budget.fraction.is_none() {
            c.latency_budget.fraction = Some(1.0);
        }
        yaml_serde::to_string(&c).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }
}

/// A YAML error on one line with its location.
fn yaml_error(e: &yaml_serde::Error) -> String {
    let msg = plain_types(&e.to_string().replace('\n', " "));
    match e.location() {
        Some(loc) if !msg.contains("line") => format!("line {}: {msg}", loc.line()),
        _ => msg,
    }
}

/// Rust type names in serde's messages (`expected usize`) in plain words.
fn plain_types(msg: &str) -> String {
    let mut out = msg.to_string();
    for (rust, plain) in [
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected u16", "expected a whole number (0 or more)"),
        ("expected u8", "expected a whole number (0 to 255)"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ] {
        out = out.replace(rust, plain);
    }
    out
}

/// The 1-based line where the key path `a.b.c` is written in `text`: each
/// component is searched after its parent's line, at a deeper indent.
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0;
    let mut min_indent = 0;
    let mut found = None;
    for part in key.split('.') {
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(start) {
            let indent = line.len() - line.trim_start().len();
            let body = line.trim_start().trim_start_matches("- ");
            if found.is_some() && indent < min_indent && !line.trim().is_empty() && i > start {
                break;
            }
            if indent >= min_indent
                && (body.starts_with(&format!("{part}:"))
                    || body.starts_with(&format!("\"{part}\":")))
            {
                hit = Some((i, indent));
                break;
            }
        }
        let (i, indent) = hit?;
        found = Some(i + 1);
        start = i + 1;
        min_indent = indent + 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_applies_the_reloadable_keys_and_keeps_the_rest() {
        let cur = Config::default();
        let mut next = Config::default();
        next.latency_budget.fraction = Some(0.5);
        next.memory_budget_mb = cur.memory_budget_mb + 1;
        next.queue_depth = cur.queue_depth + 7;
        let r = cur.reload(next.clone());
        assert_eq!(r.config.latency_budget, next.latency_budget);
        assert_eq!(r.config.memory_budget_mb, next.memory_budget_mb);
        assert_eq!(r.config.queue_depth, cur.queue_depth, "needs a restart");
        assert_eq!(r.needs_restart, vec!["queue_depth"]);
        assert_eq!(r.applied.len(), 2, "{:?}", r.applied);
        assert!(r
            .summary()
            .contains("needs a restart (not applied): queue_depth"));
        let same = cur.reload(cur.clone());
        assert!(same.applied.is_empty() && same.needs_restart.is_empty());
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(text, Path::new("test.yaml"))
    }

    #[test]
    fn empty_text_is_the_default() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("# nothing\n").unwrap(), Config::default());
        assert_eq!(Config::default().listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn a_full_config_parses_and_round_trips() {
        let text = "bundle_dir: /b\nstate_dir: /s\nlisten: unix:/run/a.sock\nlatency_budget:\n  ms: 4.5\n  percentile: 99\n\
                    validation_data:\n  images: /d/x.gz\n  labels: /d/y.gz\ntrusted_keys: [/k.pub]\nworker_threads: 2\n\
                    queue_depth: 3\npolicy:\n  hysteresis: 0.2\n  cooldown_s: 10\nmemory_budget_mb: 64\npin_version: 4\n";
        let c = parse(text).unwrap();
        assert_eq!(c.listen, Listen::Unix("/run/a.sock".into()));
        assert_eq!(c.latency_budget.budget(), Budget::Ms(4.5));
        assert_eq!(c.pin_version, Some(4));
        assert_eq!(c.policy.cooldown_s, 10.0);
        let back = parse(&c.to_yaml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let e = parse("bundle_dir: /b\ncolour: red\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour") && e.contains("line 2"), "{e}");
        let e = parse("policy:\n  hysteresis: 0.1\n  flavour: 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("flavour") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        let e = parse("state_dir: /s\nlatency_budget:\n  percentile: 150\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("latency_budget.percentile") && e.contains("line 3"),
            "{e}"
        );
        let e = parse("listen: nowhere\n").unwrap_err().to_string();
        assert!(e.contains("listen") && e.contains("line 1"), "{e}");
        let e = parse("queue_depth: -1\n").unwrap_err().to_string();
        assert!(!e.contains("usize") && e.contains("whole number"), "{e}");
        assert!(e.contains("line 1"), "{e}");
        let e = parse("worker_threads: 0\n").unwrap_err().to_string();
        assert!(
            e.contains("`worker_threads`") && e.contains("line 1"),
            "{e}"
        );
        let e = parse("latency_budget: {ms: 3, fraction: 0.5}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn line_of_nested_keys() {
        let t = "a: 1\npolicy:\n  x: 1\nother:\n  cooldown_s: 2\npolicy2: 3\n";
        assert_eq!(line_of_key(t, "other.cooldown_s"), Some(5));
        assert_eq!(line_of_key(t, "policy.x"), Some(3));
        assert_eq!(line_of_key(t, "policy.cooldown_s"), None);
    }

    #[test]
    fn intake_limits_default_and_validate() {
        let c = Config::default();
        assert_eq!(c.intake.max_bundle_mb, 512);
        assert_eq!(c.max_bundle_bytes(), 512 << 20);
        assert_eq!(
            c.max_tensor_bytes(),
            (256 / 4) << 20,
            "a quarter of memory_budget_mb"
        );
        assert_eq!(c.watch.keep_rejected, 20);
        let p = Path::new("/c.yaml");
        let c = Config::from_yaml(
            "memory_budget_mb: 64\nintake: {max_bundle_mb: 3}\nwatch: {keep_rejected: 2}\n",
            p,
        )
        .unwrap();
        assert_eq!(c.max_bundle_bytes(), 3 << 20);
        assert_eq!(c.max_tensor_bytes(), 16 << 20);
        assert_eq!(c.watch.keep_rejected, 2);
        let c = Config::from_yaml("intake: {max_tensor_mb: 5}\n", p).unwrap();
        assert_eq!(c.max_tensor_bytes(), 5 << 20);
        for (yaml, key) in [
            ("intake:\n  max_bundle_mb: 0\n", "intake.max_bundle_mb"),
            ("intake:\n  max_tensor_mb: 0\n", "intake.max_tensor_mb"),
            ("watch:\n  keep_rejected: 0\n", "watch.keep_rejected"),
        ] {
            let e = Config::from_yaml(yaml, p).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("line 2"), "{yaml}: {e}");
        }
        let cur = Config::default();
        let mut next = cur.clone();
        next.intake.max_bundle_mb = 1;
        assert_eq!(cur.reload(next).needs_restart, vec!["intake"]);
    }

    #[test]
    fn server_limits_have_board_defaults_and_are_checked() {
        let d = Config::default().server;
        assert_eq!(d.max_connections, 64);
        assert!(d.header_timeout_s <= 60.0 && d.idle_timeout_s <= 60.0);
        let c =
            parse("server:\n  max_connections: 300\n  idle_timeout_s: 2\n  max_inflight_mb: 8\n")
                .unwrap();
        assert_eq!(c.server.max_connections, 300);
        assert_eq!(c.server.idle_timeout_s, 2.0);
        assert_eq!(c.server.max_inflight_mb, 8);
        assert_eq!(c.server.body_timeout_s, d.body_timeout_s);
        for (text, key, line) in [
            (
                "server:\n  max_connections: 0\n",
                "server.max_connections",
                2,
            ),
            (
                "server:\n  header_timeout_s: .nan\n",
                "server.header_timeout_s",
                2,
            ),
            ("server:\n  idle_timeout_s: 0\n", "server.idle_timeout_s", 2),
            (
                "server:\n  body_timeout_s: -1\n",
                "server.body_timeout_s",
                2,
            ),
            (
                "server:\n  max_inflight_mb: 0\n",
                "server.max_inflight_mb",
                2,
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(&format!("line {line}")),
                "{e}"
            );
        }
        let r = Config::default().reload(c);
        assert_eq!(r.needs_restart, vec!["server"]);
    }
}
