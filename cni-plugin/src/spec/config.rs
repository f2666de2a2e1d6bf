//! The network configuration on stdin: a single network config or the per-plugin
//! config a runtime builds from a conflist (`name`, `cniVersion`, maybe
//! `prevResult`, `runtimeConfig`, `args`). Unknown fields are ignored.
//!
//! Decoding happens in three steps, each with its own error code: JSON syntax and
//! field types (code 6), `cniVersion` (code 1), then meaning (code 7).

use std::{net::IpAddr, path::PathBuf};

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use super::{CniResult, Dns, Version};
use crate::ipam::range::{Range, RangeSet};

/// Where the built-in IPAM keeps its state when `ipam.dataDir` is not set.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/weir/ipam";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to decode the network configuration: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("the network configuration has no cniVersion")]
    MissingVersion,
    #[error("cniVersion {0:?} is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)")]
    Incompatible(String),
    #[error("invalid network configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub mtu: Option<u32>,
    pub ipam: IpamConf,
    pub dns: Dns,
    pub agent_socket: Option<PathBuf>,
    pub prev_result: Option<CniResult>,
    /// GC: the attachments the runtime still uses (`cni.dev/valid-attachments`).
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Clone, Debug)]
pub enum IpamConf {
    /// Our allocator (`ipam.type` absent or `"weir"`).
    Builtin { sets: Vec<RangeSet>, data_dir: PathBuf },
    /// Another IPAM plugin, found in `CNI_PATH`.
    Delegate { plugin: String },
}

/// One container attachment: what an allocation belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    name: Option<String>,
    mtu: Option<u32>,
    ipam: Option<RawIpam>,
    dns: Option<Dns>,
    agent_socket: Option<String>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    kind: Option<String>,
    ranges: Option<Vec<Vec<RawRange>>>,
    /// host-local's single-range shorthand.
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
    data_dir: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: String,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
}

/// The `cniVersion` of a configuration, when it has a usable one: used to answer
/// errors in the caller's version even when the rest does not decode.
pub fn peek_version(stdin: &[u8]) -> Option<Version> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    Version::parse(v.get("cniVersion")?.as_str()?)
}

/// Decodes just enough to know the version (for VERSION, STATUS's and GC's checks).
pub fn parse_version(stdin: &[u8]) -> Result<Version, ConfigError> {
    let v: Value = serde_json::from_slice(stdin).map_err(ConfigError::Decode)?;
    if !v.is_object() {
        return Err(ConfigError::Decode(serde::de::Error::custom(
            "the network configuration must be a JSON object",
        )));
    }
    match v.get("cniVersion") {
        None | Some(Value::Null) => Err(ConfigError::MissingVersion),
        Some(Value::String(s)) => Version::parse(s).ok_or_else(|| ConfigError::Incompatible(s.clone())),
        Some(other) => Err(ConfigError::Decode(serde::de::Error::custom(format!(
            "cniVersion must be a string, not {other}"
        )))),
    }
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, ConfigError> {
        let version = parse_version(stdin)?;
        let raw: RawConf = serde_json::from_slice(stdin).map_err(ConfigError::Decode)?;
        let name = raw.name.ok_or_else(|| invalid("name", "missing"))?;
        if !valid_name(&name) {
            return Err(invalid(
                "name",
                format!("{} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*", bounded(&name)),
            ));
        }
        if name.len() > NAME_MAX {
            return Err(invalid(
                "name",
                format!(
                    "{} is {} bytes long, more than {NAME_MAX} (it names the IPAM store's directory and marks host veths)",
                    bounded(&name),
                    name.len()
                ),
            ));
        }
        if let Some(mtu) = raw.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(invalid("mtu", format!("{mtu} is outside 68..=65535")));
        }
        let ipam = match raw.ipam {
            None => {
                return Err(invalid(
                    "ipam",
                    "missing (the node's pod CIDRs go in ipam.ranges)",
                ));
            }
            Some(ipam) => parse_ipam(ipam)?,
        };
        let prev_result = raw
            .prev_result
            .map(|v| CniResult::from_value(&v).map_err(|e| invalid("prevResult", e.to_string())))
            .transpose()?;
        Ok(NetConf {
            version,
            name,
            mtu: raw.mtu,
            ipam,
            dns: raw.dns.unwrap_or_default(),
            agent_socket: raw.agent_socket.map(PathBuf::from),
            prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }
}

/// The longest network name: with `weir-cni:` and a container id it must fit in
/// a link alias (255 bytes), and it names a directory of the IPAM store.
pub const NAME_MAX: usize = 128;

/// A client-supplied string as it may appear in a message: quoted, and cut to
/// its first 64 characters when longer (with the full length said), so that no
/// input can make a log line or an error of unbounded size.
pub fn bounded(s: &str) -> String {
    const SHOWN: usize = 64;
    match s.char_indices().nth(SHOWN) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &s[..cut], s.len()),
    }
}

