//! The chart of the comparison: put throughput and p99 latency against the
//! number of clients, one line per server, drawn as SVG with plotters (the
//! SVG backend needs no system fonts or C libraries).

use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;

use crate::compare::Summary;

/// One client count's medians.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub clients: usize,
    pub etcd_tput: Option<f64>,
    pub cairn_tput: Option<f64>,
    pub etcd_p99: Option<f64>,
    pub cairn_p99: Option<f64>,
}

/// The `put@cN` scenarios of a summary, by client count (None if there are none).
pub fn sweep_points(s: &Summary) -> Option<Vec<Point>> {
    let mut pts: Vec<Point> = s
        .scenarios
        .iter()
        .filter_map(|sc| {
            let clients = sc.scenario.strip_prefix("put@c")?.parse().ok()?;
            Some(Point {
                clients,
                etcd_tput: sc.etcd.throughput,
                cairn_tput: sc.cairn.throughput,
                etcd_p99: sc.etcd.p99_ms,
                cairn_p99: sc.cairn.p99_ms,
            })
        })
        .collect();
    pts.sort_by_key(|p| p.clients);
    (!pts.is_empty()).then_some(pts)
}

/// Two panels side by side (throughput, p99) as an SVG document.
pub fn render_svg(points: &[Point]) -> String {
    let mut svg = String::new();
    if let Err(e) = draw(points, &mut svg) {
        return format!("<svg xmlns=\"http://www.w3.org/2000/svg\"><text x=\"10\" y=\"20\">chart failed: {e}</text></svg>");
    }
    svg
}

type Series = fn(&Point) -> (Option<f64>, Option<f64>);

fn draw(points: &[Point], out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(out, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let panels: [(&str, &str, Series, _); 2] = [
        (
            "put throughput",
            "ops/s",
            |p| (p.etcd_tput, p.cairn_tput),
            left,
        ),
        (
            "put p99 latency",
            "ms",
            |p| (p.etcd_p99, p.cairn_p99),
            right,
        ),
    ];
    let max_clients = points.iter().map(|p| p.clients).max().unwrap_or(1).max(2) as f64;
    for (title, unit, series, area) in panels {
        let ymax = points
            .iter()
            .flat_map(|p| {
                let (a, b) = series(p);
                [a, b]
            })
            .flatten()
            .fold(0.0f64, f64::max)
            .max(1e-3)
            * 1.15;
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d((1.0f64..max_clients).log_scale(), 0.0f64..ymax)?;
        chart
            .configure_mesh()
            .x_desc("clients")
            .y_desc(unit)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (name, color, pick) in [
            (
                "etcd",
                BLUE,
                (|s: (Option<f64>, Option<f64>)| s.0) as fn(_) -> _,
            ),
            ("cairn", RED, |s: (Option<f64>, Option<f64>)| s.1),
        ] {
            let data: Vec<(f64, f64)> = points
                .iter()
                .filter_map(|p| Some((p.clients as f64, pick(series(p))?)))
                .collect();
            chart
                .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(
                data.into_iter()
                    .map(|(x, y)| Circle::new((x, y), 4, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_svg_with_both_series() {
        let pts: Vec<Point> = [1, 16, 64, 256]
            .into_iter()
            .map(|c| Point {
                clients: c,
                etcd_tput: Some(100.0 * c as f64),
                cairn_tput: Some(90.0 * c as f64),
                etcd_p99: Some(2.0),
                cairn_p99: None,
            })
            .collect();
        let svg = render_svg(&pts);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.contains("etcd") && svg.contains("cairn"));
        assert!(svg.contains("put throughput"));
    }
}
