//! `weir-agent compile` as a reviewer runs it: the real binary, no root, on a
//! directory of manifests (`tests/data/compile-cluster.yaml`: a Maglev
//! LoadBalancer with `externalTrafficPolicy: Local` and endpoints on two
//! nodes, a NetworkPolicy isolating the local pod, an invalid Service).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::{Value, json};

const CLUSTER: &str = include_str!("data/compile-cluster.yaml");

/// A fresh directory holding `files` (name, text).
fn manifests(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("compile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    for (file, text) in files {
        std::fs::write(dir.join(file), text).expect("write manifest");
    }
    dir
}

fn compile(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir-agent"))
        .arg("compile")
        .arg("--source")
        .arg(format!("dir:{}", dir.display()))
        .args(args)
        .output()
        .expect("running weir-agent compile")
}

fn compile_json(dir: &Path, args: &[&str]) -> Value {
    let out = compile(dir, &[args, &["-o", "json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The frontend `frontend` of `scope`.
fn frontend<'a>(compiled: &'a Value, frontend: &str, scope: &str) -> &'a Value {
    compiled["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["frontend"] == frontend && s["scope"] == scope)
        .unwrap_or_else(|| panic!("no {scope} frontend {frontend} in {compiled:#}"))
}

fn slot_addresses(frontend: &Value) -> Vec<&str> {
    frontend["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["address"].as_str().expect("address"))
        .collect()
}

#[test]
fn every_map_of_the_node_and_what_was_skipped() {
    let dir = manifests("whole", &[("cluster.yaml", CLUSTER)]);
    let c = compile_json(&dir, &["--node", "n1"]);
    assert_eq!(
        c["node_ips"],
        json!(["192.168.1.10"]),
        "the Node object's InternalIP"
    );

    let vip = frontend(&c, "10.96.0.10:80/TCP", "external");
    assert_eq!(vip["service"], "default/web:http");
    assert_eq!(vip["algorithm"], "maglev");
    assert_eq!(slot_addresses(vip), ["10.244.1.5:8080", "10.244.2.5:8080"]);
    // Local: from outside, this node's endpoint only; from inside, all.
    let outside = frontend(&c, "192.168.1.10:30080/TCP", "external");
    assert_eq!(slot_addresses(outside), ["10.244.1.5:8080"]);
    let inside = frontend(&c, "192.168.1.10:30080/TCP", "internal");
    assert_eq!(slot_addresses(inside), ["10.244.1.5:8080", "10.244.2.5:8080"]);

    let backends = c["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 2);
    let revnat = c["revnat"].as_array().expect("revnat");
    assert_eq!(revnat.len(), 3, "one per frontend");
    // Every frontend's Maglev table, whole: its entries are its backends'.
    for table in c["maglev"].as_array().expect("maglev") {
        let ids: Vec<u64> = table["table"]
            .as_str()
            .expect("table")
            .split(' ')
            .map(|id| id.parse().expect("id"))
            .collect();
        assert_eq!(ids.len() as u64, table["size"].as_u64().expect("size"));
        let shares: u64 = table["shares"]
            .as_object()
            .expect("shares")
            .values()
            .map(|n| n.as_u64().expect("n"))
            .sum();
        assert_eq!(shares, ids.len() as u64);
    }
    let local_table = c["maglev"]
        .as_array()
        .expect("maglev")
        .iter()
        .find(|t| t["rev_nat_id"] == outside["rev_nat_id"])
        .expect("the Local frontend's table");
    assert_eq!(local_table["shares"].as_object().expect("shares").len(), 1);

    assert_eq!(
        c["health_checks"],
        json!([{ "port": 32000, "service": "default/web", "local_endpoints": 1 }])
    );
    assert_eq!(
        c["isolated_endpoints"],
        json!([{ "address": "10.244.1.5", "endpoint_id": 1, "ingress": true, "egress": false }])
    );
    let rules = c["policy"].as_array().expect("policy");
    assert_eq!(rules.len(), 1, "{rules:?}");
    let rule = &rules[0];
    assert_eq!(
        (
            &rule["endpoint"],
            &rule["direction"],
            &rule["peers"],
            &rule["protocol"],
            &rule["ports"]
        ),
        (
            &json!("10.244.1.5"),
            &json!("ingress"),
            &json!("10.0.0.0/8"),
            &json!("TCP"),
            &json!("8080")
        )
    );
    assert_eq!(c["ipcache"][0]["prefix"], "10.0.0.0/8");
    assert_eq!(c["ipcache"][0]["identity"], rule["identity"]);

    let skipped = c["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["object"], "Service default/bad");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .expect("reason")
            .contains("10.96.0.300"),
        "{skipped:?}"
    );
}

#[test]
fn the_output_is_the_same_however_the_manifests_are_laid_out() {
    let whole = manifests("one-file", &[("cluster.yaml", CLUSTER)]);
    let docs: Vec<&str> = CLUSTER.split("\n---\n").collect();
    let (first, second) = docs.split_at(docs.len() / 2);
    // Two files, the later half first in name order.
    let split = manifests(
        "two-files",
        &[
            ("b.yaml", &first.join("\n---\n")),
            ("a.yaml", &second.join("\n---\n")),
        ],
    );
    let table = |dir: &Path| {
        let out = compile(dir, &["--node", "n1"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let once = table(&whole);
    assert_eq!(once, table(&whole), "two runs differ");
    let without_origins = |c: Value| {
        let mut c = c;
        c["skipped"] = Value::Null;
        c
    };
    assert_eq!(
        without_origins(compile_json(&whole, &["--node", "n1"])),
        without_origins(compile_json(&split, &["--node", "n1"])),
        "the same objects in other files compile differently"
    );
    for section in ["services:", "backends:", "maglev tables:", "policy:", "skipped:"] {
        assert!(once.contains(section), "no {section} in:\n{once}");
    }
}

#[test]
fn load_balancer_source_ranges_are_listed_per_load_balancer_frontend() {
    let lb = r#"{"apiVersion": "v1", "kind": "Service",
      "metadata": {"name": "edge", "namespace": "default"},
      "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20", "selector": {"app": "edge"},
               "loadBalancerSourceRanges": ["203.0.113.0/24", " 198.51.100.7/32", "2001:db8::/32"],
               "ports": [{"name": "https", "port": 443, "targetPort": 8443, "nodePort": 30443}]},
      "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}"#;
    let dir = manifests("source-ranges", &[("lb.json", lb)]);
    let c = compile_json(&dir, &["--node", "n1", "--node-ips", "192.168.1.10"]);
    let front = frontend(&c, "192.0.2.10:443/TCP", "external");
    assert!(
        front["flags"]
            .as_array()
            .expect("flags")
            .contains(&json!("source-range")),
        "{front}"
    );
    let id = &front["rev_nat_id"];
    assert_eq!(
        c["source_ranges"],
        json!([
            { "rev_nat_id": id, "frontend": "192.0.2.10:443", "service": "default/edge:https", "range": "198.51.100.7/32" },
            { "rev_nat_id": id, "frontend": "192.0.2.10:443", "service": "default/edge:https", "range": "203.0.113.0/24" },
        ]),
        "the IPv4 LoadBalancer IP's alone: not the NodePort's, not the other family's"
    );
    let table = compile(&dir, &["--node", "n1"]);
    let text = String::from_utf8_lossy(&table.stdout);
    let section = text
        .split_once("LoadBalancer source ranges:")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no section in:\n{text}"));
    assert!(
        section.contains("192.0.2.10:443") && section.contains("203.0.113.0/24"),
        "{text}"
    );
}

/// Topology-aware routing: each node's Service slots are the endpoints hinted
/// for its zone, the zone read from its Node object's label.
#[test]
fn each_zones_nodes_use_the_endpoints_hinted_for_their_zone() {
    let nodes = r#"
apiVersion: v1
kind: Node
metadata:
  name: n1
  labels: {topology.kubernetes.io/zone: zone-a}
---
apiVersion: v1
kind: Node
metadata:
  name: n2
  labels: {"topology.kubernetes.io/zone": "zone-b"}
---
apiVersion: v1
kind: Node
metadata: {name: n3}
"#;
    let service = r#"{"apiVersion": "v1", "kind": "Service",
      "metadata": {"name": "near", "namespace": "default"},
      "spec": {"clusterIP": "10.96.0.30", "trafficDistribution": "PreferClose",
               "ports": [{"port": 80, "targetPort": 8080}]}}"#;
    let slice = r#"{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
      "metadata": {"name": "near-1", "namespace": "default",
                   "labels": {"kubernetes.io/service-name": "near"}},
      "addressType": "IPv4", "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
      "endpoints": [
        {"addresses": ["10.244.1.7"], "nodeName": "n1", "zone": "zone-a",
         "hints": {"forZones": [{"name": "zone-a"}]}},
        {"addresses": ["10.244.2.7"], "nodeName": "n2", "zone": "zone-b",
         "hints": {"forZones": [{"name": "zone-b"}]}}]}"#;
    let dir = manifests(
        "zones",
        &[
            ("nodes.yaml", nodes),
            ("svc.json", service),
            ("slice.json", slice),
        ],
    );
    let slots = |node: &str| {
        let c = compile_json(&dir, &["--node", node, "--node-ips", "192.168.1.10"]);
        let front = frontend(&c, "10.96.0.30:80/TCP", "external");
        slot_addresses(front)
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(slots("n1"), ["10.244.1.7:8080"]);
    let c = compile_json(&dir, &["--node", "n1", "--node-ips", "192.168.1.10"]);
    assert_eq!(
        frontend(&c, "10.96.0.30:80/TCP", "external")["topology"],
        "PreferSameZone"
    );
    let c = compile_json(&dir, &["--node", "n3", "--node-ips", "192.168.1.10"]);
    assert_eq!(
        frontend(&c, "10.96.0.30:80/TCP", "external").get("topology"),
        None
    );
    assert_eq!(slots("n2"), ["10.244.2.7:8080"]);
    // A node in no zone: every endpoint.
    assert_eq!(slots("n3"), ["10.244.1.7:8080", "10.244.2.7:8080"]);
}

#[test]
fn another_node_has_other_local_endpoints_and_no_isolated_pods() {
    let dir = manifests("other-node", &[("cluster.yaml", CLUSTER)]);
    let c = compile_json(&dir, &["--node", "n2", "--node-ips", "192.168.1.11"]);
    assert_eq!(c["node_ips"], json!(["192.168.1.11"]));
    let outside = frontend(&c, "192.168.1.11:30080/TCP", "external");
    assert_eq!(slot_addresses(outside), ["10.244.2.5:8080"]);
    assert_eq!(c["isolated_endpoints"], json!([]));
    assert_eq!(c["policy"], json!([]));
}

#[test]
fn only_a_directory_is_compiled() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir-agent"))
        .args(["compile", "--source", "kube"])
        .output()
        .expect("running weir-agent compile");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("directory of manifests"), "{stderr}");
}
