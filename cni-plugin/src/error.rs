//! The plugin's errors and the CNI error code each one is reported with.

use weir_agent_api::AgentError;

use crate::{
    ipam::{IpamError, delegate::DelegateError},
    netlink::NetlinkError,
    netns::NetnsError,
    spec::{config::ConfigError, env::EnvError},
};

/// CNI error codes: 1-99 are the spec's, 100 and up ours.
pub mod codes {
    /// The configuration's `cniVersion` is not supported, or the verb does not
    /// exist in it (CHECK before 0.4.0, STATUS/GC before 1.1.0).
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field (here: a `CNI_ARGS` key) we do not support.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container is unknown (CHECK of an attachment we never made).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A missing or invalid `CNI_*` variable.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (IPAM store, pipes).
    pub const IO: u32 = 5;
    /// The configuration does not decode (syntax, field types).
    pub const DECODE: u32 = 6;
    /// The configuration decodes but makes no sense (bad subnet, no ranges, ...).
    pub const INVALID_CONFIG: u32 = 7;
    /// Transient: try again later (the node agent is not reachable).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot take ADDs (pool exhausted, no pod CIDR, no agent).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: limited connectivity (unused by us).
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// The range set has no free address left.
    pub const IPAM_EXHAUSTED: u32 = 100;
    /// The kernel refused a netlink request (veth, address, route, neighbour).
    pub const KERNEL: u32 = 101;
    /// `CNI_IFNAME` already exists in the container and is not ours.
    pub const INTERFACE_EXISTS: u32 = 102;
    /// CHECK found the attachment differs from `prevResult`.
    pub const CHECK_MISMATCH: u32 = 103;
    /// The delegated IPAM plugin failed without a usable error, or printed garbage.
    pub const DELEGATE: u32 = 104;
    /// A bug: the plugin panicked.
    pub const INTERNAL: u32 = 999;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Delegate(#[from] DelegateError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("CNI_NETNS: {0}")]
    BadNetns(#[source] NetnsError),
    #[error("{verb} is not part of CNI {version} (it needs {needs} or later)")]
    VerbNotInVersion {
        verb: &'static str,
        version: &'static str,
        needs: &'static str,
    },
    #[error("interface {ifname} already exists in {netns} and was not created by weir-cni")]
    InterfaceExists { ifname: String, netns: String },
    #[error("no attachment of container {container_id} on {ifname}: {reason}")]
    UnknownContainer {
        container_id: String,
        ifname: String,
        reason: String,
    },
    #[error("prevResult is required for CHECK")]
    MissingPrevResult,
    #[error("the attachment differs from prevResult: {}", .0.join("; "))]
    CheckMismatch(Vec<String>),
    #[error(
        "registering the pod with weir-agent at {socket} failed, so it was not wired (try again later): {source}"
    )]
    Agent { socket: String, source: AgentError },
    #[error("the delegated IPAM plugin returned no address")]
    NoAddress,
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("writing to stdout: {0}")]
    Stdout(#[source] std::io::Error),
}

impl Error {
    pub fn code(&self) -> u32 {
        use codes::*;
        match self {
            Error::Env(EnvError::UnknownArg(_)) => UNSUPPORTED_FIELD,
            Error::Env(_) | Error::BadNetns(_) => INVALID_ENV,
            Error::Config(ConfigError::Decode(_)) => DECODE,
            Error::Config(ConfigError::MissingVersion | ConfigError::Incompatible(_)) => INCOMPATIBLE_VERSION,
            Error::Config(ConfigError::Invalid { .. }) | Error::MissingPrevResult => INVALID_CONFIG,
            Error::Ipam(IpamError::Exhausted { .. }) => IPAM_EXHAUSTED,
            Error::Ipam(IpamError::Store { .. }) | Error::Stdout(_) => IO,
            Error::Delegate(DelegateError::Failed { code, .. }) => *code,
            Error::Delegate(DelegateError::NotFound { .. }) => INVALID_CONFIG,
            Error::Delegate(_) | Error::NoAddress => DELEGATE,
            Error::Netns(_) | Error::Netlink(_) => KERNEL,
            Error::VerbNotInVersion { .. } => INCOMPATIBLE_VERSION,
            Error::InterfaceExists { .. } => INTERFACE_EXISTS,
            Error::UnknownContainer { .. } => UNKNOWN_CONTAINER,
            Error::CheckMismatch(_) => CHECK_MISMATCH,
            Error::Agent { .. } => TRY_AGAIN_LATER,
            Error::NotReady(_) => PLUGIN_NOT_AVAILABLE,
        }
    }

    /// The spec's `details`: the chain of causes below the message.
    pub fn details(&self) -> String {
        match self {
            Error::Delegate(DelegateError::Failed { details, .. }) => details.clone(),
            _ => {
                let mut out = Vec::new();
                let mut cur = std::error::Error::source(self);
                while let Some(e) = cur {
                    let s = e.to_string();
                    if !self.to_string().contains(&s) {
                        out.push(s);
                    }
                    cur = e.source();
                }
                out.join(": ")
            }
        }
    }
}
