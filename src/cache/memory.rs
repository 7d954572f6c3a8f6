//! In-memory adapters: the ledger, key/value state and rate limits of one
//! process. Correct for a single instance only; start-up refuses them when
//! the database is shared (MySQL).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use governor::{DefaultKeyedRateLimiter, Quota};
use parking_lot::Mutex;

use super::*;

#[derive(Default)]
struct PromoLedger {
    stock: i64,
    limit: i64,
    buyers: HashMap<UserId, i64>,
    reservations: HashMap<StockLogId, (UserId, i64)>,
    restocked: HashSet<StockLogId>,
    version: u64,
}

#[derive(Default)]
struct Ledgers {
    promos: HashMap<PromoId, PromoLedger>,
    /// The last version handed out, to any promo: a promo loaded again
    /// starts past every version it had.
    last_version: u64,
}

impl Ledgers {
    /// Moves the promo's version on past every version handed out.
    fn changed(&mut self, promo: PromoId) {
        self.last_version += 1;
        let version = self.last_version;
        if let Some(p) = self.promos.get_mut(&promo) {
            p.version = version;
        }
    }

    /// Loads a promo afresh, its version past every earlier one.
    fn load(&mut self, promo: PromoId, ledger: PromoLedger) {
        self.promos.insert(promo, ledger);
        self.changed(promo);
    }
}

/// The stock ledger in one mutex: each call is one critical section.
#[derive(Default)]
pub struct MemoryStockLedger {
    ledgers: Mutex<Ledgers>,
    fail_give_backs: AtomicBool,
}

