//! The adaptation policy: which point of the Pareto front to serve, given
//! the latency budget, the front's predicted latencies and how much slower
//! than predicted the board runs now (the slowdown: the larger of the
//! measured contention factor and the hardware factor).
//!
//! - Down at once: when the served subnet's predicted latency x slowdown
//!   exceeds the budget, switch to the most accurate point that fits (the
//!   fastest if none does).
//! - Up after sustained slack: when a more accurate point fits with the
//!   hysteresis margin (`predicted x slowdown x (1 + hysteresis) <= budget`)
//!   for `upgrade_after_s` in a row, and the last switch is at least
//!   `cooldown_s` old, switch to the most accurate point that fits so.
//! - A budget change (config reload) re-chooses at once, both ways.
//!
//! The decision is a pure function of its inputs and the policy's memory
//! (last switch, start of the slack), so it is unit tested here.

use std::time::{Duration, Instant};

use crate::config::Policy as PolicyConfig;

/// A front point as the policy sees it: `predicted_ms` is the latency
/// table's value, re-timed when the board changed.
pub use adaptivenet_search::FrontPoint as Point;

/// Why the served subnet changes.
pub use crate::status::DecisionKind as Kind;

/// What to do now.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Stay,
    /// Nothing fits the budget, not even the fastest point (which is served).
    NoFit {
        reason: String,
    },
    Switch {
        to: usize,
        kind: Kind,
        reason: String,
    },
}

/// The policy's memory between two checks.
#[derive(Clone, Debug, Default)]
pub struct PolicyState {
    pub last_switch: Option<Instant>,
    pub slack_since: Option<Instant>,
    /// When the last move up happened.
    pub last_up: Option<Instant>,
    /// Anti-flap backoff: a move up that has to be undone (over budget)
    /// within `upgrade_after_s x backoff + cooldown_s` doubles the slack
    /// needed for the next one (up to 8x); a stable period resets it.
    pub backoff: u32,
}

impl PolicyState {
    /// The slack multiplier in force (1, 2, 4 or 8).
    pub fn backoff_factor(&self) -> f64 {
        f64::from(1u32 << self.backoff.min(3))
    }
}

/// One check.
pub struct Inputs<'a> {
    pub now: Instant,
    /// The front, any order.
    pub front: &'a [Point],
    /// Index of the served subnet in `front`, if it is on it.
    pub active: Option<usize>,
    pub budget_ms: f64,
    /// Measured-or-implied slowdown (1 = as predicted).
    pub slowdown: f64,
    /// `(old, new)` when the budget changed since the last check.
    pub budget_changed: Option<(f64, f64)>,
}

/// The most accurate point with `table x slowdown x margin <= budget`
/// (ties: the faster); `None` when none fits.
pub fn best_fit(front: &[Point], budget_ms: f64, slowdown: f64, margin: f64) -> Option<usize> {
    front
        .iter()
        .enumerate()
        .filter(|(_, p)| p.predicted_ms * slowdown * margin <= budget_ms)
        .max_by(|(_, a), (_, b)| {
            a.accuracy
                .total_cmp(&b.accuracy)
                .then(b.predicted_ms.total_cmp(&a.predicted_ms))
        })
        .map(|(i, _)| i)
}

/// The fastest point.
pub fn fastest(front: &[Point]) -> Option<usize> {
    front
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| a.predicted_ms.total_cmp(&b.predicted_ms))
        .map(|(i, _)| i)
}

fn secs(d: f64) -> Duration {
    Duration::from_secs_f64(d.max(0.0))
}

