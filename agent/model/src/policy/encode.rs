//! The datapath's form of the policies of one node's pods: identities, the
//! ipcache and per-endpoint rules (see `weir_common`'s `PolicyKey`).
//!
//! An identity is a class of addresses no rule on this node can tell apart: the
//! addresses whose *signature* (the set of peer sets of the node's rules that
//! contain them) is the same. Pods of one label set in one namespace share one,
//! unless an `ipBlock` or a named port resolved per peer pod sets some apart, so
//! that `ipBlock`s, pod selectors and named ports are all exact with one ipcache
//! lookup per new flow. Addresses no rule names are [`IDENTITY_WORLD`], without
//! an ipcache entry.
//!
//! Numbers (identities, peer sets, endpoints) stay the same from one compile to
//! the next while what they stand for does, and a number freed by one compile is
//! reused only by the one after the next: the syncer writes new rules before the
//! ipcache and removes stale ones last, so a number never means two things in
//! the maps at once, even halfway through a sync.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

// Seeded per process, and several times faster than SipHash on the sets of
// addresses numbered here (a peer set is hundreds of them).
use foldhash::HashMap;

use ipnetwork::IpNetwork;
use weir_common::{
    EndpointKey, IDENTITY_ANY, IDENTITY_FIRST, IDENTITY_WORLD, IPCACHE_PREFIX_BITS, IpcacheKey,
    POLICY_F_EGRESS, POLICY_F_INGRESS, POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, POLICY_PREFIX_FULL,
    PolicyEndpoint, PolicyKey,
};

use super::{PeerMatch, PodPolicies, PortMatch, adopt::Adopted};
use crate::net::to_abi;

/// An LPM key of the ipcache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpcacheEntry {
    pub prefix_len: u32,
    pub key: IpcacheKey,
}

impl IpcacheEntry {
    pub fn of(net: IpNetwork) -> Self {
        let (addr, family) = to_abi(net.network());
        Self {
            prefix_len: IPCACHE_PREFIX_BITS + u32::from(net.prefix()),
            key: IpcacheKey { family, addr },
        }
    }
}

/// An LPM key of the policy map (bits past the prefix are zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleKey {
    pub prefix_len: u32,
    pub key: PolicyKey,
}

/// What the node's policy maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredPolicy {
    pub endpoints: BTreeMap<EndpointKey, PolicyEndpoint>,
    pub ipcache: BTreeMap<IpcacheEntry, u32>,
    pub rules: BTreeSet<RuleKey>,
}

/// Numbers that stay put while their meaning does (see the module's note).
#[derive(Debug)]
struct Numbers<K> {
    of: HashMap<K, u32>,
    /// Free now.
    free: Vec<u32>,
    /// Freed by the last compile: free from the next one on.
    cooling: Vec<u32>,
    next: u32,
    used: BTreeSet<u32>,
    /// Numbers the maps still hold: never handed out anew.
    held: BTreeSet<u32>,
}

impl<K: std::hash::Hash + Eq + Clone> Numbers<K> {
    fn new(first: u32) -> Self {
        Self {
            of: HashMap::default(),
            free: Vec::new(),
            cooling: Vec::new(),
            next: first,
            used: BTreeSet::new(),
            held: BTreeSet::new(),
        }
    }

    fn get(&mut self, key: &K) -> u32 {
        let n = match self.of.get(key) {
            Some(&n) => n,
            None => {
                let n = loop {
                    match self.free.pop() {
                        Some(n) if self.held.contains(&n) => self.cooling.push(n),
                        Some(n) => break n,
                        None => {
                            self.next += 1;
                            break self.next - 1;
                        }
                    }
                };
                self.of.insert(key.clone(), n);
                n
            }
        };
        self.used.insert(n);
        n
    }

    /// Numbers `key` as `n`, a number the maps held for it when the agent
    /// started, unless `key` has a number already or `n` went to another key
    /// in this compile. Only for the first compile after a start: nothing is
    /// free or cooling yet and every fresh number lies above `n`.
    fn adopt(&mut self, key: &K, n: u32) {
        if !self.of.contains_key(key) && self.used.insert(n) {
            self.of.insert(key.clone(), n);
        }
    }

    /// Ends a compile: what it did not use is released (after a cool-down).
    fn end_round(&mut self) {
        self.free.append(&mut self.cooling);
        let used = std::mem::take(&mut self.used);
        self.of.retain(|_, n| {
            let keep = used.contains(n);
            if !keep {
                self.cooling.push(*n);
            }
            keep
        });
    }

    /// Numbers below `n` are taken (by maps an earlier agent left pinned).
    fn start_above(&mut self, n: u32) {
        self.next = self.next.max(n + 1);
    }
}

