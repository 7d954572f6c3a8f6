//! The fast-state ports: the promo stock ledger (write-behind stock), the
//! short-lived key/value state (sessions, seckill tokens, captchas, one-time
//! codes, gate counters) and rate limits.
//!
//! Adapters: `memory` (one process, the embedded default) and Redis (shared
//! by every instance). The contract tests run the same suite on both.

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{PromoId, SaleJournal, StockLogId, UserId};

pub mod memory;
pub mod redis;

/// A cache failure: the backing service could not answer. Usually nothing
/// the call describes happened, but an answer lost to a time-out can hide
/// a call that did (callers that write keep a record to settle it by: the
/// order path's journal rows).
#[derive(Debug, thiserror::Error)]
#[error("cache unavailable: {context}")]
pub struct CacheError {
    pub context: &'static str,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl CacheError {
    pub fn new(
        context: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        CacheError {
            context,
            source: Some(Box::new(source)),
        }
    }
}

pub type CacheResult<T> = Result<T, CacheError>;

/// A look at a ledger's reservation records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReservationPage {
    pub ids: Vec<StockLogId>,
    /// Every record the ledger held is in `ids` (false: the look stopped at
    /// its `max`, more may be held).
    pub complete: bool,
}

/// One reservation to make: `amount` units of `promo` for `user`, recorded
/// under `id` so that it can be given back exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub promo: PromoId,
    pub user: UserId,
    pub amount: i64,
    pub id: StockLogId,
}

/// What the ledger answered for one reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Units taken; `remaining` is the promo's stock afterwards.
    Reserved { remaining: i64 },
    /// Not enough stock left (the sold-out flag is set when it reaches 0).
    SoldOut,
    /// The user holds units of the promo already: one order a buyer a
    /// promo (the DB's unique key), a cancelled one's units counted too.
    AlreadyBought,
    /// More units than the per-user limit the promo was loaded with (an
    /// instance configured with a higher `per_user_limit` than the one
    /// that published or rebuilt it).
    OverLimit,
    /// The promo's stock is not in the ledger (never published, or the cache
    /// lost it): nothing may be sold until it is warmed again.
    NotWarmed,
}

/// A promo ledger's stock and the version of its last change. Every change
/// of the stock or the buyers (a reservation, a give-back, a restock, a
/// repair) moves the version on, and a load (warm-up, rebuild) starts it
/// past every version the promo had before, even one a lost cache took
/// with it: two equal levels mean nothing touched the ledger in between,
/// where two equal stocks may hide a sale and a give-back (ABA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerLevel {
    pub stock: i64,
    pub version: u64,
}

