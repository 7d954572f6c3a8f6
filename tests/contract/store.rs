//! The store contract: what every database adapter must do alike.

use std::sync::Arc;

use chrono::{Duration, Utc};
use seckill::domain::*;
use seckill::store::{Deduction, Store, StoreError};

fn new_user(phone: &str) -> NewUser {
    NewUser {
        phone: Phone::parse(phone).unwrap(),
        name: "n".into(),
        gender: None,
        age: Some(30),
        password_hash: "h".into(),
    }
}

pub fn new_item(stock: i64) -> NewItem {
    NewItem {
        title: "t".into(),
        price_cents: 1000,
        stock,
        description: "d".into(),
        image_url: String::new(),
    }
}

pub fn draft(id: i64, user: UserId, item: ItemId, promo: PromoId, amount: i64) -> OrderDraft {
    let now = Utc::now();
    OrderDraft {
        stock_log_id: StockLogId(id),
        order_no: OrderNo::new(now, StockLogId(id)),
        user_id: user,
        item_id: item,
        promo_id: promo,
        amount,
        unit_price_cents: 500,
        created_at: now,
    }
}

/// A commit deadline nobody reaches.
pub fn far() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(3600)
}

pub async fn setup(s: &dyn Store, stock: i64) -> (ItemId, PromoId) {
    let item = s.create_item(&new_item(stock)).await.unwrap();
    let now = Utc::now();
    let promo = s
        .create_promo(&NewPromo {
            item_id: item.id,
            name: "p".into(),
            price_cents: 500,
            start_at: now,
            end_at: now + Duration::hours(1),
        })
        .await
        .unwrap();
    (item.id, promo.id)
}

pub async fn suite(s: Arc<dyn Store>) {
    s.ping().await.unwrap();
    users(&*s).await;
    catalog(&*s).await;
    order_flow(&*s).await;
    a_batch_with_a_duplicate_buyer_commits_nothing(&*s).await;
    deductions_apply_once_and_only_for_committed_rows(&*s).await;
    a_message_too_big_for_the_stock_deducts_what_fits_and_each_entry_once(&*s).await;
    cancel_gives_stock_back(&*s).await;
    pure_database_orders(&*s).await;
    concurrent_pure_database_orders(std::slice::from_ref(&s)).await;
    a_pure_database_order_past_its_deadline_never_commits(&*s).await;
    the_sale_journal_has_what_a_ledger_rebuild_needs(&*s).await;
}

async fn the_sale_journal_has_what_a_ledger_rebuild_needs(s: &dyn Store) {
    let (item, promo) = setup(s, 10).await;
    // User 1: committed and deducted (2). User 2: committed, not deducted
    // (1). User 3: undecided (3). User 4: rolled back. User 5: cancelled.
    let d1 = draft(8_001, UserId(1), item, promo, 2);
    let d2 = draft(8_002, UserId(2), item, promo, 1);
    let d3 = draft(8_003, UserId(3), item, promo, 3);
    let d4 = draft(8_004, UserId(4), item, promo, 1);
    let d5 = draft(8_005, UserId(5), item, promo, 1);
    s.insert_stock_logs(&[d1.clone(), d2.clone(), d3.clone(), d4.clone(), d5.clone()])
        .await
        .unwrap();
    s.commit_orders(&[d1.clone(), d2.clone(), d5.clone()])
        .await
        .unwrap();
    s.roll_back_stock_logs(&[d4.stock_log_id]).await.unwrap();
    let deduct = |d: &OrderDraft| Deduction {
        stock_log_id: d.stock_log_id,
        item_id: item,
        amount: d.amount,
    };
    s.apply_deductions(&[deduct(&d1), deduct(&d5)])
        .await
        .unwrap();
    s.cancel_order(&d5.order_no).await.unwrap();

    let j = s.sale_journal(promo, item).await.unwrap();
    assert_eq!(j.db_stock, 10 - 2 - 1 + 1);
    assert_eq!(j.unsettled, 1 + 3, "committed-undeducted and undecided");
    assert_eq!(j.ledger_stock(), 4);
    assert_eq!(j.open, vec![(d3.stock_log_id, UserId(3), 3)]);
    let mut buyers = j.buyers.clone();
    buyers.sort();
    assert_eq!(
        buyers,
        vec![
            (UserId(1), 2),
            (UserId(2), 1),
            (UserId(3), 3),
            (UserId(5), 1)
        ]
    );
    assert_eq!(j.restocked, vec![d5.stock_log_id]);

    // The payment sweep finds unpaid orders by age.
    let later = Utc::now() + Duration::seconds(1);
    let mut unpaid = s.unpaid_orders(later, 100).await.unwrap();
    unpaid.retain(|n| [&d1.order_no, &d2.order_no, &d5.order_no].contains(&n));
    unpaid.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(unpaid, vec![d1.order_no.clone(), d2.order_no.clone()]);
    s.pay_order(&d1.order_no).await.unwrap();
    let earlier = Utc::now() - Duration::hours(1);
    assert!(!s
        .unpaid_orders(earlier, 100)
        .await
        .unwrap()
        .contains(&d2.order_no));
    assert!(!s
        .unpaid_orders(later, 100)
        .await
        .unwrap()
        .contains(&d1.order_no));
}

