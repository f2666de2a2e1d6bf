//! The ADD result, read (as `prevResult` or from a delegated IPAM plugin) in any
//! supported version and written in the version the configuration asks for.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Version;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Set for interfaces inside the container: the netns path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One address. `version` ("4"/"6", results before 1.0.0) is derived on output and
/// ignored on input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl CniResult {
    /// Reads a result of any supported version; `None` for JSON that is not one.
    pub fn from_value(v: &Value) -> Result<Self, serde_json::Error> {
        Self::deserialize(v)
    }

    /// The result as the spec's `version` wants it on stdout.
    pub fn render(&self, version: Version) -> Value {
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = json!({ "address": ip.address.to_string() });
                if version.has_ip_version_field() {
                    o["version"] = json!(if ip.address.is_ipv4() { "4" } else { "6" });
                }
                if let Some(gw) = ip.gateway {
                    o["gateway"] = json!(gw.to_string());
                }
                if let Some(i) = ip.interface {
                    o["interface"] = json!(i);
                }
                o
            })
            .collect();
        json!({
            "cniVersion": version.as_str(),
            "interfaces": self.interfaces,
            "ips": ips,
            "routes": self.routes,
            "dns": self.dns,
        })
    }
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test should fail loudly on the first surprise"
)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "weirabc".into(),
                    mac: Some("aa:bb:cc:dd:ee:ff".into()),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("11:22:33:44:55:66".into()),
                    sandbox: Some("/var/run/netns/p".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.2/32".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::2/128".parse().unwrap(),
                    gateway: Some("fd00::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_carry_ip_version() {
        let v = sample().render(Version::V0_3_1);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert_eq!(v["ips"][0]["address"], "10.244.1.2/32");
    }

    #[test]
    fn one_dot_x_drops_ip_version() {
        let v = sample().render(Version::V1_1_0);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["ips"][0]["gateway"], "10.244.1.1");
        assert_eq!(v["interfaces"][0].get("sandbox"), None);
        assert_eq!(v["interfaces"][1]["sandbox"], "/var/run/netns/p");
        assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(v["dns"], json!({}));
    }

    #[test]
    fn round_trips_through_any_version() {
        for version in Version::ALL {
            let back = CniResult::from_value(&sample().render(version)).unwrap();
            assert_eq!(back, sample(), "{version}");
        }
    }
}
