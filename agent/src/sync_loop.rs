//! The agent's two sync threads: the sync loop of services and policy (source ->
//! compile -> sync -> UDP flush) and the conntrack GC loop.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use tracing::{info, warn};
use weir_model::{
    DesiredServices, Kind, Object, Problem,
    model::Entry,
    services::{Changed, ServiceCompiler},
};

use crate::{
    conntrack::{Hygiene, monotonic_ns},
    datapath::{PinLayout, maps},
    health::HealthServer,
    masquerade::Masquerade,
    metrics::Metrics,
    node::NodeWatch,
    node_routes::NodeRouting,
    source::Source,
    source_ranges::SourceRanges,
    status::Status,
    sync::{PolicySyncer, ServiceReport, ServiceSyncer, SharedDatapath},
};

/// How soon a sync that left failed writes behind is retried.
const RETRY: Duration = Duration::from_secs(1);
/// How long the loop waits for a change before looking again (a bound, not a delay:
/// sources return as soon as something changed).
const IDLE: Duration = Duration::from_secs(5);
const GC_EVERY: Duration = Duration::from_secs(5);
/// Deletions per GC pass: a burst of expiries is spread over several passes rather
/// than hogging a core.
const GC_MAX_DELETES: usize = 65_536;

/// The kinds NetworkPolicy enforcement depends on.
const POLICY_INPUTS: [Kind; 3] = weir_model::policy::INPUTS;
/// The kinds the service maps depend on (in a cluster; a directory's stand-ins
/// read Pods and Endpoints too, and a directory is listed whole at once).
const SERVICE_INPUTS: [Kind; 2] = [Kind::Service, Kind::EndpointSlice];

/// Frontend affinity timeouts, published by the sync loop for the GC loop.
pub type AffinityTimeouts = Arc<Mutex<BTreeMap<u32, u32>>>;

pub struct SyncLoop {
    pub source: Box<dyn Source>,
    pub maps: SharedDatapath,
    pub compiler: ServiceCompiler,
    pub syncer: ServiceSyncer,
    pub policy: PolicySyncer,
    /// Conntrack handle for UDP flushes; `None` disables them (logged at start).
    pub hygiene: Option<Hygiene>,
    pub health: HealthServer,
    pub timeouts: AffinityTimeouts,
    pub metrics: Arc<Metrics>,
    pub status: Status,
    /// This node's Node object: pod CIDRs for the CNI configuration, addresses
    /// for NodePorts.
    pub node: NodeWatch,
    /// `--routing native` or `vxlan`: routes to other Nodes' pods.
    pub routes: Option<NodeRouting>,
    /// The destinations pods' traffic is not masqueraded to, from the Nodes.
    pub masquerade: Masquerade,
    /// The LoadBalancer IPs' source ranges, written beside the services.
    pub source_ranges: SourceRanges,
    /// Trigger times of EndpointSlice changes not yet written to the maps
    /// (for `weir_network_programming_duration_seconds`).
    pub triggers: Vec<SystemTime>,
    /// Trigger times before this are not measured: a slice listed at start
    /// carries the time of a change an earlier agent (or none) programmed,
    /// as kube-proxy ignores those before it started.
    pub started: SystemTime,
}

/// The two steps of keeping frontend names: before the maps are written, and after.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Naming {
    Name,
    Forget,
}

/// Whether the services compiler's union is what the maps should hold.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Compiled {
    /// Nothing compiled yet: the first sync reads the maps whole.
    Never,
    /// Compiled for the node's former addresses or zone: everything again,
    /// and the keys that differ synced.
    ForOtherNode,
    Current,
}

