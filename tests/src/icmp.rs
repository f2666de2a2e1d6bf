//! Crafted ICMP errors (port unreachable, quoting a UDP packet of the sender's
//! choice) and a listener that sees which arrive: what a pod could send to
//! pass data around its policies, and what a policy must let through for the
//! flows it admits. And who pings a host: the source of the echo requests it
//! receives.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrStorage, recv, recvfrom,
    sendto, setsockopt, socket, sockopt,
};

use crate::{datagram, netns::Netns};

/// Sends, from `ns`, an ICMP port unreachable to `to` that quotes a UDP packet
/// `quoted_src` -> `quoted_dst` (which may never have been sent).
pub fn send_port_unreachable(ns: &Netns, to: Ipv4Addr, quoted_src: SocketAddrV4, quoted_dst: SocketAddrV4) {
    ns.run(move || {
        let fd = raw_icmp().expect("raw ICMP socket");
        let msg = port_unreachable(quoted_src, quoted_dst);
        sendto(
            fd.as_raw_fd(),
            &msg,
            &SockaddrIn::from(SocketAddrV4::new(to, 0)),
            MsgFlags::empty(),
        )
        .expect("send ICMP");
    });
}

/// The ICMP message: type 3 code 3, then the quoted IPv4 header and UDP header.
fn port_unreachable(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let quoted = datagram::ipv4_udp(src, dst, &[]);
    let mut msg = vec![3, 3, 0, 0, 0, 0, 0, 0];
    msg.extend(quoted);
    let csum = datagram::checksum(&msg);
    msg[2..4].copy_from_slice(&csum.to_be_bytes());
    msg
}

fn raw_icmp() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
}

/// A raw ICMP (`v6`: ICMPv6) socket whose reads give up after 50 ms, so a
/// listener can look at its clock.
fn raw_icmp_listener(v6: bool) -> OwnedFd {
    let fd = if v6 {
        socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::IcmpV6,
        )
    } else {
        raw_icmp()
    }
    .expect("raw ICMP socket");
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 50_000),
    )
    .expect("timeout");
    fd
}

/// Watches `ns` for ICMP port unreachables quoting `quoted_src` ->
/// `quoted_dst` for up to `wait`; whether one arrived.
pub fn port_unreachable_arrives(
    ns: &Netns,
    quoted_src: SocketAddrV4,
    quoted_dst: SocketAddrV4,
    wait: Duration,
    send: impl FnOnce(),
) -> bool {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listener = ns.spawn(move || {
        let fd = raw_icmp_listener(false);
        let _ = ready_tx.send(());
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) else {
                continue;
            };
            // IP header (20), ICMP header (8), quoted IP header (20), quoted UDP.
            let p = &buf[..n];
            if n >= 56
                && p[20] == 3
                && p[21] == 3
                && p[40..44] == quoted_src.ip().octets()
                && p[44..48] == quoted_dst.ip().octets()
                && p[48..50] == quoted_src.port().to_be_bytes()
                && p[50..52] == quoted_dst.port().to_be_bytes()
            {
                return true;
            }
        }
        false
    });
    ready_rx.recv().expect("listener ready");
    send();
    listener.join().expect("listener")
}

/// The sources of the echo requests of `family` (`v6`: ICMPv6) that arrive
/// in `ns` while `send` runs (the kernel answers them as usual: a raw socket
/// sees a copy).
pub fn echo_request_sources(ns: &Netns, v6: bool, send: impl FnOnce()) -> Vec<IpAddr> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let listener = ns.spawn(move || {
        let fd = raw_icmp_listener(v6);
        // Echo request's type.
        let request = if v6 { 128 } else { 8 };
        let _ = ready_tx.send(());
        let mut sources = Vec::new();
        let mut buf = [0u8; 1500];
        while !stopped.load(Ordering::Relaxed) {
            let Ok((n, Some(from))) = recvfrom::<SockaddrStorage>(fd.as_raw_fd(), &mut buf) else {
                continue;
            };
            // An IPv4 raw socket's data starts with the IP header; ICMPv6's
            // with the ICMP header.
            let at = if v6 { 0 } else { usize::from(buf[0] & 0x0f) * 4 };
            if n > at && buf[at] == request {
                let ip = match (from.as_sockaddr_in(), from.as_sockaddr_in6()) {
                    (Some(a), _) => IpAddr::V4(a.ip()),
                    (_, Some(a)) => IpAddr::V6(a.ip()),
                    _ => continue,
                };
                sources.push(ip);
            }
        }
        sources
    });
    ready_rx.recv().expect("listener ready");
    send();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    listener.join().expect("listener")
}
