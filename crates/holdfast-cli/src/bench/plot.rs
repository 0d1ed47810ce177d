//! The SVG plots of the reports, drawn with plotters' SVG backend (no font
//! libraries: the SVG carries the text and the viewer renders it).

use std::path::Path;

use plotters::prelude::*;

use super::block::{BlockRow, SYSTEMS, WORKLOADS};
use super::overhead::{OverheadRow, DEPTHS, PAYLOADS};
use super::recovery::RecoveryRow;
use super::scale::{IdleRow, ScaleReport, IDLE_KIB_TARGET};
use super::table::size;

/// The text font of every plot.
const FONT: &str = "sans-serif";

/// Colors of the series, in order.
const PALETTE: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
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

/// Draws the series legend in the plots' common style.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("could not draw a legend: {e}"))
}

/// Labels the categories of a bar chart at whole x values (`0`, `1`, …).
fn category(labels: &[String]) -> impl Fn(&f64) -> String + '_ {
    move |x| {
        let i = x.round();
        if (x - i).abs() > 0.01 || i < 0.0 {
            return String::new();
        }
        labels.get(i as usize).cloned().unwrap_or_default()
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
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
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
    let labels: Vec<String> = rows.iter().map(|r| r.fault.clone()).collect();
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
        .x_label_formatter(&category(&labels))
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
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

/// IOPS of every system relative to qemu-nbd's, by job: one bar per system,
/// a line at 1.0 (qemu-nbd itself). Jobs without a qemu-nbd row are left
/// out.
pub(crate) fn block(path: &Path, rows: &[BlockRow]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let jobs: Vec<&str> = WORKLOADS
        .iter()
        .filter_map(|(rw, b, d)| {
            rows.iter()
                .find(|r| r.rw == *rw && r.block_bytes == *b && r.depth == *d)
                .map(|r| r.workload.as_str())
        })
        .collect();
    let y = log_range(rows.iter().filter_map(|r| r.vs_qemu_nbd), 0.1);
    let lo = y.start.min(0.5);
    // Headroom above the tallest bar for the legend.
    let hi = (y.end * 4.0).max(2.0);
    let n = jobs.len().max(1);
    let labels: Vec<String> = jobs.iter().map(|j| (*j).to_owned()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "holdfast bench block: IOPS relative to fio against qemu-nbd (log)",
            (FONT, 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&category(&labels))
        .y_desc("x qemu-nbd")
        .y_label_formatter(&axis_number)
        .label_style((FONT, 12))
        .draw()?;
    let width = 0.8 / SYSTEMS.len() as f64;
    for (k, (system, color)) in SYSTEMS.iter().zip(PALETTE).enumerate() {
        let left = |i: usize| i as f64 - 0.4 + k as f64 * width;
        chart
            .draw_series(jobs.iter().enumerate().filter_map(|(i, job)| {
                let r = rows
                    .iter()
                    .find(|r| r.workload == *job && r.system == *system)?;
                let v = r.vs_qemu_nbd?;
                Some(Rectangle::new(
                    [(left(i), lo), (left(i) + width * 0.9, visible(v, lo))],
                    color.filled(),
                ))
            }))?
            .label(*system)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(-0.5, 1.0), (n as f64 - 0.5, 1.0)],
        BLACK.stroke_width(1),
    )))?;
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

/// The scale scenario: resident memory over the fault-injected run (left),
/// and KiB per idle session at each count, target and initiator side, with
/// the bound as a black line (right).
pub(crate) fn scale(path: &Path, report: &ScaleReport) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "holdfast bench scale: resident memory (127.0.0.1)",
        (FONT, 18),
    )?;
    let panels = root.split_evenly((1, 2));
    let samples = &report.soak.samples;
    let t_max = samples.last().map_or(1.0, |s| s.seconds).max(1.0);
    let m_max = samples.iter().map(|s| s.mib).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&panels[0])
        .caption("RSS during torture --mode log with faults", (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..m_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("MiB")
        .label_style((FONT, 12))
        .draw()?;
    chart.draw_series(LineSeries::new(
        samples.iter().map(|s| (s.seconds, s.mib)),
        PALETTE[0].stroke_width(2),
    ))?;

    let rows = &report.idle;
    let n = rows.len().max(1);
    let y_max = rows
        .iter()
        .flat_map(|r| [r.target_kib_per_session, r.initiator_kib_per_session])
        .fold(IDLE_KIB_TARGET, f64::max)
        * 1.5;
    let labels: Vec<String> = rows
        .iter()
        .map(|r| format!("{} sessions", r.sessions))
        .collect();
    let mut chart = ChartBuilder::on(&panels[1])
        .caption("KiB per idle session", (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&category(&labels))
        .y_desc("KiB")
        .label_style((FONT, 12))
        .draw()?;
    type Side = (&'static str, fn(&IdleRow) -> f64);
    let sides: [Side; 2] = [
        ("target", |r| r.target_kib_per_session),
        ("initiator (this process)", |r| r.initiator_kib_per_session),
    ];
    for (k, ((name, value), color)) in sides.iter().zip(PALETTE).enumerate() {
        let left = |i: usize| i as f64 - 0.35 + k as f64 * 0.35;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                Rectangle::new(
                    [(left(i), 0.0), (left(i) + 0.3, value(r).max(0.0))],
                    color.filled(),
                )
            }))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(-0.5, IDLE_KIB_TARGET), (n as f64 - 0.5, IDLE_KIB_TARGET)],
            BLACK.stroke_width(2),
        )))?
        .label(format!("the issue's bound: {IDLE_KIB_TARGET} KiB"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
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
