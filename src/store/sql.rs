//! The SQL shared by the SQLite and MySQL stores. The statements are
//! portable (`?` placeholders, no `RETURNING`); what differs per backend —
//! the row and connection types, `INSERT OR IGNORE` vs `INSERT IGNORE`, how
//! a transaction that reads before it writes begins (`BEGIN IMMEDIATE` on
//! SQLite, which does not wait to turn a reader into a writer) and reads
//! the row it will change (`FOR UPDATE` on MySQL), how the new row's id is
//! read — is passed to [`sql_store!`], which writes the port
//! implementations for one adapter type.
//!
//! Statements whose text depends on a batch's size (multi-row inserts, `IN`
//! lists) are prepared for their one run and closed after it
//! ([`build_once`]). Cached, every size seen stayed prepared on every
//! pooled connection for the connection's life: after two 10,000-buyer
//! crowds one instance held 1,599 prepared statements in MariaDB (179 now),
//! and the server's `max_prepared_stmt_count` (16,382 by default) is shared
//! by every instance. The fixed statements stay cached.

use super::StoreError;

/// Builds a batch-sized statement (every `QueryBuilder` here is one) that is
/// prepared for its one run and closed, not cached per connection: why, in
/// the module doc.
pub(crate) fn build_once<'q, 'args, DB: sqlx::Database + sqlx::database::HasStatementCache>(
    qb: &'q mut sqlx::QueryBuilder<'args, DB>,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'args>> {
    qb.build().persistent(false)
}

/// Maps a unique violation to the constraint it names; other errors pass.
pub(crate) fn map_unique(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        if db.is_unique_violation() {
            let msg = db.message();
            let name = db.constraint().unwrap_or(msg);
            let which = if name.contains("user_promo")
                || (msg.contains("user_id") && msg.contains("promo_id"))
            {
                "user_promo"
            } else if name.contains("phone") {
                "phone"
            } else if name.contains("stock_log") || msg.contains("stock_log") {
                "stock_log"
            } else {
                "unique"
            };
            return StoreError::Conflict(which);
        }
    }
    StoreError::Db(e)
}

/// A wait for a row lock given up by the database (MySQL's
/// `innodb_lock_wait_timeout`, error 1205; SQLite's busy time-out) is a
/// transaction that could not be ready in time: `TooLate`, like one past
/// its deadline. Other errors pass.
pub(crate) fn map_lock_wait(e: sqlx::Error) -> StoreError {
    let mysql_lock_wait = match &e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|m| m.number() == 1205),
        _ => false,
    };
    // SQLITE_BUSY and SQLITE_BUSY_TIMEOUT: the busy time-out spent.
    // (SQLITE_BUSY_SNAPSHOT, 517, comes at once: a snapshot another writer
    // overtook, not a wait.)
    let sqlite_busy = sqlite_code(&e).is_some_and(|code| code == 5 || code == 773);
    if mysql_lock_wait || sqlite_busy {
        return StoreError::TooLate;
    }
    StoreError::Db(e)
}

/// Whether the database chose this transaction as a deadlock's victim
/// (MySQL's error 1213): it was rolled back whole, nothing of it written,
/// and running it again is the answer (the other transaction holds on).
pub(crate) fn is_deadlock(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|m| m.number() == 1213),
        _ => false,
    }
}

/// Runs a write transaction, and again — up to `retries` times, a few
/// milliseconds apart — while the database picks it as a deadlock's
/// victim. Two transactions locking the same rows in opposite orders (the
/// store locks its rows in id order; another program on the database, a
/// unique index's gap locks, need not) otherwise fail a buyer's order or a
/// batch of them over a wait that the retry no longer meets.
pub(crate) async fn retry_deadlocks<T, F>(
    retries: u32,
    what: &'static str,
    mut run: impl FnMut() -> F,
) -> Result<T, StoreError>
where
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut retried = 0;
    loop {
        match run().await {
            Err(StoreError::Db(e)) if retried < retries && is_deadlock(&e) => {
                retried += 1;
                metrics::counter!("seckill_db_deadlock_retries_total", "write" => what)
                    .increment(1);
                tracing::warn!(
                    write = what,
                    retried,
                    "deadlock victim, rolled back; running it again"
                );
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(retried) * 5)).await;
            }
            other => return other,
        }
    }
}

/// A COMMIT's error: the connection lost (an I/O error, a broken packet)
/// leaves its outcome unknown — the server may have committed before the
/// answer was lost; any other error is the database refusing it.
pub(crate) fn commit_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => StoreError::CommitUnanswered(e),
        e => StoreError::Db(e),
    }
}

/// SQLite's (extended) result code of a failed statement.
fn sqlite_code(e: &sqlx::Error) -> Option<i32> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .and_then(|s| sqlx::error::DatabaseError::code(s)?.parse::<i32>().ok())
}

pub(crate) const ITEM_COLUMNS: &str =
    "i.id, i.title, i.price_cents, i.description, i.image_url, i.sales, \
     i.updated_at, s.stock FROM item i JOIN item_stock s ON s.item_id = i.id";

pub(crate) const PROMO_COLUMNS: &str =
    "id, item_id, name, price_cents, start_at, end_at, published, warm_stock, warm_sales, strategy \
     FROM promo";

/// The conditional deduction (the consumer's, and the db-lock order's):
/// never below zero.
pub(crate) const DEDUCT_STOCK: &str =
    "UPDATE item_stock SET stock = stock - ?, version = version + 1 WHERE item_id = ? AND stock >= ?";

