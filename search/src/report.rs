//! Output of a search: a text table, the JSON report and (feature `chart`)
//! an SVG chart.

use serde::Serialize;

use crate::pipeline::{Chosen, Searched};

/// `oracle` in the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct OracleJson {
    pub subnet: String,
    pub predicted_ms: f64,
    pub measured_ms: f64,
    pub accuracy: f64,
    pub holdout_accuracy: Option<f64>,
}

/// `chosen` and every row of `table` in the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ChosenJson {
    pub budget_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_frac: Option<f64>,
    pub subnet: String,
    pub predicted_ms: f64,
    pub measured_ms: f64,
    pub accuracy: f64,
    pub holdout_accuracy: Option<f64>,
    /// The budget is below the fastest subnet: this is the fastest, and it does not fit.
    pub over_budget: bool,
    /// Measured latency within the budget.
    pub measured_within_budget: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FrontJson {
    pub subnet: String,
    pub predicted_ms: f64,
    pub accuracy: f64,
}

/// The JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct ReportJson {
    pub bundle: serde_json::Value,
    pub device: String,
    pub threads: usize,
    pub oracle: OracleJson,
    pub budget_ms: f64,
    pub chosen: ChosenJson,
    /// The choice at the requested budget and at standard fractions of the oracle's latency.
    pub table: Vec<ChosenJson>,
    pub front: Vec<FrontJson>,
    pub search_seconds: f64,
    pub from_cache: bool,
    pub cache_load_seconds: f64,
    pub method: String,
    pub space_subnets: String,
    pub evaluated: usize,
    pub latency: serde_json::Value,
    pub prefix_tree: serde_json::Value,
    /// Wall time per phase, s: latency table and check (null when not
    /// run), screening, polish, finishing.
    pub phase_seconds: serde_json::Value,
    pub data: serde_json::Value,
}

impl ChosenJson {
    pub fn of(c: &Chosen, frac: Option<f64>) -> ChosenJson {
        ChosenJson {
            budget_ms: c.budget_ms,
            budget_frac: frac,
            subnet: c.choice.point.subnet.to_string(),
            predicted_ms: c.choice.point.predicted_ms,
            measured_ms: c.measured_ms,
            accuracy: c.choice.point.accuracy,
            holdout_accuracy: c.holdout_accuracy,
            over_budget: c.choice.over_budget,
            measured_within_budget: c.measured_ms <= c.budget_ms,
        }
    }
}

fn pct(x: Option<f64>) -> String {
    match x {
        Some(v) => format!("{:.2}", v * 100.0),
        None => "-".into(),
    }
}

/// The budget table as text.
pub fn table_text(rows: &[ChosenJson], oracle: &OracleJson) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:>8} {:>9}  {:<44} {:>9} {:>9} {:>8} {:>8}\n",
        "budget", "budget ms", "chosen subnet", "pred ms", "meas ms", "acc %", "hold %"
    ));
    s.push_str(&format!(
        "{:>8} {:>9.3}  {:<44} {:>9.3} {:>9.3} {:>8} {:>8}\n",
        "oracle",
        oracle.measured_ms,
        oracle.subnet,
        oracle.predicted_ms,
        oracle.measured_ms,
        pct(Some(oracle.accuracy)),
        pct(oracle.holdout_accuracy)
    ));
    for r in rows {
        let b = match r.budget_frac {
            Some(f) => format!("{f:.2}x"),
            None => "given".into(),
        };
        let flag = if r.over_budget { " (!)" } else { "" };
        s.push_str(&format!(
            "{:>8} {:>9.3}  {:<44} {:>9.3} {:>9.3} {:>8} {:>8}{flag}\n",
            b,
            r.budget_ms,
            r.subnet,
            r.predicted_ms,
            r.measured_ms,
            pct(Some(r.accuracy)),
            pct(r.holdout_accuracy)
        ));
    }
    if rows.iter().any(|r| r.over_budget) {
        s.push_str("(!) the budget is below the fastest subnet: the fastest subnet is chosen and does not fit\n");
    }
    s
}

