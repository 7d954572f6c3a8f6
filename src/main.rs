//! The `seckill` binary: parses the command line and hands over to the library.

/// mimalloc: the order path allocates many small, short-lived buffers across
/// threads (requests, JSON, Redis and SQL frames); glibc's allocator spent
/// ~14 % of an instance's time in malloc/free under a drill and kept freed
/// memory in per-thread arenas (docs/BENCHMARKS.md). Built without
/// transparent huge pages (`no_thp`): backed by 2 MiB pages, every idle
/// connection's mostly untouched buffers counted whole in the RSS (19 KiB a
/// connection instead of 11).
///
/// The `system-allocator` feature builds with glibc's allocator instead, for
/// heap profilers that hook malloc (heaptrack, valgrind's massif).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    seckill::cli::main()
}
