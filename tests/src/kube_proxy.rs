//! A set of ClusterIP Services and what kube-proxy would program for it: the
//! `iptables-restore` input of its iptables mode, the `nft -f` input of its nftables
//! mode, and the manifests (Services + EndpointSlices) all of them are derived from,
//! for Weir's directory source. Benchmarks load these into lab nodes to compare the
//! datapaths on the same Services.
//!
//! The rules have kube-proxy's shape (v1.31+), nat table only: the chain layout, the
//! matches, the `statistic` probabilities and the `numgen` maps, the masquerade marks.
//! NodePorts (iptables mode) as kube-proxy writes them for externalTrafficPolicy
//! Cluster: `KUBE-NODEPORTS` -> `KUBE-EXT-*` (masquerade mark) -> `KUBE-SVC-*`.
//! Not reproduced: the filter-table chains (firewall, rejects for Services without
//! endpoints: empty when every Service has endpoints), and the exact chain hashes
//! (kube-proxy hashes with SHA-256; any 16-character name costs the same).

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
};

/// kube-proxy omits rule comments once a node has more endpoints than this
/// (`largeClusterEndpointsThreshold`), to keep `iptables-restore` input small.
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// kube-proxy's masquerade mark (`--iptables-masquerade-bit` 14).
const MASQ_MARK: &str = "0x4000";

/// One ClusterIP Service with one TCP port (named `http`) and its ready endpoints.
#[derive(Clone, Debug)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    /// A NodePort Service's node port (externalTrafficPolicy Cluster).
    pub node_port: Option<u16>,
    pub endpoints: Vec<SocketAddrV4>,
}

impl Service {
    /// `namespace/name:http`, kube-proxy's `ServicePortName`.
    fn port_name(&self) -> String {
        format!("{}/{}:http", self.namespace, self.name)
    }

    /// `KUBE-SVC-` + 16 characters of the port name's hash.
    fn svc_chain(&self) -> String {
        format!("KUBE-SVC-{}", hash16(&format!("{}tcp", self.port_name())))
    }

    /// `KUBE-EXT-` + the same hash as the Service chain's.
    fn ext_chain(&self) -> String {
        format!("KUBE-EXT-{}", hash16(&format!("{}tcp", self.port_name())))
    }

    /// `KUBE-SEP-` + 16 characters of the (port name, endpoint) hash.
    fn sep_chain(&self, ep: &SocketAddrV4) -> String {
        format!("KUBE-SEP-{}", hash16(&format!("{}tcp{ep}", self.port_name())))
    }

    /// nftables: `service-HASH8-ns/name/tcp/http`.
    fn nft_svc_chain(&self) -> String {
        let base = format!("{}/{}/tcp/http", self.namespace, self.name);
        format!("service-{}-{base}", &hash16(&base)[..8])
    }

    /// nftables: `endpoint-HASH8-ns/name/tcp/http__IP/PORT`.
    fn nft_sep_chain(&self, ep: &SocketAddrV4) -> String {
        let base = format!(
            "{}/{}/tcp/http__{}/{}",
            self.namespace,
            self.name,
            ep.ip(),
            ep.port()
        );
        format!("endpoint-{}-{base}", &hash16(&base)[..8])
    }

    /// The Service and its EndpointSlice, as YAML documents.
    pub fn manifest(&self) -> String {
        let mut out = self.service_manifest();
        out.push_str(&self.slice_manifest());
        out
    }

    /// The Service object alone (`---`-terminated).
    pub fn service_manifest(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: {ns}}}\n\
             spec: {{type: ClusterIP, clusterIP: {vip}, clusterIPs: [{vip}], \
             ports: [{{name: http, port: {p}, protocol: TCP, targetPort: http}}]}}\n---\n",
            n = self.name,
            ns = self.namespace,
            vip = self.vip,
            p = self.port,
        )
    }

    /// The EndpointSlice alone (`---`-terminated). All endpoints must share a port
    /// (one slice has one port list).
    pub fn slice_manifest(&self) -> String {
        let port = self.endpoints.first().map_or(self.port, |e| e.port());
        let mut out = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {n}-1, namespace: {ns}, \
             labels: {{kubernetes.io/service-name: {n}}}}}\naddressType: IPv4\n\
             ports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints:\n",
            n = self.name,
            ns = self.namespace,
        );
        for ep in &self.endpoints {
            assert_eq!(ep.port(), port, "one slice, one port");
            let _ = writeln!(out, "- {{addresses: [{}], conditions: {{ready: true}}}}", ep.ip());
        }
        out.push_str("---\n");
        out
    }
}

