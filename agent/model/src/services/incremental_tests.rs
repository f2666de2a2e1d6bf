//! The incremental compiler against the full one: after any sequence of changes,
//! the union of fragments must be what compiling the model afresh gives (up to the
//! numbering of ids, which depends on history), and a change must touch only the
//! keys of the Services it concerns.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{DefaultHasher, Hash, Hasher},
};

use weir_common::{Backend, ServiceKey};

use super::*;
use crate::{
    object::{Kind, Object, ObjectKey},
    parse::parse_documents,
    testing::Rng,
};

fn node() -> NodeContext {
    NodeContext {
        node_ips: vec!["192.168.1.10".parse().expect("ip")],
        // Small Maglev tables: the same algorithm, less to compare.
        maglev_table_size: 251,
        ..NodeContext::new("node-a")
    }
}

fn object(yaml: &str) -> Object {
    let (mut objects, problems) = parse_documents(yaml, "test.yaml");
    assert!(
        problems.is_empty(),
        "fixture does not parse: {problems:#?}\n{yaml}"
    );
    assert_eq!(objects.len(), 1);
    objects.remove(0)
}

const SERVICES: usize = 5;

/// One of several versions of Service `s{i}`: ClusterIP, NodePort with
/// externalTrafficPolicy Local, or LoadBalancer with or without source ranges
/// (one holding the node's address); with or without affinity, Maglev,
/// selector; and two Services that may claim the same cluster IP (a conflict).
fn service(i: usize, r: &mut Rng) -> Object {
    let ip = if i == 4 && r.below(2) == 0 { 0 } else { i };
    let ranges = ["[]", "[203.0.113.0/24]", "[' 10.0.0.0/8', 192.168.0.0/16]"][r.below(3)];
    let kind = match r.below(4) {
        0 => "type: NodePort\n  externalTrafficPolicy: Local\n  ports: [{name: p, port: 80, targetPort: 8080, nodePort: 30080, protocol: TCP}]".to_owned(),
        1 => format!(
            "type: LoadBalancer\n  loadBalancerSourceRanges: {ranges}\n  ports: [{{name: p, port: 80, targetPort: 8080, nodePort: 3100{i}, protocol: TCP}}]\nstatus: {{loadBalancer: {{ingress: [{{ip: 198.51.100.{i}}}]}}}}"
        ),
        _ => "type: ClusterIP\n  ports: [{name: p, port: 80, targetPort: 8080, protocol: TCP}, {name: u, port: 53, targetPort: 8053, protocol: UDP}]".to_owned(),
    };
    let selector = if i == 3 {
        String::new()
    } else {
        format!("\n  selector: {{app: s{}}}", i % 3)
    };
    let affinity = if r.below(3) == 0 {
        "\n  sessionAffinity: ClientIP"
    } else {
        ""
    };
    let maglev = if r.below(4) == 0 {
        "\n  annotations: {weir.dev/lb-algorithm: maglev}"
    } else {
        ""
    };
    object(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s{i}\n  namespace: ns{maglev}\nspec:\n  clusterIP: 10.96.0.{ip}\n  clusterIPs: [10.96.0.{ip}]{selector}{affinity}\n  {kind}\n",
        ip = ip + 1
    ))
}

fn endpoint(r: &mut Rng) -> String {
    let (ready, terminating) = match r.below(4) {
        0 => (false, true),
        1 => (false, false),
        _ => (true, false),
    };
    format!(
        "- addresses: [10.244.0.{}]\n  nodeName: node-{}\n  conditions: {{ready: {ready}, serving: {}, terminating: {terminating}}}\n",
        r.below(6) + 1,
        if r.below(2) == 0 { "a" } else { "b" },
        ready || terminating
    )
}

/// Slice `e{i}`, labelled for a random Service (relabels move it).
fn slice(i: usize, r: &mut Rng) -> Object {
    let endpoints: String = (0..r.below(4)).map(|_| endpoint(r)).collect();
    let endpoints = if endpoints.is_empty() {
        "[]\n".to_owned()
    } else {
        format!("\n{endpoints}")
    };
    object(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: e{i}\n  namespace: ns\n  labels: {{kubernetes.io/service-name: s{}}}\naddressType: IPv4\nports: [{{name: p, port: 8080, protocol: TCP}}, {{name: u, port: 8053, protocol: UDP}}]\nendpoints: {endpoints}",
        r.below(SERVICES)
    ))
}

