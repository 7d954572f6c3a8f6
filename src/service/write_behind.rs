//! The write-behind order pipeline with group commit.
//!
//! Admitted orders wait in a bounded queue. Batch workers take up to
//! `batch_max` of them (waiting at most `batch_linger_ms` for the batch to
//! fill), journal them as `stock_log` rows (`init`), reserve them in the
//! ledger in one round trip, and then send ONE transactional message for
//! the batch whose local transaction inserts every order, adds the sales
//! and flips the journal rows to `committed` in one DB transaction. Each
//! caller is answered only after that commit.
//!
//! The journal row comes before the reservation (DESIGN.md lists it after):
//! so no reservation ever exists without a row, and a crash or a lost
//! ledger answer between the two leaves an `init` row the reconciler rolls
//! back, giving back whatever was reserved. The other way round, a
//! reservation taken just before a crash was lost to the sale for good, and
//! its buyer counted as having bought. Orders the ledger refuses have their
//! rows rolled back.
//!
//! Failure handling keeps DESIGN.md's guarantees per order: a batch whose
//! local transaction is refused by a unique key is retried order by order
//! (so one bad order cannot sink the others); any order that does not
//! commit has its `stock_log` settled as `rolled_back` first and only then
//! its reservation given back (exactly once, by its `stock_log` id), and the
//! sold-out flags cleared. When the outcome cannot be learnt (DB down), the
//! caller gets 503 and the reconciler settles the row later — nobody is told
//! "bought" for an order that is not in the DB.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::deadline_hold::DeadlineHold;
use super::{payment, Context, ServiceError, ServiceResult};
use crate::cache::{Reservation, ReserveOutcome};
use crate::domain::{
    ItemId, Order, OrderDraft, OrderNo, PromoId, StockLogId, StockLogStatus, UserId,
};
use crate::mq::{Event, LocalTx, TxState};
use crate::store::{Deduction, StoreError};

/// An admitted order waiting for its batch.
pub struct Pending {
    pub user: UserId,
    pub promo: PromoId,
    pub item: ItemId,
    pub amount: i64,
    pub unit_price_cents: i64,
    pub reply: oneshot::Sender<ServiceResult<Order>>,
    /// Held when the order goes to its local transaction (see
    /// [`DeadlineHold`]).
    pub hold: DeadlineHold,
    /// The order's place among those admitted: given back once it is
    /// answered, not when its caller goes (an order of a caller cut off
    /// still takes room in the queue until a worker drops it).
    pub admitted: tokio::sync::OwnedSemaphorePermit,
}

/// The queue's sending side; cloned into the order service.
#[derive(Clone)]
pub struct WriteBehind {
    tx: mpsc::Sender<Pending>,
}

/// A reserved order and the caller waiting for it.
struct Reserved {
    draft: OrderDraft,
    reply: oneshot::Sender<ServiceResult<Order>>,
    hold: DeadlineHold,
    admitted: tokio::sync::OwnedSemaphorePermit,
}

impl WriteBehind {
    /// Creates the queue and starts `batch_workers` batch workers. They stop
    /// when every `WriteBehind` clone is dropped and the queue is drained.
    pub fn start(cx: Context) -> Self {
        let (tx, rx) = mpsc::channel(cx.config.order_queue_capacity);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..cx.config.batch_workers {
            let worker = Worker { cx: cx.clone() };
            let rx = rx.clone();
            tokio::spawn(async move { worker.run(rx).await });
        }
        WriteBehind { tx }
    }

    /// Queues an admitted order, never waiting for room: the order
    /// service's admission semaphore has the queue's capacity and each
    /// queued order holds its permit, so a full queue was refused there.
    pub fn submit(&self, pending: Pending) -> ServiceResult<()> {
        self.tx.try_send(pending).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ServiceError::RateLimited("the order queue is full; retry shortly")
            }
            mpsc::error::TrySendError::Closed(_) => {
                ServiceError::unavailable("the order pipeline stopped")
            }
        })
    }
}

struct Worker {
    cx: Context,
}

