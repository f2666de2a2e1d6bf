//! Weir's fuzz checkers. Each takes arbitrary bytes and panics when an
//! invariant breaks; `fuzz/` hands them to libFuzzer (`scripts/fuzz.sh`), and
//! `tests/` replays the committed corpora and a burst of random inputs through
//! them in every test run.
//!
//! - [`cni::config`]: the CNI environment and configuration, decoded as
//!   `weir-cni` decodes them: an error is the spec's error JSON with a
//!   documented code and a bounded message, never a panic.
//! - [`manifests::compile`]: Kubernetes manifests parsed, the model compiled
//!   into services and policies: problems are reported bounded, never a panic.
//! - [`manifests::yaml`]: one YAML document read by the reader of simple
//!   documents and by the general parser: the same value wherever the
//!   first takes it.
//! - [`registration::request`]: the agent's registration protocol.
//! - [`datapath::Datapath`]: Ethernet frames through every TC program
//!   (`BPF_PROG_TEST_RUN`, root): a documented verdict, valid checksums on
//!   every rewritten packet, and no packet of an unknown flow translated.

pub mod cni;
pub mod datapath;
pub mod manifests;
pub mod registration;

/// Splits fuzz input on the first `0` byte: (before, after).
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
