//! Compiling only what a change touches. A cluster of 10,000 Services changes one
//! EndpointSlice at a time; recompiling all of them for each change would make
//! the datapath lag the cluster by the size of the cluster.
//!
//! Each Service compiles alone to a [`Fragment`], its share of the maps, and the
//! compiler keeps the union of the fragments. A change recompiles the Services
//! whose inputs it names (the Service; its EndpointSlices, before and after a
//! relabel; its Endpoints; Pods, for Services that select them without slices)
//! and reports which map keys may differ ([`Touched`]), so that the syncer looks
//! at those alone. The union is what a full compile in Service order would
//! produce; what depends on that order falls back to one: frontends two Services
//! claim (the first in order wins), and Namespace or Node changes.

use std::collections::{BTreeMap, BTreeSet};

use weir_common::{BACKEND_ACTIVE, BACKEND_TERMINATING, Backend, RevNat, ServiceKey, ServiceValue};

use super::{BackendState, DesiredServices, Fragment, FrontendView, NodeContext, compile_service};
use crate::{
    ids::IdAllocator,
    merge::merge_join,
    model::{Model, slice_service},
    object::{Kind, Object, ObjectKey},
    problem::Problem,
    slice::NodeRef,
};

/// Keys of the service maps that may differ from before.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub services: BTreeSet<ServiceKey>,
    pub backends: BTreeSet<u32>,
    pub revnat: BTreeSet<u32>,
    pub maglev: BTreeSet<u32>,
}

impl Touched {
    /// Keys of the four maps together.
    pub fn len(&self) -> usize {
        self.services.len() + self.backends.len() + self.revnat.len() + self.maglev.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys whose entries differ between `a` and `b`.
    pub fn between(a: &DesiredServices, b: &DesiredServices) -> Self {
        Self {
            services: differing(&a.services, &b.services),
            backends: differing(&a.backends, &b.backends),
            revnat: differing(&a.revnat, &b.revnat),
            maglev: differing(&a.maglev, &b.maglev),
        }
    }
}

/// Touched keys as they are found, in any order and repeated: a large change
/// names millions, and sorting them once costs a fraction of keeping them
/// sorted as they come (a B-tree insert each, at a random place).
#[derive(Default)]
struct TouchedKeys {
    services: Vec<ServiceKey>,
    backends: Vec<u32>,
    revnat: Vec<u32>,
    maglev: Vec<u32>,
}

impl TouchedKeys {
    /// The keys of a fragment's entries.
    fn add(&mut self, fragment: &DesiredServices) {
        self.services.extend(fragment.services.keys());
        self.backends.extend(fragment.backends.keys());
        self.revnat.extend(fragment.revnat.keys());
        self.maglev.extend(fragment.maglev.keys());
    }

    fn into_touched(self) -> Touched {
        // Collecting sorts, drops the repeats and builds each set bottom-up.
        Touched {
            services: self.services.into_iter().collect(),
            backends: self.backends.into_iter().collect(),
            revnat: self.revnat.into_iter().collect(),
            maglev: self.maglev.into_iter().collect(),
        }
    }
}

/// Entries of fragments on their way into the union's two maps keyed by
/// address (the frontends') or by rev-NAT id, added together at the end of a
/// compile: see [`merged`].
#[derive(Default)]
struct Pending {
    services: Vec<(ServiceKey, ServiceValue)>,
    revnat: Vec<(u32, RevNat)>,
}

/// Keys in one map and not the other, or with other values: one walk of both.
fn differing<K: Ord + Copy, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> BTreeSet<K> {
    merge_join(a, b)
        .filter(|(_, x, y)| x != y)
        .map(|(k, _, _)| *k)
        .collect()
}

/// What a compile changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Anything may have (a full compile).
    All,
    Keys(Touched),
}

impl Changed {
    /// Both changes (a sync that must cover an earlier one it could not finish).
    pub fn merge(self, other: Changed) -> Changed {
        match (self, other) {
            (Changed::Keys(mut a), Changed::Keys(b)) => {
                a.services.extend(b.services);
                a.backends.extend(b.backends);
                a.revnat.extend(b.revnat);
                a.maglev.extend(b.maglev);
                Changed::Keys(a)
            }
            _ => Changed::All,
        }
    }
}

/// What kube-proxy's service health server answers on a Service's
/// `healthCheckNodePort` (externalTrafficPolicy Local): 200 with the number of
/// this node's ready endpoints, 503 when there is none (terminating ones do not
/// count: a load balancer must move away from a node that is draining).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// How many fragments hold a backend, and how many see it ready (the backend
/// itself is the union's entry).
#[derive(Clone, Copy, Debug, Default)]
struct BackendRefs {
    holders: u32,
    active: u32,
}

