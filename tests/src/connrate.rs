//! New TCP connections per second, the measure of the benchmarks: clients open
//! connections back to back (connect, a 3-byte request, a 1-byte answer naming
//! the backend, close) for a fixed time, and the completed ones are counted.
//!
//! Clients close with `SO_LINGER` 0 (an RST: no TIME_WAIT). By default they are
//! ordinary clients ([`ClientPorts::Kernel`]): the kernel picks each source port,
//! and at these rates reuses a port within seconds, while Weir's conntrack still
//! holds the closed flow (10 s): a new connection then meets that entry, as real
//! clients' do. `WEIR_BENCH_CLIENT=spread` ([`ClientPorts::Spread`]) binds the
//! ports instead, none reused within [`MIN_PORT_REUSE`]: every connection takes
//! the new-flow path of a tuple never seen.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _},
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::libc;

use crate::Netns;

/// A source port is reused only after this long (Weir's closing-flow lifetime is 10 s).
pub const MIN_PORT_REUSE: Duration = Duration::from_secs(12);

/// Who picks the clients' source ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientPorts {
    /// The kernel, as for any client (the default).
    Kernel,
    /// The clients, spread so that no tuple recurs within [`MIN_PORT_REUSE`].
    Spread,
}

impl ClientPorts {
    /// `WEIR_BENCH_CLIENT`: `ordinary` (the default) or `spread`.
    pub fn from_env() -> Self {
        match std::env::var("WEIR_BENCH_CLIENT").as_deref() {
            Ok("spread") => Self::Spread,
            Ok("ordinary") | Err(_) => Self::Kernel,
            Ok(other) => panic!("WEIR_BENCH_CLIENT={other}: ordinary or spread"),
        }
    }
}
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// What one sample counted.
#[derive(Clone, Debug)]
pub struct Sample {
    pub conns: u64,
    pub errors: u64,
    /// Waits for a source port not used in the last 12 s.
    pub stalls: u64,
    pub secs: f64,
    /// Answers per backend index.
    pub hit: Vec<u64>,
}

impl Default for Sample {
    fn default() -> Self {
        Self {
            conns: 0,
            errors: 0,
            stalls: 0,
            secs: 0.0,
            hit: vec![0; 256],
        }
    }
}

impl Sample {
    pub fn rate(&self) -> f64 {
        self.conns as f64 / self.secs
    }

    /// How many backends answered at least once.
    pub fn backends_hit(&self) -> usize {
        self.hit.iter().filter(|&&c| c > 0).count()
    }
}

pub fn median_rate(s: &[Sample]) -> f64 {
    let mut r: Vec<f64> = s.iter().map(Sample::rate).collect();
    r.sort_by(f64::total_cmp);
    if r.is_empty() {
        return f64::NAN;
    }
    let m = r.len() / 2;
    if r.len() % 2 == 1 {
        r[m]
    } else {
        (r[m - 1] + r[m]) / 2.0
    }
}

/// Client threads, one per network namespace (one source address each), with
/// their source-port allocators.
pub struct Clients {
    namespaces: Vec<Netns>,
    how: ClientPorts,
    /// Moved into the client thread for a sample.
    ports: Vec<Option<Ports>>,
}

impl Clients {
    pub fn new(namespaces: &[&Netns]) -> Self {
        Self {
            namespaces: namespaces.iter().map(|ns| Netns::attach(ns.name())).collect(),
            how: ClientPorts::from_env(),
            ports: namespaces.iter().map(|_| Some(Ports::new())).collect(),
        }
    }

