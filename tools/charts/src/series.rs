//! What the charts draw, taken from the records: pure functions, tested without
//! drawing anything.

use crate::bench_json::Record;

/// Points of one variant in one run, sorted by x.
#[derive(Debug, PartialEq)]
pub struct Line {
    pub variant: String,
    pub run: String,
    pub points: Vec<(f64, f64)>,
}

/// `conn_rate` of `variant` as a ratio to the same run's `direct` at the same size,
/// one line per run that measured both.
pub fn ratio_to_direct(records: &[Record], bench: &str, variant: &str) -> Vec<Line> {
    let rate = |r: &&Record| r.bench == bench && r.metric == "conn_rate";
    let mut lines: Vec<Line> = Vec::new();
    for r in records.iter().filter(rate).filter(|r| r.variant == variant) {
        let direct = records
            .iter()
            .filter(rate)
            .find(|d| d.variant == "direct" && d.run == r.run && d.size == r.size);
        let (Some(size), Some(direct)) = (r.size, direct) else {
            continue;
        };
        let point = (size as f64, r.median / direct.median);
        match lines.iter_mut().find(|l| l.run == r.run) {
            Some(l) => l.points.push(point),
            None => lines.push(Line {
                variant: variant.to_owned(),
                run: r.run.clone(),
                points: vec![point],
            }),
        }
    }
    for l in &mut lines {
        l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    lines
}

/// The `metric` of `variant` in seconds against the size, over every run (the
/// points of all runs in one line, sorted by size), for records in `ms` or `s`.
pub fn seconds_by_size(records: &[Record], bench: &str, variant: &str, metric: &str) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = records
        .iter()
        .filter(|r| r.bench == bench && r.variant == variant && r.metric == metric)
        .filter_map(|r| {
            let per_second = match r.unit.as_str() {
                "ms" => 1e3,
                "s" => 1.0,
                _ => return None,
            };
            Some((r.size? as f64, r.median / per_second))
        })
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// One bar: a median and its range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bar {
    pub median: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// The runs of `bench` that measured `metric` (in the order they first appear), each
/// with its commit and, per variant of `variants`, its bar (if measured).
pub fn bars_by_run(
    records: &[Record],
    bench: &str,
    metric: &str,
    variants: &[&str],
) -> Vec<(String, Option<String>, Vec<Option<Bar>>)> {
    let chosen: Vec<&Record> = records
        .iter()
        .filter(|r| r.bench == bench && r.metric == metric)
        .collect();
    let mut runs: Vec<(String, Option<String>)> = Vec::new();
    for r in &chosen {
        if !runs.iter().any(|(run, _)| *run == r.run) {
            runs.push((r.run.clone(), r.commit.clone()));
        }
    }
    runs.into_iter()
        .map(|(run, commit)| {
            let bars = variants
                .iter()
                .map(|v| {
                    chosen
                        .iter()
                        .find(|r| r.run == run && r.variant == *v)
                        .map(|r| Bar {
                            median: r.median,
                            min: r.min,
                            max: r.max,
                        })
                })
                .collect();
            (run, commit, bars)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::bench_json::parse;

    const DATA: &str = r#"
{"bench":"services","run":"a","variant":"direct","size":1,"metric":"conn_rate","unit":"conn/s","median":200,"samples":5,"date":"2026-11-23"}
{"bench":"services","run":"a","variant":"iptables","size":1000,"metric":"conn_rate","unit":"conn/s","median":50,"samples":5,"date":"2026-11-23"}
{"bench":"services","run":"a","variant":"direct","size":1000,"metric":"conn_rate","unit":"conn/s","median":100,"samples":5,"date":"2026-11-23"}
{"bench":"services","run":"a","variant":"iptables","size":1,"metric":"conn_rate","unit":"conn/s","median":180,"samples":5,"date":"2026-11-23"}
{"bench":"services","run":"b","variant":"iptables","size":20000,"metric":"conn_rate","unit":"conn/s","median":30,"samples":5,"date":"2026-11-23"}
{"bench":"services","run":"a","variant":"iptables","size":1000,"metric":"program","unit":"ms","median":1011,"samples":1,"date":"2026-11-23"}
{"bench":"services","run":"b","variant":"iptables","size":20000,"metric":"program","unit":"s","median":73.6,"samples":1,"date":"2026-11-23"}
{"bench":"overlay","run":"run 1","variant":"routed","metric":"conn_rate","unit":"conn/s","median":12658,"min":11080,"max":14318,"samples":6,"date":"2026-12-04","commit":"f997d2c"}
{"bench":"overlay","run":"run 2","variant":"flannel","metric":"conn_rate","unit":"conn/s","median":8310,"samples":10,"date":"2026-12-04"}
"#;

    fn data() -> Vec<Record> {
        parse(DATA, Path::new("test.jsonl")).expect("test data")
    }

    #[test]
    fn ratios_pair_a_variant_with_its_own_runs_direct() {
        let lines = ratio_to_direct(&data(), "services", "iptables");
        // Run b has no direct figure: no line.
        assert_eq!(
            lines,
            vec![Line {
                variant: "iptables".to_owned(),
                run: "a".to_owned(),
                points: vec![(1.0, 0.9), (1000.0, 0.5)],
            }]
        );
    }

    #[test]
    fn times_are_seconds_whatever_the_unit() {
        assert_eq!(
            seconds_by_size(&data(), "services", "iptables", "program"),
            vec![(1000.0, 1.011), (20000.0, 73.6)]
        );
    }

    #[test]
    fn bars_per_run_and_variant() {
        let runs = bars_by_run(&data(), "overlay", "conn_rate", &["routed", "flannel"]);
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[0].0.as_str(), runs[0].1.as_deref()),
            ("run 1", Some("f997d2c"))
        );
        assert_eq!(
            runs[0].2,
            vec![
                Some(Bar {
                    median: 12658.0,
                    min: Some(11080.0),
                    max: Some(14318.0)
                }),
                None
            ]
        );
        assert_eq!(runs[1].2[1].map(|b| b.median), Some(8310.0));
    }
}
