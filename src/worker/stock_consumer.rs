//! The stock-deduction consumer (a clustering group): deducts DB stock for
//! committed orders, once per `stock_log` id even when a message is
//! delivered twice.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::task::TaskTracker;

use crate::cache::KvStore;
use crate::mq::{Event, MessageBus, MessageHandler};
use crate::service::item_cache::sale_changed_row;
use crate::store::Store;

/// The consumer group name of stock deduction.
pub const GROUP: &str = "seckill_stock_deduct";

pub struct StockConsumer {
    store: Arc<dyn Store>,
    kv: Arc<dyn KvStore>,
    bus: Arc<dyn MessageBus>,
    tasks: TaskTracker,
    second_delete_after: Duration,
}

impl StockConsumer {
    /// `kv`: the shared item cache, whose entries of the deducted items are
    /// deleted (their DB stock changed), and again after
    /// `second_delete_after` (`item_cache_double_delete_ms`); a failed
    /// delete is redone through `bus`; the second delete is a task of
    /// `tasks` (a shutdown waits for it).
    pub fn new(
        store: Arc<dyn Store>,
        kv: Arc<dyn KvStore>,
        bus: Arc<dyn MessageBus>,
        tasks: TaskTracker,
        second_delete_after: Duration,
    ) -> Self {
        StockConsumer {
            store,
            kv,
            bus,
            tasks,
            second_delete_after,
        }
    }
}

#[async_trait]
impl MessageHandler for StockConsumer {
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        let Event::StockDeduct {
            v: 1,
            promo_id,
            entries,
        } = event
        else {
            tracing::error!(key = %event.key(), "stock consumer got a message it does not understand; skipped");
            return Ok(());
        };
        let report = self.store.apply_deductions(entries).await?;
        // Deducted now, or before (a redelivery: the call that deducted may
        // have been cut off before this delete, at the listener's deadline).
        if report.applied > 0 || report.duplicates > 0 {
            let mut items: Vec<_> = entries.iter().map(|e| e.item_id).collect();
            items.dedup();
            for item in items {
                sale_changed_row(
                    &self.kv,
                    &self.bus,
                    &self.tasks,
                    item,
                    self.second_delete_after,
                )
                .await;
            }
        }
        metrics::counter!("seckill_deductions_total", "outcome" => "applied")
            .increment(report.applied);
        metrics::counter!("seckill_deductions_total", "outcome" => "duplicate")
            .increment(report.duplicates);
        metrics::counter!("seckill_deductions_total", "outcome" => "skipped")
            .increment(report.skipped);
        metrics::counter!("seckill_deductions_total", "outcome" => "insufficient")
            .increment(report.insufficient);
        if let Some(first) = entries.first() {
            let lag = (chrono::Utc::now()
                - crate::domain::IdGenerator::timestamp(first.stock_log_id))
            .num_milliseconds()
            .max(0) as f64
                / 1000.0;
            metrics::histogram!("seckill_consumer_lag_seconds").record(lag);
        }
        tracing::debug!(promo_id = %promo_id, ?report, "stock deducted");
        Ok(())
    }
}
