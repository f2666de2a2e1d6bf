//! The on-disk store, host-local's layout: `{dataDir}/{network}/` holds one file
//! per allocated address (named after it, containing `containerID\nifname`), a
//! `last_reserved_ip.{set}` cursor per range set, and a `lock` file. The lock is
//! held (flock) for the store's whole life, so one invocation's
//! allocate-or-release is atomic with respect to every other.
//!
//! A runtime kills a plugin that overruns its timeout (SIGKILL), so every file
//! is born whole: written under a temporary name, then linked (a reservation)
//! or renamed (a cursor) into place. An address file therefore always names its
//! owner, whom `DEL` and `GC` find it by; what a killed invocation left under a
//! temporary name is removed by the next one to take the lock (the lock died
//! with its holder, so nobody else can be writing it).

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

/// Files being written start with this (never an address or a cursor name).
const TMP_PREFIX: &str = ".tmp-";

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
        let store = DiskStore { dir, _lock: lock };
        store.clean_leftovers();
        Ok(store)
    }

    /// Removes what a killed invocation left: temporary files, and empty
    /// address files (an older weir-cni created the file before writing its
    /// owner): both belong to nobody, so no `DEL` would ever free them.
    fn clean_leftovers(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let orphan = name.starts_with(TMP_PREFIX)
                || (name.parse::<IpAddr>().is_ok() && entry.metadata().is_ok_and(|m| m.len() == 0));
            if orphan {
                match fs::remove_file(entry.path()) {
                    Ok(()) => eprintln!("weir-cni: removed {name}, left by an interrupted invocation"),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => eprintln!("weir-cni: removing {name}: {e}"),
                }
            }
        }
    }

    /// Writes `content` to a temporary file of the store, synced; its path.
    fn write_tmp(&self, name: &str, content: &str) -> Result<PathBuf, IpamError> {
        let tmp = self.dir.join(format!("{TMP_PREFIX}{name}"));
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(content.as_bytes())?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("write", &tmp)(e));
        }
        Ok(tmp)
    }

    fn cursor_path(&self, set: usize) -> PathBuf {
        self.dir.join(format!("last_reserved_ip.{set}"))
    }
}

impl Store for DiskStore {
    fn reserve(&mut self, owner: &Attachment, ip: IpAddr, set: usize) -> Result<bool, IpamError> {
        let path = self.dir.join(ip.to_string());
        // We hold the lock: nobody can take it between this look and the link.
        if fs::symlink_metadata(&path).is_ok() {
            return Ok(false);
        }
        // Born whole: the owner is in the file before the file is the reservation.
        let tmp = self.write_tmp(
            &ip.to_string(),
            &format!("{}\n{}", owner.container_id, owner.ifname),
        )?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err("link", &path)(e)),
        }
        // The cursor is only round robin's hint: failing to move it must not fail
        // (and so leak) a reservation that is already on disk.
        let cursor = self.cursor_path(set);
        let moved = self
            .write_tmp(&format!("cursor.{set}"), &ip.to_string())
            .and_then(|tmp| fs::rename(&tmp, &cursor).map_err(io_err("rename", &tmp)));
        if let Err(e) = moved {
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

    #[test]
    fn leftovers_of_killed_invocations_are_removed_on_open() {
        let dir = std::env::temp_dir().join(format!("weir-cni-leftovers-{}", std::process::id()));
        let net = dir.join("net");
        fs::create_dir_all(&net).unwrap();
        // A reservation an older version created but never wrote, a temporary
        // file of a reservation and one of a cursor.
        fs::write(net.join("10.0.0.7"), "").unwrap();
        fs::write(net.join(".tmp-10.0.0.8"), "c9\neth0").unwrap();
        fs::write(net.join(".tmp-cursor.0"), "10.0.").unwrap();
        fs::write(net.join("10.0.0.9"), "c1\neth0").unwrap();
        let s = DiskStore::open(&dir, "net").unwrap();
        let mut left: Vec<String> = fs::read_dir(&net)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["10.0.0.9", "lock"]);
        assert_eq!(s.allocations().unwrap().len(), 1);
        drop(s);
        let _ = fs::remove_dir_all(&dir);
    }
}
