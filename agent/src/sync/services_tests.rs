//! The ordering rules, checked after every single write against an in-memory map
//! set: at no instant may a service entry count a slot, a slot or a Maglev table
//! name a backend, or a service entry name a reverse-NAT entry that is not there;
//! nor may a Maglev service entry with backends lack its table.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::MapError;
use weir_common::{
    MAGLEV_TABLE_SIZE, SCOPE_INTERNAL, SVC_F_MAGLEV, SVC_F_TWO_SCOPES, ServiceKey, maps as names,
};
use weir_model::{DesiredServices, Model, NodeContext, ObjectKey, Problem, parse_documents};

use super::*;
use crate::sync::{MapOp, Maps};

/// The syncer with the compiler the agent pairs it with; `compile` is a full
/// compile and `apply` a full sync, unless a test says otherwise.
struct Agent {
    syncer: ServiceSyncer,
    compiler: ServiceCompiler,
}

impl Agent {
    fn new(maps: &FakeMaps) -> Self {
        let syncer = ServiceSyncer::new(maps).expect("read");
        let compiler = syncer.compiler(NodeContext::new("n1"));
        Self { syncer, compiler }
    }

    fn compile(&mut self, model: &Model) -> (DesiredServices, Vec<Problem>) {
        let problems = self.compiler.compile_all(model);
        (self.compiler.desired().clone(), problems)
    }

    fn apply(&mut self, maps: &mut FakeMaps, desired: &DesiredServices) -> ServiceReport {
        self.syncer.apply(maps, desired, &Changed::All)
    }
}

impl std::ops::Deref for Agent {
    type Target = ServiceSyncer;
    fn deref(&self) -> &ServiceSyncer {
        &self.syncer
    }
}

#[derive(Default)]
struct FakeMaps {
    maps: DesiredServices,
    writes: usize,
    /// Fail the n-th write (1-based) and every `fail_every`-th after it.
    fail_every: Option<usize>,
    /// Fail every write to this map.
    fail_map: Option<&'static str>,
    /// Allow a Maglev service entry without a table (its table was skipped).
    tableless_maglev_ok: bool,
    /// Every successful write, as `verb map key` (`put weir_maglev_v1 maglev table of rev-nat 1`).
    log: Vec<String>,
    /// Times the maps were read whole.
    reads: std::cell::Cell<usize>,
    /// Keys read one at a time.
    key_reads: std::cell::Cell<usize>,
}

impl FakeMaps {
    fn check(&self) {
        check(&self.maps, self.tableless_maglev_ok);
    }

    /// Position in the log of the first write `entry` (`verb map key`).
    fn position(&self, entry: &str) -> usize {
        self.log
            .iter()
            .position(|l| l == entry)
            .unwrap_or_else(|| panic!("no write {entry:?} in {:#?}", self.log))
    }
}

