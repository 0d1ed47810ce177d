//! The SVG plots of the reports, drawn with plotters' SVG backend (no font
//! libraries: the SVG carries the text and the viewer renders it).

use std::path::Path;

use plotters::prelude::*;

use super::overhead::{OverheadRow, DEPTHS, PAYLOADS};
use super::recovery::RecoveryRow;
use super::table::size;

/// The text font of every plot.
const FONT: &str = "sans-serif";

/// Colors of the series, in order.
const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

/// A log-scale range covering `values` (zeros and negatives ignored) with
/// some headroom; `floor` when nothing is positive.
fn log_range(values: impl Iterator<Item = f64>, floor: f64) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return floor..floor * 10.0;
    }
    (lo / 2.0).max(floor * 1e-3)..hi * 2.0
}

/// Keeps a value drawable on a log axis whose range starts at `lo`.
fn visible(v: f64, lo: f64) -> f64 {
    if v.is_finite() && v > lo {
        v
    } else {
        lo
    }
}

/// A value on a log axis: no decimals from 10 up.
fn axis_number(v: &f64) -> String {
    if *v >= 10.0 {
        format!("{v:.0}")
    } else if *v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Throughput and median latency by payload size, holdfast and baseline at
/// each queue depth: two panels side by side.
pub(crate) fn overhead(path: &Path, rows: &[OverheadRow]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "holdfast bench overhead: echo through holdfast vs plain TCP (127.0.0.1)",
        (FONT, 18),
    )?;
    let panels = root.split_evenly((1, 2));
    type Metric = (&'static str, fn(&OverheadRow, bool) -> f64);
    let metrics: [Metric; 2] = [
        ("throughput (MiB/s, log)", |r, holdfast| {
            if holdfast {
                r.holdfast.mib_per_s
            } else {
                r.baseline.mib_per_s
            }
        }),
        ("p50 latency (µs, log)", |r, holdfast| {
            if holdfast {
                r.holdfast.p50_us
            } else {
                r.baseline.p50_us
            }
        }),
    ];
    let last = PAYLOADS.len() as i32;
    for (panel, (name, value)) in panels.iter().zip(metrics) {
        let y = log_range(
            rows.iter().flat_map(|r| [value(r, true), value(r, false)]),
            0.1,
        );
        let lo = y.start;
        let mut chart = ChartBuilder::on(panel)
            .caption(name, (FONT, 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-1i32..last, y.log_scale())?;
        chart
            .configure_mesh()
            .x_labels(PAYLOADS.len() + 2)
            .x_label_formatter(&|i| {
                usize::try_from(*i)
                    .ok()
                    .and_then(|i| PAYLOADS.get(i))
                    .map(|p| size(*p))
                    .unwrap_or_default()
            })
            .x_desc("payload")
            .y_label_formatter(&axis_number)
            .label_style((FONT, 12))
            .draw()?;
        for (&depth, &c) in DEPTHS.iter().zip(&PALETTE) {
            for (holdfast, who) in [(true, "holdfast"), (false, "baseline")] {
                let points: Vec<(i32, f64)> = rows
                    .iter()
                    .filter(|r| r.depth == depth)
                    .filter_map(|r| {
                        let i = PAYLOADS.iter().position(|p| *p == r.payload_bytes)?;
                        Some((i as i32, visible(value(r, holdfast), lo)))
                    })
                    .collect();
                // holdfast thick, the baseline thin, in the depth's color.
                let width = if holdfast { 3 } else { 1 };
                let style = c.stroke_width(width);
                chart
                    .draw_series(LineSeries::new(points, style).point_size(4))?
                    .label(format!("{who}, QD {depth}"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(width))
                    });
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Time to the first completed call by fault: p50, p99 and max bars, the
/// target as a black line where the issue sets one.
pub(crate) fn recovery(path: &Path, rows: &[RecoveryRow]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let y = log_range(
        rows.iter()
            .flat_map(|r| [r.p50_ms, r.max_ms, r.target_ms.unwrap_or(0.0)]),
        0.1,
    );
    let lo = y.start;
    let n = rows.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "holdfast bench recovery: fault to first completed call (ms, log)",
            (FONT, 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, y.log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() > 0.01 || i < 0.0 {
                return String::new();
            }
            rows.get(i as usize)
                .map(|r| r.fault.clone())
                .unwrap_or_default()
        })
        .y_desc("ms")
        .y_label_formatter(&axis_number)
        .label_style((FONT, 12))
        .draw()?;
    type Stat = (&'static str, fn(&RecoveryRow) -> f64);
    let stats: [Stat; 3] = [
        ("p50", |r| r.p50_ms),
        ("p99", |r| r.p99_ms),
        ("max", |r| r.max_ms),
    ];
    let width = 0.8 / stats.len() as f64;
    for (k, ((name, stat), color)) in stats.iter().zip(PALETTE).enumerate() {
        let left = |i: usize| i as f64 - 0.4 + k as f64 * width;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                Rectangle::new(
                    [(left(i), lo), (left(i) + width * 0.9, visible(stat(r), lo))],
                    color.filled(),
                )
            }))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
            let t = r.target_ms?;
            let x = i as f64;
            Some(PathElement::new(
                vec![(x - 0.45, t), (x + 0.45, t)],
                BLACK.stroke_width(2),
            ))
        }))?
        .label("target (p99)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ranges_ignore_zeros_and_keep_headroom() {
        let r = log_range([0.0, 2.0, 50.0].into_iter(), 0.1);
        assert_eq!(r, 1.0..100.0);
        assert_eq!(log_range([0.0].into_iter(), 0.1), 0.1..1.0);
        assert_eq!(visible(0.0, 1.0), 1.0);
        assert_eq!(visible(5.0, 1.0), 5.0);
    }
}
