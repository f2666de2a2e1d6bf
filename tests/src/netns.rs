//! Named network namespaces (`ip netns add`), deleted on drop.

use std::{
    fs::File,
    net::IpAddr,
    path::PathBuf,
    process::{Command, Output},
};

use nix::sched::{CloneFlags, setns};

pub struct Netns {
    name: String,
    /// Deleted on drop only when this handle created it.
    owned: bool,
}

impl Netns {
    /// Creates `/var/run/netns/{name}` with `lo` up.
    pub fn new(name: &str) -> Self {
        run_ok(Command::new("ip").args(["netns", "add", name]));
        let ns = Self {
            name: name.to_owned(),
            owned: true,
        };
        ns.sh("ip link set lo up");
        ns
    }

    /// A handle on a namespace someone else owns (e.g. for another thread).
    pub fn attach(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace and returns its output, whatever it is.
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .expect("spawn ip netns exec")
    }

    /// Runs a shell command inside the namespace; panics with its output on failure.
    pub fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        assert!(
            out.status.success(),
            "in netns {}: `{script}` failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j link`'s view of the device holding `addr` (its name, MAC, and
    /// for a veth its peer's `link_index`).
    pub fn link_holding(&self, addr: IpAddr) -> serde_json::Value {
        let found: serde_json::Value =
            serde_json::from_str(&self.sh(&format!("ip -j addr show to {addr}"))).expect("ip -j addr");
        let device = found[0]["ifname"]
            .as_str()
            .unwrap_or_else(|| panic!("no device holds {addr} in {}", self.name));
        let link: serde_json::Value =
            serde_json::from_str(&self.sh(&format!("ip -j link show dev {device}"))).expect("ip -j link");
        link[0].clone()
    }

    /// A kernel SNMP counter of the namespace (`nstat` name, e.g.
    /// `TcpExtPAWSTimewait`), absolute; `nstat`'s history is left alone.
    pub fn nstat(&self, name: &str) -> u64 {
        self.sh(&format!("nstat -asz {name}"))
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("in netns {}: nstat has no {name}", self.name))
    }

    /// Runs `f` on a fresh OS thread that has entered this namespace: sockets
    /// it opens live in the namespace. The thread never returns to another one.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file = File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// `spawn` and wait.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("thread in netns panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        }
    }
}

pub(crate) fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
