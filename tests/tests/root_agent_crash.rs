//! Tier 2 (root + namespaces): the agent killed (`kill -9`) at random points of
//! large syncs, 10,000 Services changing each time, while a client keeps
//! connecting to a Service that changes too: not one connection fails, and once
//! an agent is let finish, every map holds exactly what the manifests say, with
//! no entry left over (read back from the maps themselves).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use weir_agent::datapath::{PinLayout, maps};
use weir_common::{Backend, MaglevTable, RevNat, SVC_F_MAGLEV, ServiceKey, ServiceValue};
use weir_lab::{
    Agent, Node,
    services::{Ep, ManifestDir, port, service, slice},
    traffic::ConnectionLoad,
    whoami::{WhoAmI, ask_tcp},
};
use weir_model::{IdAllocator, Model, NodeContext, compile_services, parse_documents};

const SERVICES: usize = 10_000;
const PROBE_VIP: &str = "10.96.0.10";

/// Version `v` of the cluster: the probe Service (backends `a`, or `a` and `b`)
/// and 10,000 others whose endpoints (addresses nobody answers at) move with
/// every version.
fn cluster(v: usize, node: &str, a: IpAddr, b: IpAddr) -> Vec<Value> {
    let probe_eps = if v.is_multiple_of(2) {
        vec![Ep::ready(a)]
    } else {
        vec![Ep::ready(a), Ep::ready(b)]
    };
    let mut objects = vec![
        service("probe", PROBE_VIP, &[port("http", 80, "8080", "TCP")]),
        slice("probe-x", "probe", node, &[("http", 8080, "TCP")], &probe_eps),
    ];
    for i in 0..SERVICES {
        let vip = format!("10.97.{}.{}", i / 250, i % 250 + 1);
        let name = format!("s{i}");
        let ep = |k: usize| Ep::ready(endpoint(i + k));
        objects.push(service(&name, &vip, &[port("http", 80, "8080", "TCP")]));
        objects.push(slice(
            &format!("{name}-x"),
            &name,
            node,
            &[("http", 8080, "TCP")],
            &[ep(v), ep(v + 1)],
        ));
    }
    objects
}

/// The endpoint addresses of the large Services (nobody answers there).
fn endpoint(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 201, (n / 250 % 250) as u8, (n % 250 + 1) as u8))
}

/// Writes a version as one JSON list (what `kubectl get -o json` writes).
fn write(dir: &ManifestDir, objects: &[Value]) {
    let list = json!({ "apiVersion": "v1", "kind": "List", "items": objects });
    dir.write_raw("cluster.json", &list.to_string());
}

/// A frontend as the datapath sees it: its entry (the id aside) and its
/// backends, sorted (ids are the agent's to choose).
type Frontends = BTreeMap<ServiceKey, (u16, u32, u32, Vec<Backend>)>;

fn frontends(services: &BTreeMap<ServiceKey, ServiceValue>, backends: &BTreeMap<u32, Backend>) -> Frontends {
    services
        .iter()
        .filter(|(k, _)| k.slot == 0)
        .map(|(k, head)| {
            let mut of: Vec<Backend> = (1..=head.count)
                .filter_map(|slot| services.get(&ServiceKey { slot, ..*k }))
                .filter_map(|s| backends.get(&s.backend_id).copied())
                .collect();
            of.sort();
            (*k, (head.count, head.flags, head.affinity_timeout, of))
        })
        .collect()
}

