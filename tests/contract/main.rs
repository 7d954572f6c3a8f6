//! Contract tests: one generic suite per port, run here against the
//! embedded adapters, and against Redis / MariaDB / RocketMQ when their URLs
//! are given (`SECKILL_TEST_REDIS_URL`, `SECKILL_TEST_MYSQL_URL`,
//! `SECKILL_TEST_ROCKETMQ_NAMESRV`; `.ci/run` sets them).

mod bus;
mod kv;
mod ledger;
mod store;

use std::sync::Arc;

use seckill::cache::memory::{MemoryKvStore, MemoryRateLimiter, MemoryStockLedger};
use seckill::store::sqlite::SqliteStore;

#[tokio::test]
async fn the_memory_ledger_honours_the_ledger_contract() {
    ledger::suite(|| async {
        Arc::new(MemoryStockLedger::new()) as Arc<dyn seckill::cache::StockLedger>
    })
    .await;
}

#[tokio::test]
async fn the_memory_kv_store_honours_the_kv_contract() {
    kv::suite(Arc::new(MemoryKvStore::new())).await;
}

#[tokio::test]
async fn the_memory_rate_limiter_honours_the_rate_limit_contract() {
    kv::rate_limit_suite(Arc::new(MemoryRateLimiter::new())).await;
}

#[tokio::test]
async fn the_sqlite_store_honours_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::connect(&format!("sqlite://{}/c.db", dir.path().display()), 8)
        .await
        .unwrap();
    s.migrate().await.unwrap();
    store::suite(Arc::new(s)).await;
}

#[tokio::test]
async fn the_in_process_bus_honours_the_transactional_message_contract() {
    bus::suite(bus::memory_bus).await;
}
