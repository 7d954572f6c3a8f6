//! A store whose calls run to completion even when their caller stops
//! waiting.
//!
//! sqlx's MySQL connection is not safe to cancel in the middle of a call:
//! a future dropped while its BEGIN is in flight hands the connection back
//! to the pool with the server's transaction open and nobody to end it (its
//! later reads see an old snapshot: a buyer's committed order "not found";
//! its autocommit writes wait for a commit that never comes), and one
//! dropped between queueing a statement and sending it leaves the
//! connection waiting for an answer that never comes, so the pool loses
//! that connection for good. Callers here do drop store calls: a request
//! past its deadline, a client that hung up, the order path's bounded
//! local transaction. Run in a task of its own, a store call always
//! finishes — committed or rolled back, the connection clean — whoever
//! still waits for it. (The drill found it: a 5,000-client `db-optimistic`
//! crowd with thousands of time-outs left buyers unable to find 6 of their
//! accepted orders.)
//!
//! A write's start is also where a request passes its point of no return:
//! each write asks the `may_write` check given here first (the app's holds
//! the request against its deadline, `service::deadline_hold`, so the
//! deadline then waits for the write's outcome). A refusal
//! (`StoreError::CutOff`) is the safeguard for a request already cut off;
//! the deadline layer drops such a request's work, so it does not normally
//! get this far.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::task::TaskTracker;

use super::*;

/// Wraps a store so that each of its calls runs in a task of its own.
pub struct Detached {
    store: Arc<dyn Store>,
    tasks: TaskTracker,
    may_write: fn() -> bool,
}

impl Detached {
    /// `store`, its calls each in a task of their own.
    pub fn wrap(store: Arc<dyn Store>) -> Arc<dyn Store> {
        Self::tracked(store, TaskTracker::new())
    }

    /// `store`, its calls each in a task of their own tracked by `tasks`:
    /// a shutdown waits on it for the calls nobody waits for any more (a
    /// cut-off request's write) before the process ends.
    pub fn tracked(store: Arc<dyn Store>, tasks: TaskTracker) -> Arc<dyn Store> {
        Self::gated(store, tasks, || true)
    }

    /// [`tracked`](Self::tracked), each write asking `may_write` before it
    /// starts (in the caller's task): false refuses it, nothing written.
    pub fn gated(
        store: Arc<dyn Store>,
        tasks: TaskTracker,
        may_write: fn() -> bool,
    ) -> Arc<dyn Store> {
        Arc::new(Detached {
            store,
            tasks,
            may_write,
        })
    }
}

/// Runs `work` in a task of its own and waits for it; dropping the wait
/// leaves the work running to its end.
async fn detached<T: Send + 'static>(
    tasks: &TaskTracker,
    work: impl Future<Output = StoreResult<T>> + Send + 'static,
) -> StoreResult<T> {
    match tasks.spawn(work).await {
        Ok(answer) => answer,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down.
        Err(_) => Err(StoreError::Db(sqlx::Error::PoolClosed)),
    }
}

