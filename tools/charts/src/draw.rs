//! The charts, drawn with plotters' SVG backend (text left to the viewer's fonts).

use plotters::{
    coord::{CoordTranslate, Shift},
    prelude::*,
};

use crate::{
    bench_json::Record,
    series::{Bar, bars_by_run, ratio_to_direct, seconds_by_size},
};

const SIZE: (u32, u32) = (900, 540);
const FONT: &str = "sans-serif";
const GREY: RGBColor = RGBColor(120, 120, 120);
const LIGHT_GREY: RGBColor = RGBColor(190, 190, 190);
const BLUE: RGBColor = RGBColor(31, 119, 180);
const LIGHT_BLUE: RGBColor = RGBColor(120, 180, 225);
const RED: RGBColor = RGBColor(214, 39, 40);
const ORANGE: RGBColor = RGBColor(245, 140, 30);
/// Services on the x axis: 1 to 100,000, log scale.
const SERVICES: std::ops::Range<f64> = 0.6..180_000.0;

/// Every chart: (file name, SVG).
pub fn all(records: &[Record]) -> anyhow::Result<Vec<(&'static str, String)>> {
    Ok(vec![
        ("services-conn-rate.svg", services_conn_rate(records)?),
        ("services-programming.svg", services_programming(records)?),
        ("overlay.svg", bars_of_runs(records, &OVERLAY)?),
        ("pod-to-pod.svg", bars_of_runs(records, &POD_TO_POD)?),
    ])
}

/// A white SVG canvas of `size` drawing into `out` (complete once presented).
fn canvas(out: &mut String, size: (u32, u32)) -> anyhow::Result<DrawingArea<SVGBackend<'_>, Shift>> {
    let root = SVGBackend::with_string(out, size).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root)
}

/// The chart's legend, at `position`, in `FONT` of `size`.
fn draw_legend<'a, 'b: 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
    position: SeriesLabelPosition,
    size: u32,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, size))
        .background_style(WHITE.mix(0.9))
        .border_style(GREY)
        .draw()?;
    Ok(())
}

/// 1, 10, 100, 1,000, 10,000, 100,000.
fn count(x: f64) -> String {
    let n = x.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration in seconds as the tables write it: `0.1 ms`, `652 ms`, `2.8 s`, `266 s`.
fn duration(s: f64) -> String {
    match s {
        s if s < 0.01 => format!("{} ms", trim(s * 1e3, 1)),
        s if s < 1.0 => format!("{:.0} ms", s * 1e3),
        s if s < 100.0 => format!("{} s", trim(s, 1)),
        s => format!("{s:.0} s"),
    }
}

/// `v` with at most `decimals` decimals, trailing zeros dropped.
fn trim(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// A value written beside a point (above and to the right of it), in `color`.
fn label_style(color: RGBColor) -> TextStyle<'static> {
    (FONT, 13).into_font().color(&color)
}

/// Where a point's value is written, from the point (pixels).
const LABEL_AT: (i32, i32) = (6, -18);

/// The runs of `metric` of `bench`, in the order the records give them, each with
/// what the legend says of it (its name, and its tree where known).
fn runs(records: &[Record], bench: &str, metric: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for r in records.iter().filter(|r| r.bench == bench && r.metric == metric) {
        if !out.iter().any(|(run, _)| *run == r.run) {
            let legend = match &r.commit {
                Some(c) => format!("run: {} ({c})", r.run),
                None => format!("run: {}", r.run),
            };
            out.push((r.run.clone(), legend));
        }
    }
    out
}

/// Chart 1: ClusterIP new connections/s, a ratio to the same run's direct rate.
fn services_conn_rate(records: &[Record]) -> anyhow::Result<String> {
    let runs = runs(records, "services", "conn_rate");
    let mut out = String::new();
    {
        let root = &canvas(&mut out, SIZE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(
                "ClusterIP: new TCP connections/s against the number of Services",
                (FONT, 22),
            )
            .margin(18)
            .x_label_area_size(50)
            .y_label_area_size(64)
            .build_cartesian_2d(SERVICES.log_scale(), 0.0..1.3)?;
        chart
            .configure_mesh()
            .x_desc("Services, 10 endpoints each (log scale)")
            .y_desc("conn/s / direct to the pod IPs (same run)")
            .x_label_formatter(&|x| count(*x))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            .draw()?;
        chart
            .draw_series(DashedLineSeries::new(
                [(SERVICES.start, 1.0), (SERVICES.end, 1.0)],
                6,
                4,
                GREY.stroke_width(1),
            ))?
            .label("direct (pod IPs, no translation) = 1")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GREY.stroke_width(1)));
        let variants = [
            ("weir", "Weir ClusterIP (eBPF)", BLUE),
            ("iptables", "kube-proxy iptables rules", RED),
            ("nftables", "kube-proxy nftables rules", ORANGE),
        ];
        for (variant, name, color) in variants {
            for (i, line) in ratio_to_direct(records, "services", variant).iter().enumerate() {
                let series =
                    chart.draw_series(LineSeries::new(line.points.clone(), color.stroke_width(2)))?;
                if i == 0 {
                    series
                        .label(name)
                        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
                }
                let run = runs.iter().position(|(r, _)| *r == line.run).unwrap_or(0);
                // A marker per run (circle, triangle, square): the runs of one variant tell apart.
                let style = color.filled();
                match run % 3 {
                    0 => chart.draw_series(line.points.iter().map(|&p| Circle::new(p, 4, style)))?,
                    1 => chart.draw_series(line.points.iter().map(|&p| TriangleMarker::new(p, 6, style)))?,
                    _ => chart.draw_series(
                        line.points
                            .iter()
                            .map(|&p| EmptyElement::at(p) + Rectangle::new([(-4, -4), (4, 4)], style)),
                    )?,
                };
                // The ratio beside every point but the 1-Service ones (where all runs meet).
                chart.draw_series(line.points.iter().filter(|p| p.0 > 1.0).map(|&(x, y)| {
                    EmptyElement::at((x, y)) + Text::new(format!("{y:.2}"), LABEL_AT, label_style(color))
                }))?;
            }
        }
        for (i, (_, legend)) in runs.iter().enumerate() {
            let anno = chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
                .label(legend.as_str());
            let style = GREY.filled();
            match i % 3 {
                0 => anno.legend(move |(x, y)| Circle::new((x + 10, y), 4, style)),
                1 => anno.legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, style)),
                _ => anno.legend(move |(x, y)| Rectangle::new([(x + 6, y - 4), (x + 14, y + 4)], style)),
            };
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerLeft, 14)?;
        root.present()?;
    }
    Ok(out)
}