/// Decide, updating `state` (the caller records a switch it carries out
/// with [`PolicyState::switched`]).
pub fn decide(cfg: &PolicyConfig, state: &mut PolicyState, i: &Inputs) -> Action {
    if i.front.is_empty() {
        return Action::Stay;
    }
    let s = i.slowdown.max(1e-6);
    let est = |k: usize| i.front[k].predicted_ms * s;
    let fit = best_fit(i.front, i.budget_ms, s, 1.0);
    let Some(target) = fit.or_else(|| fastest(i.front)) else {
        return Action::Stay;
    };
    let describe = |k: usize| {
        format!(
            "`{}` ({:.3} ms x {s:.2} = {:.3} ms, accuracy {:.4})",
            i.front[k].subnet,
            i.front[k].predicted_ms,
            est(k),
            i.front[k].accuracy
        )
    };
    let Some(active) = i.active else {
        state.slack_since = None;
        return Action::Switch {
            to: target,
            kind: Kind::RejoinFront,
            reason: format!(
                "the served subnet is not on the front; best point for the budget of {:.3} ms: {}",
                i.budget_ms,
                describe(target)
            ),
        };
    };
    if let Some((old, new)) = i.budget_changed {
        state.slack_since = None;
        if target != active {
            return Action::Switch {
                to: target,
                kind: Kind::BudgetChange,
                reason: format!(
                    "budget changed from {old:.3} ms to {new:.3} ms: {} -> {}",
                    describe(active),
                    describe(target)
                ),
            };
        }
    }
    let upgrade_wait = cfg.upgrade_after_s * state.backoff_factor();
    if est(active) > i.budget_ms {
        state.slack_since = None;
        if target != active {
            // Undoing a recent move up: wait longer before the next one.
            if state.last_up.is_some_and(|t| {
                i.now.saturating_duration_since(t) <= secs(upgrade_wait + cfg.cooldown_s)
            }) {
                state.backoff = (state.backoff + 1).min(3);
            }
            state.last_up = None;
            return Action::Switch {
                to: target,
                kind: Kind::OverBudget,
                reason: format!(
                    "over budget: {} exceeds {:.3} ms; down to {}",
                    describe(active),
                    i.budget_ms,
                    describe(target)
                ),
            };
        }
        return Action::NoFit {
            reason: format!(
                "over budget and nothing faster: {} exceeds {:.3} ms",
                describe(active),
                i.budget_ms
            ),
        };
    }
    // A move up that held for long enough: forget the backoff.
    if state.last_up.is_some_and(|t| {
        i.now.saturating_duration_since(t) > secs(2.0 * upgrade_wait + cfg.cooldown_s)
    }) {
        state.backoff = 0;
        state.last_up = None;
    }
    let up = best_fit(i.front, i.budget_ms, s, 1.0 + cfg.hysteresis)
        .filter(|&k| i.front[k].accuracy > i.front[active].accuracy);
    let Some(up) = up else {
        state.slack_since = None;
        return Action::Stay;
    };
    let since = *state.slack_since.get_or_insert(i.now);
    let slack_for = i.now.saturating_duration_since(since);
    let cooled = state
        .last_switch
        .is_none_or(|t| i.now.saturating_duration_since(t) >= secs(cfg.cooldown_s));
    if slack_for >= secs(upgrade_wait) && cooled {
        state.slack_since = None;
        state.last_up = Some(i.now);
        return Action::Switch {
            to: up,
            kind: Kind::Slack,
            reason: format!(
                "slack for {:.1} s (margin {:.0}%, backoff x{}): up from {} to {}",
                slack_for.as_secs_f64(),
                cfg.hysteresis * 100.0,
                state.backoff_factor(),
                describe(active),
                describe(up)
            ),
        };
    }
    Action::Stay
}

