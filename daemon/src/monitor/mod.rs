//! The resource monitor: what else runs on the board and how the board is
//! doing (sysinfo: CPU use of other processes, available memory, load,
//! hwmon temperatures; [`sysfs`]: CPU clocks and throttling, online CPUs,
//! thermal zones and pressure under `monitor.root`), and the measured
//! compute latency of served requests against the predicted latency of the
//! served subnet, which gives the contention factor ([`LatencyWindow`]).

pub mod sysfs;

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use sysfs::{Board, Pressure, SysFs, Temp};

/// A snapshot of the environment, shown by `/adaptation`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Environment {
    /// Smoothed measured / predicted latency of the served subnet (1 = as
    /// timed; 2 = twice as slow); `None` before enough samples.
    pub contention: Option<f64>,
    /// The latest unsmoothed value.
    pub contention_raw: Option<f64>,
    /// The slowdown the board's state implies against the conditions the
    /// latency table was timed in: clock ratio then / now, times fewer cores.
    pub hardware_factor: f64,
    /// CPU use of every other process, percent of all CPUs.
    pub cpu_other_pct: Option<f64>,
    /// CPU use of the daemon itself, percent of one CPU.
    pub cpu_self_pct: Option<f64>,
    pub mem_available_mb: Option<u64>,
    pub load: Option<[f64; 3]>,
    pub temps: Vec<Temp>,
    pub max_temp_c: Option<f64>,
    pub online_cpus: Option<usize>,
    /// Mean clock ratio of the online CPUs (`None` without cpufreq).
    pub freq_ratio: Option<f64>,
    pub min_freq_ratio: Option<f64>,
    /// Clock below `policy.throttle_freq_ratio`, or a thermal zone at or
    /// above `monitor.hot_c`.
    pub throttled: bool,
    pub pressure: Pressure,
    /// Where `/sys` and `/proc` were read.
    pub root: String,
}

/// sysinfo plus the board files.
pub struct Monitor {
    sys: Option<sysinfo::System>,
    components: Option<sysinfo::Components>,
    pid: Option<sysinfo::Pid>,
    pub fs: SysFs,
    real_root: bool,
    last_refresh: Option<Instant>,
}

impl Monitor {
    /// A monitor reading the board files under `root` (`/`: the real board,
    /// also through sysinfo; anything else: the files only).
    pub fn new(root: &Path) -> Monitor {
        let real_root = root == Path::new("/");
        let sys = match sysinfo::System::new() {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("monitor: sysinfo is not available ({e}); CPU and memory use unknown");
                None
            }
        };
        let components = if real_root {
            sysinfo::Components::new_with_refreshed_list().ok()
        } else {
            None
        };
        Monitor {
            sys,
            components,
            pid: sysinfo::get_current_pid().ok(),
            fs: SysFs::new(root),
            real_root,
            last_refresh: None,
        }
    }

    /// Sample everything but the latency part.
    pub fn sample(&mut self, throttle_ratio: f64, hot_c: f64) -> Environment {
        let board = self.fs.board();
        let mut env = Environment {
            hardware_factor: 1.0,
            root: self.fs.root.display().to_string(),
            online_cpus: board.online_cpus,
            freq_ratio: board.freq_ratio,
            min_freq_ratio: board.min_freq_ratio,
            pressure: board.pressure,
            temps: board.temps,
            load: board.loadavg,
            ..Environment::default()
        };
        if let Some(sys) = self.sys.as_mut() {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            let ncpu = sys.cpus().len().max(1) as f64;
            let mut own = None;
            if let Some(pid) = self.pid {
                sys.refresh_processes_specifics(
                    sysinfo::ProcessesToUpdate::Some(&[pid]),
                    false,
                    sysinfo::ProcessRefreshKind::nothing().with_cpu(),
                );
                own = sys.process(pid).map(|p| p.cpu_usage() as f64);
            }
            // CPU usage needs two refreshes some time apart.
            if self
                .last_refresh
                .is_some_and(|t| t.elapsed() >= sysinfo::MINIMUM_CPU_UPDATE_INTERVAL)
            {
                let total = sys.global_cpu_usage() as f64 * ncpu; // percent of one CPU
                let own_v = own.unwrap_or(0.0);
                env.cpu_other_pct = Some(((total - own_v) / ncpu).clamp(0.0, 100.0));
                env.cpu_self_pct = own;
            }
            self.last_refresh = Some(Instant::now());
            env.mem_available_mb = Some(sys.available_memory() / (1 << 20));
            if self.real_root && env.load.is_none() {
                env.load = sysinfo::System::load_average()
                    .ok()
                    .map(|l| [l.one, l.five, l.fifteen]);
            }
        }
        if let Some(c) = self.components.as_mut() {
            c.refresh(false);
            for comp in c.iter() {
                if let Some(t) = comp.temperature() {
                    if t.is_finite() {
                        env.temps.push(Temp {
                            name: format!("hwmon:{}", comp.label()),
                            celsius: t as f64,
                        });
                    }
                }
            }
        }
        env.max_temp_c = env.temps.iter().map(|t| t.celsius).reduce(f64::max);
        env.throttled = env.freq_ratio.is_some_and(|r| r < throttle_ratio)
            || env.max_temp_c.is_some_and(|t| t >= hot_c);
        env
    }
}

