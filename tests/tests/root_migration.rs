//! Tier 2 (root + namespaces): migrating a node from kube-proxy. While
//! kube-proxy's rules (iptables mode, then nftables mode, as
//! `weir_lab::kube_proxy` writes them) and the chained `portmap` plugin's
//! hostPorts translate flows in the node's netfilter, pods reaching them from
//! pods of the same node must get their replies translated back: the agent
//! (`--host-routing auto`) delivers through the host's stack while such rules
//! exist, and goes back to eBPF delivery once they are gone. Weir's own
//! Services work in both modes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use serde_json::json;
use weir_lab::{
    Agent, Node, PodSpec, TempDir,
    kube_proxy::{Service, ServiceSet},
    services::{Ep, ManifestDir, port, service, slice},
    underlay::Underlay,
    whoami::{WhoAmI, ask_tcp, ask_udp},
};

const WEIR_VIP: &str = "10.96.0.10";
const KUBE_PROXY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 5, 5);
const HOST_PORT: u16 = 18080;

/// Polls the agent's metrics until the delivery mode is `legacy` (or not).
fn wait_routing(agent: &Agent, legacy: bool) {
    let want = format!("weir_host_routing_legacy {}", u8::from(legacy));
    agent.wait_get(
        "127.0.0.1:9878",
        "/metrics",
        &format!("`{want}`"),
        |_, metrics| metrics.lines().any(|l| l == want),
    );
}

fn kube_proxy_rules(backend: IpAddr) -> ServiceSet {
    let IpAddr::V4(backend) = backend else {
        panic!("IPv4 backend")
    };
    ServiceSet {
        services: vec![Service {
            namespace: "default".into(),
            name: "legacy".into(),
            vip: KUBE_PROXY_VIP,
            port: 80,
            node_port: None,
            endpoints: vec![SocketAddrV4::new(backend, 8080)],
        }],
        cluster_cidr: "10.90.0.0/16".into(),
    }
}

