//! The cache-invalidation consumer (broadcast: every instance gets every
//! message) drops this instance's cached copies of a changed item or an
//! ended session.

use std::sync::Arc;

use async_trait::async_trait;

use crate::mq::{Event, MessageHandler};
use crate::service::catalog::CatalogService;
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
