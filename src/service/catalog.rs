//! Items and promos: the admin's writes, the buyers' reads, publishing (the
//! stock warm-up) and a promo's live stats.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use moka::future::Cache;

use super::{Context, ServiceError, ServiceResult};
use crate::domain::promo::NotOnSale;
use crate::domain::{Item, ItemId, ItemPatch, NewItem, NewPromo, Promo, PromoId, PromoState};
use crate::mq::Event;
use crate::store::PromoTotals;

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
    pub stock_cache: Option<i64>,
    pub totals: PromoTotals,
}

pub struct CatalogService {
    cx: Context,
    promos: Cache<PromoId, Arc<Promo>>,
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
    pub fn new(cx: Context) -> Self {
        let promos = Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_millis(cx.config.promo_cache_ttl_ms.max(1)))
            .build();
        CatalogService { cx, promos }
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
        let item = self
            .cx
            .ports
            .store
            .update_item(id, &patch)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::NotFound => ServiceError::NotFound("no such item"),
                e => e.into(),
            })?;
        self.announce_change(id).await;
        self.view(item).await
    }

    async fn announce_change(&self, item_id: ItemId) {
        if let Err(e) = self
            .cx
            .ports
            .bus
            .publish(Event::ItemChanged { v: 1, item_id })
            .await
        {
            tracing::warn!(item_id = %item_id, error = %e, "item change not broadcast; caches expire by TTL");
        }
    }

    async fn view(&self, mut item: Item) -> ServiceResult<ItemView> {
        let promo = featured(self.cx.ports.store.promos_of_item(item.id).await?);
        self.live_stock(&mut item, promo.as_ref()).await;
        Ok(ItemView { item, promo })
    }

    /// Replaces the DB stock by the ledger's while the promo is published:
    /// the DB catches up only as the consumer deducts.
    async fn live_stock(&self, item: &mut Item, promo: Option<&Promo>) {
        if self.cx.config.order_strategy != crate::config::OrderStrategy::WriteBehind {
            return;
        }
        if let Some(p) = promo.filter(|p| p.published) {
            match self.cx.ports.ledger.stock(p.id).await {
                Ok(Some(s)) => item.stock = s,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(promo_id = %p.id, error = %e, "ledger stock unavailable; showing DB stock")
                }
            }
        }
    }

    pub async fn item(&self, id: ItemId) -> ServiceResult<ItemView> {
        let item = self.load_item(id).await?;
        self.view(item).await
    }

    /// Items, most sales first.
    pub async fn items(&self) -> ServiceResult<Vec<ItemView>> {
        let items = self.cx.ports.store.items(500).await?;
        let mut promos = self.cx.ports.store.promos(5000).await?;
        let mut out = Vec::with_capacity(items.len());
        for mut item in items {
            let mine: Vec<Promo> = promos
                .iter()
                .filter(|p| p.item_id == item.id)
                .cloned()
                .collect();
            promos.retain(|p| p.item_id != item.id);
            let promo = featured(mine);
            self.live_stock(&mut item, promo.as_ref()).await;
            out.push(ItemView { item, promo });
        }
        Ok(out)
    }

    /// Creates a promo for an item; two promos of one item may not overlap
    /// (they would sell the same stock).
    pub async fn create_promo(&self, p: NewPromo) -> ServiceResult<Promo> {
        let item = self.load_item(p.item_id).await?;
        p.validate(item.price_cents, Utc::now())?;
        let others = self.cx.ports.store.promos_of_item(p.item_id).await?;
        if let Some(o) = others.iter().find(|o| o.overlaps(p.start_at, p.end_at)) {
            return Err(ServiceError::Conflict(format!(
                "the item's promo {} overlaps this time window",
                o.id
            )));
        }
        let promo = self.cx.ports.store.create_promo(&p).await?;
        self.announce_change(p.item_id).await;
        Ok(promo)
    }

    /// A promo, through a short in-process cache (the order path reads it on
    /// every request).
    pub async fn promo(&self, id: PromoId) -> ServiceResult<Arc<Promo>> {
        if let Some(p) = self.promos.get(&id).await {
            return Ok(p);
        }
        let p = self.load_promo(id).await?;
        let p = Arc::new(p);
        self.promos.insert(id, p.clone()).await;
        Ok(p)
    }

    pub async fn promos(&self) -> ServiceResult<Vec<Promo>> {
        Ok(self.cx.ports.store.promos(1000).await?)
    }

    /// Publishes a promo: loads its stock into the ledger, sets its gate
    /// counter (stock × gate factor), clears sold-out flags, then marks it
    /// published. Publishing again changes nothing.
    pub async fn publish(&self, id: PromoId) -> ServiceResult<Promo> {
        let promo = self.load_promo(id).await?;
        if promo.published {
            return Ok(promo);
        }
        if promo.state_at(Utc::now()) == PromoState::Ended {
            return Err(ServiceError::PromoEnded);
        }
        let item = self.load_item(promo.item_id).await?;
        let cfg = &self.cx.config;
        self.cx
            .ports
            .ledger
            .warm(id, item.stock, cfg.per_user_limit)
            .await?;
        let gate_ttl = (promo.end_at - Utc::now()).to_std().unwrap_or_default() + GATE_GRACE;
        self.cx
            .ports
            .kv
            .set_counter(
                &gate_key(id),
                item.stock.saturating_mul(i64::from(cfg.gate_factor)),
                gate_ttl,
            )
            .await?;
        self.cx.sold_out.clear(id);
        self.cx.ports.store.publish_promo(id).await?;
        self.promos.invalidate(&id).await;
        self.announce_change(promo.item_id).await;
        tracing::info!(promo_id = %id, item_id = %promo.item_id, stock = item.stock, "promo published; stock warmed up");
        Ok(Promo {
            published: true,
            ..promo
        })
    }

    pub async fn stats(&self, id: PromoId) -> ServiceResult<PromoStats> {
        let promo = self.load_promo(id).await?;
        let item = self.load_item(promo.item_id).await?;
        let totals = self.cx.ports.store.promo_totals(id).await?;
        // The pure-database strategies never touch the ledger after warm-up.
        let stock_cache = match self.cx.config.order_strategy {
            crate::config::OrderStrategy::WriteBehind => self.cx.ports.ledger.stock(id).await?,
            _ => None,
        };
        Ok(PromoStats {
            promo,
            stock_db: item.stock,
            stock_cache,
            totals,
        })
    }

    /// Drops this instance's cached copies of an item and its promos (after
    /// a change announced on the bus).
    pub async fn forget_item(&self, _item: ItemId) {
        // Promos are few and cached briefly: dropping them all is cheaper
        // than indexing them by item.
        self.promos.invalidate_all();
    }
}

/// The key of a promo's gate counter.
pub fn gate_key(promo: PromoId) -> String {
    format!("gate:{promo}")
}