pub(crate) const ORDER_COLUMNS: &str =
    "order_no, stock_log_id, user_id, item_id, promo_id, amount, \
     unit_price_cents, total_cents, status, created_at FROM order_info";

/// Units of an item's sales not yet settled in its DB stock: `init` rows,
/// and committed rows whose deduction has not been applied.
pub(crate) const UNSETTLED_UNITS_OF_ITEM: &str =
    "SELECT CAST(COALESCE(SUM(s.amount), 0) AS SIGNED) FROM stock_log s \
     LEFT JOIN stock_deduction d ON d.stock_log_id = s.id \
     WHERE s.promo_id IN (SELECT id FROM promo WHERE item_id = ?) \
       AND (s.status = 'init' OR (s.status = 'committed' AND d.stock_log_id IS NULL))";

/// Implements every store port for `$store` over one sqlx backend: a
/// struct with a `pool` for reads and a `writer` for writes (one pool on
/// MySQL; on SQLite a pool of one connection, so writers queue in the
/// process rather than poll the file's lock).
macro_rules! sql_store {
    ($store:ty, db = $db:ty, row = $row:ty, conn = $conn:ty, insert_ignore = $insert_ignore:literal, begin_write = $begin_write:literal, lock_read = $lock_read:literal, last_id = $last_id:path) => {

fn user_of(r: &$row) -> StoreResult<User> {
    Ok(User {
        id: UserId(r.try_get("id")?),
        phone: r.try_get("phone")?,
        name: r.try_get("name")?,
        gender: r.try_get("gender")?,
        age: r.try_get("age")?,
        password_hash: r.try_get("password_hash")?,
        created_at: r.try_get("created_at")?,
    })
}


fn item_of(r: &$row) -> StoreResult<Item> {
    Ok(Item {
        id: ItemId(r.try_get("id")?),
        title: r.try_get("title")?,
        price_cents: r.try_get("price_cents")?,
        stock: r.try_get("stock")?,
        sales: r.try_get("sales")?,
        description: r.try_get("description")?,
        image_url: r.try_get("image_url")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// An item, read from the pool or inside a transaction.
async fn item_on<'c, E: sqlx::Executor<'c, Database = $db>>(
    e: E,
    id: ItemId,
) -> StoreResult<Option<Item>> {
    sqlx::query(&format!("SELECT {ITEM_COLUMNS} WHERE i.id = ?"))
        .bind(id.0)
        .fetch_optional(e)
        .await?
        .as_ref()
        .map(item_of)
        .transpose()
}

/// A promo, read from the pool or inside a transaction.
async fn promo_on<'c, E: sqlx::Executor<'c, Database = $db>>(
    e: E,
    id: PromoId,
) -> StoreResult<Option<Promo>> {
    sqlx::query(&format!("SELECT {PROMO_COLUMNS} WHERE id = ?"))
        .bind(id.0)
        .fetch_optional(e)
        .await?
        .as_ref()
        .map(promo_of)
        .transpose()
}

fn promo_of(r: &$row) -> StoreResult<Promo> {
    Ok(Promo {
        id: PromoId(r.try_get("id")?),
        item_id: ItemId(r.try_get("item_id")?),
        name: r.try_get("name")?,
        price_cents: r.try_get("price_cents")?,
        start_at: r.try_get("start_at")?,
        end_at: r.try_get("end_at")?,
        published: r.try_get::<i64, _>("published")? != 0,
        baseline: match (
            r.try_get::<Option<i64>, _>("warm_stock")?,
            r.try_get::<Option<i64>, _>("warm_sales")?,
        ) {
            (Some(stock), Some(sales)) => Some(PromoBaseline {
                stock,
                sales,
                strategy: r
                    .try_get::<Option<String>, _>("strategy")?
                    .map(|s| s.parse().map_err(StoreError::Corrupt))
                    .transpose()?,
            }),
            _ => None,
        },
    })
}


fn order_of(r: &$row) -> StoreResult<Order> {
    Ok(Order {
        order_no: OrderNo(r.try_get("order_no")?),
        stock_log_id: StockLogId(r.try_get("stock_log_id")?),
        user_id: UserId(r.try_get("user_id")?),
        item_id: ItemId(r.try_get("item_id")?),
        promo_id: PromoId(r.try_get("promo_id")?),
        amount: r.try_get("amount")?,
        unit_price_cents: r.try_get("unit_price_cents")?,
        total_cents: r.try_get("total_cents")?,
        status: order_status_of(r.try_get::<&str, _>("status")?)?,
        created_at: r.try_get("created_at")?,
    })
}

fn push_ids(qb: &mut QueryBuilder<'_, $db>, ids: &[StockLogId]) {
    push_in(qb, ids.iter().map(|id| id.0));
}

/// `(?, ?, …)`: an `IN` list of the values.
fn push_in(qb: &mut QueryBuilder<'_, $db>, values: impl IntoIterator<Item = i64>) {
    qb.push("(");
    let mut sep = qb.separated(", ");
    for v in values {
        sep.push_bind(v);
    }
    qb.push(")");
}

#[async_trait]
impl UserStore for $store {
    async fn create_user(&self, u: &NewUser) -> StoreResult<User> {
        let now = Utc::now();
        let res = retry_deadlocks(self.deadlock_retries, "create_user", || async move {
            sqlx::query(
                "INSERT INTO user (phone, name, gender, age, password_hash, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(u.phone.as_str())
            .bind(&u.name)
            .bind(&u.gender)
            .bind(u.age)
            .bind(&u.password_hash)
            .bind(now)
            .execute(&self.writer)
            .await
            .map_err(map_unique)
        })
        .await?;
        Ok(User {
            id: UserId($last_id(&res)),
            phone: u.phone.as_str().to_owned(),
            name: u.name.clone(),
            gender: u.gender.clone(),
            age: u.age,
            password_hash: u.password_hash.clone(),
            created_at: now,
        })
    }

    async fn create_users(&self, users: &[NewUser]) -> StoreResult<u64> {
        retry_deadlocks(self.deadlock_retries, "create_users", || async move {
            let now = Utc::now();
            let mut tx = self.writer.begin().await?;
            let mut created = 0;
            for chunk in users.chunks(500) {
                let mut qb = QueryBuilder::<$db>::new(
                    concat!($insert_ignore, " INTO user (phone, name, gender, age, password_hash, created_at) "),
                );
                qb.push_values(chunk, |mut b, u| {
                    b.push_bind(u.phone.as_str())
                        .push_bind(&u.name)
                        .push_bind(&u.gender)
                        .push_bind(u.age)
                        .push_bind(&u.password_hash)
                        .push_bind(now);
                });
                created += build_once(&mut qb).execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok(created)
        })
        .await
    }

    async fn user_by_phone(&self, phone: &str) -> StoreResult<Option<User>> {
        sqlx::query("SELECT * FROM user WHERE phone = ?")
            .bind(phone)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_of)
            .transpose()
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>> {
        sqlx::query("SELECT * FROM user WHERE id = ?")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_of)
            .transpose()
    }
}

#[async_trait]
impl CatalogStore for $store {
    async fn create_item(&self, it: &NewItem) -> StoreResult<Item> {
        retry_deadlocks(self.deadlock_retries, "create_item", || async move {
            let now = Utc::now();
            let mut tx = self.writer.begin().await?;
            let res = sqlx::query(
                "INSERT INTO item (title, price_cents, description, image_url, sales, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, 0, ?, ?)",
            )
            .bind(it.title.trim())
            .bind(it.price_cents)
            .bind(&it.description)
            .bind(&it.image_url)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let id = $last_id(&res);
            sqlx::query("INSERT INTO item_stock (item_id, stock, version) VALUES (?, ?, 0)")
                .bind(id)
                .bind(it.stock)
                .execute(&mut *tx)
                .await?;
            // Read back before the commit: a failed read must not answer 503
            // for an item that exists.
            let item = item_on(&mut *tx, ItemId(id)).await?.ok_or(StoreError::NotFound)?;
            tx.commit().await?;
            Ok(item)
        })
        .await
    }

    async fn update_item(&self, id: ItemId, p: &ItemPatch) -> StoreResult<Item> {
        retry_deadlocks(self.deadlock_retries, "update_item", || async move {
            let mut tx = self.writer.begin().await?;
            let res = sqlx::query(
                "UPDATE item SET title = COALESCE(?, title), price_cents = COALESCE(?, price_cents), \
                 description = COALESCE(?, description), image_url = COALESCE(?, image_url), \
                 updated_at = ? WHERE id = ?",
            )
            .bind(p.title.as_deref().map(str::trim))
            .bind(p.price_cents)
            .bind(&p.description)
            .bind(&p.image_url)
            .bind(Utc::now())
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
            if res.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            // Read back in the transaction: a 503 means nothing was written.
            let item = item_on(&mut *tx, id).await?.ok_or(StoreError::NotFound)?;
            tx.commit().await?;
            Ok(item)
        })
        .await
    }

    async fn item(&self, id: ItemId) -> StoreResult<Option<Item>> {
        item_on(&self.pool, id).await
    }

    async fn items(&self, offset: u32, limit: u32) -> StoreResult<Vec<Item>> {
        sqlx::query(&format!(
            "SELECT {ITEM_COLUMNS} ORDER BY i.sales DESC, i.id LIMIT ? OFFSET ?"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(item_of)
        .collect()
    }

    async fn create_promo(&self, p: &NewPromo) -> StoreResult<Promo> {
        retry_deadlocks(self.deadlock_retries, "create_promo", || async move {
            let mut tx = self.writer.begin().await?;
            let res = sqlx::query(
                "INSERT INTO promo (item_id, name, price_cents, start_at, end_at, published, created_at) \
                 VALUES (?, ?, ?, ?, ?, 0, ?)",
            )
            .bind(p.item_id.0)
            .bind(p.name.trim())
            .bind(p.price_cents)
            .bind(p.start_at)
            .bind(p.end_at)
            .bind(Utc::now())
            .execute(&mut *tx)
            .await?;
            // Read back in the transaction: a 503 means nothing was written.
            let promo = promo_on(&mut *tx, PromoId($last_id(&res)))
                .await?
                .ok_or(StoreError::NotFound)?;
            tx.commit().await?;
            Ok(promo)
        })
        .await
    }

    async fn promo(&self, id: PromoId) -> StoreResult<Option<Promo>> {
        promo_on(&self.pool, id).await
    }

    async fn promos(&self, before: Option<PromoId>, limit: u32) -> StoreResult<Vec<Promo>> {
        sqlx::query(&format!("SELECT {PROMO_COLUMNS} WHERE id < ? ORDER BY id DESC LIMIT ?"))
            .bind(before.map_or(i64::MAX, |p| p.0))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(promo_of)
            .collect()
    }

    async fn published_promos_ending_after(
        &self,
        ended_after: DateTime<Utc>,
        after: PromoId,
        limit: u32,
    ) -> StoreResult<Vec<Promo>> {
        sqlx::query(&format!(
            "SELECT {PROMO_COLUMNS} WHERE published = 1 AND end_at > ? AND id > ? ORDER BY id LIMIT ?"
        ))
        .bind(ended_after)
        .bind(after.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(promo_of)
        .collect()
    }

    async fn promos_of_item(&self, item: ItemId) -> StoreResult<Vec<Promo>> {
        sqlx::query(&format!(
            "SELECT {PROMO_COLUMNS} WHERE item_id = ? ORDER BY start_at"
        ))
        .bind(item.0)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(promo_of)
        .collect()
    }

    async fn promos_of_items(&self, items: &[ItemId]) -> StoreResult<Vec<Promo>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut qb = QueryBuilder::<$db>::new(format!("SELECT {PROMO_COLUMNS} WHERE item_id IN "));
        push_in(&mut qb, items.iter().map(|i| i.0));
        qb.push(" ORDER BY item_id, start_at");
        build_once(&mut qb)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(promo_of)
            .collect()
    }

    async fn publish_promo(
        &self,
        id: PromoId,
        baseline: PromoBaseline,
        others_settled_by: DateTime<Utc>,
    ) -> StoreResult<bool> {
        retry_deadlocks(self.deadlock_retries, "publish_promo", || async move {
            let mut tx = self.writer.begin_with($begin_write).await?;
            // (A promo's item never changes: read without a lock.)
            let item: Option<i64> = sqlx::query_scalar("SELECT item_id FROM promo WHERE id = ?")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(item) = item else {
                return Err(StoreError::NotFound);
            };
            // The item's row locked first (SQLite: the write lock, taken at
            // BEGIN): one publish of the item's promos at a time, whatever
            // became of the caller's lease, and no two publishes each
            // holding a promo row the other's scan wants. The read of the
            // others locks too, so it sees the rows committed last, not the
            // transaction's snapshot (MySQL's REPEATABLE READ would let a
            // publish committed meanwhile go unseen).
            sqlx::query(concat!("SELECT id FROM item WHERE id = ?", $lock_read))
                .bind(item)
                .fetch_optional(&mut *tx)
                .await?;
            let other: Option<i64> = sqlx::query_scalar(concat!(
                "SELECT id FROM promo WHERE item_id = ? AND id <> ? AND published = 1 \
                 AND end_at > ? LIMIT 1",
                $lock_read
            ))
            .bind(item)
            .bind(id.0)
            .bind(others_settled_by)
            .fetch_optional(&mut *tx)
            .await?;
            if other.is_some() {
                return Err(StoreError::Conflict("one published sale per item"));
            }
            let res = sqlx::query(
                "UPDATE promo SET published = 1, warm_stock = ?, warm_sales = ?, strategy = ? \
                 WHERE id = ? AND published = 0",
            )
            .bind(baseline.stock)
            .bind(baseline.sales)
            .bind(baseline.strategy.map(|s| s.as_str()))
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(res.rows_affected() == 1)
        })
        .await
    }

    async fn end_promo(&self, id: PromoId, at: DateTime<Utc>) -> StoreResult<Option<Promo>> {
        retry_deadlocks(self.deadlock_retries, "end_promo", || async move {
            let mut tx = self.writer.begin().await?;
            sqlx::query(
                "UPDATE promo SET start_at = CASE WHEN start_at > ? THEN ? ELSE start_at END, \
                 end_at = ? WHERE id = ? AND end_at > ?",
            )
            .bind(at)
            .bind(at)
            .bind(at)
            .bind(id.0)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            let promo = promo_on(&mut *tx, id).await?;
            tx.commit().await?;
            Ok(promo)
        })
        .await
    }
}

#[async_trait]
impl OrderStore for $store {
    async fn insert_stock_logs(&self, drafts: &[OrderDraft]) -> StoreResult<()> {
        retry_deadlocks(self.deadlock_retries, "insert_stock_logs", || async move {
            if drafts.is_empty() {
                return Ok(());
            }
            let now = Utc::now();
            let mut tx = self.writer.begin().await?;
            for chunk in drafts.chunks(100) {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO stock_log (id, item_id, promo_id, user_id, amount, status, created_at, updated_at) ",
                );
                qb.push_values(chunk, |mut b, d| {
                    b.push_bind(d.stock_log_id.0)
                        .push_bind(d.item_id.0)
                        .push_bind(d.promo_id.0)
                        .push_bind(d.user_id.0)
                        .push_bind(d.amount)
                        .push_bind("init")
                        .push_bind(now)
                        .push_bind(now);
                });
                build_once(&mut qb).execute(&mut *tx).await.map_err(map_unique)?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn commit_orders(&self, drafts: &[OrderDraft]) -> StoreResult<()> {
        retry_deadlocks(self.deadlock_retries, "commit_orders", || async move {
            if drafts.is_empty() {
                return Ok(());
            }
            let now = Utc::now();
            let mut tx = self.writer.begin().await?;
            for chunk in drafts.chunks(100) {
                let ids: Vec<StockLogId> = chunk.iter().map(|d| d.stock_log_id).collect();
                let mut qb = QueryBuilder::<$db>::new(
                    "UPDATE stock_log SET status = 'committed', updated_at = ",
                );
                qb.push_bind(now).push(" WHERE status = 'init' AND id IN ");
                push_ids(&mut qb, &ids);
                let flipped = build_once(&mut qb).execute(&mut *tx).await?.rows_affected();
                if flipped != chunk.len() as u64 {
                    // Some reservation was already settled (rolled back by a
                    // reconciler or a timed-out caller): commit none of them.
                    return Err(StoreError::Conflict("stock_log"));
                }
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO order_info (order_no, stock_log_id, user_id, item_id, promo_id, amount, \
                     unit_price_cents, total_cents, status, created_at, updated_at) ",
                );
                qb.push_values(chunk, |mut b, d| {
                    b.push_bind(d.order_no.as_str())
                        .push_bind(d.stock_log_id.0)
                        .push_bind(d.user_id.0)
                        .push_bind(d.item_id.0)
                        .push_bind(d.promo_id.0)
                        .push_bind(d.amount)
                        .push_bind(d.unit_price_cents)
                        .push_bind(d.total_cents())
                        .push_bind("pending_payment")
                        .push_bind(d.created_at)
                        .push_bind(now);
                });
                build_once(&mut qb).execute(&mut *tx).await.map_err(map_unique)?;
            }
            // In item order, as every transaction locking several item rows
            // does: two batches of the same items (two sales at once, several
            // workers) then wait for each other instead of deadlocking.
            let mut sales = std::collections::BTreeMap::<i64, i64>::new();
            for d in drafts {
                *sales.entry(d.item_id.0).or_default() += d.amount;
            }
            for (item, n) in sales {
                sqlx::query("UPDATE item SET sales = sales + ? WHERE id = ?")
                    .bind(n)
                    .bind(item)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn roll_back_stock_logs(
        &self,
        ids: &[StockLogId],
    ) -> StoreResult<Vec<(StockLogId, StockLogStatus)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = Utc::now();
        retry_deadlocks(self.deadlock_retries, "roll_back_stock_logs", || async move {
            let mut qb = QueryBuilder::<$db>::new(
                "UPDATE stock_log SET status = 'rolled_back', updated_at = ",
            );
            qb.push_bind(now).push(" WHERE status = 'init' AND id IN ");
            push_ids(&mut qb, ids);
            build_once(&mut qb).execute(&self.writer).await?;
            Ok(())
        })
        .await?;
        self.stock_log_statuses(ids).await
    }

    async fn stock_log_statuses(
        &self,
        ids: &[StockLogId],
    ) -> StoreResult<Vec<(StockLogId, StockLogStatus)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut qb = QueryBuilder::<$db>::new("SELECT id, status FROM stock_log WHERE id IN ");
        push_ids(&mut qb, ids);
        build_once(&mut qb)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    StockLogId(r.try_get("id")?),
                    stock_log_status_of(r.try_get::<&str, _>("status")?)?,
                ))
            })
            .collect()
    }

    async fn stale_stock_logs(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<(StockLogId, PromoId)>> {
        sqlx::query("SELECT id, promo_id FROM stock_log WHERE status = 'init' AND created_at < ? ORDER BY created_at LIMIT ?")
            .bind(before)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((StockLogId(r.try_get("id")?), PromoId(r.try_get("promo_id")?))))
            .collect()
    }

    async fn undeducted_stock_logs(&self, since: DateTime<Utc>, before: DateTime<Utc>, limit: u32) -> StoreResult<Vec<Deduction>> {
        sqlx::query(
            "SELECT s.id, s.item_id, s.amount FROM stock_log s \
             LEFT JOIN stock_deduction d ON d.stock_log_id = s.id \
             WHERE s.status = 'committed' AND s.updated_at >= ? AND s.updated_at < ? \
               AND d.stock_log_id IS NULL \
             ORDER BY s.updated_at LIMIT ?",
        )
        .bind(since)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(Deduction {
                stock_log_id: StockLogId(r.try_get("id")?),
                item_id: ItemId(r.try_get("item_id")?),
                amount: r.try_get("amount")?,
            })
        })
        .collect()
    }

    async fn unsettled_units_of_item(&self, item: ItemId) -> StoreResult<i64> {
        let n: Option<i64> = sqlx::query_scalar(UNSETTLED_UNITS_OF_ITEM)
        .bind(item.0)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.unwrap_or(0))
    }

    async fn unpaid_orders_of_item(&self, item: ItemId) -> StoreResult<(i64, Option<DateTime<Utc>>)> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM order_info WHERE status = 'pending_payment' \
             AND promo_id IN (SELECT id FROM promo WHERE item_id = ?)",
        )
        .bind(item.0)
        .fetch_one(&self.pool)
        .await?;
        if n == 0 {
            return Ok((0, None));
        }
        let newest: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT created_at FROM order_info WHERE status = 'pending_payment' \
             AND promo_id IN (SELECT id FROM promo WHERE item_id = ?) \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(item.0)
        .fetch_optional(&self.pool)
        .await?;
        Ok((n, newest))
    }

    async fn sale_journal(&self, promo: PromoId, item: ItemId) -> StoreResult<SaleJournal> {
        let mut tx = self.pool.begin().await?;
        let db_stock: Option<i64> = sqlx::query_scalar("SELECT stock FROM item_stock WHERE item_id = ?")
            .bind(item.0)
            .fetch_optional(&mut *tx)
            .await?;
        let unsettled: Option<i64> = sqlx::query_scalar(UNSETTLED_UNITS_OF_ITEM)
        .bind(item.0)
        .fetch_one(&mut *tx)
        .await?;
        let open = sqlx::query("SELECT id, user_id, amount FROM stock_log WHERE promo_id = ? AND status = 'init'")
            .bind(promo.0)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((StockLogId(r.try_get("id")?), UserId(r.try_get("user_id")?), r.try_get("amount")?)))
            .collect::<StoreResult<Vec<_>>>()?;
        let buyers = sqlx::query(
            "SELECT user_id, CAST(SUM(amount) AS SIGNED) AS units FROM stock_log \
             WHERE promo_id = ? AND status <> 'rolled_back' GROUP BY user_id",
        )
        .bind(promo.0)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((UserId(r.try_get("user_id")?), r.try_get("units")?)))
        .collect::<StoreResult<Vec<_>>>()?;
        let restocked = sqlx::query("SELECT stock_log_id FROM order_info WHERE promo_id = ? AND status = 'cancelled'")
            .bind(promo.0)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok(StockLogId(r.try_get("stock_log_id")?)))
            .collect::<StoreResult<Vec<_>>>()?;
        tx.commit().await?;
        Ok(SaleJournal {
            db_stock: db_stock.ok_or(StoreError::NotFound)?,
            unsettled: unsettled.unwrap_or(0),
            open,
            buyers,
            restocked,
        })
    }

    async fn cancelled_order_count(&self, promo: PromoId) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM order_info WHERE promo_id = ? AND status = 'cancelled'",
        )
        .bind(promo.0)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn cancelled_orders(
        &self,
        promo: PromoId,
        after: &str,
        limit: u32,
    ) -> StoreResult<Vec<(OrderNo, StockLogId, i64)>> {
        sqlx::query(
            "SELECT order_no, stock_log_id, amount FROM order_info \
             WHERE promo_id = ? AND status = 'cancelled' AND order_no > ? \
             ORDER BY order_no LIMIT ?",
        )
        .bind(promo.0)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                OrderNo(r.try_get("order_no")?),
                StockLogId(r.try_get("stock_log_id")?),
                r.try_get("amount")?,
            ))
        })
        .collect()
    }

    async fn unpaid_orders(&self, before: DateTime<Utc>, limit: u32) -> StoreResult<Vec<OrderNo>> {
        sqlx::query("SELECT order_no FROM order_info WHERE status = 'pending_payment' AND created_at < ? ORDER BY created_at LIMIT ?")
            .bind(before)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok(OrderNo(r.try_get("order_no")?)))
            .collect()
    }

    /// A whole message in a handful of statements, whatever its size: the
    /// committed ids and those already deducted are read with one `IN`
    /// each, each item's stock takes one conditional update for the sum of
    /// its entries (entry by entry only when that sum does not fit), and
    /// the deduction records go in one multi-row insert. Items are updated
    /// in id order, so two consumers never wait on each other's rows in
    /// opposite orders.
    async fn apply_deductions(&self, entries: &[Deduction]) -> StoreResult<DeductionReport> {
        retry_deadlocks(self.deadlock_retries, "apply_deductions", || async move {
            let mut report = DeductionReport::default();
            if entries.is_empty() {
                return Ok(report);
            }
            let now = Utc::now();
            // Reads, then writes: the write lock first (SQLite would not wait
            // for it after the reads).
            let mut tx = self.writer.begin_with($begin_write).await?;
            let mut committed = std::collections::HashSet::new();
            let mut done = std::collections::HashSet::new();
            for chunk in entries.chunks(500) {
                let ids: Vec<StockLogId> = chunk.iter().map(|e| e.stock_log_id).collect();
                let mut qb = QueryBuilder::<$db>::new("SELECT id FROM stock_log WHERE status = 'committed' AND id IN ");
                push_ids(&mut qb, &ids);
                for r in build_once(&mut qb).fetch_all(&mut *tx).await? {
                    committed.insert(r.try_get::<i64, _>(0)?);
                }
                let mut qb = QueryBuilder::<$db>::new("SELECT stock_log_id FROM stock_deduction WHERE stock_log_id IN ");
                push_ids(&mut qb, &ids);
                for r in build_once(&mut qb).fetch_all(&mut *tx).await? {
                    done.insert(r.try_get::<i64, _>(0)?);
                }
            }
            // Per item, in id order: the entries to deduct now.
            let mut by_item: std::collections::BTreeMap<i64, Vec<&Deduction>> = Default::default();
            for e in entries {
                if !committed.contains(&e.stock_log_id.0) {
                    report.skipped += 1;
                } else if !done.insert(e.stock_log_id.0) {
                    // Deducted before, or twice in this message.
                    report.duplicates += 1;
                } else {
                    by_item.entry(e.item_id.0).or_default().push(e);
                }
            }
            let mut records: Vec<(&Deduction, &'static str)> = Vec::new();
            for (item, group) in by_item {
                let total: i64 = group.iter().map(|e| e.amount).sum();
                let updated = sqlx::query(DEDUCT_STOCK)
                    .bind(total)
                    .bind(item)
                    .bind(total)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if updated == 1 {
                    report.applied += group.len() as u64;
                    records.extend(group.into_iter().map(|e| (e, "applied")));
                    continue;
                }
                // Not enough for all of them: each on its own, so that what fits
                // is deducted and only the rest is refused.
                for e in group {
                    let updated = sqlx::query(DEDUCT_STOCK)
                        .bind(e.amount)
                        .bind(e.item_id.0)
                        .bind(e.amount)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if updated == 1 {
                        report.applied += 1;
                        records.push((e, "applied"));
                    } else {
                        report.insufficient += 1;
                        records.push((e, "insufficient"));
                    }
                }
            }
            for chunk in records.chunks(200) {
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO stock_deduction (stock_log_id, item_id, amount, outcome, applied_at) ",
                );
                qb.push_values(chunk, |mut b, (e, outcome)| {
                    b.push_bind(e.stock_log_id.0)
                        .push_bind(e.item_id.0)
                        .push_bind(e.amount)
                        .push_bind(*outcome)
                        .push_bind(now);
                });
                build_once(&mut qb).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            // Said once the refusals are recorded: an attempt rolled back
            // as a deadlock's victim (and run again) refused nothing.
            for (e, _) in records.iter().filter(|(_, outcome)| *outcome == "insufficient") {
                tracing::error!(stock_log_id = %e.stock_log_id, item_id = %e.item_id, amount = e.amount,
                    "DB stock lower than the ledger: deduction refused by the conditional update");
            }
            Ok(report)
        })
        .await
    }

    async fn order(&self, no: &OrderNo) -> StoreResult<Option<Order>> {
        sqlx::query(&format!("SELECT {ORDER_COLUMNS} WHERE order_no = ?"))
            .bind(no.as_str())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(order_of)
            .transpose()
    }

    async fn orders_of_user(&self, user: UserId, offset: u32, limit: u32) -> StoreResult<Vec<Order>> {
        sqlx::query(&format!(
            "SELECT {ORDER_COLUMNS} WHERE user_id = ? ORDER BY created_at DESC, order_no DESC LIMIT ? OFFSET ?"
        ))
        .bind(user.0)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(order_of)
        .collect()
    }

    async fn has_order(&self, user: UserId, promo: PromoId) -> StoreResult<bool> {
        Ok(
            sqlx::query("SELECT 1 FROM order_info WHERE user_id = ? AND promo_id = ? LIMIT 1")
                .bind(user.0)
                .bind(promo.0)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    async fn pay_order(&self, no: &OrderNo) -> StoreResult<Order> {
        let now = Utc::now();
        retry_deadlocks(self.deadlock_retries, "pay_order", || async move {
            sqlx::query("UPDATE order_info SET status = 'paid', updated_at = ? WHERE order_no = ? AND status = 'pending_payment'")
                .bind(now)
                .bind(no.as_str())
                .execute(&self.writer)
                .await?;
            Ok(())
        })
        .await?;
        self.order(no).await?.ok_or(StoreError::NotFound)
    }

    async fn cancel_order(&self, no: &OrderNo) -> StoreResult<(Order, bool)> {
        retry_deadlocks(self.deadlock_retries, "cancel_order", || async move {
            let mut tx = self.writer.begin_with($begin_write).await?;
            // The order as it is now, not as the transaction's snapshot saw it
            // (MySQL's plain read): a payment that won the race shows as paid.
            let row = sqlx::query(&format!(concat!("SELECT {} WHERE order_no = ?", $lock_read), ORDER_COLUMNS))
                .bind(no.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let mut order = row
                .as_ref()
                .map(order_of)
                .transpose()?
                .ok_or(StoreError::NotFound)?;
            let flipped = sqlx::query("UPDATE order_info SET status = 'cancelled', updated_at = ? WHERE order_no = ? AND status = 'pending_payment'")
                .bind(Utc::now())
                .bind(no.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if flipped == 1 {
                // The units go back to the DB stock unless its deduction
                // was refused (the DB already below the ledger): those were
                // never taken from it. A plain read, no lock: a refusal
                // landing meanwhile is the same drift as before it.
                let refused = sqlx::query(
                    "SELECT 1 FROM stock_deduction WHERE stock_log_id = ? AND outcome = 'insufficient'",
                )
                .bind(order.stock_log_id.0)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
                if !refused {
                    sqlx::query(
                        "UPDATE item_stock SET stock = stock + ?, version = version + 1 WHERE item_id = ?",
                    )
                    .bind(order.amount)
                    .bind(order.item_id.0)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query("UPDATE item SET sales = sales - ? WHERE id = ?")
                    .bind(order.amount)
                    .bind(order.item_id.0)
                    .execute(&mut *tx)
                    .await?;
                order.status = OrderStatus::Cancelled;
            }
            tx.commit().await?;
            Ok((order, flipped == 1))
        })
        .await
    }

    async fn promo_totals(&self, promo: PromoId) -> StoreResult<PromoTotals> {
        // One pass over the promo's orders, grouped by buyer: the units and
        // orders summed, and the most units one buyer holds.
        let r = sqlx::query(
            "SELECT CAST(COALESCE(SUM(units), 0) AS SIGNED) AS sold, \
                    CAST(COALESCE(SUM(n), 0) AS SIGNED) AS orders, \
                    CAST(COALESCE(MAX(units), 0) AS SIGNED) AS most FROM \
             (SELECT SUM(amount) AS units, COUNT(*) AS n FROM order_info \
              WHERE promo_id = ? AND status <> 'cancelled' GROUP BY user_id) AS per_buyer",
        )
        .bind(promo.0)
        .fetch_one(&self.pool)
        .await?;
        let mut totals = PromoTotals {
            sold: r.try_get("sold")?,
            orders: r.try_get("orders")?,
            max_units_per_buyer: r.try_get("most")?,
            ..PromoTotals::default()
        };
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM stock_log WHERE promo_id = ? GROUP BY status",
        )
        .bind(promo.0)
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let n: i64 = r.try_get("n")?;
            match stock_log_status_of(r.try_get::<&str, _>("status")?)? {
                StockLogStatus::Init => totals.stock_log_init = n,
                StockLogStatus::Committed => totals.stock_log_committed = n,
                StockLogStatus::RolledBack => totals.stock_log_rolled_back = n,
            }
        }
        Ok(totals)
    }

    async fn place_order_in_db(
        &self,
        d: &OrderDraft,
        optimistic: bool,
        cas_retries: u32,
        commit_by: std::time::Instant,
    ) -> StoreResult<Option<Order>> {
        retry_deadlocks(self.deadlock_retries, "place_order_in_db", || async move {
            let now = Utc::now();
            let attempts = if optimistic { cas_retries.max(1) } else { 1 };
            for _ in 0..attempts {
                if std::time::Instant::now() >= commit_by {
                    return Err(StoreError::TooLate);
                }
                // The wait for a connection ends by `commit_by` too (the pool's
                // own acquire time-out may be longer); a wait given up here
                // holds nothing.
                let mut conn = tokio::time::timeout_at(commit_by.into(), self.writer.acquire())
                    .await
                    .map_err(|_| StoreError::TooLate)??;
                // The write lock first, as every transaction here that reads
                // before it writes (SQLite: another process's writer is waited
                // for, its busy time-out the bound, rather than met after the
                // read).
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin_write)
                    .await
                    .map_err(map_lock_wait)?;
                let updated = if optimistic {
                    let row = sqlx::query("SELECT stock, version FROM item_stock WHERE item_id = ?")
                        .bind(d.item_id.0)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some(row) = row else { return Ok(None) };
                    let (stock, version): (i64, i64) = (row.try_get("stock")?, row.try_get("version")?);
                    if stock < d.amount {
                        return Ok(None);
                    }
                    sqlx::query("UPDATE item_stock SET stock = stock - ?, version = version + 1 WHERE item_id = ? AND version = ?")
                        .bind(d.amount)
                        .bind(d.item_id.0)
                        .bind(version)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_lock_wait)?
                        .rows_affected()
                } else {
                    let n = sqlx::query(DEDUCT_STOCK)
                        .bind(d.amount)
                        .bind(d.item_id.0)
                        .bind(d.amount)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_lock_wait)?
                        .rows_affected();
                    if n == 0 {
                        return Ok(None);
                    }
                    n
                };
                if updated == 0 {
                    // Lost the compare-and-set: read again (this transaction
                    // rolls back as it drops, before its connection is reused).
                    continue;
                }
                if std::time::Instant::now() >= commit_by {
                    // The stock row's lock took the time: no second wait (the
                    // sales row's) past the deadline.
                    tx.rollback().await?;
                    return Err(StoreError::TooLate);
                }
                write_db_order(&mut tx, d, now).await?;
                if std::time::Instant::now() >= commit_by {
                    tx.rollback().await?;
                    return Err(StoreError::TooLate);
                }
                tx.commit().await.map_err(commit_error)?;
                return Ok(Some(d.to_order()));
            }
            Err(StoreError::Conflict("version"))
        })
        .await
    }
}