#[test]
fn root_kube_proxy_and_host_port_flows_work_until_kube_proxy_is_gone() {
    let underlay = Underlay::new(90);
    let mut node = Node::new("10.90.1.0/24");
    let node_ip = underlay.join(&[&node])[0];
    let state = TempDir::new("weir-migration-");

    // kube-proxy ran before Weir: its rules are there when the agent starts.
    let b_ip: IpAddr = "10.90.1.2".parse().expect("ip");
    let rules = state.join("iptables.rules");
    std::fs::write(&rules, kube_proxy_rules(b_ip).iptables_restore()).expect("rules");
    node.ns
        .sh(&format!("iptables-restore --noflush {}", rules.display()));

    let dir = ManifestDir::new();
    let mut agent = node.start_agent_with_source(dir.path());
    let name = node.name().to_owned();
    let backend = node.add_pod("b");
    assert_eq!(
        backend.ipv4(),
        b_ip,
        "the first pod's address, as kube-proxy's rules have it"
    );
    let client = node.add_pod("client");
    let _servers = [WhoAmI::start(&backend.ns, "b", b_ip, &[8080])];
    dir.write(
        "web.yaml",
        &[
            service(
                "web",
                WEIR_VIP,
                &[port("http", 80, "8080", "TCP"), port("dns", 53, "8080", "UDP")],
            ),
            slice(
                "web-x",
                "web",
                node.name(),
                &[("http", 8080, "TCP"), ("dns", 8080, "UDP")],
                &[Ep::ready(b_ip)],
            ),
        ],
    );
    agent.wait_backends(&format!("{WEIR_VIP}:80/TCP"), &[format!("{b_ip}:8080")]);
    wait_routing(&agent, true);
    assert!(
        agent.log_text().contains("KUBE-SERVICES"),
        "the agent must say why it delivers through the host's stack"
    );

    // A hostPort of a pod, by the chained portmap, as the kubelet sets it up.
    let mut weir = node.conf.clone();
    weir.as_object_mut().expect("object").remove("cniVersion");
    let plugins = [
        weir,
        json!({
            "type": "portmap", "capabilities": { "portMappings": true },
            "runtimeConfig": { "portMappings": [{ "hostPort": HOST_PORT, "containerPort": 8080, "protocol": "tcp" }] },
        }),
    ];
    let (hp_ns, hp_spec) = PodSpec::with_netns("hostport");
    let hp_result = node.run_chain(&hp_spec, "ADD", &plugins, None);
    let hp_ip = weir_lab::node::result_ips(&hp_result)[0];
    let _hp_server = WhoAmI::start(&hp_ns, "hostport", hp_ip, &[8080]);

    let kube_proxy_vip = SocketAddr::new(IpAddr::V4(KUBE_PROXY_VIP), 80);
    let weir_vip = |port| SocketAddr::new(WEIR_VIP.parse().expect("vip"), port);
    let host_port = SocketAddr::new(node_ip, HOST_PORT);
    let everything_answers = |what: &str| {
        for (name, to, server) in [
            ("kube-proxy's ClusterIP", kube_proxy_vip, "b"),
            ("a hostPort on the node", host_port, "hostport"),
            ("Weir's ClusterIP", weir_vip(80), "b"),
        ] {
            for i in 0..5 {
                let a =
                    ask_tcp(&client.ns, to).unwrap_or_else(|e| panic!("{what}: {name} ({to}), try {i}: {e}"));
                assert_eq!(a.server, server, "{what}: {name}");
                assert_eq!(
                    a.peer.ip(),
                    client.ipv4(),
                    "{what}: {name} must see the client's address"
                );
            }
        }
        let a = ask_udp(&client.ns, weir_vip(53))
            .unwrap_or_else(|e| panic!("{what}: Weir's ClusterIP over UDP: {e}"));
        assert_eq!(a.server, "b");
        let a = ask_tcp(&backend.ns, weir_vip(80)).unwrap_or_else(|e| panic!("{what}: hairpin: {e}"));
        assert_eq!(
            a.server, "b",
            "{what}: a backend reaching itself through Weir's ClusterIP"
        );
    };
    everything_answers("iptables mode");

    // kube-proxy switched to its nftables mode: its own table.
    let nft = state.join("kube-proxy.nft");
    std::fs::write(&nft, kube_proxy_rules(b_ip).nft_ruleset()).expect("nft rules");
    // kube-proxy's iptables rules removed, portmap's kept.
    node.ns.sh(&format!(
        "iptables-save -t nat | grep -v -- KUBE- | iptables-restore && nft -f {}",
        nft.display()
    ));
    assert!(!node.ns.sh("iptables-save -t nat").contains("KUBE-"));
    everything_answers("nftables mode");

    // The fast path skips netfilter: forced on while kube-proxy's rules are
    // there, their flows break (what `auto` avoids). A restart flips no mode
    // on its own: the forced agent is what changes it.
    agent.extra = vec!["--host-routing=ebpf".into()];
    agent.restart(&name);
    wait_routing(&agent, false);
    let broken = (0..3)
        .filter(|_| ask_tcp(&client.ns, kube_proxy_vip).is_err())
        .count();
    assert_eq!(
        broken, 3,
        "eBPF delivery must be what breaks kube-proxy's flows, or this test proves nothing"
    );
    agent.extra = Vec::new();
    agent.restart(&name);
    wait_routing(&agent, true);
    everything_answers("auto again");

    // kube-proxy removed (its DaemonSet deleted, its table deleted), the pod
    // with the hostPort gone (portmap's chain stays, empty): back to eBPF
    // delivery.
    node.ns.sh("nft delete table ip kube-proxy");
    node.run_chain(&hp_spec, "DEL", &plugins, Some(&hp_result));
    assert!(node.ns.sh("iptables-save -t nat").contains(":CNI-HOSTPORT-DNAT"));
    wait_routing(&agent, false);
    let a = ask_tcp(&client.ns, weir_vip(80)).expect("Weir's ClusterIP with eBPF delivery");
    assert_eq!(a.server, "b");
    let a = ask_tcp(&backend.ns, weir_vip(80)).expect("hairpin with eBPF delivery");
    assert_eq!(a.server, "b");
}
