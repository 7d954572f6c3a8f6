//! The payment time-out consumer (a clustering group): cancels the orders
//! of a `PaymentDue` message that are still unpaid, giving their units back.
//! Idempotent: a paid order is left as it is, a cancelled one's units are
//! given back at most once.

use std::time::Duration;

use async_trait::async_trait;

use crate::mq::{Event, MessageHandler};
use crate::service::payment::{self, Expiry, SaleKinds};
use crate::service::Context;

/// The consumer group name of payment time-outs.
pub const GROUP: &str = "seckill_payment_due";

/// Added to what is left of an early order's time when it is sent again,
/// so that the next delivery does not come a moment early once more.
const EARLY_MARGIN: Duration = Duration::from_secs(1);

pub struct PaymentDueConsumer {
    cx: Context,
}

impl PaymentDueConsumer {
    pub fn new(cx: Context) -> Self {
        PaymentDueConsumer { cx }
    }
}

#[async_trait]
impl MessageHandler for PaymentDueConsumer {
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        let Event::PaymentDue { v: 1, order_nos } = event else {
            tracing::error!(key = %event.key(), "payment consumer got a message it does not understand; skipped");
            return Ok(());
        };
        let mut early = Vec::new();
        let mut wait = Duration::ZERO;
        let mut sales = SaleKinds::default();
        for no in order_nos {
            // A DB error asks for redelivery; orders settled already are
            // skipped the second time.
            match payment::expire(&self.cx, no, &mut sales).await? {
                Expiry::NotYet(left) => {
                    early.push(no.clone());
                    wait = wait.max(left);
                }
                Expiry::Cancelled | Expiry::Settled => {}
            }
        }
        if !early.is_empty() {
            // Delivered before the time (clocks disagree, a timer rounds
            // down): sent again for what is left of it, which keeps the
            // time-out prompt; the sweep catches any whose message is lost.
            payment::schedule_after(&self.cx, &early, wait + EARLY_MARGIN).await;
        }
        Ok(())
    }
}
