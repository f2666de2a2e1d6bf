//! A "who am I" server: on every TCP read and every UDP datagram it answers
//! `NAME PEER_IP:PEER_PORT\n`, the server's name and the peer address it saw. That
//! is what lets service tests say which backend answered and which client address
//! reached it (source IP preservation, hairpin SNAT).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use nix::sys::{
    socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, setsockopt, socket, sockopt,
    },
    time::TimeVal,
};

use crate::Netns;

const TIMEOUT: Duration = Duration::from_secs(2);

/// What a who-am-I server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub server: String,
    pub peer: SocketAddr,
}

impl Answer {
    fn parse(line: &str) -> std::io::Result<Self> {
        let bad = || std::io::Error::other(format!("unexpected answer {line:?}"));
        let (server, peer) = line.trim_end().split_once(' ').ok_or_else(bad)?;
        Ok(Self {
            server: server.to_owned(),
            peer: peer.parse().map_err(|_| bad())?,
        })
    }
}

/// TCP and UDP who-am-I servers on `ip` and each of `ports`, stopped on drop.
pub struct WhoAmI {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl WhoAmI {
    pub fn start(ns: &Netns, name: &str, ip: IpAddr, ports: &[u16]) -> Self {
        let ports = ports.to_vec();
        let sockets = ns.run(move || {
            ports
                .iter()
                .map(|&p| {
                    let addr = SocketAddr::new(ip, p);
                    let tcp = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind TCP {addr}: {e}"));
                    let udp = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind UDP {addr}: {e}"));
                    (tcp, udp)
                })
                .collect::<Vec<_>>()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (tcp, udp) in sockets {
            tcp.set_nonblocking(true).expect("nonblocking");
            udp.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            let (s, name_tcp) = (stop.clone(), name.to_owned());
            threads.push(std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((conn, peer)) => {
                            let (name, s) = (name_tcp.clone(), s.clone());
                            std::thread::spawn(move || serve_tcp(conn, &name, peer, &s));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
            let (s, name_udp) = (stop.clone(), name.to_owned());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(format!("{name_udp} {peer}\n").as_bytes(), peer);
                    }
                }
            }));
        }
        Self { stop, threads }
    }
}

fn serve_tcp(conn: TcpStream, name: &str, peer: SocketAddr, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {
                line.clear();
                if (&conn).write_all(format!("{name} {peer}\n").as_bytes()).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

impl Drop for WhoAmI {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A TCP connection from a pod, kept open across several questions.
pub struct TcpSession {
    reader: BufReader<TcpStream>,
}

impl TcpSession {
    pub fn connect(ns: &Netns, to: SocketAddr) -> std::io::Result<Self> {
        let stream = ns.run(move || TcpStream::connect_timeout(&to, TIMEOUT))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    pub fn ask(&mut self) -> std::io::Result<Answer> {
        self.reader.get_mut().write_all(b"who?\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Answer::parse(&line)
    }
}

/// A connected UDP socket in a pod: every question leaves from the same port.
pub struct UdpSession {
    sock: UdpSocket,
}

impl UdpSession {
    pub fn connect(ns: &Netns, to: SocketAddr) -> std::io::Result<Self> {
        let sock = ns.run(move || {
            let sock = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
            sock.connect(to)?;
            Ok::<_, std::io::Error>(sock)
        })?;
        sock.set_read_timeout(Some(TIMEOUT))?;
        Ok(Self { sock })
    }

    /// One datagram and its answer. A connected socket reports an ICMP error from
    /// the previous send as `ConnectionRefused` here.
    pub fn ask(&self) -> std::io::Result<Answer> {
        self.sock.send(b"who?\n")?;
        let mut buf = [0u8; 2048];
        let n = self.sock.recv(&mut buf)?;
        Answer::parse(&String::from_utf8_lossy(&buf[..n]))
    }
}

/// One new TCP connection, one question.
pub fn ask_tcp(ns: &Netns, to: SocketAddr) -> std::io::Result<Answer> {
    TcpSession::connect(ns, to)?.ask()
}

/// One new TCP connection from the fixed source `from` (an address of the pod),
/// one question, then an abortive close (`SO_LINGER` 0: a RST, no `TIME_WAIT`), so
/// that the same source port can connect again at once. `SO_REUSEADDR` lets it
/// bind while an earlier connection of the port is still being torn down.
pub fn ask_tcp_from(ns: &Netns, from: SocketAddr, to: SocketAddr) -> std::io::Result<Answer> {
    ns.run(move || {
        let stream = bound_stream(from, to)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let mut session = TcpSession {
            reader: BufReader::new(stream),
        };
        let answer = session.ask();
        let linger = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        setsockopt(session.reader.get_ref(), sockopt::Linger, &linger).map_err(std::io::Error::from)?;
        answer
    })
}

fn bound_stream(from: SocketAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let family = if from.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    // Bounds a connect that gets no answer, as `connect_timeout` would.
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &TimeVal::new(TIMEOUT.as_secs() as _, 0),
    )?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(from))?;
    // connect() refuses a 4-tuple the namespace still holds (EADDRNOTAVAIL,
    // decided locally, before any packet): the previous connection of the same
    // tuple, reset an instant ago, can still be on its way out on a loaded
    // machine. A test that reuses a port on purpose waits for it; the
    // datapath has not seen this connection yet.
    let mut tries = 0;
    loop {
        match connect(fd.as_raw_fd(), &SockaddrStorage::from(to)) {
            Err(nix::errno::Errno::EADDRNOTAVAIL) if tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => break other?,
        }
    }
    Ok(TcpStream::from(fd))
}

/// One question from a UDP socket bound to `from` and connected to `to`: the
/// answer must come from `to` (a connected socket drops anything else).
pub fn ask_udp_from(ns: &Netns, from: SocketAddr, to: SocketAddr) -> std::io::Result<Answer> {
    let sock = ns.run(move || {
        let fd = socket(
            if from.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            },
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        bind(fd.as_raw_fd(), &SockaddrStorage::from(from))?;
        connect(fd.as_raw_fd(), &SockaddrStorage::from(to))?;
        Ok::<_, std::io::Error>(UdpSocket::from(fd))
    })?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    UdpSession { sock }.ask()
}

/// One new UDP socket, one question.
pub fn ask_udp(ns: &Netns, to: SocketAddr) -> std::io::Result<Answer> {
    UdpSession::connect(ns, to)?.ask()
}
