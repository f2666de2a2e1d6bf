//! The kernel-facing side: links, addresses, routes and neighbours over rtnetlink,
//! in one network namespace per [`Netlink`]. Thin on purpose: policy lives in the
//! commands.
//!
//! A netlink socket stays bound to the namespace it was created in, so for a pod
//! we create it on a thread that entered the pod's namespace ([`Netns::run`]) and
//! then drive it from the main thread like any other.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
};

use futures::TryStreamExt as _;
use ipnetwork::IpNetwork;
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope, RouteVia},
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::runtime::Runtime;

use crate::netns::{Netns, NetnsError};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket in {ns}: {source}")]
    Socket { ns: String, source: std::io::Error },
    #[error("starting the netlink runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{op} in {ns}: {source}")]
    Request {
        op: String,
        ns: String,
        source: rtnetlink::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(
        "route {dst} in {ns} already exists ({existing}) and is not the one weir-cni would add: left as it is"
    )]
    RouteTaken {
        dst: IpNetwork,
        ns: String,
        existing: String,
    },
}

impl NetlinkError {
    /// The errno the kernel answered with, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(m.raw_code().abs()),
            _ => None,
        }
    }
}

/// A link as we care about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub is_veth: bool,
    /// For a veth: the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    pub alias: Option<String>,
    /// The device group (`ip link set DEV group N`; 0 by default).
    pub group: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
}

impl RouteEntry {
    /// As `ip route` would say it.
    pub fn describe(&self) -> String {
        let via = self.gw.map(|g| format!(" via {g}")).unwrap_or_default();
        let dev = self.oif.map(|i| format!(" dev #{i}")).unwrap_or_default();
        format!("{}{via}{dev}", self.dst)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: Vec<u8>,
    pub permanent: bool,
}

pub struct Netlink {
    rt: Runtime,
    handle: Handle,
    /// Which namespace, for messages ("node" or the netns path).
    ns: String,
}

const ENODEV: i32 = libc::ENODEV;

impl Netlink {
    /// The namespace this process runs in (the node's, as the runtime calls us).
    pub fn current() -> Result<Self, NetlinkError> {
        let rt = runtime()?;
        let ns = "the node's namespace".to_owned();
        let (conn, handle, _) = {
            let _enter = rt.enter();
            rtnetlink::new_connection().map_err(|source| NetlinkError::Socket {
                ns: ns.clone(),
                source,
            })?
        };
        rt.spawn(conn);
        Ok(Netlink { rt, handle, ns })
    }

    /// A socket inside `netns`.
    pub fn inside(netns: &Netns) -> Result<Self, NetlinkError> {
        let rt = runtime()?;
        let ns = netns.path.display().to_string();
        let rt_handle = rt.handle().clone();
        let (conn, handle, _) = netns
            .run(move || {
                // The socket registers with the runtime's reactor, so enter it here.
                let _enter = rt_handle.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|source| NetlinkError::Socket {
                ns: ns.clone(),
                source,
            })?;
        rt.spawn(conn);
        Ok(Netlink { rt, handle, ns })
    }

    fn err(&self, op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError + '_ {
        let op = op.into();
        move |source| NetlinkError::Request {
            op,
            ns: self.ns.clone(),
            source,
        }
    }

    pub fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let h = self.handle.clone();
        let res = self.rt.block_on(async move {
            h.link()
                .get()
                .match_name(name.to_owned())
                .execute()
                .try_next()
                .await
        });
        match res {
            Ok(m) => Ok(m.map(link_of)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == ENODEV => Ok(None),
            Err(e) => Err(self.err(format!("looking up link {name}"))(e)),
        }
    }

    pub fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let h = self.handle.clone();
        let msgs: Vec<LinkMessage> = self
            .rt
            .block_on(async move { h.link().get().execute().try_collect().await })
            .map_err(self.err("listing links"))?;
        Ok(msgs.into_iter().map(link_of).collect())
    }

