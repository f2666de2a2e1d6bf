//! `weirctl status`: the node's datapath at a glance. The agent's own account
//! (up or not, its source and whether each kind is listed and synced, its
//! build) from its health address's `/statusz`; the rest from the pins, so it
//! answers with the agent down: the node's addresses and modes, where programs
//! are attached, and how full each map is.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use serde::Serialize;
use serde_json::Value;
use weir_common::{NODE_F_HOST_STACK, NODE_F_MASQUERADE, NODE_F_TRACE};

use super::{CtlError, ip, open};
use crate::datapath::{PinLayout, maps, names, object};

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub weirctl: Build,
    pub agent: Agent,
    pub node: NodeState,
    pub attachments: Vec<Attachment>,
    pub maps: Vec<MapFill>,
}

#[derive(Debug, Serialize)]
pub struct Build {
    pub version: &'static str,
    /// A digest of the eBPF object the binary carries (the agent's is in its report).
    pub object: String,
}

#[derive(Debug, Serialize)]
pub struct Agent {
    /// Where it was asked (`--agent`).
    pub address: SocketAddr,
    /// It answered.
    pub up: bool,
    /// Why it did not.
    pub error: Option<String>,
    /// Its `/statusz`: version, object, node (and zone), source, alive, ready and why
    /// not, services and policy synced, kinds unlisted or failing.
    pub report: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct NodeState {
    /// What flows to remote endpoints are source-NATed to, per family.
    pub snat_addresses: Vec<IpAddr>,
    /// `host-stack` (pod-to-pod through the host's stack), `masquerade`,
    /// `tracing` (some `weirctl monitor --trace` follows).
    pub modes: Vec<&'static str>,
    /// `--routing vxlan`: the overlay's VNI and UDP port (0: no overlay).
    pub vni: u32,
    pub tunnel_port: u16,
    /// The node's own addresses (what NodePorts answer on, what policy always admits).
    pub addresses: Vec<IpAddr>,
}

/// Programs attached at one place.
#[derive(Debug, Serialize)]
pub struct Attachment {
    /// `cgroup`, or the interface's index.
    pub at: String,
    /// The interface's name, where `weirctl` runs in the node's network
    /// namespace (elsewhere the index names another interface or none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `pod` (a pod's host veth, with the pod's name if known), `device` (a
    /// node device or the overlay's), `cgroup` (the node's own sockets).
    pub kind: &'static str,
    pub pod: Option<String>,
    pub programs: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: Option<usize>,
    pub capacity: u32,
    /// Why it could not be counted.
    pub error: Option<String>,
}

/// The report for the datapath pinned under `pins`, asking the agent at `agent`.
pub fn status(pins: &PinLayout, agent: SocketAddr) -> Result<StatusReport, CtlError> {
    let node: maps::Node = open(pins, &maps::NODE)?;
    let addrs = node.get(&0, 0).map_err(|source| CtlError::Map {
        map: maps::NODE.name,
        source,
    })?;
    let node_ips: maps::NodeIps = open(pins, &maps::NODE_IPS)?;
    let mut addresses: Vec<IpAddr> = node_ips
        .keys()
        .filter_map(Result::ok)
        .filter_map(|k| ip(k.addr, k.family))
        .collect();
    addresses.sort();
    let snat_addresses = [
        (addrs.v4, weir_common::AF_INET),
        (addrs.v6, weir_common::AF_INET6),
    ]
    .into_iter()
    .filter(|(a, _)| *a != [0; 16])
    .filter_map(|(a, family)| ip(a, family))
    .collect();
    let modes = [
        (NODE_F_HOST_STACK, "host-stack"),
        (NODE_F_MASQUERADE, "masquerade"),
        (NODE_F_TRACE, "tracing"),
    ]
    .into_iter()
    .filter(|(bit, _)| addrs.flags & bit != 0)
    .map(|(_, name)| name)
    .collect();
    let (up, error, report) = match get_json(agent, "/statusz") {
        Ok(v) => (true, None, Some(v)),
        Err(e) => (false, Some(e), None),
    };
    let mut fills: Vec<MapFill> = maps::counted()
        .chain(std::iter::once(&names::SPEC))
        .map(|spec| {
            let counted = maps::count_entries(pins, spec);
            MapFill {
                map: spec.name,
                entries: counted.as_ref().ok().copied(),
                capacity: spec.max_entries,
                error: counted.err().map(|e| e.to_string()),
            }
        })
        .collect();
    fills.sort_by_key(|f| f.map);
    Ok(StatusReport {
        weirctl: Build {
            version: env!("CARGO_PKG_VERSION"),
            object: object::digest(),
        },
        agent: Agent {
            address: agent,
            up,
            error,
            report,
        },
        node: NodeState {
            snat_addresses,
            modes,
            vni: addrs.vni,
            tunnel_port: u16::from_be(addrs.tunnel_port),
            addresses,
        },
        attachments: attachments(pins, crate::node_net::in_netns(addrs.netns_cookie))?,
        maps: fills,
    })
}

/// Every pinned link, by where it is attached; `named`: the interfaces are
/// this namespace's, so their names are looked up.
fn attachments(pins: &PinLayout, named: bool) -> Result<Vec<Attachment>, CtlError> {
    let endpoints: maps::Endpoints = open(pins, &maps::ENDPOINTS)?;
    let mut pod_ifindexes = std::collections::BTreeMap::new();
    for (key, info) in endpoints.iter().filter_map(Result::ok) {
        if let Some(ip) = ip(key.addr, key.family) {
            pod_ifindexes.entry(info.ifindex).or_insert(ip);
        }
    }
    let names = super::name_table(pins);
    let interfaces = if named {
        crate::node_net::interface_names()
    } else {
        std::collections::BTreeMap::new()
    };
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(pins.links_dir()) else {
        return Ok(out);
    };
    for dir in dirs.filter_map(Result::ok) {
        let at = dir.file_name().to_string_lossy().into_owned();
        let mut programs: Vec<String> = std::fs::read_dir(dir.path())
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        programs.sort();
        let pod_ip = at.parse::<u32>().ok().and_then(|i| pod_ifindexes.get(&i));
        let kind = if at == "cgroup" {
            "cgroup"
        } else if pod_ip.is_some() {
            "pod"
        } else {
            "device"
        };
        out.push(Attachment {
            pod: pod_ip.and_then(|ip| names.pods.get(ip).cloned()),
            name: at.parse::<u32>().ok().and_then(|i| interfaces.get(&i).cloned()),
            at,
            kind,
            programs,
        });
    }
    // The cgroup, the devices, then pods; by index within each.
    out.sort_by_key(|a| {
        (
            a.kind != "cgroup",
            a.kind == "pod",
            a.at.parse::<u32>().unwrap_or(0),
        )
    });
    Ok(out)
}

/// `GET path` on `addr`, its body as JSON: a one-request HTTP/1.0 client, as
/// the agent's health server answers any such request and closes.
fn get_json(addr: SocketAddr, path: &str) -> Result<Value, String> {
    let timeout = Duration::from_secs(2);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("no answer on {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut answer)
        .map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| "not an HTTP answer".to_owned())?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("{path}: {}", head.lines().next().unwrap_or_default()));
    }
    serde_json::from_str(body).map_err(|e| format!("{path}: {e}"))
}

