//! Request metrics: counters, a latency histogram, and a window of recent
//! model run times for the p50/p95 that `/adaptation` shows; rendered with
//! the adaptation status as Prometheus text by `/metrics`.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::status::{AdaptStatus, DecisionKind};

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

    /// Prometheus text exposition.
    pub fn render(&self, active: Option<(&str, u64, &str)>, in_flight: usize) -> String {
        let mut s = String::new();
        let counter = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            &mut s,
            "adaptived_requests_total",
            "Infer requests received.",
            self.requests.load(Relaxed),
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
                "adaptived_request_failures_total{{reason=\"{reason}\"}} {}",
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
                "adaptived_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(
            s,
            "adaptived_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            s,
            "adaptived_request_duration_seconds_sum {}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "adaptived_request_duration_seconds_count {count}");
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
        counter(
            &mut s,
            "adaptived_swaps_total",
            "Swaps of the served model or subnet.",
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
        s
    }
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
    let gauge = |s: &mut String, name: &str, help: &str, v: Option<f64>| {
        if let Some(v) = v {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
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
        "adaptived_budget_ms",
        "Latency budget in force, ms.",
        a.budget_ms,
    );
    gauge(
        s,
        "adaptived_cpu_other_percent",
        "CPU use of other processes, percent of all CPUs.",
        e.cpu_other_pct,
    );
    gauge(
        s,
        "adaptived_memory_available_mb",
        "Available memory, MiB.",
        e.mem_available_mb.map(|m| m as f64),
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
            t.contains("adaptived_request_duration_seconds_bucket{le=\"0.005\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("adaptived_request_duration_seconds_bucket{le=\"0.002\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("adaptived_active_subnet{model=\"m\",version=\"2\",subnet=\"b0 b1\"} 1"),
            "{t}"
        );
    }
}
