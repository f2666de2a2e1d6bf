//! Invoking a CNI plugin exactly as a runtime does: `CNI_*` environment, the
//! network configuration on stdin, the result or error JSON on stdout.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use serde_json::Value;

/// One plugin invocation. Unset fields are simply not passed, so tests can also
/// check how the plugin copes with a missing variable.
#[derive(Clone, Debug, Default)]
pub struct CniCall {
    pub plugin: PathBuf,
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
    /// Run the plugin inside this named netns (the "node"), as the runtime of
    /// that node would; `None` runs it in the caller's namespace.
    pub in_netns: Option<String>,
    pub stdin: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct CniOutcome {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "plugin stdout is not JSON ({e}): {:?} / stderr {:?}",
                self.stdout, self.stderr
            )
        })
    }

    /// The result of a successful call; panics with the error otherwise.
    pub fn ok(&self) -> Value {
        assert_eq!(
            self.exit_code, 0,
            "plugin failed: {} {}",
            self.stdout, self.stderr
        );
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts that this is the spec's error object with `code` on stdout (never
    /// a panic) and returns it.
    pub fn assert_error(&self, code: u64) -> Value {
        assert!(
            !self.stderr.contains("panicked"),
            "plugin panicked: {}",
            self.stderr
        );
        assert_eq!(
            self.error_code(),
            code,
            "stdout {} stderr {}",
            self.stdout,
            self.stderr
        );
        let v = self.json();
        assert!(v["cniVersion"].is_string(), "error without cniVersion: {v}");
        v
    }

    /// The CNI error code of a failed call; panics if it succeeded.
    pub fn error_code(&self) -> u64 {
        assert_ne!(
            self.exit_code, 0,
            "plugin unexpectedly succeeded: {}",
            self.stdout
        );
        let v = self.json();
        assert!(v["msg"].is_string(), "error without msg: {v}");
        v["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("error without numeric code: {v}"))
    }
}

impl CniCall {
    pub fn new(plugin: impl Into<PathBuf>, command: &str) -> Self {
        Self {
            plugin: plugin.into(),
            command: Some(command.to_owned()),
            ..Self::default()
        }
    }

    pub fn config(mut self, conf: &Value) -> Self {
        self.stdin = serde_json::to_vec(conf).expect("serialize config");
        self
    }

    /// Starts the plugin with its environment and writes its stdin; the caller
    /// waits (or kills: a runtime's timeout does).
    pub fn spawn(&self, stdout: Stdio, stderr: Stdio) -> Child {
        let mut cmd = match &self.in_netns {
            // `ip netns exec` execs the plugin: the child's pid is the plugin's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.plugin);
                c
            }
            None => Command::new(&self.plugin),
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (k, v) in [
            ("CNI_COMMAND", &self.command),
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_ARGS", &self.args),
            ("CNI_PATH", &self.path),
        ] {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.plugin.display()));
        let mut stdin = child.stdin.take().expect("stdin");
        // A plugin may exit before reading all of stdin (e.g. on a bad env): ignore EPIPE.
        let _ = stdin.write_all(&self.stdin);
        child
    }

    pub fn run(&self) -> CniOutcome {
        let out = self
            .spawn(Stdio::piped(), Stdio::piped())
            .wait_with_output()
            .expect("wait plugin");
        CniOutcome {
            exit_code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Directory of the reference plugins (Debian's containernetworking-plugins).
pub fn reference_plugins_dir() -> &'static Path {
    let dir = Path::new("/usr/lib/cni");
    assert!(
        dir.join("portmap").is_file(),
        "reference CNI plugins missing in {}: run scripts/setup.sh",
        dir.display()
    );
    dir
}