/// The rows a pure-database order writes besides the stock update: the
/// journal row (already committed), the order, the deduction record (the
/// stock moved in this transaction) and the sales.
async fn write_db_order(
    tx: &mut $conn,
    d: &OrderDraft,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO stock_log (id, item_id, promo_id, user_id, amount, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'committed', ?, ?)")
        .bind(d.stock_log_id.0).bind(d.item_id.0).bind(d.promo_id.0).bind(d.user_id.0).bind(d.amount).bind(now).bind(now)
        .execute(&mut *tx).await
        // Its only unique key is the id (MySQL names it PRIMARY).
        .map_err(|e| match map_unique(e) {
            StoreError::Conflict(_) => StoreError::Conflict("stock_log"),
            other => other,
        })?;
    sqlx::query("INSERT INTO order_info (order_no, stock_log_id, user_id, item_id, promo_id, amount, unit_price_cents, total_cents, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending_payment', ?, ?)")
        .bind(d.order_no.as_str()).bind(d.stock_log_id.0).bind(d.user_id.0).bind(d.item_id.0).bind(d.promo_id.0)
        .bind(d.amount).bind(d.unit_price_cents).bind(d.total_cents()).bind(d.created_at).bind(now)
        .execute(&mut *tx).await.map_err(map_unique)?;
    sqlx::query("INSERT INTO stock_deduction (stock_log_id, item_id, amount, outcome, applied_at) VALUES (?, ?, ?, 'applied', ?)")
        .bind(d.stock_log_id.0).bind(d.item_id.0).bind(d.amount).bind(now)
        .execute(&mut *tx).await?;
    sqlx::query("UPDATE item SET sales = sales + ? WHERE id = ?")
        .bind(d.amount)
        .bind(d.item_id.0)
        .execute(&mut *tx)
        .await
        .map_err(map_lock_wait)?;
    Ok(())
}

#[async_trait]
impl Store for $store {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

    };
}

pub(crate) use sql_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lost_connection_leaves_a_commit_unanswered() {
        let reset = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(
            commit_error(reset),
            StoreError::CommitUnanswered(_)
        ));
        assert!(matches!(
            commit_error(sqlx::Error::Protocol("unexpected packet".into())),
            StoreError::CommitUnanswered(_)
        ));
        assert!(matches!(
            commit_error(sqlx::Error::PoolTimedOut),
            StoreError::Db(_)
        ));
        assert!(matches!(
            commit_error(sqlx::Error::RowNotFound),
            StoreError::Db(_)
        ));
    }
}
