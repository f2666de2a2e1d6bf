//! A short smoke of every fuzz target in every test run: its committed corpus,
//! then random mutations of it (byte flips, cuts, splices; `WEIR_TEST_SEED`
//! replays a run), through the same checker libFuzzer drives
//! (`scripts/fuzz.sh` runs the real thing). The datapath target needs root (it
//! loads the programs): its test says so.

use std::{path::PathBuf, time::Instant};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
        .collect()
}

/// Every corpus entry, then `n` mutants of them, through `check`.
fn smoke(target: &str, n: usize, mut check: impl FnMut(&[u8])) {
    let seeds = corpus(target);
    let mut rng = weir_lab::rng::Rng::from_env();
    let mut next = move || rng.next_u64();
    for s in &seeds {
        check(s);
    }
    let start = Instant::now();
    for _ in 0..n {
        let mut input = seeds[next() as usize % seeds.len()].clone();
        for _ in 0..1 + next() % 8 {
            let at = if input.is_empty() {
                0
            } else {
                next() as usize % input.len()
            };
            match next() % 5 {
                0 if !input.is_empty() => input[at] ^= 1 << (next() % 8),
                1 if !input.is_empty() => input[at] = next() as u8,
                2 => input.insert(at, next() as u8),
                3 => input.truncate(at),
                _ => {
                    // Splice in a piece of another seed.
                    let other = &seeds[next() as usize % seeds.len()];
                    if !other.is_empty() {
                        let from = next() as usize % other.len();
                        let len = (next() as usize % 64).min(other.len() - from);
                        input.splice(at..at, other[from..from + len].iter().copied());
                    }
                }
            }
        }
        check(&input);
    }
    println!(
        "{target}: {} seeds and {n} mutants in {:?}",
        seeds.len(),
        start.elapsed()
    );
}

#[test]
fn cni_config_smoke() {
    smoke("cni_config", 20_000, weir_fuzz::cni::config);
}

#[test]
fn manifests_smoke() {
    smoke("manifests", 2_000, weir_fuzz::manifests::compile);
}

#[test]
fn yaml_smoke() {
    smoke("yaml", 20_000, weir_fuzz::manifests::yaml);
}

#[test]
fn registration_smoke() {
    smoke("registration", 20_000, weir_fuzz::registration::request);
}

#[test]
fn root_datapath_smoke() {
    weir_lab::require_root();
    let root = PathBuf::from(format!("/sys/fs/bpf/weir-fuzz-smoke-{}", std::process::id()));
    let mut dp = weir_fuzz::datapath::Datapath::new(root);
    smoke("datapath", 20_000, |data| dp.run(data));
}
