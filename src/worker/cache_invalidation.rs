//! The cache-invalidation consumer (broadcast: every instance gets every
//! message) drops this instance's cached copies of a changed item or an
//! ended session; the cache-repair consumer (clustering: one instance takes
//! each message) redoes a shared-entry delete that failed.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;

use crate::cache::KvStore;
use crate::mq::{Event, MessageBus, MessageHandler};
use crate::service::catalog::announce;
use crate::service::catalog::CatalogService;
use crate::service::item_cache::shared_key;
use crate::service::users::UserService;

pub struct CacheInvalidation {
    catalog: Arc<CatalogService>,
    users: Arc<UserService>,
}

impl CacheInvalidation {
    pub fn new(catalog: Arc<CatalogService>, users: Arc<UserService>) -> Self {
        CacheInvalidation { catalog, users }
    }
}

#[async_trait]
impl MessageHandler for CacheInvalidation {
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        match event {
            Event::ItemChanged { item_id, .. } => {
                self.catalog.forget_item(*item_id).await;
                metrics::counter!("seckill_cache_invalidations_total").increment(1);
            }
            Event::SessionEnded { digest, .. } => self.users.forget_session(digest),
            _ => {}
        }
        Ok(())
    }
}

/// The consumer group of shared-entry repairs.
pub const REPAIR_GROUP: &str = "seckill_cache_repair";

/// Redoes the delete of an item's shared cache entry after one failed
/// (`SharedItemStale`). A failure again is an `Err`: the bus redelivers the
/// message until a delete succeeds. Then every instance is told, so a
/// local copy taken from the stale entry meanwhile is dropped too.
pub struct CacheRepair {
    kv: Arc<dyn KvStore>,
    bus: Arc<dyn MessageBus>,
}

impl CacheRepair {
    pub fn new(kv: Arc<dyn KvStore>, bus: Arc<dyn MessageBus>) -> Self {
        CacheRepair { kv, bus }
    }
}

#[async_trait]
impl MessageHandler for CacheRepair {
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        let Event::SharedItemStale { v: 1, item_id } = event else {
            tracing::error!(key = %event.key(), "cache repair got a message it does not understand; skipped");
            return Ok(());
        };
        self.kv
            .delete(&shared_key(*item_id))
            .await
            .context("shared item entry still not deleted")?;
        metrics::counter!("seckill_item_cache_repairs_total").increment(1);
        tracing::info!(item_id = %item_id, "shared item entry deleted on a retry");
        announce(&*self.bus, *item_id).await;
        Ok(())
    }
}
