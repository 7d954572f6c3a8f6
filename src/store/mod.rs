//! The repository ports: the database is the source of truth for users,
//! items, stock, promos, orders and the `stock_log` journal.
//!
//! Adapters: `sqlite` (the embedded default) and `mysql` (MariaDB/MySQL).
//! Every multi-row change a method describes happens in one DB transaction
//! inside the adapter; callers never see a transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    Item, ItemId, ItemPatch, NewItem, NewPromo, NewUser, Order, OrderDraft, OrderNo, OrderStatus,
    Promo, PromoBaseline, PromoId, SaleJournal, StockLogId, StockLogStatus, User, UserId,
};

pub mod detached;
pub mod mysql;
mod sql;
pub mod sqlite;

/// A store failure. `Conflict` names the unique constraint that refused the
/// write; everything else means the database could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unique constraint `{0}` refused the write")]
    Conflict(&'static str),
    #[error("not found")]
    NotFound,
    #[error("database error")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A transaction not ready to commit by its deadline, rolled back.
    #[error("the transaction was not ready to commit before its deadline; rolled back")]
    TooLate,
    /// A write refused before it started: the request it was for was cut
    /// off by its deadline (nothing written).
    #[error("the request's deadline passed before the write started; nothing written")]
    CutOff,
    /// The connection was lost as a transaction committed: it may have
    /// committed or not (the answer, not the commit, may be what was lost).
    #[error("the database's answer to the commit was lost; its outcome is not known")]
    CommitUnanswered(#[source] sqlx::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The bounds of an adapter's connection pool, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Connections in the pool (on SQLite the reading pool: writes have one
    /// connection more, of their own).
    pub max_connections: u32,
    /// The longest wait for a pooled connection; past it the call fails
    /// (`Db`: the HTTP edge answers 503, nothing written).
    pub acquire_timeout: std::time::Duration,
    /// The longest wait of one statement for a lock another transaction
    /// holds: MySQL's row lock (`innodb_lock_wait_timeout`, whole seconds,
    /// at least one; the order's local-transaction bound), SQLite's busy
    /// time-out on the database's one write lock while another process
    /// holds it (this process's writes take turns on one connection, bounded
    /// by `acquire_timeout`). SQLite does not wait to turn a transaction
    /// that has read into a writer, so the ones that read first take the
    /// write lock as they begin (`BEGIN IMMEDIATE`).
    pub lock_wait: std::time::Duration,
    /// How many times a write transaction picked as a deadlock's victim is
    /// run again (`sql::retry_deadlocks`).
    pub deadlock_retries: u32,
}

/// Users and their credentials.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Inserts a user. `Conflict("phone")` when the phone is taken.
    async fn create_user(&self, user: &NewUser) -> StoreResult<User>;
    /// Inserts many users in one transaction, skipping phones already taken.
    /// Returns how many were inserted.
    async fn create_users(&self, users: &[NewUser]) -> StoreResult<u64>;
    async fn user_by_phone(&self, phone: &str) -> StoreResult<Option<User>>;
    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>>;
}

/// Items, their stock row and promos.
#[async_trait]
pub trait CatalogStore: Send + Sync {
    /// Inserts an item and its `item_stock` row together.
    async fn create_item(&self, item: &NewItem) -> StoreResult<Item>;
    /// Applies a patch; `NotFound` for an unknown id.
    async fn update_item(&self, id: ItemId, patch: &ItemPatch) -> StoreResult<Item>;
    async fn item(&self, id: ItemId) -> StoreResult<Option<Item>>;
    /// A page of the items, most sales first (ties by id): `limit` from
    /// the `offset`-th on.
    async fn items(&self, offset: u32, limit: u32) -> StoreResult<Vec<Item>>;
    async fn create_promo(&self, promo: &NewPromo) -> StoreResult<Promo>;
    async fn promo(&self, id: PromoId) -> StoreResult<Option<Promo>>;
    /// Promos newest first: at most `limit` of those older than `before`
    /// (all of them without it).
    async fn promos(&self, before: Option<PromoId>, limit: u32) -> StoreResult<Vec<Promo>>;
    /// Published promos that end after `ended_after`, by id from past
    /// `after` on, at most `limit` (the reconciler's pages: every sale it
    /// still keeps, however many promos came after).
    async fn published_promos_ending_after(
        &self,
        ended_after: DateTime<Utc>,
        after: PromoId,
        limit: u32,
    ) -> StoreResult<Vec<Promo>>;
    async fn promos_of_item(&self, item: ItemId) -> StoreResult<Vec<Promo>>;
    /// The promos of each of `items` (a page of the item list), by start.
    async fn promos_of_items(&self, items: &[ItemId]) -> StoreResult<Vec<Promo>>;
    /// Marks a promo published, recording what its ledger was warmed with.
    /// Returns false when it already was (the first baseline stays);
    /// `Conflict` when another promo of its item is published and ends
    /// after `others_settled_by` (now, less the time an order may take to
    /// reach the DB): checked and written with the item's row locked, so
    /// two publishes racing past the callers' own checks (a lease lost
    /// with the cache) cannot both win.
    async fn publish_promo(
        &self,
        id: PromoId,
        baseline: PromoBaseline,
        others_settled_by: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Ends a promo at `at` if it would end later; one not started yet
    /// starts then too (it never sold). Returns the promo as it stands
    /// after (as it was when it ended earlier); `None`: no such promo.
    async fn end_promo(&self, id: PromoId, at: DateTime<Utc>) -> StoreResult<Option<Promo>>;
}

/// Totals of one promo, for the admin's stats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromoTotals {
    /// Units in orders that are not cancelled.
    pub sold: i64,
    /// Orders that are not cancelled.
    pub orders: i64,
    /// The most units one buyer holds in orders that are not cancelled
    /// (0 without orders): what the per-user limit bounds.
    pub max_units_per_buyer: i64,
    pub stock_log_init: i64,
    pub stock_log_committed: i64,
    pub stock_log_rolled_back: i64,
}