/// Everything the maps hold that nothing would ever use (or that would point
/// nowhere): slots past their frontend's count or without one, backends no
/// slot names, reverse-NAT entries and Maglev tables of no frontend, slots
/// naming missing backends.
fn orphans(
    services: &BTreeMap<ServiceKey, ServiceValue>,
    backends: &BTreeMap<u32, Backend>,
    revnat: &BTreeMap<u32, RevNat>,
    maglev: &BTreeSet<u32>,
) -> Vec<String> {
    let mut out = Vec::new();
    let heads: BTreeMap<ServiceKey, &ServiceValue> = services
        .iter()
        .filter(|(k, _)| k.slot == 0)
        .map(|(k, v)| (*k, v))
        .collect();
    let mut named = BTreeSet::new();
    for (k, v) in services.iter().filter(|(k, _)| k.slot != 0) {
        match heads.get(&ServiceKey { slot: 0, ..*k }) {
            Some(head) if k.slot <= head.count => {}
            _ => out.push(format!("slot {k:?} of no frontend or past its count")),
        }
        if !backends.contains_key(&v.backend_id) {
            out.push(format!("slot {k:?} names missing backend {}", v.backend_id));
        }
        named.insert(v.backend_id);
    }
    for id in backends.keys().filter(|id| !named.contains(id)) {
        out.push(format!("backend {id} in no slot"));
    }
    let ids: BTreeSet<u32> = heads.values().map(|h| h.rev_nat_id).collect();
    for id in revnat.keys().filter(|id| !ids.contains(id)) {
        out.push(format!("reverse-NAT entry {id} of no frontend"));
    }
    let maglev_ids: BTreeSet<u32> = heads
        .values()
        .filter(|h| h.flags & SVC_F_MAGLEV != 0)
        .map(|h| h.rev_nat_id)
        .collect();
    for id in maglev.iter().filter(|id| !maglev_ids.contains(id)) {
        out.push(format!("Maglev table {id} of no Maglev frontend"));
    }
    out
}

/// The service maps, read whole: services, backends, reverse NAT, Maglev ids.
type ServiceMaps = (
    BTreeMap<ServiceKey, ServiceValue>,
    BTreeMap<u32, Backend>,
    BTreeMap<u32, RevNat>,
    BTreeSet<u32>,
);

/// Reads the service maps whole.
fn read_maps(pins: &PinLayout) -> ServiceMaps {
    let services: aya::maps::HashMap<_, ServiceKey, ServiceValue> =
        maps::open_pinned(pins, &maps::SERVICES).expect("services");
    let backends: aya::maps::HashMap<_, u32, Backend> =
        maps::open_pinned(pins, &maps::BACKENDS).expect("backends");
    let revnat: aya::maps::HashMap<_, u32, RevNat> = maps::open_pinned(pins, &maps::REVNAT).expect("revnat");
    let maglev: aya::maps::HashMap<_, u32, MaglevTable> =
        maps::open_pinned(pins, &maps::MAGLEV).expect("maglev");
    (
        services.iter().map(|e| e.expect("read services")).collect(),
        backends.iter().map(|e| e.expect("read backends")).collect(),
        revnat.iter().map(|e| e.expect("read revnat")).collect(),
        maglev.keys().map(|e| e.expect("read maglev")).collect(),
    )
}

