//! Finding the bpffs to pin under.
//!
//! Pins must live on the host's bpffs, where every agent run and `weirctl` see
//! them. A process started by `ip netns exec` has its own mount namespace with a
//! fresh sysfs on /sys, which hides /sys/fs/bpf; the host's bpffs is still
//! reachable through PID 1's root (`/proc/1/root`). Only when no bpffs is mounted
//! anywhere do we mount one ourselves, as Cilium's agent does.

use std::path::{Path, PathBuf};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use tracing::{info, warn};

use super::DatapathError;

const BPFFS: &str = "/sys/fs/bpf";
const HOST_ROOT: &str = "/proc/1/root";

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// The directory to use for `root`: `root` itself when it is on a bpffs, the same
/// path seen through PID 1's root when that one is, else (with `may_mount`: the
/// agent, not the read-only `weirctl`) `root` after mounting a bpffs at
/// /sys/fs/bpf. Roots outside /sys/fs/bpf are taken as they are.
pub fn resolve(root: &Path, may_mount: bool) -> Result<PathBuf, DatapathError> {
    let Ok(inside) = root.strip_prefix(BPFFS) else {
        return Ok(root.to_owned());
    };
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(root.to_owned());
    }
    let host = Path::new(HOST_ROOT).join(BPFFS.trim_start_matches('/'));
    if is_bpffs(&host) {
        info!(path = %host.display(), "/sys/fs/bpf is not a bpffs here (own mount namespace?): pinning on the host's");
        return Ok(host.join(inside));
    }
    if !may_mount {
        return Ok(root.to_owned());
    }
    warn!("no bpffs mounted: mounting one at /sys/fs/bpf");
    mount_if_missing(Path::new(BPFFS))?;
    Ok(root.to_owned())
}

/// Mounts a bpffs at `path` unless one is there (the DaemonSet's init
/// container does this for the host, through a bidirectional mount).
pub fn mount_if_missing(path: &Path) -> Result<(), DatapathError> {
    if is_bpffs(path) {
        return Ok(());
    }
    let fs = |source: std::io::Error| DatapathError::Fs {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(fs)?;
    mount(Some("bpf"), path, Some("bpf"), MsFlags::empty(), None::<&str>).map_err(|e| fs(e.into()))
}
