//! The CNI spec versions this plugin speaks, and what each one allows.

use std::fmt;

/// A supported `cniVersion`. Ordered, so `v >= Version::V0_4_0` reads as the spec does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub const ALL: [Version; 5] = [
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];

    /// The version we answer in when the configuration gives none we can use.
    pub const LATEST: Version = Version::V1_1_0;

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Results before 1.0.0 carry `ips[].version` ("4"/"6").
    pub fn has_ip_version_field(self) -> bool {
        self < Version::V1_0_0
    }

    /// CHECK appeared in 0.4.0.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// STATUS and GC appeared in 1.1.0.
    pub fn has_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `VERSION` command's answer.
pub fn version_info(answer_in: Version) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": answer_in.as_str(),
        "supportedVersions": Version::ALL.map(Version::as_str),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_lists_every_supported_version() {
        let v = version_info(Version::V1_1_0);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }

    #[test]
    fn parse_and_capabilities() {
        assert_eq!(Version::parse("0.4.0"), Some(Version::V0_4_0));
        assert_eq!(Version::parse("0.2.0"), None);
        assert_eq!(Version::parse("9.9.9"), None);
        assert!(!Version::V0_3_1.has_check());
        assert!(Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_status_and_gc());
        assert!(Version::V1_1_0.has_status_and_gc());
        assert!(Version::V0_4_0.has_ip_version_field());
        assert!(!Version::V1_0_0.has_ip_version_field());
    }
}