/// Encodes one node's policies, keeping its numbers from one compile to the next.
#[derive(Debug)]
pub struct PolicyEncoder {
    endpoints: Numbers<IpAddr>,
    peers: Numbers<PeerMatch>,
    /// By signature (sorted peer set numbers).
    identities: Numbers<Vec<u32>>,
    /// The numbers in the maps at start, for the first compile to take over.
    adopted: Option<Adopted>,
}

impl Default for PolicyEncoder {
    fn default() -> Self {
        Self {
            endpoints: Numbers::new(1),
            peers: Numbers::new(0),
            identities: Numbers::new(IDENTITY_FIRST),
            adopted: None,
        }
    }
}

impl PolicyEncoder {
    /// Identity and endpoint numbers the maps hold now, which the next compile
    /// must not give a new meaning (they are freed numbers whose removal has not
    /// reached the maps).
    pub fn hold(
        &mut self,
        identities: impl IntoIterator<Item = u32>,
        endpoints: impl IntoIterator<Item = u32>,
    ) {
        self.identities.held = identities.into_iter().collect();
        self.endpoints.held = endpoints.into_iter().collect();
    }

    /// Identity and endpoint numbers start above those of maps an earlier agent
    /// left pinned, so that none changes meaning while the first sync runs.
    pub fn start_above(&mut self, identity: u32, endpoint: u32) {
        self.identities.start_above(identity);
        self.endpoints.start_above(endpoint);
    }

    /// Numbers to take over from `maps` (what an earlier agent left pinned) in
    /// the next compile, where they still mean the same (see `adopt`); numbers
    /// not taken over start above them.
    pub fn adopt(&mut self, maps: &DesiredPolicy) {
        let identity = maps
            .ipcache
            .values()
            .copied()
            .chain(maps.rules.iter().map(|r| r.key.identity))
            .max()
            .unwrap_or(0);
        let endpoint = maps
            .endpoints
            .values()
            .map(|e| e.id)
            .chain(maps.rules.iter().map(|r| r.key.endpoint))
            .max()
            .unwrap_or(0);
        self.start_above(identity, endpoint);
        self.adopted = Some(Adopted::from_maps(maps));
    }

