//! A safe `collect()` over mimalloc's `mi_collect`, which neither the
//! `mimalloc` crate (the allocator only) nor `libmimalloc-sys` (raw FFI)
//! offers safely. Kept in a crate of its own so that seckill itself keeps
//! `unsafe_code = "forbid"`: this is the project's only unsafe block.

/// Frees the calling thread's empty allocator pages and decommits the free
/// ranges (program-wide) whose purge delay has passed. Not forced: pages
/// with live blocks stay, and what was freed just now is decommitted by a
/// later call. Cheap when there is nothing to do; meant for a thread that
/// has run out of work.
pub fn collect() {
    // SAFETY: mi_collect has no preconditions. It works on the calling
    // thread's own heap (returning at once if the thread never allocated
    // through mimalloc) and on the shared arenas under mimalloc's own
    // locking; it is not called from inside the allocator.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn collect_on_a_thread_that_allocated_and_on_one_that_did_not() {
        let v = vec![0u8; 1 << 20];
        drop(v);
        super::collect();
        std::thread::spawn(super::collect).join().unwrap();
    }
}
