//! The registration protocol between `weir-cni` and `weir-agent` on the same node.
//!
//! One request per connection on a unix stream socket: the plugin writes one JSON
//! line ([`Request`]), the agent answers one JSON line ([`Reply`]) once the pod's
//! programs are attached and its map entries written, so that when `ADD` returns the
//! pod's datapath is in force.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Default socket path (agent flag `--cni-socket`, CNI config field `agentSocket`).
pub const DEFAULT_SOCKET: &str = "/run/weir/cni.sock";

/// A pod's attachment, as the plugin knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub container_id: String,
    pub ifname: String,
    /// Host side of the pod's veth.
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// The pod's addresses (one per family).
    pub ips: Vec<IpAddr>,
    /// From `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`), when the runtime gave them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The MAC of the pod's end of the veth and of the host's: the agent
    /// addresses frames it hands straight into the pod with them. Absent (an
    /// older plugin): such frames go by the host veth instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<[u8; 6]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_mac: Option<[u8; 6]>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Request {
    /// The pod's veth is up and addressed: attach programs, write its entries.
    Add(Endpoint),
    /// The pod is going away: forget it (idempotent). `ips` are the addresses the
    /// plugin released: the agent finds the endpoint's veth through them, even when
    /// the veth itself is already gone.
    Del {
        container_id: String,
        ifname: String,
        #[serde(default)]
        ips: Vec<IpAddr>,
    },
}

impl Request {
    /// The operation's name, as the CNI verbs: `add`, `del`.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Add(_) => "add",
            Request::Del { .. } => "del",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum Reply {
    Ok,
    Error { message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach weir-agent at {path}: {source} (is the agent running on this node?)")]
    Connect { path: String, source: std::io::Error },
    #[error("talking to weir-agent at {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("weir-agent at {path} sent an unreadable reply: {source}")]
    Decode { path: String, source: serde_json::Error },
    #[error("weir-agent refused: {0}")]
    Refused(String),
}

/// How long the plugin waits for the agent: attaching programs takes milliseconds,
/// so anything near this means the agent is stuck and the runtime should retry.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request and waits for the agent's answer.
pub fn call(socket: &Path, request: &Request) -> Result<(), AgentError> {
    let path = socket.display().to_string();
    let io = |source| AgentError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| AgentError::Connect {
        path: path.clone(),
        source,
    })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|source| AgentError::Decode {
        path: path.clone(),
        source,
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    match serde_json::from_str(&answer).map_err(|source| AgentError::Decode {
        path: path.clone(),
        source,
    })? {
        Reply::Ok => Ok(()),
        Reply::Error { message } => Err(AgentError::Refused(message)),
    }
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    reason = "a test should fail loudly on the first surprise"
)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format_is_tagged_camel_case() {
        let r = Request::Del {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            ips: vec![],
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"del","containerId":"c1","ifname":"eth0","ips":[]}"#
        );
    }
}