impl StatusReport {
    /// For people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        match &self.agent.report {
            Some(r) => {
                let text = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
                let words = |k: &str| -> Vec<String> {
                    r[k].as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                        .unwrap_or_default()
                };
                let ready = if r["ready"] == true {
                    "ready".to_owned()
                } else {
                    format!("not ready: {}", list(&words("not_ready")))
                };
                out.push_str(&format!("agent:     up at {}, {ready}\n", self.agent.address));
                let zone = r["zone"]
                    .as_str()
                    .map(|z| format!(" (zone {z})"))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "           node {}{zone}, source {}, version {} (object {}){}\n",
                    text("node"),
                    text("source"),
                    text("version"),
                    text("object"),
                    if text("object") == self.weirctl.object {
                        ""
                    } else {
                        ", another build than this weirctl"
                    }
                ));
                out.push_str(&format!(
                    "           services synced: {}, policy synced: {}, last service sync {}\n",
                    r["services_synced"],
                    r["policy_synced"],
                    text("last_service_sync")
                ));
                let failing = words("failing");
                if !failing.is_empty() {
                    out.push_str(&format!("           failing: {}\n", list(&failing)));
                }
            }
            None => out.push_str(&format!(
                "agent:     down ({}); the datapath keeps forwarding from its pins\n",
                self.agent.error.as_deref().unwrap_or("no answer")
            )),
        }
        let ips = |v: &[IpAddr]| list(&v.iter().map(ToString::to_string).collect::<Vec<_>>());
        out.push_str(&format!(
            "node:      addresses {}; source NAT {}; modes {}{}\n",
            ips(&self.node.addresses),
            ips(&self.node.snat_addresses),
            list(
                &self
                    .node
                    .modes
                    .iter()
                    .map(|m| (*m).to_owned())
                    .collect::<Vec<_>>()
            ),
            if self.node.tunnel_port != 0 {
                format!("; overlay VNI {} on UDP {}", self.node.vni, self.node.tunnel_port)
            } else {
                String::new()
            }
        ));
        out.push_str("\nattached:\n");
        for a in &self.attachments {
            let name = a.name.as_ref().map_or_else(String::new, |n| format!(" {n}"));
            let at = match (a.kind, &a.pod) {
                ("cgroup", _) => "cgroup".to_owned(),
                (kind, Some(pod)) => format!("{kind} ifindex {}{name} ({pod})", a.at),
                (kind, None) => format!("{kind} ifindex {}{name}", a.at),
            };
            out.push_str(&format!("  {at}: {}\n", a.programs.join(" ")));
        }
        out.push_str("\nmaps:\n");
        for m in &self.maps {
            match m.entries {
                Some(n) => out.push_str(&format!(
                    "  {:<16} {:>9} of {:>9} ({:.1}%)\n",
                    m.map,
                    n,
                    m.capacity,
                    n as f64 * 100.0 / f64::from(m.capacity.max(1))
                )),
                None => out.push_str(&format!(
                    "  {:<16} unreadable: {}\n",
                    m.map,
                    m.error.as_deref().unwrap_or("?")
                )),
            }
        }
        out
    }
}
