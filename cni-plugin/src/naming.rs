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

/// The device group of `network`'s host veths: set by the request that creates
/// a veth, so that `GC` knows it as this network's even when the plugin was
/// killed before it could set the alias. 31 bits of sha256(network), the top
/// bit set: never the default group 0, nor a small number an operator picked.
pub fn group(network: &str) -> u32 {
    let hash = Sha256::digest(format!("weir-cni:{network}").as_bytes());
    u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]) | 0x8000_0000
}

/// `weir` + the first 11 hex digits of sha256("{containerid}/{ifname}"): 15 bytes,
/// the kernel's limit.
pub fn host_veth(a: &Attachment) -> String {
    format!("{HOST_PREFIX}{}", digest11(a))
}

/// The longest alias the kernel takes: `IFALIASZ` (256) with the NUL that
/// netlink carries.
const ALIAS_MAX: usize = 255 - 1;

/// The alias on the host veth: marks it as ours and says which network and
/// attachment it belongs to (GC reads its prefix). A container id too long to
/// fit is cut, marked with `~` (the veth's name, not the alias, identifies it).
pub fn alias(network: &str, a: &Attachment) -> String {
    let full = format!("weir-cni:{network}:{}/{}", a.container_id, a.ifname);
    if full.len() <= ALIAS_MAX {
        return full;
    }
    let fixed = alias_prefix(network).len() + 2 + a.ifname.len();
    let keep = ALIAS_MAX.saturating_sub(fixed).min(a.container_id.len());
    // Container ids are ASCII (validated), so any byte is a char boundary.
    let id = a.container_id.get(..keep).unwrap_or_default();
    format!("{}{id}~/{}", alias_prefix(network), a.ifname)
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
        assert_eq!(alias("net", &a), "weir-cni:net:abc/eth0");
        assert_ne!(
            n,
            host_veth(&Attachment {
                container_id: "abc".into(),
                ifname: "eth1".into()
            })
        );
    }

    #[test]
    fn long_ids_fit_the_alias_and_groups_differ_by_network() {
        let a = Attachment {
            container_id: "c".repeat(256),
            ifname: "eth0".into(),
        };
        let alias = alias("k8s-pod-network", &a);
        assert!(alias.len() <= ALIAS_MAX, "{}", alias.len());
        assert!(alias.starts_with(&alias_prefix("k8s-pod-network")));
        assert!(alias.ends_with("~/eth0"));
        assert_ne!(group("a"), group("b"));
        assert_eq!(group("a"), group("a"));
        assert!(group("a") & 0x8000_0000 != 0);
    }
}
