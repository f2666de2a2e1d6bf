//! The load-balancing maps, written by the agent's syncer (services, backends,
//! revnat) or by the datapath itself (conntrack, affinity).

use aya_ebpf::bindings::BPF_F_NO_PREALLOC;
use aya_ebpf::maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray};
use weir_common::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, DeviceAddrs, MaglevTable, NodeAddrs, RevNat,
    Scratch, ServiceKey, ServiceValue, SourceRangeKey, maps,
};

bpf_map! {
    pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(maps::SERVICES_ENTRIES, BPF_F_NO_PREALLOC);
}

bpf_map! {
    pub static BACKENDS: HashMap<u32, Backend> = HashMap::with_max_entries(maps::BACKENDS_ENTRIES, BPF_F_NO_PREALLOC);
}

bpf_map! {
    pub static REVNAT: HashMap<u32, RevNat> = HashMap::with_max_entries(maps::REVNAT_ENTRIES, BPF_F_NO_PREALLOC);
}

bpf_map! {
    pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> = LpmTrie::with_max_entries(maps::SOURCE_RANGES_ENTRIES, 0);
}

bpf_map! {
    pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::with_max_entries(maps::AFFINITY_ENTRIES, 0);
}

bpf_map! {
    pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(maps::CONNTRACK_ENTRIES, 0);
}

bpf_map! {
    pub static MAGLEV: HashMap<u32, MaglevTable> = HashMap::with_max_entries(maps::MAGLEV_ENTRIES, BPF_F_NO_PREALLOC);
}

bpf_map! {
    pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
}

bpf_map! {
    pub static NODE: Array<NodeAddrs> = Array::with_max_entries(1, 0);
}

bpf_map! {
    pub static DEVICE_ADDRS: HashMap<u32, DeviceAddrs> = HashMap::with_max_entries(maps::DEVICE_ADDRS_ENTRIES, 0);
}