/// What the compiler keeps of a Service's fragment once its entries are in
/// the union: what it takes to take them out again (its frontends' service
/// entries, whose slots the union's entry counts; its backends' ids, and
/// whether it saw each ready), and, where asked for, its frontends' views. A
/// second copy of every entry and view was the largest part of the compiled
/// state at 10,000 Services.
#[derive(Debug, Default)]
struct Held {
    heads: Box<[ServiceKey]>,
    revnat: Box<[u32]>,
    maglev: Box<[u32]>,
    backends: Box<[(u32, bool)]>,
    frontends: Vec<FrontendView>,
    from_pods: bool,
    conflict: bool,
}

/// The services compiler with its memory of the last compile.
pub struct ServiceCompiler {
    node: NodeContext,
    ids: IdAllocator,
    /// Keep the frontends' views (`frontends`): for `weirctl`-style views and
    /// tests; the agent's syncer reads only the union.
    views: bool,
    fragments: BTreeMap<ObjectKey, Held>,
    /// The union of the fragments (without frontend views: see `frontends`).
    desired: DesiredServices,
    backend_refs: BTreeMap<u32, BackendRefs>,
    /// Frontend (slot-0 key) -> the Service that owns it.
    owners: BTreeMap<ServiceKey, String>,
    /// EndpointSlice -> the Service it belonged to at the last compile.
    /// (The Service's name: it is in the slice's namespace.)
    slice_services: BTreeMap<ObjectKey, Box<str>>,
    /// Namespace -> Services whose endpoints are its selected Pods.
    pod_users: BTreeMap<String, BTreeSet<ObjectKey>>,
    /// Services with a `healthCheckNodePort`: the port and what it answers.
    health: BTreeMap<ObjectKey, (u16, HealthCheck)>,
    /// Fragments that lost a frontend to another Service.
    conflicts: usize,
    maglev_size_reported: bool,
}

impl ServiceCompiler {
    /// A compiler that keeps no frontend views ([`Self::frontends`] yields none).
    pub fn new(node: NodeContext, ids: IdAllocator) -> Self {
        Self {
            node,
            ids,
            views: false,
            fragments: BTreeMap::new(),
            desired: DesiredServices::default(),
            backend_refs: BTreeMap::new(),
            owners: BTreeMap::new(),
            slice_services: BTreeMap::new(),
            pod_users: BTreeMap::new(),
            health: BTreeMap::new(),
            conflicts: 0,
            maglev_size_reported: false,
        }
    }

    /// A compiler that keeps the frontends' views.
    pub fn with_views(node: NodeContext, ids: IdAllocator) -> Self {
        Self {
            views: true,
            ..Self::new(node, ids)
        }
    }

    /// The desired content of the maps (`frontends` left empty).
    pub fn desired(&self) -> &DesiredServices {
        &self.desired
    }

    /// The frontends' views, in Service order (none unless made [`Self::with_views`]).
    pub fn frontends(&self) -> impl Iterator<Item = &FrontendView> {
        self.fragments.values().flat_map(|f| &f.frontends)
    }

    /// Every frontend's rev-NAT id and Service (`namespace/name`).
    pub fn frontend_names(&self) -> impl Iterator<Item = (u32, &str)> {
        self.owners
            .iter()
            .filter_map(|(head, owner)| self.frontend_name(head, owner))
    }

    /// The rev-NAT id and Service of frontend `head` (a slot-0 key), if it is one.
    pub fn frontend_named(&self, head: &ServiceKey) -> Option<(u32, &str)> {
        let owner = self.owners.get(head)?;
        self.frontend_name(head, owner)
    }

