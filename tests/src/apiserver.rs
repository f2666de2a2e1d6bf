//! A Kubernetes API server for the lab: the real HTTP API for the kinds Weir
//! watches, over HTTPS with a bearer token, as `weir-agent --source kube` meets
//! it in a cluster.
//!
//! - `GET` of a collection (all namespaces or one) with `limit`/`continue`
//!   pages taken from one snapshot, and `resourceVersion` in the list's
//!   metadata; `GET` of one object; `fieldSelector=metadata.name=...`.
//! - `watch=1` from a `resourceVersion`: the `ADDED`/`MODIFIED`/`DELETED`
//!   events since then, then live ones, `BOOKMARK`s when asked for them
//!   (`allowWatchBookmarks`), an `ERROR` event with a `410 Expired` status when
//!   the version is older than the history kept; `timeoutSeconds` honoured;
//!   streaming lists (`sendInitialEvents`: the state as `ADDED` events, then a
//!   `BOOKMARK` annotated `k8s.io/initial-events-end`).
//! - Objects stored as an API server returns them: `uid`, `resourceVersion`,
//!   `creationTimestamp`, `generation`, `managedFields` and kubectl's
//!   last-applied annotation (which a client should not keep),
//!   `kubernetes.io/metadata.name` on Namespaces, Service fields defaulted;
//!   the EndpointSlice mirroring controller's slices for the `Endpoints` of a
//!   Service without a selector.
//!
//! Tests steer it: [`ApiServer::apply`] and [`ApiServer::delete`] objects,
//! [`ApiServer::write`] a whole "file" of them (what a directory source
//! would read), drop every watch ([`ApiServer::drop_watches`]), forget the
//! history so that watches must relist ([`ApiServer::compact`],
//! [`ApiServer::trim_history`]), send bookmarks ([`ApiServer::bookmark`]),
//! forbid a kind ([`ApiServer::forbid`]), refuse streaming lists
//! ([`ApiServer::refuse_streaming_lists`]), answer slowly
//! ([`ApiServer::set_latency`]) or not at all ([`ApiServer::set_down`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use futures::{SinkExt as _, channel::mpsc};
use http_body_util::{Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{Netns, TempDir};

/// A kind the server serves: its path and names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Resource {
    /// `/api/v1` or `/apis/GROUP/VERSION`.
    pub prefix: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub api_version: &'static str,
    pub namespaced: bool,
}

/// Every kind the server serves.
pub const RESOURCES: [Resource; 7] = [
    Resource {
        prefix: "/api/v1",
        plural: "services",
        kind: "Service",
        api_version: "v1",
        namespaced: true,
    },
    Resource {
        prefix: "/apis/discovery.k8s.io/v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        api_version: "discovery.k8s.io/v1",
        namespaced: true,
    },
    Resource {
        prefix: "/api/v1",
        plural: "pods",
        kind: "Pod",
        api_version: "v1",
        namespaced: true,
    },
    Resource {
        prefix: "/api/v1",
        plural: "namespaces",
        kind: "Namespace",
        api_version: "v1",
        namespaced: false,
    },
    Resource {
        prefix: "/api/v1",
        plural: "nodes",
        kind: "Node",
        api_version: "v1",
        namespaced: false,
    },
    Resource {
        prefix: "/apis/networking.k8s.io/v1",
        plural: "networkpolicies",
        kind: "NetworkPolicy",
        api_version: "networking.k8s.io/v1",
        namespaced: true,
    },
    Resource {
        prefix: "/api/v1",
        plural: "endpoints",
        kind: "Endpoints",
        api_version: "v1",
        namespaced: true,
    },
];

fn resource_of(kind: &str) -> Resource {
    *RESOURCES
        .iter()
        .find(|r| r.kind == kind)
        .unwrap_or_else(|| panic!("the API double serves no {kind}"))
}