impl Worker {
    async fn run(self, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>) {
        let max = self.cx.config.batch_max;
        let linger = Duration::from_millis(self.cx.config.batch_linger_ms);
        loop {
            let batch = {
                let mut rx = rx.lock().await;
                let Some(first) = rx.recv().await else { return };
                let mut batch = Vec::with_capacity(max);
                batch.push(first);
                let deadline = tokio::time::Instant::now() + linger;
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(mpsc::error::TryRecvError::Disconnected) => break,
                        Err(mpsc::error::TryRecvError::Empty) => {
                            if linger.is_zero() {
                                break;
                            }
                            match tokio::time::timeout_at(deadline, rx.recv()).await {
                                Ok(Some(p)) => batch.push(p),
                                _ => break,
                            }
                        }
                    }
                }
                batch
            };
            metrics::histogram!("seckill_batch_size").record(batch.len() as f64);
            self.process(batch).await;
        }
    }

    async fn process(&self, batch: Vec<Pending>) {
        // A caller cut off while its order waited (its request's deadline,
        // or gone) was answered 503 and got its token back: nothing is
        // written for it. This also bounds how long after a promo's end
        // its orders can reach the DB (`Config::order_in_flight_bound`).
        let batch: Vec<Pending> = batch.into_iter().filter(|p| !p.reply.is_closed()).collect();
        if batch.is_empty() {
            return;
        }
        // The node id checked again where the ids are made: the lease may
        // have gone unconfirmed while the batch waited (`service::node_lease`).
        if !self.cx.ids.owns_node() {
            for p in batch {
                let _ = p.reply.send(Err(ServiceError::node_unowned()));
            }
            return;
        }
        let ports = &self.cx.ports;
        let now = crate::domain::stored_time(Utc::now());
        let drafts: Vec<OrderDraft> = batch
            .iter()
            .map(|p| {
                let id = self.cx.ids.next_id();
                OrderDraft {
                    stock_log_id: id,
                    order_no: OrderNo::new(now, id),
                    user_id: p.user,
                    item_id: p.item,
                    promo_id: p.promo,
                    amount: p.amount,
                    unit_price_cents: p.unit_price_cents,
                    created_at: now,
                }
            })
            .collect();
        // The journal first: a reservation is only ever taken under an
        // `init` row, so whatever happens after (a crash, a lost answer
        // from the ledger, a local transaction that never ran) leaves a row
        // that the check-back and the reconciler settle, giving the
        // reservation back. A reservation without its row could not be
        // found again. Bounded like the local transaction: a DB that does
        // not answer gets 503 here, nothing reserved.
        if let Err(e) = self.journal(&drafts).await {
            tracing::warn!(orders = drafts.len(), error = %e, "stock_log insert failed; nothing reserved");
            for p in batch {
                let _ = p.reply.send(Err(ServiceError::unavailable(
                    "the database is unavailable",
                )));
            }
            return;
        }

        let reservations: Vec<Reservation> = drafts
            .iter()
            .map(|d| Reservation {
                promo: d.promo_id,
                user: d.user_id,
                amount: d.amount,
                id: d.stock_log_id,
            })
            .collect();
        let started = Instant::now();
        let outcomes = match ports.ledger.reserve(&reservations).await {
            Ok(o) if o.len() == batch.len() => o,
            answer => {
                // Which reservations were taken is not known (the ledger's
                // answer was lost, or it failed part way): the journal rows
                // are rolled back and every one given back (a no-op for an
                // id never reserved).
                let cause = match answer {
                    Ok(_) => ServiceError::Internal("the ledger answered a different count".into()),
                    Err(e) => ServiceError::Unavailable {
                        context: "the stock ledger is unavailable",
                        source: Some(Box::new(e)),
                    },
                };
                tracing::warn!(orders = drafts.len(), error = %cause, "reservation failed; giving back whatever it took");
                let group = drafts
                    .into_iter()
                    .zip(batch)
                    .map(|(draft, p)| Reserved {
                        draft,
                        reply: p.reply,
                        hold: p.hold,
                        admitted: p.admitted,
                    })
                    .collect();
                self.abandon(group, cause).await;
                return;
            }
        };
        metrics::histogram!("seckill_reservation_seconds").record(started.elapsed().as_secs_f64());

        let mut reserved = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        // The places of orders not committed, kept until their rows are
        // rolled back and their reservations given back: a shutdown waiting
        // for no order left must not end before that.
        let mut places = Vec::new();
        for ((p, draft), outcome) in batch.into_iter().zip(drafts).zip(outcomes) {
            let answer = match outcome {
                ReserveOutcome::Reserved { remaining } => {
                    if remaining == 0 {
                        self.cx.sold_out.set(p.promo);
                    }
                    reserved.push(Reserved {
                        draft,
                        reply: p.reply,
                        hold: p.hold,
                        admitted: p.admitted,
                    });
                    continue;
                }
                ReserveOutcome::SoldOut => {
                    // Fewer units than asked; none left only when one was.
                    if p.amount == 1 {
                        self.cx.sold_out.set(p.promo);
                    }
                    ServiceError::SoldOut
                }
                ReserveOutcome::AlreadyBought => ServiceError::AlreadyBought,
                ReserveOutcome::OverLimit => {
                    ServiceError::Invalid("amount is over this promo's per-user limit".into())
                }
                // Published (the order path checked) yet not loaded: the
                // cache lost it. Rebuilt from the DB; 503 until then.
                ReserveOutcome::NotWarmed => self.cx.recovery.reload(&self.cx, p.promo),
            };
            let _ = p.reply.send(Err(answer));
            refused.push(draft);
            places.push(p.admitted);
        }
        // A caller cut off meanwhile (journal and reservation took the rest
        // of its deadline) was answered 503: its order is given back rather
        // than committed behind that answer. The others are held: their
        // deadline waits for the commit's outcome from here.
        let (reserved, gone): (Vec<Reserved>, Vec<Reserved>) = reserved
            .into_iter()
            .partition(|r| r.hold.hold() && !r.reply.is_closed());
        for r in gone {
            refused.push(r.draft);
            places.push(r.admitted);
        }
        futures::join!(
            async {
                if !reserved.is_empty() {
                    self.commit(reserved).await;
                }
            },
            discard(&self.cx, &refused)
        );
        drop(places);
    }

    /// Writes the batch's `init` rows within the local transaction's
    /// deadline. Past it the batch goes on without them (503, nothing
    /// reserved), and rows the insert still writes afterwards (store calls
    /// run to their end) are rolled back as soon as it is done, rather than
    /// lying `init` (counted unsettled) until the reconciler's turn.
    async fn journal(&self, drafts: &[OrderDraft]) -> Result<(), String> {
        let deadline = Duration::from_millis(self.cx.config.local_tx_timeout_ms);
        let store = self.cx.ports.store.clone();
        let rows = drafts.to_vec();
        // Awaited here; only when it overruns does it move to a task of its
        // own (the store runs it to its end anyway) to be watched there.
        let mut insert = Box::pin(async move {
            let r = store.insert_stock_logs(&rows).await;
            (r, rows)
        });
        match tokio::time::timeout(deadline, &mut insert).await {
            Ok((r, _)) => r.map_err(|e| e.to_string()),
            Err(_) => {
                let cx = self.cx.clone();
                self.cx.background.spawn(async move {
                    if let (Ok(()), rows) = insert.await {
                        discard(&cx, &rows).await;
                    }
                });
                Err(format!("no answer within {} ms", deadline.as_millis()))
            }
        }
    }

    /// Orders whose reservation failed without a clear answer (the
    /// ledger's answer lost, or one promo's script failed after another's
    /// ran): no half message was sent, so no local transaction can commit
    /// them. Every id is given back first (a no-op for one never reserved)
    /// and only the rows given back are rolled back; a row whose give-back
    /// failed stays `init`, for the reconciler to roll back and give back
    /// later.
    async fn abandon(&self, group: Vec<Reserved>, cause: ServiceError) {
        let ledger = &self.cx.ports.ledger;
        let given_back = futures::future::join_all(group.iter().map(|r| async move {
            let d = &r.draft;
            match ledger.release(d.promo_id, d.stock_log_id).await {
                Ok(units) => {
                    if units > 0 {
                        self.cx.sold_out.clear(d.promo_id);
                    }
                    Some(d.clone())
                }
                Err(e) => {
                    tracing::error!(promo_id = %d.promo_id, stock_log_id = %d.stock_log_id, error = %e,
                        "reservation not given back now; the reconciler will");
                    None
                }
            }
        }))
        .await;
        let given_back: Vec<OrderDraft> = given_back.into_iter().flatten().collect();
        discard(&self.cx, &given_back).await;
        for r in group {
            let _ = r.reply.send(Err(clone_cause(&cause)));
        }
    }

    /// Sends one transactional message for `group` with the local
    /// transaction committing all its orders, and answers each caller.
    fn commit(&self, group: Vec<Reserved>) -> futures::future::BoxFuture<'_, ()> {
        async move {
            let drafts: Vec<OrderDraft> = group.iter().map(|r| r.draft.clone()).collect();
            let event = Event::StockDeduct {
                v: 1,
                promo_id: drafts[0].promo_id,
                entries: drafts.iter().map(Deduction::from).collect(),
            };
            let failure: Arc<Mutex<Option<StoreError>>> = Arc::default();
            let local: LocalTx = {
                let store = self.cx.ports.store.clone();
                let failure = failure.clone();
                let timeout = Duration::from_millis(self.cx.config.local_tx_timeout_ms);
                Box::new(move || {
                    async move {
                        let started = Instant::now();
                        let state = match tokio::time::timeout(timeout, store.commit_orders(&drafts)).await {
                            Ok(Ok(())) => TxState::Commit,
                            Ok(Err(e)) => {
                                *failure.lock() = Some(e);
                                TxState::Rollback
                            }
                            Err(_) => TxState::Unknown,
                        };
                        metrics::histogram!("seckill_local_tx_seconds", "outcome" => state.as_str())
                            .record(started.elapsed().as_secs_f64());
                        state
                    }
                    .boxed()
                })
            };
            let sent = self.cx.ports.bus.send_in_transaction(event, local).await;
            let failure = failure.lock().take();
            match sent {
                Ok(TxState::Commit) => {
                    // Scheduled while the orders still hold their places: a
                    // shutdown that finds none left finds the task too.
                    let nos: Vec<OrderNo> = group.iter().map(|r| r.draft.order_no.clone()).collect();
                    payment::schedule_soon(&self.cx, nos);
                    for r in group {
                        let _ = r.reply.send(Ok(r.draft.to_order()));
                    }
                }
                Ok(TxState::Rollback) if group.len() > 1 && matches!(failure, Some(StoreError::Conflict(_))) => {
                    // One order broke a unique key (e.g. a user's second order
                    // after the ledger lost its buyers): commit the others
                    // one by one.
                    for r in group {
                        self.commit(vec![r]).await;
                    }
                }
                Ok(state) => {
                    let cause = match failure {
                        Some(StoreError::Conflict("user_promo")) => ServiceError::AlreadyBought,
                        Some(e) => ServiceError::from(e),
                        None => ServiceError::unavailable("the order could not be committed in time"),
                    };
                    tracing::warn!(orders = group.len(), state = state.as_str(), error = %cause, "local transaction did not commit");
                    self.settle(group, cause).await;
                }
                Err(e) => {
                    tracing::warn!(orders = group.len(), error = %e, "half message not sent");
                    self.settle(group, ServiceError::from(e)).await;
                }
            }
        }
        .boxed()
    }

    /// Settles orders whose commit did not happen (or whose outcome is not
    /// known): `init` rows become `rolled_back`, and the DB's answer decides
    /// each one — committed after all (a late commit won): success; rolled
    /// back: the reservation is given back and the caller gets `cause`.
    async fn settle(&self, group: Vec<Reserved>, cause: ServiceError) {
        let ids: Vec<StockLogId> = group.iter().map(|r| r.draft.stock_log_id).collect();
        let statuses = match self.cx.ports.store.roll_back_stock_logs(&ids).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(orders = ids.len(), error = %e, "cannot settle stock_log now; the reconciler will");
                for r in group {
                    let _ = r.reply.send(Err(ServiceError::unavailable(
                        "the order's outcome is not known yet; check your orders shortly",
                    )));
                }
                return;
            }
        };
        let mut committed = Vec::new();
        let mut rolled_back = Vec::new();
        // The places of orders answered here, kept until their payment
        // time-outs are scheduled (below).
        let mut places = Vec::new();
        for r in group {
            let status = statuses
                .iter()
                .find(|(id, _)| *id == r.draft.stock_log_id)
                .map(|(_, s)| *s);
            match status {
                Some(StockLogStatus::Committed) => {
                    committed.push(r.draft.order_no.clone());
                    let _ = r.reply.send(Ok(r.draft.to_order()));
                    places.push(r.admitted);
                }
                Some(StockLogStatus::Init) => {
                    let _ = r.reply.send(Err(ServiceError::unavailable(
                        "the order's outcome is not known yet",
                    )));
                }
                Some(StockLogStatus::RolledBack) | None => rolled_back.push(r),
            }
        }
        // Given back before the answer (a buyer retrying at once finds the
        // unit and their limit back), all at once: a slow ledger costs one
        // wait, not one per order.
        futures::future::join_all(
            rolled_back
                .iter()
                .map(|r| give_back(&self.cx, r.draft.promo_id, r.draft.stock_log_id)),
        )
        .await;
        for r in rolled_back {
            let _ = r.reply.send(Err(clone_cause(&cause)));
        }
        payment::schedule_soon(&self.cx, committed);
        drop(places);
    }
}

