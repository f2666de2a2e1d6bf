//! The CNI 1.1.0 wire format: versions, configuration, results, errors. No I/O here.

pub mod config;
pub mod env;
pub mod result;
pub mod version;

pub use config::{Attachment, IpamConf, NetConf};
pub use env::{CniArgs, Command, Env};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::Version;

/// The spec's error object, printed on stdout with a non-zero exit.
pub fn error_json(version: Version, code: u32, msg: &str, details: &str) -> serde_json::Value {
    let mut v = serde_json::json!({ "cniVersion": version.as_str(), "code": code, "msg": msg });
    if !details.is_empty() {
        v["details"] = serde_json::Value::String(details.to_owned());
    }
    v
}
