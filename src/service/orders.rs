//! Placing, reading, paying and cancelling orders.
//!
//! `place` runs the order path's front half — promo on sale, local
//! sold-out flag, rate limit, a place in the bounded queue, the seckill
//! token used up — then hands the order to the configured strategy and waits for its
//! commit. The queue place is taken before the token so that a full queue
//! (429) never burns the buyer's token; it is held until the answer, so the
//! bound covers orders being committed too, not just those waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{oneshot, Semaphore};

use super::catalog::CatalogService;
use super::deadline_hold::DeadlineHold;
use super::payment;
use super::tokens::TokenService;
use super::write_behind::{Pending, WriteBehind};
use super::{Context, ServiceError, ServiceResult};
use crate::cache::RateRule;
use crate::config::OrderStrategy;
use crate::domain::{ItemId, Order, OrderDraft, OrderNo, OrderStatus, PromoId, UserId};
use crate::store::StoreError;

/// `seckill_orders_refused_total`, one handle per reason (by
/// [`ServiceError::reason_index`]), registered when the service starts: the
/// macro with a label builds, hashes and looks up its key on every call —
/// under a sold-out crowd, on every request.
struct RefusedMeters(Vec<metrics::Counter>);

impl RefusedMeters {
    fn new() -> Self {
        RefusedMeters(
            ServiceError::REASONS
                .iter()
                .map(|&r| metrics::counter!("seckill_orders_refused_total", "reason" => r))
                .collect(),
        )
    }

    fn count(&self, refused: &ServiceError) {
        self.0[refused.reason_index()].increment(1);
    }
}

/// An order request as the buyer sent it.
#[derive(Debug, Clone)]
pub struct PlaceOrder {
    pub promo_id: PromoId,
    pub item_id: ItemId,
    pub amount: i64,
    pub token: String,
}

pub struct OrderService {
    cx: Context,
    catalog: Arc<CatalogService>,
    tokens: Arc<TokenService>,
    write_behind: WriteBehind,
    /// The bounded queue: orders admitted and not yet answered. When none is
    /// left, new orders get 429 at once instead of piling up.
    in_flight: Arc<Semaphore>,
    order_rule: RateRule,
    refused: RefusedMeters,
    /// Set on shutdown: new orders are refused (503) while those admitted
    /// finish.
    draining: std::sync::atomic::AtomicBool,
}

