//! The cluster source: the Kubernetes API, through kube-runtime watchers.
//!
//! One watcher per kind the model uses ([`WATCHED`]), on a tokio runtime of its
//! own thread; their events come to the sync thread through a channel and are
//! applied to the model there, objects trimmed to what the model reads
//! ([`Object::trimmed`]). A change costs what it touches: an object whose
//! trimmed content did not change (a status update Weir does not read, a
//! relist after `410 Gone`) is not reported changed.
//!
//! Lists are paged (500 objects a page), or streamed where asked for
//! ([`KubeOptions::streaming_lists`]). A watch that drops resumes from its
//! last resourceVersion (bookmarks keep it fresh); one that can no longer
//! resume lists again, and what the relist lacks is deleted once it is whole.
//! Errors (the API unreachable, a kind forbidden) retry with backoff and are
//! reported once per distinct error; meanwhile the model keeps what it had.
//!
//! In a cluster the controllers exist: EndpointSlices are the only source of
//! endpoints ([`Model::set_slices_only`]), and `Endpoints` objects are not
//! watched.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    time::{Duration, Instant},
};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    serde::de::DeserializeOwned,
};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt as _, watcher},
};
use tracing::{info, warn};
use weir_model::{Kind, Model, Object, ObjectKey};

use super::{Changes, Source, SourceError};

/// A kind the agent watches, and what RBAC must grant for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watched {
    pub kind: Kind,
    /// The API group ("" for the core group).
    pub group: &'static str,
    /// The resource's plural, as RBAC rules name it.
    pub resource: &'static str,
}

/// Every kind the cluster source watches (the ClusterRole in `manifests/`
/// grants exactly `get`, `list` and `watch` on these: a test holds them to
/// it).
pub const WATCHED: [Watched; 6] = [
    Watched {
        kind: Kind::Service,
        group: "",
        resource: "services",
    },
    Watched {
        kind: Kind::EndpointSlice,
        group: "discovery.k8s.io",
        resource: "endpointslices",
    },
    Watched {
        kind: Kind::Pod,
        group: "",
        resource: "pods",
    },
    Watched {
        kind: Kind::Namespace,
        group: "",
        resource: "namespaces",
    },
    Watched {
        kind: Kind::Node,
        group: "",
        resource: "nodes",
    },
    Watched {
        kind: Kind::NetworkPolicy,
        group: "networking.k8s.io",
        resource: "networkpolicies",
    },
];

/// Objects per list page.
const PAGE: u32 = 500;

/// How the cluster source reaches the API server.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// A kubeconfig (default: in-cluster configuration, or `KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// Streaming lists (a watch that starts with the current state,
    /// `sendInitialEvents`) instead of paged lists: no list held whole by the
    /// server or in flight. Kubernetes 1.34 serves them by default; 1.33 (the
    /// WatchList gate off) refuses such watches, so it is asked for.
    pub streaming_lists: bool,
}

/// What a watcher tells the sync thread.
enum Update {
    /// A relist of `kind` starts: what it does not list is gone once it ends.
    Init(Kind),
    Apply(Object, bool),
    Delete(ObjectKey),
    /// The relist of `kind` is whole.
    InitDone(Kind),
    Error(Kind, String),
}

/// A list of one kind under way.
#[derive(Default)]
struct Listing {
    /// Objects listed so far.
    objects: usize,
    /// Their keys, where the model held objects of the kind when the list
    /// began (a relist): those it does not list are gone at its end.
    seen: Option<BTreeSet<ObjectKey>>,
}

pub struct KubeSource {
    model: Model,
    updates: Receiver<Update>,
    /// Kinds listed whole at least once.
    listed: BTreeSet<Kind>,
    /// The kinds being listed.
    listing: BTreeMap<Kind, Listing>,
    /// The last error of each kind that has one (reported once per distinct
    /// error, cleared when the kind is listed again).
    failing: BTreeMap<Kind, String>,
    describe: String,
}

