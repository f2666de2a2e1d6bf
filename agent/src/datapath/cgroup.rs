//! Finding the cgroup v2 hierarchy the socket hooks attach to.
//!
//! Hosts differ: a unified hierarchy at /sys/fs/cgroup (systemd's default now),
//! a hybrid one with cgroup2 at /sys/fs/cgroup/unified, or none mounted at all.
//! The root of whichever cgroup2 mount exists covers every process; where there
//! is none we mount one, as Cilium's agent does (at /run/weir/cgroupv2).

use std::path::{Path, PathBuf};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{CGROUP2_SUPER_MAGIC, statfs},
};
use tracing::warn;

use super::DatapathError;

const CANDIDATES: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
const OWN_MOUNT: &str = "/run/weir/cgroupv2";

fn is_cgroup2(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

/// `given` when it is a cgroup2 directory, or its `unified` directory when that
/// is (the host's /sys/fs/cgroup mounted into a container, on a hybrid host);
/// an error otherwise. Without it, the first cgroup2 mount found, or one
/// mounted for the purpose.
pub fn resolve(given: Option<&Path>) -> Result<PathBuf, DatapathError> {
    if let Some(path) = given {
        if is_cgroup2(path) {
            return Ok(path.to_owned());
        }
        let unified = path.join("unified");
        if is_cgroup2(&unified) {
            return Ok(unified);
        }
        return Err(DatapathError::Fs {
            path: path.to_owned(),
            source: std::io::Error::other("neither it nor its `unified` is a cgroup v2 directory"),
        });
    }
    if let Some(found) = CANDIDATES.iter().map(Path::new).find(|p| is_cgroup2(p)) {
        return Ok(found.to_owned());
    }
    let own = Path::new(OWN_MOUNT);
    if is_cgroup2(own) {
        return Ok(own.to_owned());
    }
    warn!(path = OWN_MOUNT, "no cgroup v2 hierarchy mounted: mounting one");
    std::fs::create_dir_all(own).map_err(DatapathError::fs(own))?;
    mount(
        Some("cgroup2"),
        own,
        Some("cgroup2"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| DatapathError::Fs {
        path: own.to_owned(),
        source: std::io::Error::from(e),
    })?;
    Ok(own.to_owned())
}
