//! The agent's Prometheus metrics (`/metrics`, the text format): what failed and
//! what was skipped, so that "a map is full" or "objects are being refused" is
//! an alert rule rather than a log search.

use std::sync::Arc;

use aya::maps::MapError;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapFailureLabels {
    pub map: String,
    /// The errno's name (`E2BIG`: the map is full), or `none`.
    pub errno: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Every metric the agent exports, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    /// Failed map writes (each retried at the next sync), by map and errno.
    pub map_write_failures: Family<MapFailureLabels, Counter>,
    /// Objects (or documents) skipped as invalid, by kind (`document` when the
    /// kind is unknown).
    pub objects_skipped: Family<KindLabels, Counter>,
    /// The policy conntrack: live entries, of its capacity, at the last GC pass.
    pub policy_ct_entries: Gauge,
    pub policy_ct_capacity: Gauge,
    /// Isolated endpoints at their share of the policy conntrack (their new
    /// datagram flows are judged packet by packet), and the largest share held.
    pub policy_ct_at_share: Gauge,
    pub policy_ct_largest_share: Gauge,
    /// 1 while pods' packets to pods of the node go through the host's stack
    /// (`--host-routing`).
    pub host_stack: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("weir");
        let map_write_failures = Family::<MapFailureLabels, Counter>::default();
        registry.register(
            "map_write_failures",
            "Map writes that failed (retried at the next sync), by map and errno",
            map_write_failures.clone(),
        );
        let objects_skipped = Family::<KindLabels, Counter>::default();
        registry.register(
            "objects_skipped",
            "Kubernetes objects or documents skipped as invalid, by kind",
            objects_skipped.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let policy_ct_entries = gauge(
            &mut registry,
            "policy_conntrack_entries",
            "Live entries of the policy conntrack at the last GC pass",
        );
        let policy_ct_capacity = gauge(
            &mut registry,
            "policy_conntrack_capacity",
            "Entries the policy conntrack holds at most",
        );
        policy_ct_capacity.set(i64::from(weir_common::maps::POLICY_CT_ENTRIES));
        let policy_ct_at_share = gauge(
            &mut registry,
            "policy_conntrack_endpoints_at_share",
            "Isolated endpoints holding their whole share of the policy conntrack (their new datagram flows go untracked)",
        );
        let policy_ct_largest_share = gauge(
            &mut registry,
            "policy_conntrack_largest_share",
            "The most datagram-flow entries one endpoint holds in the policy conntrack",
        );
        let host_stack = gauge(
            &mut registry,
            "host_routing_legacy",
            "1 while packets between pods of the node go through the host's stack (netfilter), 0 while eBPF delivers them",
        );
        Arc::new(Self {
            registry,
            host_stack,
            map_write_failures,
            objects_skipped,
            policy_ct_entries,
            policy_ct_capacity,
            policy_ct_at_share,
            policy_ct_largest_share,
        })
    }

    /// Counts a failed write to `map`.
    pub fn map_write_failed(&self, map: &str, errno: &str) {
        self.map_write_failures
            .get_or_create(&MapFailureLabels {
                map: map.to_owned(),
                errno: errno.to_owned(),
            })
            .inc();
    }

    pub fn object_skipped(&self, kind: &str) {
        self.objects_skipped
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The errno of a failed map operation, by name (`E2BIG`, `ENOMEM`), or `none`.
pub fn errno_name(e: &MapError) -> String {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error().map_or_else(
            || "none".to_owned(),
            |n| format!("{:?}", nix::errno::Errno::from_raw(n)),
        ),
        _ => "none".to_owned(),
    }
}