impl KubeSource {
    /// Connects (in-cluster configuration, `KUBECONFIG`, or `kubeconfig`) and
    /// starts the watchers on a thread of their own.
    pub fn start(options: KubeOptions) -> Result<Self, SourceError> {
        let KubeOptions {
            kubeconfig,
            streaming_lists,
        } = options;
        let (tx, updates) = mpsc::channel();
        let describe = match &kubeconfig {
            Some(path) => format!("kube ({})", path.display()),
            None => "kube".to_owned(),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("weir-kube".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let client = match client(kubeconfig).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let watchers = vec![
                        tokio::spawn(watch::<Service>(
                            client.clone(),
                            Kind::Service,
                            tx.clone(),
                            streaming_lists,
                        )),
                        tokio::spawn(watch::<EndpointSlice>(
                            client.clone(),
                            Kind::EndpointSlice,
                            tx.clone(),
                            streaming_lists,
                        )),
                        tokio::spawn(watch::<Pod>(
                            client.clone(),
                            Kind::Pod,
                            tx.clone(),
                            streaming_lists,
                        )),
                        tokio::spawn(watch::<Namespace>(
                            client.clone(),
                            Kind::Namespace,
                            tx.clone(),
                            streaming_lists,
                        )),
                        tokio::spawn(watch::<Node>(
                            client.clone(),
                            Kind::Node,
                            tx.clone(),
                            streaming_lists,
                        )),
                        tokio::spawn(watch::<NetworkPolicy>(
                            client,
                            Kind::NetworkPolicy,
                            tx,
                            streaming_lists,
                        )),
                    ];
                    futures::future::join_all(watchers).await;
                });
            })
            .map_err(|source| SourceError::Kube(format!("spawning the watcher thread: {source}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(SourceError::Kube(e)),
            Err(_) => return Err(SourceError::Kube("the watcher thread ended".into())),
        }
        let mut model = Model::new();
        model.set_slices_only(true);
        Ok(Self {
            model,
            updates,
            listed: BTreeSet::new(),
            listing: BTreeMap::new(),
            failing: BTreeMap::new(),
            describe,
        })
    }

    fn apply(&mut self, update: Update, changes: &mut Changes) {
        match update {
            Update::Init(kind) => {
                // A first list has nothing to delete: no record of its keys
                // (copies of 200,000 keys, freed at its end, left holes
                // between the objects kept with them).
                let relist = self.model.of_kind(kind).next().is_some();
                let listing = Listing {
                    objects: 0,
                    seen: relist.then(BTreeSet::new),
                };
                self.listing.insert(kind, listing);
            }
            Update::Apply(object, initial) => {
                let key = object.key();
                if initial && let Some(listing) = self.listing.get_mut(&key.kind) {
                    listing.objects += 1;
                    if let Some(seen) = &mut listing.seen {
                        seen.insert(key.clone());
                    }
                }
                if self.model.get(&key).is_none_or(|e| e.object != object) {
                    self.model.upsert(object, "kube");
                    changes.objects.insert(key);
                }
            }
            Update::Delete(key) => {
                if self.model.remove(&key).is_some() {
                    changes.objects.insert(key);
                }
            }
            Update::InitDone(kind) => {
                let listing = self.listing.remove(&kind).unwrap_or_default();
                let gone: Vec<ObjectKey> = match &listing.seen {
                    Some(seen) => self
                        .model
                        .of_kind(kind)
                        .map(|(k, _)| k)
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect(),
                    None => Vec::new(),
                };
                for key in gone {
                    self.model.remove(&key);
                    changes.objects.insert(key);
                }
                if self.listed.insert(kind) {
                    info!(kind = %kind, objects = listing.objects, "listed whole");
                }
                if self.failing.remove(&kind).is_some() {
                    info!(kind = %kind, "reading again");
                }
                changes.listed = true;
            }
            Update::Error(kind, error) => {
                if self.failing.get(&kind) != Some(&error) {
                    warn!(kind = %kind, %error, "watch failed: retrying with backoff; the maps keep their contents");
                    self.failing.insert(kind, error);
                    changes.listed = true;
                }
            }
        }
    }
}

async fn client(kubeconfig: Option<PathBuf>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no in-cluster configuration or KUBECONFIG: {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("building the API client: {e}"))
}

/// Watches every object of `K` and sends what happens, trimmed, until the
/// sync thread is gone.
async fn watch<K>(client: Client, kind: Kind, tx: Sender<Update>, streaming_lists: bool)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    Object: From<K>,
{
    let api: Api<K> = Api::all(client);
    let config = if streaming_lists {
        watcher::Config::default().streaming_lists()
    } else {
        watcher::Config::default().page_size(PAGE).any_semantic()
    };
    let mut events = watcher(api, config).default_backoff().boxed();
    loop {
        let update = match events.try_next().await {
            Ok(Some(watcher::Event::Init)) => Update::Init(kind),
            Ok(Some(watcher::Event::InitApply(o))) => Update::Apply(Object::from(o).trimmed(), true),
            Ok(Some(watcher::Event::Apply(o))) => Update::Apply(Object::from(o).trimmed(), false),
            Ok(Some(watcher::Event::Delete(o))) => Update::Delete(Object::from(o).key()),
            Ok(Some(watcher::Event::InitDone)) => Update::InitDone(kind),
            Ok(None) => return,
            Err(e) => Update::Error(kind, e.to_string()),
        };
        if tx.send(update).is_err() {
            return;
        }
    }
}

impl Source for KubeSource {
    fn next(&mut self, timeout: Duration) -> Result<Option<Changes>, SourceError> {
        let deadline = Instant::now() + timeout;
        let mut changes = Changes::default();
        // Wait for the first update, then take whatever else is there.
        let first = match self.updates.recv_timeout(timeout) {
            Ok(u) => u,
            Err(RecvTimeoutError::Timeout) => return Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(SourceError::Kube("the watchers stopped".into()));
            }
        };
        self.apply(first, &mut changes);
        // Batch what arrives together (a relist, a burst of changes), but
        // never hold a change back for long.
        let batch_until = (Instant::now() + Duration::from_millis(20)).min(deadline);
        while let Ok(u) = self
            .updates
            .recv_timeout(batch_until.saturating_duration_since(Instant::now()))
        {
            self.apply(u, &mut changes);
            if Instant::now() >= batch_until {
                break;
            }
        }
        Ok((!changes.objects.is_empty() || changes.listed).then_some(changes))
    }

    fn model(&self) -> &Model {
        &self.model
    }

    fn pack(&mut self) {
        self.model.pack();
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn listed(&self, kind: Kind) -> bool {
        self.listed.contains(&kind)
    }

    fn failing(&self) -> Vec<(Kind, String)> {
        self.failing.iter().map(|(k, e)| (*k, e.clone())).collect()
    }

    fn fails(&self, kind: Kind) -> bool {
        self.failing.contains_key(&kind)
    }
}
