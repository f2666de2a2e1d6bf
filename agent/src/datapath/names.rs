//! The name table ([`weir_common::maps::NAMES`]): which Service a frontend
//! is, which pod an address of this node is, so that `weirctl` says
//! `namespace/name` from the pins alone, the agent up or not.
//!
//! No program reads it, so it is not in the eBPF object: the agent makes it
//! (a hash map allocated as used) and pins it beside the datapath's maps,
//! where it outlives the agent as they do.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{HashMap, IterableMap as _, MapData, MapError};
use weir_common::{AGENT_MONITOR_SOCKET, NAME_AGENT, NAME_FRONTEND, NAME_POD, Name, NameKey, maps as names};
use weir_model::net::{from_abi, to_abi};

use super::{
    DatapathError, PinLayout, is_not_found,
    maps::{self, MapSpec},
};

pub const SPEC: MapSpec = MapSpec {
    name: names::NAMES,
    key_size: size_of::<NameKey>() as u32,
    value_size: size_of::<Name>() as u32,
    max_entries: names::NAMES_ENTRIES,
};

pub struct Names {
    map: HashMap<MapData, NameKey, Name>,
}

impl Names {
    /// The table pinned under `pins`, made and pinned if there is none (or
    /// one of another shape: it holds nothing another table could not).
    pub fn open_or_create(pins: &PinLayout) -> Result<Self, DatapathError> {
        let path = pins.map(SPEC.name);
        let err = |source| DatapathError::Map {
            name: SPEC.name,
            source,
        };
        if maps::check_pin(pins, &SPEC).unwrap_or(false) {
            return Self::open(pins);
        }
        let _ = std::fs::remove_file(&path);
        // Allocated as used: memory for the names there are, not for the most.
        let data = maps::create_hash(&SPEC, maps::NO_PREALLOC).map_err(err)?;
        maps::pin(pins, &SPEC, &data).map_err(err)?;
        Ok(Self {
            map: HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(err)?,
        })
    }

    /// The table pinned under `pins` (for `weirctl`: never made).
    pub fn open(pins: &PinLayout) -> Result<Self, DatapathError> {
        Ok(Self {
            map: maps::open_pinned(pins, &SPEC)?,
        })
    }

    /// Names frontend `rev_nat_id` (`None`: forgets it).
    pub fn set_frontend(&mut self, rev_nat_id: u32, name: Option<&str>) -> Result<(), MapError> {
        self.set(frontend_key(rev_nat_id), name)
    }

    /// Names every frontend of `names` (rev-NAT id, Service), in batches:
    /// a full sync names every frontend of the cluster. A name that cannot
    /// be written is passed over, the others still written; the first
    /// failure is returned.
    pub fn set_frontends<'a>(&mut self, names: impl Iterator<Item = (u32, &'a str)>) -> Result<(), MapError> {
        const BATCH: usize = 4096;
        let (mut keys, mut values) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
        let mut names = names.peekable();
        let mut failed = None;
        while names.peek().is_some() {
            keys.clear();
            values.clear();
            for (id, name) in names.by_ref().take(BATCH) {
                keys.push(frontend_key(id));
                values.push(Name::new(name));
            }
            let mut at = 0;
            while let Err((written, e)) = super::batch::update(self.map.map(), &keys[at..], &values[at..]) {
                failed.get_or_insert(e);
                at = (at + written + 1).min(keys.len());
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Says where the agent's event stream is served.
    pub fn set_monitor_socket(&mut self, path: &std::path::Path) -> Result<(), MapError> {
        let key = NameKey {
            kind: NAME_AGENT,
            id: AGENT_MONITOR_SOCKET,
            ..NameKey::default()
        };
        self.set(key, Some(&path.to_string_lossy()))
    }

    /// Names a pod address (`None`: forgets it).
    pub fn set_pod(&mut self, ip: IpAddr, name: Option<&str>) -> Result<(), MapError> {
        self.set(pod_key(ip), name)
    }

    fn set(&mut self, key: NameKey, name: Option<&str>) -> Result<(), MapError> {
        match name {
            Some(name) => self.map.insert(key, Name::new(name), 0),
            None => match self.map.remove(&key) {
                Err(e) if is_not_found(&e) => Ok(()),
                other => other,
            },
        }
    }

    /// Every name the table holds.
    pub fn read(&self) -> Result<NameTable, MapError> {
        let mut table = NameTable::default();
        for entry in self.map.iter() {
            let (key, name) = entry?;
            let Some(text) = name.text() else { continue };
            match key.kind {
                NAME_FRONTEND => {
                    table.frontends.insert(key.id, text.to_owned());
                }
                NAME_POD => {
                    if let Some(ip) = from_abi(key.addr, key.family) {
                        table.pods.insert(ip, text.to_owned());
                    }
                }
                NAME_AGENT if key.id == AGENT_MONITOR_SOCKET => {
                    table.monitor_socket = Some(text.into());
                }
                _ => {}
            }
        }
        Ok(table)
    }

    /// The frontends named, by rev-NAT id.
    pub fn frontend_ids(&self) -> Result<Vec<u32>, MapError> {
        let mut ids = Vec::new();
        for key in self.map.keys() {
            let key = key?;
            if key.kind == NAME_FRONTEND {
                ids.push(key.id);
            }
        }
        Ok(ids)
    }
}

fn frontend_key(rev_nat_id: u32) -> NameKey {
    NameKey {
        kind: NAME_FRONTEND,
        id: rev_nat_id,
        ..NameKey::default()
    }
}

fn pod_key(ip: IpAddr) -> NameKey {
    let (addr, family) = to_abi(ip);
    NameKey {
        kind: NAME_POD,
        family,
        addr,
        ..NameKey::default()
    }
}

/// What the name table says, for the views.
#[derive(Debug, Default)]
pub struct NameTable {
    /// rev-NAT id -> `namespace/name` of the Service.
    pub frontends: BTreeMap<u32, String>,
    /// A pod address of this node -> `namespace/name` of the pod.
    pub pods: BTreeMap<IpAddr, String>,
    /// Where the agent serves the datapath's events.
    pub monitor_socket: Option<std::path::PathBuf>,
}

impl NameTable {
    /// The Service of frontend `rev_nat_id`, if named.
    pub fn service(&self, rev_nat_id: u32) -> Option<String> {
        self.frontends.get(&rev_nat_id).cloned()
    }

    /// The pod at `addr` (`ip`, or `ip:port`), if named.
    pub fn pod(&self, addr: &str) -> Option<String> {
        let ip = addr
            .parse::<IpAddr>()
            .ok()
            .or_else(|| addr.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))?;
        self.pods.get(&ip).cloned()
    }
}
