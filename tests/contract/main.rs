#![recursion_limit = "256"]
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
use seckill::store::detached::Detached;
use seckill::store::sqlite::SqliteStore;

// Several threads: the suites' concurrent cases race for real.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_ledger_honours_the_ledger_contract() {
    ledger::suite(|| async {
        Arc::new(MemoryStockLedger::new()) as Arc<dyn seckill::cache::StockLedger>
    })
    .await;
}

// Several threads: the suites' concurrent cases race for real.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_kv_store_honours_the_kv_contract() {
    kv::suite(Arc::new(MemoryKvStore::new())).await;
}

// Several threads: the suites' concurrent cases race for real.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_memory_rate_limiter_honours_the_rate_limit_contract() {
    kv::rate_limit_suite(Arc::new(MemoryRateLimiter::new())).await;
    let one = Arc::new(MemoryRateLimiter::new());
    kv::busy_rule_suite(one.clone(), one).await;
}

#[tokio::test]
async fn the_sqlite_store_honours_the_store_contract() {
    let (_dir, _, s) = sqlite_store(limits(8, 10)).await;
    // As the application opens it: each call in a task of its own.
    store::suite(Detached::wrap(Arc::new(s))).await;
}

#[tokio::test]
async fn the_in_process_bus_honours_the_transactional_message_contract() {
    bus::suite(bus::memory_bus).await;
}

/// A real service's address from `var`. Unset, the test passes without
/// it (a bare machine) — unless `SECKILL_TEST_REQUIRE_REAL=1` (what
/// `scripts/test` sets): then a missing address fails the test rather than
/// let a run without the real adapters pass as one with them.
fn real_service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("SECKILL_TEST_REQUIRE_REAL").as_deref() == Ok("1") => {
            panic!("{var} is not set, and SECKILL_TEST_REQUIRE_REAL=1 requires the real adapters")
        }
        _ => {
            eprintln!("{var} not set: this contract is not run against the real service (scripts/test sets it)");
            None
        }
    }
}

/// A fresh database on the MySQL server of `SECKILL_TEST_MYSQL_URL`
/// (a server URL ending in `/`), dropped by the caller.
async fn fresh_mysql(tag: &str) -> Option<(String, seckill::store::mysql::MysqlStore)> {
    let base = real_service("SECKILL_TEST_MYSQL_URL")?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let url = format!(
        "{}seckill_{tag}_{}_{nanos}",
        base.trim_end_matches('/').to_owned() + "/",
        std::process::id()
    );
    let store = seckill::store::mysql::MysqlStore::connect(&url, limits(8, 5))
        .await
        .expect("MySQL reachable");
    store.migrate().await.unwrap();
    Some((url, store))
}

async fn drop_mysql(url: &str) {
    use sqlx::migrate::MigrateDatabase;
    let _ = sqlx::MySql::drop_database(url).await;
}

#[tokio::test]
async fn the_mysql_store_honours_the_store_contract() {
    let Some((url, store)) = fresh_mysql("contract").await else {
        eprintln!("SECKILL_TEST_MYSQL_URL not set: MySQL contract not run (scripts/test sets it)");
        return;
    };
    store::suite(Detached::wrap(Arc::new(store))).await;
    drop_mysql(&url).await;
}

