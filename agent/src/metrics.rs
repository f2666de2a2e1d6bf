//! The agent's Prometheus metrics (`/metrics`, the OpenMetrics text format):
//! what it programmed and how long that took, how full each map is, what the
//! datapath counted, what failed and what was skipped, so that "a map is
//! nearly full", "syncs are failing" or "drops are surging" is an alert rule
//! (`manifests/alerts.yaml`) rather than a log search.
//!
//! Most figures are set where they become known (a sync, a GC pass, a CNI
//! request); the datapath's counters and the process's figures are read when
//! scraped ([`DatapathCollector`], [`ProcessCollector`]).

use std::{fmt, sync::Arc, time::Duration};

use aya::maps::MapError;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};
use weir_common::{Dir, Reason, metrics_slot};

use crate::datapath::{PinLayout, maps};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CniLabels {
    /// `add` or `del`.
    pub op: String,
    /// `ok` or `error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
}

/// What the agent has programmed, as of its last complete syncs.
pub struct Programmed {
    /// Service frontends (address, port, protocol), one reverse-NAT entry each.
    pub frontends: Gauge,
    /// Backends (endpoint address, port, protocol) of those frontends.
    pub backends: Gauge,
    /// NetworkPolicies in force (valid ones, in the whole cluster).
    pub policies: Gauge,
    /// Policy identities: the peer sets the node's rules name.
    pub identities: Gauge,
    /// This node's pod addresses the datapath delivers to.
    pub endpoints: Gauge,
    /// Of those, the ones NetworkPolicy isolates (ingress or egress).
    pub isolated_endpoints: Gauge,
}

/// Every metric the agent exports, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    /// Failed map writes (each retried at the next sync), by map and errno.
    pub map_write_failures: Family<MapFailureLabels, Counter>,
    /// Objects (or documents) skipped as invalid, by kind (`document` when the
    /// kind is unknown).
    pub objects_skipped: Family<KindLabels, Counter>,
    /// How long a sync took (compile and write), by kind: `services`, `policy`.
    pub sync_duration: Family<KindLabels, Histogram>,
    /// Syncs that left failed writes behind, to be retried, by kind.
    pub sync_retries: Family<KindLabels, Counter>,
    /// From an EndpointSlice's last-change-trigger-time to the maps written:
    /// kube-proxy's `network_programming_duration_seconds`.
    pub network_programming: Histogram,
    pub programmed: Programmed,
    /// Entries per map: the agent's maps as of its last complete sync, the
    /// datapath's (conntrack, affinity) as of the last GC pass.
    pub map_entries: Family<MapLabels, Gauge>,
    /// Entries the conntrack GC deleted, by map.
    pub gc_deletions: Family<MapLabels, Counter>,
    /// Source ports of node addresses held by live flows, by kind: `nodeport`
    /// (external clients of remote endpoints), `masquerade` (pods' egress).
    pub snat_ports: Family<KindLabels, Gauge>,
    /// CNI registrations (`add`) and unregistrations (`del`), by result.
    pub cni_requests: Family<CniLabels, Counter>,
    pub cni_duration: Family<OpLabels, Histogram>,
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

/// Latency buckets from 0.5 ms to ~16 s, for syncs and CNI requests.
fn latency_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

