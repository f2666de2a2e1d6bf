use std::path::PathBuf;

/// Errors of the kernel-facing layer, each naming what failed on what.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{path}: {source}")]
    Fs { path: PathBuf, source: std::io::Error },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {name} is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("making map {name} preallocated (--preallocate-bpf-maps): {source}")]
    Preallocate {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error(
        "pinned map {path} has key/value/max_entries {found:?}, this agent expects {expected:?}: \
         it was made by an incompatible agent; remove it to start afresh"
    )]
    IncompatiblePin {
        path: PathBuf,
        found: (u32, u32, u32),
        expected: (u32, u32, u32),
    },
    #[error("link {path}: {source}")]
    Link {
        path: PathBuf,
        source: aya::programs::links::LinkError,
    },
    #[error("pinning link at {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("attaching {program} to cgroup {cgroup}: {source}")]
    AttachCgroup {
        program: &'static str,
        cgroup: PathBuf,
        source: aya::programs::ProgramError,
    },
    #[error("attaching {program} to {ifname} (ifindex {ifindex}): {source}")]
    Attach {
        program: &'static str,
        ifname: String,
        ifindex: u32,
        source: aya::programs::ProgramError,
    },
}

impl DatapathError {
    pub(crate) fn fs(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Fs { path, source }
    }
}