/// Chart 2: time to program the Services from empty, log-log.
fn services_programming(records: &[Record]) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let root = &canvas(&mut out, SIZE)?;
        let mut chart = ChartBuilder::on(root)
            .caption("Programming N Services x 10 endpoints from empty", (FONT, 22))
            .margin(18)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(SERVICES.log_scale(), (5e-5..2_000.0).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("Services, 10 endpoints each (log scale)")
            .y_desc("time (log scale)")
            .x_label_formatter(&|x| count(*x))
            .y_label_formatter(&|y| duration(*y))
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 14))
            .draw()?;
        // Values below their points where they would meet another series' above.
        let (above, below) = (LABEL_AT, (6, 4));
        let series = [
            (
                "weir",
                "map_sync",
                "Weir: map writes (agent sync_ms)",
                BLUE,
                below,
            ),
            (
                "weir",
                "program",
                "Weir: manifests renamed in -> synced",
                LIGHT_BLUE,
                above,
            ),
            (
                "iptables",
                "program",
                "iptables-restore (iptables-nft)",
                RED,
                below,
            ),
            ("nftables", "program", "nft -f", ORANGE, above),
        ];
        for (variant, metric, name, color, at) in series {
            let points = seconds_by_size(records, "services", variant, metric);
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            chart.draw_series(
                points
                    .iter()
                    .filter(|p| p.0 >= 1_000.0)
                    .map(|&(x, y)| EmptyElement::at((x, y)) + Text::new(duration(y), at, label_style(color))),
            )?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft, 14)?;
        root.present()?;
    }
    Ok(out)
}

/// A chart of connections/s and one stream's throughput, a group of bars per
/// run: `bench`'s records of `variants` (record name, legend, colour).
struct Bars {
    bench: &'static str,
    title: &'static str,
    variants: &'static [(&'static str, &'static str, RGBColor)],
}

/// Chart 3: cross-node pod to pod, run by run.
const OVERLAY: Bars = Bars {
    bench: "overlay",
    title: "Between nodes: pod to pod on another node (medians, min-max over the rounds)",
    variants: &[
        ("routed", "routed (ptp + static routes)", GREY),
        ("flannel", "flannel-style (bridge + kernel VXLAN)", ORANGE),
        ("weir-native", "Weir --routing native", BLUE),
        ("weir-vxlan", "Weir --routing vxlan", LIGHT_BLUE),
    ],
};

