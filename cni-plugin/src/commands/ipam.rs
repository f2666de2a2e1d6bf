//! The IPAM step of the verbs: the built-in allocator or a delegated plugin,
//! behind one interface.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::{
    Error,
    ipam::{self, delegate, disk::DiskStore, range::Range},
    spec::{Attachment, CniResult, Dns, Env, IpamConf, NetConf, Route},
};

/// One pod address and the next hop the pod uses for its family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAddress {
    pub ip: IpAddr,
    pub gateway: IpAddr,
}

#[derive(Clone, Debug, Default)]
pub struct Addressing {
    pub addrs: Vec<PodAddress>,
    /// Extra routes a delegated plugin asked for (besides the defaults).
    pub routes: Vec<Route>,
    pub dns: Option<Dns>,
}

pub fn attachment(env: &Env) -> Attachment {
    Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

/// Allocates (or finds again) the attachment's addresses.
pub fn add(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<Addressing, Error> {
    match &conf.ipam {
        IpamConf::Builtin { sets, data_dir } => {
            // The store (and its lock) lives only for this block.
            let mut store = DiskStore::open(data_dir, &conf.name)?;
            let leases = ipam::allocate(&mut store, sets, &attachment(env))?;
            Ok(Addressing {
                addrs: leases
                    .into_iter()
                    .map(|l| PodAddress {
                        ip: l.ip,
                        gateway: l.range.gateway,
                    })
                    .collect(),
                ..Addressing::default()
            })
        }
        IpamConf::Delegate { plugin } => {
            let out = delegate::exec(plugin, &env.path, "ADD", stdin)?.ok_or(Error::NoAddress)?;
            let result = CniResult::from_value(&out).map_err(|e| {
                Error::Delegate(delegate::DelegateError::BadOutput {
                    plugin: plugin.clone(),
                    reason: e.to_string(),
                })
            })?;
            if result.ips.is_empty() {
                return Err(Error::NoAddress);
            }
            let addrs = result
                .ips
                .iter()
                .map(|ipc| PodAddress {
                    ip: ipc.address.ip(),
                    gateway: ipc
                        .gateway
                        .unwrap_or_else(|| Range::default_gateway(network_of(ipc.address))),
                })
                .collect();
            let dns = (result.dns != Dns::default()).then_some(result.dns);
            Ok(Addressing {
                addrs,
                routes: result.routes,
                dns,
            })
        }
    }
}

fn network_of(n: IpNetwork) -> IpNetwork {
    IpNetwork::new(n.network(), n.prefix()).unwrap_or(n)
}

/// Frees the attachment's addresses (no error when it has none); returns them
/// (for a delegate: as `prevResult` says, when the runtime gave one).
pub fn del(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<Vec<IpAddr>, Error> {
    match &conf.ipam {
        IpamConf::Builtin { data_dir, .. } => {
            let mut store = DiskStore::open(data_dir, &conf.name)?;
            Ok(ipam::release(&mut store, &attachment(env))?)
        }
        IpamConf::Delegate { plugin } => {
            delegate::exec(plugin, &env.path, "DEL", stdin)?;
            Ok(conf
                .prev_result
                .iter()
                .flat_map(|r| r.ips.iter().map(|ip| ip.address.ip()))
                .collect())
        }
    }
}

/// The attachment's addresses in the built-in store (`None` for a delegate).
pub fn held(env: &Env, conf: &NetConf) -> Result<Option<Vec<IpAddr>>, Error> {
    match &conf.ipam {
        IpamConf::Builtin { data_dir, .. } => {
            let store = DiskStore::open(data_dir, &conf.name)?;
            let me = attachment(env);
            use ipam::store::Store as _;
            Ok(Some(
                store
                    .allocations()?
                    .into_iter()
                    .filter(|(_, a)| *a == me)
                    .map(|(ip, _)| ip)
                    .collect(),
            ))
        }
        IpamConf::Delegate { .. } => Ok(None),
    }
}
