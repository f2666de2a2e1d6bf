//! The compiled services in human terms, for `weirctl services` and for tests:
//! which Service and port each frontend implements and where it sends traffic.

use std::{fmt, net::SocketAddr};

use serde::Serialize;

use crate::{endpoints::EndpointSourceKind, net::Protocol, slice::NodeRef, topology::TopologyMode};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum FrontendKind {
    ClusterIP,
    NodePort,
    ExternalIP,
    LoadBalancer,
}

/// `SCOPE_EXTERNAL` / `SCOPE_INTERNAL` of the service key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    External,
    Internal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    Active,
    Terminating,
}

/// One frontend (one service-map entry with slot 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrontendView {
    /// `namespace/name` of the Service.
    pub service: String,
    /// The service port's name (`""` for an unnamed port).
    pub port_name: String,
    pub kind: FrontendKind,
    pub address: SocketAddr,
    pub protocol: Protocol,
    pub scope: Scope,
    pub rev_nat_id: u32,
    /// Names of the `SVC_F_*` flags set.
    pub flags: Vec<&'static str>,
    /// Session affinity timeout, seconds, for `sessionAffinity: ClientIP`.
    pub affinity_timeout: Option<u32>,
    /// The Service's `healthCheckNodePort` (externalTrafficPolicy Local
    /// LoadBalancers): the port a load balancer probes for this node's endpoints.
    pub health_check_node_port: Option<u16>,
    pub endpoint_source: EndpointSourceKind,
    /// The topology hints its slots follow, if any do
    /// ([`crate::topology::Topology`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologyMode>,
    /// Every backend the frontend knows, in slot order first, then the backends
    /// kept only for established connections, or that topology hints leave to
    /// other nodes (`slot: None`).
    pub backends: Vec<BackendView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendView {
    pub id: u32,
    pub address: SocketAddr,
    pub node_name: Option<NodeRef>,
    pub state: BackendState,
    /// The slot (1-based) that new connections may pick, if any.
    pub slot: Option<u16>,
}

impl fmt::Display for FrontendView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = if self.port_name.is_empty() {
            String::new()
        } else {
            format!(":{}", self.port_name)
        };
        write!(
            f,
            "{}{} {:?} {}/{} {:?} ->",
            self.service, port, self.kind, self.address, self.protocol, self.scope
        )?;
        let in_slots: Vec<String> = self
            .backends
            .iter()
            .filter(|b| b.slot.is_some())
            .map(|b| b.address.to_string())
            .collect();
        if in_slots.is_empty() {
            write!(f, " (no endpoints: reject)")?;
        } else {
            write!(f, " {}", in_slots.join(" "))?;
        }
        match self.topology {
            Some(mode) => write!(f, " ({mode:?})"),
            None => Ok(()),
        }
    }
}
