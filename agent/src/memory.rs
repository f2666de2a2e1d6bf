//! Giving memory back. A full compile (the first list of a cluster, a relist)
//! parses whole objects before they are trimmed and builds the desired state
//! anew; what that leaves free is scattered between the objects kept, where
//! glibc's allocator keeps it. `malloc_trim` hands those free pages back to the
//! kernel (measured at 10,000 Services x 10 endpoints and 10,000 Pods: 249 to
//! 242 MiB; see `tests/benches/agent_memory.rs`). musl's allocator (the
//! image's) unmaps freed memory itself.
//!
//! The same goes for a cluster that shrinks: Services leaving free their
//! objects, compiled entries and the syncer's mirror of them, scattered in
//! the same way. Once the changes settle (the sync loop goes idle) after
//! enough map entries were deleted, the free pages go back too (10,000
//! Services x 10 endpoints removed: see the benchmark's "emptied" column).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Makes every thread allocate from one glibc arena. With one arena per
/// thread (glibc's default, up to 8 per core), the objects the manifest
/// parsers and API watchers build on their threads land in arenas that
/// `malloc_trim` cannot shrink back: after 10,000 Services x 10 endpoints and
/// 10,000 Pods were removed, the agent kept 59 MiB (3.1x its empty RSS) with
/// them and 20 MiB with one arena, also 25 MiB less at its peak, and no
/// slower to sync (measured with `MALLOC_ARENA_MAX=1`, which this sets; the
/// agent allocates little outside the sync thread, so one lock costs nothing
/// it can measure). Call first thing, before any thread starts.
pub fn one_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

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

/// Returns the allocator's free pages to the kernel; cheap enough after a full
/// compile, pointless more often. Logs what the heap holds afterwards.
pub fn release_free() {
    DELETED.store(0, Relaxed);
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own structures.
    unsafe {
        libc::malloc_trim(0);
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

/// What glibc's allocator holds, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Heap {
    /// Allocated and live.
    pub in_use: usize,
    /// Free chunks within the heap: freed memory between live allocations,
    /// resident until reused unless whole pages of it were given back.
    pub free: usize,
    /// Large allocations served by `mmap` (given back whole when freed).
    pub mapped: usize,
}

/// The allocator's figures (`mallinfo2`); `None` where the allocator is not glibc's.
pub fn heap() -> Option<Heap> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 only reads the allocator's own statistics.
        let info = unsafe { libc::mallinfo2() };
        Some(Heap {
            in_use: info.uordblks,
            free: info.fordblks,
            mapped: info.hblkhd,
        })
    }
    #[cfg(not(target_env = "gnu"))]
    None
}