/// (kind, namespace, name).
type Key = (&'static str, String, String);

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change, oldest first: (resourceVersion, kind, type, object).
    history: Vec<(u64, &'static str, &'static str, Value)>,
    /// Watches from a version below this get 410 (the history was compacted).
    oldest: u64,
    forbidden: BTreeSet<&'static str>,
    down: bool,
    /// How long every list and get takes to answer (a slow API server).
    latency: Duration,
    /// Streaming lists refused, as Kubernetes 1.33 (WatchList gate off) does.
    refuse_streaming: bool,
    /// Snapshots of lists being paged through, by continue token.
    pages: BTreeMap<String, (u64, Arc<Vec<Value>>)>,
    next_page: u64,
    /// Objects per "file" written with [`ApiServer::write`].
    files: BTreeMap<String, BTreeSet<Key>>,
    /// Requests served, by kind and verb (`list`, `watch`, `get`).
    requests: BTreeMap<(String, &'static str), u64>,
}

/// What watchers are told: a change happened (its resourceVersion), or every
/// watch must end (the generation moved).
#[derive(Clone, Copy, Debug, Default)]
struct Signal {
    rv: u64,
    generation: u64,
    bookmark: u64,
}

pub struct ApiServer {
    state: Arc<Mutex<State>>,
    signal: watch::Sender<Signal>,
    rt: tokio::runtime::Runtime,
    tls: Arc<rustls::ServerConfig>,
    ca_pem: String,
    token: String,
    dir: TempDir,
    /// The kubeconfig of each namespace served in, by namespace name.
    served: Mutex<BTreeMap<String, PathBuf>>,
}

const PORT: u16 = 6443;

impl Default for ApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiServer {
    pub fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "weir-lab CA");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let key = rcgen::KeyPair::generate().expect("server key");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), ca.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("TLS config");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Self {
            state: Arc::new(Mutex::new(State {
                rv: 1,
                ..State::default()
            })),
            signal: watch::channel(Signal::default()).0,
            rt,
            tls: Arc::new(tls),
            ca_pem: ca.pem(),
            token: format!("weir-lab-token-{}", std::process::id()),
            dir: TempDir::new("weir-apiserver-"),
            served: Mutex::new(BTreeMap::new()),
        }
    }

    /// Serves on `127.0.0.1:6443` inside `ns` (a lab node) and returns the path
    /// of a kubeconfig for it: an agent in that namespace connects as it would
    /// to a cluster's API server.
    pub fn listen_in(&self, ns: &Netns) -> PathBuf {
        let mut served = self.served.lock().expect("served");
        if let Some(path) = served.get(ns.name()) {
            return path.clone();
        }
        let listener = ns.run(move || {
            let l = std::net::TcpListener::bind(("127.0.0.1", PORT)).expect("bind the API double");
            l.set_nonblocking(true).expect("nonblocking");
            l
        });
        let (state, signal, tls, token) = (
            self.state.clone(),
            self.signal.clone(),
            self.tls.clone(),
            self.token.clone(),
        );
        self.rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                if state.lock().expect("state").down {
                    drop(tcp); // unreachable: the connection is closed at once
                    continue;
                }
                let (state, signal, token, acceptor) =
                    (state.clone(), signal.clone(), token.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        service_fn(move |req| serve(req, state.clone(), signal.clone(), token.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let path = self.dir.join(format!("{}.kubeconfig", ns.name()));
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "lab",
                "cluster": {
                    "server": format!("https://127.0.0.1:{PORT}"),
                    "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes()),
                },
            }],
            "users": [{ "name": "weir", "user": { "token": self.token } }],
            "contexts": [{ "name": "lab", "context": { "cluster": "lab", "user": "weir" } }],
            "current-context": "lab",
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write kubeconfig");
        served.insert(ns.name().to_owned(), path.clone());
        path
    }

    /// Creates or replaces an object, as `kubectl apply` would; returns its
    /// resourceVersion.
    pub fn apply(&self, object: &Value) -> u64 {
        let rv = {
            let mut s = self.state.lock().expect("state");
            apply_locked(&mut s, object)
        };
        self.notify(rv);
        rv
    }

    /// Deletes an object (no error when it is not there).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let rv = {
            let mut s = self.state.lock().expect("state");
            delete_locked(&mut s, resource_of(kind).kind, namespace, name)
        };
        if let Some(rv) = rv {
            self.notify(rv);
        }
    }

    /// Makes the objects of "file" `file` exactly `objects`, as a directory
    /// source would read a file rewritten: new and changed objects applied,
    /// those the file no longer holds deleted.
    pub fn write(&self, file: &str, objects: &[Value]) {
        let rv = {
            let mut s = self.state.lock().expect("state");
            let mut now = BTreeSet::new();
            let mut rv = 0;
            for o in objects {
                rv = apply_locked(&mut s, o);
                now.insert(key_of(o));
            }
            let before = s.files.insert(file.to_owned(), now.clone()).unwrap_or_default();
            for (kind, ns, name) in before.difference(&now) {
                if let Some(r) = delete_locked(&mut s, kind, ns, name) {
                    rv = r;
                }
            }
            rv
        };
        self.notify(rv);
    }

    /// Removes a "file"'s objects.
    pub fn remove(&self, file: &str) {
        self.write(file, &[]);
        self.state.lock().expect("state").files.remove(file);
    }

    /// The object stored now, if any.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let s = self.state.lock().expect("state");
        s.objects
            .get(&(resource_of(kind).kind, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Ends every watch (clients resume from their last resourceVersion).
    pub fn drop_watches(&self) {
        self.signal.send_modify(|s| s.generation += 1);
    }

    /// Forgets the history: a watch resuming from any version seen so far gets
    /// `410 Expired` and must list again.
    pub fn compact(&self) {
        {
            let mut s = self.state.lock().expect("state");
            s.rv += 1;
            s.oldest = s.rv;
            s.history.clear();
        }
        self.drop_watches();
    }

    /// Forgets the history up to now, as etcd's compaction does, and ends
    /// every watch: a watch resuming from the current resourceVersion (a
    /// client that took the last BOOKMARK) goes on; one resuming from an
    /// older one gets `410 Expired`.
    pub fn trim_history(&self) {
        {
            let mut s = self.state.lock().expect("state");
            s.oldest = s.rv;
            s.history.clear();
        }
        self.drop_watches();
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.lock().expect("state").rv
    }

    /// Refuses streaming lists (`sendInitialEvents`) with 422, as a server
    /// without the WatchList feature does (Kubernetes 1.33), or no longer.
    pub fn refuse_streaming_lists(&self, refuse: bool) {
        self.state.lock().expect("state").refuse_streaming = refuse;
    }

    /// Makes every list and get take `latency` to answer.
    pub fn set_latency(&self, latency: Duration) {
        self.state.lock().expect("state").latency = latency;
    }

    /// Sends a BOOKMARK on every watch that asked for them.
    pub fn bookmark(&self) {
        self.signal.send_modify(|s| s.bookmark += 1);
    }

    /// Answers every request for `kind` with 403 Forbidden (or no longer).
    pub fn forbid(&self, kind: &str, forbidden: bool) {
        let kind = resource_of(kind).kind;
        {
            let mut s = self.state.lock().expect("state");
            if forbidden {
                s.forbidden.insert(kind);
            } else {
                s.forbidden.remove(kind);
            }
        }
        if forbidden {
            self.drop_watches();
        }
    }

    /// Closes every connection as it is made, and ends every watch (an API
    /// server that is down), or serves again.
    pub fn set_down(&self, down: bool) {
        self.state.lock().expect("state").down = down;
        if down {
            self.drop_watches();
        }
    }

    /// How many requests of `verb` (`list`, `watch`, `get`) were served for
    /// `kind`.
    pub fn requests(&self, kind: &str, verb: &str) -> u64 {
        let s = self.state.lock().expect("state");
        s.requests
            .iter()
            .filter(|((k, v), _)| k == kind && *v == verb)
            .map(|(_, n)| *n)
            .sum()
    }

    fn notify(&self, rv: u64) {
        self.signal.send_modify(|s| s.rv = s.rv.max(rv));
    }
}

fn key_of(o: &Value) -> Key {
    let r = resource_of(o["kind"].as_str().expect("object without kind"));
    let name = o["metadata"]["name"]
        .as_str()
        .expect("object without name")
        .to_owned();
    let ns = if r.namespaced {
        o["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned()
    } else {
        String::new()
    };
    (r.kind, ns, name)
}

/// Stores `object` as an API server would return it; its resourceVersion.
fn apply_locked(s: &mut State, object: &Value) -> u64 {
    let key = key_of(object);
    let old = s.objects.get(&key).cloned();
    let mut o = object.clone();
    let r = resource_of(key.0);
    if r.namespaced {
        o["metadata"]["namespace"] = json!(key.1);
    }
    defaults(&mut o, r.kind, &key.2);
    // Unchanged objects are not rewritten, as `kubectl apply` of the same file.
    if let Some(old) = &old
        && same_content(old, &o)
    {
        return s.rv;
    }
    s.rv += 1;
    let rv = s.rv;
    let meta = &mut o["metadata"];
    meta["resourceVersion"] = json!(rv.to_string());
    meta["uid"] = json!(
        old.as_ref()
            .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("00000000-0000-4000-8000-{rv:012x}"))
    );
    meta["creationTimestamp"] = json!("2026-12-04T00:00:00Z");
    meta["generation"] = json!(
        old.as_ref()
            .and_then(|o| o["metadata"]["generation"].as_i64())
            .unwrap_or(0)
            + 1
    );
    // What every object carries and a careful client drops.
    meta["managedFields"] = json!([{
        "manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": r.api_version,
        "time": "2026-12-04T00:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": { "f:metadata": {}, "f:spec": {} },
    }]);
    let applied = serde_json::to_string(object).unwrap_or_default();
    if meta["annotations"].is_null() {
        meta["annotations"] = json!({});
    }
    meta["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = json!(applied);
    let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
    s.history.push((rv, r.kind, kind, o.clone()));
    s.objects.insert(key.clone(), o.clone());
    if r.kind == "Endpoints" {
        return mirror_endpoints(s, &key.1, &key.2, Some(&o)).max(rv);
    }
    rv
}

/// The EndpointSlice mirroring controller: the `Endpoints` of a Service without
/// a selector become EndpointSlices (one per subset and address family)
/// labelled as that controller labels them; gone when the `Endpoints` go.
fn mirror_endpoints(s: &mut State, ns: &str, name: &str, endpoints: Option<&Value>) -> u64 {
    let selectorless = s
        .objects
        .get(&("Service", ns.to_owned(), name.to_owned()))
        .is_some_and(|svc| {
            svc["spec"]["selector"]
                .as_object()
                .is_none_or(serde_json::Map::is_empty)
        });
    let mut slices = Vec::new();
    let subsets = endpoints
        .filter(|_| selectorless)
        .and_then(|e| e["subsets"].as_array())
        .cloned();
    for (i, subset) in subsets.unwrap_or_default().iter().enumerate() {
        let listed = |field: &str, ready: bool| {
            subset[field]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |a| (a, ready))
        };
        let all: Vec<(Value, bool)> = listed("addresses", true)
            .chain(listed("notReadyAddresses", false))
            .collect();
        for family in ["IPv4", "IPv6"] {
            let of_family: Vec<Value> = all
                .iter()
                .filter(|(a, _)| {
                    a["ip"]
                        .as_str()
                        .is_some_and(|ip| ip.contains(':') == (family == "IPv6"))
                })
                .map(|(a, ready)| {
                    let mut e = json!({
                        "addresses": [a["ip"]],
                        "conditions": { "ready": ready, "serving": ready, "terminating": false },
                    });
                    if let Some(node) = a["nodeName"].as_str() {
                        e["nodeName"] = json!(node);
                    }
                    e
                })
                .collect();
            if of_family.is_empty() {
                continue;
            }
            slices.push(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{name}-mirror-{i}-{}", family.to_lowercase()), "namespace": ns,
                    "labels": {
                        "kubernetes.io/service-name": name,
                        "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io",
                    },
                },
                "addressType": family,
                "endpoints": of_family,
                "ports": subset["ports"].clone(),
            }));
        }
    }
    let prefix = format!("{name}-mirror-");
    let stale: Vec<String> = s
        .objects
        .keys()
        .filter(|(k, n, o)| *k == "EndpointSlice" && n == ns && o.starts_with(&prefix))
        .map(|(_, _, o)| o.clone())
        .filter(|o| !slices.iter().any(|sl| sl["metadata"]["name"] == *o))
        .collect();
    let mut rv = 0;
    for o in stale {
        rv = rv.max(delete_locked(s, "EndpointSlice", ns, &o).unwrap_or(0));
    }
    for slice in &slices {
        rv = rv.max(apply_locked(s, slice));
    }
    rv
}

