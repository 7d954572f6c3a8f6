//! The item cache: single flight, negative entries, invalidation on write,
//! the delayed double delete, and live stock/sales under a cached row.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;

use seckill::domain::ItemId;
use seckill::service::item_cache::shared_key;

use crate::common::{TestApp, ADMIN};

fn cache_stats(t: &TestApp) -> seckill::service::item_cache::ItemCacheStats {
    t.app.state.catalog.item_cache().stats()
}

async fn price(t: &TestApp, item: i64) -> i64 {
    let r = t.get(&format!("/api/v1/items/{item}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    r.json()["price_cents"].as_i64().unwrap()
}

async fn patch_price(t: &TestApp, item: i64, cents: i64) {
    let r = t
        .call(
            "PATCH",
            &format!("/api/v1/admin/items/{item}"),
            Some(ADMIN),
            Some(json!({ "price_cents": cents })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
}

#[tokio::test]
async fn a_cold_hot_item_is_loaded_from_the_db_once_and_then_served_from_memory() {
    let t = TestApp::spawn().await;
    let item = t.item(10).await;
    // Let the creation's own invalidation broadcast land first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = cache_stats(&t);
    let reads = (0..200).map(|_| price(&t, item));
    let prices = futures::future::join_all(reads).await;
    assert!(prices.iter().all(|p| *p == 10_000));
    let after = cache_stats(&t);
    assert_eq!(
        after.db_loads - before.db_loads,
        1,
        "200 concurrent cold reads, one DB load: {after:?}"
    );
    assert_eq!(after.shared_misses - before.shared_misses, 1, "{after:?}");
    for _ in 0..100 {
        assert_eq!(price(&t, item).await, 10_000);
    }
    let warm = cache_stats(&t);
    assert_eq!(warm.local_hits - after.local_hits, 100, "{warm:?}");
    assert_eq!(warm.db_loads, after.db_loads, "{warm:?}");
}

#[tokio::test]
async fn unknown_ids_are_remembered_so_random_ids_do_not_reach_the_db_each_time() {
    let t = TestApp::spawn().await;
    let before = cache_stats(&t);
    for _ in 0..20 {
        let r = t.get("/api/v1/items/987654", None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.code(), "NOT_FOUND");
    }
    let after = cache_stats(&t);
    assert_eq!(after.db_loads - before.db_loads, 1, "{after:?}");
    // Creating an item under a remembered id is seen at once: the negative
    // entry is dropped by the write.
    let item = t.item(3).await;
    let r = t.get(&format!("/api/v1/items/{}", item + 1), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let next = t.item(3).await;
    assert_eq!(next, item + 1);
    assert_eq!(price(&t, next).await, 10_000);
}

#[tokio::test]
async fn a_write_is_visible_at_once_on_the_writing_instance() {
    let t = TestApp::spawn().await;
    let item = t.item(10).await;
    assert_eq!(price(&t, item).await, 10_000);
    for cents in [9_000, 8_000, 7_000] {
        patch_price(&t, item, cents).await;
        assert_eq!(price(&t, item).await, cents);
    }
}

/// The race the double delete exists for: a reader loads the old row, the
/// writer updates and deletes, the reader writes the old row back. The old
/// value is served until the delayed second delete removes it, never after.
#[tokio::test]
async fn the_delayed_second_delete_removes_a_stale_value_written_back_by_a_slow_reader() {
    let t = TestApp::spawn_with(|c| {
        c.item_cache_double_delete_ms = 300;
        c.item_cache_local_ttl_ms = 60_000; // only invalidations may help
    })
    .await;
    let item = t.item(10).await;
    let cache = t.app.state.catalog.item_cache();
    let kv = t.app.context.ports.kv.clone();

    // 1. The slow reader reads the DB row (old price) …
    let stale = cache.snapshot_json(ItemId(item)).await.unwrap();
    // 2. … the writer updates the DB and deletes the shared entry …
    patch_price(&t, item, 1_234).await;
    // 3. … and the reader writes its old row back into the shared tier.
    cache
        .fill_shared(ItemId(item), &stale, Duration::from_secs(60))
        .await;
    cache.forget_local(ItemId(item)).await;
    assert_eq!(
        price(&t, item).await,
        10_000,
        "the race is real: the stale row is served from the shared tier"
    );

    // The second delete (and its broadcast) fix it within the delay.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        kv.get(&shared_key(ItemId(item))).await.unwrap(),
        None,
        "the second delete removed the stale row"
    );
    assert_eq!(
        price(&t, item).await,
        1_234,
        "stale value gone after the second delete"
    );
    let shared = kv.get(&shared_key(ItemId(item))).await.unwrap();
    assert!(
        shared.as_deref().is_some_and(|v| v.contains("1234")),
        "the shared tier holds the new row again: {shared:?}"
    );
}

#[tokio::test]
async fn stock_and_sales_on_the_page_are_live_while_the_row_is_cached() {
    let t = TestApp::spawn().await;
    let (item, promo) = t.sale(5).await;
    let r = t.get(&format!("/api/v1/items/{item}"), None).await;
    assert_eq!(r.json()["stock"], 5);
    assert_eq!(r.json()["sales"], 0);
    let buyers = t.users("1390000", 3).await;
    for b in &buyers {
        let r = t.buy(b, promo, item).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.json());
    }
    // The row stays cached (no write to the item); the figures follow the
    // ledger (reused for at most item_live_stock_ttl_ms).
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = t.get(&format!("/api/v1/items/{item}"), None).await;
    assert_eq!(r.json()["stock"], 2, "{:?}", r.json());
    assert_eq!(r.json()["sales"], 3, "{:?}", r.json());
}

#[tokio::test]
async fn the_stated_staleness_bound_is_published() {
    let t = TestApp::spawn_with(|c| {
        c.item_cache_double_delete_ms = 400;
        c.item_cache_local_ttl_ms = 900;
    })
    .await;
    let r = t.get("/api/v1/config", None).await;
    assert_eq!(r.json()["item_staleness_bound_ms"], 1300);
}
