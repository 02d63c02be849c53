//! The board conditions a latency table refers to (CPU clock, online CPUs,
//! throttling), the slowdown a change implies, and whether a change is
//! uniform (a scale) or needs the front re-timed.

use crate::monitor::Environment;
use crate::status::DecisionKind;

/// The board conditions a table refers to.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Hw {
    pub freq_ratio: Option<f64>,
    pub online: Option<usize>,
    pub throttled: bool,
}

impl Hw {
    pub fn of(e: &Environment) -> Hw {
        Hw {
            freq_ratio: e.freq_ratio,
            online: e.online_cpus,
            throttled: e.throttled,
        }
    }
}

/// The slowdown `now` implies against `then` for `workers` parallel requests.
pub(super) fn hardware_factor(then: &Hw, now: &Hw, workers: usize) -> f64 {
    let clock = match (then.freq_ratio, now.freq_ratio) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => a / b,
        _ => 1.0,
    };
    let cores = match (then.online, now.online) {
        (Some(a), Some(b)) if a > 0 && b > 0 => {
            let w = workers.max(1);
            (a.min(w) as f64 / b.min(w) as f64).max(1.0)
        }
        _ => 1.0,
    };
    (clock * cores).clamp(0.1, 100.0)
}

/// Why the slowdown is no longer uniform, if it is not.
pub(super) fn nonuniform(then: &Hw, now: &Hw) -> Option<(DecisionKind, String)> {
    let pct = |r: Option<f64>| {
        r.map(|r| format!("{:.0}%", r * 100.0))
            .unwrap_or_else(|| "unknown".into())
    };
    if then.online != now.online {
        return Some((
            DecisionKind::RetimeCores,
            format!(
                "online CPUs changed from {} to {}",
                then.online.map(|n| n.to_string()).unwrap_or("?".into()),
                now.online.map(|n| n.to_string()).unwrap_or("?".into())
            ),
        ));
    }
    if then.throttled != now.throttled {
        let what = if now.throttled {
            DecisionKind::RetimeThrottle
        } else {
            DecisionKind::RetimeRecovered
        };
        return Some((
            what,
            format!(
                "{} (clock at {} of max, was {})",
                if now.throttled {
                    "the board throttles"
                } else {
                    "the board no longer throttles"
                },
                pct(now.freq_ratio),
                pct(then.freq_ratio)
            ),
        ));
    }
    if let (Some(a), Some(b)) = (then.freq_ratio, now.freq_ratio) {
        if (a - b).abs() > 0.15 {
            return Some((
                DecisionKind::RetimeClock,
                format!(
                    "the CPU clock moved from {} to {} of max",
                    pct(Some(a)),
                    pct(Some(b))
                ),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_factor_and_nonuniform_changes() {
        let full = Hw {
            freq_ratio: Some(1.0),
            online: Some(4),
            throttled: false,
        };
        let slow = Hw {
            freq_ratio: Some(0.4),
            online: Some(4),
            throttled: true,
        };
        assert!((hardware_factor(&full, &slow, 2) - 2.5).abs() < 1e-9);
        let fewer = Hw {
            online: Some(1),
            ..full
        };
        assert!((hardware_factor(&full, &fewer, 2) - 2.0).abs() < 1e-9);
        assert!((hardware_factor(&full, &fewer, 1) - 1.0).abs() < 1e-9);
        assert_eq!(hardware_factor(&Hw::default(), &slow, 2), 1.0);
        assert_eq!(
            nonuniform(&full, &slow).unwrap().0,
            DecisionKind::RetimeThrottle
        );
        assert_eq!(
            nonuniform(&slow, &full).unwrap().0,
            DecisionKind::RetimeRecovered
        );
        assert_eq!(
            nonuniform(&full, &fewer).unwrap().0,
            DecisionKind::RetimeCores
        );
        assert!(nonuniform(&full, &full).is_none());
    }
}
