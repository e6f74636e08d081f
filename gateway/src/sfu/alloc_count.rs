//! Counts heap allocations made by the current thread, so a test can prove that a code
//! path does not allocate. Only in the crate's test build, where it is the global
//! allocator; every other build uses the default one.
//!
//! ```ignore
//! let before = crate::sfu::alloc_count::allocations();
//! code_under_test();
//! assert_eq!(crate::sfu::alloc_count::allocations() - before, 0);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    // `const` init: no lazy initialisation, which would itself allocate inside the
    // allocator.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: during thread teardown the slot may be gone while the thread still
    // frees and allocates; those calls are simply not counted.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

/// Allocations (including reallocations) made by this thread since it started.
pub fn allocations() -> u64 {
    ALLOCATIONS.try_with(Cell::get).unwrap_or(0)
}

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees are passed through; counting touches only a thread-local `Cell`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

#[cfg(test)]
mod tests {
    use super::allocations;

    #[test]
    fn counts_this_threads_allocations() {
        let before = allocations();
        let v: Vec<u8> = Vec::with_capacity(64);
        std::hint::black_box(&v);
        assert_eq!(allocations() - before, 1);
        drop(v);
        let before = allocations();
        let x = std::hint::black_box(3u64) * 7;
        assert_eq!(allocations() - before, 0, "{x}");
    }
}