/// Build the JSON report.
pub fn report_json(
    s: &Searched,
    oracle: OracleJson,
    chosen: ChosenJson,
    table: Vec<ChosenJson>,
    data: serde_json::Value,
    bundle: serde_json::Value,
) -> ReportJson {
    let c = &s.cached;
    ReportJson {
        bundle,
        device: c.fingerprint.clone(),
        threads: s.options.threads,
        budget_ms: chosen.budget_ms,
        oracle,
        chosen,
        table,
        front: c
            .outcome
            .front
            .iter()
            .map(|p| FrontJson {
                subnet: p.subnet.to_string(),
                predicted_ms: p.predicted_ms,
                accuracy: p.accuracy,
            })
            .collect(),
        search_seconds: c.search_seconds,
        from_cache: s.from_cache,
        cache_load_seconds: s.cache_load_seconds,
        method: c.outcome.method.clone(),
        space_subnets: s.net.count_subnets().to_string(),
        evaluated: c.outcome.evaluations,
        latency: match (&c.table, &c.check) {
            (Some(t), Some(k)) => serde_json::json!({
                "stem_ms": t.stem_ms,
                "head_ms": t.head_ms,
                "branches_ms": t.branch_ms,
                "warmup": t.timing.warmup,
                "runs": t.timing.runs,
                "back_to_back": t.timing.back_to_back,
                "table_seconds": t.seconds,
                "prediction_mean_error_pct": k.mean_error_pct,
                "prediction_max_error_pct": k.max_error_pct,
                "prediction_vs_chained_mean_error_pct": k.chained_mean_error_pct,
                "prediction_vs_chained_max_error_pct": k.chained_max_error_pct,
                "check_seconds": k.seconds,
                "check": k.rows,
            }),
            _ => serde_json::Value::Null,
        },
        prefix_tree: serde_json::json!({
            "plan_runs_tree": c.outcome.tree_runs,
            "plan_runs_naive": c.outcome.naive_runs,
            "cut_tensor_memory_bound_bytes": c.cache_bound_bytes,
        }),
        phase_seconds: serde_json::json!({
            "latency_table": c.table.as_ref().map(|t| t.seconds),
            "latency_check": c.check.as_ref().map(|k| k.seconds),
            "screening": c.outcome.phases.screening,
            "polish": c.outcome.phases.polish,
            "finishing": c.outcome.phases.finishing,
        }),
        data,
    }
}

/// Write an SVG chart (feature `chart`): every evaluated subnet (grey; hollow when measured on
/// the screening images only), the front (blue line), the oracle (black) and
/// the chosen point (red), with the budget as a vertical line.
#[cfg(feature = "chart")]
#[allow(clippy::too_many_arguments)]
pub fn write_svg(
    path: &std::path::Path,
    points: &[crate::FrontPoint],
    front: &[crate::FrontPoint],
    oracle: (f64, f64),
    chosen: (f64, f64),
    budget_ms: f64,
    full_images: u64,
    title: &str,
) -> crate::Result<()> {
    use crate::error::{invalid, SearchError};
    use plotters::prelude::*;
    let xs = points
        .iter()
        .map(|p| p.predicted_ms)
        .chain([budget_ms, oracle.0])
        .filter(|x| x.is_finite());
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in xs {
        x0 = x0.min(x);
        x1 = x1.max(x);
    }
    let ys = points
        .iter()
        .map(|p| p.accuracy * 100.0)
        .filter(|y| y.is_finite());
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for y in ys.chain([oracle.1 * 100.0]) {
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !(x0.is_finite() && y0.is_finite()) {
        return Err(invalid!("nothing to plot"));
    }
    let (dx, dy) = ((x1 - x0).max(1e-3) * 0.05, (y1 - y0).max(1.0) * 0.05);
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((x0 - dx)..(x1 + dx), (y0 - dy)..(y1 + dy))?;
        chart
            .configure_mesh()
            .x_desc("predicted latency, ms (batch 1)")
            .y_desc("top-1 on the search data, %")
            .draw()?;
        let grey = RGBColor(150, 150, 150);
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.images == full_images)
                    .map(|p| Circle::new((p.predicted_ms, p.accuracy * 100.0), 3, grey.filled())),
            )?
            .label("evaluated subnet")
            .legend(move |(x, y)| Circle::new((x, y), 3, grey.filled()));
        if points.iter().any(|p| p.images != full_images) {
            chart
                .draw_series(
                    points
                        .iter()
                        .filter(|p| p.images != full_images)
                        .map(|p| Circle::new((p.predicted_ms, p.accuracy * 100.0), 3, grey)),
                )?
                .label("screened only (fewer images)")
                .legend(move |(x, y)| Circle::new((x, y), 3, grey));
        }
        chart
            .draw_series(LineSeries::new(
                front.iter().map(|p| (p.predicted_ms, p.accuracy * 100.0)),
                BLUE.stroke_width(2),
            ))?
            .label("Pareto front")
            .legend(|(x, y)| PathElement::new(vec![(x - 8, y), (x + 8, y)], BLUE.stroke_width(2)));
        chart.draw_series(
            front
                .iter()
                .map(|p| Circle::new((p.predicted_ms, p.accuracy * 100.0), 4, BLUE.filled())),
        )?;
        chart
            .draw_series(LineSeries::new(
                [(budget_ms, y0 - dy), (budget_ms, y1 + dy)],
                RED.stroke_width(1),
            ))?
            .label("budget")
            .legend(|(x, y)| PathElement::new(vec![(x - 8, y), (x + 8, y)], RED));
        chart
            .draw_series([Cross::new(
                (oracle.0, oracle.1 * 100.0),
                7,
                BLACK.stroke_width(2),
            )])?
            .label("oracle")
            .legend(|(x, y)| Cross::new((x, y), 5, BLACK.stroke_width(2)));
        chart
            .draw_series([Circle::new(
                (chosen.0, chosen.1 * 100.0),
                7,
                RED.stroke_width(3),
            )])?
            .label("chosen")
            .legend(|(x, y)| Circle::new((x, y), 5, RED.stroke_width(3)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| SearchError::Chart {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