    /// The maps for the pods at `local` addresses (this node's), given every
    /// pod's resolved policies.
    pub fn encode(&mut self, policies: &PodPolicies, local: &[IpAddr]) -> DesiredPolicy {
        let mut out = DesiredPolicy::default();
        let isolated: Vec<(IpAddr, &super::PodPolicy)> = local
            .iter()
            .filter_map(|ip| policies.pods.get(ip).map(|p| (*ip, p)))
            .filter(|(_, p)| p.ingress.is_some() || p.egress.is_some())
            .collect();

        // Peer sets of the node's rules, numbered; each rule's number, in the
        // order the rules are written below (a set is hashed once).
        let mut peer_sets: BTreeMap<u32, &PeerMatch> = BTreeMap::new();
        let mut numbered: Vec<u32> = Vec::new();
        for (_, p) in &isolated {
            for allow in p.ingress.iter().flatten().chain(p.egress.iter().flatten()) {
                if allow.peers != PeerMatch::All {
                    let n = self.peers.get(&allow.peers);
                    peer_sets.entry(n).or_insert(&allow.peers);
                    numbered.push(n);
                }
            }
        }

        // Signatures: of every pod address some set names, and of every region
        // the ipBlocks' prefixes cut out.
        let mut prefixes: Vec<IpNetwork> = Vec::new();
        // Which sets could name a prefix: those naming the pod at that address
        // (which name it by construction), and those with a block whose CIDR
        // contains it (found among the prefix's supernets, then checked),
        // rather than every set for every prefix.
        let mut by_pod: HashMap<IpAddr, Vec<u32>> = HashMap::default();
        let mut by_cidr: HashMap<IpNetwork, Vec<u32>> = HashMap::default();
        for (n, peers) in &peer_sets {
            if let PeerMatch::Some { pods, blocks } = peers {
                for ip in pods {
                    by_pod.entry(*ip).or_default().push(*n);
                }
                for (cidr, except) in blocks {
                    prefixes.push(canonical(*cidr));
                    prefixes.extend(except.iter().map(|e| canonical(*e)));
                    by_cidr.entry(canonical(*cidr)).or_default().push(*n);
                }
            }
        }
        prefixes.extend(by_pod.keys().map(|ip| IpNetwork::from(*ip)));
        prefixes.sort_unstable();
        prefixes.dedup();
        let cidr_lens: BTreeSet<u8> = by_cidr.keys().map(|c| c.prefix()).collect();
        let mut signatures: Vec<(IpcacheEntry, Vec<u32>)> = prefixes
            .iter()
            .map(|prefix| {
                let mut signature: Vec<u32> = Vec::new();
                if prefix.prefix() == max_prefix(*prefix) {
                    signature.extend(by_pod.get(&prefix.ip()).into_iter().flatten());
                }
                // Only the lengths some block has: a pod's /32 would otherwise be
                // 33 lookups, most of any encode's time.
                for &len in cidr_lens.iter().filter(|&&len| len <= prefix.prefix()) {
                    if let Ok(supernet) = IpNetwork::new(prefix.ip(), len) {
                        signature.extend(
                            by_cidr
                                .get(&canonical(supernet))
                                .into_iter()
                                .flatten()
                                .filter(|n| names_region(peer_sets[*n], *prefix)),
                        );
                    }
                }
                signature.sort_unstable();
                signature.dedup();
                (IpcacheEntry::of(*prefix), signature)
            })
            .collect();
        // Numbered in the ipcache's order, for the same numbers from the same
        // cluster.
        signatures.sort_unstable_by_key(|(entry, _)| *entry);
        let adopted = self.adopted.take().unwrap_or_default();
        for (signature, n) in adopted.identities(&signatures) {
            self.identities.adopt(signature, n);
        }
        let mut members: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        // In key order: the map is built in one pass.
        out.ipcache = signatures
            .iter()
            .map(|(entry, signature)| {
                let identity = if signature.is_empty() {
                    IDENTITY_WORLD
                } else {
                    self.identities.get(signature)
                };
                for n in signature {
                    members.entry(*n).or_default().push(identity);
                }
                (*entry, identity)
            })
            .collect();
        for ids in members.values_mut() {
            ids.sort_unstable();
            ids.dedup();
        }

        // Each endpoint's rules, per identity the peers cover.
        for (ip, _) in &isolated {
            if let Some(n) = adopted.endpoint(*ip) {
                self.endpoints.adopt(ip, n);
            }
        }
        let mut numbered = numbered.into_iter();
        for (ip, p) in &isolated {
            let id = self.endpoints.get(ip);
            let mut flags = 0;
            for (egress, allows) in [(false, &p.ingress), (true, &p.egress)] {
                let Some(allows) = allows else { continue };
                flags |= if egress { POLICY_F_EGRESS } else { POLICY_F_INGRESS };
                for allow in allows {
                    let identities: &[u32] = match &allow.peers {
                        PeerMatch::All => &[IDENTITY_ANY],
                        _ => numbered
                            .next()
                            .and_then(|n| members.get(&n))
                            .map_or(&[], Vec::as_slice),
                    };
                    for &identity in identities {
                        for (proto, port, prefix_len) in port_prefixes(&allow.ports) {
                            out.rules.insert(RuleKey {
                                prefix_len,
                                key: PolicyKey {
                                    endpoint: id,
                                    identity,
                                    egress: u8::from(egress),
                                    proto,
                                    port: port.to_be(),
                                },
                            });
                        }
                    }
                }
            }
            let (addr, family) = to_abi(*ip);
            out.endpoints.insert(
                EndpointKey {
                    addr,
                    family,
                    _pad: [0; 3],
                },
                PolicyEndpoint { id, flags },
            );
        }
        self.endpoints.end_round();
        self.peers.end_round();
        self.identities.end_round();
        out
    }
}

/// Whether a peer set names every address of the region `prefix` governs in the
/// ipcache (the prefix minus the more specific prefixes, which all ipBlock
/// boundaries and named pods are): a pod address by membership, a region by
/// lying inside a block's CIDR and inside none of its exceptions.
fn names_region(peers: &PeerMatch, prefix: IpNetwork) -> bool {
    let PeerMatch::Some { pods, blocks } = peers else {
        return true;
    };
    let single = prefix.prefix() == max_prefix(prefix);
    (single && pods.contains(&prefix.ip()))
        || blocks
            .iter()
            .any(|(cidr, except)| within(prefix, *cidr) && !except.iter().any(|e| within(prefix, *e)))
}

/// Whether `inner` lies wholly inside `outer`.
fn within(inner: IpNetwork, outer: IpNetwork) -> bool {
    inner.is_ipv4() == outer.is_ipv4() && outer.prefix() <= inner.prefix() && outer.contains(inner.network())
}

fn max_prefix(net: IpNetwork) -> u8 {
    if net.is_ipv4() { 32 } else { 128 }
}

