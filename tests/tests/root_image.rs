//! Tier 2 (root + namespaces + containerd): the image `scripts/image.sh` builds
//! (`target/weir-image.tar`; `scripts/test.sh` builds it first), run as the
//! DaemonSet runs it. A private containerd imports it; the init containers'
//! commands install `weir-cni` and mount bpffs; the agent runs from the image in
//! a lab node's network namespace (as `hostNetwork`) with the DaemonSet's
//! capabilities (not privileged) and mounts, serves pods wired by `weir-cni`,
//! load-balances a Service, and once its container is killed the pinned
//! datapath goes on forwarding.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::json;
use weir_lab::{
    Node, TempDir,
    agent::weirctl,
    containerd::{self, Containerd, Run},
    require_root,
    services::{Ep, ManifestDir, frontend, port, service, slice},
    unique,
    whoami::{WhoAmI, ask_tcp},
};

const VIP: &str = "10.96.0.10";

fn archive() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/weir-image.tar");
    assert!(
        path.is_file(),
        "{} missing: run scripts/image.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The DaemonSet's agent container: its image and the capabilities it adds.
fn daemonset_agent() -> (String, Vec<String>) {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/daemonset.yaml"))
            .expect("manifests/daemonset.yaml");
    let ds: serde_json::Value = serde_saphyr::from_str(&text).expect("the DaemonSet");
    let agent = &ds["spec"]["template"]["spec"]["containers"][0];
    let image = agent["image"].as_str().expect("an image").to_owned();
    let caps = agent["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities")
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().expect("a name")))
        .collect();
    (image, caps)
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bind(src: &Path, dst: &str) -> String {
    format!(
        "--mount=type=bind,src={},dst={dst},options=rbind:rw",
        src.display()
    )
}

#[test]
fn root_image_runs_as_the_daemonset_runs_it() {
    require_root();
    containerd::require_tools();
    let archive = archive();
    let (image, caps) = daemonset_agent();
    let dir = TempDir::new("weir-image-");
    let runtime = Containerd::start(dir.path());
    runtime.import(&archive);
    let run = |id: &str, flags: Vec<String>, args: &[&str]| Run {
        id: format!("{id}-{}", unique("x")),
        image: Some(image.clone()),
        flags,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Run::default()
    };

    // Static binaries on an empty base.
    let out = runtime.run(
        &run("version", vec![], &["/usr/bin/weir-agent", "--version"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.exit_code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("weir-agent "), "{}", out.stdout);

    // The init containers: weir-cni copied onto the node.
    let cni_bin = dir.join("cni-bin");
    std::fs::create_dir_all(&cni_bin).expect("cni-bin");
    let out = runtime.run(
        &run(
            "install-cni",
            vec![bind(&cni_bin, "/host/opt/cni/bin")],
            &[
                "/usr/bin/weir-agent",
                "install-cni",
                "--from",
                "/usr/bin/weir-cni",
                "--to",
                "/host/opt/cni/bin",
            ],
        ),
        Duration::from_secs(30),
    );
    assert_eq!(out.exit_code, Some(0), "{}{}", out.stdout, out.stderr);
    let installed = Command::new(cni_bin.join("weir-cni"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the installed weir-cni");
    let version: serde_json::Value = serde_json::from_slice(&installed.stdout).expect("VERSION answers JSON");
    assert!(
        version["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("1.1.0"))),
        "{version}"
    );
    let out = runtime.run(
        &run(
            "mount-bpffs",
            vec![
                "--privileged".into(),
                bind(Path::new("/sys/fs/bpf"), "/sys/fs/bpf"),
            ],
            &["/usr/bin/weir-agent", "mount-bpffs", "--path", "/sys/fs/bpf"],
        ),
        Duration::from_secs(30),
    );
    assert_eq!(
        out.exit_code,
        Some(0),
        "bpffs already mounted is fine: {}{}",
        out.stdout,
        out.stderr
    );

    // The agent, in a lab node, with the DaemonSet's capabilities and mounts.
    let mut node = Node::new("10.87.1.0/24");
    let manifests = ManifestDir::new();
    let socket = node.state_dir.join("cni.sock");
    // The runtime's mount namespace does not see network namespaces named
    // after it started: name the node's by a process in it.
    let holder = KillOnDrop(
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", node.name()))
            .args(["sleep", "3600"])
            .spawn()
            .expect("a process in the node's namespace"),
    );
    let mut flags = vec![
        format!("--with-ns=network:/proc/{}/ns/net", holder.0.id()),
        bind(Path::new("/sys/fs/bpf"), "/sys/fs/bpf"),
        bind(&node.state_dir, &node.state_dir.display().to_string()),
        bind(manifests.path(), "/manifests"),
        bind(Path::new("/sys/fs/cgroup"), "/host/sys/fs/cgroup"),
    ];
    // As the DaemonSet: every capability dropped (the runtime's default set),
    // then its own added.
    for cap in [
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ] {
        flags.push(format!("--cap-drop=CAP_{cap}"));
    }
    for cap in &caps {
        flags.push(format!("--cap-add={cap}"));
    }
    let agent_run = run(
        "agent",
        flags,
        &[
            "/usr/bin/weir-agent",
            "run",
            "--node",
            node.name(),
            "--source",
            "dir:/manifests",
            "--bpffs-root",
            &node.bpffs_root.display().to_string(),
            "--cni-socket",
            &socket.display().to_string(),
            "--cgroup-root",
            "/host/sys/fs/cgroup",
        ],
    );
    let agent = runtime.start_run(&agent_run);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "the agent in its container never served its CNI socket:\n{}",
            agent.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    node.conf["agentSocket"] = json!(socket);
    let a = node.add_pod("a");
    let client = node.add_pod("client");
    let _server = WhoAmI::start(&a.ns, "a", a.ipv4(), &[8080]);
    manifests.write(
        "web.yaml",
        &[
            service("web", VIP, &[port("http", 80, "8080", "TCP")]),
            slice(
                "web-x",
                "web",
                node.name(),
                &[("http", 8080, "TCP")],
                &[Ep::ready(a.ipv4())],
            ),
        ],
    );
    let front = format!("{VIP}:80/TCP");
    let deadline = Instant::now() + Duration::from_secs(30);
    while frontend(&weirctl(&node.bpffs_root, &["services"]), &front).is_none_or(|f| f["count"] != 1) {
        assert!(
            Instant::now() < deadline,
            "the Service never reached the maps:\n{}",
            agent.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let vip = SocketAddr::new(VIP.parse().expect("vip"), 80);
    assert_eq!(
        ask_tcp(&client.ns, vip).expect("through the ClusterIP").server,
        "a"
    );

    // The agent's container killed: the pinned datapath keeps forwarding.
    let kill = runtime
        .ctr()
        .args(["task", "kill", "-s", "SIGKILL", &agent_run.id])
        .status()
        .expect("ctr task kill");
    assert!(kill.success());
    let out = agent.wait(Duration::from_secs(30));
    assert_ne!(out.exit_code, Some(0), "killed: {}", out.stdout);
    for i in 0..10 {
        let a =
            ask_tcp(&client.ns, vip).unwrap_or_else(|e| panic!("connection {i} with the agent gone: {e}"));
        assert_eq!(a.server, "a");
    }
}