impl SyncLoop {
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        crate::supervise::spawn("weir-sync", move || self.run())
    }

    fn run(mut self) {
        // What a sync left unfinished, to be covered by the next one.
        let mut pending: Option<Changed> = None;
        // The first compile of each kind of map is a full one: the maps may
        // hold anything an earlier agent left. None happens before the kinds
        // it reads are listed whole: until then the maps keep what they hold.
        let mut services = Compiled::Never;
        // Whether the model was packed (`Model::pack`) since every kind was
        // first listed whole.
        let mut packed = false;
        loop {
            self.status.heartbeat();
            let timeout = if pending.is_some() || !self.policy.in_sync() || !self.node.settled() {
                RETRY
            } else {
                IDLE
            };
            match self.source.next(timeout) {
                Ok(Some(changes)) => {
                    self.report_problems(&changes.problems);
                    self.report_source();
                    if !changes.objects.is_empty() {
                        self.status.change_pending();
                    }
                    if self
                        .node
                        .update(self.source.model(), &changes.objects, &self.status)
                    {
                        let node = self.node.context(self.compiler.node());
                        let was = self.compiler.node();
                        if node.node_ips != was.node_ips {
                            info!(nodeport_addresses = ?node.node_ips, "node addresses changed: recompiling");
                            self.node.write_snat(&mut self.maps, &node.node_ips);
                        }
                        self.compiler.set_node(node);
                        services = services.min(Compiled::ForOtherNode);
                    }
                    self.update_routes(&changes.objects);
                    if self.listed(&[Kind::Node]) {
                        self.masquerade
                            .update(self.source.model(), &changes.objects, &self.maps);
                    }
                    // Policies first: they depend on a few kinds only, and a
                    // change of them should not wait for a large service sync.
                    self.policy.note(&changes.objects);
                    if self.listed(&POLICY_INPUTS) && self.policy.changed() {
                        self.sync_policy(true);
                    }
                    self.note_triggers(&changes.objects);
                    if self.services_listed() {
                        let start = Instant::now();
                        let model = self.source.model();
                        let (changed, problems) = match std::mem::replace(&mut services, Compiled::Current) {
                            Compiled::Never => (Changed::All, self.compiler.compile_all(model)),
                            Compiled::ForOtherNode => self.compiler.recompile_all(model),
                            Compiled::Current => self.compiler.update(model, &changes.objects),
                        };
                        self.report_problems(&problems);
                        let compile_ms = start.elapsed().as_secs_f64() * 1e3;
                        info!(
                            objects = model.len(),
                            changed = changes.objects.len(),
                            full = changed == Changed::All,
                            problems = changes.problems.len() + problems.len(),
                            compile_ms = format!("{compile_ms:.2}"),
                            "model compiled"
                        );
                        let changed = match pending.take() {
                            Some(earlier) => earlier.merge(changed),
                            None => changed,
                        };
                        pending = self.sync(changed, start);
                    }
                }
                Ok(None) => {
                    // The cluster is quiet. Listed whole for the first time and
                    // compiled, the model stays much as it is now: packed,
                    // once. Else, if it shrank, its memory goes back.
                    if !packed
                        && services == Compiled::Current
                        && self.listed(&crate::source::kube::WATCHED.map(|w| w.kind))
                    {
                        self.source.pack();
                        crate::memory::release_free();
                        packed = true;
                    }
                    crate::memory::release_if_shrunk();
                    // Retries what the last sync of the routes left undone.
                    self.update_routes(&Default::default());
                    if let Some(changed) = pending.take() {
                        pending = self.sync(changed, Instant::now());
                    }
                    if !self.policy.in_sync() {
                        self.sync_policy(false);
                    }
                }
                Err(e) => {
                    warn!(source = self.source.describe(), error = %e, "source unreadable: the maps keep their contents");
                    std::thread::sleep(RETRY);
                }
            }
            self.node.write_conf(&self.status);
        }
    }

    /// The routes follow a change of Nodes (or retry),
    /// once Nodes are listed whole; `NodeRouting::update` decides whether
    /// there is anything to do.
    fn update_routes(&mut self, changed: &std::collections::BTreeSet<weir_model::ObjectKey>) {
        if self.listed(&[Kind::Node])
            && let Some(routes) = &mut self.routes
        {
            routes.update(self.source.model(), changed);
        }
    }

    /// Whether every kind of `kinds` is listed whole.
    fn listed(&self, kinds: &[Kind]) -> bool {
        kinds.iter().all(|k| self.source.listed(*k))
    }

    /// Whether the service maps may be compiled: their kinds are listed, and
    /// so are the Nodes, whose zone (this node's) chooses the endpoints
    /// topology hints leave to it. kube-proxy waits for its Node before its
    /// first sync too: a first compile without the zone would send traffic
    /// across zones until everything is compiled again. Nodes that cannot be
    /// listed (RBAC without them) are not waited for: Services without
    /// topology are better than none.
    fn services_listed(&self) -> bool {
        self.listed(&SERVICE_INPUTS) && (self.source.listed(Kind::Node) || self.source.fails(Kind::Node))
    }

    /// Tells the status what the source has not listed yet, and what fails.
    fn report_source(&self) {
        let unlisted = crate::source::kube::WATCHED
            .iter()
            .map(|w| w.kind)
            .filter(|k| !self.source.listed(*k))
            .map(|k| k.to_string())
            .collect();
        let failing = self
            .source
            .failing()
            .into_iter()
            .map(|(k, e)| format!("{k}: {}", weir_model::bounded(&e, 300)))
            .collect();
        self.status.source(unlisted, failing);
    }

    /// Recompiles the node's policies (`recompile`) and writes what differs.
    fn sync_policy(&mut self, recompile: bool) {
        let start = Instant::now();
        if recompile {
            let problems = self.policy.compile(self.source.model());
            self.report_problems(&problems);
        }
        let report = self.policy.apply(&mut self.maps);
        self.count_failures(&report.tally.failures);
        let complete = report.tally.failed == 0;
        self.metrics.synced("policy", start.elapsed(), complete);
        let desired = self.policy.desired();
        if complete {
            self.status.policy_synced();
            let m = &self.metrics;
            m.set_entries(maps::POLICY_ENDPOINTS.name, desired.endpoints.len());
            m.set_entries(maps::IPCACHE.name, desired.ipcache.len());
            m.set_entries(maps::POLICY.name, desired.rules.len());
            let identities: HashSet<u32> = desired.ipcache.values().copied().collect();
            m.programmed.identities.set(identities.len() as i64);
            m.programmed
                .isolated_endpoints
                .set(desired.endpoints.len() as i64);
            let policies = self.source.model().of_kind(Kind::NetworkPolicy).count();
            m.programmed.policies.set(policies as i64);
        }
        let ms = format!("{:.2}", start.elapsed().as_secs_f64() * 1e3);
        if report.tally.failed == 0 {
            info!(
                endpoints = desired.endpoints.len(),
                identities = desired.ipcache.len(),
                rules = desired.rules.len(),
                writes = report.tally.writes,
                deletes = report.tally.deletes,
                policy_ms = ms,
                "policies synced"
            );
        } else {
            warn!(
                failed = report.tally.failed,
                writes = report.tally.writes,
                deletes = report.tally.deletes,
                policy_ms = ms,
                "policies partly synced; retrying"
            );
        }
    }

    /// Keeps the trigger times of the changed EndpointSlices, until the sync
    /// that writes them.
    fn note_triggers(&mut self, changed: &std::collections::BTreeSet<weir_model::ObjectKey>) {
        let model = self.source.model();
        let slices = changed.iter().filter(|k| k.kind == Kind::EndpointSlice);
        for key in slices {
            if let Some(Entry {
                object: Object::EndpointSlice(slice),
                ..
            }) = model.get(key)
                && let Some(at) = slice.trigger.filter(|t| *t >= self.started)
            {
                self.triggers.push(at);
            }
        }
    }

    /// Applies the compiler's desired state where `changed` says it may differ;
    /// returns what must be retried. The sync began at `start` (its compile).
    fn sync(&mut self, changed: Changed, start: Instant) -> Option<Changed> {
        let full = changed == Changed::All;
        self.name_frontends(&changed, Naming::Name);
        let desired = self.compiler.desired();
        let added = self
            .source_ranges
            .add(&self.maps, &desired.source_ranges, &self.metrics);
        let report = self.syncer.apply(&mut self.maps, desired, &changed);
        // A frontend's last ranges go once no entry flagged for them is left.
        let pruned = !report.complete()
            || self
                .source_ranges
                .prune(&self.maps, &desired.source_ranges, &self.metrics);
        if let Some(n) = self.source_ranges.entries() {
            self.metrics.set_entries(maps::SOURCE_RANGES.name, n);
        }
        // Ranges not written leave LoadBalancer IPs refusing sources they
        // admit: not synced either.
        let complete = report.complete() && added && pruned;
        self.metrics.synced("services", start.elapsed(), complete);
        self.name_frontends(&changed, Naming::Forget);
        if report.complete() {
            let now = SystemTime::now();
            for at in self.triggers.drain(..) {
                let latency = now.duration_since(at).unwrap_or_default();
                self.metrics.network_programming.observe(latency.as_secs_f64());
            }
            let m = &self.metrics;
            m.set_entries(maps::SERVICES.name, desired.services.len());
            m.set_entries(maps::BACKENDS.name, desired.backends.len());
            m.set_entries(maps::REVNAT.name, desired.revnat.len());
            m.set_entries(maps::MAGLEV.name, desired.maglev.len());
            m.programmed.frontends.set(desired.revnat.len() as i64);
            m.programmed.backends.set(desired.backends.len() as i64);
        }
        crate::memory::note_deletes(report.tally.deletes);
        self.count_failures(&report.tally.failures);
        let flushed = self.flush(&report);
        log_report(
            self.compiler.desired(),
            &report,
            flushed,
            self.syncer.failures_total,
        );
        *self.timeouts.lock().unwrap_or_else(|p| p.into_inner()) = self.syncer.affinity_timeouts();
        self.health.update(self.compiler.health_checks());
        if complete {
            self.status.services_synced();
            if full {
                crate::memory::release_free();
            }
        }
        (!complete).then_some(changed)
    }

    /// Keeps the name table's frontend names in step where `changed` says
    /// they may differ: `weirctl`'s SERVICE column. Names are written before
    /// the maps (a frontend is never seen unnamed) and forgotten after them.
    /// A name that cannot be written is said once per sync; it is only a label.
    fn name_frontends(&self, changed: &Changed, step: Naming) {
        let mut dp = self.maps.lock();
        let desired = self.compiler.desired();
        let mut failed = None;
        let mut note = |r: Result<(), aya::maps::MapError>| {
            if let Err(e) = r {
                failed.get_or_insert(e);
            }
        };
        match (changed, step) {
            (Changed::All, Naming::Name) => note(dp.names.set_frontends(self.compiler.frontend_names())),
            (Changed::All, Naming::Forget) => match dp.names.frontend_ids() {
                Ok(ids) => {
                    for id in ids.into_iter().filter(|id| !desired.revnat.contains_key(id)) {
                        note(dp.names.set_frontend(id, None));
                    }
                }
                Err(e) => note(Err(e)),
            },
            // In batches: a cluster's first Services come as one change.
            (Changed::Keys(touched), Naming::Name) => note(
                dp.names.set_frontends(
                    touched
                        .services
                        .iter()
                        .filter(|k| k.slot == 0)
                        .filter_map(|head| self.compiler.frontend_named(head)),
                ),
            ),
            (Changed::Keys(touched), Naming::Forget) => {
                for id in touched
                    .revnat
                    .iter()
                    .filter(|id| !desired.revnat.contains_key(id))
                {
                    note(dp.names.set_frontend(*id, None));
                }
            }
        }
        if let Some(e) = failed {
            warn!(error = %e, "writing frontend names (weirctl's SERVICE column): a name not written stays missing or stale until its frontend changes or the agent restarts");
        }
    }

    fn flush(&mut self, report: &ServiceReport) -> usize {
        let Some(hygiene) = self.hygiene.as_mut() else {
            return 0;
        };
        match hygiene.flush_backends(&report.gone_datagram_backends) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "flushing conntrack entries of removed UDP/SCTP backends");
                0
            }
        }
    }
}

