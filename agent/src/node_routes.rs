//! `--routing native`: a route to every other Node's pod CIDRs via that Node's
//! InternalIP (`weir_model::nodes::routes`), kept in step with the Node
//! objects. Weir's routes carry a protocol number of their own
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
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::runtime::Runtime;
use tracing::{info, warn};
use weir_model::{Kind, Model, ObjectKey, nodes::NodeRoute};

/// The `rtm_protocol` of Weir's routes (unassigned in iproute2's `rt_protos`).
pub const RTPROT_WEIR: u8 = 87;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("starting the netlink runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
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

/// The node's routing table as `--routing native` keeps it.
pub struct NodeRoutes {
    rt: Runtime,
    handle: Handle,
}

impl NodeRoutes {
    pub fn open() -> Result<Self, RouteError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(RouteError::Runtime)?;
        let (conn, handle, _) = {
            let _enter = rt.enter();
            rtnetlink::new_connection().map_err(RouteError::Socket)?
        };
        rt.spawn(conn);
        Ok(Self { rt, handle })
    }

    /// Weir's routes in the main table, both families: destination -> next hop.
    pub fn installed(&self) -> Result<BTreeMap<IpNetwork, IpAddr>, RouteError> {
        let mut out = BTreeMap::new();
        for filter in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let h = self.handle.clone();
            let msgs: Vec<RouteMessage> = self
                .rt
                .block_on(async move { h.route().get(filter).execute().try_collect().await })
                .map_err(|source| RouteError::Netlink {
                    op: "listing routes".to_owned(),
                    source,
                })?;
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
    /// next hop that moved, removes what no Node wants any more. A failure is
    /// logged and counted; the rest goes ahead.
    pub fn sync(&self, desired: &BTreeMap<IpNetwork, NodeRoute>) -> Result<RoutesReport, RouteError> {
        let installed = self.installed()?;
        let mut report = RoutesReport::default();
        for (cidr, route) in desired {
            let change = match installed.get(cidr) {
                Some(via) if *via == route.via => continue,
                Some(_) => true,
                None => false,
            };
            match self.write(*cidr, route.via, change) {
                Ok(()) => {
                    info!(pod_cidr = %cidr, via = %route.via, node = route.node, "route to a node's pods");
                    if change {
                        report.changed += 1;
                    } else {
                        report.added += 1;
                    }
                }
                Err(e) => {
                    report
                        .failed
                        .insert(*cidr, format!("via {} (Node {}): {e}", route.via, route.node));
                }
            }
        }
        for (cidr, via) in installed.iter().filter(|(c, _)| !desired.contains_key(c)) {
            match self.delete(*cidr, *via) {
                Ok(()) => {
                    info!(pod_cidr = %cidr, via = %via, "route to a node's pods removed (no Node has them)");
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
    fn write(&self, cidr: IpNetwork, via: IpAddr, change: bool) -> Result<(), RouteError> {
        let msg = message(cidr, via);
        let h = self.handle.clone();
        self.rt
            .block_on(async move {
                let add = h.route().add(msg);
                if change { add.replace() } else { add }.execute().await
            })
            .map_err(|source| RouteError::Netlink {
                op: format!("route {cidr} via {via}"),
                source,
            })
    }

    fn delete(&self, cidr: IpNetwork, via: IpAddr) -> Result<(), RouteError> {
        let msg = message(cidr, via);
        let h = self.handle.clone();
        self.rt
            .block_on(async move { h.route().del(msg).execute().await })
            .map_err(|source| RouteError::Netlink {
                op: format!("deleting route {cidr}"),
                source,
            })
    }
}

/// Weir's route to `cidr` via `via`, main table.
fn message(cidr: IpNetwork, via: IpAddr) -> RouteMessage {
    let mut msg = match (cidr, via) {
        (IpNetwork::V4(d), IpAddr::V4(g)) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .gateway(g)
            .build(),
        (IpNetwork::V6(d), IpAddr::V6(g)) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .gateway(g)
            .build(),
        // The model pairs a CIDR with a next hop of its own family.
        (IpNetwork::V4(d), IpAddr::V6(g)) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .via(g)
            .build(),
        (IpNetwork::V6(d), IpAddr::V4(_)) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(d.network(), d.prefix())
            .build(),
    };
    msg.header.protocol = RouteProtocol::Other(RTPROT_WEIR);
    msg
}

fn route_of(m: &RouteMessage) -> Option<(IpNetwork, IpAddr)> {
    let (mut dst, mut gw) = (None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(IpAddr::from(*d)),
            RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = Some(IpAddr::from(*d)),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(IpAddr::from(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gw = Some(IpAddr::from(*g)),
            RouteAttribute::Via(RouteVia::Inet6(g)) => gw = Some(IpAddr::from(*g)),
            _ => {}
        }
    }
    Some((
        IpNetwork::new(dst?, m.header.destination_prefix_length).ok()?,
        gw?,
    ))
}

/// `--routing native` in the sync loop: the routes follow the Node objects,
/// what cannot be done is said once (and again only once it changes), and
/// failures are retried.
pub struct NativeRouting {
    routes: NodeRoutes,
    node: String,
    synced: bool,
    /// Routes that failed at the last sync, and why, as logged.
    failing: BTreeMap<IpNetwork, String>,
    /// The last sync could not even read the routes.
    unsynced: bool,
    /// Nodes left without a route, as logged.
    problems: BTreeSet<String>,
}

impl NativeRouting {
    pub fn new(node: &str) -> Result<Self, RouteError> {
        Ok(Self {
            routes: NodeRoutes::open()?,
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
        let (desired, problems) = weir_model::nodes::routes(model, &self.node);
        for p in problems.iter().filter(|p| !self.problems.contains(*p)) {
            warn!(problem = p, "Node left without a route");
        }
        self.problems = problems.into_iter().collect();
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
                if !self.synced || report.added + report.changed + report.removed > 0 {
                    info!(
                        routes = desired.len(),
                        added = report.added,
                        changed = report.changed,
                        removed = report.removed,
                        failed = report.failed.len(),
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