impl Metrics {
    /// The metrics, with the datapath's counters read from the maps pinned
    /// under `pins` at every scrape (`None`: not exported).
    pub fn new(pins: Option<PinLayout>) -> Arc<Self> {
        let mut root = Registry::default();
        // Unprefixed, as every exporter names them.
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("weir");
        if let Some(pins) = pins {
            registry.register_collector(Box::new(DatapathCollector { pins }));
        }
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
        let sync_duration =
            Family::<KindLabels, Histogram>::new_with_constructor(latency_buckets as fn() -> Histogram);
        registry.register(
            "sync_duration_seconds",
            "Time a sync took, compiling and writing the maps, by kind (services, policy)",
            sync_duration.clone(),
        );
        let sync_retries = Family::<KindLabels, Counter>::default();
        registry.register(
            "sync_retries",
            "Syncs that left failed map writes behind, retried, by kind (services, policy)",
            sync_retries.clone(),
        );
        // kube-proxy's range, finer at the low end: the agent's figures are
        // milliseconds, a controller's trigger can be seconds behind.
        let network_programming = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0,
            300.0,
        ]);
        registry.register(
            "network_programming_duration_seconds",
            "From an EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time to its change written to the maps",
            network_programming.clone(),
        );
        let mut gauge = |name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let programmed = Programmed {
            frontends: gauge(
                "frontends",
                "Service frontends programmed (address, port, protocol)",
            ),
            backends: gauge("backends", "Service backends programmed"),
            policies: gauge("policies", "NetworkPolicies in force in the cluster"),
            identities: gauge(
                "identities",
                "Policy identities (peer sets) this node's rules name",
            ),
            endpoints: gauge("endpoints", "Pod addresses of this node the datapath delivers to"),
            isolated_endpoints: gauge(
                "isolated_endpoints",
                "Pod addresses of this node isolated by NetworkPolicy",
            ),
        };
        let policy_ct_entries = gauge(
            "policy_conntrack_entries",
            "Live entries of the policy conntrack at the last GC pass",
        );
        let policy_ct_capacity = gauge(
            "policy_conntrack_capacity",
            "Entries the policy conntrack holds at most",
        );
        policy_ct_capacity.set(i64::from(weir_common::maps::POLICY_CT_ENTRIES));
        let policy_ct_at_share = gauge(
            "policy_conntrack_endpoints_at_share",
            "Isolated endpoints holding their whole share of the policy conntrack (their new datagram flows go untracked)",
        );
        let policy_ct_largest_share = gauge(
            "policy_conntrack_largest_share",
            "The most datagram-flow entries one endpoint holds in the policy conntrack",
        );
        let host_stack = gauge(
            "host_routing_legacy",
            "1 while packets between pods of the node go through the host's stack (netfilter), 0 while eBPF delivers them",
        );
        let map_entries = Family::<MapLabels, Gauge>::default();
        registry.register(
            "map_entries",
            "Entries per map (the agent's maps as of the last complete sync, conntrack and affinity as of the last GC pass)",
            map_entries.clone(),
        );
        let map_capacity = Family::<MapLabels, Gauge>::default();
        registry.register(
            "map_capacity",
            "Entries each map holds at most",
            map_capacity.clone(),
        );
        for spec in maps::counted() {
            map_capacity
                .get_or_create(&MapLabels {
                    map: spec.name.to_owned(),
                })
                .set(i64::from(spec.max_entries));
        }
        let gc_deletions = Family::<MapLabels, Counter>::default();
        registry.register(
            "gc_deletions",
            "Entries the conntrack GC deleted (expired flows, idle affinity), by map",
            gc_deletions.clone(),
        );
        let snat_ports = Family::<KindLabels, Gauge>::default();
        registry.register(
            "snat_ports_in_use",
            "Node source ports held by live translated flows, by kind (nodeport: external clients of remote endpoints; masquerade: pods' egress)",
            snat_ports.clone(),
        );
        let cni_requests = Family::<CniLabels, Counter>::default();
        registry.register(
            "cni_requests",
            "Pod registrations (add) and unregistrations (del) by the CNI plugin, by result",
            cni_requests.clone(),
        );
        let cni_duration =
            Family::<OpLabels, Histogram>::new_with_constructor(latency_buckets as fn() -> Histogram);
        registry.register(
            "cni_request_duration_seconds",
            "Time the agent took to register (add) or unregister (del) a pod",
            cni_duration.clone(),
        );
        // Series whose labels are known in advance start at zero, so that
        // their first increment is an increase a rule sees (and every name
        // is listed before anything happened).
        for spec in maps::counted() {
            map_write_failures
                .get_or_create(&MapFailureLabels {
                    map: spec.name.to_owned(),
                    errno: "E2BIG".to_owned(),
                })
                .inc_by(0);
        }
        for kind in ["services", "policy"] {
            sync_retries.get_or_create(&kind_label(kind)).inc_by(0);
        }
        for kind in weir_model::Kind::ALL
            .iter()
            .map(|k| k.as_str())
            .chain(["document"])
        {
            objects_skipped.get_or_create(&kind_label(kind)).inc_by(0);
        }
        for op in ["add", "del"] {
            for result in ["ok", "error"] {
                cni_requests
                    .get_or_create(&CniLabels {
                        op: op.to_owned(),
                        result: result.to_owned(),
                    })
                    .inc_by(0);
            }
        }
        Arc::new(Self {
            registry: root,
            map_write_failures,
            objects_skipped,
            sync_duration,
            sync_retries,
            network_programming,
            programmed,
            map_entries,
            gc_deletions,
            snat_ports,
            cni_requests,
            cni_duration,
            policy_ct_entries,
            policy_ct_capacity,
            policy_ct_at_share,
            policy_ct_largest_share,
            host_stack,
        })
    }

    /// Counts `n` failed writes to `map`.
    pub fn map_write_failed(&self, map: &str, errno: &str, n: u64) {
        self.map_write_failures
            .get_or_create(&MapFailureLabels {
                map: map.to_owned(),
                errno: errno.to_owned(),
            })
            .inc_by(n);
    }

    pub fn object_skipped(&self, kind: &str) {
        self.objects_skipped.get_or_create(&kind_label(kind)).inc();
    }

    /// A sync of `kind` took `took`; `complete`: no write was left to retry.
    pub fn synced(&self, kind: &str, took: Duration, complete: bool) {
        let labels = kind_label(kind);
        self.sync_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if !complete {
            self.sync_retries.get_or_create(&labels).inc();
        }
    }

    pub fn set_entries(&self, map: &str, entries: usize) {
        self.map_entries
            .get_or_create(&MapLabels { map: map.to_owned() })
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub fn gc_deleted(&self, map: &str, deleted: usize) {
        self.gc_deletions
            .get_or_create(&MapLabels { map: map.to_owned() })
            .inc_by(deleted as u64);
    }

    /// A CNI request `op` answered with `ok` or not, after `took`.
    pub fn cni_request(&self, op: &str, ok: bool, took: Duration) {
        self.cni_requests
            .get_or_create(&CniLabels {
                op: op.to_owned(),
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
        self.cni_duration
            .get_or_create(&OpLabels { op: op.to_owned() })
            .observe(took.as_secs_f64());
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn kind_label(kind: &str) -> KindLabels {
    KindLabels {
        kind: kind.to_owned(),
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatapathLabels {
    direction: &'static str,
    reason: &'static str,
}

/// The programs' own counters (the metrics map, summed over the CPUs), read
/// at each scrape: packets and bytes by direction and reason, and the drops
/// among them. Nothing is exported while the map cannot be read.
#[derive(Debug)]
struct DatapathCollector {
    pins: PinLayout,
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Ok(counts) = datapath_counts(&self.pins) else {
            return Ok(());
        };
        type Pick = fn(&DatapathCount) -> Option<u64>;
        let families: [(&str, &str, Pick); 4] = [
            (
                "datapath_packets",
                "Packets the datapath counted, by direction and reason (forwarded, or why dropped)",
                |c| Some(c.packets),
            ),
            (
                "datapath_bytes",
                "Bytes the datapath counted, by direction and reason",
                |c| Some(c.bytes),
            ),
            (
                "drops",
                "Packets the datapath dropped or rejected, by direction and reason",
                |c| c.drop.then_some(c.packets),
            ),
            (
                "drop_bytes",
                "Bytes of packets the datapath dropped or rejected, by direction and reason",
                |c| c.drop.then_some(c.bytes),
            ),
        ];
        for (name, help, pick) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for count in &counts {
                if let Some(value) = pick(count) {
                    ConstCounter::new(value).encode(family.encode_family(&count.labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// One non-zero slot of the metrics map.
struct DatapathCount {
    labels: DatapathLabels,
    /// Whether its reason is a drop's.
    drop: bool,
    packets: u64,
    bytes: u64,
}

fn datapath_counts(pins: &PinLayout) -> Result<Vec<DatapathCount>, Box<crate::datapath::DatapathError>> {
    let map: maps::Metrics = maps::open_pinned(pins, &maps::METRICS).map_err(Box::new)?;
    let sums = maps::sum_metrics(&map).map_err(Box::new)?;
    Ok(sums
        .into_iter()
        .filter_map(|(slot, v)| {
            let (dir, reason) = metrics_slot(slot);
            let dir = Dir::try_from(dir).ok()?;
            let reason = Reason::try_from(reason).ok()?;
            let labels = DatapathLabels {
                direction: dir.name(),
                reason: reason.label(),
            };
            Some(DatapathCount {
                labels,
                drop: reason.is_drop(),
                packets: v.packets,
                bytes: v.bytes,
            })
        })
        .collect())
}

/// The standard process figures every Prometheus exporter has, from `/proc`:
/// CPU time, resident and virtual memory, open and allowed file descriptors,
/// start time.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(p) = process_figures() else {
            return Ok(());
        };
        ConstCounter::new(p.cpu_seconds).encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        let gauges: [(&str, &str, f64); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes,
            ),
            ("process_open_fds", "Number of open file descriptors", p.open_fds),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                p.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                p.start_time,
            ),
        ];
        for (name, help, value) in gauges {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

struct ProcessFigures {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    max_fds: f64,
    start_time: f64,
}

fn process_figures() -> Option<ProcessFigures> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may hold spaces: fields count
    // from after its closing one (field 3, the state, is the first).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    // SAFETY: sysconf reads a constant of the system.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let (ticks, page) = (ticks.max(1) as f64, page.max(1) as f64);
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|b| b.trim().parse::<f64>().ok())?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    Some(ProcessFigures {
        cpu_seconds: (field(14)? + field(15)?) / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
        open_fds,
        max_fds: soft as f64,
        start_time: boot + field(22)? / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn the_process_figures_are_this_process() {
        let text = Metrics::new(None).render();
        let rss = value(&text, "process_resident_memory_bytes").expect("rss");
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let own = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .expect("VmRSS")
            * 1024.0;
        assert!(rss > 0.0 && (rss - own).abs() < own / 2.0, "{rss} vs {own}");
        assert!(value(&text, "process_open_fds").expect("fds") >= 3.0);
        assert!(value(&text, "process_max_fds").expect("max fds") >= 64.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let start = value(&text, "process_start_time_seconds").expect("start");
        assert!(start <= now + 1.0 && start > now - 3600.0, "{start} vs {now}");
        assert!(value(&text, "process_cpu_seconds_total").expect("cpu") >= 0.0);
    }

    #[test]
    fn figures_set_by_the_agent_are_rendered_with_their_labels() {
        let m = Metrics::new(None);
        m.synced("services", Duration::from_millis(3), false);
        m.synced("services", Duration::from_millis(5), true);
        m.set_entries("weir_svc_v1", 42);
        m.cni_request("add", true, Duration::from_millis(2));
        m.network_programming.observe(0.02);
        let text = m.render();
        for (series, want) in [
            (r#"weir_sync_duration_seconds_count{kind="services"}"#, 2.0),
            (r#"weir_sync_retries_total{kind="services"}"#, 1.0),
            (r#"weir_map_entries{map="weir_svc_v1"}"#, 42.0),
            (r#"weir_cni_requests_total{op="add",result="ok"}"#, 1.0),
            (r#"weir_cni_request_duration_seconds_count{op="add"}"#, 1.0),
            ("weir_network_programming_duration_seconds_count", 1.0),
            (
                r#"weir_network_programming_duration_seconds_bucket{le="0.025"}"#,
                1.0,
            ),
            (
                r#"weir_network_programming_duration_seconds_bucket{le="0.01"}"#,
                0.0,
            ),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series} in:\n{text}");
        }
        // Every counted map has its capacity.
        for spec in maps::counted() {
            let series = format!(r#"weir_map_capacity{{map="{}"}}"#, spec.name);
            assert_eq!(
                value(&text, &series),
                Some(f64::from(spec.max_entries)),
                "{series}"
            );
        }
    }
}
