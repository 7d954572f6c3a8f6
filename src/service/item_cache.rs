//! Item detail through three tiers, cache-aside: a process-local cache
//! (`moka`, bounded by entries and TTL) → the shared cache (the kv port:
//! Redis in a cluster) → the DB. A miss loads from the tier below and fills
//! back; concurrent misses of one key on one instance share one load
//! (single flight); unknown ids are remembered too (negative entries), so
//! random ids cannot hammer the DB.
//!
//! A write goes: DB update → delete the shared entry → drop this instance's
//! copy → broadcast (every instance drops its copy) → after
//! `item_cache_double_delete_ms`, delete the shared entry again and
//! broadcast again. The second delete kills a stale row that a reader, who
//! loaded it from the DB before the write, put back after the first delete;
//! the second broadcast drops any local copy taken from it. Hence the stated
//! bound: an update is visible on every instance within
//! `double_delete + local TTL` even if broadcasts are lost (see
//! `Config::item_staleness_bound_ms`).
//!
//! A load that started before an invalidation of its key is never served
//! after it: each entry carries the epoch at which its load began, and each
//! invalidation records the epoch it happened at. Nor does it fill the
//! shared tier then, or when its DB read began more than half the
//! double-delete delay ago: a fill landing after a write's second delete
//! would stay until the shared TTL. A delete that fails is redone through
//! the bus (`SharedItemStale`, redelivered until it succeeds).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use moka::future::Cache;
use serde::{Deserialize, Serialize};
use tokio_util::task::TaskTracker;

use super::{Context, ServiceError, ServiceResult};
use crate::cache::KvStore;
use crate::domain::{Item, ItemId, OrderStrategy, Promo, PromoBaseline, PromoId};
use crate::mq::{Event, MessageBus};

/// What one item's detail is built from: the row and its promos (the
/// featured one is chosen at read time, by the clock). `item: None` is a
/// negative entry.
#[derive(Debug, Clone)]
pub struct ItemSnapshot {
    pub item: Option<Item>,
    pub promos: Vec<Promo>,
}

/// What this instance's item cache did since start-up (also in `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemCacheStats {
    pub local_hits: u64,
    pub local_misses: u64,
    pub shared_hits: u64,
    pub shared_misses: u64,
    pub db_loads: u64,
    pub invalidations: u64,
}

#[derive(Default)]
struct Counters {
    local_hits: AtomicU64,
    local_misses: AtomicU64,
    shared_hits: AtomicU64,
    shared_misses: AtomicU64,
    db_loads: AtomicU64,
    invalidations: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Entry {
    snapshot: ItemSnapshot,
    /// The epoch at which the load that made this entry began.
    epoch: u64,
}

pub struct ItemCache {
    cx: Context,
    local: Cache<ItemId, Arc<Entry>>,
    /// The epoch of the last invalidation of each recently invalidated item
    /// (kept a little longer than a local entry lives).
    invalidated: moka::sync::Cache<ItemId, u64>,
    epoch: AtomicU64,
    counters: Counters,
    meters: Meters,
}

/// The shared cache's key of an item.
pub fn shared_key(id: ItemId) -> String {
    format!("item:{id}")
}

/// The cache's Prometheus counters, registered once (a labelled look-up
/// per request would cost more than the local hit it counts).
struct Meters {
    local_hit: metrics::Counter,
    local_miss: metrics::Counter,
    shared_hit: metrics::Counter,
    shared_negative: metrics::Counter,
    shared_miss: metrics::Counter,
    shared_error: metrics::Counter,
}

impl Meters {
    fn new() -> Self {
        let c = |tier: &'static str, result: &'static str| metrics::counter!("seckill_item_cache_requests_total", "tier" => tier, "result" => result);
        Meters {
            local_hit: c("local", "hit"),
            local_miss: c("local", "miss"),
            shared_hit: c("shared", "hit"),
            shared_negative: c("shared", "negative"),
            shared_miss: c("shared", "miss"),
            shared_error: c("shared", "error"),
        }
    }
}

impl ItemCache {
    pub fn new(cx: Context) -> Self {
        let ttl = Duration::from_millis(cx.config.item_cache_local_ttl_ms.max(1));
        let local = Cache::builder()
            .max_capacity(cx.config.item_cache_capacity.max(1))
            .time_to_live(ttl)
            .build();
        // Kept past any load that may still consult it: one that fills the
        // shared tier ends within half the double-delete delay.
        let invalidated = moka::sync::Cache::builder()
            .max_capacity(cx.config.item_cache_capacity.max(1))
            .time_to_live(
                ttl * 2
                    + Duration::from_secs(1)
                    + Duration::from_millis(cx.config.item_cache_double_delete_ms),
            )
            .build();
        ItemCache {
            cx,
            local,
            invalidated,
            epoch: AtomicU64::new(1),
            counters: Counters::default(),
            meters: Meters::new(),
        }
    }

