#![recursion_limit = "256"]
//! The order flow through the real service layer on embedded adapters:
//! a crowd racing for stock, and failures injected into the local
//! transaction.

#[path = "../common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use seckill::domain::{ItemId, NewUser, Phone, PromoId, UserId};
use seckill::service::orders::PlaceOrder;
use seckill::service::ServiceError;
use sqlx::sqlite::SqlitePoolOptions;

async fn db(t: &TestApp) -> sqlx::SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&t.app.state.config.database_url)
        .await
        .unwrap()
}

/// Creates `n` users straight in the store; returns their ids.
async fn buyers(t: &TestApp, prefix: &str, n: usize) -> Vec<UserId> {
    let users: Vec<NewUser> = (0..n)
        .map(|i| NewUser {
            phone: Phone::parse(&format!("{prefix}{i:05}")).unwrap(),
            name: "b".into(),
            gender: None,
            age: None,
            password_hash: "x".into(),
        })
        .collect();
    t.app.state.ports.store.create_users(&users).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            t.app
                .state
                .ports
                .store
                .user_by_phone(&format!("{prefix}{i:05}"))
                .await
                .unwrap()
                .unwrap()
                .id,
        );
    }
    ids
}

/// Token then order through the services, as the HTTP handlers do.
async fn buy(
    t: &TestApp,
    user: UserId,
    promo: i64,
    item: i64,
) -> Result<seckill::domain::Order, ServiceError> {
    let s = &t.app.state;
    let token = s
        .tokens
        .issue(user, PromoId(promo), ItemId(item), None)
        .await?;
    s.orders
        .place(
            user,
            PlaceOrder {
                promo_id: PromoId(promo),
                item_id: ItemId(item),
                amount: 1,
                token: token.token,
            },
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_buyers_racing_for_fifty_units_get_exactly_fifty_orders() {
    let t = Arc::new(TestApp::spawn_with(|c| c.gate_factor = 20).await);
    let (item, promo) = t.sale(50).await;
    let users = buyers(&t, "1880", 500).await;
    let tasks: Vec<_> = users
        .iter()
        .map(|&u| {
            let t = t.clone();
            tokio::spawn(async move { (u, buy(&t, u, promo, item).await) })
        })
        .collect();
    let mut winners = HashSet::new();
    for task in tasks {
        match task.await.unwrap() {
            (u, Ok(order)) => {
                assert_eq!(order.user_id, u);
                assert!(winners.insert(u), "user {u} bought twice");
            }
            (_, Err(ServiceError::SoldOut)) => {}
            (_, Err(e)) => panic!("unexpected refusal: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 50);
    let stats = t.settled(promo).await;
    assert_eq!(stats["stock_db"], 0);
    assert_eq!(stats["stock_cache"], 0);
    assert_eq!(stats["sold"], 50);
    assert_eq!(stats["orders"], 50);
    assert_eq!(stats["stock_log"]["committed"], 50);
    let pool = db(&t).await;
    let sales: i64 = sqlx::query_scalar("SELECT sales FROM item WHERE id = ?")
        .bind(item)
        .fetch_one(&pool)
        .await
        .unwrap();
    let distinct: i64 =
        sqlx::query_scalar("SELECT COUNT(DISTINCT user_id) FROM order_info WHERE promo_id = ?")
            .bind(promo)
            .fetch_one(&pool)
            .await
            .unwrap();
    let deducted: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM stock_deduction WHERE outcome = 'applied'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((sales, distinct, deducted), (50, 50, 50));
}

#[tokio::test]
async fn a_failed_local_transaction_gives_the_reservation_back_and_rolls_the_message_back() {
    let t = TestApp::spawn().await;
    let (item, promo) = t.sale(3).await;
    let users = buyers(&t, "1881", 2).await;
    let pool = db(&t).await;
    sqlx::query("CREATE TRIGGER injected_failure BEFORE INSERT ON order_info BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
        .execute(&pool)
        .await
        .unwrap();
    let r = buy(&t, users[0], promo, item).await;
    assert!(matches!(r, Err(ServiceError::Unavailable { .. })), "{r:?}");
    let stats = t.stats(promo).await;
    assert_eq!(stats["stock_cache"], 3, "reservation given back");
    assert_eq!(stats["stock_log"]["rolled_back"], 1);
    assert_eq!(stats["orders"], 0);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        t.stats(promo).await["stock_db"],
        3,
        "the rolled-back message deducted nothing"
    );

    sqlx::query("DROP TRIGGER injected_failure")
        .execute(&pool)
        .await
        .unwrap();
    buy(&t, users[0], promo, item)
        .await
        .expect("the same buyer can buy once the DB is healthy");
    let stats = t.settled(promo).await;
    assert_eq!(
        (stats["stock_db"].as_i64(), stats["sold"].as_i64()),
        (Some(2), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_bad_order_in_a_group_commit_does_not_sink_the_others() {
    let t = Arc::new(
        TestApp::spawn_with(|c| {
            c.batch_workers = 1;
            c.batch_linger_ms = 200;
            c.batch_max = 16;
        })
        .await,
    );
    let (item, promo) = t.sale(10).await;
    let users = buyers(&t, "1882", 4).await;
    // The DB already holds an order of users[0] in this promo that the ledger
    // does not know about (as after a cache loss): its unique key refuses a
    // second one.
    let pool = db(&t).await;
    sqlx::query("INSERT INTO order_info (order_no, stock_log_id, user_id, item_id, promo_id, amount, unit_price_cents, total_cents, status, created_at, updated_at) VALUES ('x', 1, ?, ?, ?, 1, 1, 1, 'pending_payment', '2024-01-01', '2024-01-01')")
        .bind(users[0].0).bind(item).bind(promo).execute(&pool).await.unwrap();
    let tasks: Vec<_> = users
        .iter()
        .map(|&u| {
            let t = t.clone();
            tokio::spawn(async move { buy(&t, u, promo, item).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert!(
        matches!(results[0], Err(ServiceError::AlreadyBought)),
        "{:?}",
        results[0]
    );
    assert!(results[1..].iter().all(|r| r.is_ok()), "{results:?}");
    let stats = t.settled(promo).await;
    assert_eq!(
        stats["stock_cache"], 7,
        "the refused order's unit went back"
    );
    assert_eq!(stats["stock_log"]["committed"], 3);
    assert_eq!(stats["stock_log"]["rolled_back"], 1);
}

#[tokio::test]
async fn the_reconciler_settles_a_reservation_left_without_an_outcome() {
    let t = TestApp::spawn_with(|c| c.reconcile_after_secs = 0).await;
    let (item, promo) = t.sale(2).await;
    let s = &t.app.state;
    // A crash after the journal row and before the local transaction: a
    // reservation and an init row, nothing else.
    let id = t.app.context.ids.next_id();
    let reservation = seckill::cache::Reservation {
        promo: PromoId(promo),
        user: UserId(77),
        amount: 1,
        id,
    };
    s.ports.ledger.reserve(&[reservation]).await.unwrap();
    let now = chrono::Utc::now();
    let draft = seckill::domain::OrderDraft {
        stock_log_id: id,
        order_no: seckill::domain::OrderNo::new(now, id),
        user_id: UserId(77),
        item_id: ItemId(item),
        promo_id: PromoId(promo),
        amount: 1,
        unit_price_cents: 1,
        created_at: now,
    };
    s.ports.store.insert_stock_logs(&[draft]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let dry = seckill::worker::reconciler::reconcile_once(&t.app.context, true)
        .await
        .unwrap();
    assert_eq!((dry.stale, dry.rolled_back), (1, 0));
    assert_eq!(
        t.stats(promo).await["stock_cache"],
        1,
        "a dry run changes nothing"
    );
    let report = seckill::worker::reconciler::reconcile_once(&t.app.context, false)
        .await
        .unwrap();
    assert_eq!((report.rolled_back, report.released), (1, 1));
    let stats = t.stats(promo).await;
    assert_eq!(stats["stock_cache"], 2);
    assert_eq!(stats["stock_log"]["init"], 0);
    let again = seckill::worker::reconciler::reconcile_once(&t.app.context, false)
        .await
        .unwrap();
    assert_eq!(again.stale, 0);
}

#[tokio::test]
async fn the_reconciler_replays_a_deduction_that_never_ran() {
    let t = TestApp::spawn_with(|c| c.reconcile_after_secs = 0).await;
    let (item, promo) = t.sale(2).await;
    let users = buyers(&t, "1883", 1).await;
    buy(&t, users[0], promo, item).await.unwrap();
    t.settled(promo).await;
    // Forget the deduction, as if the message had died with the process.
    let pool = db(&t).await;
    sqlx::query("DELETE FROM stock_deduction")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE item_stock SET stock = stock + 1")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(t.stats(promo).await["stock_db"], 2);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let report = seckill::worker::reconciler::reconcile_once(&t.app.context, false)
        .await
        .unwrap();
    assert_eq!(report.replayed, 1);
    assert_eq!(t.stats(promo).await["stock_db"], 1);
    let again = seckill::worker::reconciler::reconcile_once(&t.app.context, false)
        .await
        .unwrap();
    assert_eq!(again.replayed, 0);
}
