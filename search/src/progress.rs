//! Progress of a long search for logs, status pages and progress bars: the
//! phase it is in and how much of it is done, reported through an optional
//! callback in [`crate::Options`]. The search calls it from its own thread,
//! at phase changes and after each evaluated group of subnets.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// A phase of the search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Timing the blocks and branches (the latency table).
    Latency,
    /// Timing whole subnets to check the table's predictions.
    Check,
    /// Evaluating subnets' accuracy (`done`/`total`: distinct subnets).
    Evaluate,
    /// Evaluating the oracle path on all the data.
    Oracle,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Latency => "timing the parts",
            Phase::Check => "checking the latency table",
            Phase::Evaluate => "evaluating subnets",
            Phase::Oracle => "evaluating the oracle",
        })
    }
}

/// Where the search is: `done` of `total` units of `phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

/// The callback that receives [`Progress`] reports.
#[derive(Clone)]
pub struct ProgressHook(Arc<dyn Fn(Progress) + Send + Sync>);

impl ProgressHook {
    pub fn new(f: impl Fn(Progress) + Send + Sync + 'static) -> ProgressHook {
        ProgressHook(Arc::new(f))
    }

    /// Report `done` of `total` in `phase`.
    pub fn report(&self, phase: Phase, done: u64, total: u64) {
        (self.0)(Progress { phase, done, total })
    }
}

impl fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProgressHook")
    }
}

/// Report through an optional hook.
pub(crate) fn report(hook: &Option<ProgressHook>, phase: Phase, done: u64, total: u64) {
    if let Some(h) = hook {
        h.report(phase, done, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn hooks_receive_reports() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let hook = Some(ProgressHook::new(move |p| s.lock().unwrap().push(p)));
        report(&hook, Phase::Evaluate, 3, 10);
        report(&None, Phase::Evaluate, 4, 10);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Progress {
                phase: Phase::Evaluate,
                done: 3,
                total: 10
            }]
        );
        assert_eq!(Phase::Evaluate.to_string(), "evaluating subnets");
    }
}
