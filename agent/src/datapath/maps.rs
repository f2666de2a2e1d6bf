//! Typed handles on Weir's maps, and what each must look like in the kernel.

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, MapInfo, PerCpuArray, lpm_trie::Key};
use weir_common::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, DeviceAddrs, EndpointInfo, EndpointKey, IpcacheKey,
    MaglevTable, MetricValue, NodeAddrs, NomasqKey, PolicyCtValue, PolicyEndpoint, PolicyKey, PolicyShare,
    RevNat, Scratch, ServiceKey, ServiceValue, SockRevKey, SockRevValue, SourceRangeKey, TunnelEndpoint,
    maps as names,
};

use super::{DatapathError, PinLayout};

/// The shape a map must have in the kernel: checked against pins left by earlier
/// agents (aya reuses a pinned map without checking) and against the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl MapSpec {
    const fn of<K, V>(name: &'static str, max_entries: u32) -> Self {
        Self {
            name,
            key_size: size_of::<K>() as u32,
            value_size: size_of::<V>() as u32,
            max_entries,
        }
    }

    fn tuple(&self) -> (u32, u32, u32) {
        (self.key_size, self.value_size, self.max_entries)
    }
}

pub const METRICS: MapSpec = MapSpec::of::<u32, MetricValue>(names::METRICS, names::METRICS_ENTRIES);
pub const ENDPOINTS: MapSpec =
    MapSpec::of::<EndpointKey, EndpointInfo>(names::ENDPOINTS, names::ENDPOINTS_ENTRIES);

pub const SERVICES: MapSpec =
    MapSpec::of::<ServiceKey, ServiceValue>(names::SERVICES, names::SERVICES_ENTRIES);
pub const BACKENDS: MapSpec = MapSpec::of::<u32, Backend>(names::BACKENDS, names::BACKENDS_ENTRIES);
pub const REVNAT: MapSpec = MapSpec::of::<u32, RevNat>(names::REVNAT, names::REVNAT_ENTRIES);
pub const AFFINITY: MapSpec =
    MapSpec::of::<AffinityKey, AffinityValue>(names::AFFINITY, names::AFFINITY_ENTRIES);
pub const CONNTRACK: MapSpec = MapSpec::of::<CtKey, CtValue>(names::CONNTRACK, names::CONNTRACK_ENTRIES);
pub const MAGLEV: MapSpec = MapSpec::of::<u32, MaglevTable>(names::MAGLEV, names::MAGLEV_ENTRIES);
pub const SCRATCH: MapSpec = MapSpec::of::<u32, Scratch>(names::SCRATCH, 1);
pub const REJECT_BUDGET: MapSpec = MapSpec::of::<u32, u64>(names::REJECT_BUDGET, 1);
pub const EVENT_BUDGET: MapSpec = MapSpec::of::<u32, u64>(names::EVENT_BUDGET, 2);
pub const NODE: MapSpec = MapSpec::of::<u32, NodeAddrs>(names::NODE, 1);
pub const NODE_IPS: MapSpec = MapSpec::of::<EndpointKey, u32>(names::NODE_IPS, names::NODE_IPS_ENTRIES);
pub const DEVICE_ADDRS: MapSpec =
    MapSpec::of::<u32, DeviceAddrs>(names::DEVICE_ADDRS, names::DEVICE_ADDRS_ENTRIES);
pub const SOCK_REV: MapSpec =
    MapSpec::of::<SockRevKey, SockRevValue>(names::SOCK_REV, names::SOCK_REV_ENTRIES);

pub const POLICY_ENDPOINTS: MapSpec =
    MapSpec::of::<EndpointKey, PolicyEndpoint>(names::POLICY_ENDPOINTS, names::ENDPOINTS_ENTRIES);
pub const IPCACHE: MapSpec = MapSpec::of::<Key<IpcacheKey>, u32>(names::IPCACHE, names::IPCACHE_ENTRIES);
pub const POLICY: MapSpec = MapSpec::of::<Key<PolicyKey>, u32>(names::POLICY, names::POLICY_ENTRIES);
pub const NOMASQ: MapSpec = MapSpec::of::<Key<NomasqKey>, u32>(names::NOMASQ, names::NOMASQ_ENTRIES);
pub const SOURCE_RANGES: MapSpec =
    MapSpec::of::<Key<SourceRangeKey>, u8>(names::SOURCE_RANGES, names::SOURCE_RANGES_ENTRIES);
pub const POLICY_CT: MapSpec =
    MapSpec::of::<CtKey, PolicyCtValue>(names::POLICY_CT, names::POLICY_CT_ENTRIES);
