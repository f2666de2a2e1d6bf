//! The cluster model: every object the sources have seen, keyed by (kind, namespace,
//! name). Sources (API watchers, a YAML directory) write it; compilers read it.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::api::core::v1::Endpoints;

use crate::{
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
    pub fn upsert(&mut self, mut object: Object, origin: &str) -> Option<Object> {
        object.normalize();
        let key = object.key();
        if let Some(service) = slice_service(&object) {
            let names = self
                .slices
                .entry((key.namespace.clone(), service.to_owned()))
                .or_default();
            if let Err(at) = names.binary_search_by(|n| (**n).cmp(key.name.as_str())) {
                names.insert(at, key.name.as_str().into());
            }
        }
        let origin = match self.origins.get(origin) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = origin.into();
                self.origins.insert(shared.clone());
                shared
            }
        };
        let entry = Entry { object, origin };
        let old = self.objects.insert(key.clone(), entry).map(|old| old.object)?;
        // A slice relabelled to another Service leaves its old one.
        if let Some(service) = slice_service(&old)
            && slice_service(&self.objects[&key].object) != Some(service)
        {
            self.unindex_slice(&key, service);
        }
        Some(old)
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
