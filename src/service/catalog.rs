//! Items and promos: the admin's writes, the buyers' reads, publishing (the
//! stock warm-up) and a promo's live stats.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use moka::future::Cache;

use super::item_cache::{self, ItemCache};
use super::{Context, ServiceError, ServiceResult, SharedError};
use crate::domain::promo::NotOnSale;
use crate::domain::{
    Item, ItemId, ItemPatch, NewItem, NewPromo, OrderStrategy, Promo, PromoBaseline, PromoId,
    PromoState,
};
use crate::mq::{Event, MessageBus};
use crate::store::PromoTotals;
use crate::store::StoreError;

/// An item as buyers see it: the live stock (the ledger's while a published
/// promo runs) and the promo it is in, if any.
#[derive(Debug, Clone)]
pub struct ItemView {
    pub item: Item,
    pub promo: Option<Promo>,
}

/// A promo's live figures for the admin.
#[derive(Debug, Clone)]
pub struct PromoStats {
    pub promo: Promo,
    pub stock_db: i64,
    pub sales_db: i64,
    pub stock_cache: Option<i64>,
    pub totals: PromoTotals,
}

pub struct CatalogService {
    cx: Context,
    promos: Cache<PromoId, Arc<Promo>>,
    /// Ids that name no promo, as long as promos are kept: a script asking
    /// made-up ids costs one DB read per id and TTL, not one per request.
    /// A new promo drops them all (`item_changed`, on every instance).
    missing_promos: Cache<PromoId, ()>,
    /// Moved by each drop of the promo caches: a look-up that began before
    /// a promo was created does not record its id as missing after.
    promo_generation: std::sync::atomic::AtomicU64,
    items: Arc<ItemCache>,
    /// A promo's ledger stock, reused for `item_live_stock_ttl_ms`.
    live_stock: Cache<PromoId, i64>,
    /// An item's DB stock and sales during a pure-DB sale, reused for
    /// `item_live_stock_ttl_ms` as the ledger's stock is.
    live_row: Cache<ItemId, (i64, i64)>,
    /// Promos refused for their strategy, logged once each.
    refused_for_strategy: parking_lot::Mutex<std::collections::HashSet<PromoId>>,
}

/// How long a promo's gate counter outlives the promo.
const GATE_GRACE: Duration = Duration::from_secs(3600);

/// The promo an item page shows: the running or next one, else the one that
/// ended last.
fn featured(mut promos: Vec<Promo>) -> Option<Promo> {
    let now = Utc::now();
    promos.sort_by_key(|p| p.start_at);
    let live = promos
        .iter()
        .find(|p| p.state_at(now) != PromoState::Ended)
        .cloned();
    live.or_else(|| promos.into_iter().max_by_key(|p| p.end_at))
}

impl From<NotOnSale> for ServiceError {
    fn from(n: NotOnSale) -> Self {
        match n {
            NotOnSale::NotPublished => ServiceError::PromoNotPublished,
            NotOnSale::NotStarted => ServiceError::PromoNotStarted,
            NotOnSale::Ended => ServiceError::PromoEnded,
        }
    }
}

impl CatalogService {
    /// Ok when this instance may sell `promo`: its order strategy keeps the
    /// stock where the strategy the promo was published under does (see
    /// [`Promo::check_sold_by`]). Else 409 `CONFLICT` — a deployment that
    /// changed strategy while a sale was published, or instances of one
    /// deployment configured apart — with a short answer for the buyer, and
    /// a warning in the log for the operator (once per promo and process)
    /// saying why and what to do.
    pub fn check_sold_here(&self, promo: &Promo) -> ServiceResult<()> {
        let here = self.cx.config.order_strategy;
        promo.check_sold_by(here).map_err(|own| {
            if self.refused_for_strategy.lock().insert(promo.id) {
                let keeps = |s: OrderStrategy| {
                    if s.keeps_ledger() {
                        "stock reserved in the cache's ledger first"
                    } else {
                        "stock taken from the database alone"
                    }
                };
                tracing::warn!(
                    promo_id = %promo.id,
                    promo_strategy = own.as_str(),
                    instance_strategy = here.as_str(),
                    "the promo was published under {} ({}) and this instance sells with {} ({}): \
                     its tokens and orders are refused here (409), for selling them could sell \
                     its units twice; instances that run {} sell it, and the item's next sale \
                     can be published once it ends ({})",
                    own.as_str(),
                    keeps(own),
                    here.as_str(),
                    keeps(here),
                    if own.keeps_ledger() {
                        "write-behind"
                    } else {
                        "db-lock or db-optimistic"
                    },
                    promo.end_at.to_rfc3339(),
                );
            }
            ServiceError::Conflict(format!(
                "this sale is not sold by this server: it was published under the {} order \
                 strategy, and this server sells with {}",
                own.as_str(),
                here.as_str()
            ))
        })
    }

