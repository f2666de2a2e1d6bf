//! `weirctl explain SRC DST:PORT[/PROTO]`: what the datapath of this node does
//! with a new flow, read from the pinned maps alone (the agent up or not), by
//! the lookups the programs make, in their order:
//!
//! 1. the load balancer: is DST a frontend (the entry a client inside the
//!    cluster gets), which backends are candidates, which one this flow gets
//!    (an affinity entry; for Maglev, the table's entry for the 5-tuple when
//!    the source port is given; otherwise one slot at random);
//! 2. for each candidate, the source pod's egress verdict and, where the
//!    destination is a pod of this node, its ingress verdict: the peer's
//!    identity (the ipcache's longest prefix, else `world`), then a rule for
//!    that identity or for every peer, on the protocol and port (the LPM
//!    tries answer the lookups as they answer the programs);
//! 3. the route: the pod's veth, the node itself, the overlay's tunnel to a
//!    node, or the host's routing (masqueraded or not).
//!
//! A source that is not a pod of this node is load-balanced and judged for
//! egress on its own node: here, only its ingress at a pod of this node is.

use std::net::{IpAddr, SocketAddr};

use aya::maps::lpm_trie::Key;
use serde::Serialize;
use weir_common::{
    AffinityKey, BACKEND_TERMINATING, IDENTITY_ANY, IDENTITY_WORLD, IPCACHE_PREFIX_BITS, IpcacheKey,
    MAGLEV_TABLE_SIZE, NODE_F_MASQUERADE, POLICY_F_EGRESS, POLICY_F_INGRESS, POLICY_PREFIX_FULL,
    PolicyEndpoint, PolicyKey, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_DROP_EMPTY,
    SVC_F_MAGLEV, SVC_F_SOURCE_RANGE, SVC_F_TWO_SCOPES, ServiceKey, ServiceValue,
};
use weir_model::{
    Protocol,
    net::{from_abi, to_abi},
    policy::IpcacheEntry,
};

use super::{CtlError, NameTable, ip_text, open, proto};
use crate::datapath::{PinLayout, endpoint_key, maps};

/// The flow to explain.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: SocketAddr,
    /// IP protocol number.
    pub proto: u8,
    /// The client's source port, when known (Maglev's choice depends on it).
    pub sport: Option<u16>,
}