/// `fn name(&self, arg: Type, ...)` forwarded through [`detached`]; each
/// argument is given as `name: &Borrowed => Owned` (cloned into the task)
/// or `name: Copy`. Every call asks `may_write` first, but one marked
/// `#[ungated]`: a read, or a write that settles (a give-back, a deduction)
/// and must never be refused. A call added later is gated unless said
/// otherwise.
macro_rules! forward {
    (impl $trait:ident { $($(#[$ungated:ident])? fn $name:ident($($arg:ident: $ty:ty $(=> $owned:ty)?),*) -> $out:ty;)* }) => {
        #[async_trait]
        impl $trait for Detached {
            $(
                async fn $name(&self, $($arg: $ty),*) -> StoreResult<$out> {
                    forward!(@gate self $($ungated)?);
                    let store = self.store.clone();
                    $(let $arg = forward!(@own $arg $(=> $owned)?);)*
                    detached(&self.tasks, async move { store.$name($(forward!(@pass $arg $(=> $owned)?)),*).await }).await
                }
            )*
        }
    };
    (@gate $self:ident) => {
        if !($self.may_write)() {
            return Err(StoreError::CutOff);
        }
    };
    (@gate $self:ident ungated) => {};
    (@own $arg:ident => $owned:ty) => { $arg.to_owned() };
    (@own $arg:ident) => { $arg };
    (@pass $arg:ident => $owned:ty) => { &$arg };
    (@pass $arg:ident) => { $arg };
}

forward! {
    impl UserStore {
        fn create_user(user: &NewUser => NewUser) -> User;
        fn create_users(users: &[NewUser] => Vec<NewUser>) -> u64;
        #[ungated] fn user_by_phone(phone: &str => String) -> Option<User>;
        #[ungated] fn user_by_id(id: UserId) -> Option<User>;
    }
}

forward! {
    impl CatalogStore {
        fn create_item(item: &NewItem => NewItem) -> Item;
        fn update_item(id: ItemId, patch: &ItemPatch => ItemPatch) -> Item;
        #[ungated] fn item(id: ItemId) -> Option<Item>;
        #[ungated] fn items(offset: u32, limit: u32) -> Vec<Item>;
        fn create_promo(promo: &NewPromo => NewPromo) -> Promo;
        #[ungated] fn promo(id: PromoId) -> Option<Promo>;
        #[ungated] fn promos(before: Option<PromoId>, limit: u32) -> Vec<Promo>;
        #[ungated] fn published_promos_ending_after(ended_after: DateTime<Utc>, after: PromoId, limit: u32) -> Vec<Promo>;
        #[ungated] fn promos_of_item(item: ItemId) -> Vec<Promo>;
        #[ungated] fn promos_of_items(items: &[ItemId] => Vec<ItemId>) -> Vec<Promo>;
        fn publish_promo(id: PromoId, baseline: PromoBaseline, others_settled_by: DateTime<Utc>) -> bool;
        fn end_promo(id: PromoId, at: DateTime<Utc>) -> Option<Promo>;
    }
}

forward! {
    impl OrderStore {
        fn insert_stock_logs(drafts: &[OrderDraft] => Vec<OrderDraft>) -> ();
        fn commit_orders(drafts: &[OrderDraft] => Vec<OrderDraft>) -> ();
        #[ungated] fn roll_back_stock_logs(ids: &[StockLogId] => Vec<StockLogId>) -> Vec<(StockLogId, StockLogStatus)>;
        #[ungated] fn stock_log_statuses(ids: &[StockLogId] => Vec<StockLogId>) -> Vec<(StockLogId, StockLogStatus)>;
        #[ungated] fn stale_stock_logs(before: DateTime<Utc>, limit: u32) -> Vec<(StockLogId, PromoId)>;
        #[ungated] fn undeducted_stock_logs(since: DateTime<Utc>, before: DateTime<Utc>, limit: u32) -> Vec<Deduction>;
        #[ungated] fn unsettled_units_of_item(item: ItemId) -> i64;
        #[ungated] fn unpaid_orders_of_item(item: ItemId) -> (i64, Option<DateTime<Utc>>);
        #[ungated] fn cancelled_order_count(promo: PromoId) -> u64;
        #[ungated] fn cancelled_orders(promo: PromoId, after: &str => String, limit: u32) -> Vec<(OrderNo, StockLogId, i64)>;
        #[ungated] fn sale_journal(promo: PromoId, item: ItemId) -> SaleJournal;
        #[ungated] fn unpaid_orders(before: DateTime<Utc>, limit: u32) -> Vec<OrderNo>;
        #[ungated] fn apply_deductions(entries: &[Deduction] => Vec<Deduction>) -> DeductionReport;
        #[ungated] fn order(no: &OrderNo => OrderNo) -> Option<Order>;
        #[ungated] fn orders_of_user(user: UserId, offset: u32, limit: u32) -> Vec<Order>;
        #[ungated] fn has_order(user: UserId, promo: PromoId) -> bool;
        fn pay_order(no: &OrderNo => OrderNo) -> Order;
        fn cancel_order(no: &OrderNo => OrderNo) -> (Order, bool);
        #[ungated] fn promo_totals(promo: PromoId) -> PromoTotals;
        fn place_order_in_db(draft: &OrderDraft => OrderDraft, optimistic: bool, cas_retries: u32, commit_by: std::time::Instant) -> Option<Order>;
    }
}

forward! {
    impl Store {
        #[ungated] fn ping() -> ();
    }
}
