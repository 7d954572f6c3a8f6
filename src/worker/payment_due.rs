//! The payment time-out consumer (a clustering group): cancels the orders
//! of a `PaymentDue` message that are still unpaid, giving their units back.
//! Idempotent: a paid or cancelled order is left as it is.

use async_trait::async_trait;

use crate::mq::{Event, MessageHandler};
use crate::service::payment::{self, Expiry, SaleKinds};
use crate::service::Context;

/// The consumer group name of payment time-outs.
pub const GROUP: &str = "seckill_payment_due";

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
        let mut sales = SaleKinds::default();
        for no in order_nos {
            // A DB error asks for redelivery; orders settled already are
            // skipped the second time.
            match payment::expire(&self.cx, no, &mut sales).await? {
                Expiry::NotYet(_) => early.push(no.clone()),
                Expiry::Cancelled | Expiry::Settled => {}
            }
        }
        if !early.is_empty() {
            // Delivered before the time (clocks disagree): the sweep catches
            // these; scheduling them again keeps the time-out prompt.
            payment::schedule(&self.cx, &early).await;
        }
        Ok(())
    }
}
