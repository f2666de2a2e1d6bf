//! `weir-charts`: draws the charts of `docs/benchmarks.md` (`docs/charts/*.svg`)
//! from the benchmarks' JSON Lines records (`docs/data/*.jsonl`, or what a run wrote
//! with `WEIR_BENCH_JSON`).
//!
//! ```text
//! weir-charts [--data DIR] [--out DIR]      # defaults: docs/data, docs/charts
//! ```
//!
//! Every record of every `*.jsonl` in the data directory is read; each chart takes
//! the benchmark and metrics it draws, from every run found:
//!
//! - `services-conn-rate.svg`: new connections/s through a ClusterIP as a ratio to the
//!   same run's `direct` rate at the same size, against the number of Services.
//! - `services-programming.svg`: time to program the Services from empty.
//! - `overlay.svg`: cross-node pod to pod, connections/s and one stream's throughput,
//!   run by run.
//! - `pod-to-pod.svg`: pod to pod on one node and across two, Weir against the
//!   reference `ptp` plugin, the same two figures, run by run.

mod draw;
mod series;

#[expect(dead_code, reason = "the benchmarks' writing half (Sink) is not used here")]
#[path = "../../../tests/src/bench_json.rs"]
mod bench_json;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::bench_json::Record;

fn main() -> anyhow::Result<()> {
    let (data, out) = args(std::env::args().skip(1))?;
    let records = load(&data)?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for (name, svg) in draw::all(&records)? {
        let path = out.join(name);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// `--data DIR` and `--out DIR`, with their defaults.
fn args(mut args: impl Iterator<Item = String>) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (mut data, mut out) = (PathBuf::from("docs/data"), PathBuf::from("docs/charts"));
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--data" => &mut data,
            "--out" => &mut out,
            _ => bail!("usage: weir-charts [--data DIR] [--out DIR] (unknown argument {flag:?})"),
        };
        *slot = args
            .next()
            .with_context(|| format!("{flag} needs a directory"))?
            .into();
    }
    Ok((data, out))
}

/// Every record of the `*.jsonl` files of `dir`, files in name order.
fn load(dir: &Path) -> anyhow::Result<Vec<Record>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    let mut records = Vec::new();
    for f in files {
        records.extend(bench_json::read(&f)?);
    }
    if records.is_empty() {
        bail!("no records in {}/*.jsonl", dir.display());
    }
    Ok(records)
}
