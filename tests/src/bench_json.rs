//! The benchmarks' machine-readable results: JSON Lines, one [`Record`] per measured
//! variant, size and metric.
//!
//! A benchmark appends its records as it measures them when `WEIR_BENCH_JSON` names a
//! file (appended to) or an existing directory (`<dir>/<bench>.jsonl`), through a
//! [`Sink`]. `docs/data/*.jsonl` holds the runs published in `docs/benchmarks.md` in
//! this form, and `tools/charts` (`scripts/charts.sh`) draws `docs/charts/*.svg` from
//! them.
//!
//! This file needs only `std`, `serde`, `serde_json` and `thiserror`: `tools/charts`
//! compiles it as a module of its own (`#[path]`) rather than building the lab.

use std::{
    fs::OpenOptions,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// The variable that asks a benchmark for its records.
pub const ENV: &str = "WEIR_BENCH_JSON";

/// One measured figure: a variant's metric at one size, in one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The benchmark: its file name under `tests/benches/` (`services`, `overlay`).
    pub bench: String,
    /// Tells this run from the others of the same benchmark: the start time in UTC for
    /// a run that wrote its own records, the published table's name for a transcribed
    /// one.
    pub run: String,
    /// The variant, as the benchmark's `WEIR_BENCH_VARIANTS` names it (`direct`,
    /// `weir`, `iptables`, `nftables`; `routed`, `flannel`, `weir-native`, ...).
    pub variant: String,
    /// The benchmark's size (the number of Services); absent where it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// What was measured (`conn_rate`, `program`, `map_sync`, `throughput`, ...).
    pub metric: String,
    /// The unit of `median`, `min` and `max` (`conn/s`, `ms`, `s`, `Gbit/s`).
    pub unit: String,
    /// The median of the samples (the value itself for a single measurement).
    pub median: f64,
    /// The smallest sample, where known (a published table may give only the median).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The largest sample, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// How many samples the median is of.
    pub samples: u32,
    /// The run's date (UTC), `YYYY-MM-DD`.
    pub date: String,
    /// The tree the benchmark (and, unless `note` says otherwise, the binaries) was
    /// built from, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Anything else the figure needs to be read right.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A median with the spread of the samples it was taken from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: u32,
}

impl Stats {
    /// `median` (computed by the benchmark, as its tables print it) and the range of
    /// `samples`.
    pub fn new(median: f64, samples: &[f64]) -> Self {
        Self {
            median,
            min: samples.iter().copied().fold(f64::INFINITY, f64::min),
            max: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            samples: u32::try_from(samples.len()).unwrap_or(u32::MAX),
        }
    }

