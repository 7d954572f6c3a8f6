//! The cache-invalidation consumer (broadcast: every instance gets every
//! message) drops this instance's cached copies of a changed item.

use std::sync::Arc;

use async_trait::async_trait;

use crate::mq::{Event, MessageHandler};
use crate::service::catalog::CatalogService;

pub struct CacheInvalidation {
    catalog: Arc<CatalogService>,
}

impl CacheInvalidation {
    pub fn new(catalog: Arc<CatalogService>) -> Self {
        CacheInvalidation { catalog }
    }
}

#[async_trait]
impl MessageHandler for CacheInvalidation {
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        if let Event::ItemChanged { item_id, .. } = event {
            self.catalog.forget_item(*item_id).await;
            metrics::counter!("seckill_cache_invalidations_total").increment(1);
        }
        Ok(())
    }
}
