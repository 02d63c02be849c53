//! The Pareto front of (predicted latency, accuracy), and the choice of a
//! front point under a latency budget.

use adaptivenet_onnx::bundle::SubnetId;
use serde::{Deserialize, Serialize};

/// An evaluated subnet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontPoint {
    pub subnet: SubnetId,
    pub predicted_ms: f64,
    /// Top-1 (or agreement with the oracle path) on the images seen, in [0, 1].
    pub accuracy: f64,
    /// Images the accuracy was measured on.
    pub images: u64,
}

/// Does `a` dominate `b` (no slower, no less accurate, better in one)?
pub fn dominates(a: &FrontPoint, b: &FrontPoint) -> bool {
    a.predicted_ms <= b.predicted_ms
        && a.accuracy >= b.accuracy
        && (a.predicted_ms < b.predicted_ms || a.accuracy > b.accuracy)
}

/// Indices of the non-dominated points, by increasing latency (among equal
/// points the first is kept).
pub fn pareto_front(points: &[FrontPoint]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].accuracy.is_finite() && points[i].predicted_ms.is_finite())
        .collect();
    // by latency, then by accuracy descending
    order.sort_by(|&a, &b| {
        points[a]
            .predicted_ms
            .total_cmp(&points[b].predicted_ms)
            .then(points[b].accuracy.total_cmp(&points[a].accuracy))
    });
    let mut front = Vec::new();
    let mut best = f64::NEG_INFINITY;
    for i in order {
        if points[i].accuracy > best {
            front.push(i);
            best = points[i].accuracy;
        }
    }
    front
}

/// Non-dominated sorting: rank 0 is the front, rank 1 the front of the rest...
pub fn ranks(points: &[FrontPoint]) -> Vec<usize> {
    let mut rank = vec![usize::MAX; points.len()];
    let mut left: Vec<usize> = (0..points.len()).collect();
    let mut r = 0;
    while !left.is_empty() {
        let sub: Vec<FrontPoint> = left.iter().map(|&i| points[i].clone()).collect();
        let f = pareto_front(&sub);
        if f.is_empty() {
            // non-finite points last
            for &i in &left {
                rank[i] = r;
            }
            break;
        }
        let mut keep = Vec::new();
        let on: std::collections::HashSet<usize> = f.iter().map(|&k| left[k]).collect();
        for &i in &left {
            if on.contains(&i) {
                rank[i] = r;
            } else {
                keep.push(i);
            }
        }
        // equal duplicates of front points are not "dominated"; rank them next
        left = keep;
        r += 1;
    }
    rank
}

/// The choice for a budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub point: FrontPoint,
    /// The budget is below the fastest front point (by prediction, or by
    /// measurement when the choice was checked): this is the fastest, and
    /// it does not fit.
    pub over_budget: bool,
}

/// The most accurate front point whose predicted latency fits `budget_ms`;
/// if none fits, the fastest, flagged. `front` is by increasing latency.
pub fn choose(front: &[FrontPoint], budget_ms: f64) -> Option<Choice> {
    let fits = front
        .iter()
        .filter(|p| p.predicted_ms <= budget_ms)
        .max_by(|a, b| {
            a.accuracy
                .total_cmp(&b.accuracy)
                .then(b.predicted_ms.total_cmp(&a.predicted_ms))
        });
    match fits {
        Some(p) => Some(Choice {
            point: p.clone(),
            over_budget: false,
        }),
        None => front
            .iter()
            .min_by(|a, b| a.predicted_ms.total_cmp(&b.predicted_ms))
            .map(|p| Choice {
                point: p.clone(),
                over_budget: true,
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ms: f64, acc: f64) -> FrontPoint {
        FrontPoint {
            subnet: "b0".parse().unwrap(),
            predicted_ms: ms,
            accuracy: acc,
            images: 1,
        }
    }

    #[test]
    fn front_ranks_and_choice() {
        let pts = vec![
            p(1.0, 0.5),
            p(2.0, 0.7),
            p(1.5, 0.4),
            p(3.0, 0.7),
            p(3.0, 0.9),
        ];
        assert_eq!(pareto_front(&pts), vec![0, 1, 4]);
        let r = ranks(&pts);
        assert_eq!(r[0], 0);
        assert_eq!(r[2], 1);
        assert_eq!(r[3], 1);
        let front: Vec<FrontPoint> = pareto_front(&pts).iter().map(|&i| pts[i].clone()).collect();
        let c = choose(&front, 2.5).unwrap();
        assert_eq!(c.point.accuracy, 0.7);
        assert!(!c.over_budget);
        let c = choose(&front, 0.5).unwrap();
        assert!(c.over_budget);
        assert_eq!(c.point.predicted_ms, 1.0);
    }
}
