//! The unix socket on which `weir-cni` registers and unregisters pods.
//!
//! Requests are served one at a time: each is a few bpf(2) calls, and serving them
//! in order means an `ADD` and a `DEL` of the same pod can never interleave.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use tracing::{info, warn};
use weir_cni::agent_api::{Endpoint, Reply, Request};
use weir_common::{EndpointInfo, EndpointKey};

use crate::datapath::{Datapath, DatapathError};

/// How long one client may take to send its request or read our answer.
const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

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
}

impl From<DatapathError> for ServerError {
    fn from(e: DatapathError) -> Self {
        Self::Datapath(Box::new(e))
    }
}

pub fn endpoint_key(ip: IpAddr) -> EndpointKey {
    let (addr, family) = weir_model::net::to_abi(ip);
    EndpointKey {
        addr,
        family,
        _pad: [0; 3],
    }
}

/// Binds the socket (replacing a stale one left by an earlier agent).
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
    UnixListener::bind(path).map_err(err)
}

/// Serves requests until the listener fails.
pub fn serve(listener: UnixListener, datapath: Arc<Mutex<Datapath>>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                if let Err(e) = serve_one(stream, &datapath) {
                    warn!(error = %e, "CNI request failed");
                }
            }
            Err(e) => warn!(error = %e, "accept on CNI socket"),
        }
    }
}

fn serve_one(stream: UnixStream, datapath: &Mutex<Datapath>) -> std::io::Result<()> {
    // Requests are served one at a time: a client that connects and says nothing
    // must not hold up every other pod's ADD and DEL.
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line)? == 0 {
        // Connected and closed: weir-cni's STATUS probing that we are here.
        return Ok(());
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Err(e) => Reply::Error {
            message: format!("undecodable request: {e}"),
        },
        Ok(request) => {
            // A panic elsewhere cannot leave the datapath half-written in a way a
            // retry would not fix, so a poisoned lock is still usable.
            let mut dp = datapath.lock().unwrap_or_else(|p| p.into_inner());
            match handle(&mut dp, &request) {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::Error {
                    message: e.to_string(),
                },
            }
        }
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    (&stream).write_all(&out)
}

pub fn handle(dp: &mut Datapath, request: &Request) -> Result<(), ServerError> {
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
            info!(container_id, ifname, ?ips, "endpoint removed");
            Ok(())
        }
    }
}

fn add(dp: &mut Datapath, ep: &Endpoint) -> Result<(), ServerError> {
    // Programs first, then the entries that make the pod known: a packet never
    // finds an endpoint entry for a veth without its programs.
    let result = dp
        .attach_endpoint(&ep.host_ifname, ep.host_ifindex)
        .map_err(ServerError::from)
        .and_then(|()| {
            let info = EndpointInfo {
                ifindex: ep.host_ifindex,
                ..Default::default()
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
        }
        if let Err(undo) = dp.detach_endpoint(ep.host_ifindex) {
            warn!(ifindex = ep.host_ifindex, error = %undo, "undoing a failed registration");
        }
        return Err(e);
    }
    info!(
        container_id = ep.container_id,
        pod = ?ep.pod_name, namespace = ?ep.pod_namespace,
        host_ifname = ep.host_ifname, ifindex = ep.host_ifindex, ips = ?ep.ips,
        "endpoint registered"
    );
    Ok(())
}

/// Removes the endpoint entries of veths that have gone while the agent was down.
pub fn forget_ifindexes(dp: &mut Datapath, gone: &[u32]) -> Result<usize, ServerError> {
    let map = weir_common::maps::ENDPOINTS;
    let stale: Vec<EndpointKey> = dp
        .endpoints
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, info)| gone.contains(&info.ifindex))
        .map(|(key, _)| key)
        .collect();
    for key in &stale {
        dp.endpoints
            .remove(key)
            .map_err(|source| ServerError::Map { map, source })?;
    }
    Ok(stale.len())
}
