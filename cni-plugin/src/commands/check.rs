//! CHECK: compare the attachment as it is with `prevResult` and report every
//! difference at once.

use ipnetwork::IpNetwork;

use super::ipam;
use crate::{
    Error,
    ipam::delegate,
    naming,
    netlink::{self, Netlink},
    netns::{Netns, NetnsError},
    spec::{Env, IpamConf, NetConf},
};

fn parse_mac(s: &str) -> Option<Vec<u8>> {
    s.split(':').map(|b| u8::from_str_radix(b, 16).ok()).collect()
}

pub fn run(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), Error> {
    let prev = conf.prev_result.as_ref().ok_or(Error::MissingPrevResult)?;
    let me = ipam::attachment(env);
    let unknown = |reason: String| Error::UnknownContainer {
        container_id: me.container_id.clone(),
        ifname: me.ifname.clone(),
        reason,
    };
    let netns_path = env.netns.clone().unwrap_or_default();
    let netns = match Netns::open(&netns_path) {
        Ok(ns) => ns,
        Err(NetnsError::NotFound { path }) => {
            return Err(unknown(format!("{} does not exist", path.display())));
        }
        Err(e) => return Err(Error::BadNetns(e)),
    };
    let node = Netlink::current()?;
    let host_name = naming::host_veth(&me);
    let host = node
        .link(&host_name)?
        .ok_or_else(|| unknown(format!("host veth {host_name} does not exist")))?;
    match &conf.ipam {
        IpamConf::Builtin { .. } => {
            if ipam::held(env, conf)?.unwrap_or_default().is_empty() {
                return Err(unknown("it holds no address".into()));
            }
        }
        IpamConf::Delegate { plugin } => {
            delegate::exec(plugin, &env.path, "CHECK", stdin)?;
        }
    }

    let pod = Netlink::inside(&netns)?;
    let mut diffs = Vec::new();
    let ns_str = netns_path.display().to_string();
    let Some(pod_link) = pod.link(&env.ifname)? else {
        return Err(Error::CheckMismatch(vec![format!(
            "interface {} is missing from {ns_str}",
            env.ifname
        )]));
    };
    if pod_link.peer_index != Some(host.index) {
        diffs.push(format!("{} is not paired with host veth {host_name}", env.ifname));
    }
    if !pod_link.up {
        diffs.push(format!("{} is down", env.ifname));
    }
    if !host.up {
        diffs.push(format!("host veth {host_name} is down"));
    }
    let our_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.as_deref() == Some(ns_str.as_str()));
    match our_index.map(|i| &prev.interfaces[i]) {
        None => diffs.push(format!("prevResult has no interface {} in {ns_str}", env.ifname)),
        Some(iface) => {
            if let Some(mac) = &iface.mac
                && parse_mac(mac).as_deref() != Some(pod_link.mac.as_slice())
            {
                diffs.push(format!(
                    "{} has MAC {} instead of {mac}",
                    env.ifname,
                    netlink::mac_string(&pod_link.mac)
                ));
            }
        }
    }
    let addrs = pod.addresses(pod_link.index)?;
    let v4_routes = pod.routes(false)?;
    let v6_routes = pod.routes(true)?;
    let neighbours = pod.neighbours(pod_link.index)?;
    let node_routes: Vec<_> = node
        .routes(false)?
        .into_iter()
        .chain(node.routes(true)?)
        .collect();
    for ipc in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_some() && ip.interface == our_index)
    {
        if !addrs.contains(&ipc.address) {
            diffs.push(format!("address {} is missing from {}", ipc.address, env.ifname));
        }
        let ip = ipc.address.ip();
        if !node_routes.iter().any(|r| {
            r.dst.ip() == ip && r.dst.prefix() == netlink::host_prefix(ip) && r.oif == Some(host.index)
        }) {
            diffs.push(format!("the node has no route to {ip} via {host_name}"));
        }
        if let Some(gw) = ipc.gateway
            && !neighbours
                .iter()
                .any(|n| n.ip == gw && n.permanent && n.mac == host.mac)
        {
            diffs.push(format!(
                "no permanent neighbour entry {gw} -> {} on {}",
                netlink::mac_string(&host.mac),
                env.ifname
            ));
        }
    }
    for r in &prev.routes {
        let table = if r.dst.is_ipv4() { &v4_routes } else { &v6_routes };
        let found = table.iter().any(|have| {
            same_net(have.dst, r.dst)
                && have.oif == Some(pod_link.index)
                && (r.gw.is_none() || have.gw == r.gw)
        });
        if !found {
            let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            diffs.push(format!("route {}{via} is missing from {ns_str}", r.dst));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(Error::CheckMismatch(diffs))
    }
}

fn same_net(a: IpNetwork, b: IpNetwork) -> bool {
    a.prefix() == b.prefix() && a.network() == b.network()
}