    /// One measurement.
    pub fn single(value: f64) -> Self {
        Self {
            median: value,
            min: value,
            max: value,
            samples: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: not a benchmark record")]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{bench}: {variant} {metric} has no median (no samples?)")]
    NoMedian {
        bench: String,
        variant: String,
        metric: String,
    },
    #[error("encoding a record of {bench}")]
    Encode {
        bench: String,
        source: serde_json::Error,
    },
    #[error("appending to {path}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The records of JSON Lines `text` (blank lines skipped); `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Record>, Error> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| Error::Parse {
                path: path.to_owned(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

/// The records of the JSON Lines file `path`.
pub fn read(path: &Path) -> Result<Vec<Record>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// `records` as JSON Lines, one object per line. A record without a finite median
/// is refused: JSON would write it as `null`, which no reader takes for a number.
pub fn to_lines(records: &[Record]) -> Result<String, Error> {
    let mut out = String::new();
    for r in records {
        if !r.median.is_finite() {
            return Err(Error::NoMedian {
                bench: r.bench.clone(),
                variant: r.variant.clone(),
                metric: r.metric.clone(),
            });
        }
        let line = serde_json::to_string(r).map_err(|source| Error::Encode {
            bench: r.bench.clone(),
            source,
        })?;
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// Appends `records` to `path` (created if missing) in one write.
pub fn append(path: &Path, records: &[Record]) -> Result<(), Error> {
    let text = to_lines(records)?;
    let write = |path: &Path| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?
            .write_all(text.as_bytes())
    };
    write(path).map_err(|source| Error::Write {
        path: path.to_owned(),
        source,
    })
}

/// Where a benchmark's records go, and what every record of this run carries.
pub struct Sink {
    path: Option<PathBuf>,
    bench: String,
    run: String,
    date: String,
    commit: Option<String>,
    note: Option<String>,
}

impl Sink {
    /// The sink `WEIR_BENCH_JSON` asks for (none when unset): a directory gets
    /// `<bench>.jsonl`. The run is named by the current time; the commit is this
    /// source tree's (`git describe --always --dirty`); binaries taken from
    /// `WEIR_BIN_DIR` are noted, as they may come from another tree.
    pub fn from_env(bench: &str) -> Self {
        let path = std::env::var_os(ENV).filter(|v| !v.is_empty()).map(|v| {
            let p = PathBuf::from(v);
            if p.is_dir() {
                p.join(format!("{bench}.jsonl"))
            } else {
                p
            }
        });
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (date, time) = utc(secs);
        let commit = path.as_ref().and_then(|_| git_describe());
        let note = std::env::var("WEIR_BIN_DIR")
            .ok()
            .map(|dir| format!("binaries from WEIR_BIN_DIR={dir}"));
        Self {
            path,
            bench: bench.to_owned(),
            run: format!("{date}T{time}Z"),
            date,
            commit,
            note,
        }
    }

    /// Whether records are wanted at all.
    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// A record of this run (also when the sink is off: tests build them so).
    pub fn record(&self, variant: &str, size: Option<u64>, metric: &str, unit: &str, s: Stats) -> Record {
        let finite = |v: f64| v.is_finite().then_some(v);
        Record {
            bench: self.bench.clone(),
            run: self.run.clone(),
            variant: variant.to_owned(),
            size,
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            median: s.median,
            min: finite(s.min),
            max: finite(s.max),
            samples: s.samples,
            date: self.date.clone(),
            commit: self.commit.clone(),
            note: self.note.clone(),
        }
    }

    /// The two records of a traffic benchmark's variant: new connections per
    /// second (`conn_rate`) and one stream's throughput in Gbit/s
    /// (`throughput`), what the charts' bars draw.
    pub fn traffic(&self, variant: &str, conn_rate: Stats, gbps: Stats) -> [Record; 2] {
        [
            self.record(variant, None, "conn_rate", "conn/s", conn_rate),
            self.record(variant, None, "throughput", "Gbit/s", gbps),
        ]
    }

    /// Appends `records` to the sink's file, if there is one.
    pub fn write(&self, records: &[Record]) -> Result<(), Error> {
        match &self.path {
            Some(path) if !records.is_empty() => append(path, records),
            _ => Ok(()),
        }
    }
}

/// `git describe --always --dirty` of this source tree, if git can tell.
fn git_describe() -> Option<String> {
    let out = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
            "--abbrev=7",
        ])
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// Seconds since the epoch as (`YYYY-MM-DD`, `hh:mm:ss`) in UTC.
fn utc(secs: u64) -> (String, String) {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (no negatives here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rest / 3_600, rest % 3_600 / 60, rest % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> Sink {
        Sink {
            path: None,
            bench: "services".to_owned(),
            run: "2026-12-04T15:00:00Z".to_owned(),
            date: "2026-12-04".to_owned(),
            commit: Some("abc1234".to_owned()),
            note: None,
        }
    }

    #[test]
    fn records_round_trip_through_json_lines() {
        let s = sink();
        let records = vec![
            s.record(
                "weir",
                Some(10_000),
                "conn_rate",
                "conn/s",
                Stats::new(13_377.0, &[9_853.0, 14_009.0, 13_377.0]),
            ),
            s.record("iptables", Some(1), "program", "ms", Stats::single(5.4)),
            s.record("routed", None, "throughput", "Gbit/s", Stats::new(9.18, &[])),
        ];
        let text = to_lines(&records).expect("encode");
        assert_eq!(text.lines().count(), 3);
        // Absent fields stay out of the line; the empty sample set has no range.
        let last = text.lines().nth(2).expect("third line");
        assert!(!last.contains("\"size\"") && !last.contains("\"min\"") && !last.contains("\"note\""));
        let back = parse(&format!("\n{text}\n"), Path::new("x.jsonl")).expect("parse");
        assert_eq!(back, records);
        assert_eq!(back[0].min, Some(9_853.0));
        assert_eq!(back[0].max, Some(14_009.0));
        assert_eq!(back[0].samples, 3);
        assert_eq!(back[1].median, 5.4);
        // No median (NaN) is refused rather than written as null.
        let none = s.record("routed", None, "throughput", "Gbit/s", Stats::new(f64::NAN, &[]));
        assert!(matches!(to_lines(&[none]), Err(Error::NoMedian { .. })));
        let null = last.replace("9.18", "null");
        assert!(parse(&null, Path::new("x.jsonl")).is_err());
    }

    #[test]
    fn a_published_record_parses_and_errors_name_the_line() {
        let line = r#"{"bench":"overlay","run":"run 5","variant":"weir-vxlan","metric":"conn_rate","unit":"conn/s","median":11848,"min":11191,"max":12144,"samples":10,"date":"2026-12-04","commit":"1f4455c"}"#;
        let r = &parse(line, Path::new("overlay.jsonl")).expect("parse")[0];
        assert_eq!(
            (r.variant.as_str(), r.size, r.median),
            ("weir-vxlan", None, 11_848.0)
        );
        let bad = format!("{line}\n{}", line.replace("\"median\"", "\"medain\""));
        let e = parse(&bad, Path::new("overlay.jsonl")).expect_err("a misspelt field");
        assert!(matches!(e, Error::Parse { line: 2, .. }), "{e:?}");
        assert_eq!(e.to_string(), "overlay.jsonl:2: not a benchmark record");
    }

    #[test]
    fn the_published_records_parse() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|p| p.join("docs/data"))
            .find(|p| p.is_dir())
            .expect("docs/data in the repository");
        for bench in ["services", "overlay"] {
            let records = read(&data.join(format!("{bench}.jsonl"))).expect("published records");
            assert!(!records.is_empty(), "{bench}: no records");
            for r in &records {
                assert_eq!(r.bench, bench, "{r:?}");
                assert!(
                    r.median.is_finite() && r.min.is_none_or(|m| m <= r.median),
                    "{r:?}"
                );
                assert!(r.max.is_none_or(|m| m >= r.median) && r.commit.is_some(), "{r:?}");
            }
        }
    }

    #[test]
    fn appends_lines_to_a_file() {
        let dir = std::env::temp_dir().join(format!("weir-bench-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("services.jsonl");
        let _ = std::fs::remove_file(&path);
        let r = sink().record("weir", Some(1), "map_sync", "ms", Stats::single(0.1));
        append(&path, std::slice::from_ref(&r)).expect("append");
        append(&path, std::slice::from_ref(&r)).expect("append");
        assert_eq!(read(&path).expect("read"), vec![r.clone(), r]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), ("1970-01-01".to_owned(), "00:00:00".to_owned()));
        // 2024-02-29 (a leap day) 12:34:56.
        assert_eq!(
            utc(1_709_210_096),
            ("2024-02-29".to_owned(), "12:34:56".to_owned())
        );
        assert_eq!(utc(1_798_761_599).0, "2026-12-31");
    }
}
