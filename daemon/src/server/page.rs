//! The status page at `/`: one server-rendered HTML page (no JavaScript)
//! for people: the served model, version and subnet, the budget and the
//! measured latency, the accuracy given up, the search's progress, the
//! Pareto front as an inline SVG chart (the served point marked), recent
//! adaptation decisions and rejected bundles.

use std::fmt::Write;

use axum::extract::State;
use axum::response::Html;

use super::AppState;
use adaptivenet_search::FrontPoint;

/// Escape text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3} ms"))
        .unwrap_or_else(|| "–".into())
}

/// The front as an SVG scatter plot: predicted latency (x) against accuracy
/// (y), the front's staircase, the served subnet in red, the budget as a
/// dashed line.
pub fn front_svg(front: &[FrontPoint], active: Option<&str>, budget_ms: Option<f64>) -> String {
    let (w, h, l, r, t, b) = (640.0, 360.0, 60.0, 20.0, 20.0, 45.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg id="front" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="Pareto front: predicted latency against accuracy">"#
    );
    let _ = write!(
        s,
        r##"<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>"##
    );
    if front.is_empty() {
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#666">no search result yet</text></svg>"##,
            w / 2.0,
            h / 2.0
        );
        return s;
    }
    let xs = front.iter().map(|p| p.predicted_ms);
    let mut x0 = xs.clone().fold(f64::INFINITY, f64::min);
    let mut x1 = xs.fold(f64::NEG_INFINITY, f64::max);
    if let Some(bm) = budget_ms.filter(|b| b.is_finite()) {
        x0 = x0.min(bm);
        x1 = x1.max(bm);
    }
    let ys = front.iter().map(|p| p.accuracy * 100.0);
    let y0 = ys.clone().fold(f64::INFINITY, f64::min);
    let y1 = ys.fold(f64::NEG_INFINITY, f64::max);
    let (x0, x1) = pad(x0, x1);
    let (y0, y1) = pad(y0, y1);
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| h - b - (y - y0) / (y1 - y0) * (h - t - b);
    // Axes, ticks and labels.
    let _ = write!(
        s,
        r##"<g stroke="#333" stroke-width="1"><line x1="{l}" y1="{}" x2="{}" y2="{}"/><line x1="{l}" y1="{t}" x2="{l}" y2="{}"/></g>"##,
        h - b,
        w - r,
        h - b,
        h - b
    );
    for i in 0..=4 {
        let xv = x0 + (x1 - x0) * i as f64 / 4.0;
        let yv = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle" fill="#333">{xv:.2}</text><text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#333">{yv:.1}</text>"##,
            px(xv),
            h - b + 15.0,
            l - 5.0,
            py(yv) + 4.0
        );
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" font-size="12" text-anchor="middle">predicted latency, ms</text><text x="14" y="{}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {})">accuracy, %</text>"##,
        (l + w - r) / 2.0,
        h - 8.0,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0
    );
    if let Some(bm) = budget_ms.filter(|b| b.is_finite()) {
        let _ = write!(
            s,
            r##"<line x1="{0:.1}" y1="{t}" x2="{0:.1}" y2="{1}" stroke="#c60" stroke-dasharray="4 3"/><text x="{2:.1}" y="{3}" font-size="11" fill="#c60">budget {bm:.2} ms</text>"##,
            px(bm),
            h - b,
            px(bm) + 4.0,
            t + 12.0
        );
    }
    // The front's staircase, then the points.
    let mut pts: Vec<&FrontPoint> = front.iter().collect();
    pts.sort_by(|a, b| a.predicted_ms.total_cmp(&b.predicted_ms));
    let mut path = String::new();
    for (i, p) in pts.iter().enumerate() {
        let _ = write!(
            path,
            "{}{:.1},{:.1} ",
            if i == 0 { "M" } else { "L" },
            px(p.predicted_ms),
            py(p.accuracy * 100.0)
        );
    }
    let _ = write!(
        s,
        r##"<path d="{path}" fill="none" stroke="#36c" stroke-width="1.5"/>"##
    );
    for p in &pts {
        let id = p.subnet.to_string();
        let served = active == Some(id.as_str());
        let _ = write!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="{}" fill="{}"><title>{} — {:.3} ms, {:.2}%</title></circle>"##,
            px(p.predicted_ms),
            py(p.accuracy * 100.0),
            if served { 7 } else { 4 },
            if served { "#d22" } else { "#36c" },
            esc(&id),
            p.predicted_ms,
            p.accuracy * 100.0
        );
    }
    s.push_str("</svg>");
    s
}

fn pad(a: f64, b: f64) -> (f64, f64) {
    if (b - a).abs() < 1e-9 {
        (a - 1.0, b + 1.0)
    } else {
        let m = (b - a) * 0.08;
        (a - m, b + m)
    }
}