/// The Endpoints object of the selectorless Service s3.
fn endpoints(r: &mut Rng) -> Object {
    object(&format!(
        "apiVersion: v1\nkind: Endpoints\nmetadata: {{name: s3, namespace: ns}}\nsubsets:\n- addresses: [{{ip: 10.244.0.{}}}]\n  ports: [{{name: p, port: 8080, protocol: TCP}}]\n",
        r.below(6) + 1
    ))
}

/// Pod `p{i}`, selected by one of the selector Services.
fn pod(i: usize, r: &mut Rng) -> Object {
    object(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns, labels: {{app: s{}}}}}\nspec: {{nodeName: node-a, containers: [{{name: c, image: x, ports: [{{containerPort: 8080}}]}}]}}\nstatus:\n  podIP: 10.244.1.{i}\n  podIPs: [{{ip: 10.244.1.{i}}}]\n  conditions: [{{type: Ready, status: \"True\"}}]\n",
        r.below(3)
    ))
}

fn namespace(r: &mut Rng) -> Object {
    object(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns, labels: {{v: \"{}\"}}}}\n",
        r.below(9)
    ))
}

fn random_object(r: &mut Rng) -> Object {
    match r.below(12) {
        0..=2 => service(r.below(SERVICES), r),
        3..=7 => slice(r.below(6), r),
        8 => endpoints(r),
        9 | 10 => pod(r.below(4), r),
        _ => namespace(r),
    }
}

fn hash<T: Hash>(t: &T) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// The map contents with every id replaced by what it stands for.
fn normal(d: &DesiredServices) -> (BTreeMap<ServiceKey, String>, BTreeSet<Backend>) {
    let backend = |id: &u32| {
        *d.backends
            .get(id)
            .unwrap_or_else(|| panic!("backend {id} referenced, not there"))
    };
    let revnat = |id: u32| {
        *d.revnat
            .get(&id)
            .unwrap_or_else(|| panic!("revnat {id} referenced, not there"))
    };
    let services = d
        .services
        .iter()
        .map(|(k, v)| {
            let text = if k.slot == 0 {
                let table = d
                    .maglev
                    .get(&v.rev_nat_id)
                    .map(|t| hash(&t.iter().map(backend).collect::<Vec<_>>()));
                format!(
                    "count {} flags {} affinity {} revnat {:?} maglev {table:?} ranges {:?}",
                    v.count,
                    v.flags,
                    v.affinity_timeout,
                    revnat(v.rev_nat_id),
                    d.source_ranges.get(&v.rev_nat_id)
                )
            } else {
                format!(
                    "backend {:?} revnat {:?}",
                    backend(&v.backend_id),
                    revnat(v.rev_nat_id)
                )
            };
            (*k, text)
        })
        .collect();
    assert_eq!(
        d.revnat.len(),
        d.services.keys().filter(|k| k.slot == 0).count(),
        "one revnat per frontend"
    );
    assert!(
        d.source_ranges.keys().all(|id| d.revnat.contains_key(id)),
        "source ranges of no frontend"
    );
    (services, d.backends.values().copied().collect())
}

#[test]
fn any_sequence_of_changes_gives_what_a_full_compile_gives() {
    for seed in 1..=12u64 {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut model = Model::new();
        let mut compiler = ServiceCompiler::with_views(node(), IdAllocator::new());
        compiler.compile_all(&model);
        for step in 0..150 {
            let object = random_object(&mut r);
            let key = object.key();
            if r.below(5) == 0 {
                model.remove(&key);
            } else {
                model.upsert(object, "test.yaml");
            }
            let before = compiler.desired().clone();
            let (changed, _) = compiler.update(&model, &BTreeSet::from([key.clone()]));
            let (full, _) = compile_services(&model, &node(), &mut IdAllocator::new());
            assert_eq!(
                normal(compiler.desired()),
                normal(&full),
                "seed {seed} step {step}: after a change of {key}"
            );
            // Every entry that differs from before is among the touched ones: the
            // syncer looks nowhere else (also after a conflict or a Namespace's
            // change, which compile everything).
            let Changed::Keys(touched) = changed else {
                panic!("seed {seed} step {step}: a change of {key} said Changed::All");
            };
            {
                let now = compiler.desired();
                assert_all_touched(
                    &before.services,
                    &now.services,
                    &touched.services,
                    "service",
                    seed,
                    step,
                );
                assert_all_touched(
                    &before.backends,
                    &now.backends,
                    &touched.backends,
                    "backend",
                    seed,
                    step,
                );
                assert_all_touched(&before.revnat, &now.revnat, &touched.revnat, "revnat", seed, step);
                assert_all_touched(&before.maglev, &now.maglev, &touched.maglev, "maglev", seed, step);
            }
        }
    }
}

fn assert_all_touched<K: Ord + Copy + std::fmt::Debug, V: PartialEq>(
    before: &BTreeMap<K, V>,
    now: &BTreeMap<K, V>,
    touched: &BTreeSet<K>,
    what: &str,
    seed: u64,
    step: usize,
) {
    for key in before.keys().chain(now.keys()) {
        if before.get(key) != now.get(key) {
            assert!(
                touched.contains(key),
                "seed {seed} step {step}: {what} {key:?} changed untouched"
            );
        }
    }
}

fn keys_of(d: &DesiredServices, name: &str, frontends: &[FrontendView]) -> BTreeSet<ServiceKey> {
    let revnats: BTreeSet<u32> = frontends
        .iter()
        .filter(|f| f.service == name)
        .map(|f| f.rev_nat_id)
        .collect();
    d.services
        .iter()
        .filter(|(_, v)| revnats.contains(&v.rev_nat_id))
        .map(|(k, _)| *k)
        .collect()
}

#[test]
fn a_slice_change_touches_its_service_alone_and_keeps_other_ids() {
    let mut model = Model::new();
    for i in 0..3 {
        model.upsert(
            object(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns}}\nspec:\n  clusterIP: 10.96.0.{}\n  selector: {{app: s{i}}}\n  ports: [{{name: p, port: 80, targetPort: 8080}}]\n",
                i + 1
            )),
            "a.yaml",
        );
    }
    let with_endpoint = |ip: &str, service: usize| {
        object(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: e\n  namespace: ns\n  labels: {{kubernetes.io/service-name: s{service}}}\naddressType: IPv4\nports: [{{name: p, port: 8080, protocol: TCP}}]\nendpoints: [{{addresses: [{ip}], conditions: {{ready: true}}}}]\n"
        ))
    };
    model.upsert(with_endpoint("10.244.0.1", 1), "b.yaml");
    let mut compiler = ServiceCompiler::with_views(node(), IdAllocator::new());
    compiler.compile_all(&model);
    let before = compiler.desired().clone();
    let views: Vec<FrontendView> = compiler.frontends().cloned().collect();

    // A new endpoint for s1: only s1's keys and the two backends are touched.
    model.upsert(with_endpoint("10.244.0.2", 1), "b.yaml");
    let slice_key = ObjectKey::new(Kind::EndpointSlice, "ns", "e");
    let (changed, problems) = compiler.update(&model, &BTreeSet::from([slice_key.clone()]));
    assert!(problems.is_empty(), "{problems:?}");
    let Changed::Keys(touched) = changed else {
        panic!("a slice change needs no full compile")
    };
    assert_eq!(touched.services, keys_of(&before, "ns/s1", &views));
    assert_eq!(
        touched.backends.len(),
        2,
        "the old and the new backend: {touched:?}"
    );
    for other in ["ns/s0", "ns/s2"] {
        for key in keys_of(&before, other, &views) {
            assert_eq!(
                compiler.desired().services.get(&key),
                before.services.get(&key),
                "{other} unchanged"
            );
        }
    }
    // The old backend's id is free again, the new one has an id of its own.
    assert_eq!(compiler.desired().backends.len(), 1);

    // Relabelled to s2: both Services are recompiled.
    model.upsert(with_endpoint("10.244.0.2", 2), "b.yaml");
    let (changed, _) = compiler.update(&model, &BTreeSet::from([slice_key]));
    let Changed::Keys(touched) = changed else {
        panic!("a relabel needs no full compile")
    };
    let moved: BTreeSet<ServiceKey> = keys_of(&before, "ns/s1", &views)
        .union(&keys_of(&before, "ns/s2", &views))
        .copied()
        .collect();
    assert!(
        moved
            .iter()
            .filter(|k| k.slot == 0)
            .all(|k| touched.services.contains(k)),
        "{touched:?}"
    );
    let (full, _) = compile_services(&model, &node(), &mut IdAllocator::new());
    assert_eq!(normal(compiler.desired()), normal(&full));
}