    /// Back-to-back connections from every client for `d`, to `targets` in turn.
    pub fn sample(&mut self, targets: &[SocketAddrV4], d: Duration) -> Sample {
        let barrier = Arc::new(Barrier::new(self.namespaces.len()));
        let threads: Vec<JoinHandle<(Sample, Ports)>> = self
            .namespaces
            .iter()
            .zip(self.ports.iter_mut())
            .map(|(ns, ports)| {
                let (mut ports, targets, barrier) =
                    (ports.take().expect("ports"), targets.to_vec(), barrier.clone());
                let spread = self.how == ClientPorts::Spread;
                ns.spawn(move || {
                    let mut s = Sample::default();
                    barrier.wait();
                    let t0 = Instant::now();
                    let mut k = 0usize;
                    while t0.elapsed() < d {
                        let port = if spread { ports.take() } else { Some(0) };
                        let Some(port) = port else {
                            s.stalls += 1;
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        };
                        let to = targets[k % targets.len()];
                        k += 1;
                        match connect_once(port, to) {
                            Ok(id) => {
                                s.conns += 1;
                                s.hit[usize::from(id)] += 1;
                            }
                            Err(_) => s.errors += 1,
                        }
                    }
                    s.secs = t0.elapsed().as_secs_f64();
                    (s, ports)
                })
            })
            .collect();
        let mut total = Sample::default();
        for (slot, t) in self.ports.iter_mut().zip(threads) {
            let (s, ports) = t.join().expect("client thread");
            *slot = Some(ports);
            total.conns += s.conns;
            total.errors += s.errors;
            total.stalls += s.stalls;
            total.secs = total.secs.max(s.secs);
            for (a, b) in total.hit.iter_mut().zip(s.hit) {
                *a += b;
            }
        }
        total
    }

    /// Runs `probe` in the first client's namespace with its ports.
    pub fn probe<T: Send + 'static>(&mut self, probe: impl FnOnce(&mut Ports) -> T + Send + 'static) -> T {
        let mut ports = self.ports[0].take().expect("ports");
        let (out, ports) = self.namespaces[0]
            .spawn(move || {
                let out = probe(&mut ports);
                (out, ports)
            })
            .join()
            .expect("probe thread");
        self.ports[0] = Some(ports);
        out
    }
}

/// Source ports of one client address, handed out in turn, none within
/// [`MIN_PORT_REUSE`] of its last use.
pub struct Ports {
    next: u16,
    last: Vec<Option<Instant>>,
}

impl Default for Ports {
    fn default() -> Self {
        Self::new()
    }
}

impl Ports {
    const LO: u16 = 1024;

    pub fn new() -> Self {
        Self {
            next: Self::LO,
            last: vec![None; 65_536],
        }
    }

    pub fn take(&mut self) -> Option<u16> {
        let now = Instant::now();
        for _ in Self::LO..=u16::MAX {
            let p = self.next;
            self.next = if p == u16::MAX { Self::LO } else { p + 1 };
            let slot = &mut self.last[usize::from(p)];
            if slot.is_none_or(|t| now.duration_since(t) >= MIN_PORT_REUSE) {
                *slot = Some(now);
                return Some(p);
            }
        }
        None
    }
}

/// One connection from source port `port` (0: one the kernel picks): connect,
/// send 3 bytes, read the backend's 1-byte index, close with an RST
/// (`SO_LINGER` 0: no TIME_WAIT).
pub fn connect_once(port: u16, to: SocketAddrV4) -> std::io::Result<u8> {
    let s = bound_socket(port)?;
    let dst = sockaddr(to);
    // SAFETY: `dst` is a valid sockaddr_in of the given length; `s` owns the fd.
    let rc = unsafe {
        libc::connect(
            s.as_raw_fd(),
            (&raw const dst).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    (&s).write_all(b"hi\n")?;
    let mut b = [0u8; 1];
    (&s).read_exact(&mut b)?;
    Ok(b[0])
}

/// A TCP socket with `SO_LINGER` 0, bound to `0.0.0.0:port` unless `port` is 0.
fn bound_socket(port: u16) -> std::io::Result<TcpStream> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own; the stream closes it on every path from here.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let src = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    // SAFETY: pointers to live values of the lengths passed.
    let ok = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        ) == 0
            && (port == 0
                || libc::bind(
                    fd,
                    (&raw const src).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                ) == 0)
    };
    if !ok {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A backend: accepts one connection at a time, reads the request, answers its
/// index, closes. Stopped on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &Netns, addr: SocketAddr, id: u8) -> Self {
        let listener = ns.run(move || TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")));
        // accept(2) honours SO_RCVTIMEO: wake up now and then to see `stop`.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: a pointer to a live timeval of the length passed.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s.load(Ordering::Relaxed) {
                if let Ok((mut conn, _)) = listener.accept() {
                    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
                    if conn.read(&mut buf).is_ok_and(|n| n > 0) {
                        let _ = conn.write_all(&[id]);
                    }
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
