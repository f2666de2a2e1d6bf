//! Reachability probes: many connections at once, each from its own pod, each
//! a yes or no. A TCP probe connects and gets an answer line from the server
//! (`whoami`); a UDP probe sends a datagram and waits for the echo. A probe that
//! gets no answer within its timeout says no: policy drops are silent.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::atomic::{AtomicU16, Ordering},
    time::Duration,
};

use crate::Netns;

/// One probe: from a pod's namespace to an address, over `proto` ("TCP"/"UDP").
#[derive(Clone, Copy)]
pub struct Probe<'a> {
    pub from: &'a Netns,
    pub to: SocketAddr,
    pub proto: &'static str,
}

/// Runs every probe concurrently; their outcomes, in order.
pub fn run(probes: &[Probe<'_>], timeout: Duration) -> Vec<bool> {
    let handles: Vec<_> = probes
        .iter()
        .map(|p| {
            let (to, proto) = (p.to, p.proto);
            p.from.spawn(move || match proto {
                "TCP" => tcp(to, timeout),
                "UDP" => udp(to, timeout),
                other => panic!("no probe for {other}"),
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("probe thread panicked"))
        .collect()
}

fn tcp(to: SocketAddr, timeout: Duration) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&to, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    if (&stream).write_all(b"who\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).is_ok_and(|n| n > 0)
}

/// Source ports of UDP probes: never the same twice in a run, so that no probe
/// rides on the conntrack entry an earlier probe of the same pair left (a
/// datagram "flow" stays known for a minute after its last packet).
static UDP_PORT: AtomicU16 = AtomicU16::new(0);

fn udp(to: SocketAddr, timeout: Duration) -> bool {
    let port = 10_000 + UDP_PORT.fetch_add(1, Ordering::Relaxed) % 20_000;
    let bind = SocketAddr::new(
        if to.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        },
        port,
    );
    let Ok(sock) = UdpSocket::bind(bind) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(timeout));
    if sock.send_to(b"who\n", to).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    sock.recv_from(&mut buf)
        .is_ok_and(|(n, from)| n > 0 && from == to)
}
