//! Where the cluster state comes from. Every source produces the same thing, a
//! [`Model`] it keeps up to date and the keys of the objects each update changed,
//! so the compiler and the syncer never know which source feeds them (DESIGN.md:
//! "the source is the only difference"), and a change costs what it touches.

mod dir;

use std::{collections::BTreeSet, path::PathBuf, str::FromStr, time::Duration};

use weir_model::{Model, ObjectKey, Problem};

pub use self::dir::DirSource;

/// What one update of the model changed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Objects added, replaced or removed: the model holds their new state (or
    /// nothing, for those removed).
    pub objects: BTreeSet<ObjectKey>,
    /// Objects or documents of what was read that are skipped (each reported once,
    /// when read).
    pub problems: Vec<Problem>,
}

/// A keeper of a [`Model`].
pub trait Source: Send {
    /// The first call reads the current state at once (everything in it counts as
    /// changed). Later calls wait up to `timeout` for a change and return
    /// `Ok(None)` if there was none.
    fn next(&mut self, timeout: Duration) -> Result<Option<Changes>, SourceError>;

    /// The cluster state as of the last `next`.
    fn model(&self) -> &Model;

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