/// Gives back the reservation of a row rolled back for good: `Some(units)`
/// that came back (the sold-out flag cleared when any did; 0 when the
/// ledger held none). The gate is not reopened here: a buyer answered 503
/// keeps the gate's permit through the token given back to it, and a retry
/// failing again must not add permits every time; the reconciler, which
/// gives back what nobody is answered for any more, reopens it. When the
/// ledger fails, the reservation is stranded — counted, logged, `None` —
/// and the reconciler's sweep of reservation records gives it back.
pub(crate) async fn give_back(cx: &Context, promo: PromoId, id: StockLogId) -> Option<i64> {
    match cx.ports.ledger.release(promo, id).await {
        Ok(units) => {
            if units > 0 {
                cx.sold_out.clear(promo);
            }
            Some(units)
        }
        Err(e) => {
            metrics::counter!("seckill_reservations_stranded_total").increment(1);
            tracing::error!(promo_id = %promo, stock_log_id = %id, error = %e,
                "rolled-back reservation not given back (the cache failed); the reconciler's sweep gives it back");
            None
        }
    }
}

/// Rolls back the journal rows of orders that reserved nothing here (the
/// ledger refused them, or their reservation was given back already), then
/// gives back each id: a no-op, unless a ledger rebuild read a row while it
/// was still `init` and took it for a reservation (a give-back that fails
/// is left to the reconciler's sweep of reservation records). Left `init`
/// when the DB does not answer: the reconciler settles them.
async fn discard(cx: &Context, drafts: &[OrderDraft]) {
    if drafts.is_empty() {
        return;
    }
    let ids: Vec<StockLogId> = drafts.iter().map(|d| d.stock_log_id).collect();
    let statuses = match cx.ports.store.roll_back_stock_logs(&ids).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(orders = ids.len(), error = %e, "stock_log not rolled back now; the reconciler will");
            return;
        }
    };
    let rolled_back = |d: &&OrderDraft| {
        statuses
            .iter()
            .any(|(id, s)| *id == d.stock_log_id && *s == StockLogStatus::RolledBack)
    };
    let releases = drafts
        .iter()
        .filter(rolled_back)
        .map(|d| give_back(cx, d.promo_id, d.stock_log_id));
    futures::future::join_all(releases).await;
}

fn clone_cause(e: &ServiceError) -> ServiceError {
    match e {
        ServiceError::AlreadyBought => ServiceError::AlreadyBought,
        ServiceError::SoldOut => ServiceError::SoldOut,
        ServiceError::Unavailable { context, .. } => ServiceError::unavailable(context),
        _ => ServiceError::unavailable("the order could not be committed"),
    }
}
