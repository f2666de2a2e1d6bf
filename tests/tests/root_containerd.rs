//! Tier 2 (root): a real container runtime drives `weir-cni`.
//!
//! A private `containerd` (1.6, Debian's) and `ctr run --cni` start a busybox container
//! from a plain directory rootfs; `ctr` calls the plugin exactly as a runtime does (libcni:
//! the first conflist of `/etc/cni/net.d`, the binary from the plugin directories, ADD
//! before the task starts, DEL after it exits). The container checks its address, its
//! default route and that it reaches the node; afterwards we check that DEL released the
//! address and removed the host side. A stand-in for `weir-agent` on the plugin's
//! `agentSocket` checks that ADD registered the pod and DEL unregistered it.
//!
//! Nothing of the machine is touched: see `weir_lab::containerd` for how the runtime and
//! `ctr` are kept to private mount namespaces.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, TcpListener},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use serde_json::{Value, json};
use weir_lab::{
    TempDir, bins,
    containerd::{self, Containerd, Run, busybox_rootfs, copy_executable},
    require_root, unique,
};

const NETWORK_NAME: &str = "weir-ctr-test";
/// How long the whole `ctr run` may take before we kill it.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn root_containerd_runs_pod_networked_by_weir_cni() {
    require_root();
    containerd::require_tools();

    let dir = TempDir::new("weir-ctr-");
    // A /24 and a node address of their own, per process, so parallel runs do not collide.
    let octet = 10 + std::process::id() % 230;
    let subnet = format!("10.250.{octet}.0/24");
    let node_ip = Ipv4Addr::new(10, 251, octet as u8, 1);

    let rootfs = busybox_rootfs(&dir.join("rootfs"));
    let ipam_dir = dir.join("ipam");
    let net_d = dir.join("net.d");
    let cni_bin = dir.join("cni-bin");
    fs::create_dir_all(&ipam_dir).expect("ipam dir");
    fs::create_dir_all(&net_d).expect("net.d");
    fs::create_dir_all(&cni_bin).expect("cni-bin");

    // A stand-in for weir-agent: records what the plugin registers and answers ok.
    let agent = FakeAgent::start(&dir.join("agent.sock"));
    // libcni 1.0 (in containerd 1.6) knows CNI versions up to 1.0.0.
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [{
            "type": "weir-cni",
            "ipam": { "ranges": [[{ "subnet": subnet }]], "dataDir": ipam_dir },
            "agentSocket": agent.socket,
        }],
    });
    fs::write(
        net_d.join("00-weir-test.conflist"),
        serde_json::to_vec_pretty(&conflist).expect("json"),
    )
    .expect("write conflist");
    copy_executable(&bins::path("weir-cni"), &cni_bin.join("weir-cni"));

    // The node side: an address of the root namespace (not the pod's gateway) that the pod
    // reaches through its default route, and a TCP listener on it.
    let _node_address = NodeAddress::new(&unique("wd"), node_ip);
    let listener = TcpListener::bind((node_ip, 0)).expect("listen on the node address");
    let port = listener.local_addr().expect("local addr").port();

    let containerd = Containerd::start(dir.path());
    let container_id = unique("weirctr");
    // libcni's CNI_CONTAINERID for `ctr run`: "<containerd namespace>-<id>".
    let cni_container_id = format!("default-{container_id}");

    // While the pod is up: take what it sends, snapshot the IPAM store, then answer.
    let (seen_tx, seen_rx) = mpsc::channel();
    let server = {
        let ipam_dir = ipam_dir.clone();
        thread::spawn(move || {
            let (stream, peer) = listener.accept().expect("accept");
            let mut line = String::new();
            BufReader::new(&stream)
                .read_line(&mut line)
                .expect("read from pod");
            let store_while_up = files_under(&ipam_dir);
            (&stream).write_all(b"hello from node\n").expect("answer pod");
            seen_tx.send((peer, line, store_while_up)).expect("send");
        })
    };

    let script = format!(
        "set -e
echo '### addr'; ip -4 -o addr show dev eth0
echo '### link'; ip -o link show dev eth0
echo '### route'; ip -4 route
echo '### ping'; ping -c 1 -W 3 {node_ip}
echo '### tcp'; echo hello from pod | nc -w 5 {node_ip} {port}
echo '### done'"
    );
    let run = containerd.run(
        &Run {
            id: container_id.clone(),
            rootfs: Some(rootfs),
            net_d: Some(net_d),
            cni_bin: Some(cni_bin),
            args: vec!["/bin/sh".into(), "-c".into(), script],
            ..Run::default()
        },
        RUN_TIMEOUT,
    );
    println!(
        "ctr run exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        run.exit_code, run.stdout, run.stderr
    );
    assert_eq!(
        run.exit_code,
        Some(0),
        "the container failed (ADD, its checks, or DEL): see its output above; containerd log:\n{}",
        containerd.log()
    );
    let out = &run.stdout;
    assert!(
        out.contains("### done"),
        "container script did not finish:\n{out}"
    );

    // Address in the subnet, on eth0.
    let pod_ip = pod_ipv4(out).unwrap_or_else(|| panic!("no IPv4 address on eth0:\n{out}"));
    let net: ipnetwork::Ipv4Network = subnet.parse().expect("subnet");
    assert!(
        net.contains(pod_ip),
        "pod address {pod_ip} not in {subnet}:\n{out}"
    );
    // A default route.
    let routes = section(out, "route");
    assert!(
        routes.lines().any(|l| l.starts_with("default ")),
        "no default route in the pod:\n{routes}"
    );
    // Reachability: ICMP and TCP to the node's address, from the pod's address.
    assert!(
        section(out, "ping").contains("1 packets received"),
        "ping to {node_ip} failed:\n{out}"
    );
    assert!(
        section(out, "tcp").contains("hello from node"),
        "no TCP answer from the node:\n{out}"
    );
    let (peer, line, store_while_up) = seen_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the node saw no connection");
    server.join().expect("server thread");
    assert_eq!(line.trim(), "hello from pod");
    assert_eq!(
        peer.ip(),
        pod_ip,
        "the node saw the pod under another address (NAT?)"
    );

    // While the pod was up, the IPAM store held its allocation...
    let holds = |files: &[(PathBuf, String)]| {
        files
            .iter()
            .filter(|(path, content)| {
                path.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(&pod_ip.to_string()))
                    || content.contains(&cni_container_id)
            })
            .map(|(path, _)| path.display().to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        !holds(&store_while_up).is_empty(),
        "no allocation for {pod_ip} / {cni_container_id} in the IPAM store while the pod was up: \
         {store_while_up:?}"
    );
    // ...and DEL (called by ctr after the task exited) released it.
    let store_after = files_under(&ipam_dir);
    assert!(
        holds(&store_after).is_empty(),
        "DEL left the allocation of {pod_ip} in the IPAM store: {:?}",
        holds(&store_after)
    );
    // The plugin registered the pod with the agent on ADD and unregistered it on DEL.
    let requests = agent.requests();
    let add = requests
        .iter()
        .find(|r| r["op"] == "add")
        .unwrap_or_else(|| panic!("ADD did not register the pod with the agent: {requests:?}"));
    assert_eq!(add["containerId"], cni_container_id.as_str(), "{add}");
    assert_eq!(add["ifname"], "eth0", "{add}");
    assert_eq!(add["ips"], json!([pod_ip.to_string()]), "{add}");
    let del = requests
        .iter()
        .find(|r| r["op"] == "del")
        .unwrap_or_else(|| panic!("DEL did not unregister the pod from the agent: {requests:?}"));
    assert_eq!(del["containerId"], cni_container_id.as_str(), "{del}");
    // DEL removed the host side: the veth peer (eth0@ifN names its host ifindex) and the
    // route to the pod.
    let link = section(out, "link");
    let host_ifindex = link
        .split_once("@if")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("cannot read the host peer of eth0 from {link:?}"));
    let links = sh("ip -o link show");
    assert!(
        !links.lines().any(|l| l.starts_with(&format!("{host_ifindex}: "))),
        "the host side of the pod (ifindex {host_ifindex}) is still there after DEL:\n{links}"
    );
    let route = sh(&format!("ip -4 route show to {pod_ip}"));
    assert!(
        route.trim().is_empty(),
        "route to {pod_ip} left after DEL: {route}"
    );
}

