//! Request metrics: counters, a latency histogram, and a window of recent
//! model run times for the p50/p95 that `/adaptation` shows; rendered with
//! the adaptation status as Prometheus text by `/metrics`.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::liveness::{Liveness, SUPERVISED};
use crate::status::{AdaptStatus, DecisionKind, IntakeStatus, Slot};

/// Upper bounds of the latency histogram, seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// How many recent run times are kept for percentiles.
pub const RECENT: usize = 1000;

#[derive(Debug, Default)]
pub struct Metrics {
    /// Infer requests received.
    pub requests: AtomicU64,
    /// Infer requests answered 200.
    pub ok: AtomicU64,
    /// Answered 400 (malformed request).
    pub bad_request: AtomicU64,
    /// Answered 503 because the queue was full (or no model).
    pub busy: AtomicU64,
    /// Answered 500 (the model failed).
    pub errors: AtomicU64,
    /// Swaps of the served model.
    pub swaps: AtomicU64,
    /// Bundles rejected.
    pub rejected: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
    recent: Mutex<VecDeque<f64>>,
    /// Triton-style statistics of infer requests (`/v2/models/{name}/stats`).
    pub infer: InferStats,
}

/// A count and a cumulative duration, ns.
#[derive(Debug, Default)]
pub struct Timed {
    pub count: AtomicU64,
    pub ns: AtomicU64,
}

impl Timed {
    pub fn add(&self, ns: u64) {
        self.count.fetch_add(1, Relaxed);
        self.ns.fetch_add(ns, Relaxed);
    }
    /// `{"count": .., "ns": ..}` as Triton shows it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "count": self.count.load(Relaxed), "ns": self.ns.load(Relaxed) })
    }
}

/// Triton's inference statistics: successes and failures with their whole
/// duration, and for successes the time queued, preparing the input (decode,
/// check, preprocess), running the model and encoding the output.
#[derive(Debug, Default)]
pub struct InferStats {
    pub success: Timed,
    pub fail: Timed,
    pub queue: Timed,
    pub compute_input: Timed,
    pub compute_infer: Timed,
    pub compute_output: Timed,
    /// Items inferred (sum of batch sizes).
    pub inference_count: AtomicU64,
    /// Model runs.
    pub execution_count: AtomicU64,
    /// Unix time of the last success, ms (0: never).
    pub last_inference_ms: AtomicU64,
}

/// p50 and p95 of recent model runs, ms.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub count: usize,
}

impl Metrics {
    /// Record the wall time of a whole successful infer request, seconds.
    pub fn observe_request(&self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add((secs * 1e6) as u64, Relaxed);
    }

    /// Record the time the model took on a request, ms.
    pub fn observe_run(&self, ms: f64) {
        let mut r = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= RECENT {
            r.pop_front();
        }
        r.push_back(ms);
    }

    /// Forget recent run times (after a swap they describe another model).
    pub fn clear_recent(&self) {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn percentiles(&self) -> Percentiles {
        let mut v: Vec<f64> = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| -> Option<f64> {
            if v.is_empty() {
                return None;
            }
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            Some(v[i])
        };
        Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            count: v.len(),
        }
    }