fn delete_locked(s: &mut State, kind: &'static str, ns: &str, name: &str) -> Option<u64> {
    let mut o = s.objects.remove(&(kind, ns.to_owned(), name.to_owned()))?;
    s.rv += 1;
    o["metadata"]["resourceVersion"] = json!(s.rv.to_string());
    let rv = s.rv;
    s.history.push((rv, kind, "DELETED", o));
    if kind == "Endpoints" {
        return Some(mirror_endpoints(s, ns, name, None).max(rv));
    }
    Some(rv)
}

/// Whether two stored forms hold the same object (server fields aside).
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            for f in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "generation",
                "managedFields",
            ] {
                m.remove(f);
            }
            if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
                if a.is_empty() {
                    m.remove("annotations");
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

/// The API server's defaulting of what it stores, for the fields Weir reads.
fn defaults(o: &mut Value, kind: &str, name: &str) {
    match kind {
        "Namespace" => {
            o["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            o["spec"]["finalizers"] = json!(["kubernetes"]);
            o["status"]["phase"] = json!("Active");
        }
        "Service" => {
            let spec = &mut o["spec"];
            for (field, value) in [
                ("type", json!("ClusterIP")),
                ("sessionAffinity", json!("None")),
                ("internalTrafficPolicy", json!("Cluster")),
            ] {
                if spec[field].is_null() {
                    spec[field] = value;
                }
            }
            let external = matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"));
            if external && spec["externalTrafficPolicy"].is_null() {
                spec["externalTrafficPolicy"] = json!("Cluster");
            }
            if let Some(ports) = spec["ports"].as_array_mut() {
                for p in ports {
                    if p["protocol"].is_null() {
                        p["protocol"] = json!("TCP");
                    }
                    if p["targetPort"].is_null() {
                        p["targetPort"] = p["port"].clone();
                    }
                }
            }
        }
        _ => {}
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = Response::new(BoxBody::new(Full::new(Bytes::from(body.to_string()))));
    *r.status_mut() = status;
    if let Ok(v) = "application/json".parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

/// The parts of a request path: the resource, a namespace, an object name.
fn route(path: &str) -> Option<(Resource, Option<String>, Option<String>)> {
    for r in RESOURCES {
        let Some(rest) = path.strip_prefix(r.prefix) else {
            continue;
        };
        let parts: Vec<&str> = rest.trim_matches('/').split('/').collect();
        let found = match parts.as_slice() {
            [p] if *p == r.plural => Some((None, None)),
            [p, name] if *p == r.plural => Some((None, Some((*name).to_owned()))),
            ["namespaces", ns, p] if *p == r.plural && r.namespaced => Some((Some((*ns).to_owned()), None)),
            ["namespaces", ns, p, name] if *p == r.plural && r.namespaced => {
                Some((Some((*ns).to_owned()), Some((*name).to_owned())))
            }
            _ => None,
        };
        if let Some((ns, name)) = found {
            return Some((r, ns, name));
        }
    }
    None
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether an object passes a `fieldSelector` (only `metadata.name=` and
/// `metadata.namespace=` are understood, as the lab needs).
fn selected(o: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector else { return true };
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some(("metadata.name", v)) => o["metadata"]["name"].as_str() == Some(v),
            Some(("metadata.namespace", v)) => o["metadata"]["namespace"].as_str() == Some(v),
            _ => true,
        })
}

async fn serve(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    signal: watch::Sender<Signal>,
    token: String,
) -> Result<Response<Body>, std::io::Error> {
    // Down: even a kept-alive connection is cut (an error from the service
    // makes hyper close it without an answer).
    if state.lock().expect("state").down {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the API server is down",
        ));
    }
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {token}"));
    if !authorized {
        return Ok(full(
            StatusCode::UNAUTHORIZED,
            status(401, "Unauthorized", "Unauthorized"),
        ));
    }
    let Some((r, ns, name)) = route(req.uri().path()) else {
        return Ok(full(
            StatusCode::NOT_FOUND,
            status(404, "NotFound", &format!("no route for {}", req.uri().path())),
        ));
    };
    let q = query(&req);
    let watching = matches!(q.get("watch").map(String::as_str), Some("1" | "true"));
    let verb = if watching {
        "watch"
    } else if name.is_some() {
        "get"
    } else {
        "list"
    };
    {
        let mut s = state.lock().expect("state");
        *s.requests.entry((r.kind.to_owned(), verb)).or_default() += 1;
        if s.forbidden.contains(r.kind) {
            let message = format!(
                "{} is forbidden: User \"system:serviceaccount:kube-system:weir\" cannot {verb} resource \"{}\" in API group \"{}\" at the cluster scope",
                r.plural,
                r.plural,
                r.api_version.split_once('/').map_or("", |(g, _)| g)
            );
            return Ok(full(StatusCode::FORBIDDEN, status(403, "Forbidden", &message)));
        }
    }
    let scope = Scope {
        kind: r.kind,
        namespace: ns.clone(),
        name: name.clone(),
        fields: q.get("fieldSelector").cloned(),
    };
    let in_scope = |key: &Key, o: &Value| scope.contains(key, o);
    if watching
        && q.get("sendInitialEvents").is_some_and(|v| v == "true")
        && state.lock().expect("state").refuse_streaming
    {
        let message = "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled";
        return Ok(full(
            StatusCode::UNPROCESSABLE_ENTITY,
            status(422, "Invalid", message),
        ));
    }
    if watching {
        return Ok(watch_stream(r, state, signal, q, scope.clone()));
    }
    let latency = state.lock().expect("state").latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut s = state.lock().expect("state");
    if let Some(name) = &name {
        let key = (r.kind, ns.clone().unwrap_or_default(), name.clone());
        return Ok(match s.objects.get(&key) {
            Some(o) => full(StatusCode::OK, o.clone()),
            None => full(
                StatusCode::NOT_FOUND,
                status(404, "NotFound", &format!("{} \"{name}\" not found", r.plural)),
            ),
        });
    }
    // A list: the first page snapshots the whole result; the rest are taken
    // from that snapshot, as etcd serves every page at the first one's version.
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let (rv, items, offset) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let Some((id, offset)) = token.split_once(':') else {
                return Ok(full(
                    StatusCode::BAD_REQUEST,
                    status(400, "BadRequest", "bad continue token"),
                ));
            };
            let Some((rv, items)) = s.pages.get(id).cloned() else {
                return Ok(full(
                    StatusCode::GONE,
                    status(410, "Expired", "the provided continue parameter is too old"),
                ));
            };
            (rv, items, offset.parse::<usize>().unwrap_or(0))
        }
        None => {
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|(k, o)| in_scope(k, o))
                .map(|(_, o)| o.clone())
                .collect();
            (s.rv, Arc::new(items), 0usize)
        }
    };
    let end = offset.saturating_add(limit).min(items.len());
    let page: Vec<Value> = items[offset.min(end)..end].to_vec();
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if end < items.len() {
        let id = match q.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => token
                .split_once(':')
                .map(|(id, _)| id.to_owned())
                .unwrap_or_default(),
            None => {
                s.next_page += 1;
                let id = s.next_page.to_string();
                s.pages.insert(id.clone(), (rv, Arc::clone(&items)));
                id
            }
        };
        metadata["continue"] = json!(format!("{id}:{end}"));
        metadata["remainingItemCount"] = json!(items.len() - end);
    } else if let Some((id, _)) = q.get("continue").and_then(|t| t.split_once(':')) {
        // The last page: the snapshot is done with.
        s.pages.remove(id);
    }
    let list = json!({
        "kind": format!("{}List", r.kind),
        "apiVersion": r.api_version,
        "metadata": metadata,
        "items": page,
    });
    Ok(full(StatusCode::OK, list))
}