#[test]
fn root_agent_killed_mid_sync_loses_no_connection_and_converges_without_orphans() {
    let dir = ManifestDir::new();
    let mut node = Node::new("10.91.30.0/24");
    let mut agent = node.start_agent_with_source(dir.path());
    let a = node.add_pod("a");
    let b = node.add_pod("b");
    let client = node.add_pod("client");
    let _servers = [
        WhoAmI::start(&a.ns, "a", a.ipv4(), &[8080]),
        WhoAmI::start(&b.ns, "b", b.ipv4(), &[8080]),
    ];
    let name = node.name().to_owned();
    let (ip_a, ip_b) = (a.ipv4(), b.ipv4());

    // The first version, and how long writing its maps takes (the agent logs
    // it): kills land within that, once the agent has compiled.
    write(&dir, &cluster(0, &name, ip_a, ip_b));
    agent.wait_backends(&format!("{PROBE_VIP}:80/TCP"), &[format!("{ip_a}:8080")]);
    wait_synced(
        &agent,
        v_sample_frontend(),
        &format!("{}:8080", endpoint(SERVICES - 1)),
    );
    let span = Duration::from_secs_f64(
        sync_ms(&agent.log_text())
            .last()
            .copied()
            .expect("a sync was logged")
            / 1e3,
    );
    println!("writing the maps of {SERVICES} Services takes about {span:?} here");

    let probe = SocketAddr::new(PROBE_VIP.parse().expect("VIP"), 80);
    let load = ConnectionLoad::start(&client.ns, move |ns| ask_tcp(ns, probe).map(|_| ()));
    let mut rng = weir_lab::rng::Rng::from_env();
    const KILLS: usize = 8;
    let mut in_sync = 0;
    for v in 1..=KILLS {
        let compiled = compiles(&agent.log_text());
        write(&dir, &cluster(v, &name, ip_a, ip_b));
        // Once this version is compiled, its map writes begin: the kill lands
        // somewhere in them.
        let deadline = Instant::now() + Duration::from_secs(60);
        while compiles(&agent.log_text()) <= compiled {
            assert!(Instant::now() < deadline, "version {v} never compiled");
            std::thread::sleep(Duration::from_millis(5));
        }
        let synced = sync_ms(&agent.log_text()).len();
        let at = span.mul_f64(0.6 * rng.fraction());
        std::thread::sleep(at);
        let finished = sync_ms(&agent.log_text()).len() > synced;
        in_sync += usize::from(!finished);
        println!(
            "version {v}: kill -9 {at:?} into its map writes{}",
            if finished { " (they had finished)" } else { "" }
        );
        agent.restart(&name);
    }
    assert!(in_sync > 0, "no kill landed in a sync: the test tested nothing");
    // The last agent is let finish.
    let last = KILLS + 1;
    let objects = cluster(last, &name, ip_a, ip_b);
    write(&dir, &objects);
    let probe_backends: Vec<String> = [ip_a, ip_b].iter().map(|ip| format!("{ip}:8080")).collect();
    // Longer than a change's usual wait: the agent has just been restarted and
    // reads back, parses and compiles 10,000 Services before this change (a
    // debug build on a loaded 2-core machine took over 10 s in CI).
    agent.wait_backends_within(
        Duration::from_secs(60),
        &format!("{PROBE_VIP}:80/TCP"),
        &probe_backends,
    );

    // The maps converge to the manifests' desired state, with nothing left over.
    let text = serde_json::to_string(&json!({ "apiVersion": "v1", "kind": "List", "items": objects }))
        .expect("json");
    let (parsed, problems) = parse_documents(&text, "cluster.json");
    assert!(problems.is_empty(), "{problems:?}");
    let (desired, problems) = compile_services(
        &Model::from_objects(parsed),
        &NodeContext::new(&name),
        &mut IdAllocator::new(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    let want = frontends(&desired.services, &desired.backends);
    let pins = PinLayout::new(&agent.bpffs_root);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (services, backends, revnat, maglev) = read_maps(&pins);
        let got = frontends(&services, &backends);
        let left = orphans(&services, &backends, &revnat, &maglev);
        if got == want && left.is_empty() {
            break;
        }
        let differ = want.iter().filter(|(k, v)| got.get(k) != Some(v)).count()
            + got.keys().filter(|k| !want.contains_key(k)).count();
        assert!(
            Instant::now() < deadline,
            "after the last restart the maps never converged: {differ} frontends differ, orphans {:?}\n{}",
            &left[..left.len().min(5)],
            agent
                .log_text()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let ok = load.stop_and_assert_none_failed("while the agent was killed mid-sync");
    println!("{ok} connections through the probe Service, none failed");
}

/// How many times the agent has logged a compile of the model.
fn compiles(log: &str) -> usize {
    log.lines().filter(|l| l.contains("model compiled")).count()
}

/// The duration of every service sync the agent logged, in milliseconds.
fn sync_ms(log: &str) -> Vec<f64> {
    weir_lab::agent::logged(log, "services synced", "sync_ms")
        .iter()
        .filter_map(|ms| ms.parse().ok())
        .collect()
}

/// The frontend whose endpoints tell a version apart.
fn v_sample_frontend() -> String {
    let i = SERVICES - 1;
    format!("10.97.{}.{}:80/TCP", i / 250, i % 250 + 1)
}

fn wait_synced(agent: &Agent, front: String, backend: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let services = agent.weirctl(&["services"]);
        if weir_lab::services::slot_addresses(&services, &front)
            .is_some_and(|b| b.iter().any(|a| a == backend))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the first sync never finished:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