    pub fn new(cx: Context) -> Self {
        let promos = per_promo(cx.config.promo_cache_ttl_ms);
        let missing_promos = per_promo(cx.config.promo_cache_ttl_ms);
        let live_stock = per_promo(cx.config.item_live_stock_ttl_ms);
        let live_row = per_promo(cx.config.item_live_stock_ttl_ms);
        let items = Arc::new(ItemCache::new(cx.clone()));
        CatalogService {
            cx,
            promos,
            missing_promos,
            promo_generation: Default::default(),
            items,
            live_stock,
            live_row,
            refused_for_strategy: Default::default(),
        }
    }

    /// An item from the DB, or `NOT_FOUND`.
    async fn load_item(&self, id: ItemId) -> ServiceResult<Item> {
        self.cx
            .ports
            .store
            .item(id)
            .await?
            .ok_or(ServiceError::NotFound("no such item"))
    }

    /// A promo from the DB (not the cache), or `NOT_FOUND`.
    async fn load_promo(&self, id: PromoId) -> ServiceResult<Promo> {
        self.cx
            .ports
            .store
            .promo(id)
            .await?
            .ok_or(ServiceError::NotFound("no such promo"))
    }

    pub async fn create_item(&self, item: NewItem) -> ServiceResult<ItemView> {
        item.validate()?;
        let item = self.cx.ports.store.create_item(&item).await?;
        // A probe of this id before it existed may have left a negative entry.
        self.item_changed(item.id).await;
        Ok(ItemView { item, promo: None })
    }

    /// Updates an item, then tells every instance to drop cached copies.
    pub async fn update_item(&self, id: ItemId, patch: ItemPatch) -> ServiceResult<ItemView> {
        patch.validate()?;
        if patch.is_empty() {
            return Err(ServiceError::Invalid(
                "give at least one of title, price_cents, description, image_url".into(),
            ));
        }
        let (mut item, promos) = match patch.price_cents {
            // A new price must stay at or above the price of every promo of
            // the item not over yet (as a promo's creation checks); under
            // the item's lease, so a promo created meanwhile cannot slip by.
            Some(price) => {
                self.with_item_lease(id, self.update_price_leased(id, &patch, price))
                    .await?
            }
            None => (
                self.store_update_item(id, &patch).await?,
                self.cx.ports.store.promos_of_item(id).await?,
            ),
        };
        self.item_changed(id).await;
        let promo = featured(promos);
        self.live_figures(&mut item, promo.as_ref(), Row::Fresh)
            .await;
        Ok(ItemView { item, promo })
    }

    async fn update_price_leased(
        &self,
        id: ItemId,
        patch: &ItemPatch,
        price: i64,
    ) -> ServiceResult<(Item, Vec<Promo>)> {
        let now = Utc::now();
        let promos = self.cx.ports.store.promos_of_item(id).await?;
        if let Some(p) = promos
            .iter()
            .find(|p| p.price_cents > price && p.state_at(now) != PromoState::Ended)
        {
            return Err(ServiceError::Invalid(format!(
                "promo {} sells this item at {} cents until it ends: the item's price may not go below that",
                p.id, p.price_cents
            )));
        }
        Ok((self.store_update_item(id, patch).await?, promos))
    }

