//! The ordering rules, checked after every single write against an in-memory map
//! set: at no instant may a service entry count a slot, a slot name a backend, or
//! a service entry name a reverse-NAT entry that is not there.

use std::collections::BTreeMap;

use aya::maps::MapError;
use weir_common::ServiceKey;
use weir_model::{DesiredServices, Model, NodeContext, parse_documents};

use super::*;

#[derive(Default)]
struct FakeMaps {
    maps: DesiredServices,
    writes: usize,
    /// Fail the n-th write (1-based) and every `fail_every`-th after it.
    fail_every: Option<usize>,
}

impl FakeMaps {
    fn check(&self) {
        let m = &self.maps;
        for (key, value) in m.services.iter().filter(|(k, _)| k.slot == 0) {
            assert!(
                m.revnat.contains_key(&u32::from(value.rev_nat_id)),
                "{key:?} names missing rev-nat {}",
                value.rev_nat_id
            );
            for slot in 1..=value.count {
                let slot_value = m
                    .services
                    .get(&ServiceKey { slot, ..*key })
                    .unwrap_or_else(|| panic!("{key:?} counts missing slot {slot}"));
                assert!(
                    m.backends.contains_key(&slot_value.backend_id),
                    "slot {slot} of {key:?} names missing backend {}",
                    slot_value.backend_id
                );
            }
        }
    }
}

impl ServiceMaps for FakeMaps {
    fn read(&self) -> Result<DesiredServices, SyncError> {
        Ok(self.maps.clone())
    }

    fn apply(&mut self, op: &Op) -> Result<(), MapError> {
        self.writes += 1;
        if self.fail_every.is_some_and(|n| self.writes.is_multiple_of(n)) {
            return Err(MapError::KeyNotFound);
        }
        let m = &mut self.maps;
        match *op {
            Op::PutBackend(id, b) => {
                m.backends.insert(id, b);
            }
            Op::PutRevNat(id, r) => {
                m.revnat.insert(id, r);
            }
            Op::PutService(k, v) => {
                m.services.insert(k, v);
            }
            Op::DelService(k) => {
                m.services.remove(&k);
            }
            Op::DelBackend(id) => {
                m.backends.remove(&id);
            }
            Op::DelRevNat(id) => {
                m.revnat.remove(&id);
            }
        }
        self.check();
        Ok(())
    }
}

fn same_contents(a: &DesiredServices, b: &DesiredServices) -> bool {
    a.services == b.services && a.backends == b.backends && a.revnat == b.revnat
}