/// The spec's rule for network names (also container ids, without the length).
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn parse_ipam(raw: RawIpam) -> Result<IpamConf, ConfigError> {
    match raw.kind.as_deref() {
        None | Some("weir") => {}
        Some("") => return Err(invalid("ipam.type", "empty")),
        Some(other) => {
            if other.contains('/') {
                return Err(invalid(
                    "ipam.type",
                    format!("{} is not a plugin name", bounded(other)),
                ));
            }
            return Ok(IpamConf::Delegate {
                plugin: other.to_owned(),
            });
        }
    }
    let shorthand = [
        ("subnet", raw.subnet.is_some()),
        ("rangeStart", raw.range_start.is_some()),
        ("rangeEnd", raw.range_end.is_some()),
        ("gateway", raw.gateway.is_some()),
    ];
    let raw_sets = match (raw.ranges, raw.subnet) {
        (Some(_), _) if shorthand.iter().any(|(_, set)| *set) => {
            let given: Vec<&str> = shorthand
                .iter()
                .filter(|(_, set)| *set)
                .map(|(f, _)| *f)
                .collect();
            return Err(invalid(
                "ipam",
                format!(
                    "{} beside ranges would be ignored: put them in the ranges",
                    given.join(", ")
                ),
            ));
        }
        (Some(ranges), _) => ranges,
        (None, Some(subnet)) => vec![vec![RawRange {
            subnet,
            range_start: raw.range_start,
            range_end: raw.range_end,
            gateway: raw.gateway,
        }]],
        (None, None) => return Err(invalid("ipam.ranges", "missing: this node has no pod CIDR")),
    };
    if raw_sets.is_empty() {
        return Err(invalid("ipam.ranges", "empty: this node has no pod CIDR"));
    }
    let mut sets = Vec::with_capacity(raw_sets.len());
    for raw_set in raw_sets {
        if raw_set.is_empty() {
            return Err(invalid("ipam.ranges", "a range set is empty"));
        }
        let set = RangeSet(raw_set.into_iter().map(parse_range).collect::<Result<_, _>>()?);
        let v4 = set.0[0].subnet.is_ipv4();
        if set.0.iter().any(|r| r.subnet.is_ipv4() != v4) {
            return Err(invalid("ipam.ranges", "a range set mixes IPv4 and IPv6"));
        }
        sets.push(set);
    }
    // Overlaps would hand one address to two pods through two sets.
    let all: Vec<&Range> = sets.iter().flat_map(|s| s.0.iter()).collect();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            if a.contains(b.start) || a.contains(b.end) || b.contains(a.start) {
                return Err(invalid("ipam.ranges", format!("{a} overlaps {b}")));
            }
        }
    }
    let data_dir = PathBuf::from(raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned()));
    // A relative path would be relative to wherever the runtime runs us.
    if !data_dir.is_absolute() {
        return Err(invalid(
            "ipam.dataDir",
            format!("{} is not an absolute path", bounded(&data_dir.to_string_lossy())),
        ));
    }
    Ok(IpamConf::Builtin { sets, data_dir })
}

/// Address blocks a pod must never get an address from: the pod would shadow
/// something of every host (its loopback, its link-local neighbours, multicast
/// groups) or could not be routed at all.
const RESERVED: [(&str, &str); 10] = [
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    ("240.0.0.0/4", "reserved and broadcast (240.0.0.0/4)"),
    ("::/127", "the unspecified and loopback addresses (::/127)"),
    ("::ffff:0:0/96", "IPv4-mapped addresses (::ffff:0:0/96)"),
    ("fe80::/10", "link-local (fe80::/10)"),
    ("ff00::/8", "multicast (ff00::/8)"),
    (
        "100::/64",
        "the discard prefix (100::/64, Weir's IPv6 hairpin source)",
    ),
];

/// What of [`RESERVED`] `subnet` overlaps, if anything.
fn unusable_for_pods(subnet: IpNetwork) -> Option<&'static str> {
    RESERVED.iter().find_map(|(block, why)| {
        let block: IpNetwork = block.parse().ok()?;
        let overlaps = block.is_ipv4() == subnet.is_ipv4()
            && (block.contains(subnet.network()) || subnet.contains(block.network()));
        overlaps.then_some(*why)
    })
}

fn parse_ip(field: &'static str, s: &str) -> Result<IpAddr, ConfigError> {
    s.parse()
        .map_err(|_| invalid(field, format!("{s:?} is not an IP address")))
}

