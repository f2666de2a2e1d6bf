//! ADD: wire a pod to the node with a veth pair and give it its addresses.
//!
//! # Routing design
//!
//! The pod's address is a /32 (IPv4) or /128 (IPv6) on `CNI_IFNAME`: the pod has
//! no on-link subnet, so every packet it sends, even to a pod of the same node,
//! goes to its next hop, the range's `gateway` (default: the subnet's first
//! address, `.1`/`::1`, never allocated). The gateway is reached through an on-link
//! route (`gateway/32 dev IFNAME scope link`) and `default via gateway dev IFNAME`,
//! and resolved by a PERMANENT neighbour entry `gateway -> host veth MAC`: no ARP,
//! no proxy-ARP, and the gateway address needs to exist nowhere. So every packet
//! the pod sends arrives on the host side of its veth, where Weir's TC programs see
//! it. On the node, `podIP/32 dev HOSTVETH scope link` (/128 for IPv6) routes
//! traffic back to the pod. IPv6 addresses are added with IFA_F_NODAD and DAD is
//! off on both ends, so the pod can talk as soon as ADD returns.
//!
//! # Idempotence and rollback
//!
//! The host veth's name derives from the container id and ifname
//! ([`crate::naming`]): an ADD that finds that veth paired with `CNI_IFNAME` in
//! `CNI_NETNS` reuses it and (re)applies addresses and routes; the IPAM hands the
//! same attachment the same addresses. Whatever a failing ADD created itself (veth,
//! addresses) is undone by a scope guard, [`Rollback`], on every error path.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::Value;
use weir_agent_api::{self as agent_api, Endpoint, Request};

use super::ipam::{self, Addressing};
use crate::{
    Error, naming,
    netlink::{self, Link, Netlink, NetlinkError},
    netns::{self, Netns},
    spec::{Attachment, CniResult, Env, Interface, IpConfig, NetConf, Route},
};

/// Used when the configuration sets no `mtu` and the node has no IPv4 default route.
pub const FALLBACK_MTU: u32 = 1500;