#[test]
/// What such a compile changed is still a set of keys (every differing entry
/// among them: `any_sequence_of_changes_gives_what_a_full_compile_gives`).
fn a_conflict_or_a_namespace_change_compiles_everything() {
    let svc = |name: &str| {
        object(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{{port: 80}}]\n"
        ))
    };
    let mut model = Model::new();
    model.upsert(svc("a"), "a.yaml");
    let mut compiler = ServiceCompiler::with_views(node(), IdAllocator::new());
    compiler.compile_all(&model);
    model.upsert(svc("b"), "a.yaml");
    let (changed, problems) = compiler.update(
        &model,
        &BTreeSet::from([ObjectKey::new(Kind::Service, "ns", "b")]),
    );
    assert!(matches!(changed, Changed::Keys(_)), "{changed:?}");
    assert_eq!(problems.len(), 1, "b loses 10.96.0.1:80 to a: {problems:?}");
    // a goes: b takes the frontend.
    model.remove(&ObjectKey::new(Kind::Service, "ns", "a"));
    let (changed, problems) = compiler.update(
        &model,
        &BTreeSet::from([ObjectKey::new(Kind::Service, "ns", "a")]),
    );
    assert!(matches!(changed, Changed::Keys(_)), "{changed:?}");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        compiler
            .frontends()
            .map(|f| f.service.as_str())
            .collect::<Vec<_>>(),
        ["ns/b"]
    );
    let (changed, _) = compiler.update(
        &model,
        &BTreeSet::from([ObjectKey::new(Kind::Namespace, "", "ns")]),
    );
    assert!(matches!(changed, Changed::Keys(_)), "{changed:?}");
}