impl OrderService {
    pub fn new(cx: Context, catalog: Arc<CatalogService>, tokens: Arc<TokenService>) -> Self {
        let write_behind = WriteBehind::start(cx.clone());
        let in_flight = Arc::new(Semaphore::new(cx.config.order_queue_capacity));
        let order_rule = RateRule {
            name: "orders",
            limit: cx.config.order_rate_per_sec,
            period: Duration::from_secs(1),
        };
        OrderService {
            cx,
            catalog,
            tokens,
            write_behind,
            in_flight,
            order_rule,
            refused: RefusedMeters::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Stops taking orders (shutdown): new ones get 503, admitted ones
    /// finish. [`OrderService::idle`] tells when none is left.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this instance owns its node id now, so can make order ids
    /// (`service::node_lease`): not while another process holds it or the
    /// lease is unconfirmed.
    pub fn owns_node_id(&self) -> bool {
        self.cx.ids.owns_node()
    }

    /// Whether no admitted order is waiting for its answer.
    pub fn idle(&self) -> bool {
        self.queued() == 0
    }

    /// Places an order; answers only once it is committed in the DB.
    pub async fn place(&self, user: UserId, req: PlaceOrder) -> ServiceResult<Order> {
        self.place_held(user, req, &DeadlineHold::default()).await
    }

    /// [`place`](Self::place) for a request with a deadline: `hold` is held
    /// when the order reaches its local transaction, so a deadline passing
    /// after that waits for the outcome; an order whose request was cut off
    /// before is given back, never committed behind its 503.
    pub async fn place_held(
        &self,
        user: UserId,
        req: PlaceOrder,
        hold: &DeadlineHold,
    ) -> ServiceResult<Order> {
        let started = Instant::now();
        let result = self.place_inner(user, req, hold).await;
        match &result {
            Ok(_) => {
                metrics::counter!("seckill_orders_accepted_total").increment(1);
                metrics::histogram!("seckill_order_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Err(e) => self.refused.count(e),
        }
        result
    }

    async fn place_inner(
        &self,
        user: UserId,
        req: PlaceOrder,
        hold: &DeadlineHold,
    ) -> ServiceResult<Order> {
        if self.draining() {
            return Err(ServiceError::unavailable(
                "this instance is shutting down; retry (another instance takes the order)",
            ));
        }
        // Its order ids could collide with another instance's (see
        // `service::node_lease`).
        if !self.cx.ids.owns_node() {
            return Err(ServiceError::node_unowned());
        }
        let limit = self.cx.config.per_user_limit;
        if req.amount < 1 || req.amount > limit {
            return Err(ServiceError::Invalid(format!(
                "amount must be between 1 and {limit}"
            )));
        }
        let promo = self.catalog.promo(req.promo_id).await?;
        if promo.item_id != req.item_id {
            return Err(ServiceError::Invalid(format!(
                "item {} is not in promo {}",
                req.item_id, req.promo_id
            )));
        }
        promo.check_on_sale(Utc::now())?;
        self.catalog.check_sold_here(&promo)?;
        // The crowd after the last unit is answered here, from this
        // process's flag: no round trip, no rate-limit permit spent.
        if self.cx.sold_out_here(promo.id).await? {
            return Err(ServiceError::SoldOut);
        }
        // The flag lapses (stock may come back); the shared one is asked
        // again at most once per `sold_out_poll_ms`, so a crowd keeps being
        // answered here rather than each request spending a token on it.
        if self.cx.config.order_strategy == OrderStrategy::WriteBehind
            && self.cx.sold_out_elsewhere(promo.id).await?
        {
            return Err(ServiceError::SoldOut);
        }
        // The buyer's own pace before the shared limit: one account's
        // requests (made-up tokens, say) cannot spend the crowd's share.
        self.cx.buyer_pace.check(user)?;
        if !self.cx.ports.limiter.check(&self.order_rule, "all").await? {
            return Err(ServiceError::RateLimited(
                "too many orders right now; retry shortly",
            ));
        }
        let admitted = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("seckill_order_queue_full_total").increment(1);
            ServiceError::RateLimited("the order queue is full; retry shortly")
        })?;
        // Taken after admission: a 429 never burns the buyer's token.
        self.tokens
            .consume(&req.token, user, promo.id, promo.item_id)
            .await?;
        let spent = SpentToken {
            tokens: self.tokens.clone(),
            token: Some(req.token.clone()),
            user,
            promo: promo.id,
            item: promo.item_id,
        };
        let result = match self.commit(user, &promo, &req, hold, admitted).await {
            Err(ServiceError::AlreadyBought) => self.already_bought(user, promo.id).await,
            result => result,
        };
        match &result {
            // Not the buyer's doing (a dependency down, contention): the
            // token stays good for a retry, given back before the answer.
            Err(ServiceError::Unavailable { .. } | ServiceError::RateLimited(_)) => {
                spent.give_back().await
            }
            _ => spent.keep(),
        }
        result
    }

    /// Makes "already bought" final only when the DB has the buyer's order.
    /// The ledger counts a buyer's units from the reservation on, so an
    /// earlier attempt not settled yet also counts there: one left `init`
    /// by a DB outage, or whose give-back failed, until the reconciler
    /// settles it. That buyer is told to retry (503, token kept for it)
    /// rather than, for good, that they bought.
    async fn already_bought(&self, user: UserId, promo: PromoId) -> ServiceResult<Order> {
        if self.cx.ports.store.has_order(user, promo).await? {
            return Err(ServiceError::AlreadyBought);
        }
        tracing::info!(user_id = %user, promo_id = %promo,
            "the ledger counts units of this buyer that no order holds (an attempt not settled yet)");
        Err(ServiceError::unavailable(
            "an earlier order attempt of yours is still being settled; retry shortly",
        ))
    }

    /// The strategy's half of `place`: reserve and commit the order.
    async fn commit(
        &self,
        user: UserId,
        promo: &crate::domain::Promo,
        req: &PlaceOrder,
        hold: &DeadlineHold,
        admitted: tokio::sync::OwnedSemaphorePermit,
    ) -> ServiceResult<Order> {
        match self.cx.config.order_strategy {
            OrderStrategy::WriteBehind => {
                let (reply, answer) = oneshot::channel();
                self.write_behind.submit(Pending {
                    user,
                    promo: promo.id,
                    item: promo.item_id,
                    amount: req.amount,
                    unit_price_cents: promo.price_cents,
                    reply,
                    hold: hold.clone(),
                    admitted,
                })?;
                answer
                    .await
                    .map_err(|_| ServiceError::unavailable("the order pipeline stopped"))?
            }
            strategy => {
                // Held for this call: a pure-DB order runs in its request.
                let _admitted = admitted;
                // Checked again where the id is made (the token's round
                // trips took time since admission).
                if !self.cx.ids.owns_node() {
                    return Err(ServiceError::node_unowned());
                }
                let id = self.cx.ids.next_id();
                let now = crate::domain::stored_time(Utc::now());
                let draft = OrderDraft {
                    stock_log_id: id,
                    order_no: OrderNo::new(now, id),
                    user_id: user,
                    item_id: promo.item_id,
                    promo_id: promo.id,
                    amount: req.amount,
                    unit_price_cents: promo.price_cents,
                    created_at: now,
                };
                let optimistic = strategy == OrderStrategy::DbOptimistic;
                // Bounded like the write-behind local transaction: a
                // transaction that reaches its COMMIT past the bound rolls
                // back and answers 503. The bound is the transaction's own,
                // not a time-out around it: cut off from outside, a
                // transaction goes on to its end (the store's calls run to
                // completion) and could commit after its buyer was told it
                // did not. Its waits are bounded too (a connection by the
                // deadline, each row lock by the store's lock-wait bound), so
                // the answer normally comes before the request deadline.
                let commit_by =
                    Instant::now() + Duration::from_millis(self.cx.config.local_tx_timeout_ms);
                // From here the outcome comes within that bound: a deadline
                // passing meanwhile waits for it rather than answering 503
                // over a transaction that goes on.
                if !hold.hold() {
                    return Err(ServiceError::unavailable(
                        "no answer within the request deadline; retry",
                    ));
                }
                let placed = self
                    .cx
                    .ports
                    .store
                    .place_order_in_db(&draft, optimistic, self.cx.config.cas_retries, commit_by)
                    .await;
                match placed {
                    Ok(Some(order)) => {
                        payment::schedule_soon(&self.cx, vec![order.order_no.clone()]);
                        Ok(order)
                    }
                    Ok(None) => {
                        // Fewer units than asked; none left only when one was.
                        if req.amount == 1 {
                            self.cx.sold_out.set(promo.id);
                        }
                        Err(ServiceError::SoldOut)
                    }
                    Err(StoreError::Conflict("user_promo")) => Err(ServiceError::AlreadyBought),
                    // The id made twice (two instances on one node id for a
                    // moment, see `service::node_lease`): nothing written.
                    Err(StoreError::Conflict("stock_log")) => Err(ServiceError::unavailable(
                        "the order could not be numbered; retry",
                    )),
                    Err(StoreError::Conflict("version")) => Err(ServiceError::RateLimited(
                        "too much contention on this item; retry shortly",
                    )),
                    // The connection lost as it committed: the order, if
                    // it can be read already, is the answer; else its
                    // outcome is not known (503 saying so, not "nothing
                    // written": the commit may still land).
                    Err(e @ StoreError::CommitUnanswered(_)) => {
                        match self.cx.ports.store.order(&draft.order_no).await {
                            Ok(Some(order)) => {
                                tracing::warn!(order_no = %order.order_no, error = %e,
                                    "a pure-DB order's commit went unanswered, yet it committed");
                                payment::schedule_soon(&self.cx, vec![order.order_no.clone()]);
                                Ok(order)
                            }
                            _ => Err(e.into()),
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// The caller's order; another user's is reported as not found.
    pub async fn get(&self, user: UserId, no: &str) -> ServiceResult<Order> {
        let no = OrderNo::parse(no).ok_or(ServiceError::NotFound("no such order"))?;
        match self.cx.ports.store.order(&no).await? {
            Some(o) if o.user_id == user => Ok(o),
            _ => Err(ServiceError::NotFound("no such order")),
        }
    }

    /// A page of the user's orders, newest first, and whether more follow.
    pub async fn list(
        &self,
        user: UserId,
        offset: u32,
        limit: u32,
    ) -> ServiceResult<(Vec<Order>, bool)> {
        let rows = self
            .cx
            .ports
            .store
            .orders_of_user(user, offset, limit.saturating_add(1))
            .await?;
        Ok(super::catalog::one_page(rows, limit))
    }

    /// Mock payment: `pending_payment` → `paid`; paying again answers the
    /// paid order; a cancelled order cannot be paid, nor one whose payment
    /// time is up (it is cancelled now, its units given back).
    pub async fn pay(&self, user: UserId, no: &str) -> ServiceResult<Order> {
        let order = self.get(user, no).await?;
        let order = match order.status {
            OrderStatus::PendingPayment if Utc::now() >= payment::due_at(&self.cx, &order) => {
                payment::cancel(&self.cx, &order.order_no, &mut Default::default())
                    .await?
                    .0
            }
            OrderStatus::PendingPayment => self.cx.ports.store.pay_order(&order.order_no).await?,
            _ => order,
        };
        match order.status {
            OrderStatus::Paid => Ok(order),
            OrderStatus::Cancelled => Err(ServiceError::Conflict(
                "the order was cancelled (by its buyer or at its payment time-out); it cannot be paid"
                    .into(),
            )),
            OrderStatus::PendingPayment => {
                Err(ServiceError::unavailable("payment not recorded; retry"))
            }
        }
    }

    /// Cancels an unpaid order and gives its units back, to the DB stock
    /// and the ledger, so another buyer can have them. Idempotent.
    pub async fn cancel(&self, user: UserId, no: &str) -> ServiceResult<Order> {
        let order = self.get(user, no).await?;
        match order.status {
            OrderStatus::Paid => {
                return Err(ServiceError::Conflict(
                    "the order is paid; it cannot be cancelled".into(),
                ))
            }
            OrderStatus::Cancelled => return Ok(order),
            OrderStatus::PendingPayment => {}
        }
        let (order, _) =
            payment::cancel(&self.cx, &order.order_no, &mut Default::default()).await?;
        match order.status {
            OrderStatus::Cancelled => Ok(order),
            OrderStatus::Paid => Err(ServiceError::Conflict(
                "the order is paid; it cannot be cancelled".into(),
            )),
            OrderStatus::PendingPayment => Err(ServiceError::unavailable(
                "cancellation not recorded; retry",
            )),
        }
    }

    /// Orders admitted and not yet answered.
    pub fn queued(&self) -> usize {
        self.cx.config.order_queue_capacity - self.in_flight.available_permits()
    }
}

/// A seckill token used up by an order whose outcome is not known yet.
///
/// Kept once the order has an answer that is the buyer's (placed, sold out,
/// already bought, refused); given back otherwise — a failure not of the
/// buyer's doing, or the request cut off before the answer (its deadline,
/// the client hanging up), when the order may still commit or not. A retry
/// with it then meets the sale as it stands ("already bought", sold out, a
/// new try), not "invalid token"; a second order never comes of it: the
/// ledger's per-user limit and the DB's unique key hold.
struct SpentToken {
    tokens: Arc<TokenService>,
    token: Option<String>,
    user: UserId,
    promo: PromoId,
    item: ItemId,
}

impl SpentToken {
    fn keep(mut self) {
        self.token = None;
    }

    /// Gives the token back before the answer; cut off during it, the drop
    /// gives it back again (a repeated give-back is harmless).
    async fn give_back(mut self) {
        if let Some(token) = &self.token {
            self.tokens
                .give_back(token, self.user, self.promo, self.item)
                .await;
        }
        self.token = None;
    }
}

impl Drop for SpentToken {
    /// Cut off before the outcome: the token goes back in a task of its
    /// own (a drop cannot wait), one a shutdown waits for.
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            self.tokens
                .give_back_later(token, self.user, self.promo, self.item);
        }
    }
}