pub fn run(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<Value, Error> {
    let netns_path = env.netns.clone().unwrap_or_default();
    let netns = Netns::open(&netns_path).map_err(Error::BadNetns)?;
    let me = ipam::attachment(env);
    let host_name = naming::host_veth(&me);
    let node = Netlink::current()?;
    // A CNI_NETNS that is not a network namespace fails here: the runtime's fault.
    let pod = Netlink::inside(&netns).map_err(|e| match e {
        NetlinkError::Netns(e) => Error::BadNetns(e),
        e => e.into(),
    })?;

    let mut rollback = Rollback::new(&node, &me);

    let reused = match (node.link(&host_name)?, pod.link(&env.ifname)?) {
        (Some(h), Some(p)) if p.is_veth && p.peer_index == Some(h.index) => Some((h, p)),
        (_, Some(_)) => {
            return Err(Error::InterfaceExists {
                ifname: env.ifname.clone(),
                netns: netns_path.display().to_string(),
            });
        }
        (Some(_), None) => {
            // Our veth from an earlier attempt, paired with nothing in this pod.
            node.delete_link(&host_name)?;
            None
        }
        (None, None) => None,
    };

    let addressing = ipam::add(env, conf, stdin)?;
    let (host, pod_link) = match reused {
        Some(links) => links,
        None => {
            // A repeated ADD must not free the addresses of a pod that works, so
            // only an ADD that wires the pod anew gives them back on failure.
            rollback.ipam = Some((conf.clone(), env.clone(), stdin.to_vec()));
            let mtu = match conf.mtu {
                Some(mtu) => mtu,
                None => node.uplink_mtu()?.unwrap_or(FALLBACK_MTU),
            };
            create_veth(
                &node,
                &pod,
                &netns,
                &me,
                &env.ifname,
                mtu,
                &conf.name,
                &mut rollback,
            )?
        }
    };

    configure_addresses(&node, &pod, &host, &pod_link, &addressing)?;

    if let Some(socket) = &conf.agent_socket {
        register(socket, env, &host, &pod_link, &addressing)?;
    }

    let result = build_result(conf, env, &host, &pod_link, &addressing);
    rollback.disarm();
    Ok(result.render(conf.version))
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn create_veth(
    node: &Netlink,
    pod: &Netlink,
    netns: &Netns,
    me: &Attachment,
    ifname: &str,
    mtu: u32,
    network: &str,
    rollback: &mut Rollback<'_>,
) -> Result<(Link, Link), Error> {
    let host_name = naming::host_veth(me);
    let alias = naming::alias(network, me);
    node.create_veth(&host_name, ifname, netns, mtu, naming::group(network), &alias)?;
    rollback.veth = true;
    let lookup = |nl: &Netlink, name: &str| -> Result<Link, Error> {
        nl.link(name)?.ok_or_else(|| Error::UnknownContainer {
            container_id: me.container_id.clone(),
            ifname: me.ifname.clone(),
            reason: format!("link {name} vanished while being set up"),
        })
    };

    // DAD would leave IPv6 addresses (link-local ones included) unusable for a
    // second or so; there is nobody else on this link to collide with.
    let dad_off = |ifname: &str| {
        for (key, value) in [
            (format!("net/ipv6/conf/{ifname}/accept_dad"), "0"),
            (format!("net/ipv6/conf/{ifname}/accept_ra"), "0"),
        ] {
            if let Err(e) = netns::write_sysctl(&key, value) {
                eprintln!("weir-cni: sysctl {key}={value}: {e} (IPv6 disabled?)");
            }
        }
    };
    let pod_ifname = ifname.to_owned();
    netns.run(move || dad_off(&pod_ifname)).map_err(Error::Netns)?;
    dad_off(&host_name);

    let pod_link = lookup(pod, ifname)?;
    pod.set_up(pod_link.index)?;
    let host = lookup(node, &host_name)?;
    if host.alias.as_deref() != Some(alias.as_str()) {
        // Kernels that ignore IFLA_IFALIAS at creation (the group marks the veth).
        node.set_alias(host.index, &alias)?;
    }
    node.set_up(host.index)?;
    Ok((host, pod_link))
}

fn host_net(ip: IpAddr) -> IpNetwork {
    // A host prefix is always valid for its family.
    IpNetwork::new(ip, netlink::host_prefix(ip)).unwrap_or_else(|_| IpNetwork::from(ip))
}

fn default_dst(ip: IpAddr) -> IpNetwork {
    let unspecified: IpAddr = if ip.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    IpNetwork::new(unspecified, 0).unwrap_or_else(|_| IpNetwork::from(unspecified))
}

fn configure_addresses(
    node: &Netlink,
    pod: &Netlink,
    host: &Link,
    pod_link: &Link,
    addressing: &Addressing,
) -> Result<(), Error> {
    // Routes are added, never replaced (see `Netlink::ensure_route`); the
    // neighbour entry lives on the pod's end of our own veth, so it is ours.
    for a in &addressing.addrs {
        pod.add_address(pod_link.index, a.ip, netlink::host_prefix(a.ip))?;
        pod.ensure_route(host_net(a.gateway), pod_link.index, None)?;
        pod.replace_permanent_neighbour(pod_link.index, a.gateway, &host.mac)?;
        pod.ensure_route(default_dst(a.ip), pod_link.index, Some(a.gateway))?;
        node.ensure_route(host_net(a.ip), host.index, None)?;
    }
    for r in &addressing.routes {
        if r.dst.prefix() == 0 {
            continue;
        }
        let gw = r.gw.or_else(|| {
            addressing
                .addrs
                .iter()
                .find(|a| a.ip.is_ipv4() == r.dst.is_ipv4())
                .map(|a| a.gateway)
        });
        pod.ensure_route(r.dst, pod_link.index, gw)?;
    }
    Ok(())
}

fn register(
    socket: &std::path::Path,
    env: &Env,
    host: &Link,
    pod_link: &Link,
    addressing: &Addressing,
) -> Result<(), Error> {
    let endpoint = Endpoint {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        host_ifname: host.name.clone(),
        host_ifindex: host.index,
        ips: addressing.addrs.iter().map(|a| a.ip).collect(),
        pod_namespace: env.args.pod_namespace.clone(),
        pod_name: env.args.pod_name.clone(),
        mac: pod_link.mac.as_slice().try_into().ok(),
        host_mac: host.mac.as_slice().try_into().ok(),
    };
    agent_api::call(socket, &Request::Add(endpoint)).map_err(|source| Error::Agent {
        socket: socket.display().to_string(),
        source,
    })
}

pub(super) fn build_result(
    conf: &NetConf,
    env: &Env,
    host: &Link,
    pod_link: &Link,
    addressing: &Addressing,
) -> CniResult {
    // Chained after another plugin (not the usual place), we add to its result as ptp does.
    let mut result = conf.prev_result.clone().unwrap_or_default();
    let base = result.interfaces.len();
    result.interfaces.push(Interface {
        name: host.name.clone(),
        mac: Some(netlink::mac_string(&host.mac)),
        sandbox: None,
    });
    result.interfaces.push(Interface {
        name: env.ifname.clone(),
        mac: Some(netlink::mac_string(&pod_link.mac)),
        sandbox: Some(env.netns.clone().unwrap_or_default().display().to_string()),
    });
    for a in &addressing.addrs {
        result.ips.push(IpConfig {
            address: host_net(a.ip),
            gateway: Some(a.gateway),
            interface: Some(base + 1),
        });
        result.routes.push(Route {
            dst: default_dst(a.ip),
            gw: Some(a.gateway),
        });
    }
    result
        .routes
        .extend(addressing.routes.iter().filter(|r| r.dst.prefix() != 0).cloned());
    if let Some(dns) = addressing.dns.clone().filter(|_| conf.dns == Default::default()) {
        result.dns = dns;
    } else if conf.dns != Default::default() {
        result.dns = conf.dns.clone();
    }
    result
}

/// Undoes, on drop, what this ADD created, unless disarmed: the veth (its peer and
/// the routes through it go with it) and the addresses.
struct Rollback<'a> {
    node: &'a Netlink,
    me: &'a Attachment,
    veth: bool,
    ipam: Option<(NetConf, Env, Vec<u8>)>,
    armed: bool,
}

impl<'a> Rollback<'a> {
    fn new(node: &'a Netlink, me: &'a Attachment) -> Self {
        Rollback {
            node,
            me,
            veth: false,
            ipam: None,
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.veth {
            // Deleting one end of a veth deletes both.
            let name = naming::host_veth(self.me);
            if let Err(e) = self.node.delete_link(&name) {
                eprintln!("weir-cni: rollback: deleting {name}: {e}");
            }
        }
        if let Some((conf, env, stdin)) = self.ipam.take() {
            let freed = ipam::del(&env, &conf, &stdin);
            if let Err(e) = freed {
                eprintln!(
                    "weir-cni: rollback: releasing the addresses of {}/{}: {e}",
                    self.me.container_id, self.me.ifname
                );
            }
        }
    }
}