/// A latency sample of one batch-1 run of the served subnet.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    /// Which engine ran it ([`engine_key`]).
    engine: usize,
    ms: f64,
}

/// The identity of an engine (its address; one engine per subnet is cached
/// and reused, so this follows the subnet).
pub fn engine_key(e: &std::sync::Arc<crate::engine::Engine>) -> usize {
    std::sync::Arc::as_ptr(e) as usize
}

/// Recent compute latencies of served requests (and idle probes).
#[derive(Debug, Default)]
pub struct LatencyWindow {
    samples: VecDeque<Sample>,
    last_request: Option<Instant>,
}

/// At most this many samples are kept.
const MAX_SAMPLES: usize = 20_000;

impl LatencyWindow {
    /// Record a batch-1 run of `engine` that took `ms`.
    pub fn observe(&mut self, engine: usize, ms: f64, probe: bool) {
        let now = Instant::now();
        if !probe {
            self.last_request = Some(now);
        }
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at: now,
            engine,
            ms,
        });
    }

    /// Time since the last served request (not probe).
    pub fn idle_for(&self) -> Option<Duration> {
        self.last_request.map(|t| t.elapsed())
    }

    /// Drop samples older than `window`.
    pub fn prune(&mut self, window: Duration) {
        let now = Instant::now();
        while self
            .samples
            .front()
            .is_some_and(|s| now.duration_since(s.at) > window)
        {
            self.samples.pop_front();
        }
    }

    /// The `pct` percentile (0..100] of `engine`'s samples within `window`,
    /// and how many there were.
    pub fn percentile(&self, engine: usize, window: Duration, pct: f64) -> (Option<f64>, usize) {
        let now = Instant::now();
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.engine == engine && now.duration_since(s.at) <= window)
            .map(|s| s.ms)
            .collect();
        if v.is_empty() {
            return (None, 0);
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let i = ((pct / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        (Some(v[i]), v.len())
    }

    /// Samples of `engine` newer than `since`.
    pub fn count_since(&self, engine: usize, since: Instant) -> usize {
        self.samples
            .iter()
            .filter(|s| s.engine == engine && s.at >= since)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_percentiles_per_engine() {
        let mut w = LatencyWindow::default();
        for i in 1..=100 {
            w.observe(1, i as f64, false);
        }
        w.observe(2, 1000.0, true);
        let (p95, n) = w.percentile(1, Duration::from_secs(60), 95.0);
        assert_eq!((p95, n), (Some(95.0), 100));
        assert_eq!(
            w.percentile(2, Duration::from_secs(60), 50.0),
            (Some(1000.0), 1)
        );
        assert_eq!(w.percentile(3, Duration::from_secs(60), 50.0), (None, 0));
        assert!(w.idle_for().unwrap() < Duration::from_secs(5));
    }

    #[test]
    fn the_real_board_samples_without_failing() {
        let mut m = Monitor::new(Path::new("/"));
        let _ = m.sample(0.85, 80.0);
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let e = m.sample(0.85, 80.0);
        assert!(e.mem_available_mb.is_some_and(|m| m > 0), "{e:?}");
        assert!(e.cpu_other_pct.is_some(), "{e:?}");
    }
}
