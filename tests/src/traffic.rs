//! Real TCP and UDP traffic between lab namespaces: echo servers and clients that
//! run on threads entered into a namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::Netns;

const TIMEOUT: Duration = Duration::from_secs(2);

/// A TCP and UDP echo server on the same address and port, stopped on drop.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `addr` (port 0 picks one for both protocols) inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let (tcp, udp) = ns.run(move || {
            let tcp = TcpListener::bind(addr).expect("bind TCP echo");
            let udp = UdpSocket::bind(tcp.local_addr().expect("local addr")).expect("bind UDP echo");
            (tcp, udp)
        });
        let addr = tcp.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        tcp.set_nonblocking(true).expect("nonblocking");
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let s = stop.clone();
        let tcp_thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((conn, _)) => {
                        std::thread::spawn(move || echo_tcp(conn));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let s = stop.clone();
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], peer);
                }
            }
        });
        Self {
            addr,
            stop,
            threads: vec![tcp_thread, udp_thread],
        }
    }
}

fn echo_tcp(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(TIMEOUT));
    let mut buf = [0u8; 2048];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One TCP connection from `ns` to `to`: send `msg`, return what came back.
pub fn tcp_roundtrip(ns: &Netns, to: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let msg = msg.to_vec();
    ns.run(move || {
        let mut conn = TcpStream::connect_timeout(&to, TIMEOUT)?;
        conn.set_read_timeout(Some(TIMEOUT))?;
        conn.write_all(&msg)?;
        let mut back = vec![0u8; msg.len()];
        conn.read_exact(&mut back)?;
        Ok(back)
    })
}

/// One UDP datagram from `ns` to `to` and its echo.
pub fn udp_roundtrip(ns: &Netns, to: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let msg = msg.to_vec();
    ns.run(move || {
        let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
            .parse()
            .expect("addr");
        let sock = UdpSocket::bind(bind)?;
        sock.set_read_timeout(Some(TIMEOUT))?;
        sock.send_to(&msg, to)?;
        let mut buf = [0u8; 2048];
        let (n, _) = sock.recv_from(&mut buf)?;
        Ok(buf[..n].to_vec())
    })
}

/// A client that keeps opening connections (each one `attempt`) from a thread
/// until stopped, counting successes and keeping every failure: the load under
/// which an agent restart must not be noticed.
pub struct ConnectionLoad {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u32, Vec<String>)>,
}

impl ConnectionLoad {
    pub fn start(ns: &Netns, attempt: impl Fn(&Netns) -> std::io::Result<()> + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (name, stop2) = (ns.name().to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let ns = Netns::attach(&name);
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop2.load(Ordering::Relaxed) {
                match attempt(&ns) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        });
        Self { stop, thread }
    }

    /// Stops the client and asserts that no connection failed, and that there
    /// were enough of them to prove anything; how many there were.
    pub fn stop_and_assert_none_failed(self, what: &str) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failed) = self.thread.join().expect("load thread");
        assert!(
            failed.is_empty(),
            "{} of {} connections failed {what}: {:?}",
            failed.len(),
            ok as usize + failed.len(),
            &failed[..failed.len().min(3)]
        );
        assert!(ok > 20, "too few connections {what} to prove anything: {ok}");
        ok
    }
}
