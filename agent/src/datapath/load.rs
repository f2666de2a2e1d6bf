//! Loading the object with its maps pinned, so that a restarted agent finds the
//! same maps (and the programs already attached keep using them meanwhile).

use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupSockAddr, SchedClassifier, Xdp},
};
use tracing::warn;
use weir_common::programs::{CLASSIFIERS, FROM_NETDEV_XDP, SOCK_HOOKS};

use super::{
    DatapathError, PinLayout,
    maps::{
        self, Affinity, Backends, Conntrack, DeviceAddrMap, Endpoints, Ipcache, Maglev, Node, NodeIps,
        Nomasq, Policy, PolicyEndpoints, PolicyShares, RevNats, Services, SourceRanges, Tunnels,
    },
    object::OBJECT,
};

/// The loaded programs and a typed handle on every map the agent writes.
pub struct Datapath {
    pub(super) ebpf: Ebpf,
    pub(super) pins: PinLayout,
    pub endpoints: Endpoints,
    pub services: Services,
    pub backends: Backends,
    pub revnat: RevNats,
    pub affinity: Affinity,
    pub conntrack: Conntrack,
    pub maglev: Maglev,
    pub node: Node,
    pub node_ips: NodeIps,
    pub device_addrs: DeviceAddrMap,
    pub policy_endpoints: PolicyEndpoints,
    pub ipcache: Ipcache,
    pub policy: Policy,
    pub policy_shares: PolicyShares,
    pub tunnels: Tunnels,
    pub nomasq: Nomasq,
    pub source_ranges: SourceRanges,
    /// The name table (`weirctl`'s `namespace/name`s), made by the agent.
    pub names: super::names::Names,
}

/// How the datapath's maps are made when no agent has pinned them yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// The Services' hash maps with every entry allocated up front
    /// ([`maps::PREALLOCATABLE`]).
    pub preallocate_maps: bool,
}

impl Datapath {
    /// Loads every program (the verifier runs here) and opens or creates every
    /// map at its pin, as the object defines it.
    pub fn load(pins: PinLayout) -> Result<Self, DatapathError> {
        Self::load_with(pins, LoadOptions::default())
    }

