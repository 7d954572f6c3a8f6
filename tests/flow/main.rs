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

/// Another connection holding the database's write lock (`ROLLBACK` on it
/// lets go).
async fn hold_write_lock(t: &TestApp) -> sqlx::pool::PoolConnection<sqlx::Sqlite> {
    let mut held = db(t).await.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *held)
        .await
        .unwrap();
    held
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

/// A seckill token, as the token endpoint issues it.
async fn token(
    s: &seckill::http::AppState,
    user: UserId,
    promo: i64,
    item: i64,
) -> Result<String, ServiceError> {
    Ok(s.tokens
        .issue(user, PromoId(promo), ItemId(item), None)
        .await?
        .token)
}

/// An order of `amount` units with `token`, as the order endpoint places it.
async fn place(
    s: &seckill::http::AppState,
    user: UserId,
    (promo, item, amount): (i64, i64, i64),
    token: String,
) -> Result<seckill::domain::Order, ServiceError> {
    s.orders
        .place(
            user,
            PlaceOrder {
                promo_id: PromoId(promo),
                item_id: ItemId(item),
                amount,
                token,
            },
        )
        .await
}

/// Token then order through the services, as the HTTP handlers do.
async fn buy(
    t: &TestApp,
    user: UserId,
    promo: i64,
    item: i64,
) -> Result<seckill::domain::Order, ServiceError> {
    let s = &t.app.state;
    let token = token(s, user, promo, item).await?;
    place(s, user, (promo, item, 1), token).await
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

/// An order request cut off before its answer (the request deadline, a
/// client hanging up) was answered 503 — nothing written — and gives its
/// seckill token back. Its batch, held up before the local transaction,
/// then rolls the order back rather than committing it behind that answer;
/// the buyer's retry with the same token buys, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_cut_off_before_its_answer_gives_its_token_back() {
    let t = TestApp::spawn().await;
    let (item, promo) = t.sale(3).await;
    let user = buyers(&t, "1882", 1).await[0];
    let s = &t.app.state;
    let token = s
        .tokens
        .issue(user, PromoId(promo), ItemId(item), None)
        .await
        .unwrap()
        .token;
    let order = || PlaceOrder {
        promo_id: PromoId(promo),
        item_id: ItemId(item),
        amount: 1,
        token: token.clone(),
    };
    // Another connection holds the database's write lock: the order's
    // batch waits for it (its journal insert).
    let mut held = hold_write_lock(&t).await;
    let cut_off = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        s.orders.place(user, order()),
    )
    .await;
    assert!(cut_off.is_err(), "the order was not held up: {cut_off:?}");
    sqlx::query("ROLLBACK").execute(&mut *held).await.unwrap();
    drop(held);
    // The batch goes on without its caller: journal, reservation, and then
    // no commit — the row rolled back, the unit given back.
    for _ in 0..200 {
        if t.stats(promo).await["stock_log"]["rolled_back"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let stats = t.settled(promo).await;
    assert_eq!(
        (
            stats["orders"].as_i64(),
            stats["sold"].as_i64(),
            stats["stock_cache"].as_i64(),
            stats["stock_log"]["rolled_back"].as_i64()
        ),
        (Some(0), Some(0), Some(3), Some(1)),
        "{stats}"
    );
    let bought = s.orders.place(user, order()).await;
    assert!(bought.is_ok(), "the token came back: {bought:?}");
    let again = s.orders.place(user, order()).await;
    assert!(
        matches!(
            again,
            Err(ServiceError::InvalidToken | ServiceError::AlreadyBought)
        ),
        "{again:?}"
    );
    let stats = t.settled(promo).await;
    assert_eq!(
        (stats["orders"].as_i64(), stats["stock_db"].as_i64()),
        (Some(1), Some(2))
    );
}

/// The other way round: an order that reached its local transaction holds
/// its request. A request deadline passing meanwhile (here a slow broker
/// takes the half message) waits for the outcome — 201 and the order —
/// rather than answering 503 over an order that then commits (API.md: a 503
/// wrote nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_passing_while_its_order_commits_waits_for_the_outcome() {
    let t = TestApp::spawn_with(|c| {
        c.request_timeout_ms = 1_000;
        c.local_tx_timeout_ms = 800;
        c.ledger_rebuild_quiet_ms = 800;
    })
    .await;
    let (item, promo) = t.sale(3).await;
    let session = t.user("18890000001").await;
    let token = t.token(&session, promo, item).await;
    assert_eq!(token.status, axum::http::StatusCode::CREATED);
    let token = token.json()["token"].as_str().unwrap().to_owned();
    t.app
        .memory_bus
        .as_ref()
        .unwrap()
        .delay_sends(std::time::Duration::from_millis(1_400));
    let started = std::time::Instant::now();
    let r = t.order(&session, promo, item, &token).await;
    let took = started.elapsed();
    assert_eq!(r.status, axum::http::StatusCode::CREATED, "{:?}", r.json());
    assert!(
        took >= std::time::Duration::from_millis(1_400),
        "answered past the deadline, with the outcome: {took:?}"
    );
    t.app
        .memory_bus
        .as_ref()
        .unwrap()
        .delay_sends(std::time::Duration::ZERO);
    let stats = t.settled(promo).await;
    assert_eq!(
        (
            stats["orders"].as_i64(),
            stats["stock_db"].as_i64(),
            stats["stock_cache"].as_i64()
        ),
        (Some(1), Some(2), Some(2)),
        "{stats}"
    );
}

