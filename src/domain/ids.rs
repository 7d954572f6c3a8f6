//! Newtype ids, and the generator of order numbers / `stock_log` ids.
//!
//! The original project took order numbers from one locked `sequence_info`
//! row: every order in every instance serialised on it. Here ids are
//! Snowflake-style: 41 bits of milliseconds since 2024-01-01, 10 bits of node
//! id (unique per running instance), 12 bits of per-millisecond sequence. No
//! row, no lock, unique across instances as long as node ids differ.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A registered user.
    UserId
);
id_type!(
    /// An item for sale.
    ItemId
);
id_type!(
    /// A promo: an item sold at a promo price between two instants.
    PromoId
);
id_type!(
    /// One reservation's journal row; also the idempotency key of its stock
    /// deduction and of giving its reservation back.
    StockLogId
);

/// An order number: `yyyyMMdd` + the 19-digit Snowflake id of its `stock_log`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderNo(pub String);

impl OrderNo {
    pub fn new(at: DateTime<Utc>, id: StockLogId) -> Self {
        OrderNo(format!("{}{:019}", at.format("%Y%m%d"), id.0))
    }

    /// Parses an order number from a path; `None` when it cannot be one.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 27 && s.bytes().all(|b| b.is_ascii_digit())).then(|| OrderNo(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for OrderNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const EPOCH_MS: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z

/// Milliseconds on a clock that never jumps (not the wall clock, which NTP
/// may step), counted from the first call in the process: leases' TTLs are
/// durations, and are measured on it. It stands still while the host is
/// suspended; a lease that lapsed meanwhile is found at the next renewal.
pub fn monotonic_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
/// The largest node id the generator accepts.
pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;

/// Lock-free Snowflake id generator. Ids are strictly increasing per
/// generator; two generators with different node ids never collide.
///
/// The node id can change while ids are handed out ([`set_node`]: an
/// instance whose node id lease was taken by another moves to a new one);
/// it lives in the same atomic word as the last id, so every id is made
/// from one node id and the sequence goes on increasing across the change.
///
/// [`set_node`]: IdGenerator::set_node
pub struct IdGenerator {
    /// `node << STATE_NODE_SHIFT | (ms since EPOCH) << SEQ_BITS | seq`, the
    /// last id handed out and the node id the next one takes.
    state: AtomicU64,
    /// [`monotonic_ms`] until which the node id is known to be this
    /// process's alone (its lease's last confirmation + TTL); `u64::MAX`
    /// for a generator made without a lease (tests, benchmarks).
    own_until_ms: AtomicU64,
}

/// Milliseconds (41 bits) and sequence (12 bits) take the state's low 53
/// bits; the node id sits above them.
const STATE_NODE_SHIFT: u32 = 53;
const STATE_TIME_MASK: u64 = (1 << STATE_NODE_SHIFT) - 1;

impl IdGenerator {
    /// Node ids above `MAX_NODE_ID` are masked (config validation refuses
    /// them before they get here).
    pub fn new(node: u16) -> Self {
        IdGenerator {
            state: AtomicU64::new(u64::from(node & MAX_NODE_ID) << STATE_NODE_SHIFT),
            own_until_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Records until when ([`monotonic_ms`]) the node id is known to be
    /// this process's alone: a lease not confirmed since may have lapsed and
    /// been taken by another instance.
    pub fn own_node_until(&self, at: u64) {
        self.own_until_ms.store(at, Ordering::Relaxed);
    }

    /// Whether the node id is known to be this process's alone now. Orders
    /// are refused (503) while it is not: their ids could collide.
    pub fn owns_node(&self) -> bool {
        monotonic_ms() < self.own_until_ms.load(Ordering::Relaxed)
    }

    pub fn node(&self) -> u16 {
        (self.state.load(Ordering::Relaxed) >> STATE_NODE_SHIFT) as u16
    }

    /// Hands out the following ids with `node`. They start on the next
    /// millisecond, so they stay above every id handed out before.
    pub fn set_node(&self, node: u16) {
        let node = u64::from(node & MAX_NODE_ID) << STATE_NODE_SHIFT;
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |s| {
                let next_ms = ((s & STATE_TIME_MASK) >> SEQ_BITS) + 1;
                Some(node | next_ms << SEQ_BITS)
            });
    }

    /// The next id. When more than 4096 ids are asked within one millisecond
    /// it borrows from the next millisecond rather than waiting, so ids stay
    /// unique and increasing; the clock catches up.
    pub fn next_id(&self) -> StockLogId {
        let now = (Utc::now().timestamp_millis() - EPOCH_MS).max(0) as u64;
        let candidate = now << SEQ_BITS;
        let mut prev = self.state.load(Ordering::Relaxed);
        loop {
            let node = prev >> STATE_NODE_SHIFT;
            let last = prev & STATE_TIME_MASK;
            let next = if candidate > last {
                candidate
            } else {
                last + 1
            };
            match self.state.compare_exchange_weak(
                prev,
                node << STATE_NODE_SHIFT | next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let ms = next >> SEQ_BITS;
                    let seq = next & ((1 << SEQ_BITS) - 1);
                    let id = (ms << (NODE_BITS + SEQ_BITS)) | (node << SEQ_BITS) | seq;
                    return StockLogId(id as i64);
                }
                Err(actual) => prev = actual,
            }
        }
    }

    /// The instant encoded in an id.
    pub fn timestamp(id: StockLogId) -> DateTime<Utc> {
        let ms = (id.0 as u64 >> (NODE_BITS + SEQ_BITS)) as i64 + EPOCH_MS;
        Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_increasing_within_a_generator() {
        let g = IdGenerator::new(7);
        let mut prev = 0;
        let mut seen = HashSet::new();
        for _ in 0..50_000 {
            let id = g.next_id().0;
            assert!(id > prev);
            assert!(seen.insert(id));
            prev = id;
        }
    }

    #[test]
    fn generators_with_different_nodes_never_collide() {
        let a = IdGenerator::new(1);
        let b = IdGenerator::new(2);
        let xs: HashSet<i64> = (0..10_000).map(|_| a.next_id().0).collect();
        assert!((0..10_000).all(|_| !xs.contains(&b.next_id().0)));
    }

    #[test]
    fn a_node_change_keeps_ids_increasing_and_takes_the_new_node() {
        let g = IdGenerator::new(9);
        let before: Vec<i64> = (0..5_000).map(|_| g.next_id().0).collect();
        g.set_node(4);
        assert_eq!(g.node(), 4);
        let after = g.next_id().0;
        assert!(
            after > *before.last().unwrap(),
            "increasing across the change"
        );
        assert_eq!((after >> SEQ_BITS) & i64::from(MAX_NODE_ID), 4);
        assert_eq!((before[0] >> SEQ_BITS) & i64::from(MAX_NODE_ID), 9);
    }

    #[test]
    fn ids_are_unique_across_threads() {
        let g = std::sync::Arc::new(IdGenerator::new(3));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..20_000).map(|_| g.next_id().0).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
    }

    #[test]
    fn order_numbers_start_with_the_date_and_round_trip() {
        let g = IdGenerator::new(5);
        let id = g.next_id();
        let at = IdGenerator::timestamp(id);
        assert!((Utc::now() - at).num_seconds().abs() < 5);
        let no = OrderNo::new(at, id);
        assert_eq!(no.as_str().len(), 27);
        assert_eq!(&no.as_str()[..8], at.format("%Y%m%d").to_string());
        assert_eq!(OrderNo::parse(no.as_str()), Some(no));
        assert_eq!(OrderNo::parse("12ab"), None);
    }
}