    async fn store_update_item(&self, id: ItemId, patch: &ItemPatch) -> ServiceResult<Item> {
        self.cx
            .ports
            .store
            .update_item(id, patch)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => ServiceError::NotFound("no such item"),
                e => e.into(),
            })
    }

    /// After a write to an item or its promos: delete the shared cache
    /// entry, drop this instance's copy, tell every instance, and delete
    /// (and tell) again after `item_cache_double_delete_ms`.
    async fn item_changed(&self, item_id: ItemId) {
        self.items.delete_shared(item_id).await;
        self.items.forget_local(item_id).await;
        self.forget_promos();
        announce(&*self.cx.ports.bus, item_id).await;
        let ports = &self.cx.ports;
        let bus = ports.bus.clone();
        item_cache::delete_shared_later(
            &ports.kv,
            &ports.bus,
            &self.cx.background,
            item_id,
            Duration::from_millis(self.cx.config.item_cache_double_delete_ms),
            async move { announce(&*bus, item_id).await },
        );
    }

    /// Shows the live stock and sales: while a published promo sold with
    /// the ledger (write-behind) runs, the ledger's stock (the DB catches up
    /// only as the consumer deducts) and the sales derived from it; with the
    /// pure-DB strategies, the DB row's (every order changes it), reused as
    /// briefly.
    /// The promo's strategy decides (the one it was published under), as in
    /// its admin stats; with no published promo, this instance's. `row`:
    /// whether `item` was just read from the DB (then it is not read again).
    async fn live_figures(&self, item: &mut Item, promo: Option<&Promo>, row: Row) {
        let here = self.cx.config.order_strategy;
        let sale = promo.filter(|p| p.published);
        if !sale.map_or(here.keeps_ledger(), |p| p.sold_with_ledger(here)) {
            if row == Row::Fresh {
                return;
            }
            if let Some((stock, sales)) = self.db_figures(item.id).await {
                item.stock = stock;
                item.sales = sales;
            }
            return;
        }
        let Some(p) = sale else {
            return;
        };
        if let Some(stock) = self.ledger_stock(p.id).await {
            item.stock = stock;
            if let Some(b) = p.baseline {
                item.sales = b.sales_at(stock);
            }
        }
    }

    /// An item's DB stock and sales, reused for `item_live_stock_ttl_ms`:
    /// a crowd on a pure-DB sale's page costs the DB a read that long, not
    /// one a request (the orders' own reads and writes are on that DB).
    async fn db_figures(&self, id: ItemId) -> Option<(i64, i64)> {
        let ask = async {
            match self.cx.ports.store.item(id).await {
                Ok(row) => row.map(|r| (r.stock, r.sales)),
                Err(e) => {
                    tracing::warn!(item_id = %id, error = %e, "live stock unavailable; showing cached figures");
                    None
                }
            }
        };
        self.reused(&self.live_row, id, ask).await
    }

    /// `ask`'s answer, reused from `cache` for `item_live_stock_ttl_ms`
    /// (asked every time when that is 0); concurrent misses share one ask.
    async fn reused<K, V>(
        &self,
        cache: &Cache<K, V>,
        key: K,
        ask: impl std::future::Future<Output = Option<V>>,
    ) -> Option<V>
    where
        K: std::hash::Hash + Eq + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        if self.cx.config.item_live_stock_ttl_ms == 0 {
            return ask.await;
        }
        cache.optionally_get_with(key, ask).await
    }

    /// A promo's ledger stock (0 at once when this instance knows it is
    /// sold out), reused for `item_live_stock_ttl_ms`.
    async fn ledger_stock(&self, promo: PromoId) -> Option<i64> {
        if self.cx.sold_out.is_set(promo) {
            return Some(0);
        }
        let ask = async {
            match self.cx.ports.ledger.stock(promo).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(promo_id = %promo, error = %e, "ledger stock unavailable; showing DB stock");
                    None
                }
            }
        };
        self.reused(&self.live_stock, promo, ask).await
    }

    /// An item as buyers see it, through the item cache, with live figures.
    pub async fn item(&self, id: ItemId) -> ServiceResult<ItemView> {
        let snapshot = self.items.get(id).await?;
        let mut item = snapshot
            .item
            .ok_or(ServiceError::NotFound("no such item"))?;
        let promo = featured(snapshot.promos);
        self.live_figures(&mut item, promo.as_ref(), Row::Cached)
            .await;
        Ok(ItemView { item, promo })
    }

    /// The item cache (for the race tests and the invalidation consumer).
    pub fn item_cache(&self) -> &ItemCache {
        &self.items
    }

    /// A page of the items, most sales first: up to `limit` from the
    /// `offset`-th on, and whether more may follow. Two DB reads whatever
    /// the page's size (the rows, then all their promos).
    pub async fn items(&self, offset: u32, limit: u32) -> ServiceResult<(Vec<ItemView>, bool)> {
        let store = &self.cx.ports.store;
        let (items, more) = one_page(store.items(offset, limit.saturating_add(1)).await?, limit);
        let ids: Vec<ItemId> = items.iter().map(|i| i.id).collect();
        let mut promos = store.promos_of_items(&ids).await?;
        let mut out = Vec::with_capacity(items.len());
        for mut item in items {
            let (mine, rest): (Vec<Promo>, Vec<Promo>) =
                promos.into_iter().partition(|p| p.item_id == item.id);
            promos = rest;
            let promo = featured(mine);
            self.live_figures(&mut item, promo.as_ref(), Row::Fresh)
                .await;
            out.push(ItemView { item, promo });
        }
        // A running sale's live figures may have moved an item past the
        // DB's order: sorted again (stable: ties keep the DB's order).
        out.sort_by_key(|v| std::cmp::Reverse(v.item.sales));
        Ok((out, more))
    }

    /// Creates a promo for an item; two promos of one item may not overlap
    /// (they would sell the same stock).
    /// Under the item's lease: two creations at once (a double click) would
    /// both pass the overlap check.
    pub async fn create_promo(&self, mut p: NewPromo) -> ServiceResult<Promo> {
        // As the store keeps them: the answer reads as the row does.
        p.start_at = crate::domain::stored_time(p.start_at);
        p.end_at = crate::domain::stored_time(p.end_at);
        let promo = self
            .with_item_lease(p.item_id, self.create_promo_leased(&p))
            .await?;
        self.item_changed(p.item_id).await;
        Ok(promo)
    }

    /// Ends a sale now (a wrong price, a sale to stop): orders and tokens
    /// are refused as after its end time (`PROMO_ENDED`); those admitted
    /// before it settle as at any end. A promo not started yet ends before
    /// it starts; one ended already is answered as it is. Under the item's
    /// lease (no publish of it runs meanwhile); every instance drops its
    /// cached copy.
    pub async fn end_promo(&self, id: PromoId) -> ServiceResult<Promo> {
        let promo = self.load_promo(id).await?;
        let ended = self
            .with_item_lease(promo.item_id, async {
                let now = Utc::now();
                self.cx
                    .ports
                    .store
                    .end_promo(id, now)
                    .await?
                    .ok_or(ServiceError::NotFound("no such promo"))
            })
            .await?;
        self.item_changed(promo.item_id).await;
        if ended.end_at != promo.end_at {
            tracing::warn!(promo_id = %id, item_id = %promo.item_id, was = %promo.end_at,
                end_at = %ended.end_at, "audit: promo ended early by the admin");
        }
        Ok(ended)
    }

    async fn create_promo_leased(&self, p: &NewPromo) -> ServiceResult<Promo> {
        // Read under the lease: no price change runs meanwhile.
        let item = self.load_item(p.item_id).await?;
        p.validate(item.price_cents, Utc::now())?;
        let others = self.cx.ports.store.promos_of_item(p.item_id).await?;
        if let Some(o) = others.iter().find(|o| o.overlaps(p.start_at, p.end_at)) {
            return Err(ServiceError::Conflict(format!(
                "the item's promo {} overlaps this time window",
                o.id
            )));
        }
        Ok(self.cx.ports.store.create_promo(p).await?)
    }

    /// A promo, through a short in-process cache (the order path reads it on
    /// every request). When its entry lapses under a crowd, one request
    /// loads it again and the others wait for that load (before, each
    /// request in the load's round trip read the DB itself).
    pub async fn promo(&self, id: PromoId) -> ServiceResult<Arc<Promo>> {
        // A hit, the crowd's case, is a plain read; `try_get_with` (one
        // load for all the readers of a missing entry) boxes its wait.
        if let Some(promo) = self.promos.get(&id).await {
            return Ok(promo);
        }
        if self.missing_promos.contains_key(&id) {
            return Err(ServiceError::NotFound("no such promo"));
        }
        self.promos
            .try_get_with(id, async {
                // Recorded by the one load (callers joining it share its
                // answer), when no promo was created since it began.
                let generation = self.promo_generation.load(Ordering::Acquire);
                let loaded = self.load_promo(id).await;
                if let Err(ServiceError::NotFound(_)) = &loaded {
                    if self.promo_generation.load(Ordering::Acquire) == generation {
                        self.missing_promos.insert(id, ()).await;
                    }
                }
                loaded.map(Arc::new)
            })
            .await
            .map_err(shared_error)
    }

    /// Drops every cached promo, and every id recorded as no promo.
    fn forget_promos(&self) {
        self.promos.invalidate_all();
        self.promo_generation.fetch_add(1, Ordering::AcqRel);
        self.missing_promos.invalidate_all();
    }

    /// Whether this instance has `id` loaded as a promo now (a sync look,
    /// no round trip).
    pub fn knows_promo(&self, id: PromoId) -> bool {
        self.promos.contains_key(&id)
    }

    /// A page of the promos, newest first: up to `limit` older than
    /// `before`, and whether older ones remain.
    pub async fn promos(
        &self,
        before: Option<PromoId>,
        limit: u32,
    ) -> ServiceResult<(Vec<Promo>, bool)> {
        let rows = self
            .cx
            .ports
            .store
            .promos(before, limit.saturating_add(1))
            .await?;
        Ok(one_page(rows, limit))
    }

    /// Publishes a promo: loads its stock into the ledger, sets its gate
    /// counter (stock × gate factor), clears sold-out flags, then marks it
    /// published. Publishing again changes nothing.
    ///
    /// The ledger is warmed from the item's DB stock, one ledger per promo:
    /// two published sales of one item would each sell that stock. So an
    /// item has one published sale at a time — a promo is refused (409)
    /// while another promo of its item is published and has not ended, or
    /// ended less than `Config::order_in_flight_bound` ago (an order
    /// admitted before the end may not have reached the DB yet), or while
    /// an earlier sale's orders are not yet deducted from the stock. The
    /// publishes of one item are serialized across instances by a lease,
    /// so two admins cannot both pass these checks at once.
    pub async fn publish(&self, id: PromoId) -> ServiceResult<Promo> {
        let promo = self.load_promo(id).await?;
        if promo.published {
            return Ok(promo);
        }
        if promo.state_at(Utc::now()) == PromoState::Ended {
            return Err(ServiceError::PromoEnded);
        }
        // Published by another caller while this one waited: done.
        let published_meanwhile = || async move {
            let now = self.load_promo(id).await?;
            Ok(now.published.then_some(now))
        };
        let holder = match self.lease_item(promo.item_id, published_meanwhile).await? {
            Ok(holder) => holder,
            Err(now) => return Ok(now),
        };
        let result = self.publish_leased(id).await;
        self.release_item(promo.item_id, &holder).await;
        result
    }

    /// Takes the item's lease, which serializes the writes that decide what
    /// its sales sell: publishes, promo creations and price changes. Another
    /// holder is waited for (its write takes milliseconds), a quarter of the
    /// request's deadline at most: a lease left by a write cut off gets a 409
    /// saying so, and a waiter keeps the time to write. Between tries,
    /// `done` may end the wait with its own answer (`Err(answer)`).
    async fn lease_item<T, F>(
        &self,
        item: ItemId,
        done: impl Fn() -> F,
    ) -> ServiceResult<Result<String, T>>
    where
        F: std::future::Future<Output = ServiceResult<Option<T>>>,
    {
        let kv = &self.cx.ports.kv;
        let lease = item_lease_key(item);
        // A write started before the admin request's deadline is waited for
        // up to the grace past it (`http::deadline`); the lease outlives
        // that, so no other write of the item starts while a store call of
        // this one may still be running.
        let c = &self.cx.config;
        let lease_ttl = Duration::from_millis(
            c.request_timeout_ms
                .saturating_add(c.request_timeout_ms.max(c.held_order_grace_ms)),
        );
        let give_up = std::time::Instant::now()
            + Duration::from_millis(self.cx.config.request_timeout_ms / 4);
        let holder = self.cx.lease_holder();
        while !kv.set_if_absent(&lease, &holder, lease_ttl).await? {
            if let Some(answer) = done().await? {
                return Ok(Err(answer));
            }
            if std::time::Instant::now() >= give_up {
                return Err(ServiceError::Conflict(
                    "another change to this item's sales (a publish, a new promo or a price) is under way; try again in a few seconds"
                        .into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Ok(holder))
    }

    /// Runs `write` under the item's lease (waiting it out), and gives the
    /// lease back whatever `write` answered.
    async fn with_item_lease<T>(
        &self,
        item: ItemId,
        write: impl std::future::Future<Output = ServiceResult<T>>,
    ) -> ServiceResult<T> {
        let Ok(holder) = self
            .lease_item(item, || std::future::ready(Ok(None::<Infallible>)))
            .await?;
        let result = write.await;
        self.release_item(item, &holder).await;
        result
    }

    /// Gives the item's lease back (only while this holder holds it).
    async fn release_item(&self, item: ItemId, holder: &str) {
        if let Err(e) = self
            .cx
            .ports
            .kv
            .delete_if_equals(&item_lease_key(item), holder)
            .await
        {
            tracing::warn!(item_id = %item, error = %e, "item lease not released; it expires");
        }
    }

    /// Refuses (409 `CONFLICT`, saying until when) a new sale of `item`
    /// while another promo of it (`this` aside) is published and its orders
    /// may still reach the DB, while an earlier sale's units are not yet
    /// deducted from the DB stock, or (write-behind) while an earlier
    /// sale's order awaits payment. Each promo's ledger is warmed from the
    /// DB stock: any of these would sell units twice, or leave some where
    /// the new sale never sees them.
    pub async fn ensure_item_free_for_a_sale(
        &self,
        item: ItemId,
        this: Option<PromoId>,
    ) -> ServiceResult<()> {
        let now = Utc::now();
        let in_flight = self.in_flight();
        // When the last order of `o` is in the DB.
        let settled_by = |o: &Promo| {
            o.end_at
                .checked_add_signed(in_flight)
                .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC)
        };
        let others = self.cx.ports.store.promos_of_item(item).await?;
        if let Some(o) = others
            .iter()
            .find(|o| Some(o.id) != this && o.published && now < settled_by(o))
        {
            let when = if now < o.end_at {
                format!("runs until {}", o.end_at.to_rfc3339())
            } else {
                format!(
                    "ended at {}; its last orders may reach the database until {}",
                    o.end_at.to_rfc3339(),
                    settled_by(o).to_rfc3339()
                )
            };
            return Err(ServiceError::Conflict(format!(
                "the item's promo {} is published and {when}: one item has one published sale \
                 at a time (both would sell its stock); publish this one after that",
                o.id
            )));
        }
        // The ledger is warmed from the DB stock: while an earlier sale of the
        // item still has reservations not settled into it, that stock is too
        // high and warming from it would sell units twice.
        let unsettled = self.cx.ports.store.unsettled_units_of_item(item).await?;
        if unsettled > 0 {
            return Err(ServiceError::Conflict(format!(
                "an earlier sale of this item is still settling ({unsettled} units not yet \
                 deducted from its stock); publish again in a few seconds"
            )));
        }
        // An unpaid order of an earlier sale, cancelled (by its buyer or its
        // time-out), gives its units back to the DB stock and to that sale's
        // ended ledger: warmed from the DB stock now, this promo's ledger
        // would never see them — DB and ledger apart for good, units never
        // sold. So the earlier sale ends for good first: paid or cancelled.
        if self.cx.config.order_strategy != crate::config::OrderStrategy::WriteBehind {
            // No ledger: a cancellation's units go back to the DB stock the
            // next sale sells from.
            return Ok(());
        }
        let (unpaid, newest) = self.cx.ports.store.unpaid_orders_of_item(item).await?;
        if unpaid > 0 {
            let within = self.cx.config.unpaid_cancelled_within();
            let last_due = newest.map(|placed| {
                chrono::Duration::from_std(within)
                    .ok()
                    .and_then(|grace| placed.checked_add_signed(grace))
                    .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC)
            });
            let by = last_due
                .map(|t| {
                    format!(
                        " (all paid or cancelled by about {}: the payment time-out, then the sweep)",
                        t.to_rfc3339()
                    )
                })
                .unwrap_or_default();
            let waiting = if unpaid == 1 {
                "1 order of an earlier sale of this item awaits".to_owned()
            } else {
                format!("{unpaid} orders of an earlier sale of this item await")
            };
            return Err(ServiceError::Conflict(format!(
                "{waiting} payment{by}: a cancellation gives its units back to that sale, which \
                 this one would never see; publish after that"
            )));
        }
        Ok(())
    }

    /// How long after a promo's end its last orders may still reach the DB.
    fn in_flight(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.cx.config.order_in_flight_bound())
            .unwrap_or(chrono::Duration::MAX)
    }

    async fn publish_leased(&self, id: PromoId) -> ServiceResult<Promo> {
        // Read again under the lease: a publish of this promo may have won.
        let promo = self.load_promo(id).await?;
        if promo.published {
            return Ok(promo);
        }
        // Ended meanwhile ("End now" held the lease while this one waited).
        if promo.state_at(Utc::now()) == PromoState::Ended {
            return Err(ServiceError::PromoEnded);
        }
        self.ensure_item_free_for_a_sale(promo.item_id, Some(id))
            .await?;
        let item = self.load_item(promo.item_id).await?;
        let cfg = &self.cx.config;
        // An earlier publish of this promo that failed after its warm-up
        // left a ledger loaded from the stock of then: nobody bought from
        // it, so the warm-up loads it afresh. (Had that publish's DB write
        // landed late after all, and buyers come, the sale is kept, and so
        // are its gate and its flags.)
        let loaded = self
            .cx
            .ports
            .ledger
            .warm(id, item.stock, cfg.per_user_limit)
            .await?;
        if loaded {
            self.cx
                .ports
                .kv
                .set_counter(
                    &gate_key(id),
                    gate_permits(cfg, item.stock),
                    gate_ttl(&promo),
                )
                .await?;
            self.cx.sold_out.clear(id);
        }
        let baseline = PromoBaseline {
            stock: item.stock,
            sales: item.sales,
            strategy: Some(cfg.order_strategy),
        };
        // The DB refuses it too if another sale of the item got published
        // meanwhile (the checks above ran under a lease only the cache kept).
        let others_settled_by = Utc::now()
            .checked_sub_signed(self.in_flight())
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        self.cx
            .ports
            .store
            .publish_promo(id, baseline, others_settled_by)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => ServiceError::Conflict(
                    "another promo of the item was published meanwhile: one item has one \
                     published sale at a time"
                        .into(),
                ),
                e => e.into(),
            })?;
        self.live_stock.invalidate(&id).await;
        self.item_changed(promo.item_id).await;
        tracing::info!(promo_id = %id, item_id = %promo.item_id, stock = item.stock, "promo published; stock warmed up");
        // A concurrent publish may have won; the DB has the baseline kept.
        self.load_promo(id).await
    }

    pub async fn stats(&self, id: PromoId) -> ServiceResult<PromoStats> {
        let promo = self.load_promo(id).await?;
        let item = self.load_item(promo.item_id).await?;
        let totals = self.cx.ports.store.promo_totals(id).await?;
        // The pure-database strategies never touch the ledger after warm-up.
        let stock_cache = if promo.sold_with_ledger(self.cx.config.order_strategy) {
            self.cx.ports.ledger.stock(id).await?
        } else {
            None
        };
        Ok(PromoStats {
            promo,
            stock_db: item.stock,
            sales_db: item.sales,
            stock_cache,
            totals,
        })
    }

    /// Drops this instance's cached copies of an item and its promos (after
    /// a change announced on the bus).
    pub async fn forget_item(&self, item: ItemId) {
        self.items.forget_local(item).await;
        // Promos are few and cached briefly: dropping them all is cheaper
        // than indexing them by item.
        self.forget_promos();
    }
}