impl SyncLoop {
    /// Logs each skipped object (bounded: see `Problem`'s display) and counts it
    /// by kind.
    fn report_problems(&self, problems: &[Problem]) {
        for p in problems {
            warn!(problem = %p, "object skipped");
            let kind = p
                .object
                .as_deref()
                .and_then(|o| o.split_once(' '))
                .map_or("document", |(kind, _)| kind);
            self.metrics.object_skipped(kind);
        }
    }

    fn count_failures(&self, failures: &BTreeMap<(&'static str, String), u64>) {
        for ((map, errno), n) in failures {
            self.metrics.map_write_failed(map, errno, *n);
        }
    }
}

fn log_report(desired: &DesiredServices, report: &ServiceReport, flushed: usize, failures_total: u64) {
    // One reverse-NAT entry per frontend.
    let frontends = desired.revnat.len();
    let ms = report.duration.as_secs_f64() * 1e3;
    if report.complete() {
        info!(
            frontends,
            backends = desired.backends.len(),
            maglev_tables = desired.maglev.len(),
            writes = report.tally.writes,
            deletes = report.tally.deletes,
            skipped = report.skipped,
            ct_flushed = flushed,
            background_writes = report.background_writes,
            sync_ms = format!("{ms:.2}"),
            "services synced"
        );
    } else {
        warn!(
            frontends,
            writes = report.tally.writes,
            deletes = report.tally.deletes,
            failed = report.tally.failed,
            deferred = report.deferred,
            skipped = report.skipped,
            failures_total,
            sync_ms = format!("{ms:.1}"),
            "services partly synced; retrying"
        );
    }
}

/// Spawns the GC loop on its own map handles.
pub fn spawn_gc(
    pins: &PinLayout,
    timeouts: AffinityTimeouts,
    metrics: Arc<Metrics>,
) -> std::io::Result<JoinHandle<()>> {
    let pins = pins.clone();
    crate::supervise::spawn("weir-ct-gc", move || {
        let mut hygiene = match Hygiene::open(&pins) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "conntrack GC disabled");
                return;
            }
        };
        loop {
            std::thread::sleep(GC_EVERY);
            if let Err(e) = gc_pass(&pins, &mut hygiene, &timeouts, &metrics) {
                warn!(error = %e, "conntrack GC pass failed; next pass in {GC_EVERY:?}");
            }
        }
    })
}