/// A store call cut off anywhere — while its BEGIN is in flight too —
/// neither leaves its pooled connection inside a server-side transaction
/// (with one pooled connection, after each cut-off write a row committed
/// elsewhere is seen at once: a connection left in a transaction reads an
/// old snapshot) nor loses it (the next call would time out waiting for a
/// connection), and every cut-off write is done in the end. The bare sqlx
/// pool failed both ways here within 300 rounds (three runs of three).
#[tokio::test]
async fn a_cancelled_mysql_transaction_leaves_no_connection_inside_one() {
    use seckill::store::CatalogStore;
    let Some((url, other)) = fresh_mysql("cancel").await else {
        eprintln!("SECKILL_TEST_MYSQL_URL not set: MySQL cancellation test not run");
        return;
    };
    // The store as the application opens it, on a pool of one connection.
    let one = Detached::wrap(Arc::new(
        seckill::store::mysql::MysqlStore::connect(&url, limits(1, 5))
            .await
            .unwrap(),
    ));
    let mut cut_off = 0;
    for i in 0..300u64 {
        // Cut off at varied points of the write (the timer's resolution is
        // a millisecond, about as long as the write takes: where it lands
        // varies with the scheduling).
        let new = store::new_item(1);
        let write = one.create_item(&new);
        if tokio::time::timeout(std::time::Duration::from_micros(i % 4 * 300), write)
            .await
            .is_err()
        {
            cut_off += 1;
        }
        // A read on the pooled connection (it starts a snapshot if the
        // connection was left inside a transaction), then a row committed
        // through another pool: the pooled connection must see it.
        one.items(0, 1)
            .await
            .unwrap_or_else(|e| panic!("round {i}: the pooled connection: {e:?}"));
        let fresh = other.create_item(&store::new_item(2)).await.unwrap();
        assert!(
            one.item(fresh.id).await.unwrap().is_some(),
            "round {i}: a row committed elsewhere is not seen: the pooled connection was left inside a transaction"
        );
    }
    assert!(cut_off > 0, "no write was cut off");
    // Each cut-off write ran to its end all the same: 300 + 300 items.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = one.items(0, 1000).await.unwrap().len();
        if n == 600 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} items of 600: cut-off writes were lost"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop_mysql(&url).await;
}

/// A transaction on `locker` holding the item's stock row lock.
async fn lock_stock_row(
    locker: &sqlx::MySqlPool,
    item: seckill::domain::ItemId,
) -> sqlx::Transaction<'static, sqlx::MySql> {
    let mut held = locker.begin().await.unwrap();
    sqlx::query("SELECT stock FROM item_stock WHERE item_id = ? FOR UPDATE")
        .bind(item.0)
        .execute(&mut *held)
        .await
        .unwrap();
    held
}