async fn users(s: &dyn Store) {
    let u = s.create_user(&new_user("15000000001")).await.unwrap();
    assert!(matches!(
        s.create_user(&new_user("15000000001")).await,
        Err(StoreError::Conflict("phone"))
    ));
    assert_eq!(
        s.user_by_phone("15000000001").await.unwrap().unwrap().id,
        u.id
    );
    assert_eq!(
        s.user_by_id(u.id).await.unwrap().unwrap().phone,
        "15000000001"
    );
    assert!(s.user_by_phone("15000000999").await.unwrap().is_none());
    let many: Vec<NewUser> = (0..1200).map(|i| new_user(&format!("151{i:08}"))).collect();
    assert_eq!(s.create_users(&many).await.unwrap(), 1200);
    assert_eq!(
        s.create_users(&many[..10]).await.unwrap(),
        0,
        "existing phones are skipped"
    );
}

async fn catalog(s: &dyn Store) {
    let a = s.create_item(&new_item(5)).await.unwrap();
    assert_eq!((a.stock, a.sales), (5, 0));
    let patched = s
        .update_item(
            a.id,
            &ItemPatch {
                price_cents: Some(900),
                title: Some("new".into()),
                ..ItemPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (
            patched.price_cents,
            patched.title.as_str(),
            patched.description.as_str()
        ),
        (900, "new", "d")
    );
    assert!(matches!(
        s.update_item(
            ItemId(987_654),
            &ItemPatch {
                title: Some("x".into()),
                ..Default::default()
            }
        )
        .await,
        Err(StoreError::NotFound)
    ));
    assert!(s.item(ItemId(987_654)).await.unwrap().is_none());
    let now = Utc::now();
    let p = s
        .create_promo(&NewPromo {
            item_id: a.id,
            name: "p".into(),
            price_cents: 100,
            start_at: now,
            end_at: now + Duration::minutes(5),
        })
        .await
        .unwrap();
    assert!(!p.published);
    assert!((p.start_at - now).num_milliseconds().abs() < 1000);
    let base = PromoBaseline {
        stock: 7,
        sales: 3,
        strategy: Some(OrderStrategy::DbLock),
    };
    assert!(s.publish_promo(p.id, base, now).await.unwrap());
    let again = PromoBaseline {
        stock: 1,
        sales: 9,
        strategy: Some(OrderStrategy::WriteBehind),
    };
    assert!(
        !s.publish_promo(p.id, again, now).await.unwrap(),
        "published once"
    );
    // Another promo of the item while `p` (published, ending in five
    // minutes) may still sell: refused, and left unpublished; once `p`'s
    // orders are all in (its end before the cut-off), published.
    let r = s
        .create_promo(&NewPromo {
            item_id: a.id,
            name: "r".into(),
            price_cents: 100,
            start_at: now + Duration::hours(1),
            end_at: now + Duration::hours(2),
        })
        .await
        .unwrap();
    assert!(matches!(
        s.publish_promo(r.id, base, now).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(!s.promo(r.id).await.unwrap().unwrap().published);
    assert!(matches!(
        s.publish_promo(PromoId(987_654), base, now).await,
        Err(StoreError::NotFound)
    ));
    let stored = s.promo(p.id).await.unwrap().unwrap();
    assert!(stored.published);
    assert_eq!(
        stored.baseline,
        Some(base),
        "the first baseline stays, its strategy with it"
    );
    // Every strategy is kept as it was given, and none (a promo published
    // before promos recorded it) stays none.
    for strategy in OrderStrategy::ALL.map(Some).into_iter().chain([None]) {
        let q = s
            .create_promo(&NewPromo {
                item_id: a.id,
                name: "q".into(),
                price_cents: 100,
                start_at: now + Duration::hours(1),
                end_at: now + Duration::hours(2),
            })
            .await
            .unwrap();
        let base = PromoBaseline {
            stock: 5,
            sales: 0,
            strategy,
        };
        // Every other promo of the item counted as settled.
        let cut_off = now + Duration::hours(3);
        assert!(s.publish_promo(q.id, base, cut_off).await.unwrap());
        let stored = s.promo(q.id).await.unwrap().unwrap();
        assert_eq!(stored.baseline.and_then(|b| b.strategy), strategy);
    }
    assert!(s.promo(p.id).await.unwrap().unwrap().published);
    assert!(s
        .publish_promo(r.id, base, now + Duration::hours(3))
        .await
        .unwrap());
    assert_eq!(s.promos_of_item(a.id).await.unwrap().len(), 6);
    let newest = s.promos(None, 10).await.unwrap();
    assert!(newest.iter().any(|x| x.id == p.id));
    assert!(newest.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let older = s.promos(Some(p.id), 10).await.unwrap();
    assert!(older.iter().all(|x| x.id < p.id));

    // A page's promos in one read: each listed item's, none of another's.
    let b = s.create_item(&new_item(1)).await.unwrap();
    let c = s.create_item(&new_item(1)).await.unwrap();
    let of_c = s
        .create_promo(&NewPromo {
            item_id: c.id,
            name: "c".into(),
            price_cents: 100,
            start_at: now + Duration::hours(1),
            end_at: now + Duration::hours(2),
        })
        .await
        .unwrap();
    let page = s.promos_of_items(&[a.id, b.id, c.id]).await.unwrap();
    assert_eq!(page.len(), 7, "a's six and c's one");
    assert!(page.iter().any(|x| x.id == of_c.id));
    assert!(s.promos_of_items(&[b.id]).await.unwrap().is_empty());
    assert!(s.promos_of_items(&[]).await.unwrap().is_empty());
    // Pages of the item list follow on from each other.
    let all = s.items(0, 1000).await.unwrap();
    let first = s.items(0, 2).await.unwrap();
    let second = s.items(2, 2).await.unwrap();
    let ids = |v: &[Item]| v.iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&all[..2]));
    assert_eq!(ids(&second), ids(&all[2..4.min(all.len())]));

    // Ending early: a running promo ends then; a later end changes nothing;
    // one not started yet starts then too (it never sold).
    let at = Utc::now();
    let ended = s.end_promo(p.id, at).await.unwrap().unwrap();
    assert!((ended.end_at - at).num_milliseconds().abs() < 1);
    assert_eq!(ended.start_at, p.start_at);
    let again = s.end_promo(p.id, at + Duration::seconds(5)).await.unwrap();
    assert_eq!(again.unwrap().end_at, ended.end_at, "ended once");
    let early = s.end_promo(of_c.id, at).await.unwrap().unwrap();
    assert_eq!((early.start_at, early.end_at), (ended.end_at, ended.end_at));
    assert!(s.end_promo(PromoId(987_654), at).await.unwrap().is_none());
}

async fn order_flow(s: &dyn Store) {
    let (item, promo) = setup(s, 10).await;
    let drafts = vec![
        draft(1_001, UserId(1), item, promo, 1),
        draft(1_002, UserId(2), item, promo, 2),
    ];
    s.insert_stock_logs(&drafts).await.unwrap();
    let ids: Vec<StockLogId> = drafts.iter().map(|d| d.stock_log_id).collect();
    assert!(s
        .stock_log_statuses(&ids)
        .await
        .unwrap()
        .iter()
        .all(|(_, st)| *st == StockLogStatus::Init));
    assert!(
        !s.has_order(UserId(1), promo).await.unwrap(),
        "a journal row is no order"
    );
    s.commit_orders(&drafts).await.unwrap();
    assert!(s.has_order(UserId(1), promo).await.unwrap());
    assert!(
        !s.has_order(UserId(3), promo).await.unwrap(),
        "another buyer"
    );
    assert!(
        !s.has_order(UserId(1), PromoId(promo.0 + 1_000_000))
            .await
            .unwrap(),
        "another promo"
    );
    assert!(s
        .stock_log_statuses(&ids)
        .await
        .unwrap()
        .iter()
        .all(|(_, st)| *st == StockLogStatus::Committed));
    assert!(
        s.commit_orders(&drafts).await.is_err(),
        "rows are no longer init"
    );
    let o = s.order(&drafts[1].order_no).await.unwrap().unwrap();
    assert_eq!(
        (o.amount, o.total_cents, o.status),
        (2, 1000, OrderStatus::PendingPayment)
    );
    assert_eq!(s.item(item).await.unwrap().unwrap().sales, 3);
    assert_eq!(s.orders_of_user(UserId(2), 0, 10).await.unwrap().len(), 1);
    assert!(s.orders_of_user(UserId(2), 1, 10).await.unwrap().is_empty());
    let totals = s.promo_totals(promo).await.unwrap();
    assert_eq!(
        (totals.sold, totals.orders, totals.stock_log_committed),
        (3, 2, 2)
    );
    assert_eq!(totals.max_units_per_buyer, 2, "user 2's two units");

    // Rolling back only touches init rows; a committed row stays committed.
    let late = draft(1_003, UserId(3), item, promo, 1);
    s.insert_stock_logs(std::slice::from_ref(&late))
        .await
        .unwrap();
    let st = s
        .roll_back_stock_logs(&[StockLogId(1_001), late.stock_log_id])
        .await
        .unwrap();
    assert!(st.contains(&(StockLogId(1_001), StockLogStatus::Committed)));
    assert!(st.contains(&(late.stock_log_id, StockLogStatus::RolledBack)));
    assert!(
        s.commit_orders(std::slice::from_ref(&late)).await.is_err(),
        "a rolled-back reservation never commits"
    );
    assert!(s.order(&late.order_no).await.unwrap().is_none());

    // Stale init rows are found for the reconciler.
    let stale = draft(1_004, UserId(4), item, promo, 1);
    s.insert_stock_logs(std::slice::from_ref(&stale))
        .await
        .unwrap();
    let found = s
        .stale_stock_logs(Utc::now() + Duration::seconds(1), 100)
        .await
        .unwrap();
    assert!(found.contains(&(stale.stock_log_id, promo)));
    assert!(!s
        .stale_stock_logs(Utc::now() - Duration::hours(1), 100)
        .await
        .unwrap()
        .iter()
        .any(|(id, _)| *id == stale.stock_log_id));

    // Pay and its idempotency.
    let paid = s.pay_order(&drafts[0].order_no).await.unwrap();
    assert_eq!(paid.status, OrderStatus::Paid);
    assert_eq!(
        s.pay_order(&drafts[0].order_no).await.unwrap().status,
        OrderStatus::Paid
    );
    let (after, changed) = s.cancel_order(&drafts[0].order_no).await.unwrap();
    assert_eq!(
        (after.status, changed),
        (OrderStatus::Paid, false),
        "a paid order is not cancelled"
    );
}

async fn a_batch_with_a_duplicate_buyer_commits_nothing(s: &dyn Store) {
    let (item, promo) = setup(s, 10).await;
    let first = draft(2_001, UserId(1), item, promo, 1);
    s.insert_stock_logs(std::slice::from_ref(&first))
        .await
        .unwrap();
    s.commit_orders(std::slice::from_ref(&first)).await.unwrap();
    let batch = vec![
        draft(2_002, UserId(2), item, promo, 1),
        draft(2_003, UserId(1), item, promo, 1),
    ];
    s.insert_stock_logs(&batch).await.unwrap();
    assert!(matches!(
        s.commit_orders(&batch).await,
        Err(StoreError::Conflict("user_promo"))
    ));
    assert!(
        s.order(&batch[0].order_no).await.unwrap().is_none(),
        "all or nothing"
    );
    assert_eq!(s.item(item).await.unwrap().unwrap().sales, 1);
    s.commit_orders(&batch[..1]).await.unwrap();
    assert!(s.order(&batch[0].order_no).await.unwrap().is_some());
}

async fn deductions_apply_once_and_only_for_committed_rows(s: &dyn Store) {
    let (item, promo) = setup(s, 3).await;
    let d = vec![
        draft(3_001, UserId(1), item, promo, 2),
        draft(3_002, UserId(2), item, promo, 1),
    ];
    assert_eq!(s.unsettled_units_of_item(item).await.unwrap(), 0);
    s.insert_stock_logs(&d).await.unwrap();
    assert_eq!(
        s.unsettled_units_of_item(item).await.unwrap(),
        3,
        "init rows are unsettled"
    );
    let entries: Vec<Deduction> = d
        .iter()
        .map(|d| Deduction {
            stock_log_id: d.stock_log_id,
            item_id: item,
            amount: d.amount,
        })
        .collect();
    let r = s.apply_deductions(&entries).await.unwrap();
    assert_eq!((r.applied, r.skipped), (0, 2), "init rows are not deducted");
    s.commit_orders(&d).await.unwrap();
    assert_eq!(
        s.unsettled_units_of_item(item).await.unwrap(),
        3,
        "committed but not deducted is unsettled"
    );
    let r = s.apply_deductions(&entries).await.unwrap();
    assert_eq!(r.applied, 2);
    assert_eq!(s.unsettled_units_of_item(item).await.unwrap(), 0);
    let r = s.apply_deductions(&entries).await.unwrap();
    assert_eq!(
        (r.applied, r.duplicates),
        (0, 2),
        "a redelivery deducts nothing"
    );
    assert_eq!(s.item(item).await.unwrap().unwrap().stock, 0);

    // The conditional update refuses to go below zero.
    let over = draft(3_003, UserId(3), item, promo, 1);
    s.insert_stock_logs(std::slice::from_ref(&over))
        .await
        .unwrap();
    s.commit_orders(std::slice::from_ref(&over)).await.unwrap();
    let r = s
        .apply_deductions(&[Deduction {
            stock_log_id: over.stock_log_id,
            item_id: item,
            amount: 1,
        }])
        .await
        .unwrap();
    assert_eq!(r.insufficient, 1);
    assert_eq!(s.item(item).await.unwrap().unwrap().stock, 0);
}

async fn a_message_too_big_for_the_stock_deducts_what_fits_and_each_entry_once(s: &dyn Store) {
    let (item, promo) = setup(s, 3).await;
    let d = vec![
        draft(3_101, UserId(1), item, promo, 2),
        draft(3_102, UserId(2), item, promo, 1),
        draft(3_103, UserId(3), item, promo, 1),
    ];
    s.insert_stock_logs(&d).await.unwrap();
    s.commit_orders(&d).await.unwrap();
    let mut entries: Vec<Deduction> = d
        .iter()
        .map(|d| Deduction {
            stock_log_id: d.stock_log_id,
            item_id: item,
            amount: d.amount,
        })
        .collect();
    // The same entry twice in one message (a producer retry merged in).
    entries.push(entries[0]);
    let r = s.apply_deductions(&entries).await.unwrap();
    assert_eq!(
        (r.applied, r.insufficient, r.duplicates),
        (2, 1, 1),
        "4 units asked of 3: the first two entries fit, the third is refused, the repeat counted once"
    );
    assert_eq!(s.item(item).await.unwrap().unwrap().stock, 0);
    let r = s.apply_deductions(&entries).await.unwrap();
    assert_eq!(
        (r.applied, r.duplicates),
        (0, 4),
        "a redelivery deducts nothing"
    );
    // Cancelled, the refused order gives nothing back to the DB stock (its
    // units were never taken from it); an applied one gives its units.
    let (_, changed) = s.cancel_order(&d[2].order_no).await.unwrap();
    assert!(changed);
    let it = s.item(item).await.unwrap().unwrap();
    assert_eq!(
        (it.stock, it.sales),
        (0, 3),
        "the refused order's cancellation"
    );
    s.cancel_order(&d[1].order_no).await.unwrap();
    let it = s.item(item).await.unwrap().unwrap();
    assert_eq!(
        (it.stock, it.sales),
        (1, 2),
        "an applied order's cancellation"
    );
}

async fn cancel_gives_stock_back(s: &dyn Store) {
    let (item, promo) = setup(s, 2).await;
    let d = draft(4_001, UserId(1), item, promo, 2);
    s.insert_stock_logs(std::slice::from_ref(&d)).await.unwrap();
    s.commit_orders(std::slice::from_ref(&d)).await.unwrap();
    s.apply_deductions(&[Deduction {
        stock_log_id: d.stock_log_id,
        item_id: item,
        amount: 2,
    }])
    .await
    .unwrap();
    let (unpaid, newest) = s.unpaid_orders_of_item(item).await.unwrap();
    assert_eq!(unpaid, 1);
    let newest = newest.expect("its creation time");
    assert!(
        (newest - d.created_at).num_seconds().abs() <= 1,
        "{newest} vs {}",
        d.created_at
    );
    assert_eq!(s.cancelled_order_count(promo).await.unwrap(), 0);
    let (o, changed) = s.cancel_order(&d.order_no).await.unwrap();
    assert_eq!((o.status, changed), (OrderStatus::Cancelled, true));
    assert_eq!(s.unpaid_orders_of_item(item).await.unwrap(), (0, None));
    assert_eq!(s.cancelled_order_count(promo).await.unwrap(), 1);
    assert_eq!(
        s.cancelled_orders(promo, "", 10).await.unwrap(),
        vec![(d.order_no.clone(), d.stock_log_id, 2)]
    );
    assert!(s
        .cancelled_orders(promo, d.order_no.as_str(), 10)
        .await
        .unwrap()
        .is_empty());
    let (_, again) = s.cancel_order(&d.order_no).await.unwrap();
    assert!(!again, "idempotent");
    assert_eq!(s.cancelled_order_count(promo).await.unwrap(), 1);
    let it = s.item(item).await.unwrap().unwrap();
    assert_eq!((it.stock, it.sales), (2, 0));
    assert_eq!(
        s.pay_order(&d.order_no).await.unwrap().status,
        OrderStatus::Cancelled,
        "no payment after cancel"
    );
    let totals = s.promo_totals(promo).await.unwrap();
    assert_eq!(
        (totals.sold, totals.max_units_per_buyer),
        (0, 0),
        "a cancelled order counts for nobody"
    );
    assert!(matches!(
        s.cancel_order(&OrderNo("202401010000000000000000000".into()))
            .await,
        Err(StoreError::NotFound)
    ));
    // Counted by promo and status: another promo's cancellation, an order
    // of this promo still unpaid.
    let (item2, promo2) = setup(s, 2).await;
    let other = draft(4_002, UserId(2), item2, promo2, 1);
    let unpaid = draft(4_003, UserId(3), item, promo, 1);
    for o in [&other, &unpaid] {
        s.insert_stock_logs(std::slice::from_ref(o)).await.unwrap();
        s.commit_orders(std::slice::from_ref(o)).await.unwrap();
    }
    assert!(s.cancel_order(&other.order_no).await.unwrap().1);
    assert_eq!(s.cancelled_order_count(promo).await.unwrap(), 1);
    assert_eq!(s.cancelled_order_count(promo2).await.unwrap(), 1);
}

async fn pure_database_orders(s: &dyn Store) {
    for optimistic in [false, true] {
        let (item, promo) = setup(s, 2).await;
        let base = if optimistic { 6_000 } else { 5_000 };
        assert!(s
            .place_order_in_db(
                &draft(base + 1, UserId(1), item, promo, 1),
                optimistic,
                5,
                far()
            )
            .await
            .unwrap()
            .is_some());
        assert!(matches!(
            s.place_order_in_db(
                &draft(base + 2, UserId(1), item, promo, 1),
                optimistic,
                5,
                far()
            )
            .await,
            Err(StoreError::Conflict("user_promo"))
        ));
        assert_eq!(
            s.item(item).await.unwrap().unwrap().stock,
            1,
            "the refused order rolled back its stock update"
        );
        assert!(s
            .place_order_in_db(
                &draft(base + 3, UserId(2), item, promo, 1),
                optimistic,
                5,
                far()
            )
            .await
            .unwrap()
            .is_some());
        assert!(
            s.place_order_in_db(
                &draft(base + 4, UserId(3), item, promo, 1),
                optimistic,
                5,
                far()
            )
            .await
            .unwrap()
            .is_none(),
            "sold out"
        );
        let it = s.item(item).await.unwrap().unwrap();
        assert_eq!((it.stock, it.sales), (0, 2));
        let t = s.promo_totals(promo).await.unwrap();
        assert_eq!((t.orders, t.stock_log_committed), (2, 2));
    }
}

/// Buyers racing for the last units: each pure-database order is placed,
/// refused as sold out, or — its compare-and-set lost every one of its
/// tries (the default 16) — refused for contention, a 429 its buyer
/// retries; never an error because another order got the row (or, on
/// SQLite, the file) first. A lost compare-and-set is tried again. The
/// racers take turns over `stores`: several stores on one database are
/// several processes.
pub async fn concurrent_pure_database_orders(stores: &[Arc<dyn Store>]) {
    let s = &stores[0];
    for optimistic in [false, true] {
        let (item, promo) = setup(&**s, 10).await;
        let base = if optimistic { 7_600 } else { 7_500 };
        let racers: Vec<_> = (1..=24)
            .map(|n| {
                let s = stores[n as usize % stores.len()].clone();
                let d = draft(base + n, UserId(n), item, promo, 1);
                tokio::spawn(async move {
                    let mut contended = 0;
                    loop {
                        match s.place_order_in_db(&d, optimistic, 16, far()).await {
                            Err(StoreError::Conflict("version")) if contended < 20 => {
                                contended += 1
                            }
                            other => return (other, contended),
                        }
                    }
                })
            })
            .collect();
        let (mut placed, mut contended) = (0, 0);
        for r in racers {
            let (answer, retries) = r.await.unwrap();
            contended += retries;
            match answer {
                Ok(Some(_)) => placed += 1,
                Ok(None) => {}
                Err(e) => panic!("optimistic {optimistic}: an order failed in the race: {e:?}"),
            }
        }
        assert_eq!(placed, 10, "optimistic {optimistic}");
        if !optimistic {
            assert_eq!(contended, 0, "a conditional update never loses a race");
        }
        let it = s.item(item).await.unwrap().unwrap();
        assert_eq!((it.stock, it.sales), (0, 10), "optimistic {optimistic}");
        let t = s.promo_totals(promo).await.unwrap();
        assert_eq!((t.orders, t.stock_log_committed), (10, 10));
    }
}

/// A pure-database order commits only before its deadline: past it, the
/// transaction rolls back and says so (its caller stopped waiting then).
async fn a_pure_database_order_past_its_deadline_never_commits(s: &dyn Store) {
    let (item, promo) = setup(s, 5).await;
    let late = draft(9_002, UserId(2), item, promo, 1);
    for optimistic in [false, true] {
        assert!(matches!(
            s.place_order_in_db(&late, optimistic, 3, std::time::Instant::now())
                .await,
            Err(StoreError::TooLate)
        ));
    }
    assert!(s.order(&late.order_no).await.unwrap().is_none());
    let it = s.item(item).await.unwrap().unwrap();
    assert_eq!((it.stock, it.sales), (5, 0), "the late order took no stock");
    let t = s.promo_totals(promo).await.unwrap();
    assert_eq!((t.orders, t.stock_log_committed), (0, 0));
}