/// Not only an order: any request whose database write started before its
/// deadline is answered with what was written (the deadline waits for it,
/// within the grace), never 503 over a write that commits behind it.
#[tokio::test]
async fn a_write_started_before_the_deadline_is_answered_with_what_was_written() {
    let t = TestApp::spawn_with(|c| {
        c.request_timeout_ms = 1_000;
        c.local_tx_timeout_ms = 800;
        c.ledger_rebuild_quiet_ms = 800;
        c.sqlite_busy_timeout_ms = 10_000;
    })
    .await;
    let item = t.item(5).await;
    let mut held = hold_write_lock(&t).await;
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        sqlx::query("ROLLBACK").execute(&mut *held).await.unwrap();
    });
    let started = std::time::Instant::now();
    let r = t
        .call(
            "PATCH",
            &format!("/api/v1/admin/items/{item}"),
            Some(ADMIN),
            Some(serde_json::json!({"title": "Renamed past the deadline"})),
        )
        .await;
    let took = started.elapsed();
    releaser.await.unwrap();
    assert_eq!(r.status, axum::http::StatusCode::OK, "{:?}", r.json());
    assert!(
        took >= std::time::Duration::from_millis(1_500),
        "answered past the deadline, with what was written: {took:?}"
    );
    assert_eq!(r.json()["title"], "Renamed past the deadline");
    let read = t.get(&format!("/api/v1/items/{item}"), None).await;
    assert_eq!(read.json()["title"], "Renamed past the deadline");
}

/// Passes on what the bus delivers.
struct Watch(tokio::sync::mpsc::UnboundedSender<seckill::mq::Event>);

