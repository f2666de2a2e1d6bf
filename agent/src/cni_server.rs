//! The unix socket on which `weir-cni` registers and unregisters pods.
//!
//! Connections are served concurrently (a tokio task each), so no client can
//! hold up another: a request must arrive whole within [`REQUEST_DEADLINE`] and
//! be at most [`MAX_REQUEST`] bytes, and at most [`MAX_CONNECTIONS`] are open at
//! once; past that, the oldest connection still waiting for its request is
//! closed to make room. `weir-cni` writes its request as soon as it connects,
//! so idle or trickling connections, however many, never keep its
//! registrations out. The requests themselves are handled one at a time (the
//! datapath is behind a mutex): an `ADD` and a `DEL` of the same pod never
//! interleave.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::unix::{fs::PermissionsExt as _, net::UnixListener},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
    task::AbortHandle,
};
use tracing::{info, warn};
use weir_agent_api::{Endpoint, Reply, Request};
use weir_common::EndpointInfo;
use weir_model::bounded;

use crate::{
    datapath::{Datapath, DatapathError, endpoint_key},
    metrics::Metrics,
};

/// How long a client has to send its whole request (and later to read the answer).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// The largest request taken: a registration is a few hundred bytes.
pub const MAX_REQUEST: u64 = 64 * 1024;
/// Connections open at once, at most.
pub const MAX_CONNECTIONS: usize = 256;
/// The longest container id or interface name taken in a request (the plugin's
/// own limits, `CNI_CONTAINERID` and Linux's `IFNAMSIZ`).
const MAX_CONTAINER_ID: usize = 1024;
const MAX_IFNAME: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    // Boxed: the datapath's errors carry paths and syscall context, and this enum
    // travels on every request's happy path.
    #[error(transparent)]
    Datapath(Box<DatapathError>),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl From<DatapathError> for ServerError {
    fn from(e: DatapathError) -> Self {
        Self::Datapath(Box::new(e))
    }
}

/// Binds the socket (replacing a stale one left by an earlier agent), for root
/// only: the plugin runs as root, and nobody else may register pods.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |source| ServerError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves requests until the listener fails.
pub async fn serve(
    listener: UnixListener,
    datapath: Arc<Mutex<Datapath>>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let mut open = Connections::default();
    let failures = Throttled::new("CNI requests failed");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                failures.warn(&e.to_string());
                // Out of file descriptors and the like: let some close.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        open.make_room();
        let waiting = Arc::new(AtomicBool::new(true));
        let (dp, flag, report) = (datapath.clone(), waiting.clone(), failures.clone());
        let metrics = metrics.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = serve_one(stream, dp, &flag, &metrics).await {
                report.warn(&e);
            }
        });
        open.add(task.abort_handle(), waiting);
    }
}

/// The open connections, oldest first.
#[derive(Default)]
struct Connections {
    next: u64,
    open: BTreeMap<u64, (AbortHandle, Arc<AtomicBool>)>,
}

impl Connections {
    fn add(&mut self, task: AbortHandle, waiting: Arc<AtomicBool>) {
        self.open.insert(self.next, (task, waiting));
        self.next += 1;
    }

    /// Forgets finished connections; at the limit, closes the oldest one still
    /// waiting for its request.
    fn make_room(&mut self) {
        self.open.retain(|_, (task, _)| !task.is_finished());
        if self.open.len() < MAX_CONNECTIONS {
            return;
        }
        let oldest = self
            .open
            .iter()
            .find(|(_, (_, waiting))| waiting.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        if let Some((task, _)) = oldest.and_then(|id| self.open.remove(&id)) {
            task.abort();
        }
    }
}

/// A warning that says at most once a second what happened, with how many
/// times: a client must not be able to flood the log.
#[derive(Clone)]
struct Throttled {
    what: &'static str,
    state: Arc<Mutex<(Option<Instant>, u64)>>,
}

impl Throttled {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            state: Arc::new(Mutex::new((None, 0))),
        }
    }

    fn warn(&self, error: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, suppressed) = &mut *state;
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            *suppressed += 1;
            return;
        }
        warn!(error = %bounded(error, 512), also = *suppressed, "{}", self.what);
        *last = Some(Instant::now());
        *suppressed = 0;
    }
}

async fn serve_one(
    mut stream: UnixStream,
    datapath: Arc<Mutex<Datapath>>,
    waiting: &AtomicBool,
    metrics: &Metrics,
) -> Result<(), String> {
    let mut line = Vec::new();
    let read = tokio::time::timeout(REQUEST_DEADLINE, async {
        BufReader::new((&mut stream).take(MAX_REQUEST + 1))
            .read_until(b'\n', &mut line)
            .await
    })
    .await;
    waiting.store(false, Ordering::Relaxed);
    let reply = match read {
        Err(_) => return Err(format!("no whole request within {REQUEST_DEADLINE:?}: closed")),
        Ok(Err(e)) => return Err(format!("reading a request: {e}")),
        // Connected and closed: weir-cni's STATUS probing that we are here.
        Ok(Ok(0)) => return Ok(()),
        Ok(Ok(n)) if n as u64 > MAX_REQUEST => Reply::Error {
            message: format!("request larger than {MAX_REQUEST} bytes"),
        },
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Err(e) => Reply::Error {
                message: format!("undecodable request: {e}"),
            },
            Ok(request) => {
                let (op, start) = (request.op(), Instant::now());
                // bpf(2) calls under a mutex: off the runtime's thread.
                let handled = tokio::task::spawn_blocking(move || {
                    // A panic elsewhere cannot leave the datapath half-written in
                    // a way a retry would not fix, so a poisoned lock is usable.
                    let mut dp = datapath.lock().unwrap_or_else(|p| p.into_inner());
                    handle(&mut dp, &request)
                })
                .await;
                metrics.cni_request(op, matches!(handled, Ok(Ok(()))), start.elapsed());
                match handled {
                    Ok(Ok(())) => Reply::Ok,
                    Ok(Err(e)) => Reply::Error {
                        message: e.to_string(),
                    },
                    Err(e) => Reply::Error {
                        message: format!("handling the request failed: {e}"),
                    },
                }
            }
        },
    };
    let mut out = serde_json::to_vec(&reply).map_err(|e| e.to_string())?;
    out.push(b'\n');
    tokio::time::timeout(REQUEST_DEADLINE, stream.write_all(&out))
        .await
        .map_err(|_| "the client did not read its answer".to_owned())?
        .map_err(|e| format!("answering: {e}"))?;
    if let Reply::Error { message } = reply {
        return Err(message);
    }
    Ok(())
}

