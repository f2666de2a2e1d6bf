//! Where the cluster state comes from. Every source produces the same thing, a
//! [`Model`] it keeps up to date and the keys of the objects each update changed,
//! so the compiler and the syncer never know which source feeds them (DESIGN.md:
//! "the source is the only difference"), and a change costs what it touches.

mod dir;
pub mod kube;

use std::{collections::BTreeSet, path::PathBuf, str::FromStr, time::Duration};

use weir_model::{Kind, Model, ObjectKey, Problem};

pub use self::{
    dir::DirSource,
    kube::{KubeOptions, KubeSource},
};

/// What one update of the model changed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Objects added, replaced or removed: the model holds their new state (or
    /// nothing, for those removed).
    pub objects: BTreeSet<ObjectKey>,
    /// Objects or documents of what was read that are skipped (each reported once,
    /// when read).
    pub problems: Vec<Problem>,
    /// Which kinds are listed whole, or failing, changed (see [`Source::listed`]).
    pub listed: bool,
}

/// A keeper of a [`Model`].
pub trait Source: Send {
    /// The first call reads the current state at once (everything in it counts as
    /// changed). Later calls wait up to `timeout` for a change and return
    /// `Ok(None)` if there was none.
    fn next(&mut self, timeout: Duration) -> Result<Option<Changes>, SourceError>;

    /// The cluster state as of the last `next`.
    fn model(&self) -> &Model;

    /// Packs the model ([`Model::pack`]): once every kind was listed whole
    /// and the changes settled.
    fn pack(&mut self);

    /// What to call this source in logs.
    fn describe(&self) -> String;

    /// Whether every object of `kind` has been read at least once: until then
    /// the model's objects of that kind are not the cluster's, and nothing that
    /// depends on them may be written to the maps (a restart must not flush
    /// what an earlier agent wrote).
    fn listed(&self, kind: Kind) -> bool;

    /// Kinds that cannot be read now, and why (an API server that is down, a
    /// kind RBAC forbids).
    fn failing(&self) -> Vec<(Kind, String)> {
        Vec::new()
    }

    /// Whether `kind` is among [`Source::failing`]'s.
    fn fails(&self, _kind: Kind) -> bool {
        false
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("unknown source {0:?}: expected kube or dir:PATH")]
    UnknownSpec(String),
    #[error("the Kubernetes API: {0}")]
    Kube(String),
}

/// The `--source` flag: `kube` (the API server) or `dir:PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    Kube,
    Dir(PathBuf),
}

impl FromStr for SourceSpec {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "kube" => Ok(Self::Kube),
            Some(("dir", path)) if !path.is_empty() => Ok(Self::Dir(PathBuf::from(path))),
            _ => Err(SourceError::UnknownSpec(s.to_owned())),
        }
    }
}

/// As the flag is written.
impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kube => f.write_str("kube"),
            Self::Dir(path) => write!(f, "dir:{}", path.display()),
        }
    }
}

impl SourceSpec {
    /// Opens the source; `kubeconfig` for `kube` (else in-cluster or `KUBECONFIG`).
    pub fn open(&self, kube: KubeOptions) -> Result<Box<dyn Source>, SourceError> {
        Ok(match self {
            Self::Kube => Box::new(KubeSource::start(kube)?),
            Self::Dir(path) => Box::new(DirSource::new(path.clone())),
        })
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
        assert_eq!("kube".parse::<SourceSpec>().ok(), Some(SourceSpec::Kube));
        for bad in ["dir:", "kube:x", "file:/x", ""] {
            assert!(bad.parse::<SourceSpec>().is_err(), "{bad:?} accepted");
        }
    }
}
