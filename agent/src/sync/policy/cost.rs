//! What one change costs the policy syncer at the size issue 14 names (1,000
//! policies, 10,000 pods): compile and sync after a pod relabel and after one
//! policy's change, timed and printed, not asserted (the machine is shared).
//! The test suite runs it at a tenth of that size (100 policies, 1,000 pods,
//! 3 rounds), where it checks what does not depend on time: the changes are
//! written, and a restarted syncer over the same maps writes nothing. The
//! measurement:
//!
//! ```text
//! WEIR_POLICY_COST_NAMESPACES=100 WEIR_POLICY_COST_ROUNDS=21 \
//!   cargo test --release -p weir-agent --lib policy_change_cost -- --nocapture
//! ```

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use aya::maps::MapError;
use weir_model::{Model, ObjectKey, parse_documents};

use super::{PolicySyncer, SyncError};
use crate::sync::{Maps, policy_maps::PolicyOp};

/// Maps in memory.
#[derive(Default)]
struct InMemory(weir_model::policy::DesiredPolicy);

impl Maps<PolicyOp> for InMemory {
    fn read(&self) -> Result<weir_model::policy::DesiredPolicy, SyncError> {
        Ok(self.0.clone())
    }

    fn apply(&mut self, op: &PolicyOp) -> Result<(), MapError> {
        op.apply_to(&mut self.0);
        Ok(())
    }
}

const PODS_PER_NAMESPACE: usize = 100;
const APPS: usize = 10;
const POLICIES_PER_NAMESPACE: usize = 10;

/// Pod `i` of namespace `ns`; this node (`n1`) runs the first of every
/// namespace (100 pods, as kubelet's default limit allows 110).
fn pod(ns: usize, i: usize, app: usize) -> String {
    let node = if i == 0 { "n1" } else { "n2" };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns{ns}, labels: {{app: a{app}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: i, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{podIP: 10.{}.{}.{}}}\n---\n",
        ns / 100 + 1,
        ns % 100,
        i + 1
    )
}

/// Policy `k` of namespace `ns`: app `k` admits app `k+1` of its namespace and
/// app `k+2` of namespaces labelled like `ns`'s group, on a port of its own.
fn policy(ns: usize, k: usize, port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{k}, namespace: ns{ns}}}\nspec: {{podSelector: {{matchLabels: {{app: a{k}}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{app: a{}}}}}}}, {{namespaceSelector: {{matchLabels: {{group: g{}}}}}, podSelector: {{matchLabels: {{app: a{}}}}}}}], ports: [{{port: {port}}}, {{port: http}}]}}]}}\n---\n",
        (k + 1) % APPS,
        ns % 10,
        (k + 2) % APPS,
    )
}

fn model(namespaces: usize) -> Model {
    let mut yaml = String::new();
    for ns in 0..namespaces {
        yaml += &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{ns}, labels: {{group: g{}}}}}\n---\n",
            ns % 10
        );
        for i in 0..PODS_PER_NAMESPACE {
            yaml += &pod(ns, i, i % APPS);
        }
        for k in 0..POLICIES_PER_NAMESPACE {
            yaml += &policy(ns, k, 9000 + k as u16);
        }
    }
    let (objects, problems) = parse_documents(&yaml, "cost.yaml");
    assert!(problems.is_empty(), "{problems:?}");
    Model::from_objects(objects)
}

/// Puts the objects of `yaml` into the model; their keys, as a source reports them.
fn upsert(model: &mut Model, yaml: &str) -> BTreeSet<ObjectKey> {
    let (objects, problems) = parse_documents(yaml, "cost.yaml");
    assert!(problems.is_empty(), "{problems:?}");
    objects
        .into_iter()
        .map(|object| {
            let key = object.key();
            model.upsert(object, "cost.yaml");
            key
        })
        .collect()
}

/// Compile and sync after `change`, `rounds` times: the median of each, and
/// the writes and deletes of the last.
fn timed(
    syncer: &mut PolicySyncer,
    maps: &mut InMemory,
    model: &mut Model,
    rounds: usize,
    mut change: impl FnMut(&mut Model, usize) -> BTreeSet<ObjectKey>,
) -> (Duration, Duration, usize, usize) {
    let (mut compile, mut apply) = (Vec::new(), Vec::new());
    let mut last = (0, 0);
    for round in 0..rounds {
        let changed = change(model, round);
        let start = Instant::now();
        syncer.note(&changed);
        syncer.compile(model);
        compile.push(start.elapsed());
        let start = Instant::now();
        let report = syncer.apply(maps);
        apply.push(start.elapsed());
        last = (report.tally.writes, report.tally.deletes);
    }
    compile.sort();
    apply.sort();
    (compile[rounds / 2], apply[rounds / 2], last.0, last.1)
}

/// `name` from the environment, or `default`.
fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn policy_change_cost() {
    // At least 10: the changes below touch namespaces 3 and 7.
    let namespaces = env_or("WEIR_POLICY_COST_NAMESPACES", 10).max(10);
    let rounds = env_or("WEIR_POLICY_COST_ROUNDS", 3).max(1);
    let mut model = model(namespaces);
    let mut maps = InMemory::default();
    let mut syncer = PolicySyncer::new("n1", &maps).expect("read");
    let start = Instant::now();
    syncer.compile(&model);
    let first = syncer.apply(&mut maps);
    let d = syncer.desired();
    println!(
        "first sync: {:.2} ms, {} endpoints, {} ipcache entries, {} rules, {} writes",
        start.elapsed().as_secs_f64() * 1e3,
        d.endpoints.len(),
        d.ipcache.len(),
        d.rules.len(),
        first.tally.writes
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // A pod of this node moves between apps (its own rules and its peers' sets
    // change), and back.
    let (c, a, w, x) = timed(&mut syncer, &mut maps, &mut model, rounds, |m, round| {
        upsert(m, &pod(3, 0, if round % 2 == 0 { 5 } else { 0 }))
    });
    assert!(w > 0, "a relabel of a local pod changed no entry");
    println!(
        "pod relabel: compile {:.2} ms, sync {:.2} ms ({w} writes, {x} deletes)",
        ms(c),
        ms(a)
    );
    // One policy's port changes.
    let (c, a, w, x) = timed(&mut syncer, &mut maps, &mut model, rounds, |m, round| {
        upsert(m, &policy(7, 0, 7000 + round as u16))
    });
    assert!(w > 0, "a policy's new port changed no entry");
    println!(
        "policy change: compile {:.2} ms, sync {:.2} ms ({w} writes, {x} deletes)",
        ms(c),
        ms(a)
    );
    // A restart over the same maps and cluster.
    let mut again = PolicySyncer::new("n1", &maps).expect("read");
    let start = Instant::now();
    again.compile(&model);
    let report = again.apply(&mut maps);
    println!(
        "restart: {:.2} ms ({} writes, {} deletes)",
        start.elapsed().as_secs_f64() * 1e3,
        report.tally.writes,
        report.tally.deletes
    );
    assert_eq!(
        (report.tally.writes, report.tally.deletes),
        (0, 0),
        "a restart over unchanged maps rewrote them"
    );
}