fn parse_range(raw: RawRange) -> Result<Range, ConfigError> {
    let subnet: IpNetwork = raw
        .subnet
        .parse()
        .map_err(|_| invalid("ipam.ranges.subnet", format!("{:?} is not a CIDR", raw.subnet)))?;
    // Normalise 10.244.1.7/24 to 10.244.1.0/24.
    let subnet = IpNetwork::new(subnet.network(), subnet.prefix())
        .map_err(|e| invalid("ipam.ranges.subnet", e.to_string()))?;
    if let Some(why) = unusable_for_pods(subnet) {
        return Err(invalid(
            "ipam.ranges.subnet",
            format!("{subnet} overlaps {why}: not usable for pod addresses"),
        ));
    }
    let max_prefix = if subnet.is_ipv4() { 30 } else { 126 };
    if subnet.prefix() > max_prefix {
        return Err(invalid(
            "ipam.ranges.subnet",
            format!("{subnet} is too small (a gateway and at least one pod address are needed)"),
        ));
    }
    let (lo, hi) = Range::default_bounds(subnet);
    let within = |field: &'static str, ip: IpAddr| {
        let r = Range {
            subnet,
            start: lo,
            end: hi,
            gateway: lo,
        };
        if r.contains(ip) {
            Ok(ip)
        } else {
            Err(invalid(
                field,
                format!("{ip} is not a usable address of {subnet}"),
            ))
        }
    };
    let start = raw
        .range_start
        .map(|s| parse_ip("ipam.ranges.rangeStart", &s))
        .transpose()?;
    let end = raw
        .range_end
        .map(|s| parse_ip("ipam.ranges.rangeEnd", &s))
        .transpose()?;
    let gateway = raw
        .gateway
        .map(|s| parse_ip("ipam.ranges.gateway", &s))
        .transpose()?;
    let start = start
        .map(|ip| within("ipam.ranges.rangeStart", ip))
        .transpose()?
        .unwrap_or(lo);
    let end = end
        .map(|ip| within("ipam.ranges.rangeEnd", ip))
        .transpose()?
        .unwrap_or(hi);
    let gateway = gateway
        .map(|ip| within("ipam.ranges.gateway", ip))
        .transpose()?
        .unwrap_or_else(|| Range::default_gateway(subnet));
    if crate::ipam::range::to_u128(start) > crate::ipam::range::to_u128(end) {
        return Err(invalid(
            "ipam.ranges",
            format!("rangeStart {start} is after rangeEnd {end}"),
        ));
    }
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test should fail loudly on the first surprise"
)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<NetConf, ConfigError> {
        NetConf::parse(&serde_json::to_vec(&v).unwrap())
    }

    fn base() -> Value {
        json!({
            "cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "weir-cni",
            "ipam": { "ranges": [[{ "subnet": "10.244.1.0/24" }]] }
        })
    }

    #[test]
    fn good_config_with_defaults() {
        let c = parse(base()).unwrap();
        assert_eq!(c.version, Version::V1_1_0);
        assert_eq!(c.name, "k8s-pod-network");
        assert_eq!(c.mtu, None);
        let IpamConf::Builtin { sets, data_dir } = c.ipam else {
            panic!("builtin")
        };
        assert_eq!(data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let r = &sets[0].0[0];
        assert_eq!(r.gateway.to_string(), "10.244.1.1");
        assert_eq!(r.start.to_string(), "10.244.1.1");
        assert_eq!(r.end.to_string(), "10.244.1.254");
    }

    #[test]
    fn conflist_plugin_config_with_extra_fields() {
        let mut v = base();
        v["runtimeConfig"] = json!({ "portMappings": [] });
        v["args"] = json!({ "cni": { "labels": [] } });
        v["somethingNew"] = json!(42);
        v["mtu"] = json!(1400);
        v["agentSocket"] = json!("/run/weir/cni.sock");
        v["dns"] = json!({ "nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"] });
        v["prevResult"] = json!({ "cniVersion": "1.1.0", "interfaces": [{ "name": "x" }], "ips": [] });
        let c = parse(v).unwrap();
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.dns.nameservers, ["10.96.0.10"]);
        assert_eq!(c.agent_socket, Some(PathBuf::from("/run/weir/cni.sock")));
        assert_eq!(c.prev_result.unwrap().interfaces[0].name, "x");
    }

    #[test]
    fn subnet_shorthand_dual_stack_and_range_bounds() {
        let mut v = base();
        v["ipam"] = json!({ "subnet": "10.1.0.0/16", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20", "gateway": "10.1.0.254" });
        let IpamConf::Builtin { sets, .. } = parse(v).unwrap().ipam else {
            panic!()
        };
        assert_eq!(sets[0].0[0].start.to_string(), "10.1.0.10");
        assert_eq!(sets[0].0[0].gateway.to_string(), "10.1.0.254");
        let mut v = base();
        v["ipam"] = json!({ "type": "weir", "ranges": [[{ "subnet": "10.1.0.0/24" }], [{ "subnet": "fd00:10:244:1::/64" }]] });
        let IpamConf::Builtin { sets, .. } = parse(v).unwrap().ipam else {
            panic!()
        };
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[1].0[0].gateway.to_string(), "fd00:10:244:1::1");
    }

    #[test]
    fn delegation() {
        let mut v = base();
        v["ipam"] = json!({ "type": "host-local", "ranges": [[{ "subnet": "10.1.0.0/24" }]] });
        assert!(matches!(parse(v).unwrap().ipam, IpamConf::Delegate { plugin } if plugin == "host-local"));
    }

    fn code(r: Result<NetConf, ConfigError>) -> u32 {
        crate::Error::from(r.unwrap_err()).code()
    }

    #[test]
    fn malformed_inputs_get_the_right_codes() {
        assert_eq!(code(NetConf::parse(b"")), 6);
        assert_eq!(code(NetConf::parse(b"{\"cniVersion\": \"1.1.0\", \"na")), 6);
        assert_eq!(code(NetConf::parse(&[0xff, 0x00, 0x13])), 6);
        assert_eq!(code(NetConf::parse(b"[1,2]")), 6);
        let with = |k: &str, val: Value| {
            let mut v = base();
            v[k] = val;
            code(parse(v))
        };
        assert_eq!(with("mtu", json!("big")), 6);
        assert_eq!(with("mtu", json!(-1)), 6);
        assert_eq!(with("mtu", json!(10)), 7);
        assert_eq!(with("cniVersion", json!("9.9.9")), 1);
        assert_eq!(with("cniVersion", json!("0.2.0")), 1);
        assert_eq!(with("cniVersion", json!(1)), 6);
        assert_eq!(with("name", json!("bad name")), 7);
        assert_eq!(with("ipam", json!({})), 7);
        assert_eq!(with("ipam", json!({ "ranges": [] })), 7);
        assert_eq!(with("ipam", json!({ "ranges": [[]] })), 7);
        assert_eq!(
            with("ipam", json!({ "ranges": [[{ "subnet": "10.0.0.0/33" }]] })),
            7
        );
        assert_eq!(with("ipam", json!({ "ranges": [[{ "subnet": "banana" }]] })), 7);
        assert_eq!(
            with("ipam", json!({ "ranges": [[{ "subnet": "10.0.0.0/31" }]] })),
            7
        );
        assert_eq!(with("ipam", json!({ "ranges": [[{ "subnet": 10 }]] })), 6);
        assert_eq!(
            with(
                "ipam",
                json!({ "ranges": [[{ "subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1" }]] })
            ),
            7
        );
        assert_eq!(
            with(
                "ipam",
                json!({ "ranges": [[{ "subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3" }]] })
            ),
            7
        );
        assert_eq!(
            with(
                "ipam",
                json!({ "ranges": [[{ "subnet": "10.0.0.0/24" }], [{ "subnet": "10.0.0.0/25" }]] })
            ),
            7
        );
        assert_eq!(
            with(
                "ipam",
                json!({ "ranges": [[{ "subnet": "10.0.0.0/24" }, { "subnet": "fd00::/64" }]] })
            ),
            7
        );
        for subnet in [
            "0.0.0.0/0",
            "::/0",
            "127.0.0.0/8",
            "127.0.0.0/24",
            "169.254.1.0/24",
            "224.0.0.0/24",
            "fe80::/64",
            "ff02::/64",
            "::ffff:10.0.0.0/120",
            "0.0.0.0/1",
        ] {
            assert_eq!(
                with("ipam", json!({ "ranges": [[{ "subnet": subnet }]] })),
                7,
                "{subnet}"
            );
        }
        for stray in ["rangeStart", "rangeEnd", "gateway", "subnet"] {
            let mut ipam = json!({ "ranges": [[{ "subnet": "10.0.0.0/24" }]] });
            ipam[stray] = json!("10.0.0.5");
            assert_eq!(with("ipam", ipam), 7, "{stray} beside ranges");
        }
        for dir in ["", "relative/dir", "./x"] {
            assert_eq!(
                with("ipam", json!({ "subnet": "10.0.0.0/24", "dataDir": dir })),
                7,
                "{dir:?}"
            );
        }
        assert_eq!(with("name", json!("n".repeat(NAME_MAX + 1))), 7);
        assert!(
            parse({
                let mut v = base();
                v["name"] = json!("n".repeat(NAME_MAX));
                v
            })
            .is_ok()
        );
        let mut v = base();
        v.as_object_mut().unwrap().remove("cniVersion");
        assert_eq!(code(parse(v)), 1);
        let mut v = base();
        v.as_object_mut().unwrap().remove("name");
        assert_eq!(code(parse(v)), 7);
    }
}