/// Services as kube-proxy would see them on one node.
#[derive(Clone, Debug)]
pub struct ServiceSet {
    pub services: Vec<Service>,
    /// `--cluster-cidr`: traffic from outside it to a ClusterIP is masqueraded.
    pub cluster_cidr: String,
}

impl ServiceSet {
    /// `n` Services `svc-{i}` in namespace `bench`, ClusterIPs `10.96.0.0/12` from
    /// `10.96.0.1` on, port 80, each with `per_service` endpoints at unique addresses
    /// in `10.128.0.0/9` (that exist nowhere: these Services only make the rule set big).
    pub fn synthetic(n: usize, per_service: usize, cluster_cidr: &str) -> Self {
        let services = (0..n)
            .map(|i| Service {
                namespace: "bench".to_owned(),
                name: format!("svc-{i}"),
                vip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32),
                port: 80,
                node_port: None,
                endpoints: (0..per_service)
                    .map(|j| {
                        let k = (i * per_service + j) as u32;
                        SocketAddrV4::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + k), 8080)
                    })
                    .collect(),
            })
            .collect();
        Self {
            services,
            cluster_cidr: cluster_cidr.to_owned(),
        }
    }

    fn endpoint_count(&self) -> usize {
        self.services.iter().map(|s| s.endpoints.len()).sum()
    }

    /// The `iptables-restore --noflush` input of a full kube-proxy sync into an
    /// empty nat table, with the jumps from the built-in chains that kube-proxy
    /// ensures at start-up.
    pub fn iptables_restore(&self) -> String {
        let comments = self.endpoint_count() <= LARGE_CLUSTER_ENDPOINTS;
        let comment = |text: &str| {
            if comments {
                format!("-m comment --comment \"{text}\" ")
            } else {
                String::new()
            }
        };
        let mut chains = String::from(
            "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n",
        );
        let mut rules = format!(
            "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
             -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
             -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
             -A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}\n"
        );
        let mut svc_rules = String::new();
        let mut sep_rules = String::new();
        let mut nodeport_rules = String::new();
        for svc in &self.services {
            let name = svc.port_name();
            let chain = svc.svc_chain();
            let _ = writeln!(chains, ":{chain} - [0:0]");
            if let Some(node_port) = svc.node_port {
                let ext = svc.ext_chain();
                let _ = writeln!(chains, ":{ext} - [0:0]");
                let _ = writeln!(
                    nodeport_rules,
                    "-A KUBE-NODEPORTS {}-m tcp -p tcp --dport {node_port} -j {ext}",
                    comment(&name)
                );
                let _ = writeln!(
                    nodeport_rules,
                    "-A {ext} {}-j KUBE-MARK-MASQ",
                    comment(&format!("masquerade traffic for {name} external destinations"))
                );
                let _ = writeln!(nodeport_rules, "-A {ext} -j {chain}");
            }
            let _ = writeln!(
                rules,
                "-A KUBE-SERVICES {}-m tcp -p tcp -d {}/32 --dport {} -j {chain}",
                comment(&format!("{name} cluster IP")),
                svc.vip,
                svc.port
            );
            let _ = writeln!(
                svc_rules,
                "-A {chain} {}-m tcp -p tcp -d {}/32 --dport {} ! -s {} -j KUBE-MARK-MASQ",
                comment(&format!("{name} cluster IP")),
                svc.vip,
                svc.port,
                self.cluster_cidr
            );
            let n = svc.endpoints.len();
            for (i, ep) in svc.endpoints.iter().enumerate() {
                let sep = svc.sep_chain(ep);
                let _ = writeln!(chains, ":{sep} - [0:0]");
                // kube-proxy: endpoint i of n is taken with probability 1/(n-i), so
                // each is chosen with 1/n overall; the last one unconditionally.
                let statistic = if i + 1 < n {
                    format!(
                        "-m statistic --mode random --probability {:.10} ",
                        1.0 / (n - i) as f64
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    svc_rules,
                    "-A {chain} {}{statistic}-j {sep}",
                    comment(&format!("{name} -> {ep}"))
                );
                let _ = writeln!(
                    sep_rules,
                    "-A {sep} {}-s {}/32 -j KUBE-MARK-MASQ",
                    comment(&name),
                    ep.ip()
                );
                let _ = writeln!(
                    sep_rules,
                    "-A {sep} {}-m tcp -p tcp -j DNAT --to-destination {ep}",
                    comment(&name)
                );
            }
        }
        rules.push_str(
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" \
             -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
        );
        rules.push_str(&nodeport_rules);
        rules.push_str(&svc_rules);
        rules.push_str(&sep_rules);
        rules.push_str(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
             COMMIT\n",
        );
        chains.push_str(&rules);
        chains
    }

    /// The `nft -f` input of kube-proxy's nftables mode: table `ip kube-proxy`, the
    /// `service-ips` verdict map dispatching to per-Service chains that pick an
    /// endpoint chain with `numgen random`.
    pub fn nft_ruleset(&self) -> String {
        let mut out = String::from("table ip kube-proxy {\n\tcomment \"rules for kube-proxy\"\n");
        out.push_str(&format!(
            "\tchain mark-for-masquerade {{\n\t\tmeta mark set meta mark | {MASQ_MARK}\n\t}}\n\
             \tchain masquerading {{\n\t\tmeta mark & {MASQ_MARK} == 0 return\n\t\tmeta mark set meta mark ^ {MASQ_MARK}\n\
             \t\tmasquerade fully-random\n\t}}\n"
        ));
        // Chains before the map elements that name them.
        let mut elements = Vec::with_capacity(self.services.len());
        for svc in &self.services {
            let mut vmap = Vec::with_capacity(svc.endpoints.len());
            for (i, ep) in svc.endpoints.iter().enumerate() {
                let sep = svc.nft_sep_chain(ep);
                let _ = write!(
                    out,
                    "\tchain {sep} {{\n\t\tip saddr {} jump mark-for-masquerade\n\t\tmeta l4proto tcp dnat to {ep}\n\t}}\n",
                    ep.ip()
                );
                vmap.push(format!("{i} : goto {sep}"));
            }
            let chain = svc.nft_svc_chain();
            let _ = write!(
                out,
                "\tchain {chain} {{\n\t\tip daddr {} tcp dport {} ip saddr != {} jump mark-for-masquerade\n",
                svc.vip, svc.port, self.cluster_cidr
            );
            if !vmap.is_empty() {
                let _ = writeln!(
                    out,
                    "\t\tnumgen random mod {} vmap {{ {} }}",
                    vmap.len(),
                    vmap.join(", ")
                );
            }
            out.push_str("\t}\n");
            elements.push(format!("{} . tcp . {} : goto {chain}", svc.vip, svc.port));
        }
        out.push_str(
            "\tmap service-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\
             \t\tcomment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\"\n",
        );
        if !elements.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(",\n\t\t\t"));
        }
        out.push_str(
            "\t}\n\tset nodeport-ips {\n\t\ttype ipv4_addr\n\t\tcomment \"IPs that accept NodePort traffic\"\n\t}\n\
             \tmap service-nodeports {\n\t\ttype inet_proto . inet_service : verdict\n\t\tcomment \"NodePort traffic\"\n\t}\n\
             \tchain services {\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\
             \t\tip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n\t}\n\
             \tchain nat-prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n\
             \tchain nat-output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}\n\
             \tchain nat-postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tjump masquerading\n\t}\n\
             }\n",
        );
        out
    }

    /// Every Service and EndpointSlice, as one multi-document YAML file.
    pub fn manifests(&self) -> String {
        self.services.iter().map(Service::manifest).collect()
    }
}

