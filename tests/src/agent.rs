//! A `weir-agent` process running on a lab node, killed on drop. Its pins stay
//! (they belong to the node, which removes them), exactly as a real agent that
//! exits leaves the datapath in place.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::bins;

pub struct Agent {
    child: Child,
    pub netns: String,
    /// Where the agent reads the cluster from, if anywhere.
    pub source: Option<AgentSource>,
    pub bpffs_root: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// More flags, as given.
    pub extra: Vec<String>,
}

/// `--source` of a lab agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentSource {
    /// `--source dir:PATH`.
    Dir(PathBuf),
    /// `--source kube --kubeconfig PATH` (the lab's API server).
    Kube(PathBuf),
}

impl Agent {
    /// Starts the agent in `netns` and waits until its CNI socket answers.
    pub fn start(netns: &str, node_name: &str, bpffs_root: PathBuf, socket: PathBuf, log: PathBuf) -> Self {
        Self::start_with_source(netns, node_name, bpffs_root, socket, log, None)
    }

    /// Like [`Agent::start`], with `--source dir:SOURCE` when given.
    pub fn start_with_source(
        netns: &str,
        node_name: &str,
        bpffs_root: PathBuf,
        socket: PathBuf,
        log: PathBuf,
        source: Option<PathBuf>,
    ) -> Self {
        Self::start_full(
            netns,
            node_name,
            bpffs_root,
            socket,
            log,
            source.map(AgentSource::Dir),
            Vec::new(),
        )
    }

    /// Starts the agent with any source and more flags.
    pub fn start_full(
        netns: &str,
        node_name: &str,
        bpffs_root: PathBuf,
        socket: PathBuf,
        log: PathBuf,
        source: Option<AgentSource>,
        extra: Vec<String>,
    ) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("agent log file");
        // nsenter, not `ip netns exec`: the latter remounts /sys for the namespace,
        // which hides the bpffs mounted at /sys/fs/bpf.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{netns}"));
        // A profiler to run the agent under (benchmarks: `WEIR_AGENT_WRAPPER=
        // "heaptrack -o /tmp/agent"`), words split on blanks.
        if let Ok(w) = std::env::var("WEIR_AGENT_WRAPPER") {
            cmd.args(w.split_whitespace());
        }
        // A `bin:PATH` item runs another build of the agent (a benchmark's
        // baseline); the default is this workspace's.
        let binary = extra
            .iter()
            .find_map(|e| e.strip_prefix("bin:"))
            .map_or_else(|| bins::path("weir-agent"), PathBuf::from);
        cmd.arg(binary)
            .args(["run", "--node", node_name])
            .arg("--bpffs-root")
            .arg(&bpffs_root)
            .arg("--cni-socket")
            .arg(&socket);
        match &source {
            Some(AgentSource::Dir(dir)) => {
                cmd.arg("--source").arg(format!("dir:{}", dir.display()));
            }
            Some(AgentSource::Kube(kubeconfig)) => {
                // The lab writes its own CNI configuration unless a test asks.
                cmd.args(["--source", "kube", "--kubeconfig"]).arg(kubeconfig);
                if !extra.iter().any(|a| a.starts_with("--cni-conf-file")) {
                    cmd.arg("--cni-conf-file=off");
                }
            }
            None => {}
        }
        // `env:NAME=VALUE` items set the agent's environment (the debug build's
        // fault injection, `WEIR_TEST_PANIC`); the rest are flags.
        for item in extra.iter().filter(|e| !e.starts_with("bin:")) {
            match item.strip_prefix("env:").and_then(|e| e.split_once('=')) {
                Some((name, value)) => {
                    cmd.env(name, value);
                }
                None => {
                    cmd.arg(item);
                }
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file)
            .spawn()
            .expect("spawn weir-agent");
        let mut agent = Self {
            child,
            netns: netns.to_owned(),
            source,
            bpffs_root,
            socket,
            log,
            extra,
        };
        agent.wait_serving();
        agent
    }

    fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "weir-agent exited ({status}) before it was ready:\n{}",
                    self.log_text()
                );
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("weir-agent not ready after 30 s:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's process id (`nsenter` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's resident memory now and at its peak (`VmRSS`, `VmHWM`), in
    /// KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let [rss, hwm] = self.status_kib(["VmRSS:", "VmHWM:"]);
        (rss, hwm)
    }

    /// The resident memory now in its two parts, in KiB: anonymous (the heap,
    /// stacks: what only the agent holds) and file-backed (the binary's pages
    /// read in, which the kernel can drop and read again).
    pub fn rss_parts_kib(&self) -> (u64, u64) {
        let [anon, file] = self.status_kib(["RssAnon:", "RssFile:"]);
        (anon, file)
    }

    /// Fields of `/proc/PID/status` in KiB.
    fn status_kib<const N: usize>(&self, names: [&str; N]) -> [u64; N] {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc/PID/status");
        names.map(|name| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"))
        })
    }

    /// What the agent logged after `mark` (a length of [`Agent::log_text`]).
    pub fn log_since(&self, mark: usize) -> String {
        self.log_text().get(mark..).unwrap_or_default().to_owned()
    }

    /// `GET path` on the agent's health address (`127.0.0.1:9879`, its
    /// default): the status code and the body.
    pub fn health(&self, path: &str) -> (u16, String) {
        self.get(HEALTH, path)
    }

    /// `GET path` on `addr` inside the agent's namespace.
    pub fn get(&self, addr: &str, path: &str) -> (u16, String) {
        crate::http_status(&crate::Netns::attach(&self.netns), addr, path)
    }

    /// Polls `path` on the health address until `done` holds; the last answer.
    pub fn wait_health(&self, path: &str, what: &str, done: impl Fn(u16, &str) -> bool) -> (u16, String) {
        self.wait_get(HEALTH, path, what, done)
    }

    /// Polls `GET path` on `addr` until `done` holds; the last answer. A
    /// refused connection is a server not listening yet (the agent binds its
    /// ports in tasks of their own), as a kubelet's probe takes it.
    pub fn wait_get(
        &self,
        addr: &str,
        path: &str,
        what: &str,
        done: impl Fn(u16, &str) -> bool,
    ) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let netns = crate::Netns::attach(&self.netns);
        loop {
            let (code, body) = match crate::try_http_status(&netns, addr, path) {
                Ok(answer) => answer,
                Err(e) => (0, format!("no answer: {e}")),
            };
            if done(code, &body) {
                return (code, body);
            }
            assert!(
                Instant::now() < deadline,
                "{path} never {what}: {code} {body}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        self.wait_health("/readyz", "ready", |code, _| code == 200);
    }

    /// Kills the agent abruptly (as a crash or an upgrade would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// How the agent exited, waiting at most `within` for it to.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the agent and starts a new one with the same settings.
    pub fn restart(&mut self, node_name: &str) {
        self.restart_with(node_name, self.extra.clone());
    }

    /// Kills the agent and starts a new one with the same settings but its
    /// extra flags, `extra` instead.
    pub fn restart_with(&mut self, node_name: &str, extra: Vec<String>) {
        self.kill();
        let fresh = Self::start_full(
            &self.netns,
            node_name,
            self.bpffs_root.clone(),
            self.socket.clone(),
            self.log.clone(),
            self.source.clone(),
            extra,
        );
        *self = fresh;
    }

    /// `weirctl --bpffs-root ROOT -o json ARGS...`, parsed.
    pub fn weirctl(&self, args: &[&str]) -> Value {
        weirctl(&self.bpffs_root, args)
    }

    /// Packets the datapath counted as forwarded in `direction` (`weirctl
    /// metrics`' name: `to-overlay`, `xdp`, ...).
    pub fn forwarded(&self, direction: &str) -> u64 {
        counted(&self.weirctl(&["metrics"]), direction, "forwarded")
    }
}

/// Packets `weirctl metrics`' output (`metrics`) counts under `direction`
/// and `reason`, by their names there.
pub fn counted(metrics: &Value, direction: &str, reason: &str) -> u64 {
    metrics
        .as_array()
        .expect("metrics rows")
        .iter()
        .filter(|r| r["direction"] == direction && r["reason"] == reason)
        .map(|r| r["packets"].as_u64().expect("packets"))
        .sum()
}

/// The agent's health and readiness address (its default).
pub const HEALTH: &str = "127.0.0.1:9879";

/// The values of `field` on every line of `log` that logs `message` (the
/// agent's `key=value` log format), in order.
pub fn logged(log: &str, message: &str, field: &str) -> Vec<String> {
    let key = format!(" {field}=");
    log.lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            let rest = &l[l.find(&key)? + key.len()..];
            Some(rest.split_whitespace().next()?.trim_matches('"').to_owned())
        })
        .collect()
}

/// Runs `weirctl` against a pin root (works whether or not the agent runs).
pub fn weirctl(bpffs_root: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new(bins::path("weirctl"))
        .arg("--bpffs-root")
        .arg(bpffs_root)
        .args(["-o", "json"])
        .args(args)
        .output()
        .expect("spawn weirctl");
    assert!(
        out.status.success(),
        "weirctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("weirctl JSON")
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `weirctl monitor -o json` ([`Agent::monitor`]).
pub struct Monitor {
    pub child: std::process::Child,
}

impl Agent {
    /// Starts `weirctl monitor -o json ARGS` on this agent's events and waits
    /// until it follows them.
    pub fn monitor(&self, args: &[&str]) -> Monitor {
        self.monitor_to(args, Stdio::piped())
    }

    /// Whether the datapath reports new flows' decisions (`NODE_F_TRACE`),
    /// as `weirctl status` tells from the pins.
    pub fn tracing(&self) -> bool {
        let status = weirctl(&self.bpffs_root, &["status"]);
        let modes = status["node"]["modes"].as_array().expect("status modes");
        modes.iter().any(|m| m == "tracing")
    }

    /// [`Agent::monitor`], its events written to `stdout`.
    pub fn monitor_to(&self, args: &[&str], stdout: Stdio) -> Monitor {
        use std::io::BufRead as _;
        let mut child = Command::new(bins::path("weirctl"))
            .arg("--bpffs-root")
            .arg(&self.bpffs_root)
            .args(["-o", "json", "monitor"])
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("weirctl monitor");
        let mut line = String::new();
        std::io::BufReader::new(child.stderr.take().expect("stderr"))
            .read_line(&mut line)
            .expect("stderr line");
        assert!(line.contains("following"), "weirctl monitor: {line}");
        Monitor { child }
    }
}

impl Monitor {
    /// Its events, once it has exited by itself (`--count`) within 10 s.
    pub fn events(mut self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("weirctl monitor saw fewer events than it was to count");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = self.child.wait_with_output().expect("output");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}
