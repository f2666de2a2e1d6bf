//! Map system calls aya 0.14 lacks, on aya's map descriptor:
//!
//! - `BPF_MAP_UPDATE_BATCH`: many writes to one map in one system call, as
//!   bpftool and Cilium write large maps. At 100,000 Services a sync writes
//!   millions of entries: one call each made the call itself the cost.
//! - `BPF_MAP_GET_NEXT_KEY` over raw bytes: counting any map's keys without
//!   its key type (the metrics' map fill).

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Pod,
    maps::{MapData, MapError},
    sys::SyscallError,
};

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

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
    if n == 0 {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: u32::try_from(n).unwrap_or(u32::MAX),
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is the kernel's layout for this command; the key and value
    // arrays it points to are `count` elements of the map's key and value
    // types (Pod, `#[repr(C)]`), alive for the call; the kernel writes back
    // `count` only.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &raw mut attr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if ret == 0 {
        return Ok(());
    }
    let io_error = std::io::Error::last_os_error();
    Err((
        (attr.count as usize).min(n),
        MapError::SyscallError(SyscallError {
            call: "bpf_map_update_batch",
            io_error,
        }),
    ))
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
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &raw mut attr,
                std::mem::size_of::<NextKeyAttr>(),
            )
        };
        if ret != 0 {
            let io_error = std::io::Error::last_os_error();
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
