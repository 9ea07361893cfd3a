//! The process's allocator: mimalloc instead of glibc's malloc. A proxy allocates and
//! frees small buffers for every request, and glibc's allocator was ~13 % of levee's
//! CPU under load. The `levee` binary installs it (`#[global_allocator]`), and so does
//! the load bench, whose generator shares the machine with the proxy it measures.
//!
//! Built without transparent huge pages (`libmimalloc-sys`'s `no_thp` feature): mimalloc
//! otherwise asks the kernel for huge pages on its arenas, and its resident memory then
//! grows 2 MiB at a time. Measured (`scripts/bench.sh --sections memory`, 10,000 idle
//! keep-alive connections, 3 runs): with huge pages levee held 18.3 MiB at rest and
//! 1.44-1.72 KiB per connection, varying from run to run with where the 2 MiB steps
//! fell; without, 9.5 MiB and 1.37-1.38 KiB.

/// mimalloc through its plain entry points. The `mimalloc` crate's allocator asks for
/// every block through `mi_malloc_aligned`, whose fast path covers only blocks up to
/// 1 KiB: each larger one (hyper's buffers, header maps) took mimalloc's generic
/// over-allocating path, ~8,500 instructions of allocator per proxied request under
/// callgrind against ~1,600 for glibc's. Blocks whose alignment `mi_malloc` already
/// guarantees (at most 16 and at most their size, the rule std's own allocator
/// applies) go through `mi_malloc`; the rest through the aligned entry points.
pub struct MiMalloc;

/// The alignment `mi_malloc` guarantees for blocks at least this large.
const MI_MAX_ALIGN: usize = 16;

fn plain(align: usize, size: usize) -> bool {
    align <= MI_MAX_ALIGN && align <= size
}

// SAFETY: each method hands mimalloc's block (or null on failure) back unchanged;
// mimalloc frees any of its blocks with `mi_free` whatever entry point made it.
unsafe impl std::alloc::GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_malloc, mi_malloc_aligned};
        // SAFETY: plain allocation calls with a valid size and power-of-two alignment.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};
        // SAFETY: as `alloc`.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from one of this allocator's calls.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys::{mi_realloc, mi_realloc_aligned};
        // SAFETY: `ptr` came from this allocator with `layout`; the caller guarantees
        // `new_size` is valid for its alignment.
        unsafe {
            if plain(layout.align(), new_size) {
                mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}