    /// Creates veth `name` in this namespace, in device group `group` and with
    /// `alias`, with its peer born in `peer_netns` as `peer`. Creating the peer in
    /// place is one netlink request; moving a device between namespaces afterwards
    /// costs ~20 ms (the kernel waits for an RCU grace period when a device leaves
    /// a namespace), most of an ADD. The group is set by the same request (the
    /// kernel takes `IFLA_GROUP` at creation, not `IFLA_IFALIAS`): a veth is
    /// marked as ours from the instant it exists.
    pub fn create_veth(
        &self,
        name: &str,
        peer: &str,
        peer_netns: &Netns,
        mtu: u32,
        group: u32,
        alias: &str,
    ) -> Result<(), NetlinkError> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .mtu(mtu)
            .setns_by_fd(peer_netns.file.as_raw_fd())
            .build();
        let msg = LinkVeth::new(name, peer)
            .mtu(mtu)
            .link_group(group)
            .alias(alias.to_owned())
            .set_info_data(netlink_packet_route::link::InfoData::Veth(
                netlink_packet_route::link::InfoVeth::Peer(peer_msg),
            ))
            .build();
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().add(msg).execute().await })
            .map_err(self.err(format!(
                "creating veth {name} with peer {peer} in {}",
                peer_netns.path.display()
            )))
    }

    pub fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().set(msg).execute().await })
            .map_err(self.err(format!("setting link {index} up")))
    }

    /// Sets the link's alias (`ip link set DEV alias ...`), our ownership mark.
    pub fn set_alias(&self, index: u32, alias: &str) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).alias(alias.to_owned()).build();
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.link().set(msg).execute().await })
            .map_err(self.err(format!("setting the alias of link {index}")))
    }

    /// Deletes link `name`; `false` when there was none.
    pub fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(link) = self.link(name)? else {
            return Ok(false);
        };
        let h = self.handle.clone();
        match self
            .rt
            .block_on(async move { h.link().del(link.index).execute().await })
        {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == ENODEV => Ok(false),
            Err(e) => Err(self.err(format!("deleting link {name}"))(e)),
        }
    }

    /// Adds (or replaces) `ip/prefix` on link `index`; IPv6 without DAD, so the
    /// address is usable at once.
    pub fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        let h = self.handle.clone();
        let mut req = h.address().add(index, ip, prefix).replace();
        if ip.is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.rt
            .block_on(req.execute())
            .map_err(self.err(format!("adding address {ip}/{prefix} to link {index}")))
    }

    pub fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>, NetlinkError> {
        let h = self.handle.clone();
        let msgs: Vec<_> = self
            .rt
            .block_on(async move {
                h.address()
                    .get()
                    .set_link_index_filter(index)
                    .execute()
                    .try_collect()
                    .await
            })
            .map_err(self.err(format!("listing addresses of link {index}")))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                let ip = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                IpNetwork::new(ip, m.header.prefix_len).ok()
            })
            .collect())
    }

    /// Adds the route to `dst` through link `oif` (via `gw`, or on-link with
    /// scope link when there is no gateway). Never replaces a route: one that is
    /// already there is fine only if it is this very route (a repeated ADD);
    /// anything else (the node's default route, when the "pod" namespace is the
    /// node's; another interface's) is an error, left untouched.
    pub fn ensure_route(&self, dst: IpNetwork, oif: u32, gw: Option<IpAddr>) -> Result<(), NetlinkError> {
        let msg = route_message(dst, oif, gw);
        let h = self.handle.clone();
        match self
            .rt
            .block_on(async move { h.route().add(msg).execute().await })
        {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::EEXIST => {
                let existing: Vec<RouteEntry> = self
                    .routes(dst.is_ipv6())?
                    .into_iter()
                    .filter(|r| r.dst == dst)
                    .collect();
                if existing.iter().any(|r| r.oif == Some(oif) && r.gw == gw) {
                    return Ok(());
                }
                Err(NetlinkError::RouteTaken {
                    dst,
                    ns: self.ns.clone(),
                    existing: existing
                        .iter()
                        .map(RouteEntry::describe)
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
            Err(e) => Err(self.err(format!("adding route {dst} dev {oif}"))(e)),
        }
    }

    /// Routes of the main table, for one family.
    pub fn routes(&self, ipv6: bool) -> Result<Vec<RouteEntry>, NetlinkError> {
        let filter = if ipv6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let h = self.handle.clone();
        let msgs: Vec<RouteMessage> = self
            .rt
            .block_on(async move { h.route().get(filter).execute().try_collect().await })
            .map_err(self.err("listing routes"))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.table == netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN)
            .filter_map(|m| route_of(&m, ipv6))
            .collect())
    }

    /// Adds or replaces a permanent neighbour entry `ip -> mac` on link `index`.
    pub fn replace_permanent_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: &[u8],
    ) -> Result<(), NetlinkError> {
        let h = self.handle.clone();
        let req = h
            .neighbours()
            .add(index, ip)
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace();
        self.rt
            .block_on(req.execute())
            .map_err(self.err(format!("adding neighbour {ip} on link {index}")))
    }

    pub fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>, NetlinkError> {
        let h = self.handle.clone();
        let msgs: Vec<_> = self
            .rt
            .block_on(async move { h.neighbours().get().execute().try_collect().await })
            .map_err(self.err("listing neighbours"))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(|m| {
                let mut ip = None;
                let mut mac = Vec::new();
                for a in &m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                            ip = Some(IpAddr::V4(v4.to_owned()))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                            ip = Some(IpAddr::V6(v6.to_owned()))
                        }
                        NeighbourAttribute::LinkLayerAddress(l) => mac = l.clone(),
                        _ => {}
                    }
                }
                Some(Neighbour {
                    ip: ip?,
                    mac,
                    permanent: m.header.state == NeighbourState::Permanent,
                })
            })
            .collect())
    }

    /// The MTU of the uplink: the link of the IPv4 default route, if any.
    pub fn uplink_mtu(&self) -> Result<Option<u32>, NetlinkError> {
        let oif = self
            .routes(false)?
            .into_iter()
            .find(|r| r.dst.prefix() == 0)
            .and_then(|r| r.oif);
        let Some(oif) = oif else { return Ok(None) };
        Ok(self.links()?.into_iter().find(|l| l.index == oif).map(|l| l.mtu))
    }
}

