//! Where the cluster state comes from. Every source produces the same thing, a
//! whole [`Model`] snapshot each time something changed, so the compiler and the
//! syncer never know which source feeds them (DESIGN.md: "the source is the only
//! difference").

mod dir;

use std::{path::PathBuf, str::FromStr, time::Duration};

use weir_model::{Model, Problem};

pub use self::dir::DirSource;

/// The cluster state at one instant, and what could not be used of it.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub model: Model,
    /// Objects or documents skipped (each is reported once per snapshot).
    pub problems: Vec<Problem>,
}

/// A producer of [`Snapshot`]s.
pub trait Source: Send {
    /// The first call returns the current state at once. Later calls wait up to
    /// `timeout` for a change and return `Ok(None)` if there was none.
    fn next(&mut self, timeout: Duration) -> Result<Option<Snapshot>, SourceError>;

    /// What to call this source in logs.
    fn describe(&self) -> String;
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("unknown source {0:?}: expected dir:PATH (kube is not implemented yet)")]
    UnknownSpec(String),
}

/// The `--source` flag: `dir:PATH` (and later `kube`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    Dir(PathBuf),
}

impl FromStr for SourceSpec {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("dir", path)) if !path.is_empty() => Ok(Self::Dir(PathBuf::from(path))),
            _ => Err(SourceError::UnknownSpec(s.to_owned())),
        }
    }
}

impl SourceSpec {
    pub fn open(&self) -> Box<dyn Source> {
        match self {
            Self::Dir(path) => Box::new(DirSource::new(path.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_dir_and_refuses_the_rest() {
        assert_eq!(
            "dir:/etc/weir".parse::<SourceSpec>().ok(),
            Some(SourceSpec::Dir("/etc/weir".into()))
        );
        for bad in ["dir:", "kube", "file:/x", ""] {
            assert!(bad.parse::<SourceSpec>().is_err(), "{bad:?} accepted");
        }
    }
}
