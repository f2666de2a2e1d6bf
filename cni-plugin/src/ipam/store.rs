//! Where allocations live. The allocator sees only this trait, so its logic is
//! tested against [`MemStore`]; the real plugin uses [`super::disk::DiskStore`].

use std::{collections::BTreeMap, net::IpAddr};

use super::IpamError;
use crate::spec::Attachment;

pub trait Store {
    /// Records `ip` for `owner` (and moves range set `set`'s cursor to it);
    /// `false` when the address is already taken.
    fn reserve(&mut self, owner: &Attachment, ip: IpAddr, set: usize) -> Result<bool, IpamError>;
    /// The last address reserved in range set `set`, where round robin resumes.
    fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError>;
    /// Forgets `ip` (no error when it was free).
    fn release(&mut self, ip: IpAddr) -> Result<(), IpamError>;
    /// Every allocation and its owner.
    fn allocations(&self) -> Result<Vec<(IpAddr, Attachment)>, IpamError>;
}

/// An in-memory store for tests.
#[derive(Debug, Default)]
pub struct MemStore {
    pub ips: BTreeMap<IpAddr, Attachment>,
    pub last: BTreeMap<usize, IpAddr>,
}

impl Store for MemStore {
    fn reserve(&mut self, owner: &Attachment, ip: IpAddr, set: usize) -> Result<bool, IpamError> {
        if self.ips.contains_key(&ip) {
            return Ok(false);
        }
        self.ips.insert(ip, owner.clone());
        self.last.insert(set, ip);
        Ok(true)
    }

    fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError> {
        Ok(self.last.get(&set).copied())
    }

    fn release(&mut self, ip: IpAddr) -> Result<(), IpamError> {
        self.ips.remove(&ip);
        Ok(())
    }

    fn allocations(&self) -> Result<Vec<(IpAddr, Attachment)>, IpamError> {
        Ok(self.ips.iter().map(|(ip, a)| (*ip, a.clone())).collect())
    }
}