/// One Service `name` on `vip` with one port and a slice of `backends` (last octets).
fn service(name: &str, vip: &str, ports: &[(u16, &str)], backends: &[u8]) -> String {
    let svc_ports: String = ports
        .iter()
        .map(|(p, proto)| {
            format!(
                "  - {{name: p{p}, port: {p}, targetPort: {}, protocol: {proto}}}\n",
                p + 1000
            )
        })
        .collect();
    let slice_ports: String = ports
        .iter()
        .map(|(p, proto)| format!("  - {{name: p{p}, port: {}, protocol: {proto}}}\n", p + 1000))
        .collect();
    let endpoints: String = backends
        .iter()
        .map(|b| format!("  - addresses: [10.0.0.{b}]\n    conditions: {{ready: true}}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {vip}\n  ports:\n{svc_ports}---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n{slice_ports}endpoints:\n{endpoints}---\n"
    )
}

fn model(yaml: &str) -> Model {
    let (objects, problems) = parse_documents(yaml, "test.yaml");
    assert!(problems.is_empty(), "{problems:?}");
    Model::from_objects(objects)
}

fn converge(syncer: &mut Syncer, maps: &mut FakeMaps, yaml: &str) -> DesiredServices {
    let (desired, problems) = syncer.compile(&model(yaml));
    assert!(problems.is_empty(), "{problems:?}");
    let report = syncer.apply(maps, &desired);
    assert!(report.complete(), "{report:?}");
    assert!(same_contents(&maps.maps, &desired), "maps differ from desired");
    assert!(same_contents(syncer.current(), &desired), "syncer lost track");
    desired
}

#[test]
fn every_step_of_grow_shrink_replace_and_remove_is_consistent() {
    let mut maps = FakeMaps::default();
    let mut syncer = Syncer::new(&maps, NodeContext::new("n1")).expect("read");
    let a = |b: &[u8]| service("a", "10.96.0.1", &[(80, "TCP"), (53, "UDP")], b);
    let b = service("b", "10.96.0.2", &[(443, "TCP")], &[7, 8]);
    converge(&mut syncer, &mut maps, &format!("{}{b}", a(&[1, 2])));
    converge(&mut syncer, &mut maps, &format!("{}{b}", a(&[1, 2, 3, 4])));
    converge(&mut syncer, &mut maps, &format!("{}{b}", a(&[4])));
    converge(&mut syncer, &mut maps, &format!("{}{b}", a(&[5, 6])));
    converge(&mut syncer, &mut maps, &format!("{}{b}", a(&[])));
    converge(&mut syncer, &mut maps, &b);
    converge(&mut syncer, &mut maps, "");
    assert!(maps.maps.services.is_empty() && maps.maps.backends.is_empty() && maps.maps.revnat.is_empty());
}

#[test]
fn an_unchanged_model_writes_nothing() {
    let mut maps = FakeMaps::default();
    let mut syncer = Syncer::new(&maps, NodeContext::new("n1")).expect("read");
    let yaml = service("a", "10.96.0.1", &[(80, "TCP")], &[1, 2, 3]);
    converge(&mut syncer, &mut maps, &yaml);
    let writes = maps.writes;
    converge(&mut syncer, &mut maps, &yaml);
    assert_eq!(maps.writes, writes);
}

#[test]
fn a_restarted_syncer_keeps_ids_and_writes_only_changes() {
    let mut maps = FakeMaps::default();
    let yaml = format!(
        "{}{}",
        service("a", "10.96.0.1", &[(80, "TCP")], &[1, 2]),
        service("b", "10.96.0.2", &[(80, "TCP")], &[3])
    );
    let mut first = Syncer::new(&maps, NodeContext::new("n1")).expect("read");
    let before = converge(&mut first, &mut maps, &yaml);
    // Only b remains in the second agent's model: a's ids must not be handed to b.
    let writes = maps.writes;
    let mut second = Syncer::new(&maps, NodeContext::new("n1")).expect("read");
    let after = converge(&mut second, &mut maps, &yaml);
    assert_eq!(
        maps.writes, writes,
        "a restart with the same model must write nothing"
    );
    assert_eq!(before.services, after.services);
    let yaml_b = service("b", "10.96.0.2", &[(80, "TCP")], &[3]);
    let only_b = converge(&mut second, &mut maps, &yaml_b);
    let rev_nat = |d: &DesiredServices| -> BTreeMap<ServiceKey, u16> {
        d.services
            .iter()
            .filter(|(k, _)| k.slot == 0)
            .map(|(k, v)| (*k, v.rev_nat_id))
            .collect()
    };
    for (key, id) in rev_nat(&only_b) {
        assert_eq!(rev_nat(&before).get(&key), Some(&id), "frontend renumbered");
    }
}

#[test]
fn failed_writes_defer_dependents_and_the_next_sync_converges() {
    let mut maps = FakeMaps {
        fail_every: Some(3),
        ..Default::default()
    };
    let mut syncer = Syncer::new(&maps, NodeContext::new("n1")).expect("read");
    let steps = [
        service("a", "10.96.0.1", &[(80, "TCP"), (53, "UDP")], &[1, 2, 3]),
        service("a", "10.96.0.1", &[(80, "TCP"), (53, "UDP")], &[3, 4, 5, 6]),
        service("a", "10.96.0.1", &[(53, "UDP")], &[6]),
    ];
    for yaml in &steps {
        let (desired, _) = syncer.compile(&model(yaml));
        let mut tries = 0;
        loop {
            let report = syncer.apply(&mut maps, &desired);
            if report.complete() {
                break;
            }
            tries += 1;
            assert!(tries < 50, "never converged: {report:?}");
        }
        assert!(same_contents(&maps.maps, &desired));
    }
    assert!(syncer.failures_total > 0);
}

#[test]
fn removed_udp_backends_are_reported_for_flushing() {
    let mut maps = FakeMaps::default();
    let mut syncer = Syncer::new(&maps, NodeContext::new("n1")).expect("read");
    converge(
        &mut syncer,
        &mut maps,
        &service("a", "10.96.0.1", &[(80, "TCP"), (53, "UDP")], &[1, 2]),
    );
    let (desired, _) = syncer.compile(&model(&service(
        "a",
        "10.96.0.1",
        &[(80, "TCP"), (53, "UDP")],
        &[2],
    )));
    let report = syncer.apply(&mut maps, &desired);
    let gone: Vec<String> = report
        .gone_datagram_backends
        .iter()
        .map(|b| format!("{:?}:{}/{}", &b.addr[..4], u16::from_be(b.port), b.proto))
        .collect();
    assert_eq!(gone, ["[10, 0, 0, 1]:1053/17"]);
}
