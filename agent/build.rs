//! Builds the eBPF object (ebpf/programs, binary `weir`) with the nightly toolchain
//! for bpfel-unknown-none; src/datapath/object.rs embeds it.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata()?;
    let root = meta.join("ebpf/programs");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "weir-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (see scripts/setup.sh for the toolchain)")
}

/// The workspace root: this crate lives in `<root>/agent`.
fn cargo_metadata() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR unset"))?;
    let dir = std::path::PathBuf::from(dir);
    dir.parent()
        .map(|p| p.to_path_buf())
        .ok_or_else(|| anyhow!("agent crate has no parent dir"))
}
