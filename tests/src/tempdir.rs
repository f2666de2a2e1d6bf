//! A uniquely named temporary directory, removed on drop, unless something is
//! still mounted under it (removing through a live mount would delete what the
//! mount shows, not ours).

use std::path::{Path, PathBuf};

use crate::unique;

pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let prefix = self.path.display().to_string();
        if mounts
            .lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
        {
            eprintln!("{prefix} still has mounts under it: left in place");
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