/// Chart 4: pod to pod on one node and across two, Weir against the
/// reference `ptp` plugin's kernel routing, run by run.
const POD_TO_POD: Bars = Bars {
    bench: "pod_to_pod",
    title: "Pod to pod: Weir against kernel routing (medians, min-max over the rounds)",
    variants: &[
        ("same-ptp", "same node: ptp (kernel routing)", GREY),
        ("same-weir-peer", "same node: Weir (bpf_redirect_peer)", BLUE),
        ("cross-ptp", "two nodes: ptp + static routes", LIGHT_GREY),
        ("cross-weir-peer", "two nodes: Weir --routing native", LIGHT_BLUE),
    ],
};

/// Draws a [`Bars`] chart.
fn bars_of_runs(records: &[Record], chart: &Bars) -> anyhow::Result<String> {
    let Bars {
        bench,
        title,
        variants,
    } = chart;
    let names: Vec<&str> = variants.iter().map(|v| v.0).collect();
    let mut out = String::new();
    {
        let root = &canvas(&mut out, (1100, 540))?;
        let body = root.titled(title, (FONT, 22))?;
        let (left, right) = body.split_horizontally(550);
        let panels = [
            (&left, "conn_rate", "new TCP connections/s", "conn/s", true),
            (&right, "throughput", "one TCP stream (iperf3)", "Gbit/s", false),
        ];
        for (area, metric, caption, unit, legend) in panels {
            let runs = bars_by_run(records, bench, metric, &names);
            let top = runs
                .iter()
                .flat_map(|(_, _, bars)| bars.iter().flatten())
                .map(|b: &Bar| b.max.unwrap_or(b.median))
                .fold(0.0, f64::max)
                * 1.45;
            let n = runs.len();
            let mut chart = ChartBuilder::on(area)
                .caption(caption, (FONT, 18))
                .margin(14)
                .x_label_area_size(50)
                .y_label_area_size(64)
                .build_cartesian_2d(0.5..n as f64 + 0.5, 0.0..top)?;
            let run_label = |x: &f64| {
                let i = x.round();
                match runs.get((i as usize).wrapping_sub(1)) {
                    Some((run, commit, _)) if (x - i).abs() < 1e-6 => {
                        let run = run.trim_start_matches("run ");
                        commit.as_ref().map_or(run.to_owned(), |c| format!("{run}: {c}"))
                    }
                    _ => String::new(),
                }
            };
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n)
                .x_label_formatter(&run_label)
                .x_desc("run: tree")
                .y_desc(unit)
                .y_label_formatter(&|y| {
                    if top > 1_000.0 {
                        count(*y)
                    } else {
                        format!("{y:.0}")
                    }
                })
                .light_line_style(WHITE)
                .axis_desc_style((FONT, 16))
                .label_style((FONT, 13))
                .draw()?;
            let width = 0.8 / variants.len() as f64;
            for (k, (_, name, color)) in variants.iter().enumerate() {
                let x0 = |run: usize| (run + 1) as f64 - 0.4 + k as f64 * width;
                let bars: Vec<(usize, Bar)> = runs
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (_, _, bars))| bars[k].map(|b| (i, b)))
                    .collect();
                let series = chart.draw_series(bars.iter().map(|&(i, b)| {
                    Rectangle::new(
                        [(x0(i) + 0.01, 0.0), (x0(i) + width - 0.01, b.median)],
                        color.filled(),
                    )
                }))?;
                if legend {
                    let color = *color;
                    series
                        .label(*name)
                        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled()));
                }
                chart.draw_series(bars.iter().filter_map(|&(i, b)| {
                    let (min, max) = (b.min?, b.max?);
                    Some(ErrorBar::new_vertical(
                        x0(i) + width / 2.0,
                        min,
                        b.median,
                        max,
                        BLACK.stroke_width(1),
                        6,
                    ))
                }))?;
            }
            if legend {
                draw_legend(&mut chart, SeriesLabelPosition::UpperLeft, 13)?;
            }
        }
        root.present()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels() {
        assert_eq!(count(100_000.0), "100,000");
        assert_eq!(count(1.0), "1");
        assert_eq!(duration(1e-4), "0.1 ms");
        assert_eq!(duration(0.652), "652 ms");
        assert_eq!(duration(2.838), "2.8 s");
        assert_eq!(duration(1.0), "1 s");
        assert_eq!(duration(266.112), "266 s");
    }
}