impl Flow {
    /// `SRC` (an address, or `namespace/name` of a pod the name table knows)
    /// and `DST` as `ip:port[/PROTO]` (TCP by default).
    pub fn parse(src: &str, dst: &str, sport: Option<u16>, names: &NameTable) -> Result<Self, String> {
        let (dst, protocol) = match dst.rsplit_once('/') {
            Some((addr, p)) => (
                addr,
                Protocol::parse(Some(&p.to_ascii_uppercase()))
                    .ok_or_else(|| format!("unknown protocol {p:?} (TCP, UDP, SCTP)"))?,
            ),
            None => (dst, Protocol::Tcp),
        };
        let dst: SocketAddr = dst
            .parse()
            .map_err(|_| format!("{dst:?} is not ADDRESS:PORT ([v6]:PORT for IPv6)"))?;
        let src = match src.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => names
                .pods
                .iter()
                .filter(|(_, name)| name.as_str() == src)
                .map(|(ip, _)| *ip)
                .find(|ip| ip.is_ipv4() == dst.is_ipv4())
                .ok_or_else(|| {
                    format!("{src:?} is neither an address nor a pod of this node the name table knows")
                })?,
        };
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(format!("{src} and {dst} are of different families"));
        }
        Ok(Self {
            src,
            dst,
            proto: protocol.ipproto(),
            sport,
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub source: Party,
    /// `ADDRESS:PORT/PROTO`.
    pub destination: String,
    /// The frontend the destination is, if it is one (to a source of this node).
    pub frontend: Option<Frontend>,
    /// One per place the flow may go: the backends a frontend may pick, or the
    /// destination itself.
    pub paths: Vec<Path>,
    /// In one line: what happens to the flow.
    pub verdict: String,
}

#[derive(Debug, Serialize)]
pub struct Party {
    pub address: IpAddr,
    pub pod: Option<String>,
    /// A pod of this node (its veth is here).
    pub local: bool,
}

#[derive(Debug, Serialize)]
pub struct Frontend {
    /// `ADDRESS:PORT/PROTO`.
    pub frontend: String,
    pub service: Option<String>,
    pub rev_nat_id: u32,
    /// The entry used: `internal` (a client inside the cluster, where the
    /// traffic policies differ by client) or `external`.
    pub scope: &'static str,
    pub flags: Vec<&'static str>,
    /// How the backend is chosen, in words.
    pub choice: String,
}

#[derive(Debug, Serialize)]
pub struct Path {
    /// `ADDRESS:PORT` the flow is sent to.
    pub destination: String,
    pub pod: Option<String>,
    /// The backend's slot and id, through a frontend.
    pub slot: Option<u16>,
    pub backend_id: Option<u32>,
    /// `active`, `terminating` (serving for lack of a ready one).
    pub state: Option<&'static str>,
    /// This flow goes here (an affinity entry, Maglev with the source port,
    /// or the only place); `false`: one of the candidates.
    pub chosen: bool,
    pub egress: Judgement,
    pub ingress: Judgement,
    pub route: String,
    /// `admitted`, or the first policy that drops it.
    pub verdict: String,
}

/// One side's policy verdict.
#[derive(Debug, Serialize)]
pub struct Judgement {
    /// `admitted`, `denied`, `not isolated`, or where it is decided instead.
    pub verdict: &'static str,
    /// The peer's identity, and the prefixes the ipcache gives it.
    pub identity: Option<u32>,
    pub peers: Option<String>,
    /// Which rule admitted: `identity N` or `any peer`, on the protocol and port.
    pub rule: Option<String>,
}

impl Judgement {
    fn plain(verdict: &'static str) -> Self {
        Self {
            verdict,
            identity: None,
            peers: None,
            rule: None,
        }
    }

    fn denies(&self) -> bool {
        self.verdict == "denied"
    }
}

/// The maps explain reads, opened once.
struct Maps {
    services: maps::Services,
    backends: maps::Backends,
    maglev: maps::Maglev,
    affinity: maps::Affinity,
    endpoints: maps::Endpoints,
    node_ips: maps::NodeIps,
    node: maps::Node,
    policy_endpoints: maps::PolicyEndpoints,
    ipcache: maps::Ipcache,
    policy: maps::Policy,
    tunnels: maps::Tunnels,
    nomasq: maps::Nomasq,
    source_ranges: maps::SourceRanges,
    names: NameTable,
}

/// What the datapath pinned under `pins` does with `flow`.
pub fn explain(pins: &PinLayout, flow: &Flow) -> Result<Explanation, CtlError> {
    let m = Maps {
        services: open(pins, &maps::SERVICES)?,
        backends: open(pins, &maps::BACKENDS)?,
        maglev: open(pins, &maps::MAGLEV)?,
        affinity: open(pins, &maps::AFFINITY)?,
        endpoints: open(pins, &maps::ENDPOINTS)?,
        node_ips: open(pins, &maps::NODE_IPS)?,
        node: open(pins, &maps::NODE)?,
        policy_endpoints: open(pins, &maps::POLICY_ENDPOINTS)?,
        ipcache: open(pins, &maps::IPCACHE)?,
        policy: open(pins, &maps::POLICY)?,
        tunnels: open(pins, &maps::TUNNELS)?,
        nomasq: open(pins, &maps::NOMASQ)?,
        source_ranges: open(pins, &maps::SOURCE_RANGES)?,
        names: super::name_table(pins),
    };
    let local = m.endpoints.get(&endpoint_key(flow.src), 0).is_ok();
    let source = Party {
        address: flow.src,
        pod: m.names.pods.get(&flow.src).cloned(),
        local,
    };
    let destination = format!("{}/{}", flow.dst, proto(flow.proto));
    let (frontend, candidates) = if local {
        m.balance(flow)?
    } else {
        (None, Candidates::Direct)
    };
    let paths: Vec<Path> = match &candidates {
        Candidates::Direct => vec![m.path(flow, flow.dst, None, true)],
        Candidates::Slots(slots, chosen) => slots
            .iter()
            .map(|&(slot, id, addr, state)| {
                let mut path = m.path(flow, addr, Some(state), chosen.is_none_or(|c| c == id));
                path.slot = Some(slot);
                path.backend_id = Some(id);
                path
            })
            .collect(),
        Candidates::Refused(_) => Vec::new(),
    };
    let verdict = summary(&candidates, &paths, local);
    Ok(Explanation {
        source,
        destination,
        frontend,
        paths,
        verdict,
    })
}

/// Where the load balancer may send the flow.
enum Candidates {
    /// Not a frontend: to the destination itself.
    Direct,
    /// The frontend's slots (slot, backend id, address, state), and the
    /// backend this flow gets if that is known.
    Slots(Vec<(u16, u32, SocketAddr, &'static str)>, Option<u32>),
    /// A frontend without a backend for this client: what happens instead.
    Refused(&'static str),
}

fn summary(candidates: &Candidates, paths: &[Path], local: bool) -> String {
    if let Candidates::Refused(why) = candidates {
        return (*why).to_owned();
    }
    let chosen: Vec<&Path> = paths.iter().filter(|p| p.chosen).collect();
    let admitted = chosen.iter().filter(|p| p.verdict == "admitted").count();
    let mut out = if admitted == chosen.len() {
        "admitted".to_owned()
    } else if admitted == 0 {
        chosen
            .first()
            .map_or_else(|| "no path".to_owned(), |p| p.verdict.clone())
    } else {
        format!("admitted to {admitted} of {} candidate backends", chosen.len())
    };
    if !local {
        out.push_str(" (here; the source's own node load-balances and judges its egress)");
    }
    out
}

impl Maps {
    /// The frontend `flow.dst` is for a client inside the cluster, and its candidates.
    fn balance(&self, flow: &Flow) -> Result<(Option<Frontend>, Candidates), CtlError> {
        let (addr, family) = to_abi(flow.dst.ip());
        let mut key = ServiceKey {
            addr,
            port: flow.dst.port().to_be(),
            slot: 0,
            proto: flow.proto,
            family,
            scope: SCOPE_EXTERNAL,
            _pad: 0,
        };
        let Some(mut svc) = self.services.get(&key, 0).ok() else {
            return Ok((None, Candidates::Direct));
        };
        if svc.flags & SVC_F_TWO_SCOPES != 0 {
            key.scope = SCOPE_INTERNAL;
            match self.services.get(&key, 0) {
                Ok(inside) => svc = inside,
                Err(_) => {
                    return Ok((
                        Some(self.frontend(flow, &key, &svc, "no internal entry: dropped".to_owned())),
                        Candidates::Refused(
                            "dropped: the frontend's internal entry is missing (backend missing)",
                        ),
                    ));
                }
            }
        }
        // Before the check for endpoints, as the datapath does.
        if !self.admits(flow, &svc) {
            let why = "dropped: the source is outside the Service's loadBalancerSourceRanges";
            return Ok((
                Some(self.frontend(flow, &key, &svc, why.to_owned())),
                Candidates::Refused(why),
            ));
        }
        if svc.count == 0 {
            let why = if svc.flags & SVC_F_DROP_EMPTY != 0 {
                "dropped: Local traffic policy and no endpoint on this node"
            } else {
                "rejected: the Service has no endpoints (connection refused)"
            };
            return Ok((
                Some(self.frontend(flow, &key, &svc, why.to_owned())),
                Candidates::Refused(why),
            ));
        }
        let mut slots = Vec::new();
        for slot in 1..=svc.count {
            let Ok(v) = self.services.get(&ServiceKey { slot, ..key }, 0) else {
                continue;
            };
            let Ok(b) = self.backends.get(&v.backend_id, 0) else {
                continue;
            };
            let Some(ip) = from_abi(b.addr, b.family) else {
                continue;
            };
            let state = if b.state == BACKEND_TERMINATING {
                "terminating"
            } else {
                "active"
            };
            slots.push((
                slot,
                v.backend_id,
                SocketAddr::new(ip, u16::from_be(b.port)),
                state,
            ));
        }
        let (chosen, choice) = self.choose(flow, &svc, &slots);
        Ok((
            Some(self.frontend(flow, &key, &svc, choice)),
            Candidates::Slots(slots, chosen),
        ))
    }

    /// Whether the frontend admits the flow's source (its
    /// `loadBalancerSourceRanges`, if it has them).
    fn admits(&self, flow: &Flow, svc: &ServiceValue) -> bool {
        if svc.flags & SVC_F_SOURCE_RANGE == 0 {
            return true;
        }
        let key = crate::source_ranges::key(svc.rev_nat_id, &flow.src.into());
        self.source_ranges.get(&key, 0).is_ok()
    }

    /// The backend this flow gets, if the maps say, and how it is chosen.
    fn choose(
        &self,
        flow: &Flow,
        svc: &ServiceValue,
        slots: &[(u16, u32, SocketAddr, &'static str)],
    ) -> (Option<u32>, String) {
        if svc.flags & SVC_F_AFFINITY != 0 {
            let (client, family) = to_abi(flow.src);
            let key = AffinityKey {
                client,
                rev_nat_id: svc.rev_nat_id,
                family,
                _pad: [0; 3],
            };
            if let Ok(entry) = self.affinity.get(&key, 0) {
                let idle = crate::conntrack::monotonic_ns()
                    .map(|now| now.saturating_sub(entry.last_used_ns) / 1_000_000_000)
                    .unwrap_or(0);
                if idle <= u64::from(svc.affinity_timeout) && slots.iter().any(|s| s.1 == entry.backend_id) {
                    return (
                        Some(entry.backend_id),
                        format!(
                            "session affinity: the client's entry (idle {idle} s of {} s) keeps backend {}",
                            svc.affinity_timeout, entry.backend_id
                        ),
                    );
                }
            }
        }
        if svc.flags & SVC_F_MAGLEV != 0
            && let Ok(table) = self.maglev.get(&svc.rev_nat_id, 0)
        {
            return match flow.sport {
                Some(sport) => {
                    let i = (flow_hash(flow, sport) % MAGLEV_TABLE_SIZE as u64) as usize;
                    let id = table.0[i];
                    (
                        Some(id),
                        format!("maglev: entry {i} of the table for source port {sport}: backend {id}"),
                    )
                }
                None => (
                    None,
                    format!(
                        "maglev: by the 5-tuple, one of {} backends (give --sport to know which)",
                        slots.len()
                    ),
                ),
            };
        }
        if slots.len() == 1 {
            return (Some(slots[0].1), "the one slot".to_owned());
        }
        (None, format!("random: one of {} slots", slots.len()))
    }

    fn frontend(&self, flow: &Flow, key: &ServiceKey, svc: &ServiceValue, choice: String) -> Frontend {
        Frontend {
            frontend: format!("{}/{}", flow.dst, proto(flow.proto)),
            service: self.names.service(svc.rev_nat_id),
            rev_nat_id: svc.rev_nat_id,
            scope: if key.scope == SCOPE_INTERNAL {
                "internal"
            } else {
                "external"
            },
            flags: super::services::flag_names(svc.flags),
            choice,
        }
    }

    /// The flow sent to `to`: both policy sides and the route.
    fn path(&self, flow: &Flow, to: SocketAddr, state: Option<&'static str>, chosen: bool) -> Path {
        let hairpin = to.ip() == flow.src;
        let egress = if !self.is_local(flow.src) {
            Judgement::plain("decided on the source's node")
        } else if hairpin {
            Judgement::plain("admitted (hairpin: the pod reaching itself)")
        } else if self.is_node(to.ip()) {
            Judgement::plain("admitted (to the node: always)")
        } else {
            self.judge(flow.src, to.ip(), true, flow.proto, to.port())
        };
        let ingress = if !self.is_local(to.ip()) {
            if self.is_node(to.ip()) {
                Judgement::plain("not isolated (the node)")
            } else {
                Judgement::plain("decided on the destination's node")
            }
        } else if hairpin {
            Judgement::plain("admitted (hairpin: the pod reaching itself)")
        } else if self.is_node(flow.src) {
            Judgement::plain("admitted (from the node: always)")
        } else {
            self.judge(to.ip(), flow.src, false, flow.proto, to.port())
        };
        let verdict = if egress.denies() {
            "denied by the source's egress policy".to_owned()
        } else if ingress.denies() {
            "denied by the destination's ingress policy".to_owned()
        } else {
            "admitted".to_owned()
        };
        Path {
            destination: to.to_string(),
            pod: self.names.pods.get(&to.ip()).cloned(),
            slot: None,
            backend_id: None,
            state,
            chosen,
            egress,
            ingress,
            route: self.route(to.ip()),
            verdict,
        }
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        self.endpoints.get(&endpoint_key(ip), 0).is_ok()
    }

    fn is_node(&self, ip: IpAddr) -> bool {
        self.node_ips.get(&endpoint_key(ip), 0).is_ok()
    }

    /// The verdict of `endpoint`'s rules on `side` for `peer`, as `rule`
    /// in the programs decides it.
    fn judge(&self, endpoint: IpAddr, peer: IpAddr, egress: bool, proto_: u8, port: u16) -> Judgement {
        let Ok(ep): Result<PolicyEndpoint, _> = self.policy_endpoints.get(&endpoint_key(endpoint), 0) else {
            return Judgement::plain("not isolated");
        };
        let isolated = ep.flags & if egress { POLICY_F_EGRESS } else { POLICY_F_INGRESS } != 0;
        if !isolated {
            return Judgement::plain("not isolated");
        }
        let identity = self.identity(peer);
        let peers = if identity == IDENTITY_WORLD {
            Some("world (no prefix of the ipcache)".to_owned())
        } else {
            self.prefixes(identity)
        };
        let rule = |id: u32| {
            let key = Key::new(
                POLICY_PREFIX_FULL,
                PolicyKey {
                    endpoint: ep.id,
                    identity: id,
                    egress: u8::from(egress),
                    proto: proto_,
                    port: port.to_be(),
                },
            );
            self.policy.get(&key, 0).is_ok()
        };
        let on = format!("{}/{port}", proto(proto_));
        let (verdict, rule) = if rule(identity) {
            ("admitted", Some(format!("identity {identity}, {on}")))
        } else if rule(IDENTITY_ANY) {
            ("admitted", Some(format!("any peer, {on}")))
        } else {
            ("denied", None)
        };
        Judgement {
            verdict,
            identity: Some(identity),
            peers,
            rule,
        }
    }

    /// The ipcache's identity of `ip`: its longest prefix, else `world`.
    fn identity(&self, ip: IpAddr) -> u32 {
        self.ipcache.get(&full_key(ip), 0).unwrap_or(IDENTITY_WORLD)
    }

    /// The ipcache's prefixes of `identity`, space-separated.
    fn prefixes(&self, identity: u32) -> Option<String> {
        let mut out = Vec::new();
        for (k, id) in self.ipcache.iter().flatten() {
            if id == identity {
                let data = k.data();
                out.push(format!(
                    "{}/{}",
                    ip_text(data.addr, data.family),
                    k.prefix_len().saturating_sub(IPCACHE_PREFIX_BITS)
                ));
            }
        }
        (!out.is_empty()).then(|| out.join(" "))
    }

    /// How a packet to `ip` leaves: the programs' delivery, then the host's.
    fn route(&self, ip: IpAddr) -> String {
        if let Ok(info) = self.endpoints.get(&endpoint_key(ip), 0) {
            return format!("to a pod of this node (host veth ifindex {})", info.ifindex);
        }
        if self.is_node(ip) {
            return "to the node itself".to_owned();
        }
        if let Ok(tunnel) = self.tunnels.get(&full_key(ip), 0) {
            return format!(
                "through the overlay's tunnel to node {}",
                ip_text(tunnel.addr, tunnel.family)
            );
        }
        if self.nomasq.get(&full_key(ip), 0).is_ok() {
            return "by the host's routing, with the pod's own address (inside the cluster, or excepted from masquerade)".to_owned();
        }
        let masquerade = self
            .node
            .get(&0, 0)
            .is_ok_and(|n| n.flags & NODE_F_MASQUERADE != 0);
        if masquerade {
            "by the host's routing, masqueraded to the node's address (outside the cluster)".to_owned()
        } else {
            "by the host's routing, with the pod's own address (masquerade off)".to_owned()
        }
    }
}

/// The LPM key of a whole address (the ipcache's layout, also the tunnels'
/// and the masquerade exceptions').
fn full_key(ip: IpAddr) -> Key<IpcacheKey> {
    let entry = IpcacheEntry::of(ip.into());
    Key::new(entry.prefix_len, entry.key)
}

/// The programs' flow hash (`lb::select::flow_hash`): the same tuple, folded
/// and mixed the same way, ports as the packet carries them.
fn flow_hash(flow: &Flow, sport: u16) -> u64 {
    let fold = |ip: IpAddr| -> u64 {
        match ip {
            IpAddr::V4(a) => u64::from(u32::from_be_bytes(a.octets())),
            IpAddr::V6(a) => {
                let o = a.octets();
                let half = |at: usize| u64::from_ne_bytes(o[at..at + 8].try_into().unwrap_or([0; 8]));
                let x = half(0) ^ half(8);
                (x ^ (x >> 32)) & 0xffff_ffff
            }
        }
    };
    let mut h = (fold(flow.src) << 32) | fold(flow.dst.ip());
    h ^= (u64::from(sport.to_be()) << 24) | (u64::from(flow.dst.port().to_be()) << 8) | u64::from(flow.proto);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Explanation {
    /// For people: the steps, one per line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let named = |addr: &str, name: &Option<String>| match name {
            Some(n) => format!("{addr} ({n})"),
            None => addr.to_owned(),
        };
        out.push_str(&format!(
            "flow:      {} -> {}\n",
            named(&self.source.address.to_string(), &self.source.pod),
            self.destination
        ));
        if !self.source.local {
            out.push_str("source:    not a pod of this node\n");
        }
        match &self.frontend {
            Some(f) => {
                out.push_str(&format!(
                    "frontend:  {} rev-NAT {} ({} entry{})\n",
                    named(&f.frontend, &f.service),
                    f.rev_nat_id,
                    f.scope,
                    if f.flags.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", f.flags.join(","))
                    }
                ));
                out.push_str(&format!("choice:    {}\n", f.choice));
            }
            None if self.source.local => out.push_str("frontend:  none (not a Service address)\n"),
            None => {}
        }
        for p in &self.paths {
            let mark = if p.chosen { "->" } else { "  " };
            let slot = p
                .slot
                .map(|s| format!(" slot {s}, backend {}", p.backend_id.unwrap_or(0)))
                .unwrap_or_default();
            let state = p.state.map(|s| format!(" [{s}]")).unwrap_or_default();
            out.push_str(&format!(
                "{mark} {}{slot}{state}: {}\n",
                named(&p.destination, &p.pod),
                p.verdict
            ));
            for (side, j) in [("egress", &p.egress), ("ingress", &p.ingress)] {
                let mut line = format!("     {side:<8} {}", j.verdict);
                if let Some(id) = j.identity {
                    line.push_str(&format!("; peer identity {id}"));
                    if let Some(peers) = &j.peers {
                        line.push_str(&format!(" ({peers})"));
                    }
                }
                if let Some(rule) = &j.rule {
                    line.push_str(&format!("; rule: {rule}"));
                }
                out.push_str(&line);
                out.push('\n');
            }
            out.push_str(&format!("     route    {}\n", p.route));
        }
        out.push_str(&format!("verdict:   {}\n", self.verdict));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_is_parsed_from_what_people_type() {
        let mut names = NameTable::default();
        names
            .pods
            .insert("10.0.0.5".parse().expect("ip"), "default/a".to_owned());
        names
            .pods
            .insert("fd00::5".parse().expect("ip"), "default/a".to_owned());
        let f = Flow::parse("default/a", "10.96.0.10:53/udp", None, &names).expect("flow");
        assert_eq!(f.src, "10.0.0.5".parse::<IpAddr>().expect("ip"));
        assert_eq!((f.dst.port(), f.proto), (53, weir_common::IPPROTO_UDP));
        let f = Flow::parse("default/a", "[fd00::10]:80", Some(4000), &names).expect("v6");
        assert_eq!(f.src, "fd00::5".parse::<IpAddr>().expect("ip"));
        assert_eq!(f.proto, weir_common::IPPROTO_TCP);
        for (src, dst) in [
            ("default/nobody", "10.0.0.1:80"),
            ("10.0.0.5", "10.0.0.1"),
            ("10.0.0.5", "10.0.0.1:80/ICMP"),
            ("fd00::5", "10.0.0.1:80"),
        ] {
            assert!(Flow::parse(src, dst, None, &names).is_err(), "{src} -> {dst}");
        }
    }
}
