//! A large cluster's objects as an API server holds them, for the benchmarks
//! of scale: `agent_memory` (the agent's RSS holding it) and `heap_breakdown`
//! (where that memory goes, stage by stage).

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Value, json};

use crate::services::{Ep, node_object, pod, port, service, slice};

/// Namespaces the objects are spread over.
pub const NAMESPACES: usize = 100;
/// Endpoints per Service.
pub const ENDPOINTS: usize = 10;

/// Address `i` of a /16 at `base`.
pub fn addr(base: [u8; 2], i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        base[0],
        base[1],
        (i / 250) as u8,
        (i % 250 + 1) as u8,
    ))
}

/// `services` Services of [`ENDPOINTS`] ready endpoints each (one
/// EndpointSlice each) and `pods` Pods, in [`NAMESPACES`] Namespaces, with
/// the Node `node`: in files of 1,000 objects (as a directory source reads
/// them), the Namespaces and the Node first (`base`).
pub fn large_cluster(node: &str, services: usize, pods: usize) -> Vec<(String, Vec<Value>)> {
    let mut files = Vec::new();
    let mut objects: Vec<Value> = (0..NAMESPACES)
        .map(
            |n| json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": format!("ns-{n}") } }),
        )
        .collect();
    objects.push(node_object(
        node,
        &["10.128.0.0/16"],
        &["10.200.99.1".parse().expect("ip")],
    ));
    files.push(("base".to_owned(), objects));
    for chunk in 0..services.div_ceil(1000) {
        let mut objects = Vec::new();
        for i in chunk * 1000..((chunk + 1) * 1000).min(services) {
            let name = format!("svc-{i}");
            let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32).to_string();
            let mut svc = service(&name, &vip, &[port("http", 80, "8080", "TCP")]);
            svc["metadata"]["namespace"] = json!(format!("ns-{}", i % NAMESPACES));
            let eps: Vec<Ep> = (0..ENDPOINTS)
                .map(|j| Ep::ready(addr([10, 128], i * ENDPOINTS + j)))
                .collect();
            let mut sl = slice(&format!("{name}-x"), &name, node, &[("http", 8080, "TCP")], &eps);
            sl["metadata"]["namespace"] = svc["metadata"]["namespace"].clone();
            objects.push(svc);
            objects.push(sl);
        }
        files.push((format!("services-{chunk}"), objects));
    }
    for chunk in 0..pods.div_ceil(1000) {
        let objects = (chunk * 1000..((chunk + 1) * 1000).min(pods))
            .map(|i| {
                pod(
                    &format!("ns-{}", i % NAMESPACES),
                    &format!("pod-{i}"),
                    json!({ "app": format!("svc-{}", i % services.max(1)), "tier": "web" }),
                    node,
                    &[addr([10, 128], i)],
                    json!([{ "name": "http", "containerPort": 8080, "protocol": "TCP" }]),
                )
            })
            .collect();
        files.push((format!("pods-{chunk}"), objects));
    }
    files
}