/// The ordering rules, at one instant: what the maps hold references only
/// what is there (a Maglev entry without its table only where allowed).
fn check(m: &DesiredServices, tableless_maglev_ok: bool) {
    for (key, value) in m.services.iter().filter(|(k, _)| k.slot == 0) {
        assert!(
            m.revnat.contains_key(&value.rev_nat_id),
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
        if value.flags & SVC_F_TWO_SCOPES != 0 {
            let twin = ServiceKey {
                scope: SCOPE_INTERNAL,
                ..*key
            };
            assert!(m.services.contains_key(&twin), "{key:?} names its missing twin");
        }
        if value.flags & SVC_F_MAGLEV != 0 && value.count > 0 && !tableless_maglev_ok {
            assert!(
                m.maglev.contains_key(&value.rev_nat_id),
                "Maglev {key:?} has no table"
            );
        }
    }
    for (id, table) in &m.maglev {
        assert_eq!(table.len(), MAGLEV_TABLE_SIZE, "table {id}");
        for backend in table {
            assert!(
                m.backends.contains_key(backend),
                "table {id} names missing backend {backend}"
            );
        }
    }
}

impl Maps<ServiceOp> for FakeMaps {
    fn read(&self) -> Result<DesiredServices, SyncError> {
        self.reads.set(self.reads.get() + 1);
        Ok(self.maps.clone())
    }

    fn apply(&mut self, op: &ServiceOp) -> Result<(), MapError> {
        self.writes += 1;
        if self.fail_every.is_some_and(|n| self.writes.is_multiple_of(n)) || self.fail_map == Some(op.map()) {
            return Err(full());
        }
        op.apply_to(&mut self.maps);
        let verb = if op.is_delete() { "del" } else { "put" };
        self.log.push(format!("{verb} {} {op}", op.map()));
        self.check();
        Ok(())
    }
}

impl FakeMaps {
    fn key_read(&self) {
        self.key_reads.set(self.key_reads.get() + 1);
    }
}

impl ServiceMaps for FakeMaps {
    fn service(&self, key: &ServiceKey) -> Result<Option<ServiceValue>, MapError> {
        self.key_read();
        Ok(self.maps.services.get(key).copied())
    }

    fn backend(&self, id: u32) -> Result<Option<Backend>, MapError> {
        self.key_read();
        Ok(self.maps.backends.get(&id).copied())
    }

    fn revnat(&self, id: u32) -> Result<Option<weir_common::RevNat>, MapError> {
        self.key_read();
        Ok(self.maps.revnat.get(&id).copied())
    }

    fn maglev(&self, id: u32) -> Result<Option<Vec<u32>>, MapError> {
        self.key_read();
        Ok(self.maps.maglev.get(&id).cloned())
    }
}

/// What a full map answers.
fn full() -> MapError {
    MapError::SyscallError(aya::sys::SyscallError {
        call: "bpf_map_update_elem",
        io_error: std::io::Error::from_raw_os_error(libc::E2BIG),
    })
}

fn same_contents(a: &DesiredServices, b: &DesiredServices) -> bool {
    a.services == b.services && a.backends == b.backends && a.revnat == b.revnat && a.maglev == b.maglev
}

/// One Service `name` on `vip` with `ports` (port, protocol) and a slice of
/// `backends` (last octets).
fn service(name: &str, vip: &str, ports: &[(u16, &str)], backends: &[u8]) -> String {
    let svc_ports: String = ports
        .iter()
        .map(|(p, proto)| {
            format!(
                "  - {{name: p{p}-{}, port: {p}, targetPort: {}, protocol: {proto}}}\n",
                proto.to_lowercase(),
                p + 1000
            )
        })
        .collect();
    let slice_ports: String = ports
        .iter()
        .map(|(p, proto)| {
            format!(
                "  - {{name: p{p}-{}, port: {}, protocol: {proto}}}\n",
                proto.to_lowercase(),
                p + 1000
            )
        })
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

/// `yaml` (from [`service`]) with its Services annotated for Maglev.
fn maglev(yaml: &str) -> String {
    yaml.replace(
        "namespace: default}",
        "namespace: default, annotations: {weir.dev/lb-algorithm: maglev}}",
    )
}

/// `yaml` (from [`service`], one Service) as a LoadBalancer Service at
/// `ip` with `externalTrafficPolicy: Local`: its frontend there has an entry
/// per scope, the external one naming its internal twin.
fn local_lb(yaml: &str, ip: &str) -> String {
    yaml.replacen(
        "spec:\n",
        "spec:\n  type: LoadBalancer\n  externalTrafficPolicy: Local\n",
        1,
    )
    .replace("targetPort:", "nodePort: 30080, targetPort:")
    .replacen(
        "---\n",
        &format!("status: {{loadBalancer: {{ingress: [{{ip: {ip}}}]}}}}\n---\n"),
        1,
    )
}

fn model(yaml: &str) -> Model {
    let (objects, problems) = parse_documents(yaml, "test.yaml");
    assert!(problems.is_empty(), "{problems:?}");
    Model::from_objects(objects)
}

fn converge(syncer: &mut Agent, maps: &mut FakeMaps, yaml: &str) -> DesiredServices {
    let (desired, problems) = syncer.compile(&model(yaml));
    assert!(problems.is_empty(), "{problems:?}");
    let report = syncer.apply(maps, &desired);
    assert!(report.complete(), "{report:?}");
    assert!(same_contents(&maps.maps, &desired), "maps differ from desired");
    assert!(syncer.refs_agree_with(&maps.maps), "syncer lost track");
    desired
}

#[test]
fn every_step_of_grow_shrink_replace_and_remove_is_consistent() {
    let mut maps = FakeMaps::default();
    let mut syncer = Agent::new(&maps);
    let a = |b: &[u8]| service("a", "10.96.0.1", &[(80, "TCP"), (53, "UDP")], b);
    let b = local_lb(&service("b", "10.96.0.2", &[(443, "TCP")], &[7, 8]), "192.0.2.2");
    let desired = converge(&mut syncer, &mut maps, &format!("{}{b}", a(&[1, 2])));
    let twins = desired
        .services
        .iter()
        .filter(|(k, _)| k.slot == 0 && k.scope == SCOPE_INTERNAL)
        .count();
    assert_eq!(twins, 1, "b's load balancer address has an entry per scope");
    converge(&mut syncer, &mut maps, &format!("{}{b}", a(&[1, 2, 3, 4])));
    converge(&mut syncer, &mut maps, &format!("{}{b}", a(&[4])));
    converge(&mut syncer, &mut maps, &format!("{}{b}", a(&[5, 6])));
    converge(&mut syncer, &mut maps, &format!("{}{b}", a(&[])));
    converge(&mut syncer, &mut maps, &b);
    converge(&mut syncer, &mut maps, "");
    assert!(maps.maps.services.is_empty() && maps.maps.backends.is_empty() && maps.maps.revnat.is_empty());
}

/// The rev-NAT id of the frontend `vip:port` in `desired`.
fn rev_nat_of(desired: &DesiredServices, vip: [u8; 4], port: u16) -> u32 {
    desired
        .services
        .iter()
        .find(|(k, _)| k.slot == 0 && k.addr[..4] == vip && u16::from_be(k.port) == port)
        .map(|(_, v)| v.rev_nat_id)
        .unwrap_or_else(|| panic!("no frontend {vip:?}:{port}"))
}

#[test]
fn maglev_tables_come_after_backends_and_before_service_entries() {
    let mut maps = FakeMaps::default();
    let mut syncer = Agent::new(&maps);
    let a = |b: &[u8]| maglev(&service("a", "10.96.0.1", &[(80, "TCP"), (53, "UDP")], b));
    let plain = |b: &[u8]| service("a", "10.96.0.1", &[(80, "TCP"), (53, "UDP")], b);
    let b = service("b", "10.96.0.2", &[(443, "TCP")], &[7, 8]);

    let d = converge(&mut syncer, &mut maps, &format!("{}{b}", a(&[1, 2])));
    assert_eq!(d.maglev.len(), 2, "one table per Maglev frontend, none for b");
    let id = rev_nat_of(&d, [10, 96, 0, 1], 80);
    let table = |verb: &str| format!("{verb} {} maglev table of rev-nat {id}", names::MAGLEV);
    let head = |d: &DesiredServices| {
        let (k, _) = d
            .services
            .iter()
            .find(|(k, v)| k.slot == 0 && v.rev_nat_id == id)
            .expect("head");
        format!("put {} {}", names::SERVICES, ServiceOp::DelService(*k))
    };
    for backend in d.maglev[&id].iter().collect::<BTreeSet<_>>() {
        let put = format!("put {} backend {backend}", names::BACKENDS);
        assert!(maps.position(&put) < maps.position(&table("put")));
    }
    assert!(maps.position(&table("put")) < maps.position(&head(&d)));

    // Grown, shrunk, replaced: every step keeps the invariants (checked after each
    // write), and the table is rewritten before the service entry that counts the
    // change.
    for backends in [&[1, 2, 3, 4][..], &[4], &[5, 6]] {
        maps.log.clear();
        let d = converge(&mut syncer, &mut maps, &format!("{}{b}", a(backends)));
        assert!(
            maps.position(&table("put")) < maps.position(&head(&d)),
            "{backends:?}: {:#?}",
            maps.log
        );
    }

    // Maglev off: the service entry drops its flag first, then the table goes.
    maps.log.clear();
    let d = converge(&mut syncer, &mut maps, &format!("{}{b}", plain(&[5, 6])));
    assert!(maps.maps.maglev.is_empty());
    assert!(
        maps.position(&head(&d)) < maps.position(&table("del")),
        "{:#?}",
        maps.log
    );
    // On again, then no endpoints (no table), then back, then gone.
    converge(&mut syncer, &mut maps, &format!("{}{b}", a(&[5, 6])));
    assert_eq!(maps.maps.maglev.len(), 2);
    converge(&mut syncer, &mut maps, &format!("{}{b}", a(&[])));
    assert!(
        maps.maps.maglev.is_empty(),
        "a frontend without backends needs no table"
    );
    converge(&mut syncer, &mut maps, &format!("{}{b}", a(&[1])));
    converge(&mut syncer, &mut maps, &b);
    converge(&mut syncer, &mut maps, "");
    assert!(maps.maps.maglev.is_empty() && maps.maps.backends.is_empty());
}

#[test]
fn an_unchanged_model_writes_nothing() {
    let mut maps = FakeMaps::default();
    let mut syncer = Agent::new(&maps);
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
    let mut first = Agent::new(&maps);
    let before = converge(&mut first, &mut maps, &yaml);
    // Only b remains in the second agent's model: a's ids must not be handed to b.
    let writes = maps.writes;
    let mut second = Agent::new(&maps);
    let after = converge(&mut second, &mut maps, &yaml);
    assert_eq!(
        maps.writes, writes,
        "a restart with the same model must write nothing"
    );
    assert_eq!(before.services, after.services);
    let yaml_b = service("b", "10.96.0.2", &[(80, "TCP")], &[3]);
    let only_b = converge(&mut second, &mut maps, &yaml_b);
    let rev_nat = |d: &DesiredServices| -> BTreeMap<ServiceKey, u32> {
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
    let mut syncer = Agent::new(&maps);
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
    let mut syncer = Agent::new(&maps);
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

#[test]
fn a_restarted_syncer_reads_maglev_tables_back_and_writes_nothing() {
    let mut maps = FakeMaps::default();
    let yaml = format!(
        "{}{}",
        maglev(&service("a", "10.96.0.1", &[(80, "TCP")], &[1, 2, 3])),
        service("b", "10.96.0.2", &[(80, "TCP")], &[4])
    );
    let mut first = Agent::new(&maps);
    converge(&mut first, &mut maps, &yaml);
    assert_eq!(maps.maps.maglev.len(), 1);
    let writes = maps.writes;
    let mut second = Agent::new(&maps);
    assert_eq!(
        second.read_back().map(|m| &m.maglev),
        Some(&maps.maps.maglev),
        "tables not read back"
    );
    converge(&mut second, &mut maps, &yaml);
    assert_eq!(
        maps.writes, writes,
        "a restart with the same model must write nothing"
    );
}

#[test]
fn a_maglev_table_of_the_wrong_size_is_reported_and_skipped() {
    let mut maps = FakeMaps {
        tableless_maglev_ok: true,
        ..Default::default()
    };
    let mut syncer = Agent::new(&maps);
    let (mut desired, _) = syncer.compile(&model(&maglev(&service(
        "a",
        "10.96.0.1",
        &[(80, "TCP")],
        &[1, 2],
    ))));
    let id = rev_nat_of(&desired, [10, 96, 0, 1], 80);
    desired.maglev.insert(id, vec![1; 7]);
    let report = syncer.apply(&mut maps, &desired);
    assert_eq!(report.skipped, 1, "{report:?}");
    assert!(
        report.complete(),
        "a skipped table is no reason to retry: {report:?}"
    );
    assert!(maps.maps.maglev.is_empty(), "a short table reached the map");
    // Everything else is written: the frontend works, picking at random.
    assert_eq!(maps.maps.services, desired.services);
    assert_eq!(maps.maps.backends, desired.backends);
}

#[test]
fn a_backend_named_only_by_a_maglev_table_stays() {
    let mut maps = FakeMaps::default();
    let mut syncer = Agent::new(&maps);
    converge(
        &mut syncer,
        &mut maps,
        &maglev(&service("a", "10.96.0.1", &[(80, "TCP")], &[1, 2, 3])),
    );
    // Maglev off and backend 10.0.0.3 gone at once, while the table cannot be
    // deleted: its slot goes, but the backend must stay for the table (the check
    // after every write fails otherwise).
    maps.fail_map = Some(names::MAGLEV);
    let (desired, _) = syncer.compile(&model(&service("a", "10.96.0.1", &[(80, "TCP")], &[1, 2])));
    let report = syncer.apply(&mut maps, &desired);
    assert!(report.tally.failed >= 1 && report.deferred >= 1, "{report:?}");
    assert_eq!(
        maps.maps.backends.len(),
        3,
        "a backend still in a table was deleted"
    );
    assert_eq!(
        maps.maps.services, desired.services,
        "service entries are not held back"
    );
    maps.fail_map = None;
    let report = syncer.apply(&mut maps, &desired);
    assert!(report.complete(), "{report:?}");
    assert!(same_contents(&maps.maps, &desired));
}

#[test]
fn failed_maglev_writes_defer_dependents_and_the_next_sync_converges() {
    let steps: Vec<String> = [&[1, 2, 3][..], &[3, 4, 5, 6], &[6], &[]]
        .iter()
        .map(|b| maglev(&service("a", "10.96.0.1", &[(80, "TCP"), (53, "UDP")], b)))
        .chain([service("a", "10.96.0.1", &[(80, "TCP")], &[7, 8])])
        .collect();
    for fail_every in [2, 3, 5] {
        let mut maps = FakeMaps {
            fail_every: Some(fail_every),
            ..Default::default()
        };
        let mut syncer = Agent::new(&maps);
        for yaml in &steps {
            let (desired, _) = syncer.compile(&model(yaml));
            let mut tries = 0;
            while !syncer.apply(&mut maps, &desired).complete() {
                tries += 1;
                assert!(tries < 50, "never converged");
            }
            assert!(same_contents(&maps.maps, &desired));
        }
    }
}

#[test]
fn a_service_entry_waits_for_its_maglev_table() {
    let mut maps = FakeMaps::default();
    let mut syncer = Agent::new(&maps);
    let plain = service("a", "10.96.0.1", &[(80, "TCP")], &[1, 2]);
    let before = converge(&mut syncer, &mut maps, &plain);
    // Turning to Maglev (and growing) while the table cannot be written: the
    // service entry keeps its old value, the new slot waits uncounted.
    maps.fail_map = Some(names::MAGLEV);
    let (desired, _) = syncer.compile(&model(&maglev(&service(
        "a",
        "10.96.0.1",
        &[(80, "TCP")],
        &[1, 2, 3],
    ))));
    let report = syncer.apply(&mut maps, &desired);
    assert!(report.tally.failed == 1 && report.deferred >= 1, "{report:?}");
    // The failure is told by map and errno (the agent's metrics count it so).
    assert_eq!(
        report.tally.failures.get(&(names::MAGLEV, "E2BIG".to_owned())),
        Some(&1),
        "{:?}",
        report.tally.failures
    );
    let heads = |d: &DesiredServices| -> Vec<ServiceValue> {
        d.services
            .iter()
            .filter(|(k, _)| k.slot == 0)
            .map(|(_, v)| *v)
            .collect()
    };
    assert_eq!(
        heads(&maps.maps),
        heads(&before),
        "the service entry did not wait"
    );
    maps.fail_map = None;
    assert!(syncer.apply(&mut maps, &desired).complete());
    assert!(same_contents(&maps.maps, &desired));
}

/// Replaces `model`'s objects by those of `yaml`; returns the keys that changed.
fn edit(model: &mut Model, yaml: &str) -> BTreeSet<ObjectKey> {
    let (objects, problems) = parse_documents(yaml, "test.yaml");
    assert!(problems.is_empty(), "{problems:?}");
    let new: BTreeMap<ObjectKey, weir_model::Object> = objects.into_iter().map(|o| (o.key(), o)).collect();
    let mut changed = BTreeSet::new();
    let old: Vec<ObjectKey> = model.entries().map(|(k, _)| k.clone()).collect();
    for key in old.into_iter().filter(|k| !new.contains_key(k)) {
        model.remove(&key);
        changed.insert(key);
    }
    for (key, object) in new {
        if model.get(&key).is_none_or(|e| e.object != object) {
            model.upsert(object, "test.yaml");
            changed.insert(key);
        }
    }
    changed
}

#[test]
fn incremental_syncs_keep_every_instant_consistent_and_converge() {
    let a = |b: &[u8]| service("a", "10.96.0.1", &[(80, "TCP"), (53, "UDP")], b);
    let b = |b: &[u8]| maglev(&service("b", "10.96.0.2", &[(443, "TCP")], b));
    let c = local_lb(&service("c", "10.96.0.3", &[(80, "TCP")], &[1, 9]), "192.0.2.3");
    let steps = [
        format!("{}{}{c}", a(&[1, 2]), b(&[2, 3])),
        format!("{}{}{c}", a(&[1, 2, 3, 4]), b(&[2, 3])),
        format!("{}{}{c}", a(&[4]), b(&[4, 5, 6])),
        format!("{}{}", a(&[5, 6]), b(&[6])),
        format!("{}{}{c}", a(&[]), b(&[])),
        format!("{}{c}", b(&[7])),
        c.clone(),
        String::new(),
    ];
    // Whole reads retrying a sync that read whole and failed.
    let mut whole_retries = 0;
    for fail_every in [None, Some(2), Some(3), Some(7)] {
        let mut maps = FakeMaps {
            fail_every,
            ..Default::default()
        };
        let mut agent = Agent::new(&maps);
        let mut model = Model::new();
        agent.compiler.compile_all(&model);
        // The start reads the maps whole (the first sync, a full one, diffs
        // against that). Then a sync reads them whole where its change
        // touches more keys than that would cost, as far as the sync before
        // knew what they held (it completed, or it read them whole); it
        // reads keys one by one otherwise.
        let mut tries = 0;
        while !agent
            .syncer
            .apply(&mut maps, agent.compiler.desired(), &Changed::All)
            .complete()
        {
            tries += 1;
            assert!(tries < 50, "never converged");
        }
        let mut cost = Some(whole_read_cost(&maps.maps));
        let (mut whole_syncs, mut keyed_syncs) = (0, 0);
        for yaml in &steps {
            let changed_objects = edit(&mut model, yaml);
            let (changed, _) = agent.compiler.update(&model, &changed_objects);
            let Changed::Keys(touched) = &changed else {
                panic!("these edits need no full compile");
            };
            let mut tries = 0;
            loop {
                let whole = cost.is_some_and(|c| c < touched.len());
                let (reads, key_reads) = (maps.reads.get(), maps.key_reads.get());
                let report = agent.syncer.apply(&mut maps, agent.compiler.desired(), &changed);
                if whole {
                    whole_syncs += 1;
                    whole_retries += usize::from(tries > 0);
                    assert_eq!(
                        maps.reads.get(),
                        reads + 1,
                        "fail_every {fail_every:?}: not read whole"
                    );
                    assert_eq!(
                        maps.key_reads.get(),
                        key_reads,
                        "a whole read and single keys too"
                    );
                } else {
                    keyed_syncs += 1;
                    assert_eq!(maps.reads.get(), reads, "fail_every {fail_every:?}: read whole");
                }
                cost = (whole || report.complete()).then(|| whole_read_cost(&maps.maps));
                if report.complete() {
                    break;
                }
                tries += 1;
                assert!(tries < 50, "never converged");
            }
            let (full, _) =
                weir_model::compile_services(&model, &NodeContext::new("n1"), &mut IdAllocator::new());
            assert!(
                same_contents(&maps.maps, agent.compiler.desired()),
                "fail_every {fail_every:?}: maps differ"
            );
            assert_eq!(maps.maps.services.len(), full.services.len());
            assert_eq!(maps.maps.backends.len(), full.backends.len());
            assert!(agent.syncer.refs_agree_with(&maps.maps), "syncer lost track");
        }
        assert!(
            maps.maps.services.is_empty() && maps.maps.backends.is_empty() && maps.maps.revnat.is_empty()
        );
        assert!(whole_syncs > 0 && keyed_syncs > 0, "both kinds of sync ran");
    }
    assert!(
        whole_retries > 0,
        "no sync that read whole failed and was retried"
    );
}

#[test]
fn a_change_larger_than_the_maps_reads_them_whole_and_a_small_one_key_by_key() {
    let mut maps = FakeMaps::default();
    let mut agent = Agent::new(&maps);
    let mut model = Model::new();
    agent.compiler.compile_all(&model);
    // The first sync, as the agent's: full, against the maps read at the start.
    assert!(
        agent
            .syncer
            .apply(&mut maps, agent.compiler.desired(), &Changed::All)
            .complete()
    );
    let many: String = (0..50)
        .map(|i| service(&format!("s{i}"), &format!("10.96.1.{i}"), &[(80, "TCP")], &[1, 2]))
        .collect();
    // (whole reads, single-key reads) of a sync to `yaml`.
    let mut sync = |model: &mut Model, yaml: &str| {
        let changed_objects = edit(model, yaml);
        let (changed, _) = agent.compiler.update(model, &changed_objects);
        let before = (maps.reads.get(), maps.key_reads.get());
        assert!(
            agent
                .syncer
                .apply(&mut maps, agent.compiler.desired(), &changed)
                .complete()
        );
        assert!(same_contents(&maps.maps, agent.compiler.desired()));
        (maps.reads.get() - before.0, maps.key_reads.get() - before.1)
    };
    assert_eq!(
        sync(&mut model, &many),
        (1, 0),
        "50 Services into empty maps: one whole read, no key read"
    );
    let one_more = format!("{many}{}", service("t", "10.96.2.1", &[(80, "TCP")], &[3]));
    let (whole, keys) = sync(&mut model, &one_more);
    assert_eq!(whole, 0, "one Service more: no whole read");
    assert!(keys > 0, "one Service more: its keys read one by one");
    assert_eq!(
        sync(&mut model, ""),
        (1, 0),
        "every Service removed: one whole read, no key read"
    );
}

#[test]
fn absent_keys_are_those_the_map_lacks_by_walk_and_by_lookup() {
    let map: BTreeMap<u32, u32> = (0..1_000).map(|k| (k * 3, k)).collect();
    let many: Vec<u32> = (0..4_000).collect();
    let few: Vec<u32> = vec![0, 2, 3, 2_997, 5_000];
    for keys in [&many, &few] {
        let gone: Vec<u32> = absent(keys, &map).collect();
        let want: Vec<u32> = keys.iter().filter(|k| !map.contains_key(k)).copied().collect();
        assert_eq!(gone, want);
    }
}

/// Maps in memory behind a lock, so that the syncer's writer thread writes
/// them too (`background`): every write, whichever thread makes it, checked
/// against the ordering rules.
#[derive(Clone, Default)]
struct SharedMaps(std::sync::Arc<std::sync::Mutex<Shared>>);

#[derive(Default)]
struct Shared {
    maps: DesiredServices,
    writes: usize,
    /// Fail every `fail_every`-th write.
    fail_every: Option<usize>,
}

impl SharedMaps {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.0.lock().expect("a write panicked")
    }
}

impl Maps<ServiceOp> for SharedMaps {
    fn read(&self) -> Result<DesiredServices, SyncError> {
        Ok(self.lock().maps.clone())
    }

    fn apply(&mut self, op: &ServiceOp) -> Result<(), MapError> {
        // Slow, as the kernel's writes are next to deciding them: a sync that
        // went on before its writer's writes were made would be caught.
        std::thread::sleep(std::time::Duration::from_micros(200));
        let mut shared = self.lock();
        shared.writes += 1;
        if shared.fail_every.is_some_and(|n| shared.writes.is_multiple_of(n)) {
            return Err(full());
        }
        op.apply_to(&mut shared.maps);
        check(&shared.maps, false);
        Ok(())
    }

    fn background(&self) -> Option<Box<dyn Maps<ServiceOp> + Send>> {
        Some(Box::new(self.clone()))
    }
}

impl ServiceMaps for SharedMaps {
    fn service(&self, key: &ServiceKey) -> Result<Option<ServiceValue>, MapError> {
        Ok(self.lock().maps.services.get(key).copied())
    }

    fn backend(&self, id: u32) -> Result<Option<Backend>, MapError> {
        Ok(self.lock().maps.backends.get(&id).copied())
    }

    fn revnat(&self, id: u32) -> Result<Option<weir_common::RevNat>, MapError> {
        Ok(self.lock().maps.revnat.get(&id).copied())
    }

    fn maglev(&self, id: u32) -> Result<Option<Vec<u32>>, MapError> {
        Ok(self.lock().maps.maglev.get(&id).cloned())
    }
}

#[test]
fn writes_made_on_the_writer_thread_keep_every_instant_consistent_and_converge() {
    // One port for two protocols: two frontends whose slots interleave in
    // key order.
    let a = |b: &[u8]| service("a", "10.96.0.1", &[(53, "TCP"), (53, "UDP")], b);
    let b = |b: &[u8]| maglev(&service("b", "10.96.0.2", &[(443, "TCP")], b));
    let c = service("c", "10.96.0.3", &[(80, "TCP")], &[1, 9]);
    let many: String = (0..20)
        .map(|i| {
            service(
                &format!("s{i}"),
                &format!("10.96.1.{i}"),
                &[(80, "TCP")],
                &[1, 2, 3],
            )
        })
        .collect();
    let steps = [
        format!("{}{}{c}{many}", a(&[1, 2]), b(&[2, 3])),
        format!("{}{}{c}", a(&[1, 2, 3, 4]), b(&[2, 3])),
        format!("{}{}{many}", a(&[4]), b(&[4, 5, 6])),
        format!("{}{}{c}", a(&[]), b(&[7])),
        String::new(),
    ];
    for fail_every in [None, Some(3), Some(7)] {
        let mut maps = SharedMaps::default();
        maps.lock().fail_every = fail_every;
        let mut syncer = ServiceSyncer::new(&maps).expect("read");
        let mut compiler = syncer.compiler(NodeContext::new("n1"));
        let mut model = Model::new();
        let mut background = 0;
        for (i, yaml) in steps.iter().enumerate() {
            let changed_objects = edit(&mut model, yaml);
            let changed = if i == 0 {
                compiler.compile_all(&model);
                Changed::All
            } else {
                compiler.update(&model, &changed_objects).0
            };
            let mut tries = 0;
            loop {
                let report = syncer.apply(&mut maps, compiler.desired(), &changed);
                background += report.background_writes;
                if report.complete() {
                    break;
                }
                tries += 1;
                assert!(tries < 50, "fail_every {fail_every:?}: never converged");
            }
            assert!(
                same_contents(&maps.lock().maps, compiler.desired()),
                "fail_every {fail_every:?}, step {i}: maps differ"
            );
        }
        assert!(
            background > 0,
            "fail_every {fail_every:?}: no write on the writer thread"
        );
        assert!(syncer.refs_agree_with(&maps.lock().maps), "syncer lost track");
    }
}
