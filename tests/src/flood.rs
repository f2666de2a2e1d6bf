//! A raw-socket UDP flood: pre-built Ethernet frames written to a device over
//! and over (`AF_PACKET`, the qdisc bypassed, `sendmmsg` batches), the "small
//! raw-socket sender" a flood benchmark needs when the senders share the CPUs
//! with the node under test.
//!
//! An ordinary UDP socket spends more per datagram (a route lookup, the UDP
//! and IP output paths, the neighbour, the qdisc) than a node spends dropping
//! it, so a flood from one measures mostly its senders: the cheaper the node's
//! work, the more the senders get, but the ratio between two nodes is
//! squeezed towards 1. This sender costs an `sk_buff` and a 43-byte copy per
//! frame and no protocol stack: more than pktgen (which this machine's kernel
//! lacks, and which sends one `sk_buff` over and over), far less than a
//! socket's datagram. Sent from the switch's end of a node's cable
//! ([`crate::underlay::Underlay::wire_to`]), the frames pass nothing else
//! before the node's device.

use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use nix::libc;

use crate::{Netns, datagram};

/// Frames handed to the kernel per `sendmmsg` call.
const BATCH: usize = 256;

/// Where a flood goes out and to: a device, in its namespace, and the MACs
/// of the frames (the next hop's as destination).
pub struct Wire {
    pub ns: Netns,
    pub device: String,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl Wire {
    /// Sends each of `frames` out of the wire's device for `d`, over and
    /// over, from a thread of its own: the frames the kernel took.
    pub fn send_for(&self, frames: Vec<Vec<u8>>, d: Duration) -> u64 {
        let senders: Vec<_> = frames
            .into_iter()
            .map(|frame| {
                let device = self.device.clone();
                self.ns.spawn(move || send_for(&device, &frame, d))
            })
            .collect();
        senders.into_iter().map(|t| t.join().expect("sender")).sum()
    }
}

/// The MAC of a device as `ip -j link` shows it ([`Netns::link_holding`]).
pub fn mac(link: &serde_json::Value) -> [u8; 6] {
    parse_mac(link["address"].as_str().expect("the device's MAC"))
}

fn parse_mac(mac: &str) -> [u8; 6] {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("a MAC's byte"))
        .collect();
    bytes.try_into().expect("a 6-byte MAC")
}

impl Wire {
    /// The frame of a 1-byte UDP datagram on this wire: Ethernet, then
    /// [`datagram::ipv4_udp`].
    pub fn udp_frame(&self, src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
        udp_frame(self.src_mac, self.dst_mac, src, dst)
    }
}

fn udp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 29);
    f.extend(dst_mac);
    f.extend(src_mac);
    f.extend(0x0800u16.to_be_bytes());
    f.extend(datagram::ipv4_udp(src, dst, b"x"));
    f
}

/// Sends `frame` out of `device` (in the calling thread's namespace) for `d`,
/// as fast as the kernel takes it: the frames it took.
fn send_for(device: &str, frame: &[u8], d: Duration) -> u64 {
    let socket = RawSocket::bound(device);
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    let iov = &raw mut iov;
    // SAFETY: all-zero is a valid `mmsghdr`.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for m in &mut msgs {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let deadline = Instant::now() + d;
    let mut sent = 0u64;
    while Instant::now() < deadline {
        // SAFETY: `msgs` points at `iov`, which points at `frame`: all live
        // for the call; the socket is ours.
        let n = unsafe { libc::sendmmsg(socket.0, msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
            continue;
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            // The device's queue is full: let the receiver catch up.
            Some(libc::ENOBUFS | libc::EAGAIN) => std::thread::yield_now(),
            _ => panic!("sending frames on {device}: {error}"),
        }
    }
    sent
}

/// An `AF_PACKET` socket bound to one device, sending only (protocol 0: it
/// receives nothing), past the device's qdisc as pktgen sends.
struct RawSocket(libc::c_int);

impl RawSocket {
    fn bound(device: &str) -> Self {
        // SAFETY: plain socket calls on values we own; every result checked.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let socket = Self(fd);
            let name = std::ffi::CString::new(device).expect("device name");
            let ifindex = libc::if_nametoindex(name.as_ptr());
            assert!(ifindex != 0, "no device {device}");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            let bound = libc::bind(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert!(
                bound == 0,
                "bind to {device}: {}",
                std::io::Error::last_os_error()
            );
            let on: libc::c_int = 1;
            let set = libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
            assert!(
                set == 0,
                "PACKET_QDISC_BYPASS: {}",
                std::io::Error::last_os_error()
            );
            socket
        }
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        // SAFETY: our descriptor, closed once.
        unsafe { libc::close(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn frame_is_ethernet_then_the_datagram() {
        let (src_mac, dst_mac) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 200, 1, 100), 40000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 200, 1, 1), 30082);
        let f = udp_frame(src_mac, dst_mac, src, dst);
        assert_eq!(f[0..6], dst_mac);
        assert_eq!(f[6..12], src_mac);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14..], datagram::ipv4_udp(src, dst, b"x")[..]);
    }

    #[test]
    fn macs_parse_as_ip_prints_them() {
        assert_eq!(parse_mac("02:0a:ff:00:10:9c"), [2, 10, 255, 0, 16, 156]);
    }
}
