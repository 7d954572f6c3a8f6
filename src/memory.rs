//! Freed memory back to the system once a crowd has passed.
//!
//! The binary's allocator (mimalloc, `src/main.rs`) keeps the pages a
//! thread freed and returns them to the system only from its own allocation
//! and free paths, so an instance that goes quiet after a crowd keeps the
//! crowd's peak of connection buffers resident (docs/BENCHMARKS.md: tens of
//! MB after the drills). Each runtime thread, when it runs out of work
//! (tokio's `on_thread_park`), at most once per `interval`, asks mimalloc
//! to collect: its own empty pages are freed, and the free ranges whose
//! purge delay has passed are decommitted (those are program-wide).
//!
//! With the `system-allocator` feature (glibc's malloc) there is nothing to
//! ask; the hook does nothing.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The hook for `tokio::runtime::Builder::on_thread_park`; `None` when
/// `interval` is zero (never).
pub fn release_when_idle(interval: Duration) -> Option<impl Fn() + Send + Sync + 'static> {
    if interval.is_zero() {
        return None;
    }
    Some(move || {
        thread_local! {
            static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
        }
        let now = Instant::now();
        LAST.with(|last| {
            if last.get().is_some_and(|t| now.duration_since(t) < interval) {
                return;
            }
            last.set(Some(now));
            collect();
        });
    })
}

// The crate's only unsafe code: one call into the allocator's C API, which
// no safe wrapper exposes (the `mimalloc` crate offers only the allocator).
#[cfg(not(feature = "system-allocator"))]
#[allow(unsafe_code)]
fn collect() {
    // SAFETY: mi_collect has no preconditions; it works on the calling
    // thread's heap and the shared arenas, under mimalloc's own locking.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

#[cfg(feature = "system-allocator")]
fn collect() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_never_and_the_hook_is_callable() {
        assert!(release_when_idle(Duration::ZERO).is_none());
        let hook = release_when_idle(Duration::from_millis(1)).unwrap();
        let _big = vec![0u8; 1 << 20];
        drop(_big);
        hook();
        hook();
    }
}