    pub fn stats(&self) -> ItemCacheStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ItemCacheStats {
            local_hits: get(&c.local_hits),
            local_misses: get(&c.local_misses),
            shared_hits: get(&c.shared_hits),
            shared_misses: get(&c.shared_misses),
            db_loads: get(&c.db_loads),
            invalidations: get(&c.invalidations),
        }
    }

    /// An item's snapshot through the tiers. `NOT_FOUND` for an unknown id.
    pub async fn get(&self, id: ItemId) -> ServiceResult<ItemSnapshot> {
        // Two tries: the second only when the first returned an entry whose
        // load raced an invalidation.
        for _ in 0..2 {
            let entry = match self.local.get(&id).await {
                Some(e) => {
                    self.meters.local_hit.increment(1);
                    bump(&self.counters.local_hits);
                    e
                }
                None => {
                    self.meters.local_miss.increment(1);
                    bump(&self.counters.local_misses);
                    let start = self.epoch.load(Ordering::Acquire);
                    self.local
                        .try_get_with(id, self.load(id, start))
                        .await
                        .map_err(|e| match Arc::try_unwrap(e) {
                            Ok(e) => e,
                            Err(_) => ServiceError::unavailable("item store"),
                        })?
                }
            };
            if self.invalidated_since(id, entry.epoch) {
                // Drop it only if it is still the cached entry: another
                // request may already have put a fresh one in its place.
                if let Some(current) = self.local.get(&id).await {
                    if Arc::ptr_eq(&current, &entry) {
                        self.local.invalidate(&id).await;
                    }
                }
                continue;
            }
            return found(entry.snapshot.clone());
        }
        // Invalidated twice while loading: read through, cache nothing.
        let snapshot = self.load_db(id).await?;
        found(snapshot)
    }

    /// Shared tier, then the DB; fills the shared tier back from the DB.
    async fn load(&self, id: ItemId, start: u64) -> ServiceResult<Arc<Entry>> {
        let kv = &self.cx.ports.kv;
        let key = shared_key(id);
        let mut shared_up = true;
        match kv.get(&key).await {
            Ok(Some(json)) => match serde_json::from_str::<Stored>(&json) {
                Ok(s) => {
                    match s.item {
                        Some(_) => self.meters.shared_hit.increment(1),
                        None => self.meters.shared_negative.increment(1),
                    }
                    bump(&self.counters.shared_hits);
                    return Ok(Arc::new(Entry {
                        snapshot: s.into(),
                        epoch: start,
                    }));
                }
                Err(e) => {
                    tracing::warn!(item_id = %id, error = %e, "unreadable shared item entry; reloading");
                }
            },
            Ok(None) => {
                self.meters.shared_miss.increment(1);
                bump(&self.counters.shared_misses);
            }
            Err(e) => {
                shared_up = false;
                self.meters.shared_error.increment(1);
                tracing::warn!(item_id = %id, error = %e, "shared cache unavailable; reading the DB");
            }
        }
        let read_at = Instant::now();
        let snapshot = self.load_db(id).await?;
        if shared_up {
            let ttl = if snapshot.item.is_some() {
                Duration::from_secs(self.cx.config.item_cache_shared_ttl_secs)
            } else {
                Duration::from_millis(self.cx.config.item_cache_negative_ttl_ms)
            };
            let json = serde_json::to_string(&Stored::from(&snapshot))
                .map_err(|e| ServiceError::Internal(Box::new(e)))?;
            self.fill_back(id, &json, ttl, read_at, start).await;
        }
        Ok(Arc::new(Entry {
            snapshot,
            epoch: start,
        }))
    }

