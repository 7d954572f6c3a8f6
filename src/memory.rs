//! Freed memory back to the system once a crowd has passed.
//!
//! The binary's allocator (mimalloc, `src/main.rs`) keeps the pages a
//! thread freed and returns them to the system only from its own allocation
//! and free paths, so an instance that goes quiet after a crowd keeps the
//! crowd's peak of connection buffers resident (docs/BENCHMARKS.md: tens of
//! MB after the drills). Each runtime thread, when it runs out of work
//! (tokio's `on_thread_park`), at most once per `interval`, asks mimalloc
//! to collect: its own empty pages are freed, and the free ranges whose
//! purge delay has passed are decommitted (those are program-wide). What a
//! collect frees is decommitted by a later one, so the memory goes back over
//! the quiet instance's next wake-ups (timers, the metrics upkeep every 5 s),
//! not at once. The call itself is the `mimalloc-collect` crate's
//! (`crates/`), which keeps the one unsafe block out of this crate.
//!
//! With the `system-allocator` feature (glibc's malloc) there is nothing to
//! ask and no hook.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The hook for `tokio::runtime::Builder::on_thread_park`; `None` when
/// `interval` is zero (never) or the binary runs on glibc's allocator.
pub fn release_when_idle(interval: Duration) -> Option<impl Fn() + Send + Sync + 'static> {
    if interval.is_zero() || cfg!(feature = "system-allocator") {
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
            mimalloc_collect::collect();
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_never_and_the_hook_is_callable() {
        assert!(release_when_idle(Duration::ZERO).is_none());
        let hook = release_when_idle(Duration::from_millis(1));
        assert_eq!(hook.is_some(), !cfg!(feature = "system-allocator"));
        let big = vec![0u8; 1 << 20];
        drop(big);
        if let Some(hook) = hook {
            hook();
            hook();
        }
    }
}