/// `GET /`: the status page.
pub async fn status_page(State(st): State<AppState>) -> Html<String> {
    let active = st.shared.current();
    let (h_rejected, h_search) = {
        let h = st.shared.history();
        (h.rejected.clone(), h.search.clone())
    };
    let ad = st.shared.adapt.status().clone();
    let measured = st.shared.metrics.percentiles();
    let r = active.as_ref().and_then(|a| a.result.clone());
    let subnet = active.as_ref().map(|a| a.engine.subnet.to_string());
    let budget = ad.budget_ms.or_else(|| {
        let c = st.shared.adapt.config()?;
        r.as_ref().map(|r| c.latency_budget.budget_ms(r.oracle_ms))
    });
    let served = active
        .as_ref()
        .and_then(|a| r.as_ref().and_then(|r| r.point(&a.engine.subnet).cloned()));
    let mut p = String::new();
    p.push_str(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>adaptived</title><style>
body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:14px}
th{background:#f3f3f3}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.2em}.subnet{font-family:monospace}
</style></head><body>"#,
    );
    let _ = write!(p, "<h1>adaptived {}</h1>", esc(env!("CARGO_PKG_VERSION")));
    p.push_str("<table id=\"summary\">");
    let row = |p: &mut String, k: &str, v: String| {
        let _ = write!(p, "<tr><th>{k}</th><td>{v}</td></tr>");
    };
    match &active {
        Some(a) => {
            row(&mut p, "model", esc(a.name()));
            row(&mut p, "version", a.version().to_string());
            row(
                &mut p,
                "active subnet",
                format!(
                    "<span class=\"subnet\" id=\"active-subnet\">{}</span>",
                    esc(subnet.as_deref().unwrap_or(""))
                ),
            );
            row(
                &mut p,
                "serving since",
                esc(&crate::clock::rfc3339(a.since)),
            );
        }
        None => row(
            &mut p,
            "model",
            "none yet: drop a signed bundle into the bundle folder".into(),
        ),
    }
    row(&mut p, "latency budget", ms(budget));
    row(
        &mut p,
        "measured latency (p50 / p95)",
        format!(
            "{} / {} over {} runs",
            ms(measured.p50),
            ms(measured.p95),
            measured.count
        ),
    );
    if let Some(r) = &r {
        row(
            &mut p,
            "accuracy (oracle / served / given up)",
            match &served {
                _ if r.images == 0 => "not measured: no validation_data on this board".to_string(),
                Some(s) => format!(
                    "{:.2}% / {:.2}% / {:.2} points on {} images",
                    r.oracle_accuracy * 100.0,
                    s.accuracy * 100.0,
                    (r.oracle_accuracy - s.accuracy) * 100.0,
                    s.images
                ),
                None => format!(
                    "{:.2}% (oracle) on {} images",
                    r.oracle_accuracy * 100.0,
                    r.images
                ),
            },
        );
    }
    let search = match &h_search.progress {
        Some(pr) => format!(
            "{:?}: {} {}/{} ({:.1}%){}",
            h_search.state,
            esc(&pr.doing),
            pr.done,
            pr.total,
            pr.percent,
            pr.eta_s
                .map(|e| format!(", about {e:.0} s left"))
                .unwrap_or_default()
        ),
        None => format!("{:?}", h_search.state).to_lowercase(),
    };
    row(&mut p, "search", search);
    p.push_str("</table>");
    p.push_str("<h2>Pareto front</h2>");
    p.push_str(&front_svg(
        r.as_ref().map(|r| r.front()).unwrap_or(&[]),
        subnet.as_deref(),
        budget,
    ));
    p.push_str("<h2>Recent decisions</h2><table id=\"decisions\"><tr><th>time</th><th>kind</th><th>from</th><th>to</th><th>reason</th></tr>");
    for d in ad.decisions.iter().rev().take(15) {
        let _ = write!(
            p,
            "<tr><td>{}</td><td>{}</td><td class=\"subnet\">{}</td><td class=\"subnet\">{}</td><td>{}</td></tr>",
            esc(&d.time),
            esc(&d.kind.to_string()),
            esc(d.from.as_deref().unwrap_or("")),
            esc(d.to.as_deref().unwrap_or("")),
            esc(&d.reason)
        );
    }
    p.push_str("</table><h2>Rejected bundles</h2><table id=\"rejected\"><tr><th>time</th><th>file</th><th>reason</th></tr>");
    for x in h_rejected.iter().rev().take(15) {
        let _ = write!(
            p,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&x.time),
            esc(&x.file),
            esc(&x.reason)
        );
    }
    p.push_str("</table><p>JSON: <a href=\"/v2\">/v2</a>, <code>/v2/models/{name}/adaptation</code>, <a href=\"/metrics\">/metrics</a></p></body></html>");
    Html(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_marks_the_served_point_and_escapes_text() {
        assert_eq!(esc("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
        let svg = front_svg(&[], None, None);
        assert!(svg.starts_with("<svg") && svg.contains("no search result yet"));
    }
}