/// What the stock-deduction consumer did with a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeductionReport {
    /// Entries deducted now.
    pub applied: u64,
    /// Entries already deducted before (a redelivery).
    pub duplicates: u64,
    /// Entries whose `stock_log` is not committed (rolled back or unknown):
    /// nothing to deduct.
    pub skipped: u64,
    /// Entries the conditional update refused (DB stock lower than the
    /// ledger believed): recorded, logged, never applied twice.
    pub insufficient: u64,
}

/// One stock deduction a committed order asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deduction {
    pub stock_log_id: StockLogId,
    pub item_id: ItemId,
    pub amount: i64,
}

impl From<&OrderDraft> for Deduction {
    /// The deduction a committed draft asks for.
    fn from(d: &OrderDraft) -> Self {
        Deduction {
            stock_log_id: d.stock_log_id,
            item_id: d.item_id,
            amount: d.amount,
        }
    }
}

/// Orders and the `stock_log` journal: the order path's database side.
#[async_trait]
pub trait OrderStore: Send + Sync {
    /// Journals reservations as `init` rows, all or none.
    async fn insert_stock_logs(&self, drafts: &[OrderDraft]) -> StoreResult<()>;
    /// The local transaction: inserts the orders, adds their units to the
    /// items' sales and flips their `stock_log` rows from `init` to
    /// `committed` — one DB transaction. Fails (and changes nothing) when any
    /// row is no longer `init` or a unique key refuses an order
    /// (`Conflict("user_promo")` for a second order of a user in a promo).
    async fn commit_orders(&self, drafts: &[OrderDraft]) -> StoreResult<()>;
    /// Settles undecided rows as rolled back: `init` → `rolled_back`. Returns
    /// the status of every id afterwards (absent ids are left out), so a
    /// caller racing a late commit learns which side won.
    async fn roll_back_stock_logs(
        &self,
        ids: &[StockLogId],
    ) -> StoreResult<Vec<(StockLogId, StockLogStatus)>>;
    async fn stock_log_statuses(
        &self,
        ids: &[StockLogId],
    ) -> StoreResult<Vec<(StockLogId, StockLogStatus)>>;
    /// `init` rows older than `before`, oldest first (for the reconciler).
    async fn stale_stock_logs(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<(StockLogId, PromoId)>>;
    /// Committed rows last written in `since..before` whose stock was never
    /// deducted (a deduction message lost with a crashed in-process bus, or
    /// parked by a broker), oldest first: `stock_log` is the outbox the
    /// reconciler replays. Read by an index on (status, updated_at): a
    /// pass reads the rows since its last look, not every row of every
    /// sale so far.
    async fn undeducted_stock_logs(
        &self,
        since: DateTime<Utc>,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Deduction>>;
    /// Units of an item's promos not yet settled in its DB stock: `init`
    /// rows, and committed rows whose deduction has not been applied. A new
    /// promo of the item must not be warmed from the DB stock until this is 0.
    async fn unsettled_units_of_item(&self, item: ItemId) -> StoreResult<i64>;
    /// Orders of an item's promos still `pending_payment`: how many, and
    /// when the newest was placed. A cancellation gives its units back to
    /// its own promo's ledger and to the item's DB stock, so a new promo of
    /// the item must not be warmed while any can still be cancelled.
    async fn unpaid_orders_of_item(
        &self,
        item: ItemId,
    ) -> StoreResult<(i64, Option<DateTime<Utc>>)>;
    /// Everything a rebuilt ledger needs about a promo's sale, read in one
    /// DB transaction (see [`SaleJournal`]).
    async fn sale_journal(&self, promo: PromoId, item: ItemId) -> StoreResult<SaleJournal>;
    /// How many of a promo's orders are cancelled (a range of the
    /// `(promo_id, status)` index): the reconciler reads them one by one
    /// only when the ledger holds fewer as given back.
    async fn cancelled_order_count(&self, promo: PromoId) -> StoreResult<u64>;
    /// A promo's cancelled orders whose order number comes after `after`
    /// ("" for the first page), by order number: up to `limit` of (order
    /// number, journal id, units). The reconciler pages through them to
    /// find a cancellation whose units the ledger never got back. (By order
    /// number, the table's key: on MySQL a page is a range of the
    /// `(promo_id, status)` index read in order, no sort.)
    async fn cancelled_orders(
        &self,
        promo: PromoId,
        after: &str,
        limit: u32,
    ) -> StoreResult<Vec<(OrderNo, StockLogId, i64)>>;
    /// Orders still `pending_payment` that were placed before `before`,
    /// oldest first (the payment time-out's sweep).
    async fn unpaid_orders(&self, before: DateTime<Utc>, limit: u32) -> StoreResult<Vec<OrderNo>>;
    /// Deducts DB stock for committed entries, each at most once ever:
    /// `UPDATE item_stock SET stock = stock - n WHERE item_id = ? AND stock >= n`
    /// with the entry's id recorded in the same transaction.
    async fn apply_deductions(&self, entries: &[Deduction]) -> StoreResult<DeductionReport>;
    async fn order(&self, no: &OrderNo) -> StoreResult<Option<Order>>;
    /// A user's orders, newest first (order number breaking ties), `limit`
    /// of them after the first `offset`.
    async fn orders_of_user(
        &self,
        user: UserId,
        offset: u32,
        limit: u32,
    ) -> StoreResult<Vec<Order>>;
    /// Whether the user has an order of the promo, in any state (one order
    /// per buyer and promo: a cancelled one counts too).
    async fn has_order(&self, user: UserId, promo: PromoId) -> StoreResult<bool>;
    /// `pending_payment` → `paid`. Returns the order as it stands after.
    async fn pay_order(&self, no: &OrderNo) -> StoreResult<Order>;
    /// `pending_payment` → `cancelled`, giving the units back to the item's
    /// DB stock and taking them off its sales, in one transaction. Returns
    /// the order as it stands after and whether this call cancelled it.
    async fn cancel_order(&self, no: &OrderNo) -> StoreResult<(Order, bool)>;
    async fn promo_totals(&self, promo: PromoId) -> StoreResult<PromoTotals>;
    /// The pure-database strategies' order: conditional stock update
    /// (`db-lock`) or version compare-and-set (`db-optimistic`, up to
    /// `cas_retries` attempts) in the same transaction as the order insert and
    /// sales. `Ok(None)` when stock is short. Starts its COMMIT only before
    /// `commit_by`; reaching that point later, it rolls back and answers
    /// `TooLate`. The wait for a pooled connection (on SQLite, for this
    /// process's one writing connection) ends by `commit_by`, `TooLate`, or
    /// at the pool's acquire time-out when that comes first, `Db`; a wait
    /// for a lock ends at the store's lock-wait bound (MySQL: a row lock, the
    /// local transaction's bound, per connection; SQLite: another process's
    /// write lock, its busy time-out), `TooLate`. No COMMIT starts after
    /// `commit_by`, whenever the answer comes.
    async fn place_order_in_db(
        &self,
        draft: &OrderDraft,
        optimistic: bool,
        cas_retries: u32,
        commit_by: std::time::Instant,
    ) -> StoreResult<Option<Order>>;
}

/// The whole database: every role, plus a liveness probe.
#[async_trait]
pub trait Store: UserStore + CatalogStore + OrderStore {
    /// Ok when the database answers a trivial query.
    async fn ping(&self) -> StoreResult<()>;
}

/// Parses an `order_info.status` column.
pub fn order_status_of(s: &str) -> StoreResult<OrderStatus> {
    OrderStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("order status {s:?}")))
}

/// Parses a `stock_log.status` column.
pub fn stock_log_status_of(s: &str) -> StoreResult<StockLogStatus> {
    StockLogStatus::parse(s).ok_or_else(|| StoreError::Corrupt(format!("stock_log status {s:?}")))
}
