//! Routes to every other Node's pod CIDRs (`weir_model::nodes::routes`), kept
//! in step with the Node objects: `--routing native` via that Node's
//! InternalIP, `--routing vxlan` into the overlay's device ([`Overlay`]). Weir's routes carry a protocol number of their own
//! ([`RTPROT_WEIR`], `ip route show proto 87`): the agent finds them again
//! after a restart, removes those no Node wants any more, and never touches a
//! route it did not install (one already there for a pod CIDR is reported and
//! left alone).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt as _;
use ipnetwork::IpNetwork;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteVia,
};
use rtnetlink::RouteMessageBuilder;
use tracing::{info, warn};
use weir_model::{Kind, Model, ObjectKey};

use crate::{
    netlink::{Netlink, NetlinkError},
    overlay::Overlay,
};

/// The `rtm_protocol` of Weir's routes (unassigned in iproute2's `rt_protos`).
pub const RTPROT_WEIR: u8 = 87;

/// Where a route sends a pod CIDR's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// `--routing native`: via the Node's address.
    Via(IpAddr),
    /// `--routing vxlan`: into the overlay's device (its program picks the
    /// node), from this node's address of the family, if it has one.
    Device { ifindex: u32, src: Option<IpAddr> },
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hop::Via(via) => write!(f, "via {via}"),
            Hop::Device { ifindex, src: None } => write!(f, "dev #{ifindex}"),
            Hop::Device {
                ifindex,
                src: Some(src),
            } => write!(f, "dev #{ifindex} src {src}"),
        }
    }
}

/// What one sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RoutesReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    /// Routes not written or not removed (a route not Weir's in the way, an
    /// unreachable next hop, ...), and why: retried at the next sync.
    pub failed: BTreeMap<IpNetwork, String>,
}

/// The node's routing table as the agent keeps it.
pub struct NodeRoutes {
    netlink: Netlink,
}

impl NodeRoutes {
    pub fn open() -> Result<Self, NetlinkError> {
        Ok(Self {
            netlink: Netlink::open()?,
        })
    }

    /// Weir's routes in the main table, both families: destination -> hop.
    pub fn installed(&self) -> Result<BTreeMap<IpNetwork, Hop>, NetlinkError> {
        let mut out = BTreeMap::new();
        for filter in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let msgs: Vec<RouteMessage> = self.netlink.run(
                || "listing routes".to_owned(),
                |h| async move { h.route().get(filter).execute().try_collect().await },
            )?;
            out.extend(
                msgs.iter()
                    .filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN)
                    .filter(|m| u8::from(m.header.protocol) == RTPROT_WEIR)
                    .filter_map(route_of),
            );
        }
        Ok(out)
    }

    /// Makes Weir's routes exactly `desired`: adds what is missing, changes a
    /// hop that moved, removes what no Node wants any more. A failure is
    /// logged and counted; the rest goes ahead.
    pub fn sync(&self, desired: &BTreeMap<IpNetwork, (Hop, &str)>) -> Result<RoutesReport, NetlinkError> {
        let installed = self.installed()?;
        let mut report = RoutesReport::default();
        for (cidr, (hop, node)) in desired {
            let change = match installed.get(cidr) {
                Some(now) if now == hop => continue,
                Some(_) => true,
                None => false,
            };
            match self.write(*cidr, *hop, change) {
                Ok(()) => {
                    info!(pod_cidr = %cidr, route = %hop, node, "route to a node's pods");
                    if change {
                        report.changed += 1;
                    } else {
                        report.added += 1;
                    }
                }
                Err(e) => {
                    report.failed.insert(*cidr, format!("{hop} (Node {node}): {e}"));
                }
            }
        }
        for (cidr, hop) in installed.iter().filter(|(c, _)| !desired.contains_key(c)) {
            match self.delete(*cidr, *hop) {
                Ok(()) => {
                    info!(pod_cidr = %cidr, route = %hop, "route to a node's pods removed (no Node has them)");
                    report.removed += 1;
                }
                Err(e) => {
                    report.failed.insert(*cidr, format!("removing it: {e}"));
                }
            }
        }
        Ok(report)
    }

    /// Adds the route (exclusively: a route that is not Weir's makes it fail,
    /// and is left alone), or, `change`, replaces Weir's own.
    fn write(&self, cidr: IpNetwork, hop: Hop, change: bool) -> Result<(), NetlinkError> {
        let msg = message(cidr, hop);
        self.netlink.run(
            || format!("route {cidr} {hop}"),
            |h| async move {
                let add = h.route().add(msg);
                if change { add.replace() } else { add }.execute().await
            },
        )
    }

    fn delete(&self, cidr: IpNetwork, hop: Hop) -> Result<(), NetlinkError> {
        let msg = message(cidr, hop);
        self.netlink.run(
            || format!("deleting route {cidr}"),
            |h| async move { h.route().del(msg).execute().await },
        )
    }
}

