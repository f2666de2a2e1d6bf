//! The on-disk store, host-local's layout: `{dataDir}/{network}/` holds one file
//! per allocated address (named after it, containing `containerID\nifname`), a
//! `last_reserved_ip.{set}` cursor per range set, and a `lock` file. The lock is
//! held (flock) for the store's whole life, so one invocation's
//! allocate-or-release is atomic with respect to every other.

use std::{
    fs::{self, File, OpenOptions},
    io::{ErrorKind, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

use super::{IpamError, store::Store};
use crate::spec::Attachment;

pub struct DiskStore {
    dir: PathBuf,
    _lock: Flock<File>,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IpamError + use<> {
    let path = path.to_owned();
    move |source| IpamError::Store { op, path, source }
}

impl DiskStore {
    /// Opens (creating) the store of network `network` and takes its lock,
    /// waiting for any other invocation that holds it.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, IpamError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let lock_path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open lock", &lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| IpamError::Store {
            op: "flock",
            path: lock_path.clone(),
            source: errno.into(),
        })?;
        Ok(DiskStore { dir, _lock: lock })
    }

    fn cursor_path(&self, set: usize) -> PathBuf {
        self.dir.join(format!("last_reserved_ip.{set}"))
    }
}

impl Store for DiskStore {
    fn reserve(&mut self, owner: &Attachment, ip: IpAddr, set: usize) -> Result<bool, IpamError> {
        let path = self.dir.join(ip.to_string());
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err("create", &path)(e)),
        };
        let content = format!("{}\n{}", owner.container_id, owner.ifname);
        if let Err(e) = file.write_all(content.as_bytes()).and_then(|()| file.sync_all()) {
            // A half-written reservation would leak the address forever.
            let _ = fs::remove_file(&path);
            return Err(io_err("write", &path)(e));
        }
        // The cursor is only round robin's hint: failing to move it must not fail
        // (and so leak) a reservation that is already on disk.
        let cursor = self.cursor_path(set);
        if let Err(e) = fs::write(&cursor, ip.to_string()) {
            eprintln!(
                "weir-cni: {}: {e} (round robin restarts from the range start)",
                cursor.display()
            );
        }
        Ok(true)
    }

    fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError> {
        let path = self.cursor_path(set);
        match fs::read_to_string(&path) {
            // A garbled cursor only costs round robin its position.
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    fn release(&mut self, ip: IpAddr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    fn allocations(&self) -> Result<Vec<(IpAddr, Attachment)>, IpamError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))? {
            let entry = entry.map_err(io_err("list", &self.dir))?;
            // Only files named after an address are allocations (not `lock`, cursors).
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let path = entry.path();
            let content = match fs::read_to_string(&path) {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("read", &path)(e)),
            };
            let mut lines = content.lines();
            let container_id = lines.next().unwrap_or_default().trim().to_owned();
            let ifname = lines.next().unwrap_or_default().trim().to_owned();
            out.push((ip, Attachment { container_id, ifname }));
        }
        Ok(out)
    }
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test should fail loudly on the first surprise"
)]
mod tests {
    use super::*;

    #[test]
    fn disk_store_round_trip() {
        let dir = std::env::temp_dir().join(format!("weir-cni-disk-{}", std::process::id()));
        let owner = Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        {
            let mut s = DiskStore::open(&dir, "net").unwrap();
            assert!(s.reserve(&owner, ip, 0).unwrap());
            assert!(!s.reserve(&owner, ip, 0).unwrap());
            assert_eq!(s.last_reserved(0).unwrap(), Some(ip));
            assert_eq!(s.allocations().unwrap(), vec![(ip, owner.clone())]);
            assert_eq!(
                fs::read_to_string(dir.join("net").join("10.0.0.2")).unwrap(),
                "c1\neth0"
            );
            s.release(ip).unwrap();
            s.release(ip).unwrap();
            assert!(s.allocations().unwrap().is_empty());
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