fn runtime() -> Result<Runtime, NetlinkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(NetlinkError::Runtime)
}

fn link_of(m: LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: Vec::new(),
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        is_veth: false,
        peer_index: None,
        alias: None,
        group: 0,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(mac) => link.mac = mac,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Link(peer) => link.peer_index = Some(peer),
            LinkAttribute::IfAlias(alias) => link.alias = Some(alias),
            LinkAttribute::Group(group) => link.group = group,
            LinkAttribute::LinkInfo(infos) => {
                link.is_veth = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    link
}

fn route_message(dst: IpNetwork, oif: u32, gw: Option<IpAddr>) -> RouteMessage {
    let mut msg = match dst {
        IpNetwork::V4(d) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(d.network(), d.prefix());
            if let Some(IpAddr::V4(g)) = gw {
                b = b.gateway(g);
            }
            b.output_interface(oif).build()
        }
        IpNetwork::V6(d) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(d.network(), d.prefix());
            if let Some(IpAddr::V6(g)) = gw {
                b = b.gateway(g);
            }
            b.output_interface(oif).build()
        }
    };
    if gw.is_none() {
        msg.header.scope = RouteScope::Link;
    }
    msg
}

fn route_of(m: &RouteMessage, ipv6: bool) -> Option<RouteEntry> {
    let mut dst: IpAddr = if ipv6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let mut gw = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = (*d).into(),
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = (*d).into(),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some((*g).into()),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gw = Some((*g).into()),
            RouteAttribute::Via(RouteVia::Inet6(g)) => gw = Some((*g).into()),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    Some(RouteEntry {
        dst: IpNetwork::new(dst, m.header.destination_prefix_length).ok()?,
        gw,
        oif,
    })
}

/// The prefix length of a single address of `ip`'s family (/32, /128): pods hold
/// host addresses, and routes to them are host routes.
pub fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// A MAC address as CNI results and `ip link` print it.
pub fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
