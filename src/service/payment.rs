//! Payment time-outs and cancellation.
//!
//! An order is `pending_payment` until paid. When it is committed, a
//! delayed `PaymentDue` message is sent for `order_payment_timeout_secs`
//! later (RocketMQ's delayed messages; a timer in the embedded default);
//! its consumer cancels the orders still unpaid. Behind it, the
//! reconciler sweeps unpaid orders past their time (a delayed message lost
//! with a crashed in-process bus, or never sent). Cancelling gives the units
//! back to the DB stock (in the cancel's transaction) and to the ledger
//! (once per order, by its `stock_log` id), so another buyer can have them.
//! A payment after the time is up is refused, and the order cancelled.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{catalog, item_cache, Context};
use crate::domain::{Order, OrderNo, OrderStatus, PromoId};
use crate::mq::Event;
use crate::store::{StoreError, StoreResult};

/// Orders per `PaymentDue` message.
const PER_MESSAGE: usize = 256;

/// How long after it was placed an order may be paid.
pub fn timeout(cx: &Context) -> chrono::Duration {
    chrono::Duration::seconds(cx.config.order_payment_timeout_secs as i64)
}

/// When `order`'s payment time is up.
pub fn due_at(cx: &Context, order: &Order) -> DateTime<Utc> {
    order.created_at + timeout(cx)
}

/// Sends the delayed `PaymentDue` messages for orders just committed. A
/// failed send is logged: the reconciler's sweep cancels them all the same.
pub async fn schedule(cx: &Context, orders: &[OrderNo]) {
    schedule_after(
        cx,
        orders,
        Duration::from_secs(cx.config.order_payment_timeout_secs),
    )
    .await
}

/// [`schedule`], the messages delivered `delay` from now (orders whose
/// message came before their time: what is left of it).
pub async fn schedule_after(cx: &Context, orders: &[OrderNo], delay: Duration) {
    for chunk in orders.chunks(PER_MESSAGE) {
        let event = Event::PaymentDue {
            v: 1,
            order_nos: chunk.to_vec(),
        };
        if let Err(e) = cx.ports.bus.publish_delayed(event, delay).await {
            metrics::counter!("seckill_payment_timeouts_unscheduled_total")
                .increment(chunk.len() as u64);
            tracing::warn!(orders = chunk.len(), error = %e,
                "payment time-out not scheduled; the reconciler's sweep cancels them when due");
        }
    }
}

/// [`schedule`] off the caller's path (an order's answer never waits for
/// the broker): a task of the context's background work (a shutdown lets
/// it send before the bus is left), and nothing to do for no orders.
pub fn schedule_soon(cx: &Context, orders: Vec<OrderNo>) {
    if orders.is_empty() {
        return;
    }
    let cx = cx.clone();
    cx.background
        .clone()
        .spawn(async move { schedule(&cx, &orders).await });
}

/// Cancels an unpaid order and gives its units back. Returns the order as
/// it stands after and whether this call cancelled it (false: it was paid
/// or cancelled already). `sales`: what a batch of cancellations has read
/// of its promos so far ([`SaleKinds::default`] for one order).
pub async fn cancel(
    cx: &Context,
    no: &OrderNo,
    sales: &mut SaleKinds,
) -> StoreResult<(Order, bool)> {
    let (order, cancelled) = cx.ports.store.cancel_order(no).await?;
    if cancelled {
        // The item's DB stock and sales changed with it.
        let after = Duration::from_millis(cx.config.item_cache_double_delete_ms);
        item_cache::sale_changed_row(
            &cx.ports.kv,
            &cx.ports.bus,
            &cx.background,
            order.item_id,
            after,
        )
        .await;
    }
    if order.status == OrderStatus::Cancelled {
        // Also when an earlier call cancelled it but died before this step:
        // `restock` is idempotent per order.
        give_back(cx, &order, cancelled, sales).await;
    }
    Ok((order, cancelled))
}

/// The ledger's side of a cancellation (the DB's is in `cancel_order`;
/// `cancelled_now`: by this call), and the gate's: the units are for sale
/// again, each given back once.
async fn give_back(cx: &Context, order: &Order, cancelled_now: bool, sales: &mut SaleKinds) {
    if !sales.sold_with_ledger(cx, order.promo_id).await {
        // No ledger: the DB's cancel gave the units back, once.
        back_on_sale(cx, order.promo_id, cancelled_now.then_some(order.amount)).await;
        return;
    }
    match cx
        .ports
        .ledger
        .restock(order.promo_id, order.stock_log_id, order.amount)
        .await
    {
        Ok(given_back) => {
            back_on_sale(cx, order.promo_id, given_back.then_some(order.amount)).await;
        }
        Err(e) => tracing::error!(order_no = %order.order_no, error = %e,
            "cancelled order's units not given back to the ledger now; the reconciler's sweep will"),
    }
}