    /// [`Datapath::load`], the maps no agent has pinned yet made as `options`
    /// asks. A map pinned already stays as it was made (the datapath keeps
    /// using it meanwhile): an option that asks otherwise is said, and takes
    /// effect once the pin is removed.
    pub fn load_with(pins: PinLayout, options: LoadOptions) -> Result<Self, DatapathError> {
        let maps_dir = pins.maps_dir();
        std::fs::create_dir_all(&maps_dir).map_err(DatapathError::fs(&maps_dir))?;
        let mut loader = EbpfLoader::new();
        let mut preallocate = Vec::new();
        for spec in maps::ALL {
            let pinned = maps::check_pin(&pins, spec)?;
            if maps::PREALLOCATABLE.contains(spec) {
                let wanted = options.preallocate_maps;
                if !pinned && wanted {
                    preallocate.push(*spec);
                } else if pinned && maps::is_preallocated(&pins, spec)? != wanted {
                    // Made again, the map would be empty until the first
                    // sync: the pinned one serves on meanwhile.
                    warn!(
                        map = spec.name,
                        preallocated = !wanted,
                        "the pinned map stays as it was made; --preallocate-bpf-maps={wanted} takes effect once its pin is removed"
                    );
                }
            }
            loader.map_pin_path(spec.name, pins.map(spec.name));
        }
        maps::pin_preallocated(&pins, &preallocate)?;
        let mut ebpf = loader.load(OBJECT)?;
        remove_retired(&pins);
        for name in CLASSIFIERS {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        for name in SOCK_HOOKS {
            sock_hook(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        // Loaded (and so verified) whether or not it is attached.
        xdp(&mut ebpf, FROM_NETDEV_XDP)?
            .load()
            .map_err(|source| DatapathError::Program {
                name: FROM_NETDEV_XDP,
                source,
            })?;
        Ok(Self {
            endpoints: take_map(&mut ebpf, maps::ENDPOINTS.name)?,
            services: take_map(&mut ebpf, maps::SERVICES.name)?,
            backends: take_map(&mut ebpf, maps::BACKENDS.name)?,
            revnat: take_map(&mut ebpf, maps::REVNAT.name)?,
            affinity: take_map(&mut ebpf, maps::AFFINITY.name)?,
            conntrack: take_map(&mut ebpf, maps::CONNTRACK.name)?,
            maglev: take_map(&mut ebpf, maps::MAGLEV.name)?,
            node: take_map(&mut ebpf, maps::NODE.name)?,
            node_ips: take_map(&mut ebpf, maps::NODE_IPS.name)?,
            device_addrs: take_map(&mut ebpf, maps::DEVICE_ADDRS.name)?,
            policy_endpoints: take_map(&mut ebpf, maps::POLICY_ENDPOINTS.name)?,
            ipcache: take_map(&mut ebpf, maps::IPCACHE.name)?,
            policy: take_map(&mut ebpf, maps::POLICY.name)?,
            policy_shares: take_map(&mut ebpf, maps::POLICY_SHARES.name)?,
            tunnels: take_map(&mut ebpf, maps::TUNNELS.name)?,
            nomasq: take_map(&mut ebpf, maps::NOMASQ.name)?,
            source_ranges: take_map(&mut ebpf, maps::SOURCE_RANGES.name)?,
            names: super::names::Names::open_or_create(&pins)?,
            ebpf,
            pins,
        })
    }

    pub fn pins(&self) -> &PinLayout {
        &self.pins
    }

    /// Sets or clears `flag` (`NODE_F_*`) in the node's entry, the other
    /// flags and fields kept. Every writer of a switch holds the datapath's
    /// lock, so no two of them interleave their read and write.
    pub fn set_node_flag(&mut self, flag: u32, on: bool) -> Result<(), aya::maps::MapError> {
        let mut node = self.node.get(&0, 0)?;
        node.flags = if on { node.flags | flag } else { node.flags & !flag };
        self.node.set(0, node, 0)
    }

    /// A loaded program, for `BPF_PROG_TEST_RUN` packet tests.
    pub fn program(&self, name: &'static str) -> Result<&SchedClassifier, DatapathError> {
        self.ebpf
            .program(name)
            .ok_or(DatapathError::MissingProgram { name })?
            .try_into()
            .map_err(|source| DatapathError::Program { name, source })
    }
}

impl Datapath {
    /// The loaded XDP program, for `BPF_PROG_TEST_RUN` packet tests.
    pub fn xdp_program(&self, name: &'static str) -> Result<&Xdp, DatapathError> {
        self.ebpf
            .program(name)
            .ok_or(DatapathError::MissingProgram { name })?
            .try_into()
            .map_err(|source| DatapathError::Program { name, source })
    }
}

/// A program of the object, as its type.
fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

pub(super) fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    program_mut(ebpf, name)
}

pub(super) fn xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DatapathError> {
    program_mut(ebpf, name)
}

pub(super) fn sock_hook<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, DatapathError> {
    program_mut(ebpf, name)
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap { name })?;
    T::try_from(map).map_err(|source| DatapathError::Map { name, source })
}

/// Removes the pins of maps no program of this version uses
/// ([`weir_common::maps::RETIRED`]). An older agent's programs still attached
/// keep their maps alive until the new ones replace them; a pin that cannot be
/// removed is only reported.
fn remove_retired(pins: &PinLayout) {
    for name in weir_common::maps::RETIRED {
        let path = pins.map(name);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(map = name, "removed the pin of a retired map"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(map = name, path = %path.display(), error = %e, "cannot remove a retired map's pin")
            }
        }
    }
}