    fn frontend_name<'a>(&'a self, head: &ServiceKey, owner: &'a str) -> Option<(u32, &'a str)> {
        let id = self.desired.services.get(head)?.rev_nat_id;
        // The owner is the Service's key as written: `Service namespace/name`.
        Some((id, owner.split_once(' ').map_or(owner, |(_, name)| name)))
    }

    /// The health checks to serve, by port.
    pub fn health_checks(&self) -> BTreeMap<u16, HealthCheck> {
        self.health.values().cloned().collect()
    }

    /// The node compiled for.
    pub fn node(&self) -> &NodeContext {
        &self.node
    }

    /// Compiles for another node context from now on (its NodePort addresses
    /// or its zone changed): the caller runs [`Self::compile_all`] next.
    pub fn set_node(&mut self, node: NodeContext) {
        self.node = node;
    }

    pub fn into_ids(self) -> IdAllocator {
        self.ids
    }

    /// Compiles every Service of `model` afresh; returns every problem.
    pub fn compile_all(&mut self, model: &Model) -> Vec<Problem> {
        self.fragments.clear();
        self.desired = DesiredServices::default();
        self.backend_refs.clear();
        self.owners.clear();
        self.pod_users.clear();
        self.health.clear();
        self.conflicts = 0;
        self.maglev_size_reported = false;
        self.slice_services = model
            .of_kind(Kind::EndpointSlice)
            .filter_map(|(key, entry)| Some((key.clone(), slice_service(&entry.object)?.into())))
            .collect();
        let mut problems = Vec::new();
        let mut pending = Pending::default();
        // No list of the keys first: copies of 100,000 keys freed at the end
        // would leave holes between the entries built meanwhile.
        for (key, _, _) in model.services() {
            if let Some(mut fragment) = self.compile(model, key) {
                problems.append(&mut fragment.problems);
                self.insert(key.clone(), fragment, &mut pending);
            }
        }
        self.add_pending(pending);
        self.ids.retain_only(&self.desired);
        self.pack();
        problems
    }

    /// Rebuilds the large maps with full B-tree leaves. Filled one fragment at
    /// a time, in Service order, their leaves end about two-thirds full (a
    /// leaf splits when an insert finds it full); built from sorted entries,
    /// every leaf but the last is full: a third less memory for the union, the
    /// reference counts and the records, for the time a Vec of one map's
    /// entries takes to exist. (The frontends' and reverse-NAT entries were
    /// built that way already: see `add_pending`.)
    fn pack(&mut self) {
        let d = &mut self.desired;
        d.backends = packed(std::mem::take(&mut d.backends));
        self.backend_refs = packed(std::mem::take(&mut self.backend_refs));
        self.fragments = packed(std::mem::take(&mut self.fragments));
        self.owners = packed(std::mem::take(&mut self.owners));
        self.ids.pack();
    }

    /// Compiles every Service afresh, like [`Self::compile_all`], and says which
    /// keys' entries differ from the last compile's: the maps hold that one, so
    /// a sync need look at those alone (a Namespace's change at 10,000 Services
    /// costs a compile, not a walk of the maps).
    pub fn recompile_all(&mut self, model: &Model) -> (Changed, Vec<Problem>) {
        let before = std::mem::take(&mut self.desired);
        let problems = self.compile_all(model);
        (Changed::Keys(Touched::between(&before, &self.desired)), problems)
    }

    /// Recompiles what the objects `changed` (their keys; the model holds their
    /// new state, or not at all if they are gone) touch. Returns what changed and
    /// the problems of the Services recompiled.
    pub fn update(&mut self, model: &Model, changed: &BTreeSet<ObjectKey>) -> (Changed, Vec<Problem>) {
        let order_matters = self.conflicts > 0
            || changed
                .iter()
                .any(|key| matches!(key.kind, Kind::Namespace | Kind::Node));
        if order_matters {
            return self.recompile_all(model);
        }
        let affected = self.affected(model, changed);
        let mut touched = TouchedKeys::default();
        let mut problems = Vec::new();
        for key in &affected {
            self.remove(key, &mut touched);
        }
        let mut pending = Pending::default();
        for key in affected {
            if let Some(mut fragment) = self.compile(model, &key) {
                problems.append(&mut fragment.problems);
                touched.add(&fragment.desired);
                self.insert(key, fragment, &mut pending);
            }
        }
        self.add_pending(pending);
        let touched = touched.into_touched();
        if self.conflicts > 0 {
            // Which of the claimants wins depends on the order of a full compile.
            let (changed, problems) = self.recompile_all(model);
            return (changed.merge(Changed::Keys(touched)), problems);
        }
        self.release_unused(&touched);
        (Changed::Keys(touched), problems)
    }

    /// The Services whose inputs are among `changed`, in key order.
    fn affected(&mut self, model: &Model, changed: &BTreeSet<ObjectKey>) -> BTreeSet<ObjectKey> {
        // Listed as found, repeats and all, and sorted once (see TouchedKeys).
        let mut affected = Vec::new();
        // Pods come by namespace (the keys' order): its users once.
        let mut pods_of = None;
        for key in changed {
            match key.kind {
                Kind::Service => affected.push(key.clone()),
                Kind::Endpoints => affected.push(service_key(&key.namespace, &key.name)),
                Kind::EndpointSlice => {
                    // The Service it belonged to, and the one it belongs to now.
                    let now = model.get(key).and_then(|e| slice_service(&e.object));
                    let before = match now {
                        Some(now) => self.slice_services.insert(key.clone(), now.into()),
                        None => self.slice_services.remove(key),
                    };
                    if let Some(before) = before {
                        affected.push(service_key(&key.namespace, &before));
                    }
                    if let Some(now) = now {
                        affected.push(service_key(&key.namespace, now));
                    }
                }
                Kind::Pod if pods_of != Some(&key.namespace) => {
                    pods_of = Some(&key.namespace);
                    if let Some(users) = self.pod_users.get(&key.namespace) {
                        affected.extend(users.iter().cloned());
                    }
                }
                Kind::Pod | Kind::Namespace | Kind::Node | Kind::NetworkPolicy => {}
            }
        }
        affected.into_iter().collect()
    }

    fn compile(&mut self, model: &Model, key: &ObjectKey) -> Option<Fragment> {
        let entry = model.get(key)?;
        let Object::Service(service) = &entry.object else {
            return None;
        };
        Some(compile_service(
            &self.node,
            &mut self.ids,
            &mut self.owners,
            &mut self.maglev_size_reported,
            model,
            key,
            service,
            &entry.origin,
            self.views,
        ))
    }

    /// Moves a Service's fragment into the union (its frontends' and
    /// reverse-NAT entries by way of `pending`), keeping what it takes to take
    /// it out again.
    fn insert(&mut self, key: ObjectKey, fragment: Fragment, pending: &mut Pending) {
        let Fragment {
            desired: d,
            from_pods,
            conflict,
            ..
        } = fragment;
        if let Some(check) = health_check(&key, &d.frontends, &self.node.node_name) {
            self.health.insert(key.clone(), check);
        }
        let held = Held {
            heads: d.services.keys().filter(|k| k.slot == 0).copied().collect(),
            revnat: d.revnat.keys().copied().collect(),
            maglev: d.maglev.keys().copied().collect(),
            backends: d
                .backends
                .iter()
                .map(|(id, b)| (*id, b.state == BACKEND_ACTIVE))
                .collect(),
            frontends: if self.views { d.frontends } else { Vec::new() },
            from_pods,
            conflict,
        };
        pending.services.extend(d.services);
        pending.revnat.extend(d.revnat);
        self.desired.maglev.extend(d.maglev);
        self.desired.source_ranges.extend(d.source_ranges);
        for (id, backend) in d.backends {
            let refs = self.backend_refs.entry(id).or_default();
            refs.holders += 1;
            refs.active += u32::from(backend.state == BACKEND_ACTIVE);
            self.desired.backends.insert(id, with_state(backend, refs));
        }
        if from_pods {
            self.pod_users
                .entry(key.namespace.clone())
                .or_default()
                .insert(key.clone());
        }
        self.conflicts += usize::from(conflict);
        self.fragments.insert(key, held);
    }

    /// The pending entries into the union (no fragment's keys are another's:
    /// a frontend has one owner, and so has its rev-NAT id).
    fn add_pending(&mut self, pending: Pending) {
        let d = &mut self.desired;
        d.services = merged(std::mem::take(&mut d.services), pending.services);
        d.revnat = merged(std::mem::take(&mut d.revnat), pending.revnat);
    }

    /// Takes a Service's fragment out of the union, its keys into `touched`.
    /// Its ids stay allocated, and its backends no other fragment holds stay in
    /// the union, until `release_unused`: the recompiled Service likely wants
    /// them back.
    fn remove(&mut self, key: &ObjectKey, touched: &mut TouchedKeys) {
        let Some(held) = self.fragments.remove(key) else {
            return;
        };
        for head in &held.heads {
            let count = self.desired.services.remove(head).map_or(0, |v| v.count);
            touched.services.push(*head);
            for slot in 1..=count {
                let k = ServiceKey { slot, ..*head };
                self.desired.services.remove(&k);
                touched.services.push(k);
            }
            self.owners.remove(head);
        }
        for k in &held.revnat {
            self.desired.revnat.remove(k);
            self.desired.source_ranges.remove(k);
        }
        for k in &held.maglev {
            self.desired.maglev.remove(k);
        }
        touched.revnat.extend(held.revnat.iter());
        touched.maglev.extend(held.maglev.iter());
        for &(id, active) in &held.backends {
            touched.backends.push(id);
            if let Some(refs) = self.backend_refs.get_mut(&id) {
                refs.holders -= 1;
                refs.active -= u32::from(active);
                if refs.holders > 0
                    && let Some(backend) = self.desired.backends.get_mut(&id)
                {
                    *backend = with_state(*backend, refs);
                }
            }
        }
        if held.from_pods
            && let Some(users) = self.pod_users.get_mut(&key.namespace)
        {
            users.remove(key);
        }
        self.health.remove(key);
        self.conflicts -= usize::from(held.conflict);
    }

    /// Frees the ids of touched frontends, and the ids and union entries of
    /// touched backends no fragment holds any more.
    fn release_unused(&mut self, touched: &Touched) {
        for key in touched.services.iter().filter(|k| k.slot == 0) {
            if !self.desired.services.contains_key(key) {
                self.ids.release_frontend(key);
            }
        }
        for id in &touched.backends {
            if self.backend_refs.get(id).is_some_and(|refs| refs.holders == 0) {
                self.backend_refs.remove(id);
                if let Some(backend) = self.desired.backends.remove(id) {
                    self.ids.release_backend(&backend);
                }
            }
        }
    }
}

