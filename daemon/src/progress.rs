//! The search's progress inside the daemon: a
//! [`adaptivenet_search::ProgressHook`] that records the phase, done/total,
//! elapsed time and an ETA in the status `/adaptation` shows, and logs a
//! progress line when a phase starts and at most every [`LOG_EVERY`] within it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adaptivenet_search::{Phase, Progress, ProgressHook};

use crate::shared::Shared;
use crate::status::SearchProgress;

/// At most one progress log line per this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Tracks one search's pace.
#[derive(Debug)]
pub struct Pace {
    started: Instant,
    phase_started: Option<(Phase, Instant)>,
    last_log: Option<Instant>,
    /// The last status began a new phase (logged whatever the interval).
    new_phase: bool,
}

impl Pace {
    pub fn new() -> Pace {
        Pace {
            started: Instant::now(),
            phase_started: None,
            last_log: None,
            new_phase: false,
        }
    }

    /// The status for `p` now (ETA from the pace of the current phase).
    pub fn status(&mut self, p: Progress) -> SearchProgress {
        let now = Instant::now();
        let since = match self.phase_started {
            Some((phase, t)) if phase == p.phase => t,
            _ => {
                self.phase_started = Some((p.phase, now));
                self.new_phase = true;
                now
            }
        };
        let in_phase = (now - since).as_secs_f64();
        let eta_s = (p.done > 0 && p.total >= p.done && in_phase > 0.0)
            .then(|| in_phase * (p.total - p.done) as f64 / p.done as f64);
        SearchProgress {
            phase: p.phase,
            doing: p.phase.to_string(),
            done: p.done,
            total: p.total,
            percent: if p.total == 0 {
                0.0
            } else {
                (1000.0 * p.done as f64 / p.total as f64).round() / 10.0
            },
            elapsed_s: (now - self.started).as_secs_f64().round(),
            eta_s: eta_s.map(f64::round),
        }
    }

    /// Whether to log now: the first report of a phase, then every
    /// [`LOG_EVERY`].
    pub fn should_log(&mut self) -> bool {
        let now = Instant::now();
        let new_phase = std::mem::take(&mut self.new_phase);
        match self.last_log {
            Some(t) if now - t < LOG_EVERY && !new_phase => false,
            _ => {
                self.last_log = Some(now);
                true
            }
        }
    }
}

impl Default for Pace {
    fn default() -> Self {
        Pace::new()
    }
}

/// One progress line: `search: evaluating subnets 120/300 (40.0%), 31 s elapsed, about 46 s left`.
pub fn line(s: &SearchProgress) -> String {
    let mut t = format!(
        "search: {} {}/{} ({:.1}%), {:.0} s elapsed",
        s.doing, s.done, s.total, s.percent, s.elapsed_s
    );
    if let Some(eta) = s.eta_s {
        t.push_str(&format!(", about {eta:.0} s left"));
    }
    t
}

/// The hook for a search run by the daemon's search thread.
pub fn hook(shared: Arc<Shared>) -> ProgressHook {
    let pace = Mutex::new(Pace::new());
    ProgressHook::new(move |p| {
        let mut pace = pace.lock().unwrap_or_else(|e| e.into_inner());
        let s = pace.status(p);
        if pace.should_log() {
            log::info!("{}", line(&s));
        }
        shared.history().search.progress = Some(s);
    })
}

/// The hook for `adaptived search`: a progress bar per phase on a
/// terminal (indicatif, on stderr), else the same log lines as the daemon.
pub fn terminal_hook() -> ProgressHook {
    use indicatif::{ProgressBar, ProgressStyle};
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let pace = Mutex::new(Pace::new());
    let bar: Mutex<Option<(Phase, ProgressBar)>> = Mutex::new(None);
    ProgressHook::new(move |p| {
        let mut pace = pace.lock().unwrap_or_else(|e| e.into_inner());
        let s = pace.status(p);
        if !tty {
            if pace.should_log() {
                log::info!("{}", line(&s));
            }
            return;
        }
        let mut bar = bar.lock().unwrap_or_else(|e| e.into_inner());
        if bar.as_ref().map(|(phase, _)| *phase) != Some(p.phase) {
            if let Some((_, old)) = bar.take() {
                old.finish();
            }
            let pb = ProgressBar::new(p.total);
            pb.set_style(
                ProgressStyle::with_template(
                    "{prefix:>26} [{elapsed_precise}] {bar:30} {pos}/{len} (ETA {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb.set_prefix(p.phase.to_string());
            *bar = Some((p.phase, pb));
        }
        if let Some((_, pb)) = bar.as_ref() {
            pb.set_length(p.total);
            pb.set_position(p.done);
            if p.done >= p.total {
                pb.finish();
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_from_the_pace_of_the_phase() {
        let mut pace = Pace::new();
        let p = |done| Progress {
            phase: Phase::Evaluate,
            done,
            total: 100,
        };
        let s = pace.status(p(0));
        assert_eq!((s.percent, s.eta_s), (0.0, None));
        std::thread::sleep(Duration::from_millis(20));
        let s = pace.status(p(50));
        assert_eq!(s.percent, 50.0);
        assert!(s.eta_s.is_some_and(|e| e < 5.0), "{s:?}");
        assert!(line(&s).contains("evaluating subnets 50/100 (50.0%)"));
        assert!(pace.should_log());
        assert!(!pace.should_log(), "a second line within 5 s");
    }

    #[test]
    fn a_new_phase_is_logged_at_once() {
        let mut pace = Pace::new();
        let p = |phase, done| Progress {
            phase,
            done,
            total: 2,
        };
        pace.status(p(Phase::Latency, 0));
        assert!(pace.should_log());
        pace.status(p(Phase::Latency, 1));
        assert!(!pace.should_log(), "within 5 s, same phase");
        pace.status(p(Phase::Check, 0));
        assert!(pace.should_log(), "the check phase starts: logged");
        pace.status(p(Phase::Check, 1));
        assert!(!pace.should_log());
    }
}
