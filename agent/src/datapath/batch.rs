//! `BPF_MAP_UPDATE_BATCH`: many writes to one map in one system call, as
//! bpftool and Cilium write large maps. aya 0.14 has no batch API; this is its
//! one system call, on aya's map descriptor. At 100,000 Services a sync writes
//! millions of entries: one call each made the call itself the cost.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Pod,
    maps::{MapData, MapError},
    sys::SyscallError,
};

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
