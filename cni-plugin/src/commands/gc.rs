//! GC (1.1.0): forget every attachment of this network the runtime no longer
//! lists in `cni.dev/valid-attachments`: free its addresses and delete its host
//! veth. Only veths this plugin made for this network are touched: they are in
//! its device group ([`crate::naming::group`], set by the request that created
//! them) or carry its alias ([`crate::naming::alias`], set by older versions).

use std::collections::HashSet;

use crate::{
    Error,
    ipam::{self, delegate, disk::DiskStore},
    naming,
    netlink::Netlink,
    spec::{Env, IpamConf, NetConf, config::ConfigError},
};

pub fn run(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), Error> {
    // Without the list, "everything is stale" would delete every pod's network.
    let valid = conf.valid_attachments.clone().ok_or_else(|| {
        Error::Config(ConfigError::Invalid {
            field: "cni.dev/valid-attachments",
            reason: "required for GC".into(),
        })
    })?;
    match &conf.ipam {
        IpamConf::Builtin { data_dir, .. } => {
            let mut store = DiskStore::open(data_dir, &conf.name)?;
            for (ip, a) in ipam::gc(&mut store, &valid)? {
                eprintln!("weir-cni: GC freed {ip} of {}/{}", a.container_id, a.ifname);
            }
        }
        IpamConf::Delegate { plugin } => {
            delegate::exec(plugin, &env.path, "GC", stdin)?;
        }
    }
    let keep: HashSet<String> = valid.iter().map(naming::host_veth).collect();
    let prefix = naming::alias_prefix(&conf.name);
    let group = naming::group(&conf.name);
    let node = Netlink::current()?;
    let mut first_err = None;
    for link in node.links()? {
        let ours = link.is_veth
            && link.name.starts_with(naming::HOST_PREFIX)
            && (link.group == group || link.alias.as_deref().is_some_and(|a| a.starts_with(&prefix)));
        if ours
            && !keep.contains(&link.name)
            && let Err(e) = node.delete_link(&link.name)
        {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), |e| Err(e.into()))
}
