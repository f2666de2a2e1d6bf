//! The policy maps as the syncer sees them: read everything, apply one change
//! at a time, to the kernel's maps or (tests) to maps in memory.

use std::fmt;

use aya::maps::{MapError, lpm_trie::Key};
use tracing::warn;
use weir_common::{EndpointKey, PolicyEndpoint, PolicyShare, maps as names};
use weir_model::policy::{DesiredPolicy, IpcacheEntry, RuleKey};

use super::{MapOp, Maps, SharedDatapath, SyncError};
use crate::datapath::maps;

/// `BPF_NOEXIST`: create only.
const BPF_NOEXIST: u64 = 1;

/// One write to one policy map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyOp {
    PutRule(RuleKey),
    PutIpcache(IpcacheEntry, u32),
    PutEndpoint(EndpointKey, PolicyEndpoint),
    DelEndpoint(EndpointKey),
    DelIpcache(IpcacheEntry),
    DelRule(RuleKey),
}

impl PolicyOp {
    /// The write, done to maps held in memory.
    pub fn apply_to(&self, maps: &mut DesiredPolicy) {
        match self {
            Self::PutRule(r) => {
                maps.rules.insert(*r);
            }
            Self::PutIpcache(k, v) => {
                maps.ipcache.insert(*k, *v);
            }
            Self::PutEndpoint(k, v) => {
                maps.endpoints.insert(*k, *v);
            }
            Self::DelEndpoint(k) => {
                maps.endpoints.remove(k);
            }
            Self::DelIpcache(k) => {
                maps.ipcache.remove(k);
            }
            Self::DelRule(r) => {
                maps.rules.remove(r);
            }
        }
    }
}

impl MapOp for PolicyOp {
    type Contents = DesiredPolicy;

    fn map(&self) -> &'static str {
        match self {
            Self::PutRule(_) | Self::DelRule(_) => names::POLICY,
            Self::PutIpcache(..) | Self::DelIpcache(_) => names::IPCACHE,
            Self::PutEndpoint(..) | Self::DelEndpoint(_) => names::POLICY_ENDPOINTS,
        }
    }

    fn is_delete(&self) -> bool {
        matches!(
            self,
            Self::DelEndpoint(_) | Self::DelIpcache(_) | Self::DelRule(_)
        )
    }
}

/// The key in the terms `weirctl policy` and `weirctl ipcache` use.
impl fmt::Display for PolicyOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PutRule(r) | Self::DelRule(r) => write!(
                f,
                "rule endpoint {} identity {} {} proto {} port {}/{}",
                r.key.endpoint,
                r.key.identity,
                if r.key.egress != 0 { "egress" } else { "ingress" },
                r.key.proto,
                u16::from_be(r.key.port),
                r.prefix_len,
            ),
            Self::PutIpcache(e, _) | Self::DelIpcache(e) => {
                write!(f, "ipcache {:?}/{}", e.key.addr, e.prefix_len)
            }
            Self::PutEndpoint(k, _) | Self::DelEndpoint(k) => write!(f, "endpoint {:?}", k.addr),
        }
    }
}

/// Everything the three policy maps hold, in the compiler's terms: what the
/// syncer reads back at start, and what `weirctl` shows.
pub fn read_policy_maps(
    endpoints: &maps::PolicyEndpoints,
    ipcache: &maps::Ipcache,
    policy: &maps::Policy,
) -> Result<DesiredPolicy, SyncError> {
    let read = |map| move |source| SyncError::Read { map, source };
    let mut out = DesiredPolicy {
        endpoints: endpoints
            .iter()
            .collect::<Result<_, _>>()
            .map_err(read(names::POLICY_ENDPOINTS))?,
        ..DesiredPolicy::default()
    };
    for entry in ipcache.iter() {
        let (k, v) = entry.map_err(read(names::IPCACHE))?;
        out.ipcache.insert(
            IpcacheEntry {
                prefix_len: k.prefix_len(),
                key: k.data(),
            },
            v,
        );
    }
    for entry in policy.iter() {
        let (k, _) = entry.map_err(read(names::POLICY))?;
        out.rules.insert(RuleKey {
            prefix_len: k.prefix_len(),
            key: k.data(),
        });
    }
    Ok(out)
}

/// The three policy maps in the kernel.
impl Maps<PolicyOp> for SharedDatapath {
    fn read(&self) -> Result<DesiredPolicy, SyncError> {
        let dp = self.lock();
        read_policy_maps(&dp.policy_endpoints, &dp.ipcache, &dp.policy)
    }

    fn apply(&mut self, op: &PolicyOp) -> Result<(), MapError> {
        let mut dp = self.lock();
        match op {
            PolicyOp::PutRule(r) => dp.policy.insert(&Key::new(r.prefix_len, r.key), 1, 0),
            PolicyOp::PutIpcache(e, id) => dp.ipcache.insert(&Key::new(e.prefix_len, e.key), id, 0),
            PolicyOp::PutEndpoint(k, v) => {
                // Its share of the policy conntrack, from its first flow on (the
                // GC recounts it from the map); kept if already there.
                let share = PolicyShare {
                    entries: 0,
                    limit: names::POLICY_SHARE,
                };
                if let Err(e) = dp.policy_shares.insert(v.id, share, BPF_NOEXIST)
                    && !matches!(&e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EEXIST))
                {
                    warn!(endpoint = v.id, error = %e, "writing an endpoint's conntrack share: left to the GC");
                }
                dp.policy_endpoints.insert(k, v, 0)
            }
            PolicyOp::DelEndpoint(k) => dp.policy_endpoints.remove(k),
            PolicyOp::DelIpcache(e) => dp.ipcache.remove(&Key::new(e.prefix_len, e.key)),
            PolicyOp::DelRule(r) => dp.policy.remove(&Key::new(r.prefix_len, r.key)),
        }
    }
}