/// The health check a Service's frontends call for, if any: its ready endpoints
/// on this node, counted once whatever the ports.
fn health_check(key: &ObjectKey, frontends: &[FrontendView], node: &str) -> Option<(u16, HealthCheck)> {
    let port = frontends.iter().find_map(|f| f.health_check_node_port)?;
    let here = NodeRef::this_node(node);
    let local: BTreeSet<_> = frontends
        .iter()
        .flat_map(|f| &f.backends)
        .filter(|b| b.state == BackendState::Active && here.is_some() && b.node_name == here)
        .map(|b| b.address.ip())
        .collect();
    let check = HealthCheck {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        local_endpoints: local.len(),
    };
    Some((port, check))
}

/// `map` with full leaves: collecting entries in key order builds the tree
/// bottom-up (`BTreeMap`'s bulk build) instead of inserting one by one.
pub(crate) fn packed<K: Ord, V>(map: BTreeMap<K, V>) -> BTreeMap<K, V> {
    map.into_iter().collect()
}

/// `map` with `entries` added. Fewer than the map holds are inserted one by
/// one; more (a cluster's first Services, a change to most of them), each at
/// a random place of a large tree, cost more that way than rebuilding the tree
/// from both in key order (bottom-up, with full leaves: about 0.15 us an
/// entry, where an insert into a tree of a million takes 0.2 us and more).
/// Either way an entry replaces the map's under its key.
fn merged<K: Ord, V>(mut map: BTreeMap<K, V>, entries: Vec<(K, V)>) -> BTreeMap<K, V> {
    if entries.len() < map.len() {
        map.extend(entries);
        map
    } else {
        // Collecting sorts (the map's run is sorted already) and builds.
        map.into_iter().chain(entries).collect()
    }
}

