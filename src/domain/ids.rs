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
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
/// The largest node id the generator accepts.
pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;

/// Lock-free Snowflake id generator. Ids are strictly increasing per
/// generator; two generators with different node ids never collide.
pub struct IdGenerator {
    node: u64,
    /// `(ms since EPOCH) << SEQ_BITS | seq` of the last id handed out.
    last: AtomicU64,
}

impl IdGenerator {
    /// # Panics
    /// Never on ids from `MAX_NODE_ID` down; larger ones are masked by config
    /// validation before they get here.
    pub fn new(node: u16) -> Self {
        IdGenerator {
            node: u64::from(node & MAX_NODE_ID),
            last: AtomicU64::new(0),
        }
    }

    pub fn node(&self) -> u16 {
        self.node as u16
    }

    /// The next id. When more than 4096 ids are asked within one millisecond
    /// it borrows from the next millisecond rather than waiting, so ids stay
    /// unique and increasing; the clock catches up.
    pub fn next_id(&self) -> StockLogId {
        let now = (Utc::now().timestamp_millis() - EPOCH_MS).max(0) as u64;
        let candidate = now << SEQ_BITS;
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = if candidate > prev {
                candidate
            } else {
                prev + 1
            };
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    let ms = next >> SEQ_BITS;
                    let seq = next & ((1 << SEQ_BITS) - 1);
                    let id = (ms << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | seq;
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