/// The network itself (host bits cleared): `10.0.0.5/8` is `10.0.0.0/8`.
fn canonical(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

/// A rule's ports as (protocol, first port, prefix length) LPM entries: every
/// protocol, every port of one, or a range cut into aligned power-of-two blocks
/// (at most 30 for any range).
fn port_prefixes(ports: &PortMatch) -> Vec<(u8, u16, u32)> {
    let PortMatch::Some(ports) = ports else {
        return vec![(0, 0, POLICY_PREFIX_ANY_PROTO)];
    };
    let mut out = Vec::new();
    for (proto, lo, hi) in ports {
        let proto = proto.ipproto();
        if *lo <= 1 && *hi == u16::MAX {
            out.push((proto, 0, POLICY_PREFIX_ANY_PORT));
            continue;
        }
        let (mut lo, hi) = (u32::from(*lo), u32::from(*hi));
        while lo <= hi {
            // The largest block aligned at `lo` that ends within the range.
            let mut bits = lo.trailing_zeros().min(16);
            while lo + (1 << bits) - 1 > hi {
                bits -= 1;
            }
            out.push((proto, lo as u16, POLICY_PREFIX_FULL - bits));
            lo += 1 << bits;
        }
    }
    out
}

impl DesiredPolicy {
    /// What the datapath would decide for a new flow on the endpoint at `ep`
    /// (`egress`: it sends to `peer`; else it receives from `peer`): `None` when
    /// it is not isolated that way. The same lookups as the eBPF programs, for
    /// tests that hold the encoding against the semantics.
    pub fn admits(&self, ep: IpAddr, egress: bool, peer: IpAddr, proto: u8, port: u16) -> Option<bool> {
        let (addr, family) = to_abi(ep);
        let endpoint = self.endpoints.get(&EndpointKey {
            addr,
            family,
            _pad: [0; 3],
        })?;
        let flag = if egress { POLICY_F_EGRESS } else { POLICY_F_INGRESS };
        if endpoint.flags & flag == 0 {
            return None;
        }
        let identity = self
            .ipcache
            .iter()
            .filter(|(e, _)| {
                let net = IpNetwork::new(peer, (e.prefix_len - IPCACHE_PREFIX_BITS) as u8);
                net.is_ok_and(|net| IpcacheEntry::of(net) == **e)
            })
            .max_by_key(|(e, _)| e.prefix_len)
            .map_or(IDENTITY_WORLD, |(_, id)| *id);
        let matches = |identity: u32| {
            self.rules.iter().any(|r| {
                let k = &r.key;
                let key_bits = (u128::from(k.proto) << 16) | u128::from(u16::from_be(k.port));
                let probe = (u128::from(proto) << 16) | u128::from(port);
                let tail = r.prefix_len - (POLICY_PREFIX_ANY_PROTO);
                k.endpoint == endpoint.id
                    && k.identity == identity
                    && k.egress == u8::from(egress)
                    && (tail == 0 || (key_bits >> (24 - tail)) == (probe >> (24 - tail)))
            })
        };
        Some(matches(identity) || matches(IDENTITY_ANY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Protocol;

    #[test]
    fn port_ranges_become_few_aligned_prefixes() {
        let cover = |lo: u16, hi: u16| {
            let p = port_prefixes(&PortMatch::Some(vec![(Protocol::Tcp, lo, hi)]));
            let mut ports = Vec::new();
            for (proto, start, len) in &p {
                assert_eq!(*proto, 6);
                let size = 1u32 << (POLICY_PREFIX_FULL - len);
                assert_eq!(u32::from(*start) % size, 0, "aligned");
                ports.extend(u32::from(*start)..u32::from(*start) + size);
            }
            ports.sort_unstable();
            (ports, p.len())
        };
        for (lo, hi) in [
            (80, 80),
            (80, 81),
            (81, 90),
            (70, 80),
            (1024, 65534),
            (2, 65535),
            (0, 0),
        ] {
            let (ports, n) = cover(lo, hi);
            assert_eq!(
                ports,
                (u32::from(lo)..=u32::from(hi)).collect::<Vec<_>>(),
                "{lo}-{hi}"
            );
            assert!(n <= 30, "{lo}-{hi}: {n} prefixes");
        }
        assert_eq!(
            port_prefixes(&PortMatch::Some(vec![(Protocol::Udp, 1, u16::MAX)])),
            vec![(17, 0, POLICY_PREFIX_ANY_PORT)]
        );
        assert_eq!(
            port_prefixes(&PortMatch::All),
            vec![(0, 0, POLICY_PREFIX_ANY_PROTO)]
        );
    }

    #[test]
    fn numbers_are_stable_and_reused_only_after_a_cool_down() {
        let mut n: Numbers<&str> = Numbers::new(10);
        assert_eq!((n.get(&"a"), n.get(&"b")), (10, 11));
        n.end_round();
        assert_eq!(n.get(&"b"), 11, "kept while used");
        n.end_round(); // "a" (10) is released: cooling
        assert_eq!(n.get(&"c"), 12, "not reused by the next compile");
        n.end_round();
        n.held.insert(10);
        assert_eq!(n.get(&"d"), 13, "not while the maps still hold it");
        n.held.clear();
        n.end_round();
        assert!(
            [10, 11].contains(&n.get(&"e")),
            "reused once the maps let go of it"
        );
    }
}
