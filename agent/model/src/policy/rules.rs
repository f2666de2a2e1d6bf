//! The resolved form of the policies: per pod address and direction, the rules
//! whose union is allowed, and what one connection is allowed by them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnetwork::IpNetwork;

use crate::net::Protocol;

/// Which ports a rule opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// Every port of every protocol (a rule without `ports`).
    All,
    /// Each entry: a protocol and a range of ports (`1..=65535` for "every port").
    Some(Vec<(Protocol, u16, u16)>),
}

/// Which peers a rule admits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerMatch {
    /// Every peer (a rule without `from`/`to`).
    All,
    Some {
        /// Addresses of the pods the selectors pick.
        pods: BTreeSet<IpAddr>,
        /// `ipBlock`s: a range and its exceptions.
        blocks: Vec<(IpNetwork, Vec<IpNetwork>)>,
    },
}

/// One rule, resolved: peers and ports (named ports already numbers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow {
    pub peers: PeerMatch,
    pub ports: PortMatch,
}

/// What applies to one pod, per direction: `None` when no policy isolates it
/// that way, else the rules whose union is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodPolicy {
    pub ingress: Option<Vec<Allow>>,
    pub egress: Option<Vec<Allow>>,
}

/// The policies of the model, per pod address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodPolicies {
    pub pods: BTreeMap<IpAddr, PodPolicy>,
}

impl PodPolicies {
    /// Whether a new connection from `src` to `dst` on `proto`/`port` is allowed:
    /// by `src`'s egress rules (when `src` is a pod here) and by `dst`'s ingress
    /// rules (when `dst` is). Addresses that are no pod are never isolated.
    pub fn allows(&self, src: IpAddr, dst: IpAddr, proto: Protocol, port: u16) -> bool {
        let pass = |rules: Option<&Vec<Allow>>, peer: IpAddr| {
            rules.is_none_or(|rules| rules.iter().any(|r| r.admits(peer, proto, port)))
        };
        pass(self.pods.get(&src).and_then(|p| p.egress.as_ref()), dst)
            && pass(self.pods.get(&dst).and_then(|p| p.ingress.as_ref()), src)
    }
}

impl Allow {
    fn admits(&self, peer: IpAddr, proto: Protocol, port: u16) -> bool {
        let peer_ok = match &self.peers {
            PeerMatch::All => true,
            PeerMatch::Some { pods, blocks } => {
                pods.contains(&peer) || blocks.iter().any(|b| in_block(b, peer))
            }
        };
        let port_ok = match &self.ports {
            PortMatch::All => true,
            PortMatch::Some(ports) => ports
                .iter()
                .any(|(p, lo, hi)| *p == proto && (*lo..=*hi).contains(&port)),
        };
        peer_ok && port_ok
    }
}

/// Whether an address is in an `ipBlock`: inside its CIDR, outside its exceptions.
pub(super) fn in_block((cidr, except): &(IpNetwork, Vec<IpNetwork>), ip: IpAddr) -> bool {
    cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))
}