/// A cache keyed by promo (or item), entries kept `ttl_ms`.
fn per_promo<K, V>(ttl_ms: u64) -> Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_millis(ttl_ms.max(1)))
        .build()
}

/// Broadcasts an item change (every instance drops its cached copies).
pub(crate) async fn announce(bus: &dyn MessageBus, item_id: ItemId) {
    if let Err(e) = bus.publish(Event::ItemChanged { v: 1, item_id }).await {
        tracing::warn!(item_id = %item_id, error = %e, "item change not broadcast; local caches expire by TTL");
    }
}

/// How long a promo's gate counter is kept: until its end, and a grace.
pub fn gate_ttl(promo: &Promo) -> Duration {
    (promo.end_at - Utc::now()).to_std().unwrap_or_default() + GATE_GRACE
}

/// Whether an item row was just read from the DB or comes from a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    Fresh,
    Cached,
}

/// The lease serializing the writes that decide what one item's sales
/// sell (its key predates promo creations and price changes taking it).
fn item_lease_key(item: ItemId) -> String {
    format!("publish:item:{item}")
}

/// Units given back to a promo's ledger (a cancelled order's) are for sale
/// again: its gate gets room for their tokens, `gate_factor` a unit as at
/// publish (the crowd may have spent every permit long before an unpaid
/// order times out). A gate the cache lost stays lost: a rebuild sets it
/// again from the stock. Best effort.
pub async fn reopen_gate(cx: &Context, promo: PromoId, units: i64) {
    let permits = gate_permits(&cx.config, units);
    if let Err(e) = cx.ports.kv.add_to_counter(&gate_key(promo), permits).await {
        tracing::warn!(promo_id = %promo, units, error = %e,
            "gate not reopened for units given back; tokens for them are refused until the gate is set again");
    }
}

/// The gate's permits for `units` on sale: `gate_factor` buyers a unit.
pub fn gate_permits(config: &crate::config::Config, units: i64) -> i64 {
    units.max(0).saturating_mul(i64::from(config.gate_factor))
}

/// The key of a promo's gate counter.
pub fn gate_key(promo: PromoId) -> String {
    format!("gate:{promo}")
}

/// A load's error, as each request that waited for the load gets it (the
/// error itself when only one did).
fn shared_error(e: Arc<ServiceError>) -> ServiceError {
    let e = match Arc::try_unwrap(e) {
        Ok(alone) => return alone,
        Err(shared) => shared,
    };
    match &*e {
        ServiceError::NotFound(what) => ServiceError::NotFound(what),
        ServiceError::Unavailable { context, .. } => ServiceError::Unavailable {
            context,
            source: Some(Box::new(SharedError(e.clone()))),
        },
        _ => ServiceError::Internal(Box::new(SharedError(e))),
    }
}

/// Rows read one past a page's `limit`: the page, and whether more follow.
pub(crate) fn one_page<T>(mut rows: Vec<T>, limit: u32) -> (Vec<T>, bool) {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    (rows, more)
}
