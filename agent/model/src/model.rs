//! The cluster model: every object the sources have seen, keyed by (kind, namespace,
//! name). Sources (API watchers, a YAML directory) write it; compilers read it.

use std::{
    collections::{BTreeMap, BTreeSet, btree_map},
    sync::Arc,
};

use k8s_openapi::api::core::v1::Endpoints;

use crate::{
    merge::add_to_lists,
    object::{Kind, Object, ObjectKey},
    pod::PodFacts,
    service::ServiceFacts,
    slice::SliceFacts,
};

/// One stored object and the source it came from (a file, `kube`), for problems.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub object: Object,
    /// Shared by every object of one origin (see [`Model::upsert`]).
    pub origin: Arc<str>,
}

/// What [`Model::put`] did.
#[derive(Debug)]
pub enum Put {
    /// The model held an equal object from the same origin: the one given back.
    Unchanged(Object),
    Inserted,
    /// The entry it replaced.
    Replaced(Entry),
}

/// The objects a compile reads. Ordered maps: every compile walks objects in the
/// same order, so its output (and id allocation) is deterministic.
#[derive(Clone, Debug, Default)]
pub struct Model {
    objects: BTreeMap<ObjectKey, Entry>,
    /// EndpointSlice names by (namespace, the Service named by their
    /// `kubernetes.io/service-name` label): a Service's slices without a scan.
    /// The names in order, in a vector: a Service has one or a few, and a
    /// `BTreeSet` allocates a 280-byte node for the first.
    slices: BTreeMap<(String, String), Vec<Box<str>>>,
    /// The model mirrors a cluster, whose controllers write every Service's
    /// EndpointSlices: those are its endpoints' only source (no stand-in from
    /// `Endpoints` objects or selected Pods, see `endpoints`).
    slices_only: bool,
    /// One copy of each origin's name: a file holds thousands of objects,
    /// and the API source is one origin for all.
    origins: BTreeSet<Arc<str>>,
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    /// A model holding `objects` (a later object with the same key replaces an earlier one).
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut model = Self::new();
        for object in objects {
            model.upsert(object, "");
        }
        model
    }

    /// Says that EndpointSlices are the only endpoint truth (a source that
    /// mirrors a cluster, where the controllers exist).
    pub fn set_slices_only(&mut self, slices_only: bool) {
        self.slices_only = slices_only;
    }

    pub fn slices_only(&self) -> bool {
        self.slices_only
    }

    /// Adds or replaces an object; returns the one it replaced.
    pub fn upsert(&mut self, object: Object, origin: &str) -> Option<Object> {
        match self.put(object, origin) {
            // What it replaced was equal to it.
            Put::Unchanged(object) => Some(object),
            Put::Inserted => None,
            Put::Replaced(old) => Some(old.object),
        }
    }

    /// Adds an object, or replaces the one under its key unless that one is
    /// equal and from the same origin: one search of the objects.
    pub fn put(&mut self, mut object: Object, origin: &str) -> Put {
        object.normalize();
        let origin = self.origin(origin);
        let new = slice_service(&object).map(str::to_owned);
        // The key again only where the slice index changes.
        let (old, reindex) = match self.objects.entry(object.key()) {
            btree_map::Entry::Occupied(mut held) => {
                if unchanged(held.get(), &object, &origin) {
                    return Put::Unchanged(object);
                }
                let old = std::mem::replace(held.get_mut(), Entry { object, origin });
                let moved = slice_service(&old.object) != new.as_deref();
                (Some(old), moved.then(|| held.key().clone()))
            }
            btree_map::Entry::Vacant(slot) => {
                let key = new.is_some().then(|| slot.key().clone());
                slot.insert(Entry { object, origin });
                (None, key)
            }
        };
        if let Some(key) = reindex {
            self.reindex_slices([(key, old.as_ref(), new)]);
        }
        old.map_or(Put::Inserted, Put::Replaced)
    }

    /// [`Self::put`] of each of `batch` (objects of distinct keys), what each
    /// did, in the batch's order. A batch of more objects than the model
    /// holds (a cluster's manifests read first) rebuilds the objects' tree in
    /// one walk beside it, in key order: put one by one in that order, each
    /// would search the tree's rightmost path, some fifty comparisons of
    /// strings in a tree of 200,000.
    pub fn put_all(&mut self, batch: Vec<(Object, Arc<str>)>) -> Vec<Put> {
        if batch.len() < self.objects.len() {
            return batch
                .into_iter()
                .map(|(object, origin)| self.put(object, &origin))
                .collect();
        }
        let mut batch: Vec<(usize, ObjectKey, Object, Arc<str>)> = batch
            .into_iter()
            .enumerate()
            .map(|(at, (mut object, origin))| {
                object.normalize();
                (at, object.key(), object, self.origin(&origin))
            })
            .collect();
        // Sorted already, as a rule: a check.
        batch.sort_by(|a, b| a.1.cmp(&b.1));
        debug_assert!(batch.is_sorted_by(|a, b| a.1 < b.1), "distinct keys");
        let mut done: Vec<(usize, Put)> = Vec::with_capacity(batch.len());
        let mut all = Vec::with_capacity(self.objects.len() + batch.len());
        let mut held = std::mem::take(&mut self.objects).into_iter().peekable();
        let mut reindex = Vec::new();
        for (at, key, object, origin) in batch {
            all.extend(std::iter::from_fn(|| held.next_if(|(k, _)| *k < key)));
            match held.next_if(|(k, _)| *k == key) {
                Some((key, old)) if unchanged(&old, &object, &origin) => {
                    all.push((key, old));
                    done.push((at, Put::Unchanged(object)));
                }
                old => {
                    let old = old.map(|(_, old)| old);
                    let new = slice_service(&object).map(str::to_owned);
                    if old.as_ref().and_then(|old| slice_service(&old.object)) != new.as_deref() {
                        reindex.push((key.clone(), done.len(), new));
                    }
                    all.push((key, Entry { object, origin }));
                    done.push((at, old.map_or(Put::Inserted, Put::Replaced)));
                }
            }
        }
        all.extend(held);
        // In key order: built bottom-up.
        self.objects = all.into_iter().collect();
        self.reindex_slices(reindex.into_iter().map(|(key, i, new)| {
            let old = match &done[i].1 {
                Put::Replaced(old) => Some(old),
                _ => None,
            };
            (key, old, new)
        }));
        done.sort_by_key(|(at, _)| *at);
        done.into_iter().map(|(_, put)| put).collect()
    }

    /// One copy of each origin's name.
    fn origin(&mut self, origin: &str) -> Arc<str> {
        match self.origins.get(origin) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = origin.into();
                self.origins.insert(shared.clone());
                shared
            }
        }
    }

    /// The slice index after each object under `key` changed from `old` to
    /// one of Service `new` (a slice relabelled leaves its old Service); the
    /// additions go in together.
    fn reindex_slices<'o>(
        &mut self,
        moves: impl IntoIterator<Item = (ObjectKey, Option<&'o Entry>, Option<String>)>,
    ) {
        let mut adds = Vec::new();
        for (key, old, new) in moves {
            if let Some(service) = old.and_then(|old| slice_service(&old.object)) {
                self.unindex_slice(&key, service);
            }
            if let Some(service) = new {
                adds.push(((key.namespace, service), key.name.into()));
            }
        }
        add_to_lists(&mut self.slices, adds, |_, _| {});
    }

    /// Removes an object; returns it if it was there.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<Object> {
        let old = self.objects.remove(key)?.object;
        if let Some(service) = slice_service(&old) {
            self.unindex_slice(key, service);
        }
        Some(old)
    }

    fn unindex_slice(&mut self, key: &ObjectKey, service: &str) {
        let index = (key.namespace.clone(), service.to_owned());
        if let Some(names) = self.slices.get_mut(&index) {
            if let Ok(at) = names.binary_search_by(|n| (**n).cmp(key.name.as_str())) {
                names.remove(at);
            }
            if names.is_empty() {
                self.slices.remove(&index);
            }
        }
    }

    /// The EndpointSlices of Service `namespace/service`, in slice-name order.
    pub fn slices_of(&self, namespace: &str, service: &str) -> Vec<&SliceFacts> {
        let Some(names) = self.slices.get(&(namespace.to_owned(), service.to_owned())) else {
            return Vec::new();
        };
        names
            .iter()
            .filter_map(|name| {
                match &self
                    .objects
                    .get(&ObjectKey::new(Kind::EndpointSlice, namespace, &**name))?
                    .object
                {
                    Object::EndpointSlice(s) => Some(s.as_ref()),
                    _ => None,
                }
            })
            .collect()
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Entry> {
        self.objects.get(key)
    }

    /// Rebuilds the object maps with full B-tree leaves (see
    /// `services::packed`): a first list or read of a cluster fills them
    /// about two-thirds full, a third more memory than their entries need
    /// for as long as the cluster stays.
    pub fn pack(&mut self) {
        use crate::services::packed;
        self.objects = packed(std::mem::take(&mut self.objects));
        self.slices = packed(std::mem::take(&mut self.slices));
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&ObjectKey, &Entry)> {
        self.objects.iter()
    }

    /// Entries of one kind, in (namespace, name) order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (&ObjectKey, &Entry)> {
        let start = ObjectKey::new(kind, "", "");
        self.objects
            .range(start..)
            .take_while(move |(key, _)| key.kind == kind)
    }

    pub fn services(&self) -> impl Iterator<Item = (&ObjectKey, &ServiceFacts, &str)> {
        self.of_kind(Kind::Service)
            .filter_map(|(key, entry)| match &entry.object {
                Object::Service(s) => Some((key, s.as_ref(), &*entry.origin)),
                _ => None,
            })
    }

    pub fn endpoint_slices(&self) -> impl Iterator<Item = (&ObjectKey, &SliceFacts)> {
        self.of_kind(Kind::EndpointSlice)
            .filter_map(|(key, entry)| match &entry.object {
                Object::EndpointSlice(s) => Some((key, s.as_ref())),
                _ => None,
            })
    }

    pub fn endpoints(&self, namespace: &str, name: &str) -> Option<&Endpoints> {
        match &self
            .objects
            .get(&ObjectKey::new(Kind::Endpoints, namespace, name))?
            .object
        {
            Object::Endpoints(e) => Some(e),
            _ => None,
        }
    }

    /// Pods of one namespace, in name order.
    pub fn pods_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a PodFacts> + 'a {
        let start = ObjectKey::new(Kind::Pod, namespace, "");
        self.objects
            .range(start..)
            .take_while(move |(key, _)| key.kind == Kind::Pod && key.namespace == namespace)
            .filter_map(|(_, entry)| match &entry.object {
                Object::Pod(p) => Some(p.as_ref()),
                _ => None,
            })
    }
}

