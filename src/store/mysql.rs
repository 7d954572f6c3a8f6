//! The MySQL store (MariaDB 10.11 and MySQL 8): the source of truth when
//! several instances share a sale. The database is created when missing.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::MigrateDatabase;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlQueryResult, MySqlRow};
use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder, Row};

use super::sql::{
    build_once, commit_error, map_lock_wait, map_unique, retry_deadlocks, sql_store, DEDUCT_STOCK,
    ITEM_COLUMNS, ORDER_COLUMNS, PROMO_COLUMNS, UNSETTLED_UNITS_OF_ITEM,
};
use super::*;

/// The store over a MySQL pool (reads and writes share it: InnoDB locks
/// rows, not the database).
#[derive(Clone)]
pub struct MysqlStore {
    pool: MySqlPool,
    writer: MySqlPool,
    deadlock_retries: u32,
}

impl MysqlStore {
    /// Connects to a `mysql://` URL, creating the database when missing.
    /// A statement waits at most `limits.lock_wait` (whole seconds, at least
    /// one: the server's `innodb_lock_wait_timeout`, 50 s by default) for a
    /// row lock: the order path's transactions have a deadline of that
    /// order, and one that waited past it would only roll back.
    pub async fn connect(url: &str, limits: PoolLimits) -> StoreResult<Self> {
        if !MySql::database_exists(url).await? {
            MySql::create_database(url).await?;
        }
        let opts: MySqlConnectOptions = url.parse()?;
        let lock_wait_secs = limits.lock_wait.as_secs_f64().ceil().max(1.0) as u64;
        let pool = MySqlPoolOptions::new()
            .max_connections(limits.max_connections.max(1))
            .acquire_timeout(limits.acquire_timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    sqlx::query(&format!(
                        "SET SESSION innodb_lock_wait_timeout = {lock_wait_secs}"
                    ))
                    .execute(&mut *conn)
                    .await?;
                    // A sale's journal is read in one snapshot (the ledger
                    // rebuilt from it must not count a deduction twice):
                    // REPEATABLE READ, whatever the server's default is.
                    sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_with(opts.timezone(Some(String::from("+00:00"))))
            .await?;
        Ok(MysqlStore {
            writer: pool.clone(),
            pool,
            deadlock_retries: limits.deadlock_retries,
        })
    }

    /// Applies the MySQL migrations (idempotent).
    pub async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/mysql")
            .run(&self.writer)
            .await?;
        Ok(())
    }
}

fn last_id(r: &MySqlQueryResult) -> i64 {
    r.last_insert_id() as i64
}

sql_store!(
    MysqlStore,
    db = MySql,
    row = MySqlRow,
    conn = MySqlConnection,
    insert_ignore = "INSERT IGNORE",
    begin_write = "BEGIN",
    lock_read = " FOR UPDATE",
    last_id = last_id
);
