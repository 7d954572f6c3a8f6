//! The SQLite store: the embedded default. WAL journal, a busy timeout, and
//! foreign keys on; the file and its folder are created when missing.

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteQueryResult;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};

use super::sql::{
    build_once, commit_error, map_lock_wait, map_unique, retry_deadlocks, sql_store, DEDUCT_STOCK,
    ITEM_COLUMNS, ORDER_COLUMNS, PROMO_COLUMNS, UNSETTLED_UNITS_OF_ITEM,
};
use super::*;

/// The store over two SQLite pools: readers, and one writer.
///
/// SQLite has one write lock per database. Writers that share a pool take
/// turns on it through SQLite's busy handler, which polls with sleeps of up
/// to 100 ms, and they hold pooled connections while they sleep: under a
/// crowd every connection waited for the lock and a plain read (an order
/// look-up, a login) waited for a connection until the acquire time-out.
/// Here every write goes through one connection of its own, so writers
/// queue in the process (first come, first served)
/// and readers (WAL: they never wait for the writer) keep their pool. The
/// busy time-out still bounds a wait for another process's write lock.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: SqlitePool,
    /// For the shared SQL, which runs its writes through the deadlock
    /// retry: SQLite reports no deadlock (MySQL's 1213), so it never
    /// retries here — its writers take the one write lock in turn.
    deadlock_retries: u32,
}

impl SqliteStore {
    /// Opens (creating when missing) the database at a `sqlite://` URL, with
    /// at most `limits.max_connections` reading connections and one writing
    /// connection, of `cache_kib` page cache each (the pages live in SQLite's
    /// own allocator: the process pays them per connection, and the file is
    /// in the OS page cache anyway). A write waits at most
    /// `limits.acquire_timeout` for its turn in the process, and a statement
    /// at most `limits.lock_wait` for the write lock another process holds.
    pub async fn connect(url: &str, limits: PoolLimits, cache_kib: u32) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Every commit on disk before it is answered: a buyer told
            // "bought" keeps the order through a power cut (NORMAL, in WAL
            // mode, may lose the last commits then). One flush per
            // transaction, and the write-behind batches its orders.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(limits.lock_wait)
            .foreign_keys(true)
            .pragma("cache_size", format!("-{cache_kib}"));
        if let Some(dir) = opts.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
            }
        }
        // The writer first: it creates the file and turns WAL on.
        // Not pinged before each hand-over (sqlx's default): the file is
        // local, and every write would pay a round trip to the connection's
        // worker thread.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(limits.acquire_timeout)
            .connect_with(opts.clone())
            .await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(limits.max_connections.max(1))
            .acquire_timeout(limits.acquire_timeout)
            .connect_with(opts)
            .await?;
        Ok(SqliteStore {
            pool,
            writer,
            deadlock_retries: limits.deadlock_retries,
        })
    }

    /// Applies the SQLite migrations (idempotent).
    pub async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.writer)
            .await?;
        Ok(())
    }
}

fn last_id(r: &SqliteQueryResult) -> i64 {
    r.last_insert_rowid()
}

sql_store!(
    SqliteStore,
    db = Sqlite,
    row = SqliteRow,
    conn = SqliteConnection,
    insert_ignore = "INSERT OR IGNORE",
    begin_write = "BEGIN IMMEDIATE",
    lock_read = "",
    last_id = last_id
);
