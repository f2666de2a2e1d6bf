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
//! - `follow`: every drop from now on, until the client goes (`weirctl
//!   monitor`); `follow trace`: every event, new flows' decisions too
//!   (`weirctl monitor --trace`). The datapath reports those only while some
//!   client follows them: the agent sets `NODE_F_TRACE` when the first comes
//!   and clears it when the last goes. A client that does not keep up loses
//!   events, never slows the agent or the other clients.
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
        mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel},
    },
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, RingBuf};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tracing::{info, warn};

use weir_common::{EVENT_DROP, NODE_F_TRACE};

use crate::{
    ctl::{EventRow, Namer, decode, name_table},
    datapath::{PinLayout, maps},
    sync::SharedDatapath,
};

/// Events kept for `recent`.
pub const RECENT: usize = 1024;
/// Events a following client may fall behind by before it loses some.
const BACKLOG: usize = 4096;
/// How long the endpoints and names events are named with are kept before
/// they are read again.
const RENAME_EVERY: Duration = Duration::from_secs(2);
/// How soon they are read again for an event naming something they lack.
const RENAME_SOON: Duration = Duration::from_millis(100);
/// How long a follower's write may block before it is given up (a client
/// that stopped reading must not keep tracing on).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// An event as it is handed on: its JSON line, and whether it is a drop
/// (kept for `recent`, sent to every follower) or a trace (sent to tracing
/// followers only).
#[derive(Clone)]
struct Line {
    text: Arc<str>,
    drop: bool,
}

struct Follower {
    id: u64,
    tx: SyncSender<Arc<str>>,
    trace: bool,
}

struct Hub {
    recent: VecDeque<Arc<str>>,
    followers: Vec<Follower>,
    /// The next follower's id.
    next_id: u64,
}

type Shared = Arc<Mutex<Hub>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The datapath's trace switch (`NODE_F_TRACE`), set to whether some follower
/// traces. Its own lock, never held with the hub's: the datapath's lock, which
/// a sync may hold a while, is taken under it alone, so the reader never
/// waits for a sync.
#[derive(Clone)]
struct TraceSwitch {
    /// What was last written (`None`: nothing yet, or a write failed).
    written: Arc<Mutex<Option<bool>>>,
    maps: SharedDatapath,
}

impl TraceSwitch {
    /// Sets the switch to whether someone in `hub` traces now (the question
    /// asked under the switch's lock, so that two callers cannot write in
    /// the wrong order); a failed write is retried by the next call.
    fn follow(&self, hub: &Shared) {
        let mut written = lock(&self.written);
        let want = lock(hub).tracing();
        if *written == Some(want) {
            return;
        }
        match self.maps.lock().set_node_flag(NODE_F_TRACE, want) {
            Ok(()) => {
                info!(on = want, "tracing new flows");
                *written = Some(want);
            }
            Err(e) => {
                warn!(error = %e, "setting the trace switch");
                *written = None;
            }
        }
    }
}

/// Reads the events of the datapath pinned under `pins` and serves them on
/// `socket` from now on.
pub fn start(pins: &PinLayout, socket: &Path, maps: SharedDatapath) -> std::io::Result<()> {
    // No one follows yet: tracing left on by an agent that died mid-trace
    // goes off, whether or not events can be served.
    let hub = Arc::new(Mutex::new(Hub {
        recent: VecDeque::new(),
        followers: Vec::new(),
        next_id: 0,
    }));
    let switch = TraceSwitch {
        written: Arc::default(),
        maps,
    };
    switch.follow(&hub);
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    let ring = open_ring(pins).map_err(std::io::Error::other)?;
    let (pins, reader_hub) = (pins.clone(), hub.clone());
    crate::supervise::spawn("weir-monitor", move || read(ring, &pins, &reader_hub))?;
    crate::supervise::spawn("weir-monitor-serve", move || {
        for conn in listener.incoming() {
            match conn {
                Ok(conn) => {
                    let (hub, switch) = (hub.clone(), switch.clone());
                    if let Err(e) = std::thread::Builder::new()
                        .name("weir-monitor-client".into())
                        .spawn(move || serve(conn, &hub, &switch))
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
            // Read again after a while, and at once (but not more often than
            // RENAME_SOON) for an event naming what was not there yet.
            if named_at.is_none_or(|t| {
                t.elapsed() > RENAME_EVERY || (t.elapsed() > RENAME_SOON && !namer.knows(&event))
            }) {
                let endpoints = isolated_endpoints(pins).unwrap_or_default();
                namer =
                    Namer::new(&endpoints, name_table(pins)).with_devices(crate::node_net::interface_names());
                named_at = Some(Instant::now());
            }
            let Ok(text) = serde_json::to_string(&namer.row(&event)) else {
                continue;
            };
            publish(
                hub,
                Line {
                    text: text.into(),
                    drop: event.kind == EVENT_DROP,
                },
            );
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

fn publish(hub: &Shared, line: Line) {
    let mut hub = lock(hub);
    if line.drop {
        if hub.recent.len() == RECENT {
            hub.recent.pop_front();
        }
        hub.recent.push_back(line.text.clone());
    }
    // A follower that is behind loses this event. One gone is forgotten by
    // its own thread ([`forget`]), which also sets the trace switch.
    for f in hub.followers.iter().filter(|f| line.drop || f.trace) {
        let _ = f.tx.try_send(line.text.clone());
    }
}

impl Hub {
    fn tracing(&self) -> bool {
        self.followers.iter().any(|f| f.trace)
    }
}

/// One client: its request, then its events.
fn serve(conn: UnixStream, hub: &Shared, switch: &TraceSwitch) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
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
        request @ ("follow" | "follow trace") => {
            let (tx, rx): (SyncSender<Arc<str>>, Receiver<Arc<str>>) = sync_channel(BACKLOG);
            let trace = request == "follow trace";
            let id = {
                let mut hub = lock(hub);
                let id = hub.next_id;
                hub.next_id += 1;
                hub.followers.push(Follower { id, tx, trace });
                id
            };
            switch.follow(hub);
            // Said at once: the client knows it is following from here on.
            if writeln!(out, "{{\"type\":\"following\"}}")
                .and_then(|()| out.flush())
                .is_err()
            {
                forget(hub, switch, id);
                return;
            }
            loop {
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(line) => {
                        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                            break;
                        }
                    }
                    // Gone while nothing happened: its tracing must not
                    // outlive it until the next event. (A client that shuts
                    // its writing side down after the request counts as
                    // gone: `weirctl` keeps it open.)
                    Err(RecvTimeoutError::Timeout) if !hung_up(out.get_ref()) => {}
                    Err(_) => break,
                }
            }
            forget(hub, switch, id);
        }
        other => {
            let _ = writeln!(
                out,
                "{{\"error\":\"unknown request {other:?}: recent or follow\"}}"
            );
        }
    }
}

/// Drops follower `id` (and, if it was the last to trace, the trace switch).
fn forget(hub: &Shared, switch: &TraceSwitch, id: u64) {
    lock(hub).followers.retain(|f| f.id != id);
    switch.follow(hub);
}

/// Whether the client closed its end (a read would say end of file).
fn hung_up(conn: &UnixStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(conn),
            &mut byte,
            nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ),
        Ok(0) | Err(nix::errno::Errno::ECONNRESET | nix::errno::Errno::EPIPE)
    )
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
    mut each: impl FnMut(EventRow) -> bool,
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
        let row: EventRow = serde_json::from_value(value).map_err(|e| format!("{e}: {line}"))?;
        if !each(row) {
            break;
        }
    }
    Ok(())
}