/// The promo stock ledger. Every method is one atomic step (one Lua script
/// in Redis, one critical section in memory).
#[async_trait]
pub trait StockLedger: Send + Sync {
    /// Loads a promo's stock and per-user limit with no buyers, no
    /// reservations and no sold-out flag, unless a sale of it is going: a
    /// buyer or a reservation recorded (a second publish must not reset a
    /// running sale). A ledger loaded earlier that nobody bought from — a
    /// publish that failed after its warm-up — is loaded afresh. True when
    /// loaded now.
    async fn warm(&self, promo: PromoId, stock: i64, per_user_limit: i64) -> CacheResult<bool>;
    /// Tries each reservation in order, each atomically: stock ≥ amount and
    /// the user's units + amount ≤ the limit, then decrement, record the
    /// buyer and the reservation, and set the sold-out flag at zero. One
    /// round trip for the whole slice; the outcomes are in the same order.
    /// Idempotent per id: an id the ledger already holds — a rebuild loaded
    /// it from its `init` journal row before the batch reserved it — is
    /// answered `Reserved` and not taken a second time.
    async fn reserve(&self, batch: &[Reservation]) -> CacheResult<Vec<ReserveOutcome>>;
    /// The exact inverse of a reservation (stock back, buyer's units back,
    /// sold-out flag cleared). Idempotent: the units given back the first
    /// time, 0 after (and for an id the ledger does not hold).
    async fn release(&self, promo: PromoId, id: StockLogId) -> CacheResult<i64>;
    /// Up to `max` ids of the reservations the ledger holds (in no
    /// particular order; never blocking the ledger for the whole list): in
    /// flight, committed and not forgotten yet, or rolled back and not
    /// given back (the reconciler's sweep holds each against its journal
    /// row), and whether they are all of them.
    async fn reservations(&self, promo: PromoId, max: usize) -> CacheResult<ReservationPage>;
    /// Drops the records of committed reservations: their units stay sold
    /// and their buyers recorded; a committed order is never given back,
    /// so its record would only cost every later sweep a look.
    async fn forget_committed(&self, promo: PromoId, ids: &[StockLogId]) -> CacheResult<()>;
    /// Gives back the units of a cancelled order (the buyer stays recorded:
    /// one order per user per promo). Idempotent per id: true the first time.
    async fn restock(&self, promo: PromoId, id: StockLogId, amount: i64) -> CacheResult<bool>;
    /// Of `ids` (cancelled orders), those the ledger was never given back
    /// ([`StockLedger::restock`] never ran for them: it failed when the
    /// cache did, or the instance died first). None when the promo is not
    /// loaded: a rebuild loads every cancelled order as given back.
    async fn not_restocked(
        &self,
        promo: PromoId,
        ids: &[StockLogId],
    ) -> CacheResult<Vec<StockLogId>>;
    /// How many cancelled orders the ledger was given back (each once, by
    /// [`StockLedger::restock`] or a rebuild; nothing else is in that
    /// count). None when the promo is not loaded.
    async fn restocked_count(&self, promo: PromoId) -> CacheResult<Option<u64>>;
    /// Loads a promo's ledger from what the DB knows (`journal`): stock
    /// `journal.ledger_stock()`, its buyers, its undecided reservations
    /// (so a later rollback gives them back) and the cancelled ones (never
    /// restocked twice). Only when the promo is not loaded (its stock key
    /// absent): true when loaded now.
    async fn rebuild(
        &self,
        promo: PromoId,
        per_user_limit: i64,
        journal: &SaleJournal,
    ) -> CacheResult<bool>;
    /// Drift repair: adds `delta` to the promo's stock when the ledger is
    /// still at `seen` — nothing changed it since it was read, not merely
    /// the same stock (sets or clears the sold-out flag to match; the
    /// stock never goes below zero). False when the ledger changed
    /// meanwhile or the promo is not loaded.
    async fn adjust(&self, promo: PromoId, seen: LedgerLevel, delta: i64) -> CacheResult<bool>;
    /// The promo's stock, `None` when it is not warmed.
    async fn stock(&self, promo: PromoId) -> CacheResult<Option<i64>>;
    /// The promo's stock and version, read together; `None` when it is not
    /// warmed.
    async fn level(&self, promo: PromoId) -> CacheResult<Option<LedgerLevel>>;
    /// Whether the sold-out flag is set.
    async fn sold_out(&self, promo: PromoId) -> CacheResult<bool>;
    async fn ping(&self) -> CacheResult<()>;
}