/// The maps small enough to walk at every GC pass, and not written by a
/// syncer (whose maps' fill is set after each complete sync).
const WALKED: [maps::MapSpec; 7] = [
    maps::ENDPOINTS,
    maps::NODE_IPS,
    maps::DEVICE_ADDRS,
    maps::SOCK_REV,
    maps::POLICY_SHARES,
    maps::TUNNELS,
    maps::NOMASQ,
];

fn count_small_maps(pins: &PinLayout, metrics: &Metrics) {
    for spec in &WALKED {
        match maps::count_entries(pins, spec) {
            Ok(n) => {
                metrics.set_entries(spec.name, n);
                if spec.name == maps::ENDPOINTS.name {
                    metrics.programmed.endpoints.set(n as i64);
                }
            }
            Err(e) => warn!(map = spec.name, error = %e, "counting a map's entries"),
        }
    }
}

fn gc_pass(
    pins: &PinLayout,
    hygiene: &mut Hygiene,
    timeouts: &AffinityTimeouts,
    metrics: &Metrics,
) -> Result<(), crate::conntrack::CtError> {
    let now = monotonic_ns()?;
    let ct = hygiene.gc_conntrack(now, GC_MAX_DELETES)?;
    let timeouts = timeouts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let affinity = hygiene.gc_affinity(now, &timeouts)?;
    let policy = hygiene.gc_policy(now, GC_MAX_DELETES)?;
    for (map, report) in [(maps::CONNTRACK.name, &ct), (maps::AFFINITY.name, &affinity)] {
        metrics.set_entries(map, report.entries());
        metrics.gc_deleted(map, report.deleted);
    }
    metrics.set_entries(maps::POLICY_CT.name, policy.entries);
    metrics.gc_deleted(maps::POLICY_CT.name, policy.deleted);
    for (kind, n) in [("nodeport", ct.snat_nodeport), ("masquerade", ct.snat_masquerade)] {
        metrics
            .snat_ports
            .get_or_create(&crate::metrics::KindLabels {
                kind: kind.to_owned(),
            })
            .set(n as i64);
    }
    count_small_maps(pins, metrics);
    metrics.policy_ct_entries.set(policy.live as i64);
    metrics.policy_ct_at_share.set(policy.at_share as i64);
    metrics
        .policy_ct_largest_share
        .set(i64::from(policy.largest_share));
    if ct.deleted + affinity.deleted + policy.deleted > 0 {
        info!(
            ct_scanned = ct.scanned,
            ct_deleted = ct.deleted,
            ct_left_expired = ct.expired - ct.deleted,
            affinity_deleted = affinity.deleted,
            policy_ct_live = policy.live,
            policy_ct_deleted = policy.deleted,
            "conntrack GC"
        );
    }
    let capacity = weir_common::maps::POLICY_CT_ENTRIES as usize;
    if policy.at_share > 0 || policy.live * 4 > capacity * 3 {
        warn!(
            live = policy.live,
            capacity,
            endpoints_at_share = policy.at_share,
            largest_share = policy.largest_share,
            share = weir_common::maps::POLICY_SHARE,
            "policy conntrack under pressure: endpoints at their share get their new datagram flows judged packet by packet"
        );
    }
    Ok(())
}
