//! A private `containerd` (1.6, Debian's) and `ctr run`, as a node's runtime.
//!
//! Nothing of the machine is touched. `containerd` runs in its own private mount
//! namespace with `/run` on an overlay (its shims and runc keep their state under
//! the fixed `/run/containerd`), and with its root, state and sockets in a
//! temporary directory. `ctr` 1.6 only reads the default CNI directories, so each
//! `ctr run` runs in a private mount namespace where `/etc` is an overlay (the
//! given conflist directory bound over `/etc/cni/net.d`), the given plugin
//! directory is bound over the plugin directories, and `/var/lib` (libcni's
//! result cache) is an overlay on a tmpfs; in a lab node's network namespace
//! when given one, so that the pods' host sides land on that node. Both
//! namespaces vanish with their processes.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Debian's reference plugins; `ctr` searches it (and `/opt/cni/bin`) for plugins.
pub const DISTRO_CNI_BIN: &str = "/usr/lib/cni";
const DEFAULT_CNI_BIN: &str = "/opt/cni/bin";
pub const BUSYBOX: &str = "/usr/bin/busybox";
/// The busybox applets container scripts use (not `wget`: the static build's
/// crashes resolving even a numeric address; `nc` does HTTP well enough).
const APPLETS: &[&str] = &[
    "sh", "ip", "ping", "nc", "cat", "sleep", "echo", "sed", "httpd", "mkdir", "mv", "tail", "printf",
    "test", "[",
];

pub struct Containerd {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
}

/// What a finished `ctr run` printed, and how it ended (`None`: killed).
pub struct RunOutput {
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// One `ctr run`.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub id: String,
    /// A root filesystem directory (`--rootfs`), or else an image.
    pub rootfs: Option<PathBuf>,
    pub image: Option<String>,
    /// `--cni`, reading this directory as `/etc/cni/net.d`.
    pub net_d: Option<PathBuf>,
    /// Bound over the CNI plugin directories.
    pub cni_bin: Option<PathBuf>,
    /// The lab node (network namespace) the runtime runs in.
    pub netns: Option<String>,
    /// Host directories bound over paths of `ctr`'s mount namespace (what the
    /// plugins see: a node's IPAM store, for one).
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// More `ctr run` flags (`--mount`, `--privileged`, `--with-ns`, ...).
    pub flags: Vec<String>,
    pub args: Vec<String>,
}

/// A `ctr run` in progress.
pub struct Running {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    pub id: String,
}

impl Running {
    /// What it printed so far, on stdout then stderr.
    pub fn output(&self) -> String {
        let read = |p: &PathBuf| fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.stdout), read(&self.stderr))
    }

    /// Waits for the end (killing it after `timeout`).
    pub fn wait(mut self, timeout: Duration) -> RunOutput {
        let deadline = Instant::now() + timeout;
        let exit_code = loop {
            if let Some(status) = self.child.try_wait().expect("wait ctr") {
                break status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                eprintln!("ctr run {} timed out after {timeout:?}: killed", self.id);
                break None;
            }
            thread::sleep(Duration::from_millis(50));
        };
        RunOutput {
            exit_code,
            stdout: fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }
}

/// Panics, naming what to install, unless the runtime's tools are there.
pub fn require_tools() {
    for tool in [
        "containerd",
        "ctr",
        "runc",
        "containerd-shim-runc-v2",
        "unshare",
        "nsenter",
    ] {
        assert!(
            which(tool).is_some(),
            "`{tool}` not found in PATH: run scripts/setup.sh"
        );
    }
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} missing: install busybox-static"
    );
    assert!(
        Path::new(DISTRO_CNI_BIN).is_dir(),
        "{DISTRO_CNI_BIN} missing: install containernetworking-plugins"
    );
}

