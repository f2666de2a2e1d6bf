//! The agent's allocator, and giving memory back.
//!
//! The agent allocates with jemalloc (`weir-agent`'s global allocator is
//! [`Allocator`], configured by [`CONF`]). A full compile (the first list of
//! a cluster, a relist) parses whole objects before they are trimmed and
//! builds the desired state anew; glibc's allocator kept what that left free
//! scattered between the objects kept, where not even `malloc_trim` could
//! give it back: 21 MiB of free chunks beside 49 MiB in use at 10,000
//! Services x 10 endpoints and 10,000 Pods, 218 MiB beside 345 at 100,000.
//! jemalloc keeps allocations of one size class together in page runs and
//! hands back the pages a run no longer uses (docs/benchmarks.md, "Issue 14:
//! jemalloc").
//!
//! A cluster that shrinks frees its objects, compiled entries and map
//! bookkeeping. Once the changes settle (the sync loop goes idle) after
//! enough map entries were deleted, or after a full compile, the pages the
//! allocator holds unused go back to the kernel at once ([`release_free`]),
//! not only as they decay.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// jemalloc's options, read at its first allocation: pages unused for a
/// second handed back (`dirty_decay_ms`), and handed back for good
/// (`muzzy_decay_ms` 0: a page only advised free still counts as resident
/// until the kernel needs it). Its arenas as it sets them (one per thread
/// up to 4 per CPU): one arena for all, as the agent ran glibc's allocator,
/// made the first sync of 100,000 Services 1.7x slower and the agent no
/// smaller. No thread cache (`tcache:false`): objects a thread frees go back
/// to their page runs at once, where the next allocation of their size takes
/// the lowest free one, instead of to a cache that hands the latest freed
/// back first, from whichever run: at 10,000 Services, 4 MiB less resident
/// (3 MiB less free beside the same heap; 30,000: 3-12 MiB less), for a
/// first sync 3% slower from the API (docs/benchmarks.md). The manifest
/// parsers keep theirs
/// ([`with_thread_cache`]). `_RJEM_MALLOC_CONF` (jemalloc's `MALLOC_CONF`
/// under the prefix it is built with) overrides them.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static CONF: &[u8; 50] = b"dirty_decay_ms:1000,muzzy_decay_ms:0,tcache:false\0";

/// Runs `f` with this thread's cache of freed objects on, then puts it back
/// as it was (off, unless `_RJEM_MALLOC_CONF` says otherwise: turning it off
/// flushes it): for work that allocates and frees many small objects at once
/// and keeps few (parsing a manifest file: 11% faster with it).
pub fn with_thread_cache<T>(f: impl FnOnce() -> T) -> T {
    /// Puts the cache back as it was, also if `f` panics.
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(was) = self.0 {
                set_thread_cache(was);
            }
        }
    }
    let _restore = Restore(set_thread_cache(true));
    f()
}

/// jemalloc's switch of the calling thread's cache, a `bool`.
const THREAD_CACHE: &[u8] = b"thread.tcache.enabled\0";

/// Switches the calling thread's cache; returns what it was, `None` if it
/// could not be switched.
fn set_thread_cache(enabled: bool) -> Option<bool> {
    // SAFETY: a NUL-terminated name whose value is a `bool`.
    unsafe { tikv_jemalloc_ctl::raw::update(THREAD_CACHE, enabled) }
        .inspect_err(|e| tracing::warn!(error = %e, enabled, "jemalloc: switching a thread's cache failed"))
        .ok()
}

/// What `weir-agent` allocates with (its binary names it the global
/// allocator; `weirctl` and the tests keep the system's).
pub type Allocator = tikv_jemallocator::Jemalloc;

/// Map entries deleted since memory was last given back.
static DELETED: AtomicUsize = AtomicUsize::new(0);
/// Below this many deletes, what a trim finds is not worth the walk.
const RELEASE_AFTER_DELETES: usize = 1_000;

/// Counts map entries a sync deleted.
pub fn note_deletes(n: usize) {
    DELETED.fetch_add(n, Relaxed);
}

/// Gives memory back if enough was deleted since the last time.
pub fn release_if_shrunk() {
    if DELETED.load(Relaxed) >= RELEASE_AFTER_DELETES {
        release_free();
    }
}

/// Hands the allocator's unused pages back to the kernel; cheap enough after
/// a full compile, pointless more often. Logs what the heap holds afterwards.
pub fn release_free() {
    DELETED.store(0, Relaxed);
    // `arena.<all>.purge`: every arena's unused pages, now (a mallctl that
    // takes and gives no value).
    // SAFETY: a NUL-terminated name, no value in or out.
    let purged = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if purged != 0 {
        tracing::warn!(error = purged, "jemalloc: purging its arenas failed");
    }
    if let Some(heap) = heap() {
        tracing::info!(
            in_use_kib = heap.in_use >> 10,
            free_kib = heap.free >> 10,
            mapped_kib = heap.mapped >> 10,
            "heap after giving memory back"
        );
    }
}

/// What the allocator holds, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Heap {
    /// Allocated and live.
    pub in_use: usize,
    /// Resident but not allocated: the allocator's own metadata and the free
    /// room in page runs that also hold live allocations.
    pub free: usize,
    /// Mapped from the kernel, resident or not.
    pub mapped: usize,
}

/// jemalloc's figures (`stats.allocated`, `stats.resident`, `stats.mapped`,
/// read afresh); `None` where they cannot be read.
pub fn heap() -> Option<Heap> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let in_use = stats::allocated::read().ok()?;
    let resident = stats::resident::read().ok()?;
    Some(Heap {
        in_use,
        free: resident.saturating_sub(in_use),
        mapped: stats::mapped::read().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_cache() -> bool {
        // SAFETY: as in `set_thread_cache`.
        unsafe { tikv_jemalloc_ctl::raw::read(THREAD_CACHE) }.expect("reading thread.tcache.enabled")
    }

    #[test]
    fn a_thread_cache_is_on_for_the_work_and_as_it_was_after() {
        // A thread of its own: the test harness's threads are shared.
        std::thread::spawn(|| {
            for was in [false, true] {
                set_thread_cache(was).expect("switch");
                assert!(with_thread_cache(thread_cache));
                assert_eq!(thread_cache(), was);
                let panicked = std::panic::catch_unwind(|| with_thread_cache(|| panic!("in the work")));
                assert!(panicked.is_err());
                assert_eq!(thread_cache(), was, "after a panic too");
            }
        })
        .join()
        .expect("the test thread");
    }
}