impl MemoryStockLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fault injection: while true every give-back (a reservation's,
    /// [`StockLedger::release`]; a cancelled order's, [`StockLedger::restock`])
    /// fails as if the cache were unreachable, and changes nothing.
    pub fn fail_give_backs(&self, on: bool) {
        self.fail_give_backs.store(on, Ordering::SeqCst);
    }

    fn give_back_fault(&self) -> CacheResult<()> {
        if self.fail_give_backs.load(Ordering::SeqCst) {
            return Err(CacheError {
                context: "ledger give-back failed (fault injection)",
                source: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl StockLedger for MemoryStockLedger {
    async fn warm(&self, promo: PromoId, stock: i64, per_user_limit: i64) -> CacheResult<bool> {
        let mut l = self.ledgers.lock();
        if l.promos
            .get(&promo)
            .is_some_and(|p| !p.buyers.is_empty() || !p.reservations.is_empty())
        {
            return Ok(false);
        }
        l.load(
            promo,
            PromoLedger {
                stock,
                limit: per_user_limit,
                ..PromoLedger::default()
            },
        );
        Ok(true)
    }

    async fn reserve(&self, batch: &[Reservation]) -> CacheResult<Vec<ReserveOutcome>> {
        let mut l = self.ledgers.lock();
        let mut changed = Vec::new();
        let out = batch
            .iter()
            .map(|r| {
                let Some(p) = l.promos.get_mut(&r.promo) else {
                    return ReserveOutcome::NotWarmed;
                };
                if p.reservations.contains_key(&r.id) {
                    return ReserveOutcome::Reserved { remaining: p.stock };
                }
                if p.buyers.get(&r.user).is_some_and(|&units| units > 0) {
                    return ReserveOutcome::AlreadyBought;
                }
                if r.amount > p.limit {
                    return ReserveOutcome::OverLimit;
                }
                if p.stock < r.amount {
                    return ReserveOutcome::SoldOut;
                }
                p.stock -= r.amount;
                *p.buyers.entry(r.user).or_default() += r.amount;
                p.reservations.insert(r.id, (r.user, r.amount));
                changed.push(r.promo);
                ReserveOutcome::Reserved { remaining: p.stock }
            })
            .collect();
        changed.dedup();
        for promo in changed {
            l.changed(promo);
        }
        Ok(out)
    }

    async fn release(&self, promo: PromoId, id: StockLogId) -> CacheResult<i64> {
        self.give_back_fault()?;
        let mut l = self.ledgers.lock();
        let Some(p) = l.promos.get_mut(&promo) else {
            return Ok(0);
        };
        let Some((user, amount)) = p.reservations.remove(&id) else {
            return Ok(0);
        };
        p.stock += amount;
        if let Some(units) = p.buyers.get_mut(&user) {
            *units -= amount;
            if *units <= 0 {
                p.buyers.remove(&user);
            }
        }
        l.changed(promo);
        Ok(amount)
    }

    async fn reservations(&self, promo: PromoId, max: usize) -> CacheResult<ReservationPage> {
        let l = self.ledgers.lock();
        Ok(match l.promos.get(&promo) {
            Some(p) => {
                // In id order, as a look at the same records gives them
                // every time (a map's own order would differ per run).
                let mut ids: Vec<StockLogId> = p.reservations.keys().copied().collect();
                ids.sort_unstable();
                ids.truncate(max);
                ReservationPage {
                    ids,
                    complete: p.reservations.len() <= max,
                }
            }
            None => ReservationPage {
                ids: Vec::new(),
                complete: true,
            },
        })
    }

    async fn forget_committed(&self, promo: PromoId, ids: &[StockLogId]) -> CacheResult<()> {
        if let Some(p) = self.ledgers.lock().promos.get_mut(&promo) {
            for id in ids {
                p.reservations.remove(id);
            }
        }
        Ok(())
    }

    async fn restock(&self, promo: PromoId, id: StockLogId, amount: i64) -> CacheResult<bool> {
        self.give_back_fault()?;
        let mut l = self.ledgers.lock();
        let Some(p) = l.promos.get_mut(&promo) else {
            return Ok(false);
        };
        if !p.restocked.insert(id) {
            return Ok(false);
        }
        p.stock += amount;
        l.changed(promo);
        Ok(true)
    }

    async fn restocked_count(&self, promo: PromoId) -> CacheResult<Option<u64>> {
        let l = self.ledgers.lock();
        Ok(l.promos
            .get(&promo)
            .map(|p| u64::try_from(p.restocked.len()).unwrap_or(u64::MAX)))
    }

    async fn not_restocked(
        &self,
        promo: PromoId,
        ids: &[StockLogId],
    ) -> CacheResult<Vec<StockLogId>> {
        let l = self.ledgers.lock();
        Ok(l.promos
            .get(&promo)
            .map(|p| {
                ids.iter()
                    .filter(|id| !p.restocked.contains(id))
                    .copied()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn rebuild(
        &self,
        promo: PromoId,
        per_user_limit: i64,
        journal: &SaleJournal,
    ) -> CacheResult<bool> {
        let mut l = self.ledgers.lock();
        if l.promos.contains_key(&promo) {
            return Ok(false);
        }
        l.load(
            promo,
            PromoLedger {
                stock: journal.ledger_stock(),
                limit: per_user_limit,
                buyers: journal.buyers.iter().copied().collect(),
                reservations: journal
                    .open
                    .iter()
                    .map(|&(id, user, amount)| (id, (user, amount)))
                    .collect(),
                restocked: journal.restocked.iter().copied().collect(),
                version: 0,
            },
        );
        Ok(true)
    }

    async fn adjust(&self, promo: PromoId, seen: LedgerLevel, delta: i64) -> CacheResult<bool> {
        let mut l = self.ledgers.lock();
        match l.promos.get_mut(&promo) {
            Some(p) if p.stock == seen.stock && p.version == seen.version => {
                p.stock = (p.stock + delta).max(0);
                l.changed(promo);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn stock(&self, promo: PromoId) -> CacheResult<Option<i64>> {
        Ok(self.ledgers.lock().promos.get(&promo).map(|p| p.stock))
    }

    async fn level(&self, promo: PromoId) -> CacheResult<Option<LedgerLevel>> {
        Ok(self.ledgers.lock().promos.get(&promo).map(|p| LedgerLevel {
            stock: p.stock,
            version: p.version,
        }))
    }

    async fn sold_out(&self, promo: PromoId) -> CacheResult<bool> {
        Ok(self
            .ledgers
            .lock()
            .promos
            .get(&promo)
            .is_some_and(|p| p.stock <= 0))
    }

    async fn ping(&self) -> CacheResult<()> {
        Ok(())
    }
}

enum Value {
    Text(String),
    Counter(i64),
    Hash(HashMap<String, String>),
}

/// Key/value state with lazy expiry and a periodic sweep, so expired keys
/// never pile up.
pub struct MemoryKvStore {
    map: Mutex<HashMap<String, (Value, Instant)>>,
    writes_since_sweep: Mutex<u32>,
    fail_deletes: AtomicBool,
    fail_renewals: AtomicBool,
}

impl Default for MemoryKvStore {
    fn default() -> Self {
        Self::new()
    }
}

const SWEEP_EVERY: u32 = 4096;

impl MemoryKvStore {
    pub fn new() -> Self {
        MemoryKvStore {
            map: Mutex::new(HashMap::new()),
            writes_since_sweep: Mutex::new(0),
            fail_deletes: AtomicBool::new(false),
            fail_renewals: AtomicBool::new(false),
        }
    }

    /// Fault injection: while true every [`KvStore::renew_lease`] fails as
    /// if the store were unreachable, and renews nothing.
    pub fn fail_renewals(&self, on: bool) {
        self.fail_renewals.store(on, Ordering::SeqCst);
    }

    /// Fault injection: while true every [`KvStore::delete`] fails as if the
    /// cache were unreachable, and deletes nothing.
    pub fn fail_deletes(&self, on: bool) {
        self.fail_deletes.store(on, Ordering::SeqCst);
    }

    /// Changes the hash under `key` (a fresh one when missing, expired or
    /// not a hash) in one critical section, and sets its TTL.
    fn update_hash(&self, key: &str, ttl: Duration, f: impl FnOnce(&mut HashMap<String, String>)) {
        let now = Instant::now();
        let mut map = self.map.lock();
        let entry = map
            .entry(key.to_owned())
            .or_insert_with(|| (Value::Hash(HashMap::new()), now));
        if !matches!(entry, (Value::Hash(_), exp) if *exp > now) {
            *entry = (Value::Hash(HashMap::new()), now);
        }
        if let (Value::Hash(h), exp) = entry {
            f(h);
            *exp = now + ttl;
        }
    }

    /// A copy of the hash under `key` (empty when missing, expired or not a
    /// hash).
    fn live_hash(&self, key: &str) -> HashMap<String, String> {
        match self.map.lock().get(key) {
            Some((Value::Hash(h), exp)) if *exp > Instant::now() => h.clone(),
            _ => HashMap::new(),
        }
    }

    fn insert(&self, key: &str, value: Value, ttl: Duration) {
        let mut map = self.map.lock();
        self.insert_locked(&mut map, key, value, ttl);
    }

    /// Inserts under the map's lock the caller holds, sweeping expired keys
    /// every `SWEEP_EVERY` writes.
    fn insert_locked(
        &self,
        map: &mut HashMap<String, (Value, Instant)>,
        key: &str,
        value: Value,
        ttl: Duration,
    ) {
        let now = Instant::now();
        map.insert(key.to_owned(), (value, now + ttl));
        let mut w = self.writes_since_sweep.lock();
        *w += 1;
        if *w >= SWEEP_EVERY {
            *w = 0;
            map.retain(|_, (_, exp)| *exp > now);
        }
    }
}

#[async_trait]
impl KvStore for MemoryKvStore {
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<()> {
        self.insert(key, Value::Text(value.to_owned()), ttl);
        Ok(())
    }

    async fn get(&self, key: &str) -> CacheResult<Option<String>> {
        let map = self.map.lock();
        Ok(match map.get(key) {
            Some((Value::Text(v), exp)) if *exp > Instant::now() => Some(v.clone()),
            Some((Value::Counter(n), exp)) if *exp > Instant::now() => Some(n.to_string()),
            _ => None,
        })
    }

    async fn take(&self, key: &str) -> CacheResult<Option<String>> {
        let mut map = self.map.lock();
        Ok(match map.remove(key) {
            Some((Value::Text(v), exp)) if exp > Instant::now() => Some(v),
            Some((Value::Counter(n), exp)) if exp > Instant::now() => Some(n.to_string()),
            _ => None,
        })
    }

    async fn delete(&self, key: &str) -> CacheResult<()> {
        if self.fail_deletes.load(Ordering::SeqCst) {
            return Err(CacheError {
                context: "delete failed (fault injection)",
                source: None,
            });
        }
        self.map.lock().remove(key);
        Ok(())
    }

    async fn set_if_absent(&self, key: &str, value: &str, ttl: Duration) -> CacheResult<bool> {
        let now = Instant::now();
        let mut map = self.map.lock();
        if map.get(key).is_some_and(|(_, exp)| *exp > now) {
            return Ok(false);
        }
        map.insert(key.to_owned(), (Value::Text(value.to_owned()), now + ttl));
        Ok(true)
    }

    async fn delete_if_equals(&self, key: &str, value: &str) -> CacheResult<bool> {
        let mut map = self.map.lock();
        let held = matches!(map.get(key),
            Some((Value::Text(v), exp)) if v == value && *exp > Instant::now());
        if held {
            map.remove(key);
        }
        Ok(held)
    }

    async fn renew_lease(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> CacheResult<LeaseRenewal> {
        if self.fail_renewals.load(Ordering::SeqCst) {
            return Err(CacheError {
                context: "lease renewal failed (fault injection)",
                source: None,
            });
        }
        let now = Instant::now();
        let mut map = self.map.lock();
        let renewal = match map.get(key) {
            Some((Value::Text(v), exp)) if *exp > now && v == value => LeaseRenewal::Renewed,
            Some((_, exp)) if *exp > now => return Ok(LeaseRenewal::Lost),
            _ => LeaseRenewal::Retaken,
        };
        map.insert(key.to_owned(), (Value::Text(value.to_owned()), now + ttl));
        Ok(renewal)
    }

    async fn set_counter(&self, key: &str, value: i64, ttl: Duration) -> CacheResult<()> {
        self.insert(key, Value::Counter(value), ttl);
        Ok(())
    }

    async fn set_counter_if_absent(
        &self,
        key: &str,
        value: i64,
        ttl: Duration,
    ) -> CacheResult<bool> {
        let now = Instant::now();
        let mut map = self.map.lock();
        if map.get(key).is_some_and(|(_, exp)| *exp > now) {
            return Ok(false);
        }
        self.insert_locked(&mut map, key, Value::Counter(value), ttl);
        Ok(true)
    }

    async fn add_to_counter(&self, key: &str, delta: i64) -> CacheResult<bool> {
        let mut map = self.map.lock();
        match map.get_mut(key) {
            Some((Value::Counter(n), exp)) if *exp > Instant::now() => {
                *n += delta;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn take_permit_and_set(
        &self,
        gate: &str,
        holder: &str,
        holder_ttl: Duration,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> CacheResult<Permit> {
        let mut map = self.map.lock();
        let now = Instant::now();
        if let Some((Value::Text(previous), exp)) = map.get_mut(holder) {
            if *exp > now {
                // One live record per holder: the one it named goes.
                let previous = std::mem::replace(previous, key.to_owned());
                if previous != key {
                    map.remove(&previous);
                }
                self.insert_locked(&mut map, key, Value::Text(value.to_owned()), ttl);
                return Ok(Permit::Held);
            }
        }
        match map.get_mut(gate) {
            Some((Value::Counter(n), exp)) if *exp > now => {
                if *n <= 0 {
                    return Ok(Permit::Refused);
                }
                *n -= 1;
            }
            _ => return Ok(Permit::Missing),
        }
        self.insert_locked(&mut map, key, Value::Text(value.to_owned()), ttl);
        self.insert_locked(&mut map, holder, Value::Text(key.to_owned()), holder_ttl);
        Ok(Permit::Granted)
    }

    async fn set_if_held(
        &self,
        holder: &str,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> CacheResult<bool> {
        let mut map = self.map.lock();
        let held = matches!(map.get(holder), Some((Value::Text(named), exp)) if named == key && *exp > Instant::now());
        if held {
            self.insert_locked(&mut map, key, Value::Text(value.to_owned()), ttl);
        }
        Ok(held)
    }

    async fn hash_add(&self, key: &str, deltas: &[(&str, i64)], ttl: Duration) -> CacheResult<()> {
        self.update_hash(key, ttl, |h| {
            for (field, delta) in deltas {
                let n = h
                    .get(*field)
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0);
                h.insert((*field).to_owned(), (n + delta).to_string());
            }
        });
        Ok(())
    }

    async fn hash_set(
        &self,
        key: &str,
        field: &str,
        value: &str,
        ttl: Duration,
    ) -> CacheResult<()> {
        self.update_hash(key, ttl, |h| {
            h.insert(field.to_owned(), value.to_owned());
        });
        Ok(())
    }

    async fn hash_delete(&self, key: &str, field: &str) -> CacheResult<()> {
        if let Some((Value::Hash(h), _)) = self.map.lock().get_mut(key) {
            h.remove(field);
        }
        Ok(())
    }

    async fn hash_get_all(&self, key: &str) -> CacheResult<Vec<(String, String)>> {
        Ok(self.live_hash(key).into_iter().collect())
    }

    async fn ping(&self) -> CacheResult<()> {
        Ok(())
    }
}

/// Token buckets per (rule, key) with `governor`, for one process.
#[derive(Default)]
pub struct MemoryRateLimiter {
    limiters: Mutex<HashMap<&'static str, Arc<DefaultKeyedRateLimiter<String>>>>,
}

impl MemoryRateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    fn limiter(&self, rule: &RateRule) -> Arc<DefaultKeyedRateLimiter<String>> {
        let mut map = self.limiters.lock();
        map.entry(rule.name)
            .or_insert_with(|| {
                let burst = NonZeroU32::new(rule.limit.max(1)).unwrap_or(NonZeroU32::MIN);
                let per = (rule.period / burst.get()).max(Duration::from_nanos(1));
                let quota = Quota::with_period(per)
                    .unwrap_or_else(|| Quota::per_second(burst))
                    .allow_burst(burst);
                Arc::new(DefaultKeyedRateLimiter::keyed(quota))
            })
            .clone()
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(&self, rule: &RateRule, key: &str) -> CacheResult<bool> {
        let limiter = self.limiter(rule);
        let allowed = limiter.check_key(&key.to_owned()).is_ok();
        if limiter.len() > 100_000 {
            limiter.retain_recent();
        }
        Ok(allowed)
    }
}