/// Short-lived key/value state with TTLs. Keys are namespaced by callers
/// (`session:`, `token:`, `captcha:`, `otp:`, `gate:`).
#[async_trait]
pub trait KvStore: Send + Sync {
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<()>;
    async fn get(&self, key: &str) -> CacheResult<Option<String>>;
    /// Reads and deletes in one step: a value is taken at most once.
    async fn take(&self, key: &str) -> CacheResult<Option<String>>;
    async fn delete(&self, key: &str) -> CacheResult<()>;
    /// Sets `key` only when it is absent (a lease): true when set now.
    async fn set_if_absent(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<bool>;
    /// Deletes `key` only while it holds `value` — a lease given back by its
    /// holder alone, never one that expired and was taken by another. True
    /// when deleted now.
    async fn delete_if_equals(&self, key: &str, value: &str) -> CacheResult<bool>;
    /// Keeps a lease taken with [`set_if_absent`](Self::set_if_absent): while
    /// `key` holds `value` its TTL is set to `ttl` ([`LeaseRenewal::Renewed`]);
    /// a missing key (expired, or the store restarted empty) is taken again
    /// ([`LeaseRenewal::Retaken`]); a key holding another value is left alone
    /// ([`LeaseRenewal::Lost`]). One step.
    async fn renew_lease(&self, key: &str, value: &str, ttl: Duration)
        -> CacheResult<LeaseRenewal>;
    /// Sets an integer counter (a promo's gate) with a TTL.
    async fn set_counter(&self, key: &str, value: i64, ttl: Duration) -> CacheResult<()>;
    /// Sets an integer counter only when it is absent (a gate lost on its
    /// own): true when set now.
    async fn set_counter_if_absent(
        &self,
        key: &str,
        value: i64,
        ttl: Duration,
    ) -> CacheResult<bool>;
    /// Adds `delta` to a counter that exists, keeping its TTL; a missing
    /// (or expired) one stays missing. True when added.
    async fn add_to_counter(&self, key: &str, delta: i64) -> CacheResult<bool>;
    /// Sets `key` to `value` for `ttl` under a permit of the counter `gate`,
    /// at most one permit per `holder` — one step, so a permit is never
    /// spent without its record, nor twice for one holder. The `holder` key
    /// names the holder's record: a holder that exists already holds a
    /// permit, and its record is replaced — the one it named deleted, `key`
    /// set, no permit taken ([`Permit::Held`]; one live record per holder).
    /// Otherwise one permit is taken and the holder key set, naming `key`,
    /// for `holder_ttl` ([`Permit::Granted`]); with the counter at zero
    /// nothing is set ([`Permit::Refused`]), nor with no counter
    /// ([`Permit::Missing`]).
    async fn take_permit_and_set(
        &self,
        gate: &str,
        holder: &str,
        holder_ttl: Duration,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> CacheResult<Permit>;
    /// Sets `key` to `value` for `ttl` only while `holder` (a holder key of
    /// [`take_permit_and_set`](Self::take_permit_and_set)) names `key` as
    /// its live record: a record given back is never one its holder has
    /// since replaced. True when set.
    async fn set_if_held(
        &self,
        holder: &str,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> CacheResult<bool>;
    /// Adds each delta to its field of a hash of counters (created at 0),
    /// and (re)sets the hash's TTL. One step.
    async fn hash_add(&self, key: &str, deltas: &[(&str, i64)], ttl: Duration) -> CacheResult<()>;
    /// Sets one field of a hash and (re)sets the hash's TTL.
    async fn hash_set(&self, key: &str, field: &str, value: &str, ttl: Duration)
        -> CacheResult<()>;
    /// Removes one field of a hash.
    async fn hash_delete(&self, key: &str, field: &str) -> CacheResult<()>;
    /// Every field of a hash (empty when missing), in no particular order.
    async fn hash_get_all(&self, key: &str) -> CacheResult<Vec<(String, String)>>;
    async fn ping(&self) -> CacheResult<()>;
}

/// What [`KvStore::take_permit_and_set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// A permit taken now; the record and the holder set.
    Granted,
    /// The holder had one already: the record set, no permit taken.
    Held,
    /// No permit left: nothing set.
    Refused,
    /// No counter (lost with the cache, or on its own): nothing set.
    Missing,
}

/// What [`KvStore::renew_lease`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRenewal {
    /// Still ours; its TTL set again.
    Renewed,
    /// It was gone, and is ours again.
    Retaken,
    /// Another holder has it; nothing changed.
    Lost,
}

/// A named limit: at most `limit` events per `period` for one key, refilled
/// smoothly (a token bucket of `limit` tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRule {
    pub name: &'static str,
    pub limit: u32,
    pub period: Duration,
}

/// Rate limits. The memory adapter limits one process; the Redis adapter
/// holds across every instance.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Takes one event for `key` under `rule`: true when allowed.
    async fn check(&self, rule: &RateRule, key: &str) -> CacheResult<bool>;
}