pub const POLICY_SHARES: MapSpec =
    MapSpec::of::<u32, PolicyShare>(names::POLICY_SHARES, names::ENDPOINTS_ENTRIES);
pub const TUNNELS: MapSpec =
    MapSpec::of::<Key<IpcacheKey>, TunnelEndpoint>(names::TUNNELS, names::TUNNELS_ENTRIES);
/// A ring buffer: no key or value, its size in bytes as its entries.
pub const EVENTS: MapSpec = MapSpec {
    name: names::EVENTS,
    key_size: 0,
    value_size: 0,
    max_entries: names::EVENTS_BYTES,
};

/// Every map of the object.
pub const ALL: &[MapSpec] = &[
    METRICS,
    ENDPOINTS,
    SERVICES,
    BACKENDS,
    REVNAT,
    AFFINITY,
    CONNTRACK,
    MAGLEV,
    SCRATCH,
    REJECT_BUDGET,
    NODE,
    NODE_IPS,
    DEVICE_ADDRS,
    SOCK_REV,
    POLICY_ENDPOINTS,
    IPCACHE,
    POLICY,
    POLICY_CT,
    POLICY_SHARES,
    TUNNELS,
    NOMASQ,
    SOURCE_RANGES,
    EVENTS,
    EVENT_BUDGET,
];

/// Arrays (full by construction) and the ring buffer: no fill to count.
const UNCOUNTED: [MapSpec; 6] = [METRICS, SCRATCH, REJECT_BUDGET, NODE, EVENTS, EVENT_BUDGET];

/// The maps whose fill is a figure worth watching: every hash map and LPM trie.
pub fn counted() -> impl Iterator<Item = &'static MapSpec> {
    ALL.iter().filter(|spec| !UNCOUNTED.contains(spec))
}

/// How many entries the map of `spec` pinned under `pins` holds, by walking
/// its keys: for maps small enough to walk every few seconds.
pub fn count_entries(pins: &PinLayout, spec: &MapSpec) -> Result<usize, DatapathError> {
    let err = |source| DatapathError::Map {
        name: spec.name,
        source,
    };
    let map = MapData::from_pin(pins.map(spec.name)).map_err(err)?;
    // A walk restarted by deletions behind it counts some keys twice: bounded.
    super::batch::count_keys(&map, spec.key_size as usize, 2 * spec.max_entries as usize).map_err(err)
}

pub type Endpoints = HashMap<MapData, EndpointKey, EndpointInfo>;
pub type Metrics = PerCpuArray<MapData, MetricValue>;
pub type Services = HashMap<MapData, ServiceKey, ServiceValue>;
pub type Backends = HashMap<MapData, u32, Backend>;
pub type RevNats = HashMap<MapData, u32, RevNat>;
/// An LRU hash in the kernel; aya's `HashMap` handles both kinds.
pub type Affinity = HashMap<MapData, AffinityKey, AffinityValue>;
/// An LRU hash in the kernel.
pub type Conntrack = HashMap<MapData, CtKey, CtValue>;
pub type Maglev = HashMap<MapData, u32, MaglevTable>;
pub type Node = Array<MapData, NodeAddrs>;
pub type NodeIps = HashMap<MapData, EndpointKey, u32>;
pub type DeviceAddrMap = HashMap<MapData, u32, DeviceAddrs>;
pub type PolicyEndpoints = HashMap<MapData, EndpointKey, PolicyEndpoint>;
pub type Ipcache = LpmTrie<MapData, IpcacheKey, u32>;
pub type Policy = LpmTrie<MapData, PolicyKey, u32>;
pub type Nomasq = LpmTrie<MapData, NomasqKey, u32>;
pub type SourceRanges = LpmTrie<MapData, SourceRangeKey, u8>;
/// An LRU hash in the kernel.
pub type PolicyCt = HashMap<MapData, CtKey, PolicyCtValue>;
pub type PolicyShares = HashMap<MapData, u32, PolicyShare>;
pub type Tunnels = LpmTrie<MapData, IpcacheKey, TunnelEndpoint>;

/// Fails if a map is pinned at the spec's path with another shape; `Ok(false)`
/// when nothing is pinned there yet.
pub fn check_pin(pins: &PinLayout, spec: &MapSpec) -> Result<bool, DatapathError> {
    let path = pins.map(spec.name);
    if !path.exists() {
        return Ok(false);
    }
    let info = MapInfo::from_pin(&path).map_err(|source| DatapathError::Map {
        name: spec.name,
        source,
    })?;
    let found = (info.key_size(), info.value_size(), info.max_entries());
    if found != spec.tuple() {
        return Err(DatapathError::IncompatiblePin {
            path,
            found,
            expected: spec.tuple(),
        });
    }
    Ok(true)
}

