//! Entering network namespaces. `setns` only ever happens on a dedicated OS thread
//! created for the purpose, behind a guard that restores the thread's namespace:
//! the main thread (and the tokio runtime on it) never changes namespace.

use std::{
    fs::File,
    io::ErrorKind,
    marker::PhantomData,
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("opening network namespace {}: {source}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("setns into {what}: {source}")]
    Setns { what: String, source: nix::errno::Errno },
    #[error("the thread working in network namespace {what} panicked")]
    Panicked { what: String },
    #[error(
        "{} is the plugin's own network namespace (the node's), not a container's: refusing to wire it",
        path.display()
    )]
    Own { path: PathBuf },
}

/// An open network namespace (`CNI_NETNS`), kept open so that it cannot be
/// replaced under us while we work in it.
pub struct Netns {
    pub path: PathBuf,
    pub file: File,
}

impl Netns {
    /// Opens a container's namespace. The plugin's own is refused, whatever
    /// path names it (`/proc/self/ns/net`, a bind mount of the host's): the
    /// namespaces are compared by identity (device and inode of the nsfs
    /// file), since wiring "a pod" there would route the node through it.
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        match File::open(path) {
            Ok(file) => {
                if same_namespace(&file, Path::new(OWN))? {
                    return Err(NetnsError::Own {
                        path: path.to_owned(),
                    });
                }
                Ok(Netns {
                    path: path.to_owned(),
                    file,
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Err(NetnsError::NotFound {
                path: path.to_owned(),
            }),
            Err(source) => Err(NetnsError::Open {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Runs `f` on a fresh OS thread inside this namespace and returns its value.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let what = self.path.display().to_string();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let _guard = NetnsGuard::enter(&self.file, &what)?;
                    Ok(f())
                })
                .join()
                .map_err(|_| NetnsError::Panicked { what: what.clone() })?
        })
    }
}

/// The calling thread's own network namespace (`/proc/self` would be the main
/// thread's).
const OWN: &str = "/proc/thread-self/ns/net";

/// Whether the open namespace file `ns` is the namespace at `other`.
fn same_namespace(ns: &File, other: &Path) -> Result<bool, NetnsError> {
    use std::os::unix::fs::MetadataExt as _;
    let open_err = |source| NetnsError::Open {
        path: other.to_owned(),
        source,
    };
    let a = ns.metadata().map_err(open_err)?;
    let b = std::fs::metadata(other).map_err(open_err)?;
    Ok((a.dev(), a.ino()) == (b.dev(), b.ino()))
}

/// Holds the thread in another namespace; puts it back on drop. `!Send`: the
/// namespace belongs to this thread only.
struct NetnsGuard {
    original: File,
    _not_send: PhantomData<*const ()>,
}

impl NetnsGuard {
    fn enter(target: &File, what: &str) -> Result<Self, NetnsError> {
        let here = Path::new(OWN);
        let original = File::open(here).map_err(|source| NetnsError::Open {
            path: here.to_owned(),
            source,
        })?;
        setns(target, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns {
            what: what.to_owned(),
            source,
        })?;
        Ok(NetnsGuard {
            original,
            _not_send: PhantomData,
        })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // If this fails the thread is about to end anyway, and nothing else runs on it.
        let _ = setns(&self.original, CloneFlags::CLONE_NEWNET);
    }
}

/// Writes a sysctl (`net/ipv6/conf/eth0/accept_dad`) in the namespace of the
/// calling thread (call it inside [`Netns::run`] for a pod's).
pub fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(key), value)
}
