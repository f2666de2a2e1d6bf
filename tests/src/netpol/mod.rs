//! Kubernetes NetworkPolicy (networking.k8s.io/v1) for the tests: the expected side.
//!
//! The end-to-end tests probe real reachability between lab pods and compare it with
//! what [`oracle`] computes: an *independent*, deliberately simple evaluator written
//! from the Kubernetes documentation, sharing no code with the agent's policy
//! compiler. Policies are plain `serde_json::Value`s exactly as an API server holds
//! them (`apiVersion`, `kind`, `metadata {name, namespace}`, `spec` in camelCase), so
//! the same objects can be written to the agent's manifest directory.
//!
//! - [`cluster`]: namespaces and pods, and their API objects;
//! - [`oracle`]: whether the policies allow a connection ([`allowed`]);
//! - [`probes`](mod@probes): the pod-to-pod probes an end-to-end test runs, and
//!   the expected matrix;
//! - [`scenarios`](mod@scenarios): the upstream "x, y, z / a, b, c" cluster and the
//!   scenarios of the upstream e2e suite played on it (tests/tests/root_netpol.rs);
//! - [`generate`]: random clusters and policies for the property test
//!   (tests/tests/policy_agreement.rs).

pub mod cluster;
pub mod generate;
pub mod oracle;
pub mod probes;
pub mod scenarios;

pub use cluster::{Cluster, NsInfo, PodInfo};
pub use generate::{RandomCase, random_cases};
pub use oracle::allowed;
pub use probes::{Probe, matrix, probes};
pub use scenarios::{ALLOW_ALL_SCENARIOS, Scenario, Step, scenarios};