/// The hash maps a cluster's Services fill, `BPF_F_NO_PREALLOC` in the
/// object: the kernel allocates an entry as it is written, so they cost
/// memory as they hold. Made preallocated instead (`--preallocate-bpf-maps`,
/// Cilium's option of that name), they hold their whole capacity's kernel
/// memory from the start (about 360 MB for these three) and take an insert
/// at about half the cost: the allocation is most of a write. Maglev's map
/// is not among them: 4,096 tables of 64 KiB would be 256 MiB held.
pub const PREALLOCATABLE: [MapSpec; 3] = [SERVICES, BACKENDS, REVNAT];

/// Whether the map pinned for `spec` has every entry allocated up front.
pub fn is_preallocated(pins: &PinLayout, spec: &MapSpec) -> Result<bool, DatapathError> {
    let info = MapInfo::from_pin(pins.map(spec.name)).map_err(|source| DatapathError::Map {
        name: spec.name,
        source,
    })?;
    Ok(info.map_flags() & NO_PREALLOC == 0)
}

/// Makes the hash maps of `specs` with every entry allocated up front and
/// pins them where the loader looks: the loader then takes them as it takes
/// any pinned map. All are made before any is pinned, and a pin that fails
/// takes back those pinned before it: a failure (the memory refused, as the
/// agent's cgroup limit may) leaves none of them made that way.
pub fn pin_preallocated(pins: &PinLayout, specs: &[MapSpec]) -> Result<(), DatapathError> {
    let failed = |name: &'static str, source| DatapathError::Preallocate { name, source };
    let made = specs
        .iter()
        .map(|spec| {
            create_hash(spec, 0)
                .map(|map| (spec, map))
                .map_err(|e| failed(spec.name, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (at, (spec, map)) in made.iter().enumerate() {
        if let Err(e) = pin(pins, spec, map) {
            for (pinned, _) in &made[..at] {
                let _ = std::fs::remove_file(pins.map(pinned.name));
            }
            return Err(failed(spec.name, e));
        }
    }
    Ok(())
}

/// A hash map of `spec`'s shape made with `flags`, not pinned yet.
pub(super) fn create_hash(spec: &MapSpec, flags: u32) -> Result<MapData, MapError> {
    let def = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH as u32,
        spec.key_size,
        spec.value_size,
        spec.max_entries,
        flags,
    );
    MapData::create(def, spec.name, None)
}

/// Pins `map` at `spec`'s path.
pub(super) fn pin(pins: &PinLayout, spec: &MapSpec, map: &MapData) -> Result<(), MapError> {
    map.pin(pins.map(spec.name)).map_err(|error| MapError::PinError {
        name: Some(spec.name.to_owned()),
        error,
    })
}

/// `BPF_F_NO_PREALLOC` (`include/uapi/linux/bpf.h`): a hash map's entries
/// allocated as they are written.
pub(super) const NO_PREALLOC: u32 = 1;

/// Opens a pinned map read-only for inspection (`weirctl`), after checking its shape.
pub fn open_pinned<T>(pins: &PinLayout, spec: &MapSpec) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let err = |source| DatapathError::Map {
        name: spec.name,
        source,
    };
    if !check_pin(pins, spec)? {
        return Err(DatapathError::Fs {
            path: pins.map(spec.name),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not pinned: is weir-agent running with this --bpffs-root?",
            ),
        });
    }
    let data = MapData::from_pin(pins.map(spec.name)).map_err(err)?;
    T::try_from(Map::from_map_data(data).map_err(err)?).map_err(err)
}

/// Per-CPU counters summed over CPUs, by slot.
pub fn sum_metrics(metrics: &Metrics) -> Result<Vec<(u32, MetricValue)>, DatapathError> {
    let mut out = Vec::new();
    for slot in 0..METRICS.max_entries {
        let per_cpu = metrics.get(&slot, 0).map_err(|source| DatapathError::Map {
            name: METRICS.name,
            source,
        })?;
        // Wrapping: counters wrap in the kernel too, and a view must not panic
        // on whatever a map holds.
        let total = per_cpu.iter().fold(MetricValue::default(), |acc, v| MetricValue {
            packets: acc.packets.wrapping_add(v.packets),
            bytes: acc.bytes.wrapping_add(v.bytes),
        });
        if total.packets != 0 {
            out.push((slot, total));
        }
    }
    Ok(out)
}