/// Whether `object` of `origin` is what `held` is already.
fn unchanged(held: &Entry, object: &Object, origin: &Arc<str>) -> bool {
    held.origin == *origin && held.object == *object
}

/// The Service an EndpointSlice belongs to, by its label (unlabelled slices
/// belong to none).
pub(crate) fn slice_service(object: &Object) -> Option<&str> {
    let Object::EndpointSlice(slice) = object else {
        return None;
    };
    slice.service()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{Pod, Service},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    fn svc(ns: Option<&str>, name: &str) -> Object {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: ns.map(Into::into),
                ..Default::default()
            },
            ..Default::default()
        }
        .into()
    }

    #[test]
    fn upsert_replaces_and_remove_deletes() {
        let mut model = Model::new();
        assert!(model.upsert(svc(Some("a"), "x"), "f.yaml").is_none());
        assert!(model.upsert(svc(Some("a"), "x"), "g.yaml").is_some());
        assert_eq!(model.len(), 1);
        let key = ObjectKey::new(Kind::Service, "a", "x");
        assert_eq!(model.get(&key).map(|e| &*e.origin), Some("g.yaml"));
        assert!(model.remove(&key).is_some());
        assert!(model.is_empty());
    }

    /// `put_all` does what `put` one by one does, by either way (a batch
    /// smaller than the model, or not): the objects, the slice index, and
    /// what each put did.
    #[test]
    fn put_all_is_put_one_by_one() {
        use crate::testing::{Rng, service, slice};
        let mut rng = Rng(7);
        let random = |rng: &mut Rng| -> (Object, Arc<str>) {
            let name = format!("o{}", rng.below(12));
            let object: Object = match rng.below(3) {
                0 => service("ns", &name)
                    .cluster_ip(["10.0.0.1", "10.0.0.2"][rng.below(2)])
                    .into(),
                // Relabelled between Services at times.
                _ => slice("ns", &name, ["a", "b"][rng.below(2)]).into(),
            };
            (object, ["f.yaml", "g.yaml"][rng.below(2)].into())
        };
        let state = |m: &Model| {
            let objects: Vec<(ObjectKey, Entry)> = m.entries().map(|(k, e)| (k.clone(), e.clone())).collect();
            (objects, m.slices.clone())
        };
        let outcome = |p: &Put| match p {
            Put::Unchanged(o) => (0, Some(o.clone())),
            Put::Inserted => (1, None),
            Put::Replaced(old) => (2, Some(old.object.clone())),
        };
        let mut ways = [0, 0];
        for round in 0..200 {
            let mut model = Model::new();
            for _ in 0..rng.below(10) {
                let (object, origin) = random(&mut rng);
                model.put(object, &origin);
            }
            let mut one_by_one = model.clone();
            // Distinct keys.
            let mut batch: BTreeMap<ObjectKey, (Object, Arc<str>)> = BTreeMap::new();
            for _ in 0..rng.below(12) {
                let (object, origin) = random(&mut rng);
                batch.insert(object.key(), (object, origin));
            }
            let mut batch: Vec<(Object, Arc<str>)> = batch.into_values().collect();
            if round % 2 == 1 {
                batch.reverse();
            }
            ways[usize::from(batch.len() < model.len())] += 1;
            let want: Vec<_> = batch
                .iter()
                .map(|(object, origin)| outcome(&one_by_one.put(object.clone(), origin)))
                .collect();
            let got: Vec<_> = model.put_all(batch).iter().map(outcome).collect();
            assert_eq!(got, want, "round {round}");
            assert_eq!(state(&model), state(&one_by_one), "round {round}");
        }
        assert!(ways.iter().all(|n| *n > 20), "both ways are tried: {ways:?}");
    }

    #[test]
    fn missing_namespace_means_default() {
        let model = Model::from_objects([svc(None, "x")]);
        let (key, service, _) = model.services().next().expect("one service");
        assert_eq!(key.namespace, "default");
        assert_eq!(&*service.meta.namespace, "default");
    }

    #[test]
    fn of_kind_and_pods_in_stay_in_their_range() {
        let pod = |ns: &str, name: &str| -> Object {
            Pod {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    ..Default::default()
                },
                ..Default::default()
            }
            .into()
        };
        let model = Model::from_objects([pod("a", "1"), pod("b", "2"), pod("b", "3"), svc(Some("b"), "s")]);
        let names: Vec<_> = model.pods_in("b").map(|p| p.meta.name.to_string()).collect();
        assert_eq!(names, ["2", "3"]);
        assert_eq!(model.of_kind(Kind::Pod).count(), 3);
        assert_eq!(model.services().count(), 1);
    }
}