    /// Prometheus text exposition. Request metrics carry a `model` label:
    /// the served model's name (`none` before the first one).
    pub fn render(&self, active: Option<(&str, u64, &str)>, in_flight: usize) -> String {
        let mut s = String::new();
        let model = escape(active.map(|a| a.0).unwrap_or("none"));
        let _ = writeln!(
            s,
            "# HELP adaptived_requests_total Infer requests received.\n# TYPE adaptived_requests_total counter\nadaptived_requests_total{{model=\"{model}\"}} {}",
            self.requests.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP adaptived_request_failures_total Infer requests not answered 200, by reason.\n# TYPE adaptived_request_failures_total counter"
        );
        for (reason, v) in [
            ("bad_request", &self.bad_request),
            ("busy", &self.busy),
            ("error", &self.errors),
        ] {
            let _ = writeln!(
                s,
                "adaptived_request_failures_total{{model=\"{model}\",reason=\"{reason}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP adaptived_request_duration_seconds Wall time of successful infer requests.\n# TYPE adaptived_request_duration_seconds histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "adaptived_request_duration_seconds_bucket{{model=\"{model}\",le=\"{b}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(
            s,
            "adaptived_request_duration_seconds_bucket{{model=\"{model}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "adaptived_request_duration_seconds_sum{{model=\"{model}\"}} {}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "adaptived_request_duration_seconds_count{{model=\"{model}\"}} {count}"
        );
        let _ = writeln!(
            s,
            "# HELP adaptived_active_subnet The subnet being served (value 1).\n# TYPE adaptived_active_subnet gauge"
        );
        if let Some((model, version, subnet)) = active {
            let _ = writeln!(
                s,
                "adaptived_active_subnet{{model=\"{}\",version=\"{version}\",subnet=\"{}\"}} 1",
                escape(model),
                escape(subnet)
            );
        }
        let counter = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut s,
            "adaptived_swaps_total",
            "Swaps of a serving model for another model or subnet (the first load is not a swap).",
            self.swaps.load(Relaxed),
        );
        counter(
            &mut s,
            "adaptived_bundles_rejected_total",
            "Bundles rejected.",
            self.rejected.load(Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP adaptived_requests_in_flight Infer requests queued or running.\n# TYPE adaptived_requests_in_flight gauge\nadaptived_requests_in_flight {in_flight}"
        );
        render_process(&mut s);
        s
    }
}

/// The standard `process_*` metrics of this process, from `/proc/self`
/// (left out where `/proc` cannot be read).
pub fn render_process(s: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command (which may hold spaces) in parentheses.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { f.get(n - 3)?.parse().ok() };
    let sysconf = |var, default: f64| match nix::unistd::sysconf(var) {
        Ok(Some(v)) if v > 0 => v as f64,
        _ => default,
    };
    let tick = sysconf(nix::unistd::SysconfVar::CLK_TCK, 100.0);
    let page = sysconf(nix::unistd::SysconfVar::PAGE_SIZE, 4096.0);
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    let gauge = |s: &mut String, name: &str, kind: &str, help: &str, v: Option<f64>| {
        if let Some(v) = v {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
    };
    gauge(
        s,
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        field(14).zip(field(15)).map(|(u, k)| (u + k) / tick),
    );
    gauge(
        s,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        field(24).map(|p| p * page),
    );
    gauge(
        s,
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        field(23),
    );
    gauge(
        s,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        boot.zip(field(22)).map(|(b, t)| b + t / tick),
    );
    gauge(
        s,
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64),
    );
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
        });
    gauge(
        s,
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        max_fds,
    );
}

/// The daemon's own health in `/metrics`: panics of each supervised thread
/// (each followed by a restart), the silence of each beating thread (NaN
/// until it starts), and bundle intake's fallbacks to the previous slot.
pub fn render_health(s: &mut String, live: &Liveness, intake: &IntakeStatus, now_ms: u64) {
    let _ = writeln!(
        s,
        "# HELP adaptived_thread_panics_total Panics of a supervised thread, each followed by a restart of it.\n# TYPE adaptived_thread_panics_total counter"
    );
    for t in SUPERVISED {
        let _ = writeln!(
            s,
            "adaptived_thread_panics_total{{thread=\"{t}\"}} {}",
            live.panics(t)
        );
    }
    let _ = writeln!(
        s,
        "# HELP adaptived_thread_silence_seconds Time since a long-lived thread last beat (the systemd watchdog requires all of them).\n# TYPE adaptived_thread_silence_seconds gauge"
    );
    for (t, ms) in live.silence(now_ms) {
        let v = ms.map_or(f64::NAN, |ms| ms as f64 / 1e3);
        let _ = writeln!(s, "adaptived_thread_silence_seconds{{thread=\"{t}\"}} {v}");
    }
    let _ = writeln!(
        s,
        "# HELP adaptived_bundle_fallbacks_total Starts that served the previous slot because the active bundle failed its checks.\n# TYPE adaptived_bundle_fallbacks_total counter\nadaptived_bundle_fallbacks_total {}",
        intake.fallbacks
    );
    let _ = writeln!(
        s,
        "# HELP adaptived_serving_previous_slot 1 while the previous slot serves (the active bundle failed its checks at start).\n# TYPE adaptived_serving_previous_slot gauge\nadaptived_serving_previous_slot {}",
        u8::from(intake.slot == Slot::Previous)
    );
    let floor = intake.version_floor.map_or(f64::NAN, |v| v as f64);
    let _ = writeln!(
        s,
        "# HELP adaptived_version_floor The highest bundle version installed: older ones are refused (NaN before the first).\n# TYPE adaptived_version_floor gauge\nadaptived_version_floor {floor}"
    );
}

/// The adaptation loop's part of `/metrics`: decisions by reason, the
/// contention and hardware factors, the budget, the board's state, reloads.
pub fn render_adaptation(s: &mut String, a: &AdaptStatus) {
    let _ = writeln!(
        s,
        "# HELP adaptived_adaptation_decisions_total Adaptation decisions, by reason.\n# TYPE adaptived_adaptation_decisions_total counter"
    );
    for kind in DecisionKind::ALL {
        let _ = writeln!(
            s,
            "adaptived_adaptation_decisions_total{{reason=\"{kind}\"}} {}",
            a.counts.get(&kind).copied().unwrap_or(0)
        );
    }
    // Every gauge is always present; NaN while its value is unknown.
    let gauge = |s: &mut String, name: &str, help: &str, v: Option<f64>| {
        let v = v.filter(|v| v.is_finite()).unwrap_or(f64::NAN);
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    let e = &a.environment;
    gauge(
        s,
        "adaptived_contention_factor",
        "Smoothed measured / predicted latency of the served subnet.",
        e.contention,
    );
    gauge(
        s,
        "adaptived_hardware_factor",
        "Slowdown implied by the CPU clock and online CPUs against the latency table.",
        Some(e.hardware_factor),
    );
    gauge(
        s,
        "adaptived_budget_seconds",
        "Latency budget in force, seconds.",
        a.budget_ms.map(|ms| ms / 1e3),
    );
    gauge(
        s,
        "adaptived_cpu_other_ratio",
        "CPU use of other processes, as a fraction of all CPUs (0 to 1).",
        e.cpu_other_pct.map(|p| p / 100.0),
    );
    gauge(
        s,
        "adaptived_memory_available_bytes",
        "Available memory, bytes.",
        e.mem_available_mb.map(|m| m as f64 * 1024.0 * 1024.0),
    );
    gauge(
        s,
        "adaptived_cpu_freq_ratio",
        "Mean CPU clock / max clock of the online CPUs.",
        e.freq_ratio,
    );
    gauge(
        s,
        "adaptived_throttled",
        "1 when the board throttles (clock or temperature).",
        Some(if e.throttled { 1.0 } else { 0.0 }),
    );
    gauge(
        s,
        "adaptived_resident_subnets",
        "Compiled subnets kept in memory.",
        Some(a.plans.resident.len() as f64),
    );
    let _ = writeln!(
        s,
        "# HELP adaptived_config_reloads_total Config reloads (SIGHUP), by result.\n# TYPE adaptived_config_reloads_total counter\nadaptived_config_reloads_total{{result=\"ok\"}} {}\nadaptived_config_reloads_total{{result=\"failed\"}} {}",
        a.reloads.ok, a.reloads.failed
    );
}

/// Escape a Prometheus label value.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_text() {
        let m = Metrics::default();
        assert!(m.percentiles().p50.is_none());
        for i in 1..=100 {
            m.observe_run(i as f64);
        }
        let p = m.percentiles();
        assert_eq!((p.p50, p.p95, p.count), (Some(50.0), Some(95.0), 100));
        m.observe_request(0.003);
        let t = m.render(Some(("m", 2, "b0 b1")), 0);
        assert!(
            t.contains("adaptived_request_duration_seconds_bucket{model=\"m\",le=\"0.005\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("adaptived_request_duration_seconds_bucket{model=\"m\",le=\"0.002\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("adaptived_active_subnet{model=\"m\",version=\"2\",subnet=\"b0 b1\"} 1"),
            "{t}"
        );
        assert!(t.contains("process_resident_memory_bytes "), "{t}");
        assert!(t.contains("process_open_fds "), "{t}");
        let mut a = String::new();
        render_adaptation(&mut a, &AdaptStatus::default());
        assert!(a.contains("adaptived_contention_factor NaN"), "{a}");
        assert!(a.contains("adaptived_budget_seconds NaN"), "{a}");
    }
}
