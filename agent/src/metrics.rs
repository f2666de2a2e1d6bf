//! The agent's Prometheus metrics (`/metrics`, the text format): what failed and
//! what was skipped, so that "a map is full" or "objects are being refused" is
//! an alert rule rather than a log search.

use std::sync::Arc;

use aya::maps::MapError;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family},
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
        Arc::new(Self {
            registry,
            map_write_failures,
            objects_skipped,
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
