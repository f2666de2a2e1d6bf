//! Masquerade of pods' traffic leaving the cluster (`--masquerade`): the
//! datapath's switch (`NODE_F_MASQUERADE`) and the destinations it leaves
//! alone, computed by `weir_model::masquerade` and written to
//! `weir_nomasq_v1` whenever the Nodes change (only the difference; at the
//! first write, against what the pinned map holds).

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::lpm_trie::Key;
use ipnetwork::IpNetwork;
use tracing::{info, warn};
use weir_common::{IPCACHE_PREFIX_BITS, NODE_F_MASQUERADE, NOMASQ_F_CLUSTER, NomasqKey};
use weir_model::{
    Kind, Model, ObjectKey,
    masquerade::{MasqConfig, nomasq},
};

use crate::{datapath::Datapath, sync::SharedDatapath};

pub struct Masquerade {
    config: MasqConfig,
    /// `--masquerade`.
    wanted: bool,
    /// What the map holds, as last written; `None`: not written yet.
    written: Option<BTreeMap<IpNetwork, u32>>,
    /// The switch as last set (`None`: as an earlier agent left it).
    on: Option<bool>,
}

impl Masquerade {
    pub fn new(config: MasqConfig, wanted: bool) -> Self {
        Self {
            config,
            wanted,
            written: None,
            on: None,
        }
    }

    /// Writes the map when a Node changed (or it was never written). `model`
    /// must have its Nodes listed whole: fewer would masquerade pods' traffic
    /// to the Nodes missing.
    pub fn update(&mut self, model: &Model, changed: &BTreeSet<ObjectKey>, maps: &SharedDatapath) {
        if self.written.is_some() && !changed.iter().any(|k| k.kind == Kind::Node) {
            return;
        }
        let desired = nomasq(model, &self.config);
        if self.written.as_ref() == Some(&desired) && self.on.is_some() {
            return;
        }
        let mut dp = maps.lock();
        // Without the cluster's pod CIDRs (no --cluster-cidr, no Node with
        // podCIDRs, no --pod-cidrs) every other node's pod would look like
        // the outside world: nothing is masqueraded until they are known.
        let known = desired.values().any(|f| f & NOMASQ_F_CLUSTER != 0);
        let on = self.wanted && known;
        if self.on != Some(on) {
            match dp.set_node_flag(NODE_F_MASQUERADE, on) {
                Ok(()) => {
                    if self.wanted && !known {
                        warn!(
                            "masquerade inactive: the cluster's pod CIDRs are unknown (--cluster-cidr, or Nodes with podCIDRs)"
                        );
                    } else {
                        info!(on, "masquerade of pods' traffic leaving the cluster");
                    }
                    self.on = Some(on);
                }
                Err(e) => warn!(error = %e, "setting the masquerade switch"),
            }
        }
        match write(&mut dp, self.written.take(), &desired) {
            Ok(()) => {
                info!(entries = desired.len(), "masquerade exceptions written");
                self.written = Some(desired);
            }
            // Retried at the next Node change or pass over a fresh read.
            Err(e) => warn!(error = %e, "writing the masquerade exceptions"),
        }
    }
}

fn key(net: &IpNetwork) -> Key<NomasqKey> {
    let (addr, family) = weir_model::net::to_abi(net.network());
    Key::new(
        IPCACHE_PREFIX_BITS + u32::from(net.prefix()),
        NomasqKey { family, addr },
    )
}

/// Writes `desired` over `written` (`None`: whatever the map holds, read
/// back), additions first.
fn write(
    dp: &mut Datapath,
    written: Option<BTreeMap<IpNetwork, u32>>,
    desired: &BTreeMap<IpNetwork, u32>,
) -> Result<(), aya::maps::MapError> {
    let stale: Vec<Key<NomasqKey>> = match written {
        Some(w) => w.keys().filter(|n| !desired.contains_key(n)).map(key).collect(),
        None => {
            let wanted: BTreeSet<(u32, NomasqKey)> = desired
                .keys()
                .map(key)
                .map(|k| (k.prefix_len(), k.data()))
                .collect();
            dp.nomasq
                .keys()
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
                .collect()
        }
    };
    for (net, flags) in desired {
        dp.nomasq.insert(&key(net), flags, 0)?;
    }
    for k in &stale {
        dp.nomasq.remove(k)?;
    }
    Ok(())
}