/// What the agent takes of a request before acting on it (the plugin checks the
/// same; anyone else who reaches the socket is held to it too).
pub fn validate(request: &Request) -> Result<(), ServerError> {
    let (container_id, ifnames, ips): (&str, Vec<&str>, &[IpAddr]) = match request {
        Request::Add(ep) => (&ep.container_id, vec![&ep.ifname, &ep.host_ifname], &ep.ips),
        Request::Del {
            container_id,
            ifname,
            ips,
        } => (container_id, vec![ifname], ips),
    };
    if container_id.is_empty() || container_id.len() > MAX_CONTAINER_ID {
        return Err(ServerError::Invalid(format!(
            "container id of {} bytes (1 to {MAX_CONTAINER_ID})",
            container_id.len()
        )));
    }
    if let Some(name) = ifnames.iter().find(|n| n.is_empty() || n.len() > MAX_IFNAME) {
        return Err(ServerError::Invalid(format!(
            "interface name {} (1 to {MAX_IFNAME} bytes)",
            bounded(name, 32)
        )));
    }
    // One address per family, and a margin.
    if ips.len() > 8 {
        return Err(ServerError::Invalid(format!("{} addresses", ips.len())));
    }
    Ok(())
}

pub fn handle(dp: &mut Datapath, request: &Request) -> Result<(), ServerError> {
    validate(request)?;
    match request {
        Request::Add(ep) => add(dp, ep),
        Request::Del {
            container_id,
            ifname,
            ips,
        } => {
            let map = weir_common::maps::ENDPOINTS;
            let mut ifindexes = Vec::new();
            for ip in ips {
                let key = endpoint_key(*ip);
                if let Ok(info) = dp.endpoints.get(&key, 0) {
                    ifindexes.push(info.ifindex);
                    match dp.endpoints.remove(&key) {
                        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                        Err(source) => return Err(ServerError::Map { map, source }),
                    }
                }
            }
            for ifindex in ifindexes {
                dp.detach_endpoint(ifindex)?;
            }
            for ip in ips {
                if let Err(e) = dp.names.set_pod(*ip, None) {
                    warn!(%ip, error = %e, "forgetting a pod's name");
                }
            }
            info!(container_id = %bounded(container_id, 128), ifname, ?ips, "endpoint removed");
            Ok(())
        }
    }
}

fn add(dp: &mut Datapath, ep: &Endpoint) -> Result<(), ServerError> {
    // Its name first, for `weirctl` (a view never shows the pod unnamed); a
    // label: a failure to write it fails nothing.
    if let (Some(namespace), Some(pod)) = (&ep.pod_namespace, &ep.pod_name) {
        for ip in &ep.ips {
            if let Err(e) = dp.names.set_pod(*ip, Some(&format!("{namespace}/{pod}"))) {
                warn!(%ip, error = %e, "writing a pod's name");
            }
        }
    }
    // Programs first, then the entries that make the pod known: a packet never
    // finds an endpoint entry for a veth without its programs.
    let result = dp
        .attach_endpoint(&ep.host_ifname, ep.host_ifindex)
        .map_err(ServerError::from)
        .and_then(|()| {
            // Both MACs or neither: a frame is addressed with the pair.
            let (mac, host_mac) = ep.mac.zip(ep.host_mac).unwrap_or_default();
            let info = EndpointInfo {
                ifindex: ep.host_ifindex,
                mac,
                host_mac,
            };
            ep.ips.iter().try_for_each(|ip| {
                dp.endpoints
                    .insert(endpoint_key(*ip), info, 0)
                    .map_err(|source| ServerError::Map {
                        map: weir_common::maps::ENDPOINTS,
                        source,
                    })
            })
        });
    if let Err(e) = result {
        // All or nothing: the plugin fails ADD and deletes the veth, so nothing of
        // this pod may stay behind in the maps or the pins.
        for ip in &ep.ips {
            let _ = dp.endpoints.remove(&endpoint_key(*ip));
            let _ = dp.names.set_pod(*ip, None);
        }
        if let Err(undo) = dp.detach_endpoint(ep.host_ifindex) {
            warn!(ifindex = ep.host_ifindex, error = %undo, "undoing a failed registration");
        }
        return Err(e);
    }
    let name = |s: &Option<String>| s.as_deref().map(|s| bounded(s, 253).into_owned());
    info!(
        container_id = %bounded(&ep.container_id, 128),
        pod = ?name(&ep.pod_name), namespace = ?name(&ep.pod_namespace),
        host_ifname = ep.host_ifname, ifindex = ep.host_ifindex, ips = ?ep.ips,
        "endpoint registered"
    );
    Ok(())
}
