//! Tier 2 (root + namespaces + containerd): a two-node lab comes up the way a
//! cluster does (`weir_lab::kube_lab`): Node objects with pod CIDRs in the API,
//! agents (`--source kube`, `--routing vxlan`) writing each node's conflist once ready,
//! containerd (`ctr run --cni`, reading that conflist) starting containers that
//! reach each other across the nodes and through a Service.

use std::net::IpAddr;

use weir_lab::{
    kube_lab::{KubeLab, answer},
    require_root,
    services::{Ep, port, service, slice},
    underlay::Routing,
    unique,
};

const VIP: &str = "10.96.0.88";

#[test]
fn root_kube_two_nodes_come_up_as_a_cluster_and_run_containers() {
    require_root();
    // No route between the nodes' pods but the agents' overlay.
    let lab = KubeLab::new(88, &["10.88.1.0/24", "10.88.2.0/24"], Some(Routing::Vxlan));
    for (i, n) in lab.nodes.iter().enumerate() {
        let conflist = n.conflist();
        let types: Vec<&str> = conflist["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .filter_map(|p| p["type"].as_str())
            .collect();
        assert_eq!(types, ["weir-cni", "portmap"], "node {i}: {conflist}");
        assert_eq!(
            conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            n.node.pod_cidr()
        );
        assert_eq!(
            conflist["plugins"][0]["mtu"], 1450,
            "pods' MTU: the underlay's 1,500 less VXLAN's 50"
        );
    }

    let srv = unique("srv");
    let (server, srv_ip) = lab.start_server(0, &srv, "hello from the server");
    assert!(
        srv_ip.to_string().starts_with("10.88.1."),
        "node 0's pod CIDR: {srv_ip}"
    );
    lab.cluster.write(
        "web",
        &[
            service("web", VIP, &[port("http", 80, "8080", "TCP")]),
            slice(
                "web-x",
                "web",
                lab.nodes[0].node.name(),
                &[("http", 8080, "TCP")],
                &[Ep::ready(srv_ip)],
            ),
        ],
    );
    for n in &lab.nodes {
        n.agent
            .wait_backends(&format!("{VIP}:80/TCP"), &[format!("{srv_ip}:8080")]);
    }

    // Clients on both nodes: the server directly (across the underlay from
    // node 1) and through its Service.
    let targets = [format!("{srv_ip}:8080"), format!("{VIP}:80")];
    for (i, n) in lab.nodes.iter().enumerate() {
        let out = lab.fetch(i, &unique("cli"), &targets);
        assert_eq!(
            out.exit_code,
            Some(0),
            "client on node {i}: {}\n{}\n{}",
            out.stdout,
            out.stderr,
            lab.runtime.log()
        );
        let ip: IpAddr = answer(&out.stdout, "ip")
            .expect("its address")
            .parse()
            .expect("an address");
        let cidr: ipnetwork::IpNetwork = n.node.pod_cidr().parse().expect("cidr");
        assert!(cidr.contains(ip), "node {i}'s client at {ip}, outside {cidr}");
        for t in &targets {
            assert_eq!(
                answer(&out.stdout, t),
                Some("hello from the server"),
                "client on node {i} to {t}: {}",
                out.stdout
            );
        }
    }

    // The server stops: DEL (by ctr, after the task ends) releases its address
    // and unregisters it.
    let out = lab.stop(server);
    assert_eq!(out.exit_code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let store = std::fs::read_dir(lab.nodes[0].var_lib_weir.join("ipam/weir"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        !store.iter().any(|f| f.contains(&srv_ip.to_string())),
        "DEL left the server's address reserved: {store:?}"
    );
    let endpoints = lab.nodes[0].agent.weirctl(&["endpoints"]);
    assert!(
        !endpoints.to_string().contains(&srv_ip.to_string()),
        "DEL left the server registered with the agent: {endpoints}"
    );
}