    async fn load_db(&self, id: ItemId) -> ServiceResult<ItemSnapshot> {
        metrics::counter!("seckill_item_cache_db_loads_total").increment(1);
        bump(&self.counters.db_loads);
        let store = &self.cx.ports.store;
        let item = store.item(id).await?;
        let promos = match item {
            Some(_) => store.promos_of_item(id).await?,
            None => Vec::new(),
        };
        Ok(ItemSnapshot { item, promos })
    }

    /// The current epoch: a load that begins now carries it.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether the item was invalidated here after `epoch`.
    fn invalidated_since(&self, id: ItemId, epoch: u64) -> bool {
        self.invalidated.get(&id).is_some_and(|at| epoch < at)
    }

    /// A load's fill-back: puts what it read from the DB (from `read_at`, in
    /// a load begun at `epoch`) into the shared tier, unless the fill could
    /// outlive a write's second delete — the item was invalidated here
    /// since (this instance's write or a broadcast one), or the read began
    /// half the double-delete delay ago or more (a write committed after the
    /// read may have done its second delete by the time the fill lands).
    /// A fill that itself took that long is deleted again. Returns whether
    /// the entry stays filled.
    pub async fn fill_back(
        &self,
        id: ItemId,
        json: &str,
        ttl: Duration,
        read_at: Instant,
        epoch: u64,
    ) -> bool {
        let window = Duration::from_millis(self.cx.config.item_cache_double_delete_ms) / 2;
        let late = || read_at.elapsed() >= window || self.invalidated_since(id, epoch);
        if late() {
            metrics::counter!("seckill_item_cache_fills_skipped_total").increment(1);
            return false;
        }
        self.fill_shared(id, json, ttl).await;
        if late() {
            metrics::counter!("seckill_item_cache_fills_skipped_total").increment(1);
            self.delete_shared(id).await;
            return false;
        }
        true
    }

    /// Puts a serialized snapshot into the shared tier, unconditionally
    /// (public so that the race the double delete exists for can be
    /// reproduced step by step).
    pub async fn fill_shared(&self, id: ItemId, json: &str, ttl: Duration) {
        if let Err(e) = self.cx.ports.kv.set(&shared_key(id), json, ttl).await {
            tracing::warn!(item_id = %id, error = %e, "shared item entry not filled");
        }
    }

    /// The serialized form of an item's DB snapshot, as a load would put it
    /// into the shared tier.
    pub async fn snapshot_json(&self, id: ItemId) -> ServiceResult<String> {
        let s = self.load_db(id).await?;
        serde_json::to_string(&Stored::from(&s)).map_err(|e| ServiceError::Internal(Box::new(e)))
    }

    /// Deletes the shared entry (after a DB write); a failed delete is
    /// redone through the bus.
    pub async fn delete_shared(&self, id: ItemId) {
        delete_shared_entry(&*self.cx.ports.kv, &*self.cx.ports.bus, id).await;
    }

    /// Drops this instance's copy; loads that began before now are not
    /// served afterwards.
    pub async fn forget_local(&self, id: ItemId) {
        let at = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.invalidated.insert(id, at);
        self.local.invalidate(&id).await;
        bump(&self.counters.invalidations);
        metrics::counter!("seckill_item_cache_invalidations_total", "tier" => "local").increment(1);
    }
}