#[test]
fn health_checks_count_this_nodes_ready_endpoints() {
    let svc = object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: lb, namespace: ns}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.9\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n  selector: {app: lb}\n  ports: [{name: p, port: 80, targetPort: 8080, nodePort: 30080}, {name: q, port: 81, targetPort: 8081, nodePort: 30081}]\n",
    );
    let slice = |a_ready: bool| {
        object(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: lb-1\n  namespace: ns\n  labels: {{kubernetes.io/service-name: lb}}\naddressType: IPv4\nports: [{{name: p, port: 8080}}, {{name: q, port: 8081}}]\nendpoints:\n- {{addresses: [10.244.0.1], nodeName: node-a, conditions: {{ready: {a_ready}, serving: true, terminating: {}}}}}\n- {{addresses: [10.244.0.2], nodeName: node-a, conditions: {{ready: false, serving: true, terminating: true}}}}\n- {{addresses: [10.244.1.1], nodeName: node-b, conditions: {{ready: true}}}}\n",
            !a_ready
        ))
    };
    for views in [true, false] {
        let mut model = Model::new();
        model.upsert(svc.clone(), "a.yaml");
        model.upsert(slice(true), "a.yaml");
        // With views, and without them, as the agent compiles.
        let mut compiler = if views {
            ServiceCompiler::with_views(node(), IdAllocator::new())
        } else {
            ServiceCompiler::new(node(), IdAllocator::new())
        };
        compiler.compile_all(&model);
        let check = |c: &ServiceCompiler| c.health_checks().get(&32000).map(|h| h.local_endpoints);
        assert_eq!(
            check(&compiler),
            Some(1),
            "one ready local endpoint, counted once for both ports"
        );
        model.upsert(slice(false), "a.yaml");
        compiler.update(
            &model,
            &BTreeSet::from([ObjectKey::new(Kind::EndpointSlice, "ns", "lb-1")]),
        );
        assert_eq!(check(&compiler), Some(0), "terminating endpoints do not count");
        model.remove(&ObjectKey::new(Kind::Service, "ns", "lb"));
        compiler.update(
            &model,
            &BTreeSet::from([ObjectKey::new(Kind::Service, "ns", "lb")]),
        );
        assert!(compiler.health_checks().is_empty());
    }
}