/// 16 characters `[A-Z2-7]` from a 64-bit FNV-1a hash of `s` (the shape of
/// kube-proxy's base32 SHA-256 prefixes).
fn hash16(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // 64 bits give 12.8 base32 digits: mix once more for the last ones.
    let mut h2 = h.rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..16)
        .map(|i| {
            let v = if i < 12 {
                h >> (i * 5)
            } else {
                h2 >>= 5;
                h2
            };
            ALPHABET[(v & 31) as usize] as char
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one() -> ServiceSet {
        let mut set = ServiceSet::synthetic(1, 3, "10.244.0.0/16");
        set.services[0].endpoints[0] = "10.244.1.5:8080".parse().expect("addr");
        set
    }

    #[test]
    fn iptables_has_kube_proxy_shape() {
        let rules = one().iptables_restore();
        let svc = one().services[0].svc_chain();
        assert!(rules.starts_with("*nat\n:KUBE-SERVICES - [0:0]\n"), "{rules}");
        assert!(rules.contains(&format!(
            "-A KUBE-SERVICES -m comment --comment \"bench/svc-0:http cluster IP\" -m tcp -p tcp -d 10.96.0.1/32 --dport 80 -j {svc}\n"
        )));
        assert!(rules.contains("-m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-"));
        assert!(rules.contains("-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-"));
        assert_eq!(
            rules.matches("-m statistic").count(),
            2,
            "the last endpoint has no statistic match"
        );
        assert!(rules.contains("-s 10.244.1.5/32 -j KUBE-MARK-MASQ\n"));
        assert!(rules.contains("-m tcp -p tcp -j DNAT --to-destination 10.244.1.5:8080\n"));
        assert!(rules.ends_with("-j KUBE-POSTROUTING\nCOMMIT\n"));
        // Chain names are unique.
        let chains: std::collections::BTreeSet<_> = rules.lines().filter(|l| l.starts_with(':')).collect();
        assert_eq!(chains.len(), 4 + 1 + 3);
    }

    #[test]
    fn node_ports_go_through_the_external_chain_with_the_masquerade_mark() {
        let mut set = one();
        set.services[0].node_port = Some(30080);
        let rules = set.iptables_restore();
        let (svc, ext) = (set.services[0].svc_chain(), set.services[0].ext_chain());
        assert!(rules.contains(&format!("-A KUBE-NODEPORTS -m comment --comment \"bench/svc-0:http\" -m tcp -p tcp --dport 30080 -j {ext}\n")), "{rules}");
        assert!(rules.contains(&format!("-A {ext} -m comment --comment \"masquerade traffic for bench/svc-0:http external destinations\" -j KUBE-MARK-MASQ\n-A {ext} -j {svc}\n")));
        assert!(rules.contains(&format!(":{ext} - [0:0]\n")));
    }

    #[test]
    fn comments_vanish_in_large_clusters() {
        let rules = ServiceSet::synthetic(101, 10, "10.244.0.0/16").iptables_restore();
        assert_eq!(
            rules.matches("--comment").count(),
            5,
            "only the fixed rules keep theirs"
        );
    }

    #[test]
    fn nft_has_kube_proxy_shape() {
        let nft = one().nft_ruleset();
        assert!(
            nft.contains("numgen random mod 3 vmap { 0 : goto endpoint-"),
            "{nft}"
        );
        assert!(nft.contains("meta l4proto tcp dnat to 10.244.1.5:8080\n"));
        assert!(nft.contains("elements = { 10.96.0.1 . tcp . 80 : goto service-"));
        assert!(nft.contains("type nat hook prerouting priority dstnat; policy accept;"));
    }

    #[test]
    fn manifests_name_the_service() {
        let yaml = one().manifests();
        assert!(yaml.contains("clusterIP: 10.96.0.1,"));
        assert!(yaml.contains("labels: {kubernetes.io/service-name: svc-0}"));
        assert!(yaml.contains("- {addresses: [10.244.1.5], conditions: {ready: true}}\n"));
    }
}
