//! The datapath's event stream, read once and handed to every reader.
//!
//! A BPF ring buffer has one consumer: whoever reads an event takes it from
//! everyone else. So the agent is that consumer (as Cilium's monitor agent
//! is): it reads the events, keeps the latest [`RECENT`], and streams each new
//! one to every `weirctl monitor` connected to its unix socket
//! (`--monitor-socket`). The protocol is one request line, then JSON lines:
//!
//! - `recent`: the kept events, oldest first, then the connection closes
//!   (`weirctl drops`);
//! - `follow`: every event from now on, until the client goes (`weirctl
//!   monitor`). A client that does not keep up loses events, never slows the
//!   agent or the other clients.
//!
//! The socket's path is written in the name table beside the pins, where
//! `weirctl` finds it from `--bpffs-root` alone.

use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{
        fs::PermissionsExt as _,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, RingBuf};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tracing::{info, warn};

use crate::{
    ctl::{DropRow, Namer, decode, name_table},
    datapath::{PinLayout, maps},
};

/// Events kept for `recent`.
pub const RECENT: usize = 1024;
/// Events a following client may fall behind by before it loses some.
const BACKLOG: usize = 4096;
/// How long the endpoints and names events are named with are kept before
/// they are read again.
const RENAME_EVERY: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Hub {
    recent: VecDeque<Arc<str>>,
    followers: Vec<SyncSender<Arc<str>>>,
}

type Shared = Arc<Mutex<Hub>>;

fn lock(hub: &Shared) -> std::sync::MutexGuard<'_, Hub> {
    hub.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads the events of the datapath pinned under `pins` and serves them on
/// `socket` from now on.
pub fn start(pins: &PinLayout, socket: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let hub = Shared::default();
    let ring = open_ring(pins).map_err(std::io::Error::other)?;
    let (pins, reader_hub) = (pins.clone(), hub.clone());
    crate::supervise::spawn("weir-monitor", move || read(ring, &pins, &reader_hub))?;
    crate::supervise::spawn("weir-monitor-serve", move || {
        for conn in listener.incoming() {
            match conn {
                Ok(conn) => {
                    let hub = hub.clone();
                    if let Err(e) = std::thread::Builder::new()
                        .name("weir-monitor-client".into())
                        .spawn(move || serve(conn, &hub))
                    {
                        warn!(error = %e, "monitor client not served");
                    }
                }
                Err(e) => {
                    warn!(error = %e, "monitor socket accept");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })?;
    info!(socket = %socket.display(), "serving datapath events");
    Ok(())
}

fn open_ring(pins: &PinLayout) -> Result<RingBuf<MapData>, String> {
    let data = MapData::from_pin(pins.map(maps::EVENTS.name)).map_err(|e| e.to_string())?;
    RingBuf::try_from(Map::RingBuf(data)).map_err(|e| e.to_string())
}

/// The reader: every event, named, kept and handed on.
fn read(mut ring: RingBuf<MapData>, pins: &PinLayout, hub: &Shared) {
    let mut namer = Namer::default();
    let mut named_at: Option<Instant> = None;
    loop {
        {
            let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(&ring), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(200u16));
        }
        while let Some(record) = ring.next() {
            let Some(event) = decode(&record) else { continue };
            if named_at.is_none_or(|t| t.elapsed() > RENAME_EVERY) {
                let endpoints = isolated_endpoints(pins).unwrap_or_default();
                namer = Namer::new(&endpoints, name_table(pins));
                named_at = Some(Instant::now());
            }
            let Ok(line) = serde_json::to_string(&namer.drop_row(&event)) else {
                continue;
            };
            publish(hub, line.into());
        }
    }
}

/// The isolated endpoints (their numbers are what events carry): that map
/// alone, not the policy rules beside it.
fn isolated_endpoints(
    pins: &PinLayout,
) -> Result<std::collections::BTreeMap<weir_common::EndpointKey, weir_common::PolicyEndpoint>, String> {
    let map: maps::PolicyEndpoints =
        maps::open_pinned(pins, &maps::POLICY_ENDPOINTS).map_err(|e| e.to_string())?;
    map.iter().collect::<Result<_, _>>().map_err(|e| e.to_string())
}

fn publish(hub: &Shared, line: Arc<str>) {
    let mut hub = lock(hub);
    if hub.recent.len() == RECENT {
        hub.recent.pop_front();
    }
    hub.recent.push_back(line.clone());
    // A follower gone is forgotten; one behind loses this event.
    hub.followers
        .retain(|f| !matches!(f.try_send(line.clone()), Err(TrySendError::Disconnected(_))));
}

/// One client: its request, then its events.
fn serve(conn: UnixStream, hub: &Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = String::new();
    let Ok(reader) = conn.try_clone() else { return };
    if BufReader::new(reader).read_line(&mut request).is_err() {
        return;
    }
    let mut out = std::io::BufWriter::new(conn);
    match request.trim() {
        "recent" => {
            let recent: Vec<Arc<str>> = lock(hub).recent.iter().cloned().collect();
            for line in recent {
                if writeln!(out, "{line}").is_err() {
                    return;
                }
            }
            let _ = out.flush();
        }
        "follow" => {
            let (tx, rx): (SyncSender<Arc<str>>, Receiver<Arc<str>>) = sync_channel(BACKLOG);
            lock(hub).followers.push(tx);
            // Said at once: the client knows it is following from here on.
            if writeln!(out, "{{\"type\":\"following\"}}")
                .and_then(|()| out.flush())
                .is_err()
            {
                return;
            }
            for line in rx {
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return;
                }
            }
        }
        other => {
            let _ = writeln!(
                out,
                "{{\"error\":\"unknown request {other:?}: recent or follow\"}}"
            );
        }
    }
}

/// The default socket: `monitor.sock` beside the CNI socket.
pub fn default_socket(cni_socket: &Path) -> PathBuf {
    cni_socket.with_file_name("monitor.sock")
}

/// `weirctl`'s side: asks `socket` for `request` (`recent`, `follow`), calls
/// `following` once the agent streams to it, and hands each event to `each`
/// until it returns `false` or the stream ends.
pub fn request(
    socket: &Path,
    request: &str,
    following: impl FnOnce(),
    mut each: impl FnMut(DropRow) -> bool,
) -> Result<(), String> {
    let mut following = Some(following);
    let mut conn = UnixStream::connect(socket).map_err(|e| {
        format!(
            "no agent answers on {}: {e} (the agent reads the datapath's events and keeps them)",
            socket.display()
        )
    })?;
    writeln!(conn, "{request}").map_err(|e| e.to_string())?;
    for line in BufReader::new(conn).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
        if let Some(error) = value.get("error") {
            return Err(error.to_string());
        }
        if value["type"] == "following" {
            if let Some(f) = following.take() {
                f();
            }
            continue;
        }
        if value["type"] != "drop" {
            continue;
        }
        let row: DropRow = serde_json::from_value(value).map_err(|e| format!("{e}: {line}"))?;
        if !each(row) {
            break;
        }
    }
    Ok(())
}