impl Containerd {
    /// Starts containerd with everything under `dir`, in a private mount namespace where
    /// `/run` is an overlay on a tmpfs. Waits until it answers.
    pub fn start(dir: &Path) -> Self {
        let root = dir.join("containerd");
        for d in ["root", "state", "ovl"] {
            fs::create_dir_all(root.join(d)).expect("containerd dirs");
        }
        let socket = root.join("containerd.sock");
        let config = root.join("config.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}/root"
state = "{root}/state"
# No CRI: ctr talks to the core services only.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"#,
                root = root.display(),
                sock = socket.display()
            ),
        )
        .expect("containerd config");
        let script = "set -e
mount -t tmpfs weir-ctr-tmpfs \"$1\"
mkdir \"$1/up\" \"$1/work\"
mount -t overlay weir-ctr-run -o \"lowerdir=/run,upperdir=$1/up,workdir=$1/work\" /run
exec containerd --config \"$2\"";
        let log = File::create(root.join("containerd.log")).expect("containerd log");
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(root.join("ovl"))
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let mut me = Self {
            child: Some(child),
            dir: root,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().expect("wait")) {
                me.child = None;
                panic!("containerd exited at start ({status}):\n{}", me.log());
            }
            let ok = me.ctr().arg("version").output().is_ok_and(|o| o.status.success());
            if ok {
                return me;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer in 20 s:\n{}",
                me.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr` talking to this containerd.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.socket);
        c
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Imports an image archive (`ctr image import`), unpacked with the
    /// `native` snapshotter (copies: no overlay needed).
    pub fn import(&self, archive: &Path) {
        let out = self
            .ctr()
            .args(["image", "import", "--snapshotter", "native"])
            .arg(archive)
            .output()
            .expect("spawn ctr");
        assert!(
            out.status.success(),
            "ctr image import {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `ctr run --rm` as `run` says, in the mount namespace described
    /// at the top of this module.
    pub fn start_run(&self, run: &Run) -> Running {
        let ovl = self.dir.join(format!("ctr-ovl-{}", run.id));
        let fifo = self.dir.join("fifo");
        fs::create_dir_all(&ovl).expect("ctr ovl");
        fs::create_dir_all(&fifo).expect("fifo dir");
        let mut binds = String::new();
        if run.net_d.is_some() {
            binds.push_str("mkdir -p /etc/cni/net.d\nmount --bind \"$NET_D\" /etc/cni/net.d\n");
        }
        if run.cni_bin.is_some() {
            binds.push_str(&format!(
                "mount --bind \"$CNI_BIN\" {DISTRO_CNI_BIN}\nif [ -d {DEFAULT_CNI_BIN} ]; then mount --bind \"$CNI_BIN\" {DEFAULT_CNI_BIN}; fi\n"
            ));
        }
        for (src, dst) in &run.binds {
            binds.push_str(&format!(
                "mkdir -p '{}'\nmount --bind '{}' '{}'\n",
                dst.display(),
                src.display(),
                dst.display()
            ));
        }
        let ns_script = format!(
            "set -e
O=\"$1\"; shift
mount -t tmpfs weir-ctr-tmpfs \"$O\"
for d in etc lib; do mkdir \"$O/$d-up\" \"$O/$d-work\"; done
mount -t overlay weir-ctr-etc -o \"lowerdir=/etc,upperdir=$O/etc-up,workdir=$O/etc-work\" /etc
mount -t overlay weir-ctr-lib -o \"lowerdir=/var/lib,upperdir=$O/lib-up,workdir=$O/lib-work\" /var/lib
{binds}exec \"$@\""
        );
        let stdout = self.dir.join(format!("{}.stdout", run.id));
        let stderr = self.dir.join(format!("{}.stderr", run.id));
        let mut cmd = match &run.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}")).arg("unshare");
                c
            }
            None => Command::new("unshare"),
        };
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &ns_script,
            "sh",
        ])
        .arg(&ovl)
        .arg("ctr")
        .arg("--address")
        .arg(&self.socket)
        .args(["run", "--rm", "--fifo-dir"])
        .arg(&fifo);
        if run.net_d.is_some() {
            cmd.arg("--cni");
        }
        cmd.args(&run.flags);
        match (&run.rootfs, &run.image) {
            (Some(rootfs), _) => {
                cmd.arg("--rootfs").arg(rootfs).arg(&run.id);
            }
            (None, Some(image)) => {
                cmd.args(["--snapshotter", "native", image, &run.id]);
            }
            (None, None) => panic!("a run needs a rootfs or an image"),
        }
        cmd.args(&run.args)
            .env("NET_D", run.net_d.clone().unwrap_or_default())
            .env("CNI_BIN", run.cni_bin.clone().unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"));
        Running {
            child: cmd.spawn().expect("spawn ctr"),
            stdout,
            stderr,
            id: run.id.clone(),
        }
    }

    /// `ctr run --rm`, waited for (killed after `timeout`).
    pub fn run(&self, run: &Run, timeout: Duration) -> RunOutput {
        self.start_run(run).wait(timeout)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Tasks left by a failed run: kill them so their shims exit with them.
        if let Ok(out) = self.ctr().args(["task", "ls", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.ctr().args(["task", "kill", "-s", "SIGKILL", id]).status();
                thread::sleep(Duration::from_millis(200));
                let _ = self.ctr().args(["task", "rm", "-f", id]).status();
                let _ = self.ctr().args(["container", "rm", id]).status();
            }
        }
        // `unshare` and `sh` exec'd into containerd: this is containerd's own PID.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A busybox root filesystem in `dir`: the static binary and its applets.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("rootfs bin");
    for d in ["proc", "sys", "dev", "etc", "tmp", "www"] {
        fs::create_dir_all(dir.join(d)).expect("rootfs dir");
    }
    fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
    }
    dir.to_owned()
}

/// Copies an executable, keeping it executable.
pub fn copy_executable(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::copy(from, to).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).expect("chmod");
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
