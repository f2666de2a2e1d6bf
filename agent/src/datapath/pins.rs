//! Every bpffs path Weir uses is built here, and nowhere else.
//!
//! ```text
//! <root>/maps/<map name>               pinned maps (names from weir_common::maps)
//! <root>/links/<ifindex>/<program>     pinned TCX links: a pod's host-side veth
//!                                      (from_pod, to_pod) or a node device
//!                                      (from_netdev, to_netdev)
//! <root>/links/cgroup/<program>        the socket hooks' links on the cgroup
//! ```
//!
//! The root defaults to `/sys/fs/bpf/weir`; lab nodes sharing one machine (and so
//! one bpffs, which is not per network namespace) each get their own.

use std::path::{Path, PathBuf};

pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/weir";

#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn endpoint_links(&self, ifindex: u32) -> PathBuf {
        self.links_dir().join(ifindex.to_string())
    }

    pub fn link(&self, ifindex: u32, program: &str) -> PathBuf {
        self.endpoint_links(ifindex).join(program)
    }

    /// Where the cgroup socket hooks' links are pinned.
    pub fn cgroup_links(&self) -> PathBuf {
        self.links_dir().join("cgroup")
    }

    pub fn cgroup_link(&self, program: &str) -> PathBuf {
        self.cgroup_links().join(program)
    }
}

impl Default for PinLayout {
    fn default() -> Self {
        Self::new(DEFAULT_ROOT)
    }
}