/// Which objects a request is about.
#[derive(Clone)]
struct Scope {
    kind: &'static str,
    namespace: Option<String>,
    name: Option<String>,
    fields: Option<String>,
}

impl Scope {
    fn contains(&self, key: &Key, o: &Value) -> bool {
        key.0 == self.kind
            && self.namespace.as_ref().is_none_or(|ns| &key.1 == ns)
            && self.name.as_ref().is_none_or(|n| &key.2 == n)
            && selected(o, self.fields.as_ref())
    }
}

fn watch_stream(
    r: Resource,
    state: Arc<Mutex<State>>,
    signal: watch::Sender<Signal>,
    q: BTreeMap<String, String>,
    scope: Scope,
) -> Response<Body> {
    let in_scope = move |key: &Key, o: &Value| scope.contains(key, o);
    let (mut tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = q
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    // A streaming list (KEP-3157): the current state as ADDED events, then a
    // BOOKMARK annotated as the end of them.
    let streaming = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(3600), Duration::from_secs);
    let line = |v: Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
    tokio::spawn(async move {
        let mut rx_signal = signal.subscribe();
        let generation = rx_signal.borrow().generation;
        let mut bookmark_seen = rx_signal.borrow().bookmark;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut sent = from;
        // From 0 (or nothing): the current state as ADDED events, then live.
        let initial: Result<Vec<Value>, Value> = {
            let s = state.lock().expect("state");
            if streaming {
                sent = s.rv;
                Ok(s.objects
                    .iter()
                    .filter(|(k, o)| in_scope(k, o))
                    .map(|(_, o)| json!({ "type": "ADDED", "object": o }))
                    .chain([json!({ "type": "BOOKMARK", "object": {
                        "kind": r.kind, "apiVersion": r.api_version,
                        "metadata": {
                            "resourceVersion": s.rv.to_string(),
                            "annotations": { "k8s.io/initial-events-end": "true" },
                        },
                    }})])
                    .collect())
            } else if from != 0 && from < s.oldest {
                Err(
                    json!({ "type": "ERROR", "object": status(410, "Expired", &format!("too old resource version: {from} ({})", s.oldest)) }),
                )
            } else if from == 0 {
                sent = s.rv;
                Ok(s.objects
                    .iter()
                    .filter(|(k, o)| in_scope(k, o))
                    .map(|(_, o)| json!({ "type": "ADDED", "object": o }))
                    .collect())
            } else {
                Ok(Vec::new())
            }
        };
        let initial = match initial {
            Ok(events) => events,
            Err(gone) => {
                let _ = tx.send(line(gone)).await;
                return;
            }
        };
        for event in initial {
            if tx.send(line(event)).await.is_err() {
                return;
            }
        }
        loop {
            let events: Vec<(u64, Value)> = {
                let s = state.lock().expect("state");
                if s.down || s.forbidden.contains(r.kind) {
                    return;
                }
                s.history
                    .iter()
                    .filter(|(rv, kind, _, o)| *rv > sent && *kind == r.kind && in_scope(&key_of(o), o))
                    .map(|(rv, _, t, o)| (*rv, json!({ "type": t, "object": o })))
                    .collect()
            };
            for (rv, event) in events {
                if tx.send(line(event)).await.is_err() {
                    return;
                }
                sent = rv;
            }
            let current = *rx_signal.borrow();
            if current.generation != generation {
                return;
            }
            if bookmarks && current.bookmark != bookmark_seen {
                bookmark_seen = current.bookmark;
                let rv = state.lock().expect("state").rv;
                sent = sent.max(rv);
                let b = json!({ "type": "BOOKMARK", "object": {
                    "kind": r.kind, "apiVersion": r.api_version,
                    "metadata": { "resourceVersion": rv.to_string() },
                }});
                if tx.send(line(b)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                changed = rx_signal.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(deadline) => return,
                () = closed(&mut tx) => return,
            }
        }
    });
    let body = StreamBody::new(rx);
    let mut resp = Response::new(BoxBody::new(body));
    if let Ok(v) = "application/json".parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Resolves once the receiving side of `tx` is gone (the client left).
async fn closed<T>(tx: &mut mpsc::Sender<T>) {
    futures::future::poll_fn(|cx| match tx.poll_ready(cx) {
        std::task::Poll::Ready(Err(_)) => std::task::Poll::Ready(()),
        _ => std::task::Poll::Pending,
    })
    .await
}

/// The resources an address is served on, for tests that need the port.
pub fn address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], PORT))
}
