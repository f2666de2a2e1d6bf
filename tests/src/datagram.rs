//! Hand-built IPv4 datagrams, for traffic no socket sends: an ICMP error's
//! quote, a raw sender's frames.

use std::net::SocketAddrV4;

/// An IPv4 UDP datagram (no options, the header checksum complete; the UDP
/// checksum 0, "none", which IPv4 allows) carrying `payload`.
pub fn ipv4_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = u16::try_from(8 + payload.len()).expect("a UDP datagram's length");
    let mut d = vec![0x45, 0];
    d.extend((20u16.checked_add(udp_len).expect("an IPv4 datagram's length")).to_be_bytes());
    d.extend([0, 0, 0x40, 0, 64, 17, 0, 0]); // id, DF, TTL, UDP, checksum
    d.extend(src.ip().octets());
    d.extend(dst.ip().octets());
    let csum = checksum(&d);
    d[10..12].copy_from_slice(&csum.to_be_bytes());
    d.extend(src.port().to_be_bytes());
    d.extend(dst.port().to_be_bytes());
    d.extend(udp_len.to_be_bytes());
    d.extend([0, 0]);
    d.extend(payload);
    d
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn a_udp_datagram_has_valid_lengths_and_header_checksum() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 200, 1, 100), 40000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 200, 1, 1), 30082);
        let d = ipv4_udp(src, dst, b"x");
        assert_eq!(d.len(), 20 + 8 + 1);
        assert_eq!(u16::from_be_bytes([d[2], d[3]]), 29);
        // A header whose checksum is right sums to zero.
        assert_eq!(checksum(&d[..20]), 0);
        assert_eq!(&d[12..16], &[10, 200, 1, 100]);
        assert_eq!(u16::from_be_bytes([d[20], d[21]]), 40000);
        assert_eq!(u16::from_be_bytes([d[22], d[23]]), 30082);
        assert_eq!(u16::from_be_bytes([d[24], d[25]]), 9);
        assert_eq!(d[28], b'x');
    }

    #[test]
    fn checksum_is_rfc_1071s() {
        // RFC 1071's example: these bytes' one's complement sum is 0xddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }
}