#[async_trait::async_trait]
impl seckill::mq::MessageHandler for Watch {
    async fn handle(&self, event: &seckill::mq::Event) -> anyhow::Result<()> {
        let _ = self.0.send(event.clone());
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_local_transaction_gives_the_reservation_back_and_rolls_the_message_back() {
    let t = TestApp::spawn().await;
    let (item, promo) = t.sale(3).await;
    let users = buyers(&t, "1881", 2).await;
    let pool = db(&t).await;
    // What the bus delivers to the stock topic, beside the app's consumer.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    t.app
        .state
        .ports
        .bus
        .subscribe(
            seckill::mq::Topic::Stock,
            "test-watch",
            seckill::mq::Delivery::Clustering,
            Arc::new(Watch(seen_tx)),
        )
        .await
        .unwrap();
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
    // Check-backs come after 100 ms here: a half message left behind would
    // be delivered within this wait.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        seen.try_recv().is_err(),
        "the rolled-back message was delivered"
    );
    assert_eq!(t.stats(promo).await["stock_db"], 3);

    sqlx::query("DROP TRIGGER injected_failure")
        .execute(&pool)
        .await
        .unwrap();
    buy(&t, users[0], promo, item)
        .await
        .expect("the same buyer can buy once the DB is healthy");
    let delivered = tokio::time::timeout(std::time::Duration::from_secs(5), seen.recv()).await;
    assert!(
        matches!(delivered, Ok(Some(seckill::mq::Event::StockDeduct { .. }))),
        "the watch sees a committed order's message: {delivered:?}"
    );
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

/// One unit reserved for `user` behind the app's back, as a batch does it:
/// its `init` journal row, then the reservation.
async fn journalled_reservation(
    t: &TestApp,
    item: i64,
    promo: i64,
    user: i64,
) -> seckill::cache::Reservation {
    let s = &t.app.state;
    let id = t.app.context.ids.next_id();
    let now = chrono::Utc::now();
    let draft = seckill::domain::OrderDraft {
        stock_log_id: id,
        order_no: seckill::domain::OrderNo::new(now, id),
        user_id: UserId(user),
        item_id: ItemId(item),
        promo_id: PromoId(promo),
        amount: 1,
        unit_price_cents: 1,
        created_at: now,
    };
    s.ports.store.insert_stock_logs(&[draft]).await.unwrap();
    let reservation = seckill::cache::Reservation {
        promo: PromoId(promo),
        user: UserId(user),
        amount: 1,
        id,
    };
    s.ports.ledger.reserve(&[reservation]).await.unwrap();
    reservation
}

/// The ledger counts a buyer's units from the reservation on. An earlier
/// attempt left unsettled (a DB outage kept its row `init`, or its
/// give-back failed) must not tell the buyer "already bought" for good:
/// 503, token kept for the retry, and once the reconciler settles the row
/// the retry buys.
#[tokio::test]
async fn an_attempt_not_settled_yet_is_no_final_already_bought() {
    let t = TestApp::spawn_with(|c| {
        own_passes_only(c); // the test's own pass settles the row
        c.reconcile_after_secs = 0;
    })
    .await;
    let (item, promo) = t.sale(3).await;
    let users = buyers(&t, "1887", 1).await;
    let user = users[0];
    journalled_reservation(&t, item, promo, user.0).await;

    let s = &t.app.state;
    let tok = token(s, user, promo, item).await.unwrap();
    let refused = place(s, user, (promo, item, 1), tok.clone()).await;
    assert!(
        matches!(refused, Err(ServiceError::Unavailable { .. })),
        "no order holds the unit the ledger counts: {refused:?}"
    );

    // The reconciler rolls the row back and gives its unit back; the same
    // token then buys.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    seckill::worker::reconciler::reconcile_once(&t.app.context, false)
        .await
        .unwrap();
    let order = place(s, user, (promo, item, 1), tok).await.unwrap();
    assert_eq!(order.user_id, user);

    // Bought now: a second try is told so, for good.
    let again = buy(&t, user, promo, item).await;
    assert!(
        matches!(again, Err(ServiceError::AlreadyBought)),
        "{again:?}"
    );
}

/// The permits left in a promo's token gate.
async fn gate(t: &TestApp, promo: i64) -> i64 {
    let v = t.app.state.ports.kv.get(&format!("gate:{promo}")).await;
    v.unwrap().expect("a gate").parse().unwrap()
}

#[tokio::test]
async fn the_reconciler_settles_a_reservation_left_without_an_outcome() {
    let t = TestApp::spawn_with(|c| c.reconcile_after_secs = 0).await;
    let (item, promo) = t.sale(2).await;
    // A crash after the journal row and before the local transaction: a
    // reservation and an init row, nothing else.
    journalled_reservation(&t, item, promo, 77).await;
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
    let permits = gate(&t, promo).await;
    let report = seckill::worker::reconciler::reconcile_once(&t.app.context, false)
        .await
        .unwrap();
    assert_eq!((report.rolled_back, report.released), (1, 1));
    let stats = t.stats(promo).await;
    assert_eq!(stats["stock_cache"], 2);
    assert_eq!(
        gate(&t, promo).await,
        permits + i64::from(t.app.state.config.gate_factor),
        "nobody is answered for the unit any more: the gate reopens for it"
    );
    assert_eq!(stats["stock_log"]["init"], 0);
    let again = seckill::worker::reconciler::reconcile_once(&t.app.context, false)
        .await
        .unwrap();
    assert_eq!(again.stale, 0);
}

/// A rolled-back row whose give-back failed (the cache did, at that
/// moment) is never looked at by the stale-row step again: the sweep finds
/// its record in the ledger and gives it back — the units and the buyer —
/// and drops the records of committed orders.
#[tokio::test]
async fn the_reconciler_gives_back_a_rolled_back_reservation_the_ledger_still_holds() {
    let t = TestApp::spawn().await;
    let (item, promo) = t.sale(3).await;
    let users = buyers(&t, "1884", 1).await;
    buy(&t, users[0], promo, item).await.unwrap();
    t.settled(promo).await;
    let s = &t.app.state;
    let mine = journalled_reservation(&t, item, promo, 78).await;
    let id = mine.id;
    // Rolled back; the give-back never happened.
    s.ports.store.roll_back_stock_logs(&[id]).await.unwrap();
    assert_eq!(t.stats(promo).await["stock_cache"], 1);
    assert_eq!(
        s.ports
            .ledger
            .reservations(PromoId(promo), 100)
            .await
            .unwrap()
            .ids
            .len(),
        2
    );

    let dry = seckill::worker::reconciler::reconcile_once(&t.app.context, true)
        .await
        .unwrap();
    assert_eq!(
        (dry.stranded_pending, dry.records_forgotten),
        (1, 1),
        "{dry:?}"
    );
    assert_eq!(
        t.stats(promo).await["stock_cache"],
        1,
        "a dry run changes nothing"
    );
    let permits = gate(&t, promo).await;
    let report = seckill::worker::reconciler::reconcile_once(&t.app.context, false)
        .await
        .unwrap();
    assert_eq!(
        gate(&t, promo).await,
        permits + i64::from(t.app.state.config.gate_factor),
        "a stranded unit back on sale reopens the gate"
    );
    assert_eq!(
        (
            report.stranded_given_back,
            report.records_forgotten,
            report.stranded_pending
        ),
        (1, 1, 0),
        "{report:?}"
    );
    let stats = t.stats(promo).await;
    assert_eq!(
        (&stats["stock_cache"], &stats["stock_db"], &stats["sold"]),
        (&2.into(), &2.into(), &1.into())
    );
    assert!(s
        .ports
        .ledger
        .reservations(PromoId(promo), 100)
        .await
        .unwrap()
        .ids
        .is_empty());
    // The buyer is free again (limit 1); the committed buyer is not.
    let again = |user: i64| seckill::cache::Reservation {
        user: UserId(user),
        id: t.app.context.ids.next_id(),
        ..mine
    };
    let out = s.ports.ledger.reserve(&[again(78)]).await.unwrap();
    assert!(
        matches!(out[0], seckill::cache::ReserveOutcome::Reserved { .. }),
        "{out:?}"
    );
    let second = seckill::worker::reconciler::reconcile_once(&t.app.context, false)
        .await
        .unwrap();
    assert_eq!(second.stranded_given_back, 0, "given back once");
    assert_eq!(
        t.stats(promo).await["stock_cache"],
        1,
        "the new reservation is left alone"
    );
}

/// Three reconciler passes, the quiet time apart, while the ledger's
/// give-backs fail: each finds one give-back pending and none done
/// (`pending_and_done` picks which kind), repairs no drift, and the ledger
/// stays one unit below the DB (the unit waits for its give-back).
async fn three_passes_hold_back(
    t: &TestApp,
    r: &mut seckill::worker::reconciler::Reconciler,
    promo: i64,
    pending_and_done: impl Fn(&seckill::worker::reconciler::ReconcileReport) -> (usize, usize),
) {
    for look in 0..3 {
        let report = r.pass(&t.app.context, false).await.unwrap();
        assert_eq!(pending_and_done(&report), (1, 0), "look {look}: {report:?}");
        assert!(report.drifts.is_empty(), "look {look}: {report:?}");
        let stats = t.stats(promo).await;
        assert_eq!(
            stats["stock_cache"].as_i64().unwrap() + 1,
            stats["stock_db"].as_i64().unwrap(),
            "look {look}: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    }
}

/// While a rolled-back record cannot be given back, its promo's ledger is
/// one unit low — drift, to the ledger check — and must not be repaired:
/// the give-back that comes through later would count the unit twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promo_with_a_record_not_given_back_gets_no_drift_repair_until_it_is() {
    let t = TestApp::spawn_with(own_passes_only).await;
    let (item, promo) = t.sale(3).await;
    let users = buyers(&t, "1889", 1).await;
    buy(&t, users[0], promo, item).await.unwrap();
    t.settled(promo).await;
    let faults = t.app.memory_ledger.clone().expect("the embedded ledger");
    let mine = journalled_reservation(&t, item, promo, 79).await;
    t.app
        .state
        .ports
        .store
        .roll_back_stock_logs(&[mine.id])
        .await
        .unwrap();
    faults.fail_give_backs(true);

    let mut r = seckill::worker::reconciler::Reconciler::new();
    three_passes_hold_back(&t, &mut r, promo, |r| {
        (r.stranded_pending, r.stranded_given_back)
    })
    .await;

    faults.fail_give_backs(false);
    let back = r.pass(&t.app.context, false).await.unwrap();
    assert_eq!(back.stranded_given_back, 1, "{back:?}");
    assert!(back.drifts.is_empty(), "{back:?}");
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    let after = r.pass(&t.app.context, false).await.unwrap();
    assert!(after.drifts.is_empty(), "{after:?}");
    let stats = t.stats(promo).await;
    assert_eq!(
        (&stats["stock_cache"], &stats["stock_db"], &stats["sold"]),
        (&2.into(), &2.into(), &1.into()),
        "the unit counted once"
    );
}

/// The sweep looks at `ledger_sweep_max_records` records a pass. While it
/// has not reached them all, a rolled-back record it has not seen yet may
/// still be held — the ledger a unit low, drift to the ledger check — so no
/// repair: the give-back when the sweep reaches the record would count the
/// unit twice (an oversell). One record a pass here, six records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_cut_off_at_its_bound_leaves_the_drift_unrepaired() {
    let t = TestApp::spawn_with(|c| {
        own_passes_only(c);
        c.ledger_sweep_max_records = 1;
    })
    .await;
    let (item, promo) = t.sale(8).await;
    for u in buyers(&t, "1891", 5).await {
        buy(&t, u, promo, item).await.unwrap();
    }
    t.settled(promo).await;
    let mine = journalled_reservation(&t, item, promo, 79).await;
    t.app
        .state
        .ports
        .store
        .roll_back_stock_logs(&[mine.id])
        .await
        .unwrap();
    let stats = t.stats(promo).await;
    assert_eq!(
        (&stats["stock_cache"], &stats["stock_db"]),
        (&2.into(), &3.into())
    );

    // The embedded ledger lists its records in id order: the stranded
    // one, the newest, comes last — after five passes that each see one
    // committed record while the drift holds still.
    let mut r = seckill::worker::reconciler::Reconciler::new();
    for look in 0..8 {
        let report = r.pass(&t.app.context, false).await.unwrap();
        assert!(
            report.drifts.iter().all(|d| !d.repaired),
            "look {look}: repaired before the sweep saw every record: {report:?}"
        );
        if look < 4 {
            assert_eq!(
                t.stats(promo).await["stock_cache"],
                2,
                "look {look}: the unit is still missing"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    }
    let stats = t.stats(promo).await;
    assert_eq!(
        (&stats["stock_cache"], &stats["stock_db"], &stats["sold"]),
        (&3.into(), &3.into(), &5.into()),
        "the stranded unit given back once: {stats}"
    );
}

/// A cancellation puts its units back in the DB stock, then gives them
/// back to the ledger; when that give-back fails (or the instance dies in
/// between) nothing calls it again — a second cancel finds the order
/// cancelled. The reconciler's sweep finds the cancelled order the ledger
/// never got back and gives its units back once; drift repair stays away
/// meanwhile (it would make them up, and the give-back add them again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_the_ledger_never_got_is_given_back_by_the_reconciler_once() {
    let t = TestApp::spawn_with(own_passes_only).await;
    let (item, promo) = t.sale(3).await;
    let users = buyers(&t, "1890", 2).await;
    let mine = buy(&t, users[0], promo, item).await.unwrap();
    buy(&t, users[1], promo, item).await.unwrap();
    t.settled(promo).await;
    let faults = t.app.memory_ledger.clone().expect("the embedded ledger");
    faults.fail_give_backs(true);
    let s = &t.app.state;
    let cancelled = s
        .orders
        .cancel(users[0], mine.order_no.as_str())
        .await
        .unwrap();
    assert_eq!(cancelled.status, seckill::domain::OrderStatus::Cancelled);
    let stats = t.stats(promo).await;
    assert_eq!(
        (&stats["stock_cache"], &stats["stock_db"]),
        (&1.into(), &2.into()),
        "the DB has the unit back, the ledger not"
    );

    let mut r = seckill::worker::reconciler::Reconciler::new();
    three_passes_hold_back(&t, &mut r, promo, |r| {
        (r.restocks_pending, r.restocks_given_back)
    })
    .await;
    let dry = seckill::worker::reconciler::reconcile_once(&t.app.context, true)
        .await
        .unwrap();
    assert_eq!(dry.restocks_pending, 1, "{dry:?}");

    faults.fail_give_backs(false);
    let back = r.pass(&t.app.context, false).await.unwrap();
    assert_eq!(
        (back.restocks_given_back, back.restocks_pending),
        (1, 0),
        "{back:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    let after = r.pass(&t.app.context, false).await.unwrap();
    assert_eq!(after.restocks_given_back, 0, "given back once: {after:?}");
    assert!(after.drifts.is_empty(), "{after:?}");
    let stats = t.stats(promo).await;
    assert_eq!(
        (&stats["stock_cache"], &stats["stock_db"], &stats["sold"]),
        (&2.into(), &2.into(), &1.into())
    );
}

/// The gate hands out `gate_factor` tokens a unit, and a crowd spends them
/// all long before an unpaid order times out: a cancelled order's units
/// would sit in the ledger with no token left to buy them. A give-back
/// reopens the gate for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_orders_unit_can_be_bought_after_the_crowd_spent_the_gate() {
    let t = TestApp::spawn_with(|c| c.gate_factor = 2).await;
    let (item, promo) = t.sale(1).await;
    let users = buyers(&t, "1891", 4).await;
    let s = &t.app.state;
    // The gate's two permits: one to a buyer who finds it sold out.
    let late = token(s, users[1], promo, item).await.unwrap();
    let first = buy(&t, users[0], promo, item).await.unwrap();
    assert!(matches!(
        place(s, users[1], (promo, item, 1), late).await,
        Err(ServiceError::SoldOut)
    ));
    assert!(matches!(
        token(s, users[2], promo, item).await,
        Err(ServiceError::SoldOut)
    ));
    t.settled(promo).await;

    s.orders
        .cancel(users[0], first.order_no.as_str())
        .await
        .unwrap();
    let again = buy(&t, users[2], promo, item).await;
    assert!(again.is_ok(), "{again:?}");
    assert!(matches!(
        token(s, users[3], promo, item).await,
        Err(ServiceError::SoldOut)
    ));
    let stats = t.settled(promo).await;
    assert_eq!(
        (&stats["sold"], &stats["stock_db"], &stats["stock_cache"]),
        (&1.into(), &0.into(), &0.into())
    );
}

/// A pure-DB sale whose ledger was lost and rebuilt sold out (an embedded
/// restart here, Redis restarted empty in a cluster) sells the units a
/// cancellation gives back: its ledger's sold-out flag, never told of the
/// DB's cancellations, does not answer its tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pure_db_sale_sells_a_cancelled_unit_after_its_ledger_was_rebuilt_sold_out() {
    use seckill::config::OrderStrategy::DbLock;
    let db_lock = |c: &mut seckill::config::Config| {
        own_passes_only(c);
        c.order_strategy = DbLock;
    };
    let t = TestApp::spawn_with(db_lock).await;
    let (item, promo) = t.sale(2).await;
    let users = buyers(&t, "1892", 4).await;
    let first = buy(&t, users[0], promo, item).await.unwrap();
    buy(&t, users[1], promo, item).await.unwrap();
    // Restarted: the gate and the ledger are gone; the first token asks for
    // the rebuild (503 until it is done), which finds the DB sold out.
    let t = t.restarted(db_lock).await;
    let s = &t.app.state;
    let mut tries = 0;
    loop {
        match token(s, users[2], promo, item).await {
            Err(ServiceError::Unavailable { .. }) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(ServiceError::SoldOut) => break,
            other => panic!("a sold-out db-lock sale after its rebuild: {other:?}"),
        }
    }
    assert!(s.ports.ledger.sold_out(PromoId(promo)).await.unwrap());
    s.orders
        .cancel(users[0], first.order_no.as_str())
        .await
        .unwrap();
    // Past the local flag's life: the next token is the ledger's to refuse
    // no more.
    tokio::time::sleep(std::time::Duration::from_millis(
        t.app.state.config.local_sold_out_ttl_ms + 50,
    ))
    .await;
    let again = buy(&t, users[2], promo, item).await;
    assert!(again.is_ok(), "{again:?}");
    let late = buy(&t, users[3], promo, item).await;
    assert!(matches!(late, Err(ServiceError::SoldOut)), "{late:?}");
    let stats = t.stats(promo).await;
    assert_eq!(
        (&stats["sold"], &stats["stock_db"]),
        (&2.into(), &0.into()),
        "{stats}"
    );
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

    // A running reconciler looks from its mark on: a deduction lost after
    // its first pass is replayed by its next; one whose row was written
    // long before the mark waits for the next look over every row (a
    // fresh reconciler's first pass here).
    let mut running = seckill::worker::reconciler::Reconciler::new();
    let first = running.pass(&t.app.context, false).await.unwrap();
    assert_eq!(first.replayed, 0);
    buy(&t, users_of(&t, "1884").await, promo, item)
        .await
        .unwrap();
    t.settled(promo).await;
    // Both orders' deductions forgotten.
    sqlx::query("DELETE FROM stock_deduction")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE item_stock SET stock = stock + 2")
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // The first order's row, written "a day ago", is not looked at again.
    sqlx::query("UPDATE stock_log SET updated_at = '2000-01-01T00:00:00+00:00' WHERE id = (SELECT MIN(id) FROM stock_log)")
        .execute(&pool)
        .await
        .unwrap();
    let next = running.pass(&t.app.context, false).await.unwrap();
    assert_eq!(next.replayed, 1, "the deduction lost after the mark");
    let full = seckill::worker::reconciler::reconcile_once(&t.app.context, false)
        .await
        .unwrap();
    assert_eq!(full.replayed, 1, "the old row, on a look over every row");
    assert_eq!(t.settled(promo).await["stock_db"], 0);
}

async fn users_of(t: &TestApp, prefix: &str) -> UserId {
    buyers(t, prefix, 1).await[0]
}

/// Quick settings for the recovery tests: a short local transaction
/// deadline, and the quiet time a rebuild or a drift repair waits for.
fn quick_recovery(c: &mut seckill::config::Config) {
    c.local_tx_timeout_ms = 300;
    c.ledger_rebuild_quiet_ms = 400;
    c.request_timeout_ms = 2_000;
}

/// `quick_recovery`, and no background reconciler pass during the test: one
/// could give back what the test's own pass is to give back.
fn own_passes_only(c: &mut seckill::config::Config) {
    quick_recovery(c);
    c.reconcile_interval_secs = 3600;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_order_is_cancelled_at_its_time_out_and_its_unit_sold_to_another_buyer() {
    let t = TestApp::spawn_with(|c| c.order_payment_timeout_secs = 1).await;
    let (item, promo) = t.sale(1).await;
    let users = buyers(&t, "1884", 2).await;
    let order = buy(&t, users[0], promo, item).await.unwrap();
    assert!(matches!(
        buy(&t, users[1], promo, item).await,
        Err(ServiceError::SoldOut)
    ));
    // The delayed message (a timer here) cancels it and gives the unit back.
    let mut cancelled = None;
    for _ in 0..100 {
        let o = t
            .app
            .state
            .orders
            .get(users[0], order.order_no.as_str())
            .await
            .unwrap();
        if o.status == seckill::domain::OrderStatus::Cancelled {
            cancelled = Some(o);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(cancelled.is_some(), "never cancelled at its time-out");
    let stats = t.settled(promo).await;
    assert_eq!(
        (stats["stock_db"].as_i64(), stats["sold"].as_i64()),
        (Some(1), Some(0))
    );
    // Paying late is refused; the unit goes to the other buyer.
    assert!(matches!(
        t.app
            .state
            .orders
            .pay(users[0], order.order_no.as_str())
            .await,
        Err(ServiceError::Conflict(_))
    ));
    let other = buy(&t, users[1], promo, item).await.unwrap();
    assert_eq!(other.user_id, users[1]);
    let stats = t.settled(promo).await;
    assert_eq!(
        (stats["stock_db"].as_i64(), stats["sold"].as_i64()),
        (Some(0), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_after_the_time_is_up_is_refused_and_the_sweep_cancels_what_no_timer_did() {
    let t = TestApp::spawn_with(|c| c.order_payment_timeout_secs = 3600).await;
    let (item, promo) = t.sale(3).await;
    let users = buyers(&t, "1885", 2).await;
    let a = buy(&t, users[0], promo, item).await.unwrap();
    let b = buy(&t, users[1], promo, item).await.unwrap();
    // The same system an hour later: its timers died with an old process.
    let mut later = (*t.app.context.config).clone();
    later.order_payment_timeout_secs = 1;
    let cx = seckill::service::Context {
        config: Arc::new(later),
        ..t.app.context.clone()
    };
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let swept = seckill::service::payment::sweep(&cx, std::time::Duration::ZERO, 100)
        .await
        .unwrap();
    assert_eq!(swept, (2, 0));
    for (u, o) in [(users[0], &a), (users[1], &b)] {
        let o = t
            .app
            .state
            .orders
            .get(u, o.order_no.as_str())
            .await
            .unwrap();
        assert_eq!(o.status, seckill::domain::OrderStatus::Cancelled);
    }
    let stats = t.settled(promo).await;
    assert_eq!(
        (stats["stock_cache"].as_i64(), stats["sold"].as_i64()),
        (Some(3), Some(0))
    );
    assert_eq!(
        seckill::service::payment::sweep(&cx, std::time::Duration::ZERO, 100)
            .await
            .unwrap(),
        (0, 0),
        "idempotent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_ledger_is_rebuilt_from_the_db_and_the_sale_goes_on_without_overselling(
) {
    let first = TestApp::spawn_with(quick_recovery).await;
    let (item, promo) = first.sale(5).await;
    let users = buyers(&first, "1886", 8).await;
    for &u in &users[..2] {
        buy(&first, u, promo, item).await.unwrap();
    }
    // An undecided reservation at the moment of the crash: journalled,
    // never committed.
    let stranded = first.app.context.ids.next_id();
    let now = chrono::Utc::now();
    first
        .app
        .state
        .ports
        .store
        .insert_stock_logs(&[seckill::domain::OrderDraft {
            stock_log_id: stranded,
            order_no: seckill::domain::OrderNo::new(now, stranded),
            user_id: users[7],
            item_id: ItemId(item),
            promo_id: PromoId(promo),
            amount: 1,
            unit_price_cents: 1,
            created_at: now,
        }])
        .await
        .unwrap();
    for _ in 0..200 {
        if first.stats(promo).await["stock_db"] == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }

    let t = first
        .restarted(|c| {
            quick_recovery(c);
            c.reconcile_after_secs = 1;
        })
        .await;
    // Nothing is loaded: 503 until the rebuild, then orders resume.
    let refused = buy(&t, users[2], promo, item).await;
    assert!(
        matches!(refused, Err(ServiceError::Unavailable { .. })),
        "{refused:?}"
    );
    let mut sold = 0;
    let mut waited = 0;
    for &u in &users[2..7] {
        loop {
            match buy(&t, u, promo, item).await {
                Ok(_) => {
                    sold += 1;
                    break;
                }
                Err(ServiceError::SoldOut) => break,
                Err(ServiceError::Unavailable { .. }) if waited < 100 => {
                    waited += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("unexpected refusal: {e:?}"),
            }
        }
    }
    // 5 units: 2 sold before, 1 held by the stranded reservation.
    assert_eq!(sold, 2, "the rebuilt ledger sold exactly what was left");
    // The reconciler rolls the stranded reservation back and gives its
    // unit back to the rebuilt ledger; the last buyer gets it.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let report = seckill::worker::reconciler::reconcile_once(&t.app.context, false)
        .await
        .unwrap();
    assert_eq!((report.rolled_back, report.released), (1, 1), "{report:?}");
    // A unit is for sale again, and a buyer of the first process is still
    // known to the per-user limit of the rebuilt ledger.
    let again = buy(&t, users[0], promo, item).await;
    assert!(
        matches!(again, Err(ServiceError::AlreadyBought)),
        "{again:?}"
    );
    buy(&t, users[6], promo, item).await.unwrap();
    let stats = t.settled(promo).await;
    assert_eq!(stats["sold"], 5);
    assert_eq!(stats["orders"], 5);
    assert_eq!(stats["stock_db"], 0);
    assert_eq!(stats["stock_cache"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_drift_is_repaired_only_once_it_holds_still_and_a_dry_run_changes_nothing() {
    let t = TestApp::spawn_with(quick_recovery).await;
    let (item, promo) = t.sale(6).await;
    let users = buyers(&t, "1887", 1).await;
    buy(&t, users[0], promo, item).await.unwrap();
    t.settled(promo).await;
    let ledger = &t.app.state.ports.ledger;
    // A reservation given back nowhere (a cache failure at that moment):
    // the ledger is 2 units low.
    let lost = seckill::cache::Reservation {
        promo: PromoId(promo),
        user: UserId(999_999),
        amount: 1,
        id: t.app.context.ids.next_id(),
    };
    ledger.reserve(&[lost]).await.unwrap();
    ledger
        .reserve(&[seckill::cache::Reservation {
            user: UserId(999_998),
            id: t.app.context.ids.next_id(),
            ..lost
        }])
        .await
        .unwrap();
    assert_eq!(t.stats(promo).await["stock_cache"], 3);

    let mut r = seckill::worker::reconciler::Reconciler::new();
    let dry = r.pass(&t.app.context, true).await.unwrap();
    assert_eq!(dry.drifts.len(), 1, "{dry:?}");
    assert_eq!((dry.drifts[0].ledger, dry.drifts[0].expected), (3, 5));
    let first = r.pass(&t.app.context, false).await.unwrap();
    assert_eq!(first.drifts_pending(), 1, "not repaired on a first look");
    assert_eq!(t.stats(promo).await["stock_cache"], 3);
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    let dry_again = r.pass(&t.app.context, true).await.unwrap();
    assert_eq!(dry_again.drifts_pending(), 1, "a dry run never repairs");
    let permits = gate(&t, promo).await;
    let second = r.pass(&t.app.context, false).await.unwrap();
    assert!(second.drifts[0].repaired, "{second:?}");
    assert_eq!(t.stats(promo).await["stock_cache"], 5);
    let factor = i64::from(t.app.state.config.gate_factor);
    assert_eq!(
        gate(&t, promo).await,
        permits + 2 * factor,
        "the two units back on sale: the gate reopens for them"
    );

    // The other way (units given back twice): the ledger is high.
    ledger
        .restock(PromoId(promo), t.app.context.ids.next_id(), 2)
        .await
        .unwrap();
    assert_eq!(t.stats(promo).await["stock_cache"], 7);
    r.pass(&t.app.context, false).await.unwrap();
    // A sale that moves is not repaired: its difference is in flight.
    ledger
        .reserve(&[seckill::cache::Reservation {
            user: UserId(999_997),
            id: t.app.context.ids.next_id(),
            ..lost
        }])
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    let moved = r.pass(&t.app.context, false).await.unwrap();
    assert_eq!(moved.drifts_pending(), 1, "{moved:?}");
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    let held = r.pass(&t.app.context, false).await.unwrap();
    assert!(held.drifts[0].repaired, "{held:?}");
    assert_eq!(
        gate(&t, promo).await,
        permits + 2 * factor,
        "units taken off sale leave the gate be"
    );
    let stats = t.stats(promo).await;
    assert_eq!(stats["stock_cache"], 5);
    assert_eq!(stats["stock_db"], 5);
    assert_eq!(stats["sold"], 1);
}

/// The journal row comes first: while the database cannot take it, the
/// ledger is not touched (a reservation never exists without its row, so a
/// crash in between cannot strand one). Past the journal's deadline the
/// buyer gets 503 with nothing reserved, and a row the abandoned insert
/// writes late is rolled back as soon as it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reservation_is_taken_before_its_journal_row_is_written() {
    let t = TestApp::spawn_with(|c| {
        c.local_tx_timeout_ms = 400;
        c.ledger_rebuild_quiet_ms = 400;
        c.request_timeout_ms = 5_000;
    })
    .await;
    let (item, promo) = t.sale(3).await;
    let users = buyers(&t, "1887", 2).await;
    let mut held = hold_write_lock(&t).await;
    let waiting = {
        let s = t.app.state.clone();
        let user = users[0];
        let token = token(&s, user, promo, item).await.unwrap();
        tokio::spawn(async move { place(&s, user, (promo, item, 1), token).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(
        t.stats(promo).await["stock_cache"],
        3,
        "nothing reserved while the journal row waits"
    );
    let answer = waiting.await.unwrap();
    assert!(
        matches!(answer, Err(ServiceError::Unavailable { .. })),
        "past the journal's deadline: {answer:?}"
    );
    assert_eq!(t.stats(promo).await["stock_cache"], 3, "nothing reserved");
    sqlx::query("ROLLBACK").execute(&mut *held).await.unwrap();
    drop(held);

    // The abandoned insert goes through once the lock is free: its row is
    // rolled back at once (not left `init` for the reconciler), nothing
    // given back.
    let mut stats = serde_json::Value::Null;
    for _ in 0..200 {
        stats = t.stats(promo).await;
        if stats["stock_log"]["rolled_back"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        (
            stats["stock_log"]["init"].as_i64(),
            stats["stock_log"]["rolled_back"].as_i64()
        ),
        (Some(0), Some(1)),
        "{stats}"
    );
    assert_eq!(stats["stock_cache"], 3, "{stats}");

    // The same buyer buys once the database answers.
    buy(&t, users[0], promo, item)
        .await
        .expect("the buyer was not recorded by the failed attempt");
    let stats = t.settled(promo).await;
    assert_eq!(
        (stats["stock_db"].as_i64(), stats["orders"].as_i64()),
        (Some(2), Some(1)),
        "{stats}"
    );
}

/// With a per-user limit above one, a buyer asking more units than are
/// left is refused SOLD_OUT, but the promo is not sold out: the next buyer
/// asking for what is left gets it (the refusal used to set this
/// instance's sold-out flag for everyone). Both kinds of order path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_more_units_than_are_left_does_not_mark_the_promo_sold_out() {
    use seckill::config::OrderStrategy;
    for strategy in [OrderStrategy::WriteBehind, OrderStrategy::DbLock] {
        let t = TestApp::spawn_with(|c| {
            c.per_user_limit = 2;
            c.order_strategy = strategy;
        })
        .await;
        let (item, promo) = t.sale(1).await;
        let users = buyers(&t, "1888", 2).await;
        let s = &t.app.state;
        let mut asks = Vec::new();
        for (&user, amount) in users.iter().zip([2, 1]) {
            asks.push((user, amount, token(s, user, promo, item).await.unwrap()));
        }
        let mut answers = Vec::new();
        for (user, amount, token) in asks {
            answers.push(place(s, user, (promo, item, amount), token).await);
        }
        assert!(
            matches!(answers[0], Err(ServiceError::SoldOut)),
            "{strategy:?}: {:?}",
            answers[0]
        );
        assert!(answers[1].is_ok(), "{strategy:?}: {:?}", answers[1]);
    }
}

/// A promo is sold only by instances whose strategy keeps its stock where
/// the strategy it was published under does: the ledger (write-behind) or
/// the DB alone (db-lock, db-optimistic). A deployment restarted with the
/// other kind refuses it with 409 `CONFLICT` naming both — a ledger warmed
/// at publish and never told of the DB's sales would sell them again — and
/// its reconciler leaves that promo alone (no drift "repaired", no ledger
/// rebuilt); the same kind sells on. The other way round, a pure-DB
/// instance's reconciler keeps a write-behind sale's ledger: a
/// cancellation's give-back that never ran is its sweep's to make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_stays_with_the_kind_of_strategy_it_was_published_under() {
    use seckill::config::OrderStrategy::{DbLock, DbOptimistic};
    use seckill::worker::reconciler::Reconciler;
    let lock = TestApp::spawn_with(|c| {
        own_passes_only(c);
        c.order_strategy = DbLock;
    })
    .await;
    let (item, promo) = lock.sale(5).await;
    let users = buyers(&lock, "1890", 4).await;
    for &u in &users[..2] {
        buy(&lock, u, promo, item).await.unwrap();
    }
    let stats = lock.stats(promo).await;
    assert_eq!(stats["strategy"], "db-lock", "{stats}");
    assert_eq!(stats["stock_db"], 3, "{stats}");

    // The same database, instances restarted with write-behind, and the
    // ledger as Redis would still hold it: warmed at publish with all 5
    // units, never told of the DB's sales (the embedded restart lost it).
    let wb = lock.restarted(own_passes_only).await;
    let ledger = &wb.app.state.ports.ledger;
    assert!(ledger.warm(PromoId(promo), 5, 1).await.unwrap());
    match buy(&wb, users[2], promo, item).await {
        Err(ServiceError::Conflict(m)) => {
            assert!(m.contains("db-lock") && m.contains("write-behind"), "{m}")
        }
        other => panic!("a token for a db-lock sale from write-behind: {other:?}"),
    }
    let order = place(&wb.app.state, users[2], (promo, item, 1), "t".into()).await;
    assert!(matches!(order, Err(ServiceError::Conflict(_))), "{order:?}");
    let session = wb.user("18900000777").await;
    let r = wb.token(&session, promo, item).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (409, "CONFLICT".to_owned()),
        "{:?}",
        r.json()
    );
    let mut reconciler = Reconciler::new();
    for _ in 0..3 {
        let report = reconciler.pass(&wb.app.context, false).await.unwrap();
        assert!(
            report.drifts.is_empty() && report.ledgers_missing == 0,
            "{report:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    }
    // Nothing sold from the stale ledger, and nothing "repaired" in it.
    let stats = wb.stats(promo).await;
    assert_eq!(
        (&stats["stock_db"], &stats["sold"], &stats["orders"]),
        (&3.into(), &2.into(), &2.into()),
        "{stats}"
    );
    assert_eq!(ledger.stock(PromoId(promo)).await.unwrap(), Some(5));
    assert!(
        stats["stock_cache"].is_null(),
        "a pure-DB sale's stats read no ledger: {stats}"
    );
    let page = wb.get(&format!("/api/v1/items/{item}"), None).await.json();
    assert_eq!(
        (&page["stock"], &page["sales"]),
        (&3.into(), &2.into()),
        "a pure-DB sale's item page shows the DB's figures: {page}"
    );

    // Another pure-DB strategy sells it on, from the DB (once its gate,
    // lost with the embedded process's memory, is loaded again: 503 until
    // then).
    let optimistic = lock
        .restarted(|c| {
            own_passes_only(c);
            c.order_strategy = DbOptimistic;
        })
        .await;
    let mut tries = 0;
    loop {
        match buy(&optimistic, users[2], promo, item).await {
            Ok(_) => break,
            Err(ServiceError::Unavailable { .. }) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("db-optimistic refused a db-lock sale: {e:?}"),
        }
    }
    assert_eq!(optimistic.stats(promo).await["stock_db"], 2);

    // And the other way: a write-behind sale is not sold by db-lock.
    let (item, promo) = wb.sale(3).await;
    let bought = buy(&wb, users[3], promo, item).await.unwrap();
    let also = buy(&wb, users[2], promo, item).await.unwrap();
    assert_eq!(wb.settled(promo).await["strategy"], "write-behind");
    let lock_again = wb
        .restarted(|c| {
            own_passes_only(c);
            c.order_strategy = DbLock;
        })
        .await;
    match buy(&lock_again, users[0], promo, item).await {
        Err(ServiceError::Conflict(m)) => assert!(
            m.contains("published under the write-behind order strategy")
                && m.contains("sells with db-lock"),
            "{m}"
        ),
        other => panic!("a token for a write-behind sale from db-lock: {other:?}"),
    }
    // A cancellation there gives the units back where the promo's sale
    // takes them from: its ledger (as Redis holds it: 1 unit left), not
    // only the DB.
    let ledger = &lock_again.app.state.ports.ledger;
    assert!(ledger.warm(PromoId(promo), 1, 1).await.unwrap());
    let page = lock_again
        .get(&format!("/api/v1/items/{item}"), None)
        .await
        .json();
    assert_eq!(
        page["stock"], 1,
        "a write-behind sale's item page shows its ledger's figures: {page}"
    );
    let (order, cancelled) = seckill::service::payment::cancel(
        &lock_again.app.context,
        &bought.order_no,
        &mut Default::default(),
    )
    .await
    .unwrap();
    assert!(cancelled, "{order:?}");
    assert_eq!(ledger.stock(PromoId(promo)).await.unwrap(), Some(2));
    assert_eq!(lock_again.stats(promo).await["stock_db"], 2);
    // A cancellation whose give-back to the ledger failed (only the DB's
    // cancel ran): this db-lock instance's reconciler gives it back, as a
    // write-behind instance's would.
    let (_, cancelled) = lock_again
        .app
        .context
        .ports
        .store
        .cancel_order(&also.order_no)
        .await
        .unwrap();
    assert!(cancelled);
    assert_eq!(ledger.stock(PromoId(promo)).await.unwrap(), Some(2));
    let report = Reconciler::new()
        .pass(&lock_again.app.context, false)
        .await
        .unwrap();
    assert_eq!(report.restocks_given_back, 1, "{report:?}");
    assert!(report.drifts.is_empty(), "{report:?}");
    assert_eq!(ledger.stock(PromoId(promo)).await.unwrap(), Some(3));
    assert_eq!(lock_again.stats(promo).await["stock_db"], 3);
}