/// A backend is active if any Service sees it ready.
fn with_state(backend: Backend, refs: &BackendRefs) -> Backend {
    Backend {
        state: if refs.active > 0 {
            BACKEND_ACTIVE
        } else {
            BACKEND_TERMINATING
        },
        ..backend
    }
}

fn service_key(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey::new(Kind::Service, namespace, name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Rng;

    /// Keys that differ in a few values of every field, so that each field
    /// decides some comparisons.
    fn random_keys(rng: &mut Rng, n: usize) -> Vec<ServiceKey> {
        let byte = |rng: &mut Rng| [0u8, 1, 127, 128, 255][rng.below(5)];
        (0..n)
            .map(|_| {
                let mut addr = [0u8; 16];
                for b in &mut addr {
                    *b = byte(rng);
                }
                ServiceKey {
                    addr,
                    port: u16::from_ne_bytes([byte(rng), byte(rng)]),
                    slot: u16::from_ne_bytes([byte(rng), byte(rng)]),
                    proto: byte(rng),
                    family: byte(rng),
                    scope: byte(rng),
                    _pad: byte(rng),
                }
            })
            .collect()
    }

    #[test]
    fn entries_merged_in_are_the_maps_entries_either_way() {
        let mut rng = Rng(0x0dd_ba11);
        for (held, added) in [(1_000, 10), (1_000, 700), (500, 600), (10, 1_000), (0, 50)] {
            let keys = random_keys(&mut rng, held + added);
            let map: BTreeMap<ServiceKey, usize> = keys[..held].iter().map(|k| (*k, 0)).collect();
            // Some added keys are held already: theirs replace the map's.
            let entries: Vec<(ServiceKey, usize)> = keys[held..]
                .iter()
                .chain(keys.iter().take(added / 4))
                .enumerate()
                .map(|(i, k)| (*k, i + 1))
                .collect();
            let mut expected = map.clone();
            expected.extend(entries.iter().copied());
            assert_eq!(merged(map, entries), expected, "{held} held, {added} added");
        }
    }
}