impl PolicyState {
    /// A switch was carried out at `now`.
    pub fn switched(&mut self, now: Instant) {
        self.last_switch = Some(now);
        self.slack_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn front() -> Vec<Point> {
        [
            ("m0x3 m3x3 m6x3", 0.3, 0.80),
            ("b0 b1 b2 m3x3 m6x3", 0.5, 0.88),
            ("b0 b1 b2 b3 b4 b5 b6 b7 b8", 0.9, 0.93),
        ]
        .iter()
        .map(|(s, ms, a)| Point {
            subnet: s.parse().unwrap(),
            predicted_ms: *ms,
            accuracy: *a,
            images: 100,
        })
        .collect()
    }

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            hysteresis: 0.1,
            cooldown_s: 10.0,
            upgrade_after_s: 5.0,
            ..PolicyConfig::default()
        }
    }

    fn check(st: &mut PolicyState, now: Instant, active: usize, slowdown: f64) -> Action {
        decide(
            &cfg(),
            st,
            &Inputs {
                now,
                front: &front(),
                active: Some(active),
                budget_ms: 1.0,
                slowdown,
                budget_changed: None,
            },
        )
    }

    #[test]
    fn over_budget_goes_down_at_once_to_the_best_fit() {
        let t0 = Instant::now();
        let mut st = PolicyState {
            last_switch: Some(t0),
            ..Default::default()
        };
        // 0.9 x 1.5 = 1.35 > 1; 0.5 x 1.5 = 0.75 fits: down, cooldown ignored.
        match check(&mut st, t0, 2, 1.5) {
            Action::Switch { to, kind, reason } => {
                assert_eq!((to, kind), (1, Kind::OverBudget));
                assert!(reason.contains("over budget"), "{reason}");
            }
            a => panic!("{a:?}"),
        }
        // Nothing fits: the fastest, and then "no fit" while on it.
        assert!(matches!(
            check(&mut st, t0, 2, 5.0),
            Action::Switch { to: 0, .. }
        ));
        assert!(matches!(check(&mut st, t0, 0, 5.0), Action::NoFit { .. }));
    }

    #[test]
    fn up_needs_sustained_slack_hysteresis_and_cooldown() {
        let t0 = Instant::now();
        let mut st = PolicyState::default();
        st.switched(t0);
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        // 0.9 x 1.05 x 1.1 = 1.04 > 1: fits without the margin but not with it: stay.
        assert_eq!(check(&mut st, at(1.0), 1, 1.05), Action::Stay);
        assert!(st.slack_since.is_none());
        // Slack (0.9 x 1.0 x 1.1 = 0.99): waits upgrade_after_s and the cooldown.
        assert_eq!(check(&mut st, at(2.0), 1, 1.0), Action::Stay);
        assert_eq!(
            check(&mut st, at(7.5), 1, 1.0),
            Action::Stay,
            "cooldown (10 s) not over"
        );
        // A blip of contention resets the slack.
        assert_eq!(check(&mut st, at(8.0), 1, 1.2), Action::Stay);
        assert_eq!(check(&mut st, at(9.0), 1, 1.0), Action::Stay);
        assert_eq!(
            check(&mut st, at(13.0), 1, 1.0),
            Action::Stay,
            "slack for 4 s only"
        );
        match check(&mut st, at(14.5), 1, 1.0) {
            Action::Switch {
                to: 2,
                kind: Kind::Slack,
                ..
            } => {}
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn an_undone_move_up_doubles_the_wait_for_the_next() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut st = PolicyState::default();
        // Slack 5 s: up at 5 s (no cooldown yet).
        assert_eq!(check(&mut st, at(0.0), 1, 1.0), Action::Stay);
        assert!(matches!(
            check(&mut st, at(5.0), 1, 1.0),
            Action::Switch {
                kind: Kind::Slack,
                ..
            }
        ));
        st.switched(at(5.0));
        // Over budget again 1 s later: down, and the next up needs 10 s.
        assert!(matches!(
            check(&mut st, at(6.0), 2, 1.3),
            Action::Switch {
                kind: Kind::OverBudget,
                ..
            }
        ));
        st.switched(at(6.0));
        assert_eq!(st.backoff_factor(), 2.0);
        assert_eq!(check(&mut st, at(16.0), 1, 1.0), Action::Stay);
        assert_eq!(
            check(&mut st, at(24.0), 1, 1.0),
            Action::Stay,
            "8 s of slack < 10 s"
        );
        assert!(matches!(
            check(&mut st, at(26.5), 1, 1.0),
            Action::Switch {
                kind: Kind::Slack,
                ..
            }
        ));
        st.switched(at(26.5));
        // It holds: after 2 x 10 + 10 s the backoff is forgotten.
        assert_eq!(check(&mut st, at(60.0), 2, 1.0), Action::Stay);
        assert_eq!(st.backoff_factor(), 1.0);
    }

    #[test]
    fn a_budget_change_rechooses_at_once_both_ways() {
        let t0 = Instant::now();
        let mut st = PolicyState {
            last_switch: Some(t0),
            ..Default::default()
        };
        let f = front();
        let mut run = |active, budget, old| {
            decide(
                &cfg(),
                &mut st,
                &Inputs {
                    now: t0,
                    front: &f,
                    active: Some(active),
                    budget_ms: budget,
                    slowdown: 1.0,
                    budget_changed: Some((old, budget)),
                },
            )
        };
        assert!(matches!(
            run(0, 2.0, 0.4),
            Action::Switch {
                to: 2,
                kind: Kind::BudgetChange,
                ..
            }
        ));
        assert!(matches!(
            run(2, 0.4, 2.0),
            Action::Switch {
                to: 0,
                kind: Kind::BudgetChange,
                ..
            }
        ));
        assert_eq!(run(2, 1.5, 2.0), Action::Stay);
    }

    #[test]
    fn off_the_front_rejoins_it() {
        let f = front();
        let a = decide(
            &cfg(),
            &mut PolicyState::default(),
            &Inputs {
                now: Instant::now(),
                front: &f,
                active: None,
                budget_ms: 0.6,
                slowdown: 1.0,
                budget_changed: None,
            },
        );
        assert!(
            matches!(
                a,
                Action::Switch {
                    to: 1,
                    kind: Kind::RejoinFront,
                    ..
                }
            ),
            "{a:?}"
        );
    }
}