/// Whether promos' sales keep a ledger: the strategy each was published
/// under, not this instance's (a cancellation of another deployment's sale
/// — one restarted with another strategy, or configured apart — gives its
/// units back where that sale takes them from). Read from the DB once per
/// promo and batch of cancellations: a payment time-out message holds up
/// to 256 orders and the sweep up to 1,000, mostly of one sale, and a
/// promo's strategy is fixed when it is published. Unread (the DB did not
/// answer), this instance's strategy decides for that order, the next one
/// reads again, and a ledger's give-back missed is the reconciler's
/// sweep's to make.
#[derive(Debug, Default)]
pub struct SaleKinds(HashMap<PromoId, bool>);

impl SaleKinds {
    async fn sold_with_ledger(&mut self, cx: &Context, promo: PromoId) -> bool {
        if let Some(&known) = self.0.get(&promo) {
            return known;
        }
        let here = cx.config.order_strategy;
        let known = match cx.ports.store.promo(promo).await {
            Ok(Some(p)) => p.sold_with_ledger(here),
            Ok(None) => here.keeps_ledger(),
            Err(e) => {
                tracing::warn!(promo_id = %promo, error = %e,
                    "promo unread; its cancellation gives back as this instance's strategy does");
                return here.keeps_ledger();
            }
        };
        self.0.insert(promo, known);
        known
    }
}

/// Units given back to a promo (`Some(units)`: by this caller, once) are
/// for sale again: the local sold-out flag goes, and the gate gets room for
/// their tokens. `None` (given back by someone else already): only the flag,
/// which this instance may still hold.
pub async fn back_on_sale(cx: &Context, promo: PromoId, given_back: Option<i64>) {
    cx.sold_out.clear(promo);
    if let Some(units) = given_back {
        catalog::reopen_gate(cx, promo, units).await;
    }
}

/// What became of an order whose payment time came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Cancelled now, units given back.
    Cancelled,
    /// Paid, cancelled already (its ledger's give-back redone, idempotent),
    /// or gone.
    Settled,
    /// Not due yet (a clock ahead of ours): due this much later.
    NotYet(Duration),
}

/// Cancels `no` if it is still unpaid and its time is up (`sales`: as for
/// [`cancel`]).
pub async fn expire(cx: &Context, no: &OrderNo, sales: &mut SaleKinds) -> StoreResult<Expiry> {
    let Some(order) = cx.ports.store.order(no).await? else {
        return Ok(Expiry::Settled);
    };
    match order.status {
        OrderStatus::PendingPayment => {}
        OrderStatus::Paid => return Ok(Expiry::Settled),
        OrderStatus::Cancelled => {
            // A ledger's units go back once (idempotent per order): also
            // when the call that cancelled it was cut off before the
            // ledger's step. (A pure-DB sale's units went back in the
            // cancel's own transaction; a gate reopening cut off with it is
            // not redone here.)
            give_back(cx, &order, false, sales).await;
            return Ok(Expiry::Settled);
        }
    }
    let left = due_at(cx, &order) - Utc::now();
    if left > chrono::Duration::zero() {
        return Ok(Expiry::NotYet(left.to_std().unwrap_or_default()));
    }
    match cancel(cx, no, sales).await {
        Ok((_, true)) => {
            metrics::counter!("seckill_orders_expired_total").increment(1);
            tracing::info!(order_no = %no, "unpaid order cancelled at its payment time-out; units given back");
            Ok(Expiry::Cancelled)
        }
        Ok(_) => Ok(Expiry::Settled),
        Err(StoreError::NotFound) => Ok(Expiry::Settled),
        Err(e) => Err(e),
    }
}

/// The reconciler's sweep: cancels unpaid orders past their time (plus
/// `grace`, so the delayed message normally comes first). Returns how many
/// it cancelled and how many it could not (each tried again next pass: one
/// order's failure — a deadlock, a time-out — stops none after it; three
/// in a row stop the sweep).
pub async fn sweep(cx: &Context, grace: Duration, limit: u32) -> StoreResult<(usize, usize)> {
    let before = Utc::now() - timeout(cx) - chrono::Duration::from_std(grace).unwrap_or_default();
    let due = cx.ports.store.unpaid_orders(before, limit).await?;
    let (mut cancelled, mut failed) = (0, 0);
    let mut sales = SaleKinds::default();
    // Three failures in a row: the DB is down, not one order in trouble;
    // the rest wait for the next pass (each would wait its own time-out).
    let mut in_a_row = 0;
    for no in &due {
        match expire(cx, no, &mut sales).await {
            Ok(outcome) => {
                in_a_row = 0;
                if outcome == Expiry::Cancelled {
                    cancelled += 1;
                }
            }
            Err(e) => {
                failed += 1;
                in_a_row += 1;
                tracing::warn!(order_no = %no, error = %e,
                    "reconciler: unpaid order past its time not cancelled; next pass");
                if in_a_row == 3 {
                    break;
                }
            }
        }
    }
    if cancelled > 0 {
        tracing::warn!(
            cancelled,
            "reconciler: unpaid orders past their time cancelled by the sweep"
        );
    }
    Ok((cancelled, failed))
}
