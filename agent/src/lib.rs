//! Weir's node agent.
//!
//! - [`datapath`]: the thin kernel-facing layer: load the eBPF object, pin maps and
//!   links under one root, attach programs to pod veths, typed map handles.
//! - [`node_net`]: the node's devices and addresses (where NodePorts are served).
//! - [`node_routes`]: routes to other Nodes' pod CIDRs (`--routing native`
//!   via their addresses, `--routing vxlan` through the [`overlay`]'s device).
//! - [`netlink`]: the blocking rtnetlink handle both use.
//! - [`node`]: this node's Node object: pod CIDRs for the CNI configuration
//!   ([`cni_conf`]), addresses for NodePorts.
//! - [`status`]: alive, ready, and kube-proxy's health contract.
//! - [`cni_server`]: the unix socket on which `weir-cni` registers pods, so that a
//!   pod's datapath is in force before `ADD` returns.
//! - [`source`]: where the cluster model comes from (the API server, or `dir:PATH`).
//! - [`sync`]: compile the model and write only the difference to the maps, in an
//!   order that keeps the datapath consistent.
//! - [`conntrack`]: conntrack/affinity GC and the UDP flush of removed backends.
//! - [`health`]: the `healthCheckNodePort` server (externalTrafficPolicy Local).
//! - [`sync_loop`]: the threads that run the three above (the sync loop of
//!   services and policy, and the conntrack GC).
//! - [`supervise`]: those threads' panics end the agent (the DaemonSet restarts
//!   it; the pinned datapath keeps forwarding), never stop their work silently.
//! - [`ctl`]: `weirctl`'s views of the maps.
//! - [`compile`]: `weir-agent compile`, those views of what a directory of
//!   manifests compiles to, offline.
//! - [`metrics`], [`http`]: the agent's Prometheus metrics and the endpoint
//!   that serves them.
//! - [`monitor`]: the datapath's events, read once, kept and streamed to every
//!   `weirctl monitor`.

pub mod cli;
pub mod cni_conf;
pub mod cni_server;
pub mod compile;
pub mod conntrack;
pub mod ctl;
pub mod datapath;
pub mod health;
pub mod host_routing;
pub mod http;
pub mod masquerade;
pub mod memory;
pub mod metrics;
pub mod monitor;
pub mod netlink;
pub mod node;
pub mod node_net;
pub mod node_routes;
pub mod overlay;
pub mod source;
pub mod source_ranges;
pub mod status;
pub mod supervise;
pub mod sync;
pub mod sync_loop;
