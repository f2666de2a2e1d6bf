//! The CNI configuration the agent writes for its node: `weir-cni` with the
//! node's pod CIDRs as its IPAM ranges and the agent's socket, then `portmap`
//! where hostPort is wanted. Written atomically (a temporary file renamed into
//! place), only once the agent is ready to serve `ADD`s, only when it changes,
//! and never over a file another wrote unless told to.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use ipnetwork::IpNetwork;
use serde_json::{Value, json};

/// The key that marks a conflist as the agent's own (libcni ignores keys it does
/// not know).
pub const MARK: &str = "weir.dev/written-by";

/// The network's name in the conflist (the IPAM store's directory).
pub const NETWORK: &str = "weir";

/// Where and how the conflist is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfOptions {
    pub path: PathBuf,
    /// The agent's CNI socket, for `agentSocket`.
    pub socket: PathBuf,
    /// Chain `portmap` after `weir-cni` (hostPort).
    pub portmap: bool,
    /// Replace a file at `path` that another wrote.
    pub overwrite: bool,
    /// Pods' MTU (`--routing vxlan`: the underlay's less the tunnel's
    /// overhead); `None`: the plugin's default, the uplink's.
    pub mtu: Option<u32>,
}

/// Whether `portmap` should be chained: `auto` when the plugin is installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Portmap {
    Auto,
    Always,
    Never,
}

impl Portmap {
    pub fn resolve(self, bin_dir: &Path) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => bin_dir.join("portmap").is_file(),
        }
    }
}

/// The conflist for a node whose pod CIDRs are `cidrs` (one range set each:
/// dual-stack nodes get one address of each family per pod). Version 1.0.0:
/// what containerd 1.6's libcni and the reference plugins speak.
pub fn render(cidrs: &[IpNetwork], options: &ConfOptions) -> Value {
    let ranges: Vec<Value> = cidrs
        .iter()
        .map(|c| json!([{ "subnet": c.to_string() }]))
        .collect();
    let mut weir = json!({
        "type": "weir-cni",
        "agentSocket": options.socket,
        "ipam": { "ranges": ranges },
    });
    if let Some(mtu) = options.mtu {
        weir["mtu"] = json!(mtu);
    }
    let mut plugins = vec![weir];
    if options.portmap {
        plugins.push(json!({ "type": "portmap", "capabilities": { "portMappings": true } }));
    }
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        MARK: "weir-agent",
        "plugins": plugins,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("{} exists and was not written by weir-agent (--cni-conf-overwrite replaces it)", .0.display())]
    Foreign(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Writes `conf` at `options.path` unless it holds it already; `true` when it
/// wrote. A file there that is not the agent's is left alone (an error), unless
/// `options.overwrite`.
pub fn write(conf: &Value, options: &ConfOptions) -> Result<bool, ConfError> {
    let path = &options.path;
    let io = |source| ConfError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read(path) {
        Ok(old) => {
            let old: Option<Value> = serde_json::from_slice(&old).ok();
            if old.as_ref() == Some(conf) {
                return Ok(false);
            }
            let ours = old.as_ref().is_some_and(|o| o.get(MARK).is_some());
            if !ours && !options.overwrite {
                return Err(ConfError::Foreign(path.clone()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    // Hidden and without the .conflist suffix: a runtime scanning the
    // directory never reads it half-written.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    let text = serde_json::to_vec_pretty(conf).unwrap_or_default();
    file.write_all(&text).and_then(|()| file.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> ConfOptions {
        ConfOptions {
            path: dir.join("05-weir.conflist"),
            socket: "/run/weir/cni.sock".into(),
            portmap: true,
            overwrite: false,
            mtu: None,
        }
    }

    #[test]
    fn renders_one_range_set_per_cidr_and_chains_portmap() {
        let dir = std::env::temp_dir();
        let cidrs: Vec<IpNetwork> = ["10.244.1.0/24", "fd00:10:244:1::/64"]
            .iter()
            .map(|c| c.parse().expect("cidr"))
            .collect();
        let conf = render(&cidrs, &options(&dir));
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["plugins"][0]["type"], "weir-cni");
        assert_eq!(
            conf["plugins"][0]["ipam"]["ranges"],
            json!([[{ "subnet": "10.244.1.0/24" }], [{ "subnet": "fd00:10:244:1::/64" }]])
        );
        assert_eq!(conf["plugins"][0]["agentSocket"], "/run/weir/cni.sock");
        assert_eq!(conf["plugins"][1]["type"], "portmap");
        let without = render(
            &cidrs,
            &ConfOptions {
                portmap: false,
                ..options(&dir)
            },
        );
        assert_eq!(without["plugins"].as_array().map(Vec::len), Some(1));
        assert_eq!(conf["plugins"][0].get("mtu"), None, "the plugin's default");
        let overlay = render(
            &cidrs,
            &ConfOptions {
                mtu: Some(1450),
                ..options(&dir)
            },
        );
        assert_eq!(overlay["plugins"][0]["mtu"], 1450);
    }

    #[test]
    fn writes_atomically_only_changes_and_never_over_another_file() {
        let dir = std::env::temp_dir().join(format!("weir-conflist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opts = options(&dir);
        let conf = render(&["10.244.1.0/24".parse().expect("cidr")], &opts);
        assert!(write(&conf, &opts).expect("first write"));
        assert!(
            !write(&conf, &opts).expect("same again"),
            "rewrote an unchanged file"
        );
        let read: Value = serde_json::from_slice(&std::fs::read(&opts.path).expect("read")).expect("json");
        assert_eq!(read, conf);
        // Another's file: left alone, unless told.
        std::fs::write(
            &opts.path,
            r#"{"cniVersion": "0.4.0", "name": "flannel", "plugins": []}"#,
        )
        .expect("write");
        assert!(matches!(write(&conf, &opts), Err(ConfError::Foreign(_))));
        let forced = ConfOptions {
            overwrite: true,
            ..opts.clone()
        };
        assert!(write(&conf, &forced).expect("overwrite"));
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["05-weir.conflist"], "a temporary file was left");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