/// Answers `weir-cni`'s registration requests (one JSON line per connection) with
/// `{"status":"ok"}` and keeps them.
struct FakeAgent {
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl FakeAgent {
    fn start(socket: &Path) -> Self {
        let listener = UnixListener::bind(socket).expect("bind fake agent socket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        // Lives until the test process exits; its socket goes with the temp dir.
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut line = String::new();
                if BufReader::new(&stream).read_line(&mut line).is_err() {
                    continue;
                }
                let request = serde_json::from_str(&line).unwrap_or(Value::String(line));
                log.lock().expect("agent log").push(request);
                let _ = (&stream).write_all(b"{\"status\":\"ok\"}\n");
            }
        });
        Self {
            socket: socket.to_path_buf(),
            seen,
        }
    }

    fn requests(&self) -> Vec<Value> {
        self.seen.lock().expect("agent log").clone()
    }
}

/// An address of the root namespace, `ip/32`, on an interface of its own, removed on
/// drop. The kernel has no `dummy` driver: a veth pair whose ends both stay here.
struct NodeAddress {
    name: String,
}

impl NodeAddress {
    fn new(name: &str, ip: Ipv4Addr) -> Self {
        sh(&format!("ip link add {name} type veth peer name {name}p"));
        let me = Self {
            name: name.to_owned(),
        };
        sh(&format!(
            "ip addr add {ip}/32 dev {name} && ip link set {name}p up && ip link set {name} up"
        ));
        me
    }
}

impl Drop for NodeAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.name]).status();
    }
}

/// Every regular file under `dir`, with its content (lossy).
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let content = fs::read(&path).map(|b| String::from_utf8_lossy(&b).into_owned());
                out.push((path, content.unwrap_or_default()));
            }
        }
    }
    out
}

/// The lines after `### name` up to the next `### ` marker.
fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let marker = format!("### {name}\n");
    let Some(start) = out.find(&marker) else { return "" };
    let rest = &out[start + marker.len()..];
    &rest[..rest.find("\n### ").map_or(rest.len(), |i| i + 1)]
}

/// The address of `ip -4 -o addr show dev eth0` (`... inet A.B.C.D/N ...`).
fn pod_ipv4(out: &str) -> Option<Ipv4Addr> {
    let addr = section(out, "addr");
    let mut words = addr.split_whitespace();
    words.find(|w| *w == "inet")?;
    words.next()?.split('/').next()?.parse().ok()
}

fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
