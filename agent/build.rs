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
    .context("building the eBPF programs (see scripts/setup.sh for the toolchain)")?;
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR unset"))?);
    strip_dwarf(&out.join("weir"))
}

/// Drops the object's DWARF (`.debug_*` and their relocations): loading reads
/// only its BTF (`.BTF`, `.BTF.ext`), which bpf-linker made from the DWARF.
/// The embedded object shrinks from 4.7 MB to 1.1 MB, and the agent's
/// resident pages with it (it reads the whole object to load it).
fn strip_dwarf(path: &std::path::Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut elf = object::build::elf::Builder::read(&*data).context("parsing the eBPF object")?;
    for section in elf.sections.iter_mut() {
        let name = section.name.as_slice();
        if name.starts_with(b".debug") || name.starts_with(b".rel.debug") {
            section.delete = true;
        }
    }
    elf.delete_orphans();
    // LLVM names sections from the symbols' string table; the builder writes
    // section names into a table of their own.
    let names = elf.sections.add();
    names.name = (&b".shstrtab"[..]).into();
    names.sh_type = object::elf::SHT_STRTAB;
    names.sh_addralign = 1;
    names.data = object::build::elf::SectionData::SectionString;
    let mut stripped = Vec::new();
    elf.write(&mut stripped).context("writing the eBPF object")?;
    std::fs::write(path, stripped).with_context(|| format!("writing {}", path.display()))
}

/// The workspace root: this crate lives in `<root>/agent`.
fn cargo_metadata() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR unset"))?;
    let dir = std::path::PathBuf::from(dir);
    dir.parent()
        .map(|p| p.to_path_buf())
        .ok_or_else(|| anyhow!("agent crate has no parent dir"))
}