/// After a sale changed an item's DB stock or sales (a deduction, a
/// cancellation) rather than an admin write: the shared entry deleted now
/// and again after `second_delete_after` (`item_cache_double_delete_ms`),
/// as a write's — a reader that read the row before the change and fills
/// it back after the first delete is caught by the second (see
/// [`ItemCache::fill_back`]). Local copies are left to their TTL
/// (`item_cache_local_ttl_ms`): no broadcast an order.
pub async fn sale_changed_row(
    kv: &Arc<dyn KvStore>,
    bus: &Arc<dyn MessageBus>,
    tasks: &TaskTracker,
    id: ItemId,
    second_delete_after: Duration,
) {
    delete_shared_entry(&**kv, &**bus, id).await;
    delete_shared_later(kv, bus, tasks, id, second_delete_after, async {});
}

/// The second of a change's two deletes of an item's shared entry, after
/// `after`, then `then` (an admin write broadcasts the change again). A
/// task of `tasks` (the context's background work): a shutdown waits for
/// it.
pub fn delete_shared_later(
    kv: &Arc<dyn KvStore>,
    bus: &Arc<dyn MessageBus>,
    tasks: &TaskTracker,
    id: ItemId,
    after: Duration,
    then: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (kv, bus) = (kv.clone(), bus.clone());
    tasks.spawn(async move {
        tokio::time::sleep(after).await;
        delete_shared_entry(&*kv, &*bus, id).await;
        then.await;
    });
}

/// Deletes an item's shared cache entry. When the delete fails, the entry
/// may hold an old row until its TTL: a `SharedItemStale` message asks for
/// the delete again (its consumer's failures are redelivered until one
/// succeeds). Only with the bus down as well is the entry left to its TTL.
pub async fn delete_shared_entry(kv: &dyn KvStore, bus: &dyn MessageBus, id: ItemId) {
    let Err(e) = kv.delete(&shared_key(id)).await else {
        metrics::counter!("seckill_item_cache_invalidations_total", "tier" => "shared")
            .increment(1);
        return;
    };
    match bus
        .publish(Event::SharedItemStale { v: 1, item_id: id })
        .await
    {
        Ok(()) => tracing::warn!(
            item_id = %id, error = %e,
            "shared item entry not deleted; the delete is redone through the bus"
        ),
        Err(bus_error) => tracing::error!(
            item_id = %id, error = %e, bus_error = %bus_error,
            "shared item entry not deleted, nor its repair queued; it expires by TTL"
        ),
    }
}

fn found(s: ItemSnapshot) -> ServiceResult<ItemSnapshot> {
    match s.item {
        Some(_) => Ok(s),
        None => Err(ServiceError::NotFound("no such item")),
    }
}

/// The shared tier's JSON form of a snapshot.
#[derive(Serialize, Deserialize)]
struct Stored {
    item: Option<StoredItem>,
    promos: Vec<StoredPromo>,
}

#[derive(Serialize, Deserialize)]
struct StoredItem {
    id: i64,
    title: String,
    price_cents: i64,
    stock: i64,
    sales: i64,
    description: String,
    image_url: String,
    updated_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize)]
struct StoredPromo {
    id: i64,
    item_id: i64,
    name: String,
    price_cents: i64,
    start_at: DateTime<Utc>,
    end_at: DateTime<Utc>,
    published: bool,
    warm: Option<(i64, i64)>,
    /// The strategy it was published under (absent in entries written
    /// before promos recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    strategy: Option<OrderStrategy>,
}

impl From<&ItemSnapshot> for Stored {
    fn from(s: &ItemSnapshot) -> Self {
        Stored {
            item: s.item.as_ref().map(|i| StoredItem {
                id: i.id.0,
                title: i.title.clone(),
                price_cents: i.price_cents,
                stock: i.stock,
                sales: i.sales,
                description: i.description.clone(),
                image_url: i.image_url.clone(),
                updated_at: i.updated_at,
            }),
            promos: s
                .promos
                .iter()
                .map(|p| StoredPromo {
                    id: p.id.0,
                    item_id: p.item_id.0,
                    name: p.name.clone(),
                    price_cents: p.price_cents,
                    start_at: p.start_at,
                    end_at: p.end_at,
                    published: p.published,
                    warm: p.baseline.map(|b| (b.stock, b.sales)),
                    strategy: p.published_under(),
                })
                .collect(),
        }
    }
}

