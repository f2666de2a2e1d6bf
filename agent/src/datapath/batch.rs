//! Map system calls aya 0.14 lacks, on aya's map descriptor:
//!
//! - `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH`: many writes (deletes)
//!   to one map in one system call, as bpftool and Cilium write large maps. At
//!   100,000 Services a sync writes (or, as they go, deletes) millions of
//!   entries: one call each made the call itself the cost.
//! - `BPF_MAP_LOOKUP_BATCH`: a hash map read whole many entries per call
//!   (aya's iterator makes two calls per entry, the next key and its value).
//! - `BPF_MAP_GET_NEXT_KEY` over raw bytes: counting any map's keys without
//!   its key type (the metrics' map fill).

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Pod,
    maps::{MapData, MapError},
    sys::SyscallError,
};

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `keys[i] -> values[i]` in order. On failure, how many were written
/// before the one that failed, and why (the rest are not written).
pub fn update<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> Result<(), (usize, MapError)> {
    debug_assert_eq!(keys.len(), values.len());
    let n = keys.len().min(values.len());
    // SAFETY: `keys` and `values` are `n` elements each of the map's key and
    // value types (Pod, `#[repr(C)]`), alive for the call.
    unsafe {
        batch(
            BPF_MAP_UPDATE_BATCH,
            "bpf_map_update_batch",
            map,
            n,
            keys.as_ptr().cast(),
            values.as_ptr().cast(),
        )
    }
}

/// Deletes `keys` in order. On failure (`ENOENT` for a key not there), how
/// many were deleted before the one that failed, and why (the rest are not
/// deleted).
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> Result<(), (usize, MapError)> {
    // SAFETY: `keys` is `keys.len()` elements of the map's key type (Pod,
    // `#[repr(C)]`), alive for the call; a delete reads no values.
    unsafe {
        batch(
            BPF_MAP_DELETE_BATCH,
            "bpf_map_delete_batch",
            map,
            keys.len(),
            keys.as_ptr().cast(),
            std::ptr::null(),
        )
    }
}

/// A hash map read whole, many entries per system call: each
/// [`HashReader::next`] is one call (so that a caller can hold a lock per
/// call rather than for the whole map). A map written by someone else
/// meanwhile may be read partly before and partly after the change, as any
/// walk of a hash map.
pub struct HashReader<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
    /// The kernel's place in the map (a bucket number) from the last call;
    /// `None` before the first.
    at: Option<u32>,
    ended: bool,
}

impl<K: Pod, V: Pod> HashReader<K, V> {
    /// A reader taking up to `per_call` entries per call.
    pub fn new(per_call: usize) -> Self {
        let per_call = per_call.max(1);
        Self {
            keys: Vec::with_capacity(per_call),
            values: Vec::with_capacity(per_call),
            at: None,
            ended: false,
        }
    }

    /// The next entries of `map` (the same map each time); `None` once every
    /// entry was read.
    pub fn next(&mut self, map: &MapData) -> Result<Option<Entries<'_, K, V>>, MapError> {
        if self.ended {
            return Ok(None);
        }
        let per_call = self.keys.capacity().min(self.values.capacity());
        let mut next = 0u32;
        let mut attr = BatchAttr {
            // None: from the start.
            in_batch: self.at.as_ref().map_or(0, |at| std::ptr::from_ref(at) as u64),
            out_batch: &raw mut next as u64,
            keys: self.keys.as_mut_ptr() as u64,
            values: self.values.as_mut_ptr() as u64,
            count: u32::try_from(per_call).unwrap_or(u32::MAX),
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the kernel's layout for this command; `keys` and
        // `values` have room for `count` of the map's keys and values (Pod,
        // `#[repr(C)]`), `at` and `next` for a hash map's place (a u32), all
        // alive for the call; the kernel writes those and `count`.
        if let Err(io_error) = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
            // A bucket of more entries than there is room for: room for
            // twice as many, and the same call again.
            if io_error.raw_os_error() == Some(libc::ENOSPC) && per_call < MAX_PER_CALL {
                self.keys.reserve(2 * per_call);
                self.values.reserve(2 * per_call);
                return self.next(map);
            }
            // ENOENT: the end of the map, with the last entries read.
            if io_error.raw_os_error() != Some(libc::ENOENT) {
                return Err(MapError::SyscallError(SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error,
                }));
            }
            self.ended = true;
        }
        let got = (attr.count as usize).min(per_call);
        // SAFETY: the kernel wrote `got` keys and values (any bytes are a
        // valid Pod).
        unsafe {
            self.keys.set_len(got);
            self.values.set_len(got);
        }
        self.at = Some(next);
        if got == 0 && self.ended {
            return Ok(None);
        }
        Ok(Some((&self.keys, &self.values)))
    }
}

/// One call's keys and values, in the same order.
pub type Entries<'r, K, V> = (&'r [K], &'r [V]);

/// Entries per read call.
pub const READ_PER_CALL: usize = 4_096;

/// The most entries a [`HashReader`] makes room for in one call (a bucket
/// of more is not a hash map's).
const MAX_PER_CALL: usize = 1 << 20;

/// One batch command of `n` elements.
///
/// # Safety
/// `keys` (and `values`, for a command that reads them) point to `n` elements
/// of the map's key (value) type, alive for the call.
unsafe fn batch(
    cmd: libc::c_long,
    call: &'static str,
    map: &MapData,
    n: usize,
    keys: *const u8,
    values: *const u8,
) -> Result<(), (usize, MapError)> {
    if n == 0 {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys as u64,
        values: values as u64,
        count: u32::try_from(n).unwrap_or(u32::MAX),
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is the kernel's layout for these commands; what it points
    // to is as the caller promised; the kernel writes back `count` only.
    unsafe { bpf(cmd, &mut attr) }.map_err(|io_error| {
        (
            (attr.count as usize).min(n),
            MapError::SyscallError(SyscallError { call, io_error }),
        )
    })
}

/// One `bpf(2)` command.
///
/// # Safety
/// `attr` is the kernel's layout for `cmd`, and what it points to is what the
/// command reads and writes, alive for the call.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<()> {
    // SAFETY: as the caller promised.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<A>(),
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `union bpf_attr`'s member for key iteration.
#[repr(C)]
#[derive(Default)]
struct NextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
}

/// How many keys `map` (of `key_size`-byte keys) holds, walked with
/// `BPF_MAP_GET_NEXT_KEY`; at most `limit` are counted (a map changing under
/// the walk can restart it).
pub fn count_keys(map: &MapData, key_size: usize, limit: usize) -> Result<usize, MapError> {
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut count = 0;
    let mut first = true;
    while count < limit {
        let mut attr = NextKeyAttr {
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            // No key: the first one.
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            ..NextKeyAttr::default()
        };
        // SAFETY: `attr` is the kernel's layout for this command; `key` and
        // `next` are `key_size` bytes, the map's key size, alive for the call.
        if let Err(io_error) = unsafe { bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
            if io_error.raw_os_error() == Some(libc::ENOENT) {
                break;
            }
            return Err(MapError::SyscallError(SyscallError {
                call: "bpf_map_get_next_key",
                io_error,
            }));
        }
        std::mem::swap(&mut key, &mut next);
        first = false;
        count += 1;
    }
    Ok(count)
}
