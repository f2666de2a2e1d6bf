//! What the pod-to-pod benchmarks share: an ordinary client's new TCP
//! connections per second (the kernel picks the source port), one iperf3
//! stream's throughput, and the statistics they are reported with.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{Netns, Node, Pod, PodSpec, node::result_ips};

pub const IPERF_PORT: u16 = 5201;
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// `iperf3 -s` in a pod, killed on drop.
pub struct Iperf3Server(Child);

impl Iperf3Server {
    pub fn start(ns: &Netns, ip: IpAddr) -> Self {
        // `ip netns exec` execs iperf3: the child is iperf3 itself.
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "iperf3", "-s", "-B"])
            .arg(ip.to_string())
            .args(["-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn iperf3 -s (is iperf3 installed? scripts/setup.sh)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ns
            .sh(&format!("ss -Hltn sport = :{IPERF_PORT}"))
            .contains(&IPERF_PORT.to_string())
        {
            assert!(Instant::now() < deadline, "iperf3 -s not listening after 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One ordinary connection: the kernel picks the source port; connect, a 3-byte
/// request, the 1-byte answer, then the server's close (EOF) and ours (the
/// server closes first: its side keeps the TIME_WAIT, as a server's does).
pub fn one_connection(to: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&to, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"hi\n")?;
    let mut b = [0u8; 8];
    s.read_exact(&mut b[..1])?;
    // Until EOF: the server's FIN.
    while s.read(&mut b)? > 0 {}
    Ok(())
}

/// Connections per second from `threads` threads in `ns` for `d`; and the
/// failed attempts.
pub fn conn_rate(ns: &Netns, to: SocketAddr, threads: usize, d: Duration) -> (f64, u64) {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = barrier.clone();
            ns.spawn(move || {
                let (mut ok, mut errors) = (0u64, 0u64);
                barrier.wait();
                let t0 = Instant::now();
                while t0.elapsed() < d {
                    match one_connection(to) {
                        Ok(()) => ok += 1,
                        Err(_) => errors += 1,
                    }
                }
                (ok, errors, t0.elapsed().as_secs_f64())
            })
        })
        .collect();
    let (mut ok, mut errors, mut secs) = (0, 0, 0.0f64);
    for h in handles {
        let (o, e, s) = h.join().expect("client thread");
        ok += o;
        errors += e;
        secs = secs.max(s);
    }
    (ok as f64 / secs, errors)
}

/// The client namespace's count of SYNs sent again (`TcpExt: TCPSynRetrans`
/// of its `/proc/net/netstat`): a connection that waited a second or more.
pub fn syn_retransmits(ns: &Netns) -> u64 {
    let text = ns.sh("cat /proc/net/netstat");
    let mut tcp_ext = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next().unwrap_or(""), tcp_ext.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "TCPSynRetrans")
        .and_then(|(_, v)| v.parse().ok())
        .expect("TcpExt: TCPSynRetrans in /proc/net/netstat")
}

/// One iperf3 run of one TCP stream from `ns` to `to`: the receiver's bits per
/// second and the sender's retransmissions.
pub fn iperf3(ns: &Netns, to: IpAddr, secs: u32) -> (f64, u64) {
    let out = ns.exec(&[
        "iperf3",
        "-c",
        &to.to_string(),
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &secs.to_string(),
        "-O",
        "1",
        "-J",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 -J output is not JSON ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && v.get("error").is_none(),
        "iperf3 failed: {}",
        v["error"]
    );
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no end.sum_received.bits_per_second in {v}"));
    let retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    (bps, retransmits)
}

pub fn median(v: &[f64]) -> f64 {
    let mut r = v.to_vec();
    r.sort_by(f64::total_cmp);
    match r.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => r[n / 2],
        n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
    }
}

pub fn min_max(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// `host-local` IPAM over the node's pod CIDR, its store in the node's state
/// directory, a default route via the gateway (the CIDR's first address).
pub fn host_local(node: &Node) -> Value {
    json!({
        "type": "host-local",
        "ranges": [[{ "subnet": node.pod_cidr() }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": node.state_dir.join("host-local"),
    })
}

/// A pod wired by a reference plugin (`conf`, one plugin) as a runtime would.
pub fn reference_pod(node: &Node, name: &str, conf: &Value) -> Pod {
    let (ns, spec) = PodSpec::with_netns(name);
    let result = node.run_chain(&spec, "ADD", std::slice::from_ref(conf), None);
    Pod {
        ips: result_ips(&result),
        result,
        spec,
        ns,
    }
}