/// A pure-database order that reaches its COMMIT past its deadline rolls
/// back: its stock update waits on a row lock another transaction holds
/// until after the deadline (the order of events is the lock's, not a
/// race), then the order answers `TooLate` and leaves no trace.
#[tokio::test]
async fn a_mysql_order_reaching_its_commit_past_the_deadline_rolls_back() {
    use seckill::store::StoreError;
    let Some((url, raw)) = fresh_mysql("late").await else {
        eprintln!("SECKILL_TEST_MYSQL_URL not set: MySQL commit-deadline test not run");
        return;
    };
    let s = Detached::wrap(Arc::new(raw));
    let (item, promo) = store::setup(&*s, 5).await;
    let locker = sqlx::MySqlPool::connect(&url).await.unwrap();
    for (n, optimistic) in [(1, false), (2, true)] {
        let held = lock_stock_row(&locker, item).await;
        let d = store::draft(9_100 + n, seckill::domain::UserId(n), item, promo, 1);
        let commit_by = std::time::Instant::now() + std::time::Duration::from_millis(200);
        let order = {
            let (s, d) = (s.clone(), d.clone());
            tokio::spawn(async move { s.place_order_in_db(&d, optimistic, 3, commit_by).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        held.rollback().await.unwrap();
        let answer = order.await.unwrap();
        assert!(
            matches!(answer, Err(StoreError::TooLate)),
            "optimistic {optimistic}: {answer:?}"
        );
        assert!(s.order(&d.order_no).await.unwrap().is_none());
    }
    let it = s.item(item).await.unwrap().unwrap();
    assert_eq!(
        (it.stock, it.sales),
        (5, 0),
        "the late orders took no stock"
    );
    let t = s.promo_totals(promo).await.unwrap();
    assert_eq!((t.orders, t.stock_log_committed), (0, 0));
    locker.close().await;
    drop_mysql(&url).await;
}

/// A pure-database order gives up waiting for a row lock after the
/// store's lock-wait bound (MySQL's `innodb_lock_wait_timeout`, set per
/// connection) and answers `TooLate`, while the lock is still held: it does
/// not sit out the server's 50 s default past its request's deadline.
#[tokio::test]
async fn a_mysql_order_waits_for_a_row_lock_no_longer_than_the_bound() {
    use seckill::store::StoreError;
    let Some((url, _)) = fresh_mysql("lockwait").await else {
        eprintln!("SECKILL_TEST_MYSQL_URL not set: MySQL lock-wait test not run");
        return;
    };
    let raw = seckill::store::mysql::MysqlStore::connect(&url, limits(4, 1))
        .await
        .unwrap();
    let s = Detached::wrap(Arc::new(raw));
    let (item, promo) = store::setup(&*s, 5).await;
    let locker = sqlx::MySqlPool::connect(&url).await.unwrap();
    for (n, optimistic) in [(1, false), (2, true)] {
        let held = lock_stock_row(&locker, item).await;
        let d = store::draft(9_200 + n, seckill::domain::UserId(n), item, promo, 1);
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(8),
            s.place_order_in_db(&d, optimistic, 3, store::far()),
        )
        .await
        .unwrap_or_else(|_| {
            panic!("optimistic {optimistic}: still waiting for the lock after 8 s")
        });
        assert!(
            matches!(answer, Err(StoreError::TooLate)),
            "optimistic {optimistic}: {answer:?}"
        );
        held.rollback().await.unwrap();
        assert!(s.order(&d.order_no).await.unwrap().is_none());
    }
    // The lock free, an order goes through on the same pool.
    let d = store::draft(9_203, seckill::domain::UserId(3), item, promo, 1);
    assert!(s
        .place_order_in_db(&d, false, 3, store::far())
        .await
        .unwrap()
        .is_some());
    let it = s.item(item).await.unwrap().unwrap();
    assert_eq!((it.stock, it.sales), (4, 1));
    locker.close().await;
    drop_mysql(&url).await;
}

/// A write transaction MySQL picks as a deadlock's victim is run again,
/// not failed. Another transaction holds item B's stock row; a deduction of
/// items A and B (the store locks them in id order) takes A's and waits for
/// B's; the other then asks for A's: a cycle. InnoDB rolls back the
/// lighter one — the deduction (the other has written 200 rows first).
/// With no retries that is the deduction's answer; with the default, it
/// runs again once the other is done, and applies both.
#[tokio::test]
async fn a_mysql_deadlock_victim_is_run_again() {
    let Some((url, _)) = fresh_mysql("deadlock").await else {
        eprintln!("SECKILL_TEST_MYSQL_URL not set: MySQL deadlock test not run");
        return;
    };
    let other = sqlx::MySqlPool::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE ballast (n INT)")
        .execute(&other)
        .await
        .unwrap();
    for retries in [0, 3] {
        let raw = seckill::store::mysql::MysqlStore::connect(
            &url,
            seckill::store::PoolLimits {
                deadlock_retries: retries,
                ..limits(4, 5)
            },
        )
        .await
        .unwrap();
        let answer = deadlock_a_deduction(&url, &other, Detached::wrap(Arc::new(raw))).await;
        match (retries, answer) {
            (0, Err(seckill::store::StoreError::Db(e))) => {
                assert!(e.to_string().contains("Deadlock"), "{e}")
            }
            (0, other) => panic!("with no retries, the victim's answer: {other:?}"),
            (_, answer) => assert_eq!(
                answer.expect("the deadlock's victim was run again"),
                (4, 3),
                "both deductions applied"
            ),
        }
    }
    other.close().await;
    drop_mysql(&url).await;
}

/// Deducts one unit of a new item A and two of a new item B while `other`
/// makes the cycle; the stock of A and B after it.
async fn deadlock_a_deduction(
    url: &str,
    other: &sqlx::MySqlPool,
    s: Arc<dyn seckill::store::Store>,
) -> Result<(i64, i64), seckill::store::StoreError> {
    use seckill::domain::UserId;
    use seckill::store::Deduction;
    let (a, pa) = store::setup(&*s, 5).await;
    let (b, pb) = store::setup(&*s, 5).await;
    assert!(a.0 < b.0);
    let drafts = [
        store::draft(9_300 + a.0, UserId(1), a, pa, 1),
        store::draft(9_300 + b.0, UserId(1), b, pb, 2),
    ];
    s.insert_stock_logs(&drafts).await.unwrap();
    s.commit_orders(&drafts).await.unwrap();
    let entries: Vec<Deduction> = drafts.iter().map(Deduction::from).collect();
    let mut held = other.begin().await.unwrap();
    let rows = (0..200)
        .map(|n| format!("({n})"))
        .collect::<Vec<_>>()
        .join(",");
    sqlx::query(&format!("INSERT INTO ballast (n) VALUES {rows}"))
        .execute(&mut *held)
        .await
        .unwrap();
    sqlx::query("UPDATE item_stock SET version = version WHERE item_id = ?")
        .bind(b.0)
        .execute(&mut *held)
        .await
        .unwrap();
    let deduction = {
        let s = s.clone();
        tokio::spawn(async move { s.apply_deductions(&entries).await })
    };
    // The deduction holds A's row and waits for B's (its statement in this
    // test's database, not another test's).
    let db = url.rsplit('/').next().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE DB = ? AND STATE = 'Updating' AND INFO LIKE 'UPDATE item_stock SET stock%'",
        )
        .bind(&db)
        .fetch_one(other)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        if deduction.is_finished() {
            panic!(
                "the deduction did not wait for B's row: {:?}",
                deduction.await.unwrap()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the deduction never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The cycle: the other now asks for A's row, and gets it once the
    // deduction is rolled back.
    sqlx::query("UPDATE item_stock SET version = version WHERE item_id = ?")
        .bind(a.0)
        .execute(&mut *held)
        .await
        .expect("the heavier transaction is not the victim");
    held.rollback().await.unwrap();
    let report = deduction.await.unwrap()?;
    assert_eq!(report.applied, 2, "{report:?}");
    Ok((
        s.item(a).await.unwrap().unwrap().stock,
        s.item(b).await.unwrap().unwrap().stock,
    ))
}

/// The SQLite store's bounds come from the config: a pure-database order
/// waits for the file's write lock (held by another process's connection)
/// no longer than the lock-wait bound and answers `TooLate`; meanwhile a
/// second write of this process, queued for the one writing connection,
/// gives up after the acquire time-out, as a database error (503 at the
/// edge), and a read does not wait at all — it has a pool of its own.
#[tokio::test]
async fn a_sqlite_store_waits_no_longer_than_its_configured_bounds() {
    use seckill::store::StoreError;
    use std::time::{Duration, Instant};
    let (_dir, url, raw) = sqlite_store(seckill::store::PoolLimits {
        max_connections: 1,
        acquire_timeout: Duration::from_millis(300),
        lock_wait: Duration::from_secs(1),
        deadlock_retries: 3,
    })
    .await;
    let s = Detached::wrap(Arc::new(raw));
    let (item, promo) = store::setup(&*s, 5).await;
    let mut held = hold_sqlite_write_lock(&url).await;
    let d = store::draft(9_300, seckill::domain::UserId(1), item, promo, 1);
    let started = Instant::now();
    let order = {
        let s = s.clone();
        let d = d.clone();
        tokio::spawn(async move { s.place_order_in_db(&d, false, 3, store::far()).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // While the order holds the writing connection, waiting for the lock, a
    // read is answered at once...
    let read_started = Instant::now();
    let read = s.item(item).await.expect("a read while a writer waits");
    assert_eq!(read.map(|it| it.stock), Some(5));
    assert!(
        read_started.elapsed() < Duration::from_millis(250),
        "the read waited {:?}",
        read_started.elapsed()
    );
    // ...and another write waits for its turn no longer than the acquire
    // time-out.
    let write_started = Instant::now();
    let write = tokio::time::timeout(Duration::from_secs(5), s.create_item(&store::new_item(3)))
        .await
        .expect("the write gave up waiting for the writing connection");
    assert!(matches!(write, Err(StoreError::Db(_))), "{write:?}");
    assert!(write_started.elapsed() >= Duration::from_millis(250));
    let answer = tokio::time::timeout(Duration::from_secs(8), order)
        .await
        .expect("the order still waits for the lock after 8 s")
        .unwrap();
    assert!(matches!(answer, Err(StoreError::TooLate)), "{answer:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "waited {waited:?} for a 1 s bound"
    );
    sqlx::query("ROLLBACK").execute(&mut *held).await.unwrap();
    assert!(s.order(&d.order_no).await.unwrap().is_none());
    let it = s.item(item).await.unwrap().unwrap();
    assert_eq!(
        (it.stock, it.sales),
        (5, 0),
        "the refused order took nothing"
    );
    assert_eq!(
        s.items(0, 10).await.unwrap().len(),
        1,
        "the refused write wrote nothing"
    );
}

/// Two processes on one SQLite file (two stores) race for its last units
/// with pure-database orders: each process's writers queue for their own
/// connection, and the two connections meet on the file's write lock,
/// which every pure-database order takes first and waits for (its busy
/// time-out the bound). Nothing oversold, nothing failed.
#[tokio::test]
async fn sqlite_pure_database_orders_race_across_processes() {
    let (_dir, url, a) = sqlite_store(limits(4, 10)).await;
    let b = SqliteStore::connect(&url, limits(4, 10), 512)
        .await
        .unwrap();
    let stores: Vec<Arc<dyn seckill::store::Store>> =
        vec![Detached::wrap(Arc::new(a)), Detached::wrap(Arc::new(b))];
    store::concurrent_pure_database_orders(&stores).await;
}

/// SQLite's transactions that read before they write — a deduction
/// message's, an order's cancellation — wait for the write lock another
/// connection holds, as a write does, rather than failing at once (SQLite
/// does not wait to turn a reader into a writer: they take the lock first).
#[tokio::test]
async fn sqlite_read_then_write_transactions_wait_for_the_write_lock() {
    use seckill::store::Deduction;
    let (_dir, url, raw) = sqlite_store(limits(4, 10)).await;
    let s = Detached::wrap(Arc::new(raw));
    let (item, promo) = store::setup(&*s, 5).await;
    let a = store::draft(9_401, seckill::domain::UserId(1), item, promo, 1);
    let b = store::draft(9_402, seckill::domain::UserId(2), item, promo, 1);
    s.insert_stock_logs(&[a.clone(), b.clone()]).await.unwrap();
    s.commit_orders(&[a.clone(), b.clone()]).await.unwrap();
    // Each in turn against the lock (together, the second would wait for
    // this process's writing connection, not for the file's lock).
    let mut held = hold_sqlite_write_lock(&url).await;
    let deduct = {
        let s = s.clone();
        tokio::spawn(async move {
            s.apply_deductions(&[Deduction {
                stock_log_id: a.stock_log_id,
                item_id: item,
                amount: 1,
            }])
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    sqlx::query("ROLLBACK").execute(&mut *held).await.unwrap();
    let deducted = deduct
        .await
        .unwrap()
        .expect("the deduction waited for the lock");
    assert_eq!(deducted.applied, 1, "{deducted:?}");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *held)
        .await
        .unwrap();
    let cancel = {
        let s = s.clone();
        let no = b.order_no.clone();
        tokio::spawn(async move { s.cancel_order(&no).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    sqlx::query("ROLLBACK").execute(&mut *held).await.unwrap();
    let (order, changed) = cancel
        .await
        .unwrap()
        .expect("the cancel waited for the lock");
    assert!(changed, "{order:?}");
    let it = s.item(item).await.unwrap().unwrap();
    // 5 − 1 (a's deduction) + 1 (b's cancellation gives its unit back; its
    // deduction, when it comes, takes it again); sales 2 − 1.
    assert_eq!((it.stock, it.sales), (5, 1));
}

/// A cancel that loses the race to a payment says the order is paid: on
/// MySQL it reads the order's row as it is once its lock is free, not as
/// its transaction's snapshot saw it (pending payment, answered 503 "retry").
#[tokio::test]
async fn a_mysql_cancel_that_loses_to_a_payment_sees_the_order_paid() {
    use seckill::domain::OrderStatus;
    let Some((url, raw)) = fresh_mysql("cancelrace").await else {
        eprintln!("SECKILL_TEST_MYSQL_URL not set: MySQL cancel race test not run");
        return;
    };
    let s = Detached::wrap(Arc::new(raw));
    let (item, promo) = store::setup(&*s, 5).await;
    let d = store::draft(9_501, seckill::domain::UserId(1), item, promo, 1);
    s.insert_stock_logs(std::slice::from_ref(&d)).await.unwrap();
    s.commit_orders(std::slice::from_ref(&d)).await.unwrap();
    let payer = sqlx::MySqlPool::connect(&url).await.unwrap();
    let mut paying = payer.begin().await.unwrap();
    sqlx::query("UPDATE order_info SET status = 'paid' WHERE order_no = ?")
        .bind(d.order_no.as_str())
        .execute(&mut *paying)
        .await
        .unwrap();
    let cancel = {
        let s = s.clone();
        let no = d.order_no.clone();
        tokio::spawn(async move { s.cancel_order(&no).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    paying.commit().await.unwrap();
    let (order, changed) = cancel.await.unwrap().unwrap();
    assert_eq!((order.status, changed), (OrderStatus::Paid, false));
    let it = s.item(item).await.unwrap().unwrap();
    assert_eq!((it.stock, it.sales), (5, 1), "nothing given back");
    payer.close().await;
    drop_mysql(&url).await;
}

/// A write asks the deadline of the request it is for as it starts: one
/// cut off never starts, one in time holds its request (the deadline then
/// waits for it); reads ask nothing.
#[tokio::test]
async fn a_write_for_a_request_cut_off_by_its_deadline_never_starts() {
    use seckill::service::deadline_hold::{self, DeadlineHold};
    let (_dir, _, raw) = sqlite_store(limits(4, 10)).await;
    let s = Detached::gated(
        Arc::new(raw),
        tokio_util::task::TaskTracker::new(),
        deadline_hold::hold_current,
    );
    let cut = DeadlineHold::default();
    assert!(cut.cut_off());
    let refused = deadline_hold::scope(cut.clone(), s.create_item(&store::new_item(7))).await;
    assert!(
        matches!(refused, Err(seckill::store::StoreError::CutOff)),
        "{refused:?}"
    );
    let read = deadline_hold::scope(cut, s.items(0, 10)).await.unwrap();
    assert!(read.is_empty(), "nothing written; a read still answers");
    let in_time = DeadlineHold::default();
    deadline_hold::scope(in_time.clone(), s.create_item(&store::new_item(7)))
        .await
        .unwrap();
    assert!(!in_time.cut_off(), "the write held its request");
    s.create_item(&store::new_item(7))
        .await
        .expect("outside a request a write starts");
    assert_eq!(s.items(0, 10).await.unwrap().len(), 2);
}

/// A store call whose caller stopped waiting is still tracked: a shutdown
/// that waits on the tracker sees it through to its end (here a write held
/// up by another connection's lock on the SQLite file).
#[tokio::test]
async fn a_shutdown_waits_for_store_calls_nobody_waits_for() {
    let (_dir, url, raw) = sqlite_store(limits(4, 10)).await;
    let tasks = tokio_util::task::TaskTracker::new();
    let s = Detached::tracked(Arc::new(raw), tasks.clone());
    let mut held = hold_sqlite_write_lock(&url).await;
    let cut_off = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        s.create_item(&store::new_item(7)),
    )
    .await;
    assert!(cut_off.is_err(), "the write was not held up");
    assert_eq!(tasks.len(), 1, "the cut-off write is tracked");
    tasks.close();
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        sqlx::query("ROLLBACK").execute(&mut *held).await.unwrap();
    });
    tokio::time::timeout(std::time::Duration::from_secs(10), tasks.wait())
        .await
        .expect("the tracked write ended");
    releaser.await.unwrap();
    assert_eq!(
        s.items(0, 10).await.unwrap().len(),
        1,
        "the cut-off write is done"
    );
}

/// A migrated SQLite store on a file of its own (in the folder returned,
/// removed when dropped), and the file's URL.
async fn sqlite_store(
    limits: seckill::store::PoolLimits,
) -> (tempfile::TempDir, String, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/store.db", dir.path().display());
    let s = SqliteStore::connect(&url, limits, 512).await.unwrap();
    s.migrate().await.unwrap();
    (dir, url, s)
}

/// A connection of its own holding the SQLite file's write lock, until a
/// `ROLLBACK` on it (or its drop).
async fn hold_sqlite_write_lock(url: &str) -> sqlx::pool::PoolConnection<sqlx::Sqlite> {
    let mut held = sqlx::SqlitePool::connect(url)
        .await
        .unwrap()
        .acquire()
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *held)
        .await
        .unwrap();
    held
}

/// Pool bounds for a test: `n` connections, a lock wait of `lock_wait_secs`.
fn limits(n: u32, lock_wait_secs: u64) -> seckill::store::PoolLimits {
    seckill::store::PoolLimits {
        max_connections: n,
        acquire_timeout: std::time::Duration::from_secs(5),
        lock_wait: std::time::Duration::from_secs(lock_wait_secs),
        deadlock_retries: 3,
    }
}

/// A Redis connection on `SECKILL_TEST_REDIS_URL` with a prefix of its own,
/// under the run's `CLUSTER_DB` when set (scripts/test deletes that
/// prefix's keys at the end).
async fn redis_conn(tag: &str) -> Option<seckill::cache::redis::RedisConn> {
    let url = real_service("SECKILL_TEST_REDIS_URL")?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let run = std::env::var("CLUSTER_DB")
        .map(|db| format!("{db}:"))
        .unwrap_or_default();
    let prefix = format!("{run}seckill-test:{tag}:{}:{nanos}:", std::process::id());
    Some(
        seckill::cache::redis::RedisConn::connect(&url, &prefix, std::time::Duration::from_secs(2))
            .await
            .expect("Redis reachable"),
    )
}

#[tokio::test]
async fn the_redis_ledger_honours_the_ledger_contract() {
    let Some(conn) = redis_conn("ledger").await else {
        eprintln!("SECKILL_TEST_REDIS_URL not set: Redis contract not run (scripts/test sets it)");
        return;
    };
    ledger::suite(|| {
        let conn = conn.clone();
        async move {
            Arc::new(seckill::cache::redis::RedisStockLedger::new(conn))
                as Arc<dyn seckill::cache::StockLedger>
        }
    })
    .await;
}

#[tokio::test]
async fn the_redis_kv_store_and_rate_limiter_honour_their_contracts() {
    let Some(conn) = redis_conn("kv").await else {
        eprintln!("SECKILL_TEST_REDIS_URL not set: Redis contract not run (scripts/test sets it)");
        return;
    };
    kv::suite(Arc::new(seckill::cache::redis::RedisKvStore::new(
        conn.clone(),
    )))
    .await;
    kv::rate_limit_suite(Arc::new(seckill::cache::redis::RedisRateLimiter::new(
        conn.clone(),
    )))
    .await;
    // Two limiters on one Redis: two instances.
    kv::busy_rule_suite(
        Arc::new(seckill::cache::redis::RedisRateLimiter::new(conn.clone())),
        Arc::new(seckill::cache::redis::RedisRateLimiter::new(conn)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rocketmq_bus_honours_the_transactional_message_contract() {
    let Some(namesrv) = real_service("SECKILL_TEST_ROCKETMQ_NAMESRV") else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    bus::suite(|checker| {
        rocketmq_bus(
            namesrv.clone(),
            format!("contract-{nanos}-"),
            format!("contract-{}", std::process::id()),
            checker,
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rocketmq_bus_that_shuts_down_hands_its_queues_to_the_group() {
    let Some(namesrv) = real_service("SECKILL_TEST_ROCKETMQ_NAMESRV") else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let members = std::sync::atomic::AtomicU32::new(0);
    bus::handover_suite(|checker| {
        let member = members.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rocketmq_bus(
            namesrv.clone(),
            format!("handover-{nanos}-"),
            format!("handover-{}-{member}", std::process::id()),
            checker,
        )
    })
    .await;
}

/// A RocketMQ bus on `namesrv` under `prefix`, as instance `instance`.
async fn rocketmq_bus(
    namesrv: String,
    prefix: String,
    instance: String,
    checker: Arc<dyn seckill::mq::TxChecker>,
) -> Arc<dyn seckill::mq::MessageBus> {
    let settings = seckill::mq::rocketmq::RocketMqSettings {
        namesrv,
        prefix,
        instance,
        listener_deadline: std::time::Duration::from_secs(10),
        send_timeout_ms: 3_000,
        start_timeout: std::time::Duration::from_secs(30),
    };
    Arc::new(
        seckill::mq::rocketmq::RocketMqBus::start(settings, checker)
            .await
            .expect("RocketMQ reachable"),
    )
}
