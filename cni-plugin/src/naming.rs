//! Names derived from an attachment, so that every verb (and GC) finds the
//! host side of a pod's veth from the container id and ifname alone.

use sha2::{Digest as _, Sha256};

use crate::spec::Attachment;

/// Prefix of every host-side veth this plugin creates.
pub const HOST_PREFIX: &str = "weir";

fn digest11(a: &Attachment) -> String {
    let hash = Sha256::digest(format!("{}/{}", a.container_id, a.ifname).as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    hex[..11].to_owned()
}

/// `weir` + the first 11 hex digits of sha256("{containerid}/{ifname}"): 15 bytes,
/// the kernel's limit.
pub fn host_veth(a: &Attachment) -> String {
    format!("{HOST_PREFIX}{}", digest11(a))
}

/// The alias on the host veth: marks it as ours and says which network and
/// attachment it belongs to (GC reads it).
pub fn alias(network: &str, a: &Attachment) -> String {
    format!("weir-cni:{network}:{}/{}", a.container_id, a.ifname)
}

/// The alias prefix of every host veth of `network`.
pub fn alias_prefix(network: &str) -> String {
    format!("weir-cni:{network}:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_short() {
        let a = Attachment {
            container_id: "abc".into(),
            ifname: "eth0".into(),
        };
        let n = host_veth(&a);
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("weir"));
        assert_eq!(n, host_veth(&a));
        // sha256("abc/eth0") starts with these 11 hex digits.
        let expected: String = Sha256::digest(b"abc/eth0")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()[..11]
            .to_owned();
        assert_eq!(n, format!("weir{expected}"));
        assert_ne!(
            n,
            host_veth(&Attachment {
                container_id: "abc".into(),
                ifname: "eth1".into()
            })
        );
    }
}
