//! NetworkPolicy (networking.k8s.io/v1) semantics: which pods a policy isolates
//! and what it lets through, resolved against the model's pods and namespaces.
//!
//! This is the first stage of the policy compiler: [`compile_policies`] turns
//! the policies into, per pod, `None` (not isolated in that direction) or the
//! union of the rules that apply to it, with selectors resolved to pod
//! addresses. [`PodPolicies::allows`] answers for one connection. The datapath
//! encoding (identities, ipcache, policy maps) is built on this form.
//!
//! The rules, from the API reference, and where each lives:
//! - a policy selects the pods of its namespace matching `podSelector` (empty:
//!   all); `policyTypes` defaults to `Ingress`, plus `Egress` when the policy has
//!   egress rules (as the API server defaults it): `resolve::apply`;
//! - a pod is isolated in a direction when a policy selecting it has that type;
//!   what is allowed is the union of the rules of those policies; an empty rule
//!   list allows nothing, a rule without `from`/`to` allows every peer and a rule
//!   without `ports` every port of every protocol: `rules` (the resolved form and
//!   [`PodPolicies::allows`]), built by `resolve`;
//! - peers: `podSelector` alone (pods of the policy's namespace),
//!   `namespaceSelector` alone (every pod of matching namespaces), both (matching
//!   pods in matching namespaces), `ipBlock` (addresses in `cidr` outside every
//!   `except`): `resolve::resolve`, with label selectors in `selector` and every
//!   namespace labelled with its name in `compile`;
//! - ports: `protocol` (default TCP) with no `port` (all ports of it), a number
//!   (with `endPort`, a range), or a name, resolved on the destination pod's
//!   containers (for ingress the selected pod, for egress the peer pod):
//!   `resolve::ports_of` and `resolve::egress_rules`;
//! - which pods policies see at all (not hostNetwork ones, not finished ones)
//!   and their addresses: `pods`, on the Pod helpers the Services compiler
//!   shares (`crate::pod`);
//! - the datapath encoding: `encode`.

mod adopt;
mod compile;
mod encode;
mod pods;
mod resolve;
mod rules;
mod selector;
#[cfg(test)]
mod tests;

pub(crate) use self::selector::matches_labels;
pub use self::{
    compile::{INPUTS, NAMESPACE_NAME_LABEL, PolicyCompiler, compile_node, compile_policies},
    encode::{DesiredPolicy, IpcacheEntry, PolicyEncoder, RuleKey},
    pods::{local_pod_ips, pod_ips},
    rules::{Allow, PeerMatch, PodPolicies, PodPolicy, PortMatch},
    selector::selects,
};