/// Weir's route to `cidr` by `hop`, main table.
fn message(cidr: IpNetwork, hop: Hop) -> RouteMessage {
    let mut msg = match (cidr, hop) {
        (IpNetwork::V4(d), Hop::Via(IpAddr::V4(g))) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .gateway(g)
            .build(),
        (IpNetwork::V6(d), Hop::Via(IpAddr::V6(g))) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .gateway(g)
            .build(),
        // The model pairs a CIDR with a next hop of its own family.
        (IpNetwork::V4(d), Hop::Via(IpAddr::V6(g))) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .via(g)
            .build(),
        (IpNetwork::V6(d), Hop::Via(IpAddr::V4(_))) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .build(),
        (IpNetwork::V4(d), Hop::Device { ifindex, src }) => {
            let b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d.network(), d.prefix())
                .output_interface(ifindex);
            match src {
                Some(IpAddr::V4(src)) => b.pref_source(src),
                _ => b,
            }
            .build()
        }
        (IpNetwork::V6(d), Hop::Device { ifindex, src }) => {
            let b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d.network(), d.prefix())
                .output_interface(ifindex);
            match src {
                Some(IpAddr::V6(src)) => b.pref_source(src),
                _ => b,
            }
            .build()
        }
    };
    msg.header.protocol = RouteProtocol::Other(RTPROT_WEIR);
    msg
}

fn route_of(m: &RouteMessage) -> Option<(IpNetwork, Hop)> {
    let (mut dst, mut gw, mut oif, mut src) = (None, None, None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(IpAddr::from(*d)),
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = Some(IpAddr::from(*d)),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(IpAddr::from(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gw = Some(IpAddr::from(*g)),
            RouteAttribute::Via(RouteVia::Inet6(g)) => gw = Some(IpAddr::from(*g)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::PrefSource(RouteAddress::Inet(s)) => src = Some(IpAddr::from(*s)),
            RouteAttribute::PrefSource(RouteAddress::Inet6(s)) => src = Some(IpAddr::from(*s)),
            _ => {}
        }
    }
    let hop = match (gw, oif) {
        (Some(gw), _) => Hop::Via(gw),
        (None, Some(ifindex)) => Hop::Device { ifindex, src },
        (None, None) => return None,
    };
    Some((
        IpNetwork::new(dst?, m.header.destination_prefix_length).ok()?,
        hop,
    ))
}

/// The routes in the sync loop (`--routing native` or `vxlan`): they follow
/// the Node objects, what cannot be done is said once (and again only once
/// it changes), and failures are retried.
pub struct NodeRouting {
    routes: NodeRoutes,
    /// `--routing vxlan`: routes lead into its device, its tunnels follow.
    overlay: Option<Overlay>,
    node: String,
    synced: bool,
    /// Routes (or tunnels) that failed at the last sync, and why, as logged.
    failing: BTreeMap<IpNetwork, String>,
    /// The last sync could not even read the routes or the tunnels.
    unsynced: bool,
    /// Nodes left without a route, as logged.
    problems: BTreeSet<String>,
}

impl NodeRouting {
    pub fn new(node: &str, overlay: Option<Overlay>) -> Result<Self, NetlinkError> {
        Ok(Self {
            routes: NodeRoutes::open()?,
            overlay,
            node: node.to_owned(),
            synced: false,
            failing: BTreeMap::new(),
            unsynced: false,
            problems: BTreeSet::new(),
        })
    }

    /// Whether the last sync left something to retry.
    pub fn pending(&self) -> bool {
        self.unsynced || !self.failing.is_empty()
    }

    /// Syncs the routes when a Node changed (or at the first call, or to
    /// retry). The caller calls it only once Nodes are listed whole: before
    /// that, the routes of Nodes not yet seen would be removed.
    pub fn update(&mut self, model: &Model, changed: &BTreeSet<ObjectKey>) {
        if self.synced && !self.pending() && !changed.iter().any(|k| k.kind == Kind::Node) {
            return;
        }
        let (routes, problems) = weir_model::nodes::routes(model, &self.node, self.overlay.is_some());
        for p in problems.iter().filter(|p| !self.problems.contains(*p)) {
            warn!(problem = p, "Node left without a route");
        }
        self.problems = problems.into_iter().collect();
        // Tunnels before the routes that lead into them: a packet routed
        // there finds its way on.
        let mut tunnels = 0;
        if let Some(overlay) = &self.overlay {
            match overlay.sync_tunnels(&routes) {
                Ok(n) => tunnels = n,
                Err(e) => {
                    warn!(error = e, "tunnels to other nodes not synced; retried");
                    self.unsynced = true;
                    self.synced = true;
                    return;
                }
            }
        }
        let desired: BTreeMap<IpNetwork, (Hop, &str)> = routes
            .iter()
            .map(|(cidr, r)| {
                let hop = match &self.overlay {
                    Some(overlay) => overlay.hop(cidr),
                    None => Hop::Via(r.via),
                };
                (*cidr, (hop, r.node.as_str()))
            })
            .collect();
        match self.routes.sync(&desired) {
            Ok(report) => {
                for (cidr, why) in &report.failed {
                    if self.failing.get(cidr) != Some(why) {
                        warn!(pod_cidr = %cidr, error = why, "route to a node's pods not in place; retried");
                    }
                }
                for cidr in self.failing.keys().filter(|c| !report.failed.contains_key(c)) {
                    info!(pod_cidr = %cidr, "route to a node's pods in place after all");
                }
                if !self.synced || report.added + report.changed + report.removed + tunnels > 0 {
                    info!(
                        routes = desired.len(),
                        added = report.added,
                        changed = report.changed,
                        removed = report.removed,
                        failed = report.failed.len(),
                        tunnels_changed = tunnels,
                        overlay = self.overlay.is_some(),
                        "routes to other nodes' pods synced"
                    );
                }
                self.failing = report.failed;
                self.unsynced = false;
            }
            Err(e) => {
                warn!(error = %e, "routes to other nodes' pods not synced; retried");
                self.unsynced = true;
            }
        }
        self.synced = true;
    }
}