impl From<Stored> for ItemSnapshot {
    fn from(s: Stored) -> Self {
        ItemSnapshot {
            item: s.item.map(|i| Item {
                id: ItemId(i.id),
                title: i.title,
                price_cents: i.price_cents,
                stock: i.stock,
                sales: i.sales,
                description: i.description,
                image_url: i.image_url,
                updated_at: i.updated_at,
            }),
            promos: s
                .promos
                .into_iter()
                .map(|p| Promo {
                    id: PromoId(p.id),
                    item_id: ItemId(p.item_id),
                    name: p.name,
                    price_cents: p.price_cents,
                    start_at: p.start_at,
                    end_at: p.end_at,
                    published: p.published,
                    baseline: p.warm.map(|(stock, sales)| PromoBaseline {
                        stock,
                        sales,
                        strategy: p.strategy,
                    }),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared tier outlives a deploy: an entry an instance of the build
    /// before wrote (no `strategy`) still reads, held to the instance's
    /// strategy; and a promo's strategy survives the round trip.
    #[test]
    fn stored_promos_read_with_and_without_their_strategy() {
        let before = r#"{"item":null,"promos":[{"id":7,"item_id":3,"name":"p","price_cents":5,
            "start_at":"2026-12-06T10:00:00Z","end_at":"2026-12-06T11:00:00Z",
            "published":true,"warm":[10,2]}]}"#;
        let snapshot = ItemSnapshot::from(serde_json::from_str::<Stored>(before).unwrap());
        let baseline = snapshot.promos[0].baseline.unwrap();
        assert_eq!(
            (baseline.stock, baseline.sales, baseline.strategy),
            (10, 2, None)
        );

        let mut pinned = snapshot.clone();
        pinned.promos[0].baseline = Some(PromoBaseline {
            strategy: Some(OrderStrategy::DbLock),
            ..baseline
        });
        let json = serde_json::to_string(&Stored::from(&pinned)).unwrap();
        assert!(json.contains(r#""strategy":"db-lock""#), "{json}");
        let back = ItemSnapshot::from(serde_json::from_str::<Stored>(&json).unwrap());
        assert_eq!(back.promos, pinned.promos);
    }

    struct NoCheck;

    #[async_trait::async_trait]
    impl crate::mq::TxChecker for NoCheck {
        async fn check(&self, _: &Event) -> crate::mq::TxState {
            crate::mq::TxState::Unknown
        }
    }

    /// A reader's fill-back of the row from before a sale changed it is
    /// deleted again — also when the process shuts down meanwhile: the
    /// second delete is background work a shutdown waits for.
    #[tokio::test]
    async fn a_shutdown_waits_for_a_sales_second_delete() {
        let kv: Arc<dyn KvStore> = Arc::new(crate::cache::memory::MemoryKvStore::new());
        let bus: Arc<dyn MessageBus> = Arc::new(crate::mq::memory::MemoryBus::start(
            Arc::new(NoCheck),
            Default::default(),
        ));
        let tasks = TaskTracker::new();
        let id = ItemId(7);
        let ttl = Duration::from_secs(60);
        kv.set(&shared_key(id), "before", ttl).await.unwrap();
        sale_changed_row(&kv, &bus, &tasks, id, Duration::from_millis(200)).await;
        assert_eq!(kv.get(&shared_key(id)).await.unwrap(), None);
        kv.set(&shared_key(id), "read before the sale", ttl)
            .await
            .unwrap();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .unwrap();
        assert_eq!(kv.get(&shared_key(id)).await.unwrap(), None);
    }
}
